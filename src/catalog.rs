//! The catalog of one source: its images (by verified config digest), their tags, and
//! the dangling tags, built from the source's inventory.
//!
//! This is where a store's claims are checked: every config is hashed when read, and
//! one whose bytes do not hash to the digest it is stored under is not shown as that
//! image; its tags become dangling and a warning names the file.

use std::collections::{HashMap, HashSet};

/// foldhash: the build hashes every record's config location and tags, and the keys
/// are the store's own, checked anyway; no flood resistance is needed.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::warn;

use crate::config_cache::ConfigCache;
use crate::reference::{ShortStr, TagRef};
use crate::source::{BlobLocation, BlobReader, ImageRecord, Inventory, Source};

/// Configs up to this size are read whole (and cached); larger ones are hashed and
/// parsed as a stream.
pub(crate) const WHOLE_READ_LIMIT: u64 = 1 << 20;

/// An image's ID, held once: the catalog's image, its by-id entry and its inode
/// table key share one allocation (three copies were 240 bytes of every image).
pub type ImageId = std::sync::Arc<str>;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<hex>`: the config digest, verified.
    pub id: ImageId,
    pub config: BlobLocation,
    /// Held inline (a date and a platform are each under 24 bytes).
    pub created: Option<ShortStr>,
    pub mtime: SystemTime,
    pub architecture: Option<ShortStr>,
    pub os: Option<ShortStr>,
    pub variant: Option<ShortStr>,
    pub tags: Vec<TagRef>,
    pub manifest_digests: Vec<String>,
    pub digest_refs: Vec<String>,
    pub layers_size: Option<u64>,
    pub other_platforms: Vec<String>,
    pub extra_xattrs: Vec<(ShortStr, String)>,
}

impl Image {
    pub fn config_size(&self) -> u64 {
        self.config.size()
    }
}

/// A tag whose image's config is missing (or does not match its digest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DanglingTag {
    pub tag: TagRef,
    /// What the tag points at under by-id/: the ID it names (`sha256:<hex>`), or a
    /// name for what is missing (`missing-manifest:sha256:<hex>`, see
    /// `oci_walk::missing_name`).
    pub target: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// Sorted by ID.
    pub images: Vec<Image>,
    pub dangling: Vec<DanglingTag>,
    pub problems: Vec<String>,
}

/// The fields of a config that the tree shows.
#[derive(Clone, Deserialize, Default)]
struct ConfigSummary {
    #[serde(default)]
    created: Option<ShortStr>,
    #[serde(default)]
    architecture: Option<ShortStr>,
    #[serde(default)]
    os: Option<ShortStr>,
    #[serde(default)]
    variant: Option<ShortStr>,
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The `sha256:<hex>` of a blob, streamed (any size).
pub fn hash_blob(source: &dyn Source, loc: &BlobLocation) -> std::io::Result<String> {
    let mut reader = HashingReader {
        inner: std::io::BufReader::with_capacity(256 * 1024, BlobReader::new(source, loc)),
        hasher: Sha256::new(),
    };
    std::io::copy(&mut reader, &mut std::io::sink())?;
    Ok(format!("sha256:{}", hex::encode(reader.hasher.finalize())))
}

/// A config read and checked: its digest and summary.
struct CheckedConfig {
    id: String,
    summary: Option<ConfigSummary>,
}

fn check_config(
    store: usize,
    source: &dyn Source,
    loc: &BlobLocation,
    cache: &ConfigCache,
) -> std::io::Result<(CheckedConfig, Option<String>)> {
    if loc.size() <= WHOLE_READ_LIMIT {
        let bytes = crate::source::read_blob(source, loc, WHOLE_READ_LIMIT)?;
        let id = crate::source::sha256_id(&bytes);
        let parsed = serde_json::from_slice::<ConfigSummary>(&bytes);
        let problem = parsed.as_ref().err().map(|e| e.to_string());
        cache.insert((store, loc.clone()), Arc::from(bytes));
        return Ok((
            CheckedConfig {
                id,
                summary: parsed.ok(),
            },
            problem,
        ));
    }
    let mut reader = HashingReader {
        inner: std::io::BufReader::with_capacity(256 * 1024, BlobReader::new(source, loc)),
        hasher: Sha256::new(),
    };
    let parsed = serde_json::from_reader::<_, ConfigSummary>(&mut reader);
    // whatever the parse made of it, hash to the end
    std::io::copy(&mut reader, &mut std::io::sink())?;
    let problem = match &parsed {
        Err(e) if e.is_io() => return Err(std::io::Error::other(e.to_string())),
        Err(e) => Some(e.to_string()),
        Ok(_) => None,
    };
    let id = format!("sha256:{}", hex::encode(reader.hasher.finalize()));
    Ok((
        CheckedConfig {
            id,
            summary: parsed.ok(),
        },
        problem,
    ))
}

/// The configs one build has read (or knew from the catalog before), each once, and
/// whether their problems have been said. One entry per location, holding no second
/// copy of it unless the config was located again (a 100,000-image build held three
/// copies of every location, 60 MB).
#[derive(Default)]
struct ConfigsRead {
    memo: FastMap<BlobLocation, (CheckedRead, Reported)>,
}

/// Whether what a config's first record says of it has been said.
type Reported = bool;

/// What a tag's last claimant resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Claim {
    Image(ImageId),
    /// A record whose config is missing or does not match: its claimed ID.
    Dangling(String),
}

impl Claim {
    fn target(&self) -> String {
        match self {
            Claim::Image(id) => id.to_string(),
            Claim::Dangling(id) => format!("{id} (missing)"),
        }
    }
}

/// What reading one config gave: its ID, summary, JSON problem and, if its file
/// changed since the scan, where it was located again; or why it could not be read.
type CheckedRead = Result<
    (
        ImageId,
        ConfigSummary,
        Option<String>,
        Option<Box<BlobLocation>>,
    ),
    String,
>;

/// Reads and hashes one config. A file that changed between the scan finding it and
/// this read is located again, once, and read from there.
fn read_config(
    store: usize,
    source: &dyn Source,
    loc: &BlobLocation,
    cache: &ConfigCache,
) -> CheckedRead {
    let mut moved = None;
    let mut checked = check_config(store, source, loc, cache);
    if let Err(e) = &checked
        && crate::source::BlobChanged::is(e)
        && let Ok(fresh) = source.repin(loc)
    {
        checked = check_config(store, source, &fresh, cache);
        moved = Some(Box::new(fresh));
    }
    match checked {
        Ok((c, problem)) => Ok((c.id.into(), c.summary.unwrap_or_default(), problem, moved)),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses an RFC 3339 time as configs write it (`2024-01-02T03:04:05.123456789Z`).
pub fn parse_created(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = t.unix_timestamp_nanos();
    if nanos < 0 {
        return Some(UNIX_EPOCH);
    }
    let nanos = u64::try_from(nanos).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(nanos))
}

impl Catalog {
    pub fn build(
        store: usize,
        source: &dyn Source,
        inv: Inventory,
        cache: &ConfigCache,
        limits: &crate::limits::Limits,
    ) -> Catalog {
        Catalog::build_after(store, source, inv, cache, limits, None)
    }

    /// [`Catalog::build`], for a store read again: a config that `previous` verified
    /// at the very same location is not read and hashed again. A location pins the
    /// file's device, inode, size, mtime and ctime (or is a digest, for stores read
    /// by digest), the same test a kept catalog passes, and every read checks the
    /// bytes anyway; so an outside change to one tag costs no rehash of ten thousand
    /// configs.
    pub fn build_after(
        store: usize,
        source: &dyn Source,
        inv: Inventory,
        cache: &ConfigCache,
        limits: &crate::limits::Limits,
        previous: Option<&Catalog>,
    ) -> Catalog {
        let mut cat = Catalog {
            problems: inv.problems,
            ..Default::default()
        };
        let mut images = ImagesBuild::default();
        let mut dangling: Vec<DanglingTag> = Vec::new();
        // sized once: growing tables of 100,000 configs and 270,000 tags held the old
        // table beside the new at every doubling
        let tags: usize = inv.images.iter().map(|r| r.tags.len()).sum();
        let mut read = ConfigsRead::default();
        read.memo.reserve(inv.images.len());
        let memo = &mut read.memo;
        // A config that gave no summary may have been no JSON, whose problem only a
        // read says again: read those.
        for image in previous.into_iter().flat_map(|c| &c.images) {
            if image.created.is_some() || image.architecture.is_some() || image.os.is_some() {
                let summary = ConfigSummary {
                    created: image.created.clone(),
                    architecture: image.architecture.clone(),
                    os: image.os.clone(),
                    variant: image.variant.clone(),
                };
                memo.entry(image.config.clone())
                    .or_insert_with(|| (Ok((image.id.clone(), summary, None, None)), false));
            }
        }
        let known = memo.len();
        // One tag names one image: the last record that claims it, as `docker load`
        // leaves a tag that an archive gives twice (the same rule for every store).
        // What each tag's claimant resolved to: an image ID, or its dangling target.
        let mut claims: FastMap<TagRef, Claim> =
            FastMap::with_capacity_and_hasher(tags, Default::default());
        for record in inv.images {
            let verified = cat.verify(store, source, &record, cache, limits, &mut read);
            let claim = match &verified {
                Some((id, ..)) => Claim::Image(id.clone()),
                None => Claim::Dangling(record.expected_id().to_string()),
            };
            for t in &record.tags {
                if let Some(earlier) = claims.insert(t.clone(), claim.clone())
                    && earlier != claim
                {
                    cat.problems.push(format!(
                        "tag {t} is given to {} and then to {}: shown for the last, as docker load does",
                        earlier.target(),
                        claim.target()
                    ));
                }
            }
            match verified {
                Some((id, summary, loc)) => merge(&mut images, id, summary, loc, record),
                None => dangling.extend(record.tags.iter().map(|t| DanglingTag {
                    tag: t.clone(),
                    target: record.expected_id().to_string(),
                })),
            }
        }
        for image in &mut images.list {
            image
                .tags
                .retain(|t| claims.get(t) == Some(&Claim::Image(image.id.clone())));
            finish(image);
            for t in image.tags.iter().filter(|t| !t.file_name_fits()) {
                cat.problems.push(format!(
                    "tag {t} of {}: its file name is {} bytes, more than the {} a file name may have: not shown under by-tag/ (user.image.tags lists it)",
                    image.id,
                    t.file_name().len(),
                    crate::reference::NAME_MAX
                ));
            }
        }
        dangling.retain(|d| claims.get(&d.tag) == Some(&Claim::Dangling(d.target.clone())));
        dangling.sort_by(|a, b| a.tag.cmp(&b.tag));
        dangling.dedup_by(|a, b| a.tag == b.tag);
        // A dangling target that is not one name under by-id/ (an expected image ID,
        // or a name for what is missing) would make a symlink leave by-id.
        dangling.retain(|d| {
            let ok = crate::source::shared::oci_walk::is_dangling_target(&d.target);
            if !ok {
                cat.problems
                    .push(format!("tag {} names no image digest: not shown", d.tag));
            }
            ok
        });
        images.list.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        cat.images = images.list;
        cat.dangling = dangling;
        tracing::debug!(
            store,
            configs_read = read.memo.len() - known,
            configs_known = known,
            "catalog built"
        );
        cat
    }

    /// Reads and hashes a record's config. `None` when the tags must dangle.
    fn verify(
        &mut self,
        store: usize,
        source: &dyn Source,
        record: &ImageRecord,
        cache: &ConfigCache,
        limits: &crate::limits::Limits,
        read: &mut ConfigsRead,
    ) -> Option<(ImageId, ConfigSummary, BlobLocation)> {
        let memo = &mut read.memo;
        let loc = match &record.config {
            Some(loc) => loc,
            None => {
                if !record.tags.is_empty() {
                    self.problems.push(format!(
                        "{}: config {} is missing: its tags are dangling",
                        record.config_name,
                        record.expected_id()
                    ));
                }
                return None;
            }
        };
        // Each distinct blob is read and hashed once per build: a store may name one
        // config from many records (100,000 entries of one 1 MiB config took more
        // than 30 s when each hashed it again).
        if !memo.contains_key(loc) {
            let checked = if loc.size() > limits.max_config_size {
                Err(format!(
                    "{} bytes, more than the {} a config may have (-o max_config_size raises it)",
                    loc.size(),
                    limits.max_config_size
                ))
            } else {
                read_config(store, source, loc, cache)
            };
            memo.insert(loc.clone(), (checked, false));
        }
        let (checked, reported) = memo.get_mut(loc)?;
        // what a config's first record says of it is said once per build
        let first = !std::mem::replace(reported, true);
        let (id, summary, parse_problem, moved) = match checked {
            Ok(c) => &*c,
            Err(e) => {
                self.problems.push(format!(
                    "{}: cannot read config: {e}: its tags are dangling",
                    record.config_name
                ));
                return None;
            }
        };
        if !record.claimed_id.is_empty() && **id != *record.claimed_id {
            self.problems.push(format!(
                "{}: content hashes to {id}, not to {} it is stored as: not shown as that image, its tags are dangling",
                record.config_name, record.claimed_id
            ));
            return None;
        }
        if first && !record.named_id.is_empty() && **id != *record.named_id {
            self.problems.push(format!(
                "{}: named for {}, but its bytes hash to {id}: shown as {id}, as docker load shows it",
                record.config_name, record.named_id
            ));
        }
        if let Some(p) = parse_problem.as_ref().filter(|_| first) {
            self.problems.push(format!(
                "{}: config is not valid JSON ({p}): shown, without its dates and platform",
                record.config_name
            ));
        }
        let loc = moved.as_deref().unwrap_or(loc).clone();
        Some((id.clone(), summary.clone(), loc))
    }

    /// Logs every problem, once, naming the store.
    pub fn log_problems(&self, store: &str) {
        for p in &self.problems {
            warn!(store, "{p}");
        }
    }
}

/// The images of a build, in the order first seen (sorted by ID once, in place: a
/// sorted map beside the list it became held both at once, 85 MB at 100,000 images).
#[derive(Default)]
struct ImagesBuild {
    at: FastMap<ImageId, usize>,
    list: Vec<Image>,
}

fn merge(
    images: &mut ImagesBuild,
    id: ImageId,
    summary: ConfigSummary,
    loc: BlobLocation,
    record: ImageRecord,
) {
    let at = *images.at.entry(id.clone()).or_insert(images.list.len());
    if at == images.list.len() {
        images.list.push(Image {
            id,
            config: loc,
            mtime: summary
                .created
                .as_deref()
                .and_then(parse_created)
                .unwrap_or(UNIX_EPOCH),
            created: summary.created,
            architecture: summary.architecture,
            os: summary.os,
            variant: summary.variant,
            tags: vec![],
            manifest_digests: vec![],
            digest_refs: vec![],
            layers_size: record.layers_size,
            other_platforms: vec![],
            extra_xattrs: vec![],
        });
    }
    let Some(image) = images.list.get_mut(at) else {
        return;
    };
    // Gathered here, made unique once in `finish`: deduplicating at each record made
    // an image named by 100,000 records cost 100,000² comparisons.
    image.tags.extend(record.tags);
    image.manifest_digests.extend(record.manifest_digests);
    image.digest_refs.extend(record.digest_refs);
    image.other_platforms.extend(record.other_platforms);
    // one attribute per name: values from several records are joined
    for (name, value) in record.extra_xattrs {
        match image.extra_xattrs.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => image.extra_xattrs.push((name, value)),
        }
    }
}

/// Makes what `merge` gathered unique: tags sorted, the rest in first-seen order.
fn finish(image: &mut Image) {
    image.tags.sort();
    image.tags.dedup();
    unique_first_seen(&mut image.manifest_digests);
    unique_first_seen(&mut image.digest_refs);
    unique_first_seen(&mut image.other_platforms);
    for (_, value) in image
        .extra_xattrs
        .iter_mut()
        .filter(|(_, v)| v.contains(','))
    {
        let mut parts: Vec<String> = value.split(',').map(str::to_string).collect();
        unique_first_seen(&mut parts);
        *value = parts.join(",");
    }
}

/// Keeps the first of each value, in order.
fn unique_first_seen<T: Eq + std::hash::Hash + Clone>(v: &mut Vec<T>) {
    // most lists hold one value, or none
    if v.len() < 2 {
        return;
    }
    let mut seen = FastSet::with_capacity_and_hasher(v.len(), Default::default());
    v.retain(|x| seen.insert(x.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kept::{Kept, KeptKind};

    fn sample() -> Catalog {
        let tag = |s: &str| TagRef {
            domain: "docker.io".into(),
            path: "library/x".into(),
            tag: s.into(),
        };
        Catalog {
            images: vec![Image {
                id: format!("sha256:{}", "a".repeat(64)).into(),
                config: BlobLocation::Member {
                    archive: 7,
                    offset: 512,
                    size: 100,
                    pin: Default::default(),
                },
                created: Some("2024-01-02T03:04:05Z".into()),
                mtime: UNIX_EPOCH + Duration::from_secs(1_704_164_645),
                architecture: Some("amd64".into()),
                os: Some("linux".into()),
                variant: None,
                tags: vec![tag("1")],
                manifest_digests: vec![],
                digest_refs: vec![],
                layers_size: Some(42),
                other_platforms: vec![],
                extra_xattrs: vec![("user.image.store-id".into(), "x".into())],
            }],
            dangling: vec![DanglingTag {
                tag: tag("gone"),
                target: format!("sha256:{}", "b".repeat(64)),
            }],
            problems: vec!["a problem".into()],
        }
    }

    #[test]
    fn a_kept_catalog_comes_back_whole_for_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let kept = Kept::in_dir(dir.path().join("kept"));
        kept.store(KeptKind::Catalog, "store", "k1", &sample());
        let back: Catalog = kept.load(KeptKind::Catalog, "store", "k1").unwrap();
        assert_eq!(back.images.len(), 1);
        assert_eq!(back.images[0].id, sample().images[0].id);
        assert_eq!(back.images[0].mtime, sample().images[0].mtime);
        assert_eq!(back.images[0].tags, sample().images[0].tags);
        assert_eq!(back.images[0].config, sample().images[0].config);
        assert_eq!(back.dangling, sample().dangling);
        assert_eq!(back.problems, sample().problems);
        assert!(
            kept.load::<Catalog>(KeptKind::Catalog, "store", "k2")
                .is_none()
        );
    }
}
