//! What store kinds share, kept apart from the kinds themselves: the OCI descriptor
//! walk (layouts, archives, containerd), index.json edits, the tar store (archives,
//! plain or compressed, and their crash-safe rewrites), blob reads, bounded JSON
//! lists, and the one way of calling a daemon's API.

pub mod blob;
pub mod compressed;
pub mod daemon;
pub mod json_limits;
pub mod oci_index;
pub mod oci_walk;
pub mod tar_rewrite;
pub mod tar_store;

#[cfg(test)]
mod tests;

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
