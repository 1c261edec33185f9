//! Catalogs kept between mounts: what a store's scan found (images, verified IDs,
//! tags, dangling tags, problems), saved after a mount and reused by the next one
//! while the store's content key ([`Source::content_key`]) is the same.
//!
//! A mount of an unchanged 2,000-image store then reads one file instead of every
//! manifest and config. What it gives up: a blob rewritten in place without moving
//! anything the key covers is noticed when it is read (configs are checked against
//! their ID at every read from the store) rather than at mount. `-o rescan` reads
//! the store again.
//!
//! One file per store, `$XDG_CACHE_HOME/imagefs/<hash of kind:path>.catalog`:
//! magic, format version, payload length, the payload (postcard), and a CRC-32 of
//! all that, so a torn or damaged file is a miss, never a wrong catalog. (Not a
//! SHA-256: the file guards against accidents, not against its owner, and hashing
//! 3 MB for a 10,000-image store cost 2 ms of a 25 ms mount.) Written to a temp file
//! and renamed into place.

use std::borrow::Cow;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info};

use crate::catalog::Catalog;
use crate::source::Source;
use crate::source::store_file;
use crate::tar_index::TarIndex;

const MAGIC: &[u8; 16] = b"imagefs-catalog\n";
/// Bumped whenever the payload's shape or meaning changes.
const FORMAT: u32 = 2;
const HEADER_LEN: usize = 16 + 4 + 8;
const SUM_LEN: usize = 4;
/// A kept catalog not rewritten for this long is removed (its store may be gone).
const UNUSED_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Serialize, Deserialize)]
struct Payload<'a> {
    /// `kind:path` and the content key, and the imagefs version that wrote it: all
    /// must match for the catalog to be reused.
    key: Cow<'a, str>,
    /// Borrowed when kept, owned when loaded.
    catalog: Cow<'a, Catalog>,
}

/// Where catalogs are kept.
#[derive(Clone, Debug)]
pub struct KeptCatalogs {
    dir: PathBuf,
}

impl KeptCatalogs {
    pub fn new(dir: PathBuf) -> KeptCatalogs {
        KeptCatalogs { dir }
    }

    /// `$XDG_CACHE_HOME/imagefs`, else `~/.cache/imagefs`: also where a compressed
    /// archive's index goes when its own directory is not writable.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("imagefs"))
    }

    /// The key a kept catalog must carry to stand for `source` now, read under
    /// `limits` (a catalog cut short by a lower limit is not one for a higher);
    /// `None` when its catalog is not kept.
    pub fn key_of(source: &dyn Source, limits: &crate::limits::Limits) -> Option<String> {
        let content = source.content_key()?;
        Some(format!(
            "{}\n{}\n{limits:?}\n{}",
            env!("CARGO_PKG_VERSION"),
            source.describe(),
            content
        ))
    }

    fn file_for(&self, source: &dyn Source) -> String {
        let who = source.describe();
        let path = std::fs::canonicalize(source.path()).unwrap_or_else(|_| source.path().into());
        let hash = Sha256::digest(format!("{who}\n{}", path.display()).as_bytes());
        format!("{}.catalog", &hex::encode(hash)[..32])
    }

    /// The catalog kept for `source` under `key`, its locations rebound to this
    /// opening of the store. `None` on any mismatch or damage (logged at debug), and
    /// when the file or its directory could have been written by another user.
    pub fn load(&self, source: &dyn Source, key: &str) -> Option<Catalog> {
        let name = self.file_for(source);
        let bytes = match read_kept(&self.dir, &name, CATALOG_LIMIT) {
            Ok(b) => b,
            Err(e) => {
                debug!(file = %self.dir.join(&name).display(), "no kept catalog: {e}");
                return None;
            }
        };
        let at = self.dir.join(&name);
        match decode(&bytes, key) {
            Ok(mut catalog) => {
                for image in &mut catalog.images {
                    source.rebind(&mut image.config);
                }
                Some(catalog)
            }
            Err(why) => {
                debug!(file = %at.display(), "kept catalog not used: {why}");
                None
            }
        }
    }

    /// Keeps `catalog` for the next mount. Failures cost that mount a scan, no more.
    pub fn keep(&self, source: &dyn Source, key: &str, catalog: &Catalog) {
        let name = self.file_for(source);
        let at = self.dir.join(&name);
        match self.write(&name, key, catalog) {
            Ok(()) => {
                info!(store = %source.describe(), file = %at.display(), "catalog kept for the next mount")
            }
            Err(e) => {
                debug!(store = %source.describe(), file = %at.display(), "cannot keep the catalog: {e}")
            }
        }
    }

    fn write(&self, name: &str, key: &str, catalog: &Catalog) -> std::io::Result<()> {
        write_kept(&self.dir, name, &encode(key, catalog)?)
    }
}

