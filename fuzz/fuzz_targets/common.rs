//! Shared by the targets that fuzz one file of a real store: a template made once per
//! process from the mount tests' fixtures (mount-tests/make-fixtures.sh, found under
//! $IMAGEFS_FUZZ_FIXTURES, default target/tmp/fixtures), the fuzzed bytes written
//! over one of its files, and the store opened, scanned, catalogued and read as a
//! mount would. Any panic is a finding; errors are answers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    std::env::var_os("IMAGEFS_FUZZ_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/fixtures"))
}

/// A directory of this process's own, in memory where there is /dev/shm.
pub fn scratch(name: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("imagefs-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Copies a fixture directory once (cp -a keeps its modes and links).
pub fn copy_dir(from: &Path, to: &Path) {
    if to.exists() {
        return;
    }
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "cannot copy the fixture {} (run the mount tests first)",
        from.display()
    );
}

/// Opens `spec`, scans it, builds its catalog and reads every config, as a mount
/// does.
pub fn mount_like(spec: &str) {
    imagefs::fuzzing::mount_like(spec)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
