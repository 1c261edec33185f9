//! Compressed (gzip, zstd, xz, bzip2) tar archives: indexed in one decompression pass, the index
//! persisted so that the next mount decompresses nothing.
//!
//! imagefs only ever reads an archive's small members (manifest.json, index.json,
//! configs, OCI manifests), never its layers. So the pass that walks the headers
//! also keeps every small member's bytes, and the persisted index holds both: the tar
//! index and those bytes. A later mount reads that file and not the archive. A member
//! too big to keep (a config over [`INLINE_MAX`]) is read by decompressing from the
//! start again, with a cursor kept so that sequential reads go forward only.
//!
//! The index is a kept file (see `crate::kept`: its framing, checksum, places, trust
//! and cleanup): beside the archive (`<archive>.imagefs-index`, as ratarmount keeps
//! `<archive>.index.sqlite`) when that directory takes a file, else in the cache
//! directory. It records the archive's identity, so a changed archive is indexed
//! again; a torn or damaged index fails its checksum and is rebuilt.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::tar_store::ArchiveFile;
use crate::kept::{FramedWriter, KeptKind, Place};
use crate::store_file::FileId;
use crate::tar_index::{Capture, TarIndex, TarMember};

/// How an archive file is compressed, told by its first bytes as `docker load` tells
/// it. Kept indexes record it: new kinds go at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
    Bzip2,
}

/// Compressions recognised by their magic and not read: named in the error.
const UNREAD: &[(&[u8], &str)] = &[
    (&[0x04, 0x22, 0x4d, 0x18], "lz4"),
    (b"LZIP", "lzip"),
    (&[0x1f, 0x9d], "compress (.Z)"),
    (&[0x5d, 0x00, 0x00], "lzma (legacy .lzma, not xz)"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip"),
    (b"PK\x03\x04", "zip"),
];

impl Compression {
    /// The compression of a file starting with `magic` (6 bytes suffice); `Err` names
    /// a compression that is recognised and not read.
    pub fn sniff(magic: &[u8]) -> Result<Compression, &'static str> {
        Ok(if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if magic.len() >= 4 && magic.starts_with(b"BZh") && (b'1'..=b'9').contains(&magic[3])
        {
            Compression::Bzip2
        } else if let Some((_, name)) = UNREAD.iter().find(|(m, _)| magic.starts_with(m)) {
            return Err(name);
        } else {
            Compression::None
        })
    }

    /// A decoder over the whole file from its start. Multi-member gzip (pigz,
    /// bgzip) and multi-frame zstd are read to the end.
    fn decoder<R: Read + Send + 'static>(self, input: R) -> io::Result<Box<dyn Read + Send>> {
        let input = BufReader::with_capacity(READ_BUFFER, input);
        Ok(match self {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
            // several streams (pixz, `xz` of concatenated files) are read to the end
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(input)),
            Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(input)),
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
/// The index header (member names and offsets) of an archive imagefs indexed: far
/// less than this for any real archive.
const HEADER_LIMIT: u64 = 256 << 20;

/// A kept index's payload, written as the archive is decompressed: the kept members'
/// bytes (the data region), then this header (postcard), then the header's length.
#[derive(Serialize, Deserialize)]
struct Header<'a> {
    /// The archive file the index was made from: any change means a new index.
    archive: FileId,
    compression: Compression,
    /// Length of the uncompressed tar stream.
    tar_len: u64,
    end_of_entries: u64,
    /// Borrowed from the index when written (a copy of 500,000 entries was most of a
    /// big indexing's memory), owned when read.
    entries: Cow<'a, [(String, TarMember)]>,
    problems: Vec<String>,
    /// (member data offset in the tar, where its bytes are in the data region).
    inline: Vec<(u64, u64)>,
}

/// A compressed archive's uncompressed bytes, as far as imagefs reads them.
pub struct CompressedTar {
    path: PathBuf,
    /// The archive as opened: a member not kept is decompressed from this file, never
    /// from whatever the path names by then.
    source: File,
    compression: Compression,
    /// The index file (kept, or an unlinked temporary one): the kept members...
    store: File,
    /// ...whose data region starts here in it.
    data_start: u64,
    /// Member data offset in the tar → offset of its copy in the data region.
    inline: HashMap<u64, u64>,
    /// For members not kept: a decoder positioned at `.0` bytes into the tar.
    cursor: Mutex<Option<(u64, Box<dyn Read + Send>)>>,
    pub tar_len: u64,
    /// Where the index was read from or written to (None: not kept).
    pub index_path: Option<PathBuf>,
}

