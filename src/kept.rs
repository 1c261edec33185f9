//! Files imagefs keeps between mounts, all three kinds, and all that concerns them:
//! - **catalogs**: what a store's scan found (images, verified IDs, tags, problems),
//!   reused while the store's content key is the same;
//! - **tar indexes**: where the members of a big plain archive lie, reused for exactly
//!   that file (its identity);
//! - **compressed indexes**: a gzip/zstd archive's tar index and small members, so
//!   that the next mount decompresses nothing.
//!
//! One framing for all: a magic of the kind (16 bytes), a format number (u32), the
//! payload, the payload's length (u64) and a CRC-32 of everything before it, so that a
//! torn or damaged file is a miss, never a wrong answer (not a cryptographic hash: the
//! files are trusted by who owns them, below, and hashing a 3 MB catalog cost 2 ms of a
//! 25 ms mount). The length and checksum come last, so a compressed index is written
//! as its archive is decompressed.
//!
//! Where: catalogs and tar indexes in the cache directory [`Kept`] names (main finds
//! it: `$XDG_CACHE_HOME/imagefs`, else `~/.cache/imagefs`); a compressed index beside
//! its archive when that directory takes a file, else in the cache directory.
//! Trust: only from a directory of the user imagefs runs as that no one else can write
//! (`store_file::trusted_dir`), and only files of that user (or, beside an archive, of
//! the archive's owner). Cleanup: files unused for a month, temporaries a killed
//! writer left an hour ago.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info};

use crate::store_file::{self, MAX_DIR_ENTRIES, StoreDir};

/// The three kinds of kept file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeptKind {
    Catalog,
    TarIndex,
    CompressedIndex,
    /// A registry's manifests, what they resolved to, and configs, by digest.
    Registry,
}

impl KeptKind {
    fn magic(self) -> &'static [u8; 16] {
        match self {
            KeptKind::Catalog => b"imagefs-catalog\n",
            KeptKind::TarIndex => b"imagefs-tarindex",
            KeptKind::CompressedIndex => b"imagefs-tar-idx\n",
            KeptKind::Registry => b"imagefs-registry",
        }
    }

    /// Bumped whenever a payload's shape or meaning changes.
    fn format(self) -> u32 {
        match self {
            KeptKind::Catalog => 3,
            KeptKind::TarIndex => 2,
            KeptKind::CompressedIndex => 2,
            KeptKind::Registry => 1,
        }
    }

    /// For messages.
    fn what(self) -> &'static str {
        match self {
            KeptKind::Catalog => "catalog",
            KeptKind::TarIndex => "tar index",
            KeptKind::CompressedIndex => "compressed-archive index",
            KeptKind::Registry => "registry state",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            KeptKind::Catalog => "catalog",
            KeptKind::TarIndex => "tarindex",
            KeptKind::CompressedIndex => "index",
            KeptKind::Registry => "registry",
        }
    }
}

