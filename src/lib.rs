//! imagefs: container image stores and archives as a filesystem of `by-id/` (image
//! configs named by their digest) and `by-tag/` (hard links to them, or dangling
//! symlinks).
//!
//! Data flows one way: a [`source`] scans its store into an inventory, the
//! [`catalog`] verifies it into images and tags, [`fs`] answers the kernel's questions
//! from the tree of all catalogs, and [`fuse`] only speaks FUSE.

pub mod bbolt;
pub mod catalog;
pub mod cli;
pub mod config_cache;
pub mod fs;
pub mod fuse;
pub mod kept_catalog;
pub mod limits;
pub mod reference;
pub mod source;
pub mod tar_index;

/// A source's label from its file name: `cache.tar.gz` → `cache`.
pub fn label_from_file_name(name: &str) -> String {
    let mut s = name.trim_end_matches('/');
    for ext in [".gz", ".zst", ".tgz", ".tar", ".oci", ".docker", ".archive"] {
        if let Some(stripped) = s.strip_suffix(ext)
            && !stripped.is_empty()
        {
            s = stripped;
        }
    }
    // a second round for `x.oci.tar.gz`-like names
    for ext in [".tar", ".oci", ".docker"] {
        if let Some(stripped) = s.strip_suffix(ext)
            && !stripped.is_empty()
        {
            s = stripped;
        }
    }
    s.to_string()
}
