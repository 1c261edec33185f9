//! A tar archive opened for reading: the file (or, for a gzip/zstd archive, what its
//! persisted index keeps, see `compressed`), its [`TarIndex`], and reads by member. Shared by the
//! docker-archive and oci-archive sources.

use std::collections::HashSet;
use std::fs::File;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{info, warn};

use super::blob::pread_clamped;
use super::compressed::CompressedTar;
use super::tar_rewrite::{self, WriteStats};
use crate::kept::{Kept, KeptKind};
use crate::limits::Limits;
use crate::source::{
    BlobChanged, BlobLocation, ChangeToken, Edit, FileId, Inventory, Source, SourceKind,
    SourceOptions, StoreDir, StoreError, StoreMeta, Writer,
};
use crate::store_file::FileLock;
use crate::tar_index::{MemberKind, TarIndex};

pub use super::compressed::Compression;

/// The uncompressed tar bytes: the archive itself, or what a compressed one's
/// persisted index holds (see `compressed`).
enum TarData {
    Plain(File),
    Compressed(CompressedTar),
}

/// Where an archive is: its directory (the root of everything imagefs touches for it:
/// the archive, its temporaries, its index beside it) and its name there. The path
/// the user gave is resolved once, when the source is opened; from then on the archive
/// is opened beneath its directory, never through a link, never a FIFO.
pub struct ArchiveFile {
    pub dir: StoreDir,
    pub name: String,
    /// The path as the user gave it, for messages.
    pub shown: PathBuf,
    pub limits: Limits,
    /// The platform picked from multi-platform indexes.
    pub platform: super::oci_walk::Platform,
    /// Where its tar index and compressed index may be kept.
    pub kept: Kept,
}

impl ArchiveFile {
    pub fn locate(path: &Path, options: &SourceOptions) -> Result<ArchiveFile, StoreError> {
        let fail = |e| StoreError::io(path.display(), e);
        let canonical = path.canonicalize().map_err(fail)?;
        let (Some(parent), Some(name)) = (canonical.parent(), canonical.file_name()) else {
            return Err(StoreError::unsupported(format!(
                "{}: not a file",
                path.display()
            )));
        };
        let name = name
            .to_str()
            .ok_or_else(|| {
                StoreError::unsupported(format!("{}: the file name is not UTF-8", path.display()))
            })?
            .to_string();
        let dir = StoreDir::open(parent, "archive's directory").map_err(fail)?;
        Ok(ArchiveFile {
            dir,
            name,
            shown: path.to_path_buf(),
            limits: options.limits,
            platform: options.platform(),
            kept: options.kept.clone(),
        })
    }

    /// The archive file itself (a regular file, not a link), for writing too when
    /// `write`.
    pub fn open(&self, write: bool) -> io::Result<File> {
        self.dir.open_own(&self.name, write)
    }

    pub fn change_token(&self) -> io::Result<ChangeToken> {
        ChangeToken::of_file(&self.dir, &self.name)
    }
}