const HEAD_LEN: u64 = 16 + 4;
const TAIL_LEN: u64 = 8 + 4;
/// A kept catalog or tar index is read whole, and is at most this big (a
/// 10,000-image catalog is 3 MiB).
const READ_LIMIT: u64 = 1 << 30;
/// A kept file not rewritten for this long is removed (its store may be gone).
const UNUSED_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);
/// A temporary untouched this long is no one's (a writer's is minutes old at most).
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// Frames a payload: magic, format, payload, its length, CRC-32 of all before.
pub fn frame(kind: KeptKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + (HEAD_LEN + TAIL_LEN) as usize);
    out.extend_from_slice(kind.magic());
    out.extend_from_slice(&kind.format().to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let sum = crc32fast::hash(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Writes a value's frame as it is encoded: a 40 MB catalog is never held as its
/// bytes (encoded into a growing buffer, then copied into its frame, it took 80 MB at
/// the peak of a 100,000-image mount).
fn write_frame<T: Serialize + ?Sized>(
    kind: KeptKind,
    value: &T,
    out: impl Write,
) -> io::Result<()> {
    let mut w = FrameWriter {
        inner: io::BufWriter::with_capacity(1 << 16, out),
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    w.write_all(kind.magic())?;
    w.write_all(&kind.format().to_le_bytes())?;
    let mut w =
        postcard::to_io(value, w).map_err(|e| io::Error::other(format!("cannot encode: {e}")))?;
    let payload = w.len - HEAD_LEN;
    w.write_all(&payload.to_le_bytes())?;
    let sum = w.crc.clone().finalize();
    w.inner.write_all(&sum.to_le_bytes())?;
    w.inner.flush()
}

/// Counts and checksums what passes through it.
struct FrameWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The payload of a framed file, once its magic, format, length and CRC check out.
pub fn unframe(kind: KeptKind, bytes: &[u8]) -> Result<&[u8], String> {
    let (start, len) = check_frame(kind, bytes.len() as u64, |head, tail| {
        head.copy_from_slice(&bytes[..HEAD_LEN as usize]);
        tail.copy_from_slice(&bytes[bytes.len() - TAIL_LEN as usize..]);
        Ok(crc32fast::hash(&bytes[..bytes.len() - 4]))
    })?;
    Ok(&bytes[start as usize..(start + len) as usize])
}

/// Checks a frame of `total` bytes, given a way to fill its head and tail and to
/// checksum all but its last 4 bytes: the payload's offset and length.
fn check_frame(
    kind: KeptKind,
    total: u64,
    read: impl FnOnce(&mut [u8], &mut [u8]) -> Result<u32, String>,
) -> Result<(u64, u64), String> {
    if total < HEAD_LEN + TAIL_LEN {
        return Err("not a kept file of this kind (too short)".into());
    }
    let mut head = [0u8; HEAD_LEN as usize];
    let mut tail = [0u8; TAIL_LEN as usize];
    let sum = read(&mut head, &mut tail)?;
    if &head[..16] != kind.magic() {
        return Err("not a kept file of this kind".into());
    }
    if u32::from_le_bytes([tail[8], tail[9], tail[10], tail[11]]) != sum {
        return Err("checksum mismatch (a torn or damaged file)".into());
    }
    let format = u32::from_le_bytes([head[16], head[17], head[18], head[19]]);
    if format != kind.format() {
        return Err(format!(
            "format {format}, this imagefs writes {}",
            kind.format()
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&tail[..8]);
    if u64::from_le_bytes(len) != total - HEAD_LEN - TAIL_LEN {
        return Err("length does not add up".into());
    }
    Ok((HEAD_LEN, total - HEAD_LEN - TAIL_LEN))
}

/// Where kept files go: the cache directory main found, or nowhere (`-o nokeep`).
/// Handed to the sources and the core; nothing below main looks for it.
#[derive(Clone, Debug, Default)]
pub struct Kept {
    dir: Option<PathBuf>,
    /// False under `-o rescan`: nothing kept is used, and what is read is kept anew.
    ignore_kept: bool,
    /// Under `-o ro`: nothing is written beside a store (a compressed archive's index
    /// goes to the cache directory only).
    nothing_beside: bool,
}

/// A key and a value, as a payload holds them: the value stands for the store only
/// while its key is the store's now.
#[derive(Serialize)]
struct KeyedOut<'a, T: ?Sized> {
    key: &'a str,
    value: &'a T,
}

#[derive(serde::Deserialize)]
struct KeyedIn<'a, T> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    value: T,
}

impl Kept {
    /// Nothing is kept or reused.
    pub fn none() -> Kept {
        Kept::default()
    }

    pub fn in_dir(dir: PathBuf) -> Kept {
        Kept {
            dir: Some(dir),
            ignore_kept: false,
            nothing_beside: false,
        }
    }

    /// The same, writing nothing beside a store: `-o ro`.
    pub fn nothing_beside(self) -> Kept {
        Kept {
            nothing_beside: true,
            ..self
        }
    }

    /// Whether a kept file may be written beside a store (also then only into a
    /// directory of the mounting user's own).
    pub fn writes_beside(&self) -> bool {
        !self.nothing_beside
    }

    /// The same place, but what is kept there is not used (only replaced): `-o rescan`.
    pub fn ignoring_kept(self) -> Kept {
        Kept {
            ignore_kept: true,
            ..self
        }
    }

    /// Whether kept files may be used (not only written).
    pub fn reuses(&self) -> bool {
        !self.ignore_kept
    }

    pub fn is_on(&self) -> bool {
        self.dir.is_some()
    }

    /// The directory, trusted at this moment (made if missing); `None` when nothing
    /// is kept or it may not be trusted (said at debug level).
    pub fn trusted_dir(&self) -> Option<StoreDir> {
        let dir = self.dir.as_ref()?;
        match store_file::trusted_dir(dir) {
            Ok(d) => Some(d),
            Err(why) => {
                debug!("kept files not used: {why}");
                None
            }
        }
    }

    /// The file name that stands for `what` (a store's kind and path, an archive's
    /// canonical path) among kept files of `kind`.
    pub fn name(kind: KeptKind, what: &str) -> String {
        let hash = Sha256::digest(what.as_bytes());
        format!("{}.{}", &hex::encode(hash)[..32], kind.suffix())
    }

    /// The value kept for `what` under `key`; `None` on any miss, mismatch, damage or
    /// doubt about who wrote it (logged at debug).
    ///
    /// (The payload is the key and the value, postcard-encoded.)
    pub fn load<T: DeserializeOwned>(&self, kind: KeptKind, what: &str, key: &str) -> Option<T> {
        if self.ignore_kept {
            return None;
        }
        let dir = self.trusted_dir()?;
        let name = Kept::name(kind, what);
        let result = (|| -> Result<T, String> {
            let file = dir.open_own(&name, false).map_err(|e| e.to_string())?;
            store_file::trusted_file(&file, None)?;
            let bytes = store_file::read_limited(&file, READ_LIMIT).map_err(|e| e.to_string())?;
            let (kept_key, value) = decode::<T>(kind, &bytes)?;
            if kept_key != key {
                return Err("what it stands for changed since it was kept".into());
            }
            Ok(value)
        })();
        match result {
            Ok(v) => Some(v),
            Err(why) => {
                debug!(file = %dir.display(&name), "kept {} not used: {why}", kind.what());
                None
            }
        }
    }

    /// Keeps `value` for `what` under `key`. A failure costs the next mount a scan.
    pub fn store<T: Serialize + ?Sized>(&self, kind: KeptKind, what: &str, key: &str, value: &T) {
        let Some(dir) = self.trusted_dir() else {
            return;
        };
        let name = Kept::name(kind, what);
        let result = write_atomically(&dir, &name, |f| {
            write_frame(kind, &KeyedOut { key, value }, f)
        });
        match result {
            Ok(()) => info!(file = %dir.display(&name), "{} kept for the next mount", kind.what()),
            Err(e) => debug!(file = %dir.display(&name), "cannot keep the {}: {e}", kind.what()),
        }
    }

    /// Where a compressed index for `what` goes in the cache directory.
    pub fn cache_place(&self, kind: KeptKind, what: &str) -> Option<Place> {
        Some(Place {
            dir: self.trusted_dir()?,
            name: Kept::name(kind, what),
            also_trusted: None,
        })
    }
}

/// A framed kept file's key and value (also what the fuzzers decode).
pub fn decode<T: DeserializeOwned>(kind: KeptKind, bytes: &[u8]) -> Result<(String, T), String> {
    let keyed: KeyedIn<T> =
        postcard::from_bytes(unframe(kind, bytes)?).map_err(|e| format!("cannot decode: {e}"))?;
    Ok((keyed.key.into_owned(), keyed.value))
}

/// Writes a kept file: a temporary (mode 0600) renamed into place, after sweeping what
/// is no one's any more. No fsync: a file torn by a crash fails its checksum.
fn write_atomically(
    dir: &StoreDir,
    name: &str,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    sweep(dir);
    let tmp = temp_name(name);
    let result = (|| {
        let mut f = dir.create_new(&tmp, 0o600)?;
        write(&mut f)?;
        drop(f);
        dir.rename(&tmp, name)
    })();
    if result.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    result
}

/// A temporary name for `name`, this process's alone: `.<name>.<pid>.<n>`.
fn temp_name(name: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{name}.{}.{n}", std::process::id())
}

/// Removes kept files no one rewrote for a month and temporaries a killed writer left
/// an hour ago, so the directory does not grow with every store ever mounted.
pub fn sweep(dir: &StoreDir) {
    for (name, is_dir) in dir.entries("", MAX_DIR_ENTRIES).unwrap_or_default() {
        let kept = [
            KeptKind::Catalog,
            KeptKind::TarIndex,
            KeptKind::CompressedIndex,
            KeptKind::Registry,
        ]
        .iter()
        .any(|k| name.ends_with(&format!(".{}", k.suffix())));
        let temp = name.starts_with('.');
        if is_dir || !(kept || temp) {
            continue;
        }
        let limit = if temp { ABANDONED_AFTER } else { UNUSED_AFTER };
        let old = dir
            .symlink_metadata(&name)
            .ok()
            .flatten()
            .and_then(|m| m.modified().ok())
            .is_some_and(|t| t.elapsed().is_ok_and(|age| age > limit));
        if old {
            match dir.remove_file(&name) {
                Ok(()) => info!(file = %dir.display(&name), "removed an unused kept file"),
                Err(e) => debug!("cannot remove: {e}"),
            }
        }
    }
}

/// A place a kept file may be: a name in a directory reached through the containment
/// layer, and whose files there besides this user's are trusted.
pub struct Place {
    pub dir: StoreDir,
    pub name: String,
    /// Beside an archive: its owner's files too (who could change the archive).
    pub also_trusted: Option<u32>,
}

impl Place {
    pub fn beside(dir: StoreDir, name: String, owner: Option<u32>) -> Place {
        Place {
            dir,
            name,
            also_trusted: owner,
        }
    }

    pub fn display(&self) -> String {
        self.dir.display(&self.name)
    }

    /// The framed file of `kind` here: the open file, where its payload starts and its
    /// length. `Ok(None)` when there is none. The whole file is checksummed first.
    pub fn open(&self, kind: KeptKind) -> Result<Option<(File, u64, u64)>, String> {
        let file = match self.dir.open_own(&self.name, false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        store_file::trusted_file(&file, self.also_trusted)?;
        let total = file.metadata().map_err(|e| e.to_string())?.len();
        let (start, len) = check_frame(kind, total, |head, tail| {
            file.read_exact_at(head, 0).map_err(|e| e.to_string())?;
            if total >= TAIL_LEN {
                file.read_exact_at(tail, total - TAIL_LEN)
                    .map_err(|e| e.to_string())?;
            }
            let mut hasher = crc32fast::Hasher::new();
            let mut reader = io::BufReader::with_capacity(256 * 1024, &file).take(total - 4);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok(hasher.finalize())
        })?;
        Ok(Some((file, start, len)))
    }

    /// Starts writing a framed file of `kind` here, under a temporary name; sweeps
    /// what is no one's first.
    pub fn create(self, kind: KeptKind) -> io::Result<FramedWriter> {
        sweep(&self.dir);
        let temp = temp_name(&self.name);
        let mut file = self.dir.create_new(&temp, 0o644)?;
        let mut crc = crc32fast::Hasher::new();
        let mut head = kind.magic().to_vec();
        head.extend_from_slice(&kind.format().to_le_bytes());
        file.write_all(&head)?;
        crc.update(&head);
        Ok(FramedWriter {
            out: io::BufWriter::with_capacity(256 * 1024, file),
            crc,
            len: 0,
            place: self,
            temp,
        })
    }
}

/// A framed file being written, payload first; its length and checksum at `finish`.
/// Dropped unfinished, its temporary is removed.
pub struct FramedWriter {
    out: io::BufWriter<File>,
    crc: crc32fast::Hasher,
    len: u64,
    place: Place,
    temp: String,
}

impl Write for FramedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl FramedWriter {
    /// Bytes of payload written so far: where the next write lands in it.
    pub fn payload_len(&self) -> u64 {
        self.len
    }

    /// Where the payload starts in the file.
    pub fn payload_start() -> u64 {
        HEAD_LEN
    }

    /// Writes the tail and, when `keep`, renames the file into place. The file, open,
    /// and where it was kept (`None`: not kept, or its place refused it).
    pub fn finish(mut self, keep: bool) -> io::Result<(File, Option<PathBuf>)> {
        let tail = self.len.to_le_bytes();
        self.out.write_all(&tail)?;
        self.crc.update(&tail);
        let sum = self.crc.clone().finalize();
        self.out.write_all(&sum.to_le_bytes())?;
        self.out.flush()?;
        let file = self.out.get_ref().try_clone()?;
        if !keep {
            return Ok((file, None));
        }
        match self.place.dir.rename(&self.temp, &self.place.name) {
            Ok(()) => Ok((file, Some(PathBuf::from(self.place.display())))),
            Err(e) => {
                debug!(index = %self.place.display(), "cannot keep it here: {e}");
                Ok((file, None))
            }
        }
    }

    /// Copies this finished-or-not file's bytes into another place (a fallback when
    /// the first refused the rename).
    pub fn copy_to(file: &File, place: &Place) -> io::Result<()> {
        let tmp = temp_name(&place.name);
        let result = (|| {
            let mut out = place.dir.create_new(&tmp, 0o644)?;
            let mut from = file.try_clone()?;
            io::Seek::seek(&mut from, io::SeekFrom::Start(0))?;
            io::copy(&mut from, &mut out)?;
            place.dir.rename(&tmp, &place.name)
        })();
        if result.is_err() {
            let _ = place.dir.remove_file(&tmp);
        }
        result
    }
}

impl Drop for FramedWriter {
    fn drop(&mut self) {
        // after a rename nothing is left under the temporary name (it is ours alone)
        let _ = self.place.dir.remove_file(&self.temp);
    }
}

/// The path a store or archive is named by in kept files: canonical when it can be.
pub fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_kind_and_detect_any_damage() {
        let bytes = frame(KeptKind::Catalog, b"payload");
        assert_eq!(unframe(KeptKind::Catalog, &bytes).unwrap(), b"payload");
        // encoded in place, a value's frame is the frame of its encoding
        let value = (String::from("key"), vec![1u64, 300, 70_000]);
        let mut written = Vec::new();
        write_frame(KeptKind::Catalog, &value, &mut written).unwrap();
        assert_eq!(
            written,
            frame(KeptKind::Catalog, &postcard::to_stdvec(&value).unwrap())
        );
        assert!(unframe(KeptKind::TarIndex, &bytes).is_err());
        for cut in [0, 10, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                unframe(KeptKind::Catalog, &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(unframe(KeptKind::Catalog, &bad).is_err(), "flip at {at}");
        }
        // a valid checksum over another format number
        let mut other = bytes[..bytes.len() - 4].to_vec();
        other[16] = 99;
        let sum = crc32fast::hash(&other);
        other.extend_from_slice(&sum.to_le_bytes());
        assert!(
            unframe(KeptKind::Catalog, &other)
                .unwrap_err()
                .contains("format 99")
        );
    }

    #[test]
    fn values_come_back_only_for_their_key_and_only_from_a_trusted_place() {
        let dir = tempfile::tempdir().unwrap();
        let kept = Kept::in_dir(dir.path().join("kept"));
        kept.store(KeptKind::Catalog, "store", "k1", &vec![1u32, 2, 3]);
        assert_eq!(
            kept.load::<Vec<u32>>(KeptKind::Catalog, "store", "k1"),
            Some(vec![1, 2, 3])
        );
        assert_eq!(
            kept.load::<Vec<u32>>(KeptKind::Catalog, "store", "k2"),
            None
        );
        assert_eq!(
            kept.load::<Vec<u32>>(KeptKind::TarIndex, "store", "k1"),
            None
        );
        assert_eq!(
            Kept::none().load::<Vec<u32>>(KeptKind::Catalog, "store", "k1"),
            None
        );
        // a directory others can write is not trusted
        let mut p = std::fs::metadata(dir.path().join("kept"))
            .unwrap()
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o777);
        std::fs::set_permissions(dir.path().join("kept"), p).unwrap();
        assert_eq!(
            kept.load::<Vec<u32>>(KeptKind::Catalog, "store", "k1"),
            None
        );
    }

    #[test]
    fn framed_writes_stream_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StoreDir::open(dir.path(), "test").unwrap();
        let place = Place::beside(sd, "x.index".into(), None);
        let mut w = place.create(KeptKind::CompressedIndex).unwrap();
        w.write_all(b"data region").unwrap();
        assert_eq!(w.payload_len(), 11);
        let (_, kept) = w.finish(true).unwrap();
        assert!(kept.unwrap().ends_with("x.index"));
        let again = Place::beside(
            StoreDir::open(dir.path(), "test").unwrap(),
            "x.index".into(),
            None,
        );
        let (f, start, len) = again.open(KeptKind::CompressedIndex).unwrap().unwrap();
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, start).unwrap();
        assert_eq!(buf, b"data region");
        // no temporary is left
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn old_kept_files_and_abandoned_temporaries_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(40 * 24 * 3600);
        for (name, when) in [
            ("a.catalog", old),
            ("b.catalog", std::time::SystemTime::now()),
            (".a.catalog.1.0", old),
            ("unrelated.txt", old),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, b"x").unwrap();
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        sweep(&StoreDir::open(dir.path(), "cache directory").unwrap());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["b.catalog", "unrelated.txt"]);
    }
}
