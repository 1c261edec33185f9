//! Compressed (gzip, zstd) tar archives: indexed in one decompression pass, the index
//! persisted so that the next mount decompresses nothing.
//!
//! imagefs only ever reads an archive's small members (manifest.json, index.json,
//! configs, OCI manifests), never its layers. So the pass that walks the headers
//! also keeps every small member's bytes, and the persisted index holds both: the tar
//! index and those bytes. A later mount reads that file and not the archive. A member
//! too big to keep (a config over [`INLINE_MAX`]) is read by decompressing from the
//! start again, with a cursor kept so that sequential reads go forward only.
//!
//! The index lives beside the archive (`<archive>.imagefs-index`, as ratarmount keeps
//! `<archive>.index.sqlite`) when that directory is writable, else under
//! `$XDG_CACHE_HOME/imagefs/` (default `~/.cache/imagefs/`) named by a hash of the
//! archive's path. It records the archive's identity (inode, size, mtime), so a
//! changed archive is indexed again, and ends with a SHA-256 of itself, so a torn or
//! damaged index is rebuilt, never trusted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::StoreDir;
use super::archive::ArchiveFile;
use crate::tar_index::{Capture, TarIndex, TarMember};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// A decoder over the whole file from its start. Multi-member gzip (pigz,
    /// bgzip) and multi-frame zstd are read to the end.
    fn decoder<R: Read + Send + 'static>(self, input: R) -> io::Result<Box<dyn Read + Send>> {
        let input = BufReader::with_capacity(READ_BUFFER, input);
        Ok(match self {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
            Compression::None => Box::new(input),
        })
    }
}

/// Members up to this size are kept in the index: manifests and configs are a few
/// KiB, layers of real images far more.
pub const INLINE_MAX: u64 = 1 << 20;
/// At most this many bytes of members are kept in one index.
const INLINE_TOTAL_MAX: u64 = 256 << 20;
const READ_BUFFER: usize = 256 * 1024;
const MAGIC: &[u8; 16] = b"imagefs-tar-idx\n";
/// The index header (member names and offsets) of an archive imagefs indexed: far
/// less than this for any real archive.
const HEADER_LIMIT: u64 = 256 << 20;
const VERSION: u32 = 1;
const TRAILER_LEN: u64 = 16 + 4 + 4 + 8 + 8 + 32;

/// The archive file an index was made from. Any change means a new index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    archive: Identity,
    compression: Compression,
    /// Length of the uncompressed tar stream.
    tar_len: u64,
    end_of_entries: u64,
    /// Borrowed from the index when written (a copy of 500,000 entries and its JSON
    /// were most of a big indexing's memory), owned when read.
    entries: std::borrow::Cow<'a, [(String, TarMember)]>,
    problems: Vec<String>,
    /// (member data offset in the tar, where its bytes are in this file's data region).
    inline: Vec<(u64, u64)>,
}

/// A compressed archive's uncompressed bytes, as far as imagefs reads them.
pub struct CompressedTar {
    path: PathBuf,
    /// The archive as opened: a member not kept is decompressed from this file, never
    /// from whatever the path names by then.
    source: File,
    compression: Compression,
    /// The index file (persisted, or an unlinked temporary one): the kept members.
    store: File,
    /// Member data offset in the tar → offset of its copy in `store`.
    inline: HashMap<u64, u64>,
    /// For members not kept: a decoder positioned at `.0` bytes into the tar.
    cursor: Mutex<Option<(u64, Box<dyn Read + Send>)>>,
    pub tar_len: u64,
    /// Where the index was read from or written to (None: not persisted).
    pub index_path: Option<PathBuf>,
}