pub struct TarArchive {
    /// Which opening of the archive this is: blob locations carry it, so a read is
    /// never served from another version of the file.
    generation: u64,
    at: Arc<ArchiveFile>,
    data: TarData,
    pub compression: Compression,
    pub index: TarIndex,
    meta: StoreMeta,
    /// The file's identity when opened: a kept catalog of it is valid while it holds.
    identity: String,
    /// The same, as blob locations carry it: a read finds the file changed since.
    pin: FileId,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl TarArchive {
    pub fn open(path: &Path, options: &SourceOptions) -> Result<TarArchive, StoreError> {
        TarArchive::open_at(Arc::new(ArchiveFile::locate(path, options)?))
    }

    pub fn open_at(at: Arc<ArchiveFile>) -> Result<TarArchive, StoreError> {
        let file = at
            .open(false)
            .map_err(|e| StoreError::io(at.shown.display(), e))?;
        // A shared lock while indexing: a writer holding the exclusive lock (a later
        // imagefs write, or a tool honouring flock) is waited for, never read half-done.
        let _lock = FileLock::on(&file, false).ok();
        TarArchive::open_file(at, file)
    }

    /// Indexes an archive already opened (and, by a writer, locked).
    pub fn open_file(at: Arc<ArchiveFile>, file: File) -> Result<TarArchive, StoreError> {
        let path = at.shown.as_path();
        let fail = |e| StoreError::io(path.display(), e);
        let meta = file.metadata().map_err(fail)?;
        if !meta.is_file() {
            return Err(StoreError::unsupported(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        let mut magic = [0u8; 6];
        let n = read_up_to(&file, &mut magic).map_err(fail)?;
        (&file).seek(SeekFrom::Start(0)).map_err(fail)?;
        let compression = Compression::sniff(&magic[..n]).map_err(|name| {
            StoreError::unsupported(format!(
                "{}: a {name}-compressed file: imagefs reads tar archives uncompressed or compressed with gzip, zstd, xz or bzip2",
                path.display()
            ))
        })?;
        let (data, index) = match compression {
            Compression::None => {
                let index = match load_tar_index(&at, &meta) {
                    Some(kept) => kept,
                    None => {
                        let index = TarIndex::build_file(&file, meta.len(), at.limits.max_members);
                        keep_tar_index(&at, &meta, &index);
                        index
                    }
                };
                (TarData::Plain(file.try_clone().map_err(fail)?), index)
            }
            c => {
                let (tar, index) = CompressedTar::open(&at, &file, c).map_err(|e| {
                    StoreError::format(
                        path.display(),
                        format!("cannot index the {c:?} archive: {e}"),
                    )
                })?;
                tracing::debug!(
                    archive = %path.display(),
                    tar_bytes = tar.tar_len,
                    index = ?tar.index_path,
                    "compressed archive opened"
                );
                (TarData::Compressed(tar), index)
            }
        };
        if index.is_empty() {
            let why = index
                .problems
                .first()
                .cloned()
                .unwrap_or_else(|| "empty archive".into());
            return Err(StoreError::format(
                path.display(),
                format!("not a tar archive: {why}"),
            ));
        }
        Ok(TarArchive {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            at,
            data,
            compression,
            index,
            // a compressed archive is read-only here: no one may change its names
            meta: if compression == Compression::None {
                StoreMeta::of(&meta)
            } else {
                StoreMeta::of(&meta).read_only()
            },
            identity: ChangeToken::identity_of(&meta),
            pin: FileId::of(&meta),
        })
    }

    /// The archive file as opened, now.
    fn current_pin(&self) -> io::Result<FileId> {
        FileId::of_file(match &self.data {
            TarData::Plain(f) => f,
            TarData::Compressed(tar) => tar.source_file(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.at.shown
    }

    pub fn meta(&self) -> StoreMeta {
        self.meta
    }

    pub fn platform(&self) -> &super::oci_walk::Platform {
        &self.at.platform
    }

    pub fn limits(&self) -> Limits {
        self.at.limits
    }

    /// `archive.tar:member`, for messages.
    pub fn member_display(&self, name: &str) -> String {
        format!("{}:{name}", self.at.shown.display())
    }

    /// The regular file a member name leads to (links followed inside the archive).
    pub fn location(&self, name: &str) -> Option<BlobLocation> {
        self.index.resolve(name).map(|(_, m)| BlobLocation::Member {
            archive: self.generation,
            offset: m.offset,
            size: m.size,
            pin: self.pin,
        })
    }

    pub fn has_member(&self, name: &str) -> bool {
        self.index
            .get(name)
            .is_some_and(|m| m.kind != MemberKind::Dir)
    }

    pub fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        match blob {
            BlobLocation::Member {
                archive,
                offset: start,
                size,
                pin,
            } if *archive == self.generation => {
                if self.current_pin()? != *pin {
                    return Err(BlobChanged::error(self.at.shown.display()));
                }
                match &self.data {
                    TarData::Plain(file) => pread_clamped(file, *start, *size, offset, buf),
                    TarData::Compressed(tar) => tar.read_at(*start, *size, offset, buf),
                }
            }
            BlobLocation::Member { .. } => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: the archive changed since this blob was located",
                    self.at.shown.display()
                ),
            )),
            BlobLocation::File { rel: name, .. } | BlobLocation::Digest { digest: name, .. } => {
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name} is not a member of {}", self.at.shown.display()),
                ))
            }
        }
    }

