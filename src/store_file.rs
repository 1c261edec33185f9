//! How imagefs touches a store's files: [`StoreDir`], the one containment layer every
//! store path goes through (resolved beneath the store's root at the moment of use,
//! non-regular files refused without blocking), advisory locks (flock, which podman's
//! archive writers, skopeo and other imagefs mounts see) and atomic replacement
//! (write a temporary file, fsync, rename, fsync the directory), so that a crash at
//! any point leaves the old file or the new one.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A held flock; released when dropped (explicitly: a duplicated descriptor would
/// otherwise keep it while the original stays open).
pub struct FileLock(File);

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl FileLock {
    fn take(file: File, how: libc::c_int) -> io::Result<FileLock> {
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), how) };
            if rc == 0 {
                return Ok(FileLock(file));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The same lock on an already open file (a duplicate descriptor shares the
    /// open file description, and so the lock).
    pub fn on(file: &File, exclusive: bool) -> io::Result<FileLock> {
        FileLock::take(
            file.try_clone()?,
            if exclusive {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            },
        )
    }
}

/// Fault injection for the crash tests: once [`crash_after`] says N (main does, from
/// `IMAGEFS_TEST_CRASH_AT=N`), the N-th durable step of any write (counted from 1
/// across the process) kills the process with SIGKILL, as a crash would: nothing after
/// it runs, no destructor, no unlock.
pub fn crash_point(step: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Some(&target) = CRASH_AT.get() else {
        return;
    };
    if COUNT.fetch_add(1, Ordering::SeqCst) + 1 == target {
        eprintln!("imagefs: IMAGEFS_TEST_CRASH_AT={target}: killed at {step}");
        // SAFETY: signalling ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

static CRASH_AT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Arms [`crash_point`] (the crash tests only).
pub fn crash_after(step: u64) {
    let _ = CRASH_AT.set(step);
}

/// The one containment layer: every store file imagefs opens, creates, renames or
/// removes is reached through a `StoreDir`, a handle on the store's root directory,
/// with the path resolved beneath it by the kernel at the moment of use (openat2 with
/// RESOLVE_BENEATH, through cap-std, which falls back to its own component walk with
/// the same rules where the kernel lacks openat2). A path that leads out of the
/// store, by `..`, an absolute symbolic link, or a link whose target leaves, is
/// refused wherever it appears, also when a directory is swapped for a link after the
/// scan. Links that stay inside are followed (a layout may link one blob to another).
///
/// Files are opened non-blocking and must be regular files: a FIFO, a device, a
/// socket or a directory where a file is expected is refused at once, never waited
/// on. The store's own metadata files (locks, index.json, images.json,
/// repositories.json, an archive) are opened without following a final symbolic link
/// at all ([`StoreDir::open_own`]).
pub struct StoreDir {
    dir: cap_std::fs::Dir,
    /// The root as the user named it, for messages.
    shown: PathBuf,
    /// What the root is ("layout", "store", "archive's directory"), for messages.
    what: &'static str,
}

impl std::fmt::Debug for StoreDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreDir({})", self.shown.display())
    }
}

/// One identity of a file: device, inode, size, mtime and ctime. Any write moves the
/// ctime, which no writer can set back, so an equal identity is the same bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    /// Owner and mode: what the file shows through the mount (a chmod or chown moves
    /// the ctime too).
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// The one definition of "the same file" imagefs has: what content keys, kept files
/// and blob pins compare.
impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}:{}:{}:{}:{:o}",
            self.dev,
            self.ino,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
            self.uid,
            self.gid,
            self.mode
        )
    }
}

impl FileId {
    pub fn of(m: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        }
    }

    pub fn of_file(f: &File) -> io::Result<FileId> {
        Ok(FileId::of(&f.metadata()?))
    }
}

/// Refuses what is not a regular file, naming it.
fn regular(file: File, shown: impl FnOnce() -> String) -> io::Result<File> {
    let m = file.metadata()?;
    if m.is_file() {
        return Ok(file);
    }
    let ft = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    let what = if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: is {what}, not a regular file: refused", shown()),
    ))
}

impl StoreDir {
    /// The store's root, as the user named it (links in the user's own path are
    /// followed once, here).
    pub fn open(root: &Path, what: &'static str) -> io::Result<StoreDir> {
        let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", root.display())))?;
        Ok(StoreDir {
            dir,
            shown: root.to_path_buf(),
            what,
        })
    }