impl CompressedTar {
    /// The persisted index when it matches `file`, else one decompression pass that
    /// builds it (and persists it when the archive is undamaged).
    pub fn open(
        at: &ArchiveFile,
        file: &File,
        compression: Compression,
    ) -> Result<(CompressedTar, TarIndex), String> {
        let path = at.shown.as_path();
        let meta = file.metadata().map_err(|e| e.to_string())?;
        let identity = Identity::of(&meta);
        for place in index_places(at) {
            match load(&place, &identity, compression) {
                Ok(Some((store, header))) => {
                    debug!(archive = %path.display(), index = %place.display(), "using the persisted index");
                    let index = TarIndex::from_parts(
                        header.entries.into_owned(),
                        header.end_of_entries,
                        header.problems,
                    );
                    return CompressedTar::new(
                        path,
                        file,
                        compression,
                        store,
                        header.inline,
                        header.tar_len,
                        Some(PathBuf::from(place.display())),
                    )
                    .map(|tar| (tar, index));
                }
                Ok(None) => {}
                Err(why) => {
                    info!(archive = %path.display(), index = %place.display(), %why, "persisted index not used: indexing again")
                }
            }
        }
        let built = build(at, file, compression, identity, meta.size())?;
        let persisted = if built.index.problems.is_empty() {
            persist(at, &built.store)
        } else {
            None
        };
        let tar = CompressedTar::new(
            path,
            file,
            compression,
            built.store.into_file().map_err(|e| e.to_string())?,
            built.inline,
            built.tar_len,
            persisted,
        )?;
        Ok((tar, built.index))
    }

    fn new(
        path: &Path,
        file: &File,
        compression: Compression,
        store: File,
        inline: Vec<(u64, u64)>,
        tar_len: u64,
        index_path: Option<PathBuf>,
    ) -> Result<CompressedTar, String> {
        Ok(CompressedTar {
            path: path.to_path_buf(),
            source: file.try_clone().map_err(|e| e.to_string())?,
            compression,
            store,
            inline: inline.into_iter().collect(),
            cursor: Mutex::new(None),
            tar_len,
            index_path,
        })
    }

    /// The archive file as opened.
    pub fn source_file(&self) -> &File {
        &self.source
    }

    /// Reads member data (`start`, `size` in the tar) from `offset` on.
    pub fn read_at(&self, start: u64, size: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= size {
            return Ok(0);
        }
        let want = buf
            .len()
            .min((size - offset).min(usize::MAX as u64) as usize);
        let beyond = || io::Error::new(io::ErrorKind::InvalidData, "offset beyond any file");
        if let Some(&at) = self.inline.get(&start) {
            let at = at.checked_add(offset).ok_or_else(beyond)?;
            return self.store.read_at(&mut buf[..want], at);
        }
        let pos = start.checked_add(offset).ok_or_else(beyond)?;
        self.read_streaming(pos, &mut buf[..want])
    }

    /// Decompresses up to `pos` (from the start, unless the cursor is before it).
    fn read_streaming(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut cursor = self.cursor.lock();
        if cursor.as_ref().is_none_or(|(at, _)| *at > pos) {
            debug!(archive = %self.path.display(), pos, "decompressing from the start for a member not kept in the index");
            // Only this cursor moves the clone's offset, and only under the lock.
            let mut file = self.source.try_clone()?;
            file.seek(SeekFrom::Start(0))?;
            *cursor = Some((0, self.compression.decoder(file)?));
        }
        let Some((at, reader)) = cursor.as_mut() else {
            return Ok(0);
        };
        if *at < pos {
            let skipped = io::copy(&mut reader.by_ref().take(pos - *at), &mut io::sink())?;
            *at += skipped;
            if *at < pos {
                return Ok(0);
            }
        }
        let mut n = 0;
        while n < buf.len() {
            match reader.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    *cursor = None;
                    return Err(e);
                }
            }
        }
        *at += n as u64;
        Ok(n)
    }
}

/// A place an index may be kept: a name in a directory reached through the
/// containment layer.
struct IndexPlace {
    dir: StoreDir,
    name: String,
    /// Besides this user, whose index files here are read: the archive's owner's,
    /// beside the archive.
    also_trusted: Option<u32>,
}