/// A kept catalog or tar index is at most this big (a 10,000-image catalog is 3 MiB).
const CATALOG_LIMIT: u64 = 1 << 30;

/// Reads a kept file of a trusted directory (see `store_file::trusted_dir`), itself
/// trusted (this user's, writable by no one else), at most `limit` bytes.
fn read_kept(dir: &Path, name: &str, limit: u64) -> std::io::Result<Vec<u8>> {
    let dir = store_file::trusted_dir(dir).map_err(std::io::Error::other)?;
    let file = dir.open_own(name, false)?;
    store_file::trusted_file(&file, None).map_err(std::io::Error::other)?;
    store_file::read_limited(&file, limit)
}

/// Writes a kept file: a temp file (mode 0600) renamed into place, after sweeping what
/// is no one's any more, in a trusted directory only. No fsync: a file torn by a crash
/// fails its checksum and is a miss.
fn write_kept(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = store_file::trusted_dir(dir).map_err(std::io::Error::other)?;
    remove_unused(&dir);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = format!(".catalog.{}.{n}", std::process::id());
    let result = (|| {
        let mut f = dir.create_new(&tmp, 0o600)?;
        f.write_all(bytes)?;
        drop(f);
        dir.rename(&tmp, name)
    })();
    if result.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    result
}

fn encode(key: &str, catalog: &Catalog) -> std::io::Result<Vec<u8>> {
    let payload = postcard::to_stdvec(&Payload {
        key: Cow::Borrowed(key),
        catalog: Cow::Borrowed(catalog),
    })
    .map_err(|e| std::io::Error::other(format!("cannot encode the catalog: {e}")))?;
    Ok(frame(MAGIC, &payload))
}