    /// A directory beneath this one, as its own root.
    pub fn open_dir(&self, rel: &str, what: &'static str) -> io::Result<StoreDir> {
        let dir = self.dir.open_dir(rel).map_err(|e| self.error(rel, e))?;
        Ok(StoreDir {
            dir,
            shown: self.shown.join(rel),
            what,
        })
    }

    /// A path naming this directory as it is held open (`/proc/self/fd/N`), for an
    /// inotify watch on this very directory, whatever its path names by then.
    pub fn held_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()))
    }

    pub fn try_clone(&self) -> io::Result<StoreDir> {
        Ok(StoreDir {
            dir: self.dir.try_clone()?,
            shown: self.shown.clone(),
            what: self.what,
        })
    }

    /// The root, for messages.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// A path beneath the root, for messages.
    pub fn display(&self, rel: &str) -> String {
        if rel.is_empty() || rel == "." {
            return self.shown.display().to_string();
        }
        self.shown.join(rel).display().to_string()
    }

    /// Names the file in an error; an escape is said as such.
    fn error(&self, rel: &str, e: io::Error) -> io::Error {
        let escape = e.kind() == io::ErrorKind::PermissionDenied
            && e.to_string().contains("outside of the filesystem");
        if escape {
            return io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: leads outside the {} (a symbolic link or '..'): refused",
                    self.display(rel),
                    self.what
                ),
            );
        }
        io::Error::new(e.kind(), format!("{}: {e}", self.display(rel)))
    }

    fn open_with(&self, rel: &str, options: &cap_std::fs::OpenOptions) -> io::Result<File> {
        self.dir
            .open_with(rel, options)
            .map(cap_std::fs::File::into_std)
            .map_err(|e| self.error(rel, e))
    }

    /// A regular file beneath the root, for reading; links inside are followed.
    pub fn open_read(&self, rel: &str) -> io::Result<File> {
        use cap_std::fs::OpenOptionsExt as _;
        let mut o = cap_std::fs::OpenOptions::new();
        o.read(true).custom_flags(libc::O_NONBLOCK);
        regular(self.open_with(rel, &o)?, || self.display(rel))
    }

    /// [`StoreDir::open_read`], or `None` when there is no such file.
    pub fn open_read_if_exists(&self, rel: &str) -> io::Result<Option<File>> {
        match self.open_read(rel) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One of the store's own files (a lock, an index, an archive): never a link, never
    /// anything but a regular file; for writing too when `write`.
    pub fn open_own(&self, rel: &str, write: bool) -> io::Result<File> {
        use cap_std::fs::OpenOptionsExt as _;
        let mut o = cap_std::fs::OpenOptions::new();
        o.read(true)
            .write(write)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
        let file = self
            .dir
            .open_with(rel, &o)
            .map(cap_std::fs::File::into_std)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{}: is a symbolic link: refused", self.display(rel)),
                    )
                } else {
                    self.error(rel, e)
                }
            })?;
        regular(file, || self.display(rel))
    }

    /// Reads a whole file of at most `limit` bytes (a larger one is refused unread).
    pub fn read(&self, rel: &str, limit: u64) -> io::Result<Vec<u8>> {
        read_limited(&self.open_read(rel)?, limit).map_err(|e| self.error(rel, e))
    }

    /// [`StoreDir::read`] of one of the store's own files ([`StoreDir::open_own`]).
    pub fn read_own(&self, rel: &str, limit: u64) -> io::Result<Vec<u8>> {
        read_limited(&self.open_own(rel, false)?, limit).map_err(|e| self.error(rel, e))
    }

    /// Metadata of what `rel` names, links inside followed; `None` when missing.
    pub fn metadata(&self, rel: &str) -> io::Result<Option<std::fs::Metadata>> {
        use cap_std::fs::OpenOptionsExt as _;
        let mut o = cap_std::fs::OpenOptions::new();
        o.read(true).custom_flags(libc::O_PATH);
        match self.open_with(rel, &o) {
            Ok(f) => f.metadata().map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Metadata of `rel` itself (a link is not followed); `None` when missing.
    pub fn symlink_metadata(&self, rel: &str) -> io::Result<Option<std::fs::Metadata>> {
        use cap_std::fs::OpenOptionsExt as _;
        let mut o = cap_std::fs::OpenOptions::new();
        o.read(true).custom_flags(libc::O_PATH | libc::O_NOFOLLOW);
        match self.open_with(rel, &o) {
            Ok(f) => f.metadata().map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The identity of what `rel` names (see [`FileId`]); an empty string when missing.
    pub fn identity(&self, rel: &str) -> String {
        match self.metadata(rel) {
            Ok(Some(m)) => FileId::of(&m).to_string(),
            _ => String::new(),
        }
    }

    /// The names in a directory beneath the root (`""` or `.` for the root), with
    /// whether each is a directory (links not followed). At most `limit` names.
    pub fn entries(&self, rel: &str, limit: usize) -> io::Result<Vec<(String, bool)>> {
        let dir = if rel.is_empty() || rel == "." {
            self.dir.try_clone()
        } else {
            self.dir.open_dir(rel)
        }
        .map_err(|e| self.error(rel, e))?;
        let mut out = Vec::new();
        for entry in dir.entries().map_err(|e| self.error(rel, e))? {
            let entry = entry.map_err(|e| self.error(rel, e))?;
            if out.len() >= limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: more than {limit} entries: not read", self.display(rel)),
                ));
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            out.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
        }
        Ok(out)
    }

    /// An advisory lock (flock) on the root directory itself: a layout's writers hold
    /// it exclusively, its readers shared.
    pub fn lock(&self, exclusive: bool) -> io::Result<FileLock> {
        let mut o = cap_std::fs::OpenOptions::new();
        o.read(true);
        let f = self.open_with(".", &o)?;
        FileLock::take(
            f,
            if exclusive {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            },
        )
    }

    /// Creates a new file (never an existing name, never through a link) with `mode`,
    /// for writing.
    pub fn create_new(&self, rel: &str, mode: u32) -> io::Result<File> {
        use cap_std::fs::OpenOptionsExt as _;
        let mut o = cap_std::fs::OpenOptions::new();
        o.read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW);
        self.open_with(rel, &o)
    }

    /// Renames beneath the root (both names resolved beneath it; a final link is
    /// renamed, never followed), and makes the rename durable.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.dir
            .rename(from, &self.dir, to)
            .map_err(|e| self.error(to, e))?;
        self.sync_parent(to)
    }

    /// Removes a file beneath the root (a final link is removed, never followed).
    pub fn remove_file(&self, rel: &str) -> io::Result<()> {
        self.dir.remove_file(rel).map_err(|e| self.error(rel, e))
    }

    fn sync_parent(&self, rel: &str) -> io::Result<()> {
        let parent = match rel.rsplit_once('/') {
            Some((p, _)) if !p.is_empty() => p,
            _ => ".",
        };
        let mut o = cap_std::fs::OpenOptions::new();
        o.read(true);
        self.open_with(parent, &o)?.sync_all()
    }

    /// The temporary name a new version of `rel` is written under, beside it (the
    /// rename must stay within one filesystem).
    pub fn temp_name(rel: &str) -> String {
        let (dir, name) = match rel.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), rel),
        };
        format!("{dir}.{name}.imagefs-{}.tmp", std::process::id())
    }

    /// Replaces `rel` with `bytes` atomically (temp file, fsync, rename, directory
    /// fsync), keeping its permission bits. `rel` must be a regular file or missing:
    /// a link in its place is refused.
    pub fn replace(&self, rel: &str, bytes: &[u8]) -> io::Result<()> {
        let mode = match self.symlink_metadata(rel)? {
            Some(m) if m.file_type().is_symlink() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: is a symbolic link: not replaced", self.display(rel)),
                ));
            }
            Some(m) => m.permissions().mode() & 0o7777,
            None => 0o644,
        };
        let tmp = StoreDir::temp_name(rel);
        let result = (|| {
            let mut f = self.create_new(&tmp, mode)?;
            f.write_all(bytes)?;
            crash_point("temporary file written, not synced");
            f.sync_all()?;
            drop(f);
            crash_point("temporary file synced, not renamed");
            self.rename(&tmp, rel)?;
            crash_point("renamed");
            Ok(())
        })();
        if result.is_err() {
            let _ = self.dir.remove_file(&tmp);
        }
        result
    }

    /// Temporaries of `rel` that a crashed writer left (see [`StoreDir::temp_name`]).
    fn stale_temps(&self, rel: &str) -> Vec<String> {
        let (dir, name) = match rel.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", rel),
        };
        let prefix = format!(".{name}.imagefs-");
        self.entries(dir, MAX_DIR_ENTRIES)
            .unwrap_or_default()
            .into_iter()
            .filter(|(n, is_dir)| !is_dir && n.starts_with(&prefix) && n.ends_with(".tmp"))
            .map(|(n, _)| {
                if dir.is_empty() {
                    n
                } else {
                    format!("{dir}/{n}")
                }
            })
            .collect()
    }

    pub fn has_stale_temps(&self, rel: &str) -> bool {
        !self.stale_temps(rel).is_empty()
    }

    /// Removes temporaries of `rel` that a crashed writer left. Call only under the
    /// store's exclusive lock: then no writer is using one.
    pub fn remove_stale_temps(&self, rel: &str) {
        for tmp in self.stale_temps(rel) {
            match self.remove_file(&tmp) {
                Ok(()) => {
                    tracing::info!(file = %self.display(&tmp), "removed a temporary file a crashed write left")
                }
                Err(err) => {
                    tracing::warn!("cannot remove a stale temporary file: {err}")
                }
            }
        }
    }
}