impl IndexPlace {
    fn display(&self) -> String {
        self.dir.display(&self.name)
    }
}

/// Where an index for the archive may be: beside it, then in the user's cache.
fn index_places(at: &ArchiveFile) -> Vec<IndexPlace> {
    let mut out = Vec::new();
    if let Ok(dir) = at.dir.try_clone() {
        use std::os::unix::fs::MetadataExt;
        let owner = at
            .open(false)
            .and_then(|f| f.metadata())
            .map(|m| m.uid())
            .ok();
        out.push(IndexPlace {
            dir,
            name: format!("{}.imagefs-index", at.name),
            also_trusted: owner,
        });
    }
    if let Some(p) = cache_place(at) {
        out.push(p);
    }
    out
}

/// The index in the user's cache directory, when that directory is one to trust (see
/// `store_file::trusted_dir`).
fn cache_place(at: &ArchiveFile) -> Option<IndexPlace> {
    let dir = crate::kept_catalog::KeptCatalogs::default_dir()?;
    let canonical = at.shown.canonicalize().ok()?;
    let key = hex::encode(Sha256::digest(canonical.as_os_str().as_encoded_bytes()));
    let dir = match crate::source::store_file::trusted_dir(&dir) {
        Ok(d) => d,
        Err(why) => {
            debug!("no index kept in the cache directory: {why}");
            return None;
        }
    };
    Some(IndexPlace {
        dir,
        name: format!("{}.index", &key[..32]),
        also_trusted: None,
    })
}

/// Reads and checks a persisted index. `Ok(None)`: there is none.
fn load(
    place: &IndexPlace,
    identity: &Identity,
    compression: Compression,
) -> Result<Option<(File, Header<'static>)>, String> {
    let file = match place.dir.open_own(&place.name, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    // An index beside the archive may have been put there by anyone who can write
    // that directory: only this user's, or the archive's owner's, is read.
    crate::source::store_file::trusted_file(&file, place.also_trusted)?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len < TRAILER_LEN {
        return Err("too short".into());
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut trailer, len - TRAILER_LEN)
        .map_err(|e| e.to_string())?;
    if &trailer[..16] != MAGIC {
        return Err("not an imagefs index".into());
    }
    let word = |at: usize| u64::from_le_bytes(trailer[at..at + 8].try_into().unwrap_or([0; 8]));
    let version = u32::from_le_bytes(trailer[16..20].try_into().unwrap_or([0; 4]));
    if version != VERSION {
        return Err(format!(
            "index version {version}, this imagefs writes {VERSION}"
        ));
    }
    let (data_len, header_len) = (word(24), word(32));
    if data_len
        .checked_add(header_len)
        .and_then(|n| n.checked_add(TRAILER_LEN))
        != Some(len)
    {
        return Err("lengths do not add up".into());
    }
    if header_len > HEADER_LIMIT {
        return Err(format!(
            "an index header of {header_len} bytes, more than the {HEADER_LIMIT} allowed"
        ));
    }
    // The whole file is hashed: kept members are served from it as they are.
    let mut hasher = Sha256::new();
    let mut reader = BufReader::with_capacity(READ_BUFFER, &file);
    io::copy(
        &mut (&mut reader).take(len - 32),
        &mut HashWriter(&mut hasher),
    )
    .map_err(|e| e.to_string())?;
    if hasher.finalize().as_slice() != &trailer[TRAILER_LEN as usize - 32..] {
        return Err("checksum mismatch (a torn or damaged index)".into());
    }
    let mut json = vec![0u8; header_len as usize];
    file.read_exact_at(&mut json, data_len)
        .map_err(|e| e.to_string())?;
    let header = parse_header(&json, data_len)?;
    if header.archive != *identity || header.compression != compression {
        return Err("the archive changed since it was indexed".into());
    }
    Ok(Some((file, header)))
}

/// A persisted index's header, its kept members checked to lie in the data region
/// (`data_len` bytes) whole.
fn parse_header(json: &[u8], data_len: u64) -> Result<Header<'static>, String> {
    let header: Header = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let sizes: HashMap<u64, u64> = header
        .entries
        .iter()
        .map(|(_, m)| (m.offset, m.size))
        .collect();
    for &(offset, at) in &header.inline {
        let size = sizes.get(&offset).copied().unwrap_or(0);
        if at.checked_add(size).is_none_or(|end| end > data_len) {
            return Err("a kept member lies outside the data region".into());
        }
    }
    Ok(header)
}

