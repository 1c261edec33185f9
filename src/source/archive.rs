//! A tar archive opened for reading: the file (or, for a gzip/zstd archive, an
//! uncompressed spool of it), its [`TarIndex`], and reads by member. Shared by the
//! docker-archive and oci-archive sources.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tracing::info;

use super::{BlobLocation, ChangeToken, Source, SourceError, SourceKind, StoreMeta, pread_clamped};
use crate::tar_index::{MemberKind, TarIndex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

pub struct TarArchive {
    path: PathBuf,
    /// The uncompressed tar bytes: the archive itself, or an unlinked temporary copy.
    data: File,
    pub compression: Compression,
    pub index: TarIndex,
    meta: StoreMeta,
}

impl TarArchive {
    pub fn open(path: &Path) -> Result<TarArchive, SourceError> {
        let fail = |e: &dyn std::fmt::Display| SourceError::new(path.display(), e);
        let file = File::open(path).map_err(|e| fail(&e))?;
        let meta = file.metadata().map_err(|e| fail(&e))?;
        if !meta.is_file() {
            return Err(fail(&"not a regular file"));
        }
        // A shared lock while indexing: a writer holding the exclusive lock (a later
        // imagefs write, or a tool honouring flock) is waited for, never read half-done.
        let _lock = SharedLock::take(&file);
        let mut magic = [0u8; 4];
        let n = read_up_to(&file, &mut magic).map_err(|e| fail(&e))?;
        (&file).seek(SeekFrom::Start(0)).map_err(|e| fail(&e))?;
        let compression = Compression::sniff(&magic[..n]);
        let data = match compression {
            Compression::None => file.try_clone().map_err(|e| fail(&e))?,
            c => {
                info!(archive = %path.display(), compression = ?c, "decompressing to a temporary file");
                spool(&file, c).map_err(|e| fail(&format!("cannot decompress ({c:?}): {e}")))?
            }
        };
        let len = data.metadata().map_err(|e| fail(&e))?.len();
        let mut reader =
            BufReader::with_capacity(64 * 1024, data.try_clone().map_err(|e| fail(&e))?);
        reader.seek(SeekFrom::Start(0)).map_err(|e| fail(&e))?;
        let index = TarIndex::build(reader, len);
        if index.is_empty() {
            let why = index
                .problems
                .first()
                .cloned()
                .unwrap_or_else(|| "empty archive".into());
            return Err(fail(&format!("not a tar archive: {why}")));
        }
        Ok(TarArchive {
            path: path.to_path_buf(),
            data,
            compression,
            index,
            meta: StoreMeta::of(&meta),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self) -> StoreMeta {
        self.meta
    }

    /// `archive.tar:member`, for messages.
    pub fn member_display(&self, name: &str) -> String {
        format!("{}:{name}", self.path.display())
    }

    /// The regular file a member name leads to (links followed inside the archive).
    pub fn location(&self, name: &str) -> Option<BlobLocation> {
        self.index.resolve(name).map(|(_, m)| BlobLocation::Member {
            offset: m.offset,
            size: m.size,
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
                offset: start,
                size,
            } => pread_clamped(&self.data, *start, *size, offset, buf),
            BlobLocation::File { path, .. } => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a member of {}",
                    path.display(),
                    self.path.display()
                ),
            )),
        }
    }

    /// Reads a whole member (links followed), at most `limit` bytes.
    pub fn read_member(&self, name: &str, limit: u64) -> Result<Vec<u8>, String> {
        let loc = self
            .location(name)
            .ok_or_else(|| format!("{}: no such member", self.member_display(name)))?;
        self.read_location(&loc, limit)
            .map_err(|e| format!("{}: {e}", self.member_display(name)))
    }

    pub fn read_location(&self, loc: &BlobLocation, limit: u64) -> io::Result<Vec<u8>> {
        super::read_whole(loc.size(), limit, |off, buf| self.read_at(loc, off, buf))
    }

    pub fn change_token(&self) -> io::Result<ChangeToken> {
        ChangeToken::of_file(&self.path)
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

/// Decompresses into an unlinked temporary file, which disappears with the mount.
fn spool(file: &File, c: Compression) -> io::Result<File> {
    let input = BufReader::with_capacity(256 * 1024, file.try_clone()?);
    let mut out = tempfile::tempfile()?;
    match c {
        Compression::Gzip => {
            io::copy(&mut flate2::read::MultiGzDecoder::new(input), &mut out)?;
        }
        Compression::Zstd => {
            io::copy(&mut zstd::stream::read::Decoder::new(input)?, &mut out)?;
        }
        Compression::None => {}
    }
    Ok(out)
}

/// flock(LOCK_SH) for the life of the value; best effort (a filesystem without flock
/// still mounts).
struct SharedLock<'a>(&'a File);

impl<'a> SharedLock<'a> {
    fn take(file: &'a File) -> Option<SharedLock<'a>> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a valid open descriptor has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) };
        (rc == 0).then_some(SharedLock(file))
    }
}

impl Drop for SharedLock<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// What an archive holds: `manifest.json` makes it a docker-archive (Docker 25+
/// archives carry an OCI index too, and `docker load` reads manifest.json), an OCI
/// `index.json` alone makes it an oci-archive.
pub fn kind_of(archive: &TarArchive) -> Result<SourceKind, SourceError> {
    if archive.has_member("manifest.json") {
        Ok(SourceKind::DockerArchive)
    } else if archive.has_member("index.json") {
        Ok(SourceKind::OciArchive)
    } else {
        Err(SourceError::new(
            archive.path().display(),
            "tar archive has neither manifest.json (docker-archive) nor index.json (oci-archive)",
        ))
    }
}

/// Opens an archive whose kind was not given, indexing it once.
pub fn open_detected(path: &Path) -> Result<Box<dyn Source>, SourceError> {
    let archive = TarArchive::open(path)?;
    match kind_of(&archive)? {
        SourceKind::DockerArchive => Ok(Box::new(
            super::docker_archive::DockerArchive::from_archive(archive),
        )),
        _ => Ok(Box::new(super::oci_archive::OciArchive::from_archive(
            archive,
        ))),
    }
}

/// For `detect`: the kind of the archive at `path`.
pub fn detect_archive_kind(path: &Path) -> Result<SourceKind, SourceError> {
    kind_of(&TarArchive::open(path)?)
}