    /// Reads a whole member (links followed), at most `limit` bytes.
    pub fn read_member(&self, name: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        let loc = self.location(name).ok_or_else(|| {
            StoreError::NotFound(format!("{}: no such member", self.member_display(name)))
        })?;
        self.read_location(&loc, limit)
            .map_err(|e| StoreError::io(self.member_display(name), e))
    }

    pub fn read_location(&self, loc: &BlobLocation, limit: u64) -> io::Result<Vec<u8>> {
        crate::store_file::read_whole(loc.size(), limit, |off, buf| self.read_at(loc, off, buf))
    }

    pub fn change_token(&self) -> io::Result<ChangeToken> {
        self.at.change_token()
    }
}

fn read_up_to(mut f: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Below this many members a walk costs about what reading a kept tar index does...
const TAR_INDEX_MIN_MEMBERS: usize = 1000;
/// ...unless the members are big: then every header lies on a page of its own, far
/// from the others, and the walk pays a page-cache lookup (cold: a disk read and its
/// readahead) per member. The 80 headers of a 4 GiB archive took 1 ms to walk warm,
/// most of its kept-catalog mount.
const TAR_INDEX_MIN_BYTES: u64 = 64 << 20;

/// A plain archive's tar index, kept so that a mount of an unchanged 2,000-image
/// archive does not walk its 8,000 headers again (4 ms of 512-byte reads). Borrowed
/// when kept, owned when loaded.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptTarIndex<'a> {
    end_of_entries: u64,
    entries: std::borrow::Cow<'a, [(String, crate::tar_index::TarMember)]>,
}

/// The key a kept tar index must carry: exactly this file.
fn tar_index_key(meta: &std::fs::Metadata) -> String {
    format!("{}\n{}", env!("CARGO_PKG_VERSION"), FileId::of(meta))
}

/// The index kept for the archive as opened (`meta`), if it is this file's.
fn load_tar_index(at: &ArchiveFile, meta: &std::fs::Metadata) -> Option<TarIndex> {
    let what = crate::kept::canonical(&at.shown);
    let kept: KeptTarIndex<'static> =
        at.kept
            .load(KeptKind::TarIndex, &what, &tar_index_key(meta))?;
    if kept.entries.is_empty() {
        return None;
    }
    Some(TarIndex::from_parts(
        kept.entries.into_owned(),
        kept.end_of_entries,
        Vec::new(),
    ))
}

/// Keeps a walk's index for the next mount: only a clean walk of a big archive.
fn keep_tar_index(at: &ArchiveFile, meta: &std::fs::Metadata, index: &TarIndex) {
    let big = index.len() >= TAR_INDEX_MIN_MEMBERS || meta.len() >= TAR_INDEX_MIN_BYTES;
    if !big || !index.problems.is_empty() || !at.kept.is_on() {
        return;
    }
    let kept = KeptTarIndex {
        end_of_entries: index.end_of_entries,
        entries: std::borrow::Cow::Borrowed(index.entries()),
    };
    at.kept.store(
        KeptKind::TarIndex,
        &crate::kept::canonical(&at.shown),
        &tar_index_key(meta),
        &kept,
    );
}