/// For the fuzzer: a persisted index's header as `load` reads it, and every member it
/// keeps read back from `data` (the data region) as a mount would.
#[doc(hidden)]
pub fn fuzz_index_header(json: &[u8], data: &[u8]) -> Result<usize, String> {
    let header = parse_header(json, data.len() as u64)?;
    let index = TarIndex::from_parts(
        header.entries.into_owned(),
        header.end_of_entries,
        header.problems,
    );
    let mut store = tempfile::tempfile().map_err(|e| e.to_string())?;
    store.write_all(data).map_err(|e| e.to_string())?;
    let tar = CompressedTar {
        path: PathBuf::from("fuzz"),
        source: tempfile::tempfile().map_err(|e| e.to_string())?,
        compression: Compression::Gzip,
        store,
        inline: header.inline.into_iter().collect(),
        cursor: Mutex::new(None),
        tar_len: header.tar_len,
        index_path: None,
    };
    let mut read = 0;
    for (name, _) in index.entries() {
        if let Some((_, m)) = index.resolve(name) {
            let mut buf = vec![0u8; m.size.min(4096) as usize];
            read += tar.read_at(m.offset, m.size, 0, &mut buf).unwrap_or(0);
        }
    }
    Ok(read)
}

/// Writes through to `out`, hashing and counting what passes.
struct HashingCounter<'a, W: Write> {
    out: &'a mut W,
    hasher: &'a mut Sha256,
    len: u64,
}

impl<W: Write> Write for HashingCounter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The index being written: beside the archive if its directory takes a file, else
/// in the cache directory, else an unlinked temporary file (used, not persisted). A
/// named one's temporary name is removed when dropped (after a rename into place,
/// nothing is left under it: the name is this process's alone).
enum IndexFile {
    Named {
        file: File,
        place: IndexPlace,
        temp: String,
    },
    Unnamed(File),
}

impl Drop for IndexFile {
    fn drop(&mut self) {
        if let IndexFile::Named { place, temp, .. } = self {
            let _ = place.dir.remove_file(temp);
        }
    }
}

/// A temporary index name: `.<index name>.<pid>.<counter>`, beside the index.
fn temp_index_name(place: &IndexPlace) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{}.{}.{n}", place.name, std::process::id())
}

impl IndexFile {
    fn create(at: &ArchiveFile) -> io::Result<IndexFile> {
        for place in index_places(at) {
            let prefix = format!(".{}.", place.name);
            remove_abandoned(&place.dir, &prefix);
            let temp = temp_index_name(&place);
            match place.dir.create_new(&temp, 0o644) {
                Ok(file) => {
                    return Ok(IndexFile::Named { file, place, temp });
                }
                Err(e) => debug!("cannot keep an index here: {e}"),
            }
        }
        Ok(IndexFile::Unnamed(tempfile::tempfile()?))
    }

    fn file(&self) -> &File {
        match self {
            IndexFile::Named { file, .. } => file,
            IndexFile::Unnamed(f) => f,
        }
    }

    fn into_file(self) -> io::Result<File> {
        self.file().try_clone()
    }
}

