//! `docker-archive:`: what `docker save` and `podman save` write. Where the
//! docker-save format is parsed.
//!
//! Three layouts, all led by `manifest.json` (a list of {Config, RepoTags, Layers}):
//! - pre-25 Docker: `<id>.json` configs and `<v1id>/layer.tar` layers;
//! - podman: `<id>.json` configs, top-level `<diffid>.tar` layers, and
//!   `<v1id>/layer.tar` symlinks to them;
//! - Docker 25+: an OCI layout (`index.json`, `blobs/sha256/…`) with manifest.json
//!   pointing into blobs/; the OCI index adds the manifest digests.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use serde::Deserialize;

use super::archive::TarArchive;
use super::oci;
use super::{
    BlobLocation, ChangeToken, ImageRecord, Inventory, Source, SourceError, SourceKind, StoreMeta,
};
use crate::reference::{self, Parsed};

/// manifest.json lists every image of the archive; thousands fit in a few MiB.
const MANIFEST_JSON_LIMIT: u64 = 64 << 20;

#[derive(Deserialize, Debug)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Option<Vec<String>>,
}

pub struct DockerArchive {
    archive: TarArchive,
}

impl DockerArchive {
    pub fn open(path: &Path) -> Result<DockerArchive, SourceError> {
        Ok(DockerArchive::from_archive(TarArchive::open(path)?))
    }

    pub fn from_archive(archive: TarArchive) -> DockerArchive {
        DockerArchive { archive }
    }
}

/// The config digest a manifest.json `Config` path names: `<hex>.json` (Docker < 25,
/// podman) or `blobs/sha256/<hex>` (Docker 25+). Empty when it names none.
fn claimed_id(config_path: &str) -> String {
    let base = config_path.rsplit('/').next().unwrap_or(config_path);
    let hex = base.strip_suffix(".json").unwrap_or(base);
    let id = format!("sha256:{hex}");
    if reference::is_digest(&id) {
        id
    } else {
        String::new()
    }
}

impl Source for DockerArchive {
    fn kind(&self) -> SourceKind {
        SourceKind::DockerArchive
    }

    fn path(&self) -> &Path {
        self.archive.path()
    }

    fn scan(&self) -> Result<Inventory, SourceError> {
        let a = &self.archive;
        let fail = |msg: String| SourceError::new(a.path().display(), msg);
        let bytes = a
            .read_member("manifest.json", MANIFEST_JSON_LIMIT)
            .map_err(fail)?;
        let entries: Vec<ManifestEntry> = serde_json::from_slice(&bytes).map_err(|e| {
            fail(format!(
                "manifest.json is not a valid docker-save manifest: {e}"
            ))
        })?;
        let mut inv = Inventory {
            problems: a.index.problems.clone(),
            ..Default::default()
        };
        for (i, entry) in entries.iter().enumerate() {
            let what = a.member_display(&format!("manifest.json entry {i}"));
            let config_name = a.member_display(&entry.config);
            let config = a.location(&entry.config);
            if config.is_none() {
                inv.problems.push(format!(
                    "{what}: config {:?} is not in the archive (or is an unsafe name)",
                    entry.config
                ));
            }
            let mut record = ImageRecord {
                claimed_id: claimed_id(&entry.config),
                config,
                config_name,
                ..Default::default()
            };
            let mut size = 0u64;
            for layer in entry.layers.iter().flatten() {
                match a.location(layer) {
                    Some(loc) => size += loc.size(),
                    None => inv
                        .problems
                        .push(format!("{what}: layer {layer:?} is not in the archive")),
                }
            }
            record.layers_size = Some(size);
            for name in entry.repo_tags.iter().flatten() {
                match reference::parse(name) {
                    Ok(Parsed::Tag(t)) => record.tags.push(t),
                    Ok(Parsed::Digest { name, digest }) => {
                        record.digest_refs.push(format!("{name}@{digest}"))
                    }
                    Ok(Parsed::Id(_)) => {}
                    Err(e) => inv
                        .problems
                        .push(format!("{what}: {e}: not shown as a tag")),
                }
            }
            inv.images.push(record);
        }
        // Docker 25+: the OCI index beside manifest.json knows the manifest digests.
        if a.has_member("index.json") {
            self.add_manifest_digests(&mut inv);
        }
        Ok(inv)
    }

    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.archive.read_at(blob, offset, buf)
    }

    fn change_token(&self) -> io::Result<ChangeToken> {
        self.archive.change_token()
    }

    fn meta(&self) -> StoreMeta {
        self.archive.meta()
    }
}

impl DockerArchive {
    fn add_manifest_digests(&self, inv: &mut Inventory) {
        let layout = match oci::scan_layout(&self.archive) {
            Ok(l) => l,
            Err(e) => {
                inv.problems
                    .push(format!("{e} (manifest digests are not shown)"));
                return;
            }
        };
        let mut by_id: HashMap<&str, &ImageRecord> = HashMap::new();
        for r in &layout.images {
            by_id.entry(r.claimed_id.as_str()).or_insert(r);
        }
        for record in &mut inv.images {
            if let Some(oci) = by_id.get(record.claimed_id.as_str()) {
                record.manifest_digests = oci.manifest_digests.clone();
                record.other_platforms = oci.other_platforms.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_give_ids() {
        let hex = "a".repeat(64);
        assert_eq!(claimed_id(&format!("{hex}.json")), format!("sha256:{hex}"));
        assert_eq!(
            claimed_id(&format!("blobs/sha256/{hex}")),
            format!("sha256:{hex}")
        );
        assert_eq!(claimed_id("config.json"), "");
    }
}