/// For the fuzzer: a kept tar index's payload (a key and the index), framed as kept
/// files are, decoded into an index, and every name resolved.
#[doc(hidden)]
pub fn fuzz_kept_tar_index(payload: &[u8]) -> Result<usize, String> {
    let framed = crate::kept::frame(KeptKind::TarIndex, payload);
    let (_, kept): (String, KeptTarIndex<'static>) =
        crate::kept::decode(KeptKind::TarIndex, &framed)?;
    let index = TarIndex::from_parts(kept.entries.into_owned(), kept.end_of_entries, vec![]);
    Ok(index
        .entries()
        .iter()
        .filter(|(n, _)| index.resolve(n).is_some())
        .count())
}

/// What a write does to an archive: new contents for metadata members (JSON), and
/// for a delete, the members to leave out (which needs a full rewrite).
#[derive(Default)]
pub struct WritePlan {
    pub updates: Vec<(String, Vec<u8>)>,
    pub drop: HashSet<String>,
}

/// An archive source's hold on its file: the archive as last indexed, reopened when
/// the file changes, with the previous version kept readable until the catalog has
/// moved on (blob locations name their version).
pub struct ArchiveStore {
    at: Arc<ArchiveFile>,
    versions: RwLock<(Arc<TarArchive>, Option<Arc<TarArchive>>)>,
    indexed_at: Mutex<Option<ChangeToken>>,
}

impl ArchiveStore {
    pub fn new(archive: TarArchive) -> ArchiveStore {
        let token = archive.change_token().ok();
        ArchiveStore {
            at: archive.at.clone(),
            versions: RwLock::new((Arc::new(archive), None)),
            indexed_at: Mutex::new(token),
        }
    }

    pub fn path(&self) -> &Path {
        &self.at.shown
    }

    pub fn current(&self) -> Arc<TarArchive> {
        self.versions.read().0.clone()
    }

    /// A shared lock on the archive for a scan: another mount's write (an exclusive
    /// lock, and bytes changed in place) waits until the scan has read the members it
    /// indexed, which would otherwise have changed under it.
    pub fn scan_lock(&self) -> Option<FileLock> {
        self.at
            .open(false)
            .and_then(|f| FileLock::on(&f, false))
            .ok()
    }

    /// The archive as it is now: reindexed if the file changed since.
    pub fn refresh(&self) -> Result<Arc<TarArchive>, StoreError> {
        let mut indexed_at = self.indexed_at.lock();
        let now = self.at.change_token().ok();
        if now.is_some() && *indexed_at == now {
            return Ok(self.current());
        }
        let fresh = Arc::new(TarArchive::open_at(self.at.clone())?);
        let mut v = self.versions.write();
        let old = std::mem::replace(&mut v.0, fresh.clone());
        v.1 = Some(old);
        *indexed_at = now;
        Ok(fresh)
    }

    /// The version of the archive a location was found in.
    fn version_of(&self, blob: &BlobLocation) -> Arc<TarArchive> {
        let v = self.versions.read();
        match (blob, &v.1) {
            (BlobLocation::Member { archive, .. }, Some(prev)) if *archive == prev.generation => {
                prev.clone()
            }
            _ => v.0.clone(),
        }
    }

    pub fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.version_of(blob).read_at(blob, offset, buf)
    }

    /// A member's location with the archive's identity as it is now (the caller
    /// verifies its bytes again).
    pub fn repin(&self, blob: &BlobLocation) -> io::Result<BlobLocation> {
        let archive = self.version_of(blob);
        match blob {
            BlobLocation::Member {
                archive: generation,
                offset,
                size,
                ..
            } if *generation == archive.generation => Ok(BlobLocation::Member {
                archive: *generation,
                offset: *offset,
                size: *size,
                pin: archive.current_pin()?,
            }),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: the archive changed since this blob was located",
                    self.at.shown.display()
                ),
            )),
        }
    }

    pub fn change_token(&self) -> io::Result<ChangeToken> {
        self.at.change_token()
    }

    /// The archive's name in its directory: a write in place or a rename over it.
    pub fn watches(&self) -> Vec<super::super::Watch> {
        super::super::Watch::of(&self.at.dir, &[&self.at.name])
            .into_iter()
            .collect()
    }

    pub fn meta(&self) -> StoreMeta {
        self.current().meta()
    }

    /// The identity of the archive as opened (reopened first if the path now names
    /// another file, as a scan would): a kept catalog's locations point into that
    /// file.
    pub fn content_key(&self) -> Option<String> {
        self.refresh().ok().map(|a| a.identity.clone())
    }

    /// A location from a kept catalog, made valid for the archive as opened: its
    /// generation, and its identity (the key the catalog was kept under is that
    /// identity, so the pin is the one the catalog verified).
    pub fn rebind(&self, blob: &mut BlobLocation) {
        if let BlobLocation::Member { archive, pin, .. } = blob {
            let current = self.current();
            *archive = current.generation;
            *pin = current.pin;
        }
    }

    /// Finishes what a crashed write left half done (see tar_rewrite), under the
    /// exclusive lock. Only for writable mounts; a read-only mount reads either state.
    pub fn recover(&self) -> Result<(), StoreError> {
        let at = &self.at;
        let current = self.current();
        if current.compression != Compression::None {
            return Ok(());
        }
        // A crash leaves a name twice, or a temp file beside: without either, there is
        // nothing to finish, and the archive is not indexed again.
        if !tar_rewrite::has_interrupted_switch(&current.index) && !at.dir.has_stale_temps(&at.name)
        {
            return Ok(());
        }
        let io_err = |e: io::Error| StoreError::io(format!("{}: recover", at.shown.display()), e);
        let file = at.open(true).map_err(io_err)?;
        let _lock = FileLock::on(&file, true).map_err(io_err)?;
        at.dir.remove_stale_temps(&at.name);
        let fresh = TarArchive::open_file(at.clone(), file.try_clone().map_err(io_err)?)
            .map_err(|e| StoreError::Unsupported(e.to_string()))?;
        let repaired = tar_rewrite::finish_interrupted(&file, &fresh.index).map_err(io_err)?;
        for name in repaired {
            warn!(archive = %at.shown.display(), member = %name, "completed a write a crash interrupted: the older copy is now a spare");
        }
        Ok(())
    }

    /// One write: under the archive's exclusive lock, index it afresh, plan, and
    /// persist in place (metadata only) or by a full rewrite (when members go, or
    /// one cannot be replaced in place).
    pub fn write(
        &self,
        plan: impl FnOnce(&TarArchive) -> Result<WritePlan, StoreError>,
    ) -> Result<WriteStats, StoreError> {
        let at = &self.at;
        let path = &at.shown;
        let io_err =
            |what: &str, e: io::Error| StoreError::io(format!("{}: {what}", path.display()), e);
        if self.current().compression != Compression::None {
            return Err(StoreError::Unsupported(format!(
                "{}: compressed archives are read-only here (decompress it to write to it)",
                path.display()
            )));
        }
        let file = at.open(true).map_err(|e| io_err("open for writing", e))?;
        let _lock = FileLock::on(&file, true).map_err(|e| io_err("lock", e))?;
        at.dir.remove_stale_temps(&at.name);
        let fresh =
            TarArchive::open_file(at.clone(), file.try_clone().map_err(|e| io_err("open", e))?)
                .map_err(|e| StoreError::Unsupported(e.to_string()))?;
        if let Some(p) = fresh.index.problems.first() {
            return Err(StoreError::Unsupported(format!(
                "{}: not written, the archive is damaged: {p}",
                path.display()
            )));
        }
        let plan = plan(&fresh)?;
        let updates: Vec<(&str, &[u8])> = plan
            .updates
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        let stats = if plan.drop.is_empty() {
            match tar_rewrite::replace_in_place(&file, fresh.index, &updates)
                .map_err(|e| io_err("write", e))?
            {
                Some(stats) => stats,
                None => {
                    info!(archive = %path.display(), "metadata cannot be replaced in place: rewriting the archive");
                    let index = TarArchive::open_file(
                        at.clone(),
                        file.try_clone().map_err(|e| io_err("open", e))?,
                    )
                    .map_err(|e| StoreError::Unsupported(e.to_string()))?
                    .index;
                    tar_rewrite::rewrite(at, &file, &index, |_| true, &updates)
                        .map_err(|e| io_err("rewrite", e))?
                }
            }
        } else {
            info!(archive = %path.display(), members = plan.drop.len(), "removing members: rewriting the archive");
            tar_rewrite::rewrite(
                at,
                &file,
                &fresh.index,
                |n| !plan.drop.contains(n),
                &updates,
            )
            .map_err(|e| io_err("rewrite", e))?
        };
        info!(archive = %path.display(), bytes_written = stats.bytes_written, full_rewrite = stats.full_rewrite, "written");
        Ok(stats)
    }
}