/// Removes index temp files a killed indexer left (`.<name>.imagefs-index.…`).
/// Only old ones: a younger one may be another mount's, indexing right now.
fn remove_abandoned(dir: &StoreDir, prefix: &str) {
    for (name, is_dir) in dir
        .entries("", crate::source::store_file::MAX_DIR_ENTRIES)
        .unwrap_or_default()
    {
        if is_dir || !name.starts_with(prefix) {
            continue;
        }
        let old = dir
            .symlink_metadata(&name)
            .ok()
            .flatten()
            .and_then(|m| m.modified().ok())
            .is_some_and(|t| t.elapsed().is_ok_and(|age| age > ABANDONED_AFTER));
        if !old {
            continue;
        }
        match dir.remove_file(&name) {
            Ok(()) => {
                info!(file = %dir.display(&name), "removed an index temp file a killed indexer left")
            }
            Err(err) => debug!("cannot remove: {err}"),
        }
    }
}

/// A temp index file untouched this long is no one's.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// Renames the finished index into place; if that place refuses it, copies it to the
/// next one (the cache directory). A failure only costs the next mount a pass.
fn persist(at: &ArchiveFile, store: &IndexFile) -> Option<PathBuf> {
    let IndexFile::Named { file, place, temp } = store else {
        info!(archive = %at.shown.display(), "no writable place for the index: the next mount indexes again");
        return None;
    };
    let kept = |place: &IndexPlace| {
        info!(archive = %at.shown.display(), index = %place.display(), "index kept for the next mount");
        Some(PathBuf::from(place.display()))
    };
    match place.dir.rename(temp, &place.name) {
        Ok(()) => return kept(place),
        Err(e) => debug!("cannot keep the index here: {e}"),
    }
    for next in index_places(at) {
        if next.display() == place.display() {
            continue;
        }
        let copy = || -> io::Result<()> {
            let tmp = temp_index_name(&next);
            let result = (|| {
                let mut out = next.dir.create_new(&tmp, 0o644)?;
                let mut from = file.try_clone()?;
                from.seek(SeekFrom::Start(0))?;
                io::copy(&mut from, &mut out)?;
                next.dir.rename(&tmp, &next.name)
            })();
            if result.is_err() {
                let _ = next.dir.remove_file(&tmp);
            }
            result
        };
        match copy() {
            Ok(()) => return kept(&next),
            Err(e) => debug!("cannot keep the index here: {e}"),
        }
    }
    warn!(archive = %at.shown.display(), "no writable place for the index: the next mount indexes again");
    None
}

