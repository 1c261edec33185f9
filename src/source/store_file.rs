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
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!(".{}.imagefs-", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".tmp")
        })
        .map(|e| e.path())
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
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?;
    d.sync_all()
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
}