/// An archive format over the tar store: how its index files are read into an
/// inventory, and how an edit changes them. Both archive kinds (docker-archive,
/// oci-archive) are this, and [`ArchiveSource`] makes either a source.
pub trait ArchiveFormat: Send + Sync + 'static {
    fn kind(&self) -> SourceKind;
    /// Reads the archive's index files (called under the archive's shared lock).
    fn scan(&self, archive: &TarArchive) -> Result<Inventory, StoreError>;
    /// What `edit` does to the archive, planned on a fresh index under its
    /// exclusive lock.
    fn plan(&self, archive: &TarArchive, edit: &Edit<'_>) -> Result<WritePlan, StoreError>;
}

/// An archive of format `F` as a source: the tar store does everything but the
/// format's own files.
pub struct ArchiveSource<F> {
    store: ArchiveStore,
    format: F,
}

impl<F: ArchiveFormat> ArchiveSource<F> {
    pub fn open(path: &Path, options: &SourceOptions, format: F) -> Result<Self, StoreError> {
        Ok(ArchiveSource::new(TarArchive::open(path, options)?, format))
    }

    pub fn new(archive: TarArchive, format: F) -> Self {
        ArchiveSource {
            store: ArchiveStore::new(archive),
            format,
        }
    }
}

impl<F: ArchiveFormat> Source for ArchiveSource<F> {
    fn kind(&self) -> SourceKind {
        self.format.kind()
    }