impl CompressedTar {
    /// The kept index when it matches `file`, else one decompression pass that builds
    /// it (and keeps it when the archive is undamaged).
    pub fn open(
        at: &ArchiveFile,
        file: &File,
        compression: Compression,
    ) -> Result<(CompressedTar, TarIndex), String> {
        let path = at.shown.as_path();
        let meta = file.metadata().map_err(|e| e.to_string())?;
        let identity = FileId::of(&meta);
        for place in places(at).into_iter().filter(|_| at.kept.reuses()) {
            match load(&place, &identity, compression) {
                Ok(Some((store, data_start, header))) => {
                    debug!(archive = %path.display(), index = %place.display(), "using the kept index");
                    let index = TarIndex::from_parts(
                        header.entries.into_owned(),
                        header.end_of_entries,
                        header.problems,
                    );
                    let tar = CompressedTar::new(
                        path,
                        file,
                        compression,
                        (store, data_start),
                        header.inline,
                        header.tar_len,
                        Some(PathBuf::from(place.display())),
                    )?;
                    return Ok((tar, index));
                }
                Ok(None) => {}
                Err(why) => {
                    info!(archive = %path.display(), index = %place.display(), %why, "kept index not used: indexing again")
                }
            }
        }
        let built = build(at, file, compression, identity, meta.size())?;
        let tar = CompressedTar::new(
            path,
            file,
            compression,
            (built.store, built.data_start),
            built.inline,
            built.tar_len,
            built.kept,
        )?;
        Ok((tar, built.index))
    }

