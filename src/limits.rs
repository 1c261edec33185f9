//! How much a store can make imagefs read, hold or compute. Stores are untrusted: a
//! small file can claim a huge count or size, and without a bound imagefs's memory and
//! CPU would grow with what the file says rather than with what the mount shows. Each
//! limit a real store could outgrow is a `-o` option (see imagefs(1)); hitting one is
//! one log line naming the file and the limit, and the rest of the store is shown.
//!
//! Fixed bounds, for what no real store comes near, live beside the code they guard:
//! tar extension headers (`tar_index::MAX_EXTENSION`, 1 MiB), manifests and indexes
//! (`oci_walk::MANIFEST_LIMIT`, 4 MiB, what registries accept), index nesting
//! (`oci_walk::MAX_INDEX_DEPTH`), blobs followed by a delete (`oci_index::MAX_REACHABLE`),
//! directory listings (`store_file::MAX_DIR_ENTRIES`), bbolt pages per read
//! (`bbolt::MAX_PAGES`).

/// The limits a mount applies; [`Limits::default`] unless `-o` says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Members one archive's tar index holds (`-o max_members=N`).
    pub max_members: usize,
    /// Image records one store lists: manifest.json or index.json entries,
    /// images.json records, repositories.json names, containerd image records
    /// (`-o max_images=N`).
    pub max_images: usize,
    /// Bytes of one store index read whole: index.json, manifest.json, images.json,
    /// layers.json, repositories.json (`-o max_index_size=SIZE`).
    pub max_index_size: u64,
    /// Bytes of one config imagefs hashes (`-o max_config_size=SIZE`).
    pub max_config_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // a `docker save` of 10,000 images has about 40,000 members
            max_members: 500_000,
            // a busy node has hundreds of images; the scale benchmark's stores 100,000
            // images and 270,000 tags, which in an OCI layout are 280,000 index entries
            max_images: 500_000,
            // images.json of 100,000 images is about 110 MiB
            max_index_size: 256 << 20,
            // configs are KiB; the largest real ones a few MiB (a 100 MiB one is tested)
            max_config_size: 256 << 20,
        }
    }
}

impl Limits {
    /// The error for a store index over [`Limits::max_images`].
    pub fn too_many_images(&self, what: &str, count: usize) -> String {
        format!(
            "{what}: {count} image records, more than the {} allowed (-o max_images=N raises it)",
            self.max_images
        )
    }
}