    fn describe(&self) -> String {
        format!("{}:{}", self.kind(), self.store.path().display())
    }

    fn path(&self) -> Option<&Path> {
        Some(self.store.path())
    }

    fn scan(&self) -> Result<Inventory, StoreError> {
        let _lock = self.store.scan_lock();
        let archive = self.store.refresh()?;
        self.format.scan(&archive)
    }

    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.store.read_at(blob, offset, buf)
    }

    fn change_token(&self) -> io::Result<ChangeToken> {
        self.store.change_token()
    }

    fn watches(&self) -> Vec<super::super::Watch> {
        self.store.watches()
    }

    fn meta(&self) -> Option<StoreMeta> {
        Some(self.store.meta())
    }

    fn content_key(&self) -> Option<String> {
        self.store.content_key()
    }

    fn rebind(&self, blob: &mut BlobLocation) {
        self.store.rebind(blob)
    }

    fn repin(&self, blob: &BlobLocation) -> io::Result<BlobLocation> {
        self.store.repin(blob)
    }

    fn writer(&self) -> Option<&dyn Writer> {
        Some(self)
    }
}

impl<F: ArchiveFormat> Writer for ArchiveSource<F> {
    fn recover(&self) -> Result<(), StoreError> {
        self.store.recover()
    }

    fn write(&self, edit: Edit<'_>) -> Result<(), StoreError> {
        self.store.write(|a| self.format.plan(a, &edit)).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        let options = SourceOptions {
            kept: Kept::in_dir(dir.path().join("kept")),
            ..Default::default()
        };
        let at = || ArchiveFile::locate(&tar_path, &options).unwrap();
        let walk = || {
            let f = std::fs::File::open(&tar_path).unwrap();
            let meta = f.metadata().unwrap();
            (TarIndex::build_file(&f, meta.len(), 1 << 20), meta)
        };
        // a small archive is not kept: walking it is as cheap
        write_tar(10);
        let (index, meta) = walk();
        keep_tar_index(&at(), &meta, &index);
        assert!(load_tar_index(&at(), &meta).is_none());

        write_tar(TAR_INDEX_MIN_MEMBERS + 5);
        let (index, meta) = walk();
        keep_tar_index(&at(), &meta, &index);
        let kept = load_tar_index(&at(), &meta).unwrap();
        assert_eq!(kept.entries(), index.entries());
        assert_eq!(kept.end_of_entries, index.end_of_entries);
        assert_eq!(kept.get("m7.json"), index.get("m7.json"));
        // the same bytes written again are another file (ctime, mtime): not used
        std::thread::sleep(Duration::from_millis(20));
        write_tar(TAR_INDEX_MIN_MEMBERS + 5);
        let meta = std::fs::metadata(&tar_path).unwrap();
        assert!(load_tar_index(&at(), &meta).is_none());

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
        keep_tar_index(&at(), &meta, &index);
        let kept = load_tar_index(&at(), &meta).unwrap();
        assert_eq!(kept.get("layer.tar"), index.get("layer.tar"));
        // not under -o rescan
        let ignoring = SourceOptions {
            kept: Kept::in_dir(dir.path().join("kept")).ignoring_kept(),
            ..Default::default()
        };
        assert!(
            load_tar_index(&ArchiveFile::locate(&tar_path, &ignoring).unwrap(), &meta).is_none()
        );
    }
}