    fn new(
        path: &Path,
        file: &File,
        compression: Compression,
        (store, data_start): (File, u64),
        inline: Vec<(u64, u64)>,
        tar_len: u64,
        index_path: Option<PathBuf>,
    ) -> Result<CompressedTar, String> {
        Ok(CompressedTar {
            path: path.to_path_buf(),
            source: file.try_clone().map_err(|e| e.to_string())?,
            compression,
            store,
            data_start,
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
            let at = self
                .data_start
                .checked_add(at)
                .and_then(|a| a.checked_add(offset))
                .ok_or_else(beyond)?;
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

/// Where an index for the archive may be kept: beside it (`<archive>.imagefs-index`,
/// as ratarmount keeps `<archive>.index.sqlite`), trusted from this user or the
/// archive's owner; then in the cache directory, when kept files are on.
fn places(at: &ArchiveFile) -> Vec<Place> {
    beside(at).into_iter().chain(in_cache(at)).collect()
}

/// Where a new index may be written: beside the archive only when the mount may
/// write beside stores (not under `-o ro`) and the archive's directory is the
/// mounting user's own, so that a mount writes nothing into another's directory;
/// else the cache directory alone.
fn places_to_write(at: &ArchiveFile) -> Vec<Place> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let own_dir = matches!(at.dir.metadata("."), Ok(Some(m)) if m.uid() == me);
    let beside = beside(at).filter(|_| at.kept.writes_beside() && own_dir);
    beside.into_iter().chain(in_cache(at)).collect()
}

fn beside(at: &ArchiveFile) -> Option<Place> {
    let dir = at.dir.try_clone().ok()?;
    let owner = at
        .open(false)
        .and_then(|f| f.metadata())
        .map(|m| m.uid())
        .ok();
    Some(Place::beside(
        dir,
        format!("{}.imagefs-index", at.name),
        owner,
    ))
}

fn in_cache(at: &ArchiveFile) -> Option<Place> {
    at.kept.cache_place(
        KeptKind::CompressedIndex,
        &crate::kept::canonical(&at.shown),
    )
}

/// Reads and checks a kept index: the file, where its data region starts, and its
/// header. `Ok(None)`: there is none.
fn load(
    place: &Place,
    identity: &FileId,
    compression: Compression,
) -> Result<Option<(File, u64, Header<'static>)>, String> {
    let Some((file, start, len)) = place.open(KeptKind::CompressedIndex)? else {
        return Ok(None);
    };
    let (data_len, header) = split_payload(len, |buf, at| {
        file.read_exact_at(buf, start + at)
            .map_err(|e| e.to_string())
    })?;
    let header = parse_header(&header, data_len)?;
    if header.archive != *identity || header.compression != compression {
        return Err("the archive changed since it was indexed".into());
    }
    Ok(Some((file, start, header)))
}

/// A payload of `len` bytes read through `read_at`: the data region's length and the
/// header's bytes.
fn split_payload(
    len: u64,
    read_at: impl Fn(&mut [u8], u64) -> Result<(), String>,
) -> Result<(u64, Vec<u8>), String> {
    if len < 8 {
        return Err("too short".into());
    }
    let mut n = [0u8; 8];
    read_at(&mut n, len - 8)?;
    let header_len = u64::from_le_bytes(n);
    if header_len > HEADER_LIMIT || header_len > len - 8 {
        return Err(format!(
            "a header of {header_len} bytes in a payload of {len}"
        ));
    }
    let data_len = len - 8 - header_len;
    let mut header = vec![0u8; header_len as usize];
    read_at(&mut header, data_len)?;
    Ok((data_len, header))
}

/// A kept index's header, its kept members checked to lie in the data region
/// (`data_len` bytes) whole.
fn parse_header(bytes: &[u8], data_len: u64) -> Result<Header<'static>, String> {
    let header: Header = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
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
    Ok(Header {
        entries: Cow::Owned(header.entries.into_owned()),
        ..header
    })
}

/// For the fuzzer: a kept index's payload as `load` reads it once the checksum
/// passed, and every member it keeps read back as a mount would.
#[doc(hidden)]
pub fn fuzz_index_payload(payload: &[u8]) -> Result<usize, String> {
    let (data_len, header) = split_payload(payload.len() as u64, |buf, at| {
        let at = at as usize;
        payload
            .get(at..at + buf.len())
            .map(|b| buf.copy_from_slice(b))
            .ok_or_else(|| "beyond the payload".to_string())
    })?;
    let header = parse_header(&header, data_len)?;
    let index = TarIndex::from_parts(
        header.entries.into_owned(),
        header.end_of_entries,
        header.problems,
    );
    let mut store = tempfile::tempfile().map_err(|e| e.to_string())?;
    store
        .write_all(&payload[..data_len as usize])
        .map_err(|e| e.to_string())?;
    let tar = CompressedTar::new(
        Path::new("fuzz"),
        &tempfile::tempfile().map_err(|e| e.to_string())?,
        Compression::Gzip,
        (store, 0),
        header.inline,
        header.tar_len,
        None,
    )?;
    let mut read = 0;
    for (name, _) in index.entries() {
        if let Some((_, m)) = index.resolve(name) {
            let mut buf = vec![0u8; m.size.min(4096) as usize];
            read += tar.read_at(m.offset, m.size, 0, &mut buf).unwrap_or(0);
        }
    }
    Ok(read)
}

/// Where an index is written: a kept file at its first place that takes one, else an
/// unlinked temporary file (used, not kept).
enum IndexOut {
    Kept(FramedWriter),
    Unnamed(io::BufWriter<File>, File, u64),
}

impl IndexOut {
    fn create(at: &ArchiveFile) -> io::Result<IndexOut> {
        for place in places_to_write(at) {
            let shown = place.display();
            match place.create(KeptKind::CompressedIndex) {
                Ok(w) => return Ok(IndexOut::Kept(w)),
                Err(e) => debug!(index = %shown, "cannot keep an index here: {e}"),
            }
        }
        let f = tempfile::tempfile()?;
        Ok(IndexOut::Unnamed(
            io::BufWriter::with_capacity(READ_BUFFER, f.try_clone()?),
            f,
            0,
        ))
    }

    /// Bytes written so far: where the next write lands in the payload.
    fn len(&self) -> u64 {
        match self {
            IndexOut::Kept(w) => w.payload_len(),
            IndexOut::Unnamed(_, _, n) => *n,
        }
    }

    /// Finishes the file: kept (when `keep`) at the first place that takes the rename,
    /// else copied to the next. The file, where its payload starts, and where it is
    /// kept.
    fn finish(self, at: &ArchiveFile, keep: bool) -> io::Result<(File, u64, Option<PathBuf>)> {
        match self {
            IndexOut::Kept(w) => {
                let (file, kept) = w.finish(keep)?;
                let start = FramedWriter::payload_start();
                if kept.is_some() || !keep {
                    return Ok((file, start, kept));
                }
                for next in places_to_write(at).into_iter().skip(1) {
                    match FramedWriter::copy_to(&file, &next) {
                        Ok(()) => return Ok((file, start, Some(PathBuf::from(next.display())))),
                        Err(e) => {
                            debug!(index = %next.display(), "cannot keep the index here: {e}")
                        }
                    }
                }
                warn!(archive = %at.shown.display(), "no writable place for the index: the next mount indexes again");
                Ok((file, start, None))
            }
            IndexOut::Unnamed(mut w, f, _) => {
                w.flush()?;
                if keep {
                    info!(archive = %at.shown.display(), "no writable place for the index: the next mount indexes again");
                }
                Ok((f, 0, None))
            }
        }
    }
}

impl Write for IndexOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            IndexOut::Kept(w) => w.write(buf),
            IndexOut::Unnamed(w, _, n) => {
                let k = w.write(buf)?;
                *n += k as u64;
                Ok(k)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            IndexOut::Kept(w) => w.flush(),
            IndexOut::Unnamed(w, _, _) => w.flush(),
        }
    }
}

