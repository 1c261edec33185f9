//! `dir:`: skopeo's directory transport (`skopeo copy … dir:PATH`), the format
//! `skopeo copy` users keep caches in. Where the dir-transport layout is parsed.
//!
//! One image per directory: `manifest.json` (an image manifest, or with `--all` an
//! index whose instances are `<hex>.manifest.json`), every blob a file named by its
//! digest's hex, and a `version` file (`Directory Transport Version: 1.1`). The
//! directory records no name, so the image is untagged, as `podman pull dir:PATH`
//! leaves it. Read-only: a name given through the mount could not be kept there.

use std::io;
use std::path::{Path, PathBuf};

use super::shared::blob::{file_blob_at, location_display, read_file_blob, repin_file_blob};
use super::shared::oci_walk::{
    Descriptor, LayoutBlobs, MANIFEST_LIMIT, Platform, host_platform, repository_from_file_name,
    resolve_record,
};
use super::{
    BlobLocation, ChangeToken, Inventory, Kind, Opened, Source, SourceKind, SourceOptions,
    StoreDir, StoreError, StoreMeta, read_whole, sha256_id,
};
use crate::limits::Limits;
use crate::reference;

pub static KIND: Kind = Kind {
    prefix: "dir",
    about: "skopeo's directory transport (manifest.json, blobs named by digest, version)",
    is_dir_store: Some(|dir| {
        dir.read_own("version", 256)
            .is_ok_and(|v| v.starts_with(VERSION_PREFIX))
            && dir
                .metadata("manifest.json")
                .ok()
                .flatten()
                .is_some_and(|m| m.is_file())
    }),
    archive: None,
    open,
};

/// What the `version` file of every dir-transport directory starts with.
const VERSION_PREFIX: &[u8] = b"Directory Transport Version: ";

fn open(spec: &str, options: &SourceOptions) -> Result<Vec<Opened>, StoreError> {
    let store = DirImage::open(&super::spec_path(spec), options)?;
    Ok(vec![Opened::one(store)])
}

/// A directory written by skopeo's `dir:` transport.
pub struct DirImage {
    root: PathBuf,
    /// Every file of the directory is reached through this (see `store_file::StoreDir`).
    dir: StoreDir,
    limits: Limits,
    platform: Platform,
    meta: StoreMeta,
}

impl DirImage {
    pub fn open(root: &Path, options: &SourceOptions) -> Result<DirImage, StoreError> {
        let dir = StoreDir::open(root, "dir").map_err(|e| StoreError::io(root.display(), e))?;
        let version = dir
            .read_own("version", 256)
            .map_err(|e| StoreError::io(dir.display("version"), e))?;
        if !version.starts_with(VERSION_PREFIX) {
            return Err(StoreError::format(
                dir.display("version"),
                "not a dir-transport version file",
            ));
        }
        let meta = dir
            .metadata(".")
            .map_err(|e| StoreError::io(root.display(), e))?
            .ok_or_else(|| StoreError::NotFound(format!("{}: missing", root.display())))?;
        Ok(DirImage {
            root: root.to_path_buf(),
            dir,
            limits: options.limits,
            platform: options.platform.clone().unwrap_or_else(host_platform),
            // nothing is written here: who may read it may read the image
            meta: StoreMeta::of(&meta).read_only(),
        })
    }

    /// A blob's file: the digest's hex (sha256, the only algorithm skopeo writes here).
    fn blob_name(&self, digest: &str) -> Result<String, StoreError> {
        match digest.strip_prefix("sha256:") {
            Some(hex) if reference::is_digest(digest) => Ok(hex.to_string()),
            _ => Err(StoreError::format(
                self.dir.display("."),
                format!("malformed digest {digest:?}"),
            )),
        }
    }
}

impl LayoutBlobs for DirImage {
    fn read_file(&self, rel: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        self.dir
            .read_own(rel, limit)
            .map_err(|e| StoreError::io(self.dir.display(rel), e))
    }

    fn blob(&self, digest: &str) -> Result<Option<BlobLocation>, StoreError> {
        file_blob_at(&self.dir, &self.blob_name(digest)?)
    }

    fn read_location(&self, loc: &BlobLocation, limit: u64) -> Result<Vec<u8>, StoreError> {
        read_whole(loc.size(), limit, |off, buf| self.read_at(loc, off, buf))
            .map_err(|e| StoreError::io(location_display(&self.dir, loc), e))
    }

