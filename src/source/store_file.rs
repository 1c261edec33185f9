//! How imagefs touches a store's own files: advisory locks (flock, which podman's
//! archive writers, skopeo and other imagefs mounts see) and atomic replacement
//! (write a temporary file, fsync, rename, fsync the directory), so that a crash at
//! any point leaves the old file or the new one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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

    /// Readers: waits for any writer.
    pub fn shared(path: &Path) -> io::Result<FileLock> {
        FileLock::take(File::open(path)?, libc::LOCK_SH)
    }

    /// Writers: one at a time, and no reader in the middle.
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        FileLock::take(File::open(path)?, libc::LOCK_EX)
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

/// Fault injection for the crash tests: with `IMAGEFS_TEST_CRASH_AT=N`, the N-th
/// durable step of any write (counted from 1 across the process) kills the process
/// with SIGKILL, as a crash would: nothing after it runs, no destructor, no unlock.
pub fn crash_point(step: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static TARGET: OnceLock<Option<u64>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Some(target) = *TARGET.get_or_init(|| {
        std::env::var("IMAGEFS_TEST_CRASH_AT")
            .ok()
            .and_then(|v| v.parse().ok())
    }) else {
        return;
    };
    if COUNT.fetch_add(1, Ordering::SeqCst) + 1 == target {
        eprintln!("imagefs: IMAGEFS_TEST_CRASH_AT={target}: killed at {step}");
        // SAFETY: signalling ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// The temporary name a new version of `path` is written under, beside it (the rename
/// must stay within one filesystem).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.imagefs-{}.tmp", std::process::id()))
}

/// Removes temporaries of `path` that a crashed writer left. Call only under the
/// store's exclusive lock: then no writer is using one.
pub fn remove_stale_temps(path: &Path) {
    for file in stale_temps(path) {
        match std::fs::remove_file(&file) {
            Ok(()) => {
                tracing::info!(file = %file.display(), "removed a temporary file a crashed write left")
            }
            Err(err) => {
                tracing::warn!(file = %file.display(), "cannot remove a stale temporary file: {err}")
            }
        }
    }
}

pub fn has_stale_temps(path: &Path) -> bool {
    !stale_temps(path).is_empty()
}

fn stale_temps(path: &Path) -> Vec<std::path::PathBuf> {
    let Some(name) = path.file_name() else {
        return Vec::new();
    };
    let prefix = format!(".{}.imagefs-", name.to_string_lossy());
    entries_with_prefix(parent_dir(path), &prefix)
        .into_iter()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .map(|e| e.path())
        .collect()
}

/// The directory a path is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The entries of `dir` whose names start with `prefix` (none if it cannot be read).
pub fn entries_with_prefix(dir: &Path, prefix: &str) -> Vec<std::fs::DirEntry> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .collect()
}

/// Replaces `path` with `bytes` atomically, keeping its permission bits.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        crash_point("temporary file written, not synced");
        f.sync_all()?;
        drop(f);
        crash_point("temporary file synced, not renamed");
        commit_rename(&tmp, path)?;
        crash_point("renamed");
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames a fully written and synced temporary file over `path`, and makes the
/// rename durable.
pub fn commit_rename(tmp: &Path, path: &Path) -> io::Result<()> {
    std::fs::rename(tmp, path)?;
    sync_dir(parent_dir(path))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)?;
    d.sync_all()
}

/// Files below a store's root, checked to stay inside it without resolving every
/// path from `/` (realpath costs a readlink per component: most of a 10,000-blob
/// scan). Each directory on the way is resolved once and remembered; a file costs one
/// lstat; only a symbolic link costs a full resolution, and is refused when it leads
/// outside. The memory is dropped at each scan ([`Containment::forget`]), so a
/// directory swapped for a link is seen at the next one.
pub struct Containment {
    root: PathBuf,
    /// What the root is, for messages ("layout", "store").
    what: &'static str,
    dirs: parking_lot::Mutex<std::collections::HashMap<PathBuf, PathBuf>>,
}

impl Containment {
    /// `root` must exist: it is resolved here.
    pub fn new(root: &Path, what: &'static str) -> std::io::Result<Containment> {
        Ok(Containment {
            root: root.canonicalize()?,
            what,
            dirs: Default::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn forget(&self) {
        self.dirs.lock().clear();
    }

    /// The resolved path and metadata (links followed) of `rel` below the root;
    /// `None` when it does not exist. `rel` is plain components: an empty, `.` or
    /// `..` component is refused.
    pub fn file(&self, rel: &str) -> Result<Option<(PathBuf, std::fs::Metadata)>, String> {
        let parts: Vec<&str> = rel.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            return Err(format!("{rel:?}: not a plain path below the store"));
        }
        let Some((name, dirs)) = parts.split_last() else {
            return Ok(None);
        };
        let mut dir = self.root.clone();
        let mut key = PathBuf::new();
        for part in dirs {
            key.push(part);
            let known = self.dirs.lock().get(&key).cloned();
            dir = match known {
                Some(d) => d,
                None => match self.resolve(&dir.join(part))? {
                    Some((d, m)) if m.is_dir() => {
                        self.dirs.lock().insert(key.clone(), d.clone());
                        d
                    }
                    Some(_) => return Ok(None),
                    None => return Ok(None),
                },
            };
        }
        self.resolve(&dir.join(name))
    }

    /// `path` (whose directory is inside the root) resolved: one lstat unless it is
    /// a link.
    fn resolve(&self, path: &Path) -> Result<Option<(PathBuf, std::fs::Metadata)>, String> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if !meta.file_type().is_symlink() {
            return Ok(Some((path.to_path_buf(), meta)));
        }
        let target = match path.canonicalize() {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if !target.starts_with(&self.root) {
            return Err(format!(
                "{}: leads outside the {} (to {}): not read",
                path.display(),
                self.what,
                target.display()
            ));
        }
        let meta = std::fs::metadata(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        Ok(Some((target, meta)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.json");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        replace_file(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let _a = FileLock::shared(&p).unwrap();
        let _b = FileLock::shared(&p).unwrap();
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
        std::os::unix::fs::symlink(outside.path(), root.path().join("blobs/evil")).unwrap();
        let c = Containment::new(root.path(), "store").unwrap();
        let (p, m) = c.file("blobs/sha256/aa").unwrap().unwrap();
        assert_eq!((m.len(), p.starts_with(c.root())), (4, true));
        let (p, _) = c.file("blobs/sha256/bb").unwrap().unwrap();
        assert!(p.ends_with("blobs/sha256/aa"));
        assert!(c.file("blobs/sha256/cc").unwrap_err().contains("outside"));
        assert!(c.file("blobs/evil/secret").unwrap_err().contains("outside"));
        assert!(c.file("blobs/sha256/missing").unwrap().is_none());
        assert!(c.file("blobs/../x").is_err());
        // the cached directory is forgotten: a swap for a link is seen
        std::fs::remove_dir_all(root.path().join("blobs/sha256")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("blobs/sha256")).unwrap();
        c.forget();
        assert!(
            c.file("blobs/sha256/secret")
                .unwrap_err()
                .contains("outside")
        );
    }
}