/// One decompression pass: the tar walk, kept members written to the index file's
/// data region as they pass, then the header and its length.
fn build(
    at: &ArchiveFile,
    file: &File,
    compression: Compression,
    identity: FileId,
    compressed_len: u64,
) -> Result<Built, String> {
    let path = at.shown.as_path();
    info!(archive = %path.display(), ?compression, "indexing the compressed archive (once: the index is kept)");
    let mut out = IndexOut::create(at).map_err(|e| format!("cannot create an index file: {e}"))?;
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
        let at = out.len();
        if write_error.is_some() || at + data.len() as u64 > INLINE_TOTAL_MAX {
            return;
        }
        match out.write_all(data) {
            Ok(()) => inline.push((m.offset, at)),
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
        entries: Cow::Borrowed(index.entries()),
        problems: index.problems.clone(),
        inline,
    };
    // Streamed into the file as it is serialised: a big index's header is not held
    // in memory whole.
    let before = out.len();
    let written = postcard::to_io(&header, &mut out)
        .map(|_| ())
        .map_err(|e| format!("cannot write the index: {e}"));
    let inline = header.inline;
    written?;
    let header_len = out.len() - before;
    out.write_all(&header_len.to_le_bytes())
        .map_err(|e| format!("cannot write the index: {e}"))?;
    // a damaged archive's index is used, never kept
    let keep = index.problems.is_empty();
    let (store, data_start, kept) = out
        .finish(at, keep)
        .map_err(|e| format!("cannot write the index: {e}"))?;
    if let Some(k) = &kept {
        info!(archive = %path.display(), index = %k.display(), "index kept for the next mount");
    }
    Ok(Built {
        store,
        data_start,
        index,
        inline,
        tar_len,
        kept,
    })
}

