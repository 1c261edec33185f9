//! The OCI descriptor walk every kind that holds OCI (or Docker v2) manifests shares:
//! OCI layouts and oci-archives (index.json), Docker 25+ archives (their index),
//! containerd (its image records' targets), through [`LayoutBlobs`]: index.json →
//! manifest or nested index (the host platform's entry) → config descriptor.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::json_limits;
use crate::limits::Limits;
use crate::reference::{self, Parsed, TagRef};
use crate::source::{BlobLocation, ImageRecord, Inventory, StoreError};

/// Manifests and nested indexes are small (registries refuse more than 4 MiB);
/// index.json's bounds are the mount's [`Limits`].
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// Nested indexes deeper than this are treated as a loop.
const MAX_INDEX_DEPTH: usize = 4;

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Deserialize, Debug, Clone, Default)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// `OS/ARCH[/VARIANT]`, as `-o platform=` and `podman --platform` take it.
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).filter(|v| ok(v)).map(|v| v.to_string()),
            })
            .and_then(|p| match (parts.len(), &p.variant) {
                (3, None) => Err(format!("{s:?}: not OS/ARCH[/VARIANT]")),
                _ => Ok(p),
            }),
            _ => Err(format!(
                "{s:?}: not OS/ARCH[/VARIANT] (lower case, e.g. linux/arm64 or linux/arm/v7)"
            )),
        }
    }

    /// Is an index entry's platform this one, as containerd matches them: the same OS
    /// and architecture, and the same variant when one is asked for (an arm64 entry
    /// that names none is v8).
    pub fn matches(&self, entry: &Platform) -> bool {
        let variant = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            (_, Some(v)) if !v.is_empty() => Some(v.to_string()),
            ("arm64", _) => Some("v8".to_string()),
            _ => None,
        };
        entry.os == self.os
            && entry.architecture == self.architecture
            && (self.variant.is_none() || variant(self) == variant(entry))
    }

    /// As a file name component: `linux-arm-v7`.
    fn file_name(&self) -> String {
        self.display().replace('/', "-")
    }

    pub fn display(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// A manifest or an index: which one is told by the fields present, for blobs whose
/// descriptor has no media type.
#[derive(Deserialize, Debug, Default)]
struct ManifestOrIndex {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// The platform imagefs picks from a multi-platform index: the host's, as a runtime on
/// this machine would.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    Platform {
        architecture: architecture.to_string(),
        os: std::env::consts::OS.to_string(),
        variant: None,
    }
}

/// What the index walk needs from a layout, in a directory or in a tar.
pub trait LayoutBlobs {
    /// Reads a layout file (`index.json`) by its path in the layout.
    fn read_file(&self, rel: &str, limit: u64) -> Result<Vec<u8>, StoreError>;
    /// The platform picked from a multi-platform index (`-o platform=`, the host's
    /// by default).
    fn platform(&self) -> &Platform;
    /// Where the blob of `digest` is; `Ok(None)` when it is not in the layout.
    fn blob(&self, digest: &str) -> Result<Option<BlobLocation>, StoreError>;
    fn read_location(&self, loc: &BlobLocation, limit: u64) -> Result<Vec<u8>, StoreError>;
    /// How messages name a file of the layout.
    fn display(&self, rel: &str) -> String;
    /// The repository a bare-tag `ref.name` belongs to.
    fn bare_tag_repository(&self) -> String;
    /// The mount's bounds on what the layout may make imagefs read and hold.
    fn limits(&self) -> Limits;
    /// A manifest's or an index's bytes, as stored (the walk checks their digest); by
    /// default the blob of that digest. A registry serves them from its own endpoint.
    fn manifest_bytes(&self, digest: &str, blob_name: &str) -> Result<Vec<u8>, StoreError> {
        let loc = self
            .blob(digest)?
            .ok_or_else(|| StoreError::NotFound(format!("{blob_name}: blob missing")))?;
        self.read_location(&loc, MANIFEST_LIMIT)
    }
    /// Where the config a manifest names is; by default the layout's blob of that
    /// digest. A registry, which is asked for nothing until a config is read, answers
    /// with the descriptor itself.
    fn config_blob(&self, config: &Descriptor) -> Result<Option<BlobLocation>, StoreError> {
        self.blob(&config.digest)
    }
}

