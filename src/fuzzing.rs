//! The entry points of the fuzz targets (`fuzz/`): every parser of bytes a store can
//! hold, each run as a mount would run it. Any panic is a finding; errors are answers.

use crate::catalog::Catalog;
use crate::config_cache::ConfigCache;
use crate::kept::{self, KeptKind};
use crate::limits::Limits;
use crate::reference::{self, Parsed};
use crate::tar_index::TarIndex;

/// Any bytes as a bbolt file (containerd's meta.db): data or an error, never a panic,
/// a hang or an out-of-bounds read.
pub fn bbolt(data: &[u8]) {
    let db = crate::bbolt::BoltFile::from_bytes(data.to_vec());
    let _ = db.meta();
    let _ = db.walk_all();
}

/// Any bytes as a tar archive: an index (possibly empty, with problems), and link
/// resolution that stays inside the archive.
pub fn tar_index(data: &[u8]) {
    let index = TarIndex::build(std::io::Cursor::new(data), data.len() as u64);
    for (name, member) in index.entries() {
        assert!(!name.starts_with('/') && !name.split('/').any(|c| c == ".."));
        let _ = index.resolve(name);
        let _ = member.entry_end();
    }
}

/// Any bytes as a kept catalog's payload (framed with a valid checksum, so that the
/// decoding is what runs): a catalog or an error, and a decoded one keeps its promises.
pub fn kept_catalog(data: &[u8]) {
    let framed = kept::frame(KeptKind::Catalog, data);
    if let Ok((_, catalog)) = kept::decode::<Catalog>(KeptKind::Catalog, &framed) {
        for image in &catalog.images {
            let _ = image.config_size();
            for t in &image.tags {
                let _ = t.file_name();
            }
        }
    }
}

/// Any bytes as a kept tar index's payload.
pub fn kept_tar_index(data: &[u8]) {
    let _ = crate::source::shared::tar_store::fuzz_kept_tar_index(data);
}

/// Any bytes as a kept registry state's payload (manifests, what they resolved to,
/// configs): only what hashes to its digest, and configs named by digest, are used.
pub fn kept_registry(data: &[u8]) {
    let _ = crate::source::registry::fuzz_kept_state(data);
}

/// Any bytes as a kept compressed-archive index's payload.
pub fn compressed_index(data: &[u8]) {
    let _ = crate::source::shared::compressed::fuzz_index_payload(data);
}

/// Any string as an image reference: a tag parses to canonical components that join
/// back to its name, and its canonical form parses to itself.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Parsed::Tag(t)) = reference::parse(s) {
        let canonical = t.to_string();
        match reference::parse(&canonical) {
            Ok(Parsed::Tag(again)) => assert_eq!(again, t, "{canonical}"),
            other => panic!("{canonical} does not parse back: {other:?}"),
        }
        let comps = t.components();
        assert!(comps.iter().all(|c| !c.is_empty() && c != "." && c != ".."));
        assert_eq!(comps.last(), Some(&t.file_name()));
        let _ = t.file_name_fits();
    }
}

/// Opens `spec`, scans it, builds its catalog and reads every config, as a mount does.
pub fn mount_like(spec: &str) {
    let Ok(source) = crate::source::open(spec) else {
        return;
    };
    let Ok(inventory) = source.scan() else {
        return;
    };
    let cache = ConfigCache::new(1 << 20);
    let catalog = Catalog::build(0, source.as_ref(), inventory, &cache, &Limits::default());
    for image in &catalog.images {
        let _ = crate::source::read_blob(source.as_ref(), &image.config, 1 << 20);
        for tag in &image.tags {
            let _ = tag.file_name();
        }
    }
}