/// What one decompression pass made: the index file and where its data region
/// starts, the tar index, where the kept members are, the tar stream's length, and
/// where the index was kept.
struct Built {
    store: File,
    data_start: u64,
    index: TarIndex,
    inline: Vec<(u64, u64)>,
    tar_len: u64,
    kept: Option<PathBuf>,
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
            &ArchiveFile::locate(&path, &Default::default()).unwrap(),
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
        let moved_aside = dir.path().join("kept.gz");
        std::fs::rename(&path, &moved_aside).unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(read_member(&ct, &index, "big.tar"), big);
        std::fs::rename(&moved_aside, &path).unwrap();
        assert_eq!(read_member(&ct, &index, "c.json"), b"{}");
        // (the renames moved the archive's ctime: it is another file now, and indexed
        // again)
        CompressedTar::open(
            &ArchiveFile::locate(&path, &Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        // The next open reads the index: it is not written again, and its kept members
        // read right.
        let before = crate::store_file::FileId::of(&std::fs::metadata(&beside).unwrap());
        let (ct2, index2) = CompressedTar::open(
            &ArchiveFile::locate(&path, &Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        assert_eq!(ct2.index_path.as_deref(), Some(beside.as_path()));
        assert_eq!(
            crate::store_file::FileId::of(&std::fs::metadata(&beside).unwrap()),
            before
        );
        assert_eq!(index2.entries(), index.entries());
        assert_eq!(read_member(&ct2, &index2, "c.json"), b"{}");
        // the same bytes written again are another file (its ctime moved): indexed again
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, bytes).unwrap();
        CompressedTar::open(
            &ArchiveFile::locate(&path, &Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        assert_ne!(
            crate::store_file::FileId::of(&std::fs::metadata(&beside).unwrap()),
            before
        );
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
            &ArchiveFile::locate(&path, &Default::default()).unwrap(),
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
            &ArchiveFile::locate(&path, &Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        assert_eq!(read_member(&ct, &index, "manifest.json"), b"[1]");
        // A new archive under the same name.
        let tar2 = tar_bytes(&[("manifest.json", b"[2]")], &[]);
        std::fs::write(&path, gzip(&tar2)).unwrap();
        let (ct, index) = CompressedTar::open(
            &ArchiveFile::locate(&path, &Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        assert_eq!(read_member(&ct, &index, "manifest.json"), b"[2]");
        assert!(index.get("big.tar").is_none());
    }

    #[test]
    fn compressions_are_told_by_their_magic_and_xz_of_several_streams_is_read_whole() {
        assert_eq!(Compression::sniff(b"\xfd7zXZ\0"), Ok(Compression::Xz));
        assert_eq!(Compression::sniff(b"BZh91AY"), Ok(Compression::Bzip2));
        assert_eq!(Compression::sniff(b"BZh0"), Ok(Compression::None));
        assert_eq!(Compression::sniff(b"\x04\x22\x4d\x18"), Err("lz4"));
        assert_eq!(Compression::sniff(b"LZIP\x01"), Err("lzip"));
        assert_eq!(Compression::sniff(b"\x1f\x9d\x90"), Err("compress (.Z)"));
        assert_eq!(Compression::sniff(b"7z\xbc\xaf\x27\x1c"), Err("7-Zip"));
        assert_eq!(Compression::sniff(b"PK\x03\x04"), Err("zip"));
        assert_eq!(Compression::sniff(b"ustar"), Ok(Compression::None));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.xz");
        let (tar, _) = sample();
        let half = tar.len() / 2;
        let mut bytes = Vec::new();
        for part in [&tar[..half], &tar[half..]] {
            let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
            xz.write_all(part).unwrap();
            bytes.extend(xz.finish().unwrap());
        }
        std::fs::write(&path, bytes).unwrap();
        let options = crate::source::SourceOptions::default();
        let (ct, index) = CompressedTar::open(
            &ArchiveFile::locate(&path, &options).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Xz,
        )
        .unwrap();
        assert_eq!(ct.tar_len, tar.len() as u64);
        assert_eq!(read_member(&ct, &index, "manifest.json"), b"[1]");
    }

    #[test]
    fn a_read_only_mount_or_another_users_directory_gets_nothing_beside_the_archive() {
        for (ro, owner) in [(true, 0), (false, 4242)] {
            let dir = tempfile::tempdir().unwrap();
            let cache = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.tar.bz2");
            let (tar, _) = sample();
            let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            bz.write_all(&tar).unwrap();
            std::fs::write(&path, bz.finish().unwrap()).unwrap();
            // SAFETY: chown(2) of our own temporary directory.
            let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
            if owner != 0 {
                assert_eq!(unsafe { libc::chown(c.as_ptr(), owner, owner) }, 0);
            }
            let kept = crate::kept::Kept::in_dir(cache.path().join("imagefs"));
            let options = crate::source::SourceOptions {
                kept: if ro { kept.nothing_beside() } else { kept },
                ..Default::default()
            };
            let (ct, index) = CompressedTar::open(
                &ArchiveFile::locate(&path, &options).unwrap(),
                &File::open(&path).unwrap(),
                Compression::Bzip2,
            )
            .unwrap();
            assert_eq!(read_member(&ct, &index, "manifest.json"), b"[1]");
            let kept = ct.index_path.clone().unwrap();
            assert!(kept.starts_with(cache.path()), "{kept:?}");
            let beside: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(beside, ["a.tar.bz2"], "ro={ro} owner={owner}");
        }
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
        let options = crate::source::SourceOptions {
            kept: crate::kept::Kept::in_dir(cache.path().join("imagefs")),
            ..Default::default()
        };
        let (ct, index) = CompressedTar::open(
            &ArchiveFile::locate(&path, &options).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Zstd,
        )
        .unwrap();
        assert_eq!(read_member(&ct, &index, "manifest.json"), b"[1]");
        let kept = ct.index_path.clone().unwrap();
        assert!(kept.starts_with(cache.path()), "{kept:?}");
        let (ct2, _) = CompressedTar::open(
            &ArchiveFile::locate(&path, &options).unwrap(),
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
            &ArchiveFile::locate(&path, &Default::default()).unwrap(),
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
            &ArchiveFile::locate(&path, &Default::default()).unwrap(),
            &File::open(&path).unwrap(),
            Compression::Gzip,
        )
        .unwrap();
        assert!(index.is_empty());
        assert!(!index.problems.is_empty());
    }
}