    /// An index's instances are `<hex>.manifest.json`; the top manifest, which has
    /// no such file, is manifest.json. The walk checks each against its digest.
    fn manifest_bytes(&self, digest: &str, _blob_name: &str) -> Result<Vec<u8>, StoreError> {
        let rel = format!("{}.manifest.json", self.blob_name(digest)?);
        match self.dir.read_own(&rel, MANIFEST_LIMIT) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.read_file("manifest.json", MANIFEST_LIMIT)
            }
            Err(e) => Err(StoreError::io(self.dir.display(&rel), e)),
        }
    }

    fn display(&self, rel: &str) -> String {
        self.dir.display(rel)
    }

    /// Never asked: the walk gives a dir: copy no tag.
    fn bare_tag_repository(&self) -> String {
        repository_from_file_name(&self.root)
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn platform(&self) -> &Platform {
        &self.platform
    }
}

/// The media type a manifest names for itself (dir: keeps no descriptor for it).
fn media_type_of(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType", default)]
        media_type: String,
    }
    serde_json::from_slice::<Typed>(bytes)
        .map(|t| t.media_type)
        .unwrap_or_default()
}

impl Source for DirImage {
    fn kind(&self) -> SourceKind {
        &KIND
    }

    fn describe(&self) -> String {
        format!("{}:{}", KIND.prefix, self.root.display())
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn scan(&self) -> Result<Inventory, StoreError> {
        let bytes = self.read_file("manifest.json", MANIFEST_LIMIT)?;
        let desc = Descriptor {
            media_type: media_type_of(&bytes),
            digest: sha256_id(&bytes),
            size: bytes.len() as i64,
            annotations: None,
            platform: None,
        };
        let what = self.dir.display("manifest.json");
        let (record, problems) = resolve_record(self, &desc, &what);
        let mut inv = Inventory {
            problems,
            ..Default::default()
        };
        match record {
            // untagged: the directory records no name
            Ok(record) => inv.images.push(record),
            Err(missing) => inv.problems.push(format!(
                "{what}: no image shown ({missing} cannot be followed)"
            )),
        }
        Ok(inv)
    }

    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        read_file_blob(&self.dir, blob, offset, buf)
    }

    fn repin(&self, blob: &BlobLocation) -> io::Result<BlobLocation> {
        repin_file_blob(&self.dir, blob)
    }

    /// skopeo writes manifest.json last: a copy that finished moves it.
    fn change_token(&self) -> io::Result<ChangeToken> {
        ChangeToken::of_file(&self.dir, "manifest.json")
    }

    fn meta(&self) -> Option<StoreMeta> {
        Some(self.meta)
    }

    fn watches(&self) -> Vec<super::Watch> {
        super::Watch::of(&self.dir, &["manifest.json"])
            .into_iter()
            .collect()
    }

    fn content_key(&self) -> Option<String> {
        Some(ChangeToken::identities(&self.dir, ["manifest.json", "."]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_copy_is_detected_and_read_as_one_untagged_image() {
        let dir = tempfile::tempdir().unwrap();
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let config_id = sha256_id(config);
        std::fs::write(
            dir.path().join(config_id.trim_start_matches("sha256:")),
            config,
        )
        .unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_id}","size":{}}},"layers":[]}}"#,
            config.len()
        );
        std::fs::write(dir.path().join("manifest.json"), &manifest).unwrap();
        std::fs::write(
            dir.path().join("version"),
            "Directory Transport Version: 1.1\n",
        )
        .unwrap();
        assert_eq!(super::super::detect(dir.path()).unwrap(), &KIND);
        let store = DirImage::open(dir.path(), &SourceOptions::default()).unwrap();
        let inv = store.scan().unwrap();
        assert_eq!(inv.images.len(), 1, "{:?}", inv.problems);
        assert_eq!(inv.images[0].claimed_id, config_id);
        assert!(inv.images[0].tags.is_empty());
        assert_eq!(
            inv.images[0].manifest_digests,
            [sha256_id(manifest.as_bytes())]
        );
        // a version file of another format is not a dir: copy
        std::fs::write(dir.path().join("version"), "1.0\n").unwrap();
        assert!(DirImage::open(dir.path(), &SourceOptions::default()).is_err());
    }
}