pub fn blob_rel_path(digest: &str) -> Option<String> {
    if !reference::is_digest(digest) {
        return None;
    }
    let (alg, hex) = digest.split_once(':')?;
    Some(format!("blobs/{alg}/{hex}"))
}

/// Walks `index.json` into an inventory. Fails only when index.json itself cannot be
/// read or parsed; every problem below it is reported and the rest still shown.
pub fn scan_layout(layout: &dyn LayoutBlobs) -> Result<Inventory, StoreError> {
    let index_name = layout.display("index.json");
    let limits = layout.limits();
    let bytes = layout.read_file("index.json", limits.max_index_size)?;
    let mut inv = Inventory::default();
    // One walk per distinct descriptor: an index may name one manifest many times
    // (20,000 entries of one 4 MiB manifest took two minutes when each read and
    // hashed it again).
    let mut resolved = Resolved::default();
    let mut i = 0;
    // each entry is walked as it is parsed: an index of 280,000 entries is never
    // held as descriptors
    let total = json_limits::field_each(&bytes, "manifests", limits.max_images, |desc| {
        let what = format!("{index_name} entry {i}");
        i += 1;
        entry(layout, &desc, what, &mut resolved, &mut inv);
    })
    .map_err(|e| StoreError::format(&index_name, format!("not a valid OCI index: {e}")))?
    .ok_or_else(|| StoreError::format(&index_name, "no \"manifests\" list"))?;
    if total > i {
        inv.problems
            .insert(0, limits.too_many_images(&index_name, total));
    }
    Ok(inv)
}

/// The entries read so far: each distinct descriptor's walk, the record its entries
/// were merged into, and which record claimed each tag last.
#[derive(Default)]
struct Resolved {
    walks: HashMap<(String, String), Walked>,
    claimant: HashMap<TagRef, usize, foldhash::fast::RandomState>,
}

/// A descriptor's walk (its record, or what is missing), and the record its entries
/// are merged into.
struct Walked {
    record: Result<ImageRecord, String>,
    merged_into: Option<usize>,
}

/// One index entry's record, its walk shared with the entries of the same descriptor.
/// A later entry of a descriptor gives its names to the record of the first, unless
/// one of them was claimed by another record since, which must then lose it to this
/// entry (the last claimant wins): 270,000 tags of 100,000 images were as many
/// copies of their records.
fn entry(
    layout: &dyn LayoutBlobs,
    desc: &Descriptor,
    what: String,
    resolved: &mut Resolved,
    inv: &mut Inventory,
) {
    let (tags, digest_refs) = references_of(layout, desc, &what, &mut inv.problems);
    if !is_followed(&desc.media_type) {
        // an artifact (a signature, an SBOM): not an image, as containers/image
        // passes it over
        return;
    }
    let key = (desc.digest.clone(), desc.media_type.clone());
    if let Some(Walked {
        record: Ok(_),
        merged_into: Some(at),
    }) = resolved.walks.get(&key)
        && tags
            .iter()
            .all(|t| resolved.claimant.get(t).is_none_or(|c| c == at))
        && let Some(merged) = inv.images.get_mut(*at)
    {
        for t in &tags {
            resolved.claimant.insert(t.clone(), *at);
        }
        merged.tags.extend(tags);
        merged.digest_refs.extend(digest_refs);
        return;
    }
    let record = match resolved.walks.get(&key) {
        Some(w) => w.record.clone(),
        None => {
            let mut walk = Walk::new(layout, &mut inv.problems);
            let r = walk
                .resolve(desc, &what, 0)
                .ok_or_else(|| walk.missing(desc));
            resolved.walks.insert(
                key.clone(),
                Walked {
                    record: r.clone(),
                    merged_into: None,
                },
            );
            r
        }
    };
    let mut record = match record {
        Ok(r) => r,
        Err(missing) => {
            if !tags.is_empty() {
                // The tag names something we cannot follow: show it as dangling,
                // pointing at a name that says what is missing.
                for t in &tags {
                    resolved.claimant.insert(t.clone(), inv.images.len());
                }
                inv.images.push(ImageRecord {
                    claimed_id: missing,
                    config: None,
                    config_name: what,
                    tags,
                    ..Default::default()
                });
            }
            return;
        }
    };
    let at = inv.images.len();
    for t in &tags {
        resolved.claimant.insert(t.clone(), at);
    }
    record.tags = tags;
    record.digest_refs = digest_refs;
    inv.images.push(record);
    if let Some(w) = resolved.walks.get_mut(&key) {
        w.merged_into.get_or_insert(at);
    }
}