/// One decompression pass: the tar walk, kept members written to the index file's
/// data region as they pass, then the header and trailer.
fn build(
    at: &ArchiveFile,
    file: &File,
    compression: Compression,
    identity: Identity,
    compressed_len: u64,
) -> Result<Built, String> {
    let path = at.shown.as_path();
    info!(archive = %path.display(), ?compression, "indexing the compressed archive (once: the index is kept)");
    let store = IndexFile::create(at).map_err(|e| format!("cannot create an index file: {e}"))?;
    let mut out = io::BufWriter::with_capacity(READ_BUFFER, store.file());
    let mut hasher = Sha256::new();
    let mut data_len = 0u64;
    let mut inline = Vec::new();
    let mut write_error: Option<io::Error> = None;

    let input = file.try_clone().map_err(|e| e.to_string())?;
    let progress = Progress::new(path, input, compressed_len);
    let decoder = compression.decoder(progress).map_err(|e| e.to_string())?;
    let mut stream = ForwardOnly {
        inner: decoder,
        pos: 0,
        error: None,
    };
    let mut take = |m: &TarMember, data: &[u8]| {
        if write_error.is_some() || data_len + data.len() as u64 > INLINE_TOTAL_MAX {
            return;
        }
        match out.write_all(data) {
            Ok(()) => {
                hasher.update(data);
                inline.push((m.offset, data_len));
                data_len += data.len() as u64;
            }
            Err(e) => write_error = Some(e),
        }
    };
    let mut index = TarIndex::build_capturing(
        &mut stream,
        u64::MAX,
        Some(Capture {
            max_size: INLINE_MAX,
            take: &mut take,
        }),
        at.limits.max_members,
    );
    // To the end: the length, and the checksum the format carries at its end.
    let mut problems = Vec::new();
    if let Err(e) = io::copy(&mut stream.inner, &mut io::sink()).map(|n| stream.pos += n) {
        problems.push(format!("the {compression:?} data is damaged: {e}"));
    }
    if let Some(e) = stream.error.take() {
        problems.push(format!("the {compression:?} data is damaged: {e}"));
    }
    let tar_len = stream.pos;
    index.truncate_to(tar_len);
    if let Some(e) = write_error {
        return Err(format!("cannot write the index: {e}"));
    }
    problems.append(&mut index.problems);
    index.problems = problems;
    let header = Header {
        archive: identity,
        compression,
        tar_len,
        end_of_entries: index.end_of_entries,
        entries: std::borrow::Cow::Borrowed(index.entries()),
        problems: index.problems.clone(),
        inline,
    };
    // Written as it is serialized (hashed and counted on the way): the JSON of a big
    // index is not held in memory whole.
    let mut json = HashingCounter {
        out: &mut out,
        hasher: &mut hasher,
        len: 0,
    };
    serde_json::to_writer(&mut json, &header)
        .map_err(|e| format!("cannot write the index: {e}"))?;
    let json_len = json.len;
    let inline = header.inline;
    let mut trailer = Vec::with_capacity(TRAILER_LEN as usize);
    trailer.extend_from_slice(MAGIC);
    trailer.extend_from_slice(&VERSION.to_le_bytes());
    trailer.extend_from_slice(&0u32.to_le_bytes());
    trailer.extend_from_slice(&data_len.to_le_bytes());
    trailer.extend_from_slice(&json_len.to_le_bytes());
    hasher.update(&trailer);
    trailer.extend_from_slice(&hasher.finalize());
    out.write_all(&trailer)
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the index: {e}"))?;
    drop(out);
    Ok(Built {
        store,
        index,
        inline,
        tar_len,
    })
}

/// What one decompression pass made: the index file, the tar index, where the kept
/// members are in it, and the tar stream's length.
struct Built {
    store: IndexFile,
    index: TarIndex,
    inline: Vec<(u64, u64)>,
    tar_len: u64,
}

/// A decompressed stream made seekable forwards, which is all the tar walk asks:
/// skipping a member reads and discards its bytes.
struct ForwardOnly {
    inner: Box<dyn Read + Send>,
    pos: u64,
    error: Option<io::Error>,
}

impl Read for ForwardOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ForwardOnly {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(n) => self.pos.checked_add_signed(n),
            SeekFrom::End(_) => None,
        };
        let Some(target) = target.filter(|t| *t >= self.pos) else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a compressed stream is only read forwards",
            ));
        };
        let mut scratch = vec![0u8; READ_BUFFER.min((target - self.pos) as usize)];
        while self.pos < target {
            let want = scratch.len().min((target - self.pos) as usize);
            match self.inner.read(&mut scratch[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the archive ends inside a member",
                    ));
                }
                Ok(n) => self.pos += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let msg = e.to_string();
                    self.error = Some(e);
                    return Err(io::Error::other(msg));
                }
            }
        }
        Ok(self.pos)
    }
}

/// Counts the compressed bytes read and says how far indexing is: a line updated in
/// place on a terminal, a line every 10 s otherwise, nothing for the first second.
struct Progress {
    inner: File,
    name: String,
    done: u64,
    total: u64,
    started: Instant,
    last: Instant,
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new(path: &Path, inner: File, total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            inner,
            name: path.display().to_string(),
            done: 0,
            total,
            started: now,
            last: now,
            tty: io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, end: &str) {
        let line = progress_line(&self.name, self.done, self.total);
        let mut err = io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r{line}{end}")
        } else {
            writeln!(err, "{line}")
        };
        self.shown = true;
    }
}