/// Magic, format, length, payload, CRC-32 of all before it.
fn frame(magic: &[u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + SUM_LEN);
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let sum = crc32fast::hash(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// For the fuzzer: a kept catalog's payload, framed as a kept file is (so that the
/// checksum passes and the payload's decoding is what is exercised), then decoded.
#[doc(hidden)]
pub fn fuzz_decode(payload: &[u8]) -> Result<Catalog, String> {
    let framed = frame(MAGIC, payload);
    let decoded: Payload = postcard::from_bytes(unframe(MAGIC, &framed)?)
        .map_err(|e| format!("cannot decode: {e}"))?;
    decode(&framed, &decoded.key)
}

/// For the fuzzer: a kept tar index's payload, framed, decoded into an index, and
/// every name resolved.
#[doc(hidden)]
pub fn fuzz_tar_index(payload: &[u8]) -> Result<usize, String> {
    let framed = frame(TAR_INDEX_MAGIC, payload);
    let kept: KeptTarIndex = postcard::from_bytes(unframe(TAR_INDEX_MAGIC, &framed)?)
        .map_err(|e| format!("cannot decode: {e}"))?;
    let index = TarIndex::from_parts(kept.entries.into_owned(), kept.end_of_entries, vec![]);
    Ok(index
        .entries()
        .iter()
        .filter(|(n, _)| index.resolve(n).is_some())
        .count())
}

fn decode(bytes: &[u8], key: &str) -> Result<Catalog, String> {
    let payload: Payload =
        postcard::from_bytes(unframe(MAGIC, bytes)?).map_err(|e| format!("cannot decode: {e}"))?;
    if payload.key != key {
        return Err("the store changed since it was kept".into());
    }
    Ok(payload.catalog.into_owned())
}

/// The payload of a framed file, once its magic, CRC, format and length check out.
fn unframe<'a>(magic: &[u8; 16], bytes: &'a [u8]) -> Result<&'a [u8], String> {
    if bytes.len() < HEADER_LEN + SUM_LEN || &bytes[..16] != magic {
        return Err("not a kept file of this kind".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - SUM_LEN);
    if crc32fast::hash(body).to_le_bytes() != sum {
        return Err("checksum mismatch (a torn or damaged file)".into());
    }
    let format = u32::from_le_bytes([body[16], body[17], body[18], body[19]]);
    if format != FORMAT {
        return Err(format!("format {format}, this imagefs writes {FORMAT}"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&body[20..28]);
    if u64::from_le_bytes(len) != (body.len() - HEADER_LEN) as u64 {
        return Err("length does not add up".into());
    }
    Ok(&body[HEADER_LEN..])
}

/// Tar indexes of plain archives with many members, kept beside the catalogs so that
/// a mount of an unchanged 2,000-image archive does not walk its 8,000 headers again
/// (4 ms of 512-byte reads). Keyed by the file's full identity: a kept index is valid
/// for exactly that file. Set once by `main` (not when catalogs are not kept).
static TAR_INDEX_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
const TAR_INDEX_MAGIC: &[u8; 16] = b"imagefs-tarindex";
/// Below this many members a walk costs about what reading a kept index does...
const TAR_INDEX_MIN_MEMBERS: usize = 1000;
/// ...unless the members are big: then every header lies on a page of its own, far
/// from the others, and the walk pays a page-cache lookup (cold: a disk read and its
/// readahead) per member. The 80 headers of a 4 GiB archive took 1 ms to walk warm,
/// most of its kept-catalog mount.
const TAR_INDEX_MIN_BYTES: u64 = 64 << 20;

pub fn keep_tar_indexes_in(dir: PathBuf) {
    let _ = TAR_INDEX_DIR.set(dir);
}

fn tar_index_file(archive: &Path) -> Option<String> {
    let path = std::fs::canonicalize(archive).ok()?;
    let hash = Sha256::digest(path.as_os_str().as_encoded_bytes());
    Some(format!("{}.tarindex", &hex::encode(hash)[..32]))
}

fn tar_index_key(meta: &std::fs::Metadata) -> String {
    format!(
        "{}\n{}",
        env!("CARGO_PKG_VERSION"),
        crate::source::ChangeToken::identity_of(meta)
    )
}

/// Borrowed when kept, owned when loaded.
#[derive(Serialize, Deserialize)]
struct KeptTarIndex<'a> {
    key: Cow<'a, str>,
    end_of_entries: u64,
    entries: Cow<'a, [(String, crate::tar_index::TarMember)]>,
}

/// The index kept for the archive `file` (opened at `archive`), if it is this file's.
pub fn load_tar_index(archive: &Path, meta: &std::fs::Metadata) -> Option<TarIndex> {
    load_tar_index_in(TAR_INDEX_DIR.get()?, archive, meta)
}

fn load_tar_index_in(dir: &Path, archive: &Path, meta: &std::fs::Metadata) -> Option<TarIndex> {
    let name = tar_index_file(archive)?;
    let at = dir.join(&name);
    let bytes = read_kept(dir, &name, CATALOG_LIMIT).ok()?;
    let kept: KeptTarIndex = match unframe(TAR_INDEX_MAGIC, &bytes)
        .and_then(|p| postcard::from_bytes(p).map_err(|e| format!("cannot decode: {e}")))
    {
        Ok(k) => k,
        Err(why) => {
            debug!(file = %at.display(), "kept tar index not used: {why}");
            return None;
        }
    };
    if kept.key != tar_index_key(meta) || kept.entries.is_empty() {
        return None;
    }
    Some(TarIndex::from_parts(
        kept.entries.into_owned(),
        kept.end_of_entries,
        Vec::new(),
    ))
}

/// Keeps a walk's index for the next mount: only a clean walk of a big archive.
pub fn keep_tar_index(archive: &Path, meta: &std::fs::Metadata, index: &TarIndex) {
    if let Some(dir) = TAR_INDEX_DIR.get() {
        keep_tar_index_in(dir, archive, meta, index);
    }
}

fn keep_tar_index_in(dir: &Path, archive: &Path, meta: &std::fs::Metadata, index: &TarIndex) {
    let big = index.len() >= TAR_INDEX_MIN_MEMBERS || meta.len() >= TAR_INDEX_MIN_BYTES;
    if !big || !index.problems.is_empty() {
        return;
    }
    let Some(name) = tar_index_file(archive) else {
        return;
    };
    let at = dir.join(&name);
    let payload = postcard::to_stdvec(&KeptTarIndex {
        key: Cow::Owned(tar_index_key(meta)),
        end_of_entries: index.end_of_entries,
        entries: Cow::Borrowed(index.entries()),
    })
    .map_err(|e| std::io::Error::other(e.to_string()));
    if let Err(e) = payload.and_then(|p| write_kept(dir, &name, &frame(TAR_INDEX_MAGIC, &p))) {
        debug!(file = %at.display(), "cannot keep the tar index: {e}");
    }
}

/// Removes kept catalogs nobody has rewritten for a month, and temp files a killed
/// writer left, so the directory does not grow with every store ever mounted.
fn remove_unused(dir: &store_file::StoreDir) {
    for (name, is_dir) in dir
        .entries("", store_file::MAX_DIR_ENTRIES)
        .unwrap_or_default()
    {
        let ours = name.ends_with(".catalog")
            || name.ends_with(".tarindex")
            || name.starts_with(".catalog.");
        if is_dir || !ours {
            continue;
        }
        let limit = if name.starts_with('.') {
            Duration::from_secs(3600)
        } else {
            UNUSED_AFTER
        };
        let old = dir
            .symlink_metadata(&name)
            .ok()
            .flatten()
            .and_then(|m| m.modified().ok())
            .is_some_and(|t| t.elapsed().is_ok_and(|age| age > limit));
        if old {
            let _ = dir.remove_file(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{DanglingTag, Image};
    use crate::reference::TagRef;
    use crate::source::BlobLocation;

    fn sample() -> Catalog {
        let tag = |s: &str| TagRef {
            domain: "docker.io".into(),
            path: "library/x".into(),
            tag: s.into(),
        };
        Catalog {
            images: vec![Image {
                id: format!("sha256:{}", "a".repeat(64)),
                config: BlobLocation::Member {
                    archive: 7,
                    offset: 512,
                    size: 100,
                    pin: Default::default(),
                },
                created: Some("2024-01-02T03:04:05Z".into()),
                mtime: std::time::UNIX_EPOCH + Duration::from_secs(1_704_164_645),
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
    fn round_trip_needs_the_same_key() {
        let bytes = encode("k1", &sample()).unwrap();
        let back = decode(&bytes, "k1").unwrap();
        assert_eq!(back.images.len(), 1);
        assert_eq!(back.images[0].id, sample().images[0].id);
        assert_eq!(back.images[0].mtime, sample().images[0].mtime);
        assert_eq!(back.images[0].tags, sample().images[0].tags);
        assert_eq!(back.dangling, sample().dangling);
        assert_eq!(back.problems, sample().problems);
        assert!(decode(&bytes, "k2").unwrap_err().contains("changed"));
    }

    #[test]
    fn torn_or_damaged_files_are_misses() {
        let bytes = encode("k", &sample()).unwrap();
        for cut in [0, 10, HEADER_LEN, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], "k").is_err(), "cut at {cut}");
        }
        for at in [0, 17, 25, HEADER_LEN + 3, bytes.len() - 5] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(decode(&bad, "k").is_err(), "flip at {at}");
        }
        // a valid checksum over a payload of another format version
        let mut other = bytes[..bytes.len() - SUM_LEN].to_vec();
        other[16] = 99;
        let sum = crc32fast::hash(&other);
        other.extend_from_slice(&sum.to_le_bytes());
        assert!(decode(&other, "k").unwrap_err().contains("format 99"));
    }

    #[test]
    fn old_catalogs_and_abandoned_temps_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let old = filetime_days_ago(40);
        for (name, when) in [
            ("a.catalog", old),
            ("b.catalog", std::time::SystemTime::now()),
            (".catalog.xyz", old),
            ("unrelated.index", old),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, b"x").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        remove_unused(&store_file::StoreDir::open(dir.path(), "cache directory").unwrap());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["b.catalog", "unrelated.index"]);
    }

    #[test]
    fn a_big_archives_tar_index_is_kept_for_exactly_that_file() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("many.tar");
        let write_tar = |members: usize| {
            let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
            for i in 0..members {
                let data = format!("member {i}");
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, format!("m{i}.json"), data.as_bytes())
                    .unwrap();
            }
            b.finish().unwrap();
        };
        let walk = || {
            let f = std::fs::File::open(&tar_path).unwrap();
            let meta = f.metadata().unwrap();
            (TarIndex::build_file(&f, meta.len(), 1 << 20), meta)
        };
        let kept_dir = dir.path().join("kept");
        // a small archive is not kept: walking it is as cheap
        write_tar(10);
        let (index, meta) = walk();
        keep_tar_index_in(&kept_dir, &tar_path, &meta, &index);
        assert!(load_tar_index_in(&kept_dir, &tar_path, &meta).is_none());

        write_tar(TAR_INDEX_MIN_MEMBERS + 5);
        let (index, meta) = walk();
        keep_tar_index_in(&kept_dir, &tar_path, &meta, &index);
        let kept = load_tar_index_in(&kept_dir, &tar_path, &meta).unwrap();
        assert_eq!(kept.entries(), index.entries());
        assert_eq!(kept.end_of_entries, index.end_of_entries);
        assert_eq!(kept.get("m7.json"), index.get("m7.json"));
        // the same bytes written again are another file (ctime, mtime): not used
        std::thread::sleep(Duration::from_millis(20));
        write_tar(TAR_INDEX_MIN_MEMBERS + 5);
        let meta = std::fs::metadata(&tar_path).unwrap();
        assert!(load_tar_index_in(&kept_dir, &tar_path, &meta).is_none());

        // a few members of big layers: kept
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(TAR_INDEX_MIN_BYTES);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(
            &mut h,
            "layer.tar",
            std::io::Read::take(std::io::repeat(0), TAR_INDEX_MIN_BYTES),
        )
        .unwrap();
        b.finish().unwrap();
        drop(b);
        let (index, meta) = walk();
        assert_eq!(index.len(), 1);
        keep_tar_index_in(&kept_dir, &tar_path, &meta, &index);
        let kept = load_tar_index_in(&kept_dir, &tar_path, &meta).unwrap();
        assert_eq!(kept.get("layer.tar"), index.get("layer.tar"));
    }

    fn filetime_days_ago(days: u64) -> std::time::SystemTime {
        std::time::SystemTime::now() - Duration::from_secs(days * 24 * 3600)
    }
}