/// The tag (and digest reference) an index entry's annotations give it.
pub(crate) fn references_of(
    layout: &dyn LayoutBlobs,
    desc: &Descriptor,
    what: &str,
    problems: &mut Vec<String>,
) -> (Vec<TagRef>, Vec<String>) {
    let Some(ann) = &desc.annotations else {
        return (vec![], vec![]);
    };
    let name = ann
        .get(ANNOTATION_CONTAINERD_NAME)
        .or_else(|| ann.get(ANNOTATION_REF_NAME));
    let Some(name) = name else {
        return (vec![], vec![]);
    };
    let full = name.contains('/') || name.contains(':') || name.contains('@');
    let parsed = if full {
        reference::parse(name)
    } else if reference::is_tag(name) {
        // The OCI spec's own form: a bare tag in a layout of one repository.
        reference::parse(&format!("{}:{name}", layout.bare_tag_repository()))
    } else {
        reference::parse(name)
    };
    match parsed {
        Ok(Parsed::Tag(t)) => (vec![t], vec![]),
        Ok(Parsed::Digest { name, digest }) => (vec![], vec![format!("{name}@{digest}")]),
        Ok(Parsed::Id(_)) => (vec![], vec![]),
        Err(e) => {
            problems.push(format!("{what}: {e}: not shown as a tag"));
            (vec![], vec![])
        }
    }
}

/// The image ID (config digest) a top-level index entry resolves to, if it does.
pub(crate) fn resolve_descriptor(layout: &dyn LayoutBlobs, desc: &Descriptor) -> Option<String> {
    resolve_record(layout, desc, "")
        .0
        .ok()
        .map(|r| r.claimed_id)
}

/// The image record a descriptor resolves to (index → the platform's manifest →
/// config), else the name a tag of it dangles at ([`Walk::missing`]); and the
/// problems met on the way.
pub(crate) fn resolve_record(
    layout: &dyn LayoutBlobs,
    desc: &Descriptor,
    what: &str,
) -> (Result<ImageRecord, String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut walk = Walk::new(layout, &mut problems);
    let record = walk
        .resolve(desc, what, 0)
        .ok_or_else(|| walk.missing(desc));
    (record, problems)
}

fn is_index_type(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

/// Index entries the walk follows: images and indexes, and entries that do not say
/// (old layouts). Others (artifacts, signatures) are passed over, as containers/image
/// passes them over.
fn is_followed(media_type: &str) -> bool {
    media_type.is_empty()
        || [
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
        ]
        .contains(&media_type)
}

/// What a tag dangles at when its manifest or index cannot be followed: a name under
/// by-id/ that says what is missing, `missing-manifest:sha256:…`,
/// `missing-index:sha256:…`, or `no-linux-amd64:sha256:<index>` (the index has no
/// entry for the platform). It cannot be mistaken for an image ID, which is a config
/// digest and starts with `sha256:`.
pub fn missing_name(what: &str, digest: &str) -> String {
    format!("{what}:{digest}")
}

/// The manifest or index of `media_type` named `digest` is not there (or not what
/// its digest says).
pub fn missing_blob_name(media_type: &str, digest: &str) -> String {
    let what = if is_index_type(media_type) {
        "missing-index"
    } else {
        "missing-manifest"
    };
    missing_name(what, digest)
}

/// The index `digest` has no image for `platform`.
pub fn no_platform_name(platform: &Platform, digest: &str) -> String {
    missing_name(&format!("no-{}", platform.file_name()), digest)
}

/// Is `target` a name a dangling tag may point at: an image ID, or a
/// [`missing_name`]? Either is one path component.
pub fn is_dangling_target(target: &str) -> bool {
    if reference::is_digest(target) {
        return true;
    }
    match target.split_once(':') {
        Some((what, digest)) => {
            !what.is_empty()
                && what
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
                && reference::is_digest(digest)
        }
        None => false,
    }
}

struct Walk<'a> {
    layout: &'a dyn LayoutBlobs,
    platform: Platform,
    problems: &'a mut Vec<String>,
    visited: HashSet<String>,
    /// The first thing found missing on the way down, as [`missing_name`] names it.
    missing: Option<String>,
}