fn progress_line(name: &str, done: u64, total: u64) -> String {
    let mib = |n: u64| n as f64 / (1 << 20) as f64;
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    format!(
        "imagefs: indexing {name}: {:.0} of {:.0} MiB ({pct}%)",
        mib(done),
        mib(total)
    )
}

impl Read for Progress {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        let now = Instant::now();
        let every = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(10)
        };
        if now.duration_since(self.started) >= Duration::from_secs(1)
            && now.duration_since(self.last) >= every
        {
            self.last = now;
            self.show("");
        }
        Ok(n)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.shown && self.tty {
            self.show(" done\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar_index::tests::tar_bytes;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn read_member(tar: &CompressedTar, index: &TarIndex, name: &str) -> Vec<u8> {
        let m = index.get(name).unwrap();
        let mut out = vec![0u8; m.size as usize];
        let mut n = 0;
        while n < out.len() {
            let k = tar
                .read_at(m.offset, m.size, n as u64, &mut out[n..])
                .unwrap();
            assert!(k > 0);
            n += k;
        }
        out
    }

    /// A small and a big member (over INLINE_MAX, so read by decompressing).
    fn sample() -> (Vec<u8>, Vec<u8>) {
        let big: Vec<u8> = (0..(INLINE_MAX as usize + 5000))
            .map(|i| (i % 251) as u8)
            .collect();
        let tar = tar_bytes(
            &[
                ("manifest.json", b"[1]"),
                ("big.tar", &big),
                ("c.json", b"{}"),
            ],
            &[],
        );
        (tar, big)
    }

    #[test]
    fn progress_says_how_far_in_mib_and_percent() {
        assert_eq!(
            progress_line("c.tar.gz", 1200 << 20, 4096 << 20),
            "imagefs: indexing c.tar.gz: 1200 of 4096 MiB (29%)"
        );
        assert_eq!(
            progress_line("e", 0, 0),
            "imagefs: indexing e: 0 of 0 MiB (100%)"
        );
    }

    #[test]
    fn index_is_persisted_beside_the_archive_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.gz");
        let (tar, big) = sample();
        std::fs::write(&path, gzip(&tar)).unwrap();
        let file = File::open(&path).unwrap();
        let (ct, index) = CompressedTar::open(
            &ArchiveFile::locate(&path, Default::default()).unwrap(),
            &file,
            Compression::Gzip,
        )
        .unwrap();
        assert_eq!(ct.tar_len, tar.len() as u64);
        let beside = dir.path().join("a.tar.gz.imagefs-index");
        assert_eq!(ct.index_path.as_deref(), Some(beside.as_path()));
        let temps = |d: &Path| {
            std::fs::read_dir(d)
                .unwrap()
                .filter(|e| {
                    let n = e.as_ref().unwrap().file_name();
                    n.to_string_lossy().starts_with(".a.tar.gz.imagefs-index.")
                })
                .count()
        };
        assert_eq!(temps(dir.path()), 0);
        assert_eq!(read_member(&ct, &index, "manifest.json"), b"[1]");
        // another archive renamed over the path: a member not kept is still read from
        // the archive this index was made from
        let other = dir.path().join("other.gz");
        std::fs::write(&other, gzip(b"not this one")).unwrap();
        let kept_aside = dir.path().join("kept.gz");
        std::fs::rename(&path, &kept_aside).unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(read_member(&ct, &index, "big.tar"), big);
        std::fs::rename(&kept_aside, &path).unwrap();
        assert_eq!(read_member(&ct, &index, "c.json"), b"{}");
        // The second open reads the index: with the archive's bytes gone (same
        // identity, garbage content), the kept members still read right.
        let garbage = vec![0x1fu8; std::fs::metadata(&path).unwrap().len() as usize];
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&garbage, 0)
            .unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let (ct2, index2) = CompressedTar::open(
            &ArchiveFile::locate(&path, Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        assert_eq!(index2.entries(), index.entries());
        assert_eq!(read_member(&ct2, &index2, "c.json"), b"{}");
    }

    #[test]
    fn a_changed_archive_or_damaged_index_is_indexed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.gz");
        let (tar, _) = sample();
        std::fs::write(&path, gzip(&tar)).unwrap();
        // what a killed indexer leaves: an old temp goes, a fresh one (another
        // indexer's, perhaps) stays
        let old = dir.path().join(".a.tar.gz.imagefs-index.old123");
        let fresh = dir.path().join(".a.tar.gz.imagefs-index.new123");
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&fresh, b"x").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        CompressedTar::open(
            &ArchiveFile::locate(&path, Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        assert!(!old.exists() && fresh.exists());
        let idx = dir.path().join("a.tar.gz.imagefs-index");
        // One flipped byte in the kept data: the checksum refuses it.
        let mut bytes = std::fs::read(&idx).unwrap();
        bytes[1] ^= 0xff;
        std::fs::write(&idx, &bytes).unwrap();
        let (ct, index) = CompressedTar::open(
            &ArchiveFile::locate(&path, Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        assert_eq!(read_member(&ct, &index, "manifest.json"), b"[1]");
        // A new archive under the same name.
        let tar2 = tar_bytes(&[("manifest.json", b"[2]")], &[]);
        std::fs::write(&path, gzip(&tar2)).unwrap();
        let (ct, index) = CompressedTar::open(
            &ArchiveFile::locate(&path, Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        assert_eq!(read_member(&ct, &index, "manifest.json"), b"[2]");
        assert!(index.get("big.tar").is_none());
    }

    #[test]
    fn unwritable_directory_uses_the_cache_directory() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.zst");
        let (tar, _) = sample();
        std::fs::write(&path, zstd::encode_all(&tar[..], 1).unwrap()).unwrap();
        // Root ignores permission bits, so a read-only bind is not at hand: the
        // archive is given by a path whose directory is a file's, which refuses.
        let blocker = dir.path().join("a.tar.zst.imagefs-index");
        std::fs::create_dir(&blocker).unwrap();
        unsafe { std::env::set_var("XDG_CACHE_HOME", cache.path()) };
        let (ct, index) = CompressedTar::open(
            &ArchiveFile::locate(&path, Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Zstd,
        )
        .unwrap();
        assert_eq!(read_member(&ct, &index, "manifest.json"), b"[1]");
        let kept = ct.index_path.clone().unwrap();
        assert!(kept.starts_with(cache.path()), "{kept:?}");
        let (ct2, _) = CompressedTar::open(
            &ArchiveFile::locate(&path, Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Zstd,
        )
        .unwrap();
        assert_eq!(ct2.index_path, Some(kept));
    }

    #[test]
    fn truncated_or_corrupt_streams_keep_what_came_before_and_are_not_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.tar.gz");
        let (tar, _) = sample();
        let gz = gzip(&tar);
        std::fs::write(&path, &gz[..gz.len() / 2]).unwrap();
        let (ct, index) = CompressedTar::open(
            &ArchiveFile::locate(&path, Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        assert_eq!(read_member(&ct, &index, "manifest.json"), b"[1]");
        assert!(index.get("c.json").is_none());
        assert!(!index.problems.is_empty());
        assert!(ct.index_path.is_none());
        assert!(!dir.path().join("cut.tar.gz.imagefs-index").exists());
        // Garbage after a valid gzip header.
        let mut bad = gz[..20].to_vec();
        bad.extend_from_slice(&[0xffu8; 4000]);
        std::fs::write(&path, &bad).unwrap();
        let (_, index) = CompressedTar::open(
            &ArchiveFile::locate(&path, Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        assert!(index.is_empty());
        assert!(!index.problems.is_empty());
    }
}