/// The directory imagefs keeps its own files in (kept catalogs, tar indexes,
/// compressed-archive indexes), made if missing (mode 0700), as a [`StoreDir`], if it
/// can be trusted as ssh's StrictModes trusts ~/.ssh: owned by the user imagefs runs
/// as and writable by no one else, and every directory above it owned by that user
/// or root and writable by no one else (or sticky, as /tmp is). Under `sudo -E`, a
/// cache directory in the invoking user's home is therefore not root's: a catalog
/// that user forged there would otherwise decide what root's mount serves.
pub fn trusted_dir(path: &Path) -> Result<StoreDir, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        return Err(format!("{}: {e}", path.display()));
    }
    let me = effective_uid();
    let dir = StoreDir::open(path, "cache directory").map_err(|e| e.to_string())?;
    let m = dir
        .metadata(".")
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: missing", path.display()))?;
    if m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: owned by uid {} with mode {:o}: kept files are trusted only in a directory of uid {me} that no one else can write",
            path.display(),
            m.uid(),
            m.mode() & 0o7777
        ));
    }
    let canonical = path.canonicalize().map_err(|e| e.to_string())?;
    for above in canonical.ancestors().skip(1) {
        let m = std::fs::metadata(above).map_err(|e| format!("{}: {e}", above.display()))?;
        let sticky = m.mode() & 0o1000 != 0;
        if (m.uid() != me && m.uid() != 0) || (m.mode() & 0o022 != 0 && !sticky) {
            return Err(format!(
                "{}: {} above it is owned by uid {} with mode {:o}: not trusted for kept files",
                path.display(),
                above.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(dir)
}

/// Whether a kept file (opened, so its identity is the one read) may be trusted:
/// owned by the user imagefs runs as, or by `also` (the owner of the store it
/// describes, who could change that store anyway), and writable by no one else.
pub fn trusted_file(file: &File, also: Option<u32>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata().map_err(|e| e.to_string())?;
    let me = effective_uid();
    if (m.uid() != me && Some(m.uid()) != also) || m.mode() & 0o022 != 0 {
        return Err(format!(
            "owned by uid {} with mode {:o}: not trusted (only uid {me}'s files, writable by no one else, are)",
            m.uid(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Directories imagefs lists (a layout's blobs, Docker's imagedb) hold at most this
/// many names; a larger one is refused rather than read into memory.
pub const MAX_DIR_ENTRIES: usize = 4_000_000;

/// Reads `size` bytes through `read_at`, at most `limit`.
pub fn read_whole(
    size: u64,
    limit: u64,
    read_at: impl Fn(u64, &mut [u8]) -> io::Result<usize>,
) -> io::Result<Vec<u8>> {
    if size > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{size} bytes, more than the {limit} bytes allowed for it"),
        ));
    }
    let mut buf = vec![0u8; size as usize];
    let mut done = 0;
    while done < buf.len() {
        let n = read_at(done as u64, &mut buf[done..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("ends after {done} of {size} bytes"),
            ));
        }
        done += n;
    }
    Ok(buf)
}

/// Reads all of an open regular file, refusing one larger than `limit` unread.
pub fn read_limited(file: &File, limit: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    read_whole(len, limit, |off, buf| file.read_at(buf, off))
}

/// Reads a configuration file the command line names (a CA bundle, a credentials
/// file): not a store's, so it may be a link, as /etc/ssl/cert.pem often is, but it
/// must be a regular file (opened without blocking, so that a FIFO cannot hang the
/// mount), and no larger than `limit`.
pub fn read_config_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    read_limited(&file, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_files_are_read_only_when_regular() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, b"pem").unwrap();
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(read_config_file(&link, 10).unwrap(), b"pem");
        assert!(read_config_file(&f, 2).is_err(), "over the limit");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_config_file(&fifo, 10).unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::InvalidInput,
            "refused, not waited on"
        );
    }

    #[test]
    fn links_inside_are_followed_and_links_outside_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        let blobs = root.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join("aa"), b"blob").unwrap();
        std::os::unix::fs::symlink("aa", blobs.join("bb")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), blobs.join("cc")).unwrap();
        std::os::unix::fs::symlink("../../../secret", blobs.join("dd")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("blobs/evil")).unwrap();
        let d = StoreDir::open(root.path(), "layout").unwrap();
        assert_eq!(d.read("blobs/sha256/aa", 100).unwrap(), b"blob");
        assert_eq!(d.read("blobs/sha256/bb", 100).unwrap(), b"blob");
        for rel in [
            "blobs/sha256/cc",
            "blobs/sha256/dd",
            "blobs/evil/secret",
            "blobs/../../secret",
        ] {
            let e = d.open_read(rel).unwrap_err().to_string();
            assert!(e.contains("leads outside the layout"), "{rel}: {e}");
        }
        assert!(
            d.open_read_if_exists("blobs/sha256/missing")
                .unwrap()
                .is_none()
        );
        assert!(d.metadata("blobs/sha256/missing").unwrap().is_none());
        // a directory swapped for a link after the first use is refused at the next
        std::fs::remove_dir_all(&blobs).unwrap();
        std::os::unix::fs::symlink(outside.path(), &blobs).unwrap();
        let e = d.open_read("blobs/sha256/secret").unwrap_err().to_string();
        assert!(e.contains("leads outside"), "{e}");
        assert!(d.remove_file("blobs/sha256/secret").is_err());
        assert!(outside.path().join("secret").exists());
    }

    #[test]
    fn fifos_devices_and_links_are_refused_without_blocking() {
        let root = tempfile::tempdir().unwrap();
        let fifo = root.path().join("images.json");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        std::fs::write(root.path().join("real"), b"x").unwrap();
        std::os::unix::fs::symlink("real", root.path().join("images.lock")).unwrap();
        let d = StoreDir::open(root.path(), "store").unwrap();
        let e = d.open_read("images.json").unwrap_err().to_string();
        assert!(e.contains("is a FIFO"), "{e}");
        let e = d.open_own("images.json", true).unwrap_err().to_string();
        assert!(e.contains("FIFO") || e.contains("No such device"), "{e}");
        // the store's own files are never links, even to a file inside
        let e = d.open_own("images.lock", true).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        let e = d.replace("images.lock", b"new").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(root.path().join("real")).unwrap(), b"x");
        let e = d.open_read(".").unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
    }

    #[test]
    fn replace_keeps_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.json");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let d = StoreDir::open(dir.path(), "layout").unwrap();
        d.replace("index.json", b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let _a = d.lock(false).unwrap();
        let _b = d.lock(false).unwrap();
    }

    #[test]
    fn stale_temporaries_are_found_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.json"), b"x").unwrap();
        std::fs::write(dir.path().join(".index.json.imagefs-1.tmp"), b"half").unwrap();
        let d = StoreDir::open(dir.path(), "layout").unwrap();
        assert!(d.has_stale_temps("index.json"));
        d.remove_stale_temps("index.json");
        assert!(!d.has_stale_temps("index.json"));
        assert!(dir.path().join("index.json").exists());
    }
}