impl<'a> Walk<'a> {
    fn new(layout: &'a dyn LayoutBlobs, problems: &'a mut Vec<String>) -> Walk<'a> {
        Walk {
            layout,
            platform: layout.platform().clone(),
            problems,
            visited: HashSet::new(),
            missing: None,
        }
    }

    /// What a tag of `desc` dangles at, once the walk failed.
    fn missing(&self, desc: &Descriptor) -> String {
        self.missing
            .clone()
            .unwrap_or_else(|| missing_blob_name(&desc.media_type, &desc.digest))
    }

    /// Keeps the first thing found missing (`name`, for `digest`).
    fn found_missing(&mut self, digest: &str, name: impl FnOnce() -> String) {
        if self.missing.is_none() && reference::is_digest(digest) {
            self.missing = Some(name());
        }
    }

    /// Follows a descriptor to the image it stands for.
    fn resolve(&mut self, desc: &Descriptor, what: &str, depth: usize) -> Option<ImageRecord> {
        if !reference::is_digest(&desc.digest) {
            self.problems.push(format!(
                "{what}: malformed digest {:?}: skipped",
                desc.digest
            ));
            return None;
        }
        if depth > MAX_INDEX_DEPTH || !self.visited.insert(desc.digest.clone()) {
            self.problems.push(format!(
                "{what}: index {} refers back to itself (or nests too deep): skipped",
                desc.digest
            ));
            return None;
        }
        let blob_name = self
            .layout
            .display(&blob_rel_path(&desc.digest).unwrap_or_default());
        let bytes = match self.read_verified(&desc.digest, &blob_name) {
            Ok(b) => b,
            Err(e) => {
                self.problems.push(format!("{what}: {e}"));
                self.found_missing(&desc.digest, || {
                    missing_blob_name(&desc.media_type, &desc.digest)
                });
                return None;
            }
        };
        let parsed: ManifestOrIndex = match serde_json::from_slice(&bytes) {
            Ok(p) => p,
            Err(e) => {
                self.problems
                    .push(format!("{blob_name}: not a valid manifest or index: {e}"));
                self.found_missing(&desc.digest, || {
                    missing_blob_name(&desc.media_type, &desc.digest)
                });
                return None;
            }
        };
        let media_type = if desc.media_type.is_empty() {
            parsed.media_type.clone().unwrap_or_default()
        } else {
            desc.media_type.clone()
        };
        let is_index =
            is_index_type(&media_type) || (media_type.is_empty() && parsed.manifests.is_some());
        let is_manifest = media_type == MT_OCI_MANIFEST
            || media_type == MT_DOCKER_MANIFEST
            || (media_type.is_empty() && parsed.config.is_some());
        if is_index {
            self.resolve_index(desc, parsed, &blob_name, depth)
        } else if is_manifest {
            self.image_of_manifest(desc, parsed, &blob_name)
        } else {
            self.problems.push(format!(
                "{blob_name}: media type {media_type:?} is neither an image manifest nor an index: skipped"
            ));
            None
        }
    }

    fn resolve_index(
        &mut self,
        desc: &Descriptor,
        index: ManifestOrIndex,
        blob_name: &str,
        depth: usize,
    ) -> Option<ImageRecord> {
        let entries = index.manifests.unwrap_or_default();
        // Attestations and other non-images are marked unknown/unknown; entries of
        // media types that are no image are passed over.
        let images: Vec<&Descriptor> = entries
            .iter()
            .filter(|d| d.platform.as_ref().is_none_or(|p| p.os != "unknown"))
            .filter(|d| is_followed(&d.media_type))
            .collect();
        if images.is_empty() {
            self.problems
                .push(format!("{blob_name}: index lists no image manifests"));
            self.found_missing(&desc.digest, || {
                missing_name("missing-manifest", &desc.digest)
            });
            return None;
        }
        // The platform's own entry, as containerd and skopeo pick: never another in
        // its place, which would make the tag's ID depend on the machine and on the
        // order of the entries
        let chosen = images.iter().position(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| self.platform.matches(p))
        });
        // else one that names no platform, which containerd takes last
        let chosen = chosen.or_else(|| images.iter().position(|d| d.platform.is_none()));
        let Some(chosen) = chosen else {
            let there: Vec<String> = images
                .iter()
                .map(|d| {
                    d.platform
                        .as_ref()
                        .map(Platform::display)
                        .unwrap_or_else(|| format!("{} (no platform)", d.digest))
                })
                .collect();
            self.problems.push(format!(
                "{blob_name}: index has no manifest for {} (it has {}): its tags dangle (-o platform= picks another)",
                self.platform.display(),
                there.join(", ")
            ));
            let platform = self.platform.clone();
            self.found_missing(&desc.digest, || no_platform_name(&platform, &desc.digest));
            return None;
        };
        let what = format!("{blob_name} entry {chosen}");
        let mut record = self.resolve(images[chosen], &what, depth + 1)?;
        record.other_platforms = images
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != chosen)
            .map(|(_, d)| {
                d.platform
                    .as_ref()
                    .map(Platform::display)
                    .unwrap_or_else(|| d.digest.clone())
            })
            .collect();
        // The index digest is what a pull by digest names: it comes first.
        record.manifest_digests.insert(0, desc.digest.clone());
        if let Some(p) = &images[chosen].platform {
            record
                .extra_xattrs
                .push(("user.image.platform".into(), p.display()));
        }
        Some(record)
    }

    fn image_of_manifest(
        &mut self,
        desc: &Descriptor,
        manifest: ManifestOrIndex,
        blob_name: &str,
    ) -> Option<ImageRecord> {
        let Some(config) = manifest.config else {
            self.problems
                .push(format!("{blob_name}: manifest has no config descriptor"));
            return None;
        };
        if !reference::is_digest(&config.digest) {
            self.problems.push(format!(
                "{blob_name}: config digest {:?} is malformed",
                config.digest
            ));
            return None;
        }
        let layers = manifest.layers.unwrap_or_default();
        let layers_size = layers.iter().map(|l| l.size.max(0) as u64).sum();
        let config_rel = blob_rel_path(&config.digest).unwrap_or_default();
        let location = match self.layout.config_blob(&config) {
            Ok(l) => l,
            Err(e) => {
                self.problems.push(e.to_string());
                None
            }
        };
        if let Some(loc) = &location
            && config.size >= 0
            && loc.size() != config.size as u64
        {
            self.problems.push(format!(
                "{}: {} bytes, but the manifest {blob_name} says {}",
                self.layout.display(&config_rel),
                loc.size(),
                config.size
            ));
        }
        Some(ImageRecord {
            claimed_id: config.digest.clone(),
            config: location,
            config_name: self.layout.display(&config_rel),
            manifest_digests: vec![desc.digest.clone()],
            layers_size: Some(layers_size),
            ..Default::default()
        })
    }

    /// Reads a manifest or index blob and checks it hashes to its digest.
    fn read_verified(&self, digest: &str, blob_name: &str) -> Result<Vec<u8>, StoreError> {
        let bytes = self.layout.manifest_bytes(digest, blob_name)?;
        if let Some(hex) = digest.strip_prefix("sha256:") {
            let actual = hex::encode(Sha256::digest(&bytes));
            if actual != hex {
                return Err(StoreError::format(
                    blob_name,
                    format!("content hashes to sha256:{actual}, not to its name"),
                ));
            }
        }
        Ok(bytes)
    }
}

/// Lowercases and cleans a file name into a repository path component, for bare tags.
pub fn repository_from_file_name(path: &Path) -> String {
    let stem = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = super::label_from_file_name(&stem);
    let mut out = String::new();
    for c in stem.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        return "localhost/image".into();
    }
    format!("localhost/{out}")
}
