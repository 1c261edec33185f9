//! `oci-archive:`: a tar of an OCI image layout, read in place through the tar index
//! and written through it (index.json in place; deleted blobs by a rewrite).

use super::shared::oci_index;
use super::shared::oci_walk::{self as oci, LayoutBlobs};
use super::shared::tar_store::{ArchiveFormat, ArchiveSource, TarArchive, WritePlan};
use super::{
    ArchiveKind, BlobLocation, Edit, Inventory, Kind, Opened, SourceKind, SourceOptions, StoreError,
};
use crate::limits::Limits;

pub static KIND: Kind = Kind {
    prefix: "oci-archive",
    about: "a tar of an OCI image layout",
    is_dir_store: None,
    archive: Some(ArchiveKind {
        holds: |a| a.has_member("index.json"),
        open: |a| Box::new(ArchiveSource::new(a, OciArchive)),
    }),
    open,
};

fn open(spec: &str, options: &SourceOptions) -> Result<Vec<Opened>, StoreError> {
    let source = ArchiveSource::open(&super::spec_path(spec), options, OciArchive)?;
    Ok(vec![Opened::one(source)])
}

/// The OCI layout format inside a tar, over the shared tar store.
pub struct OciArchive;

impl ArchiveFormat for OciArchive {
    fn kind(&self) -> SourceKind {
        &KIND
    }

    fn scan(&self, a: &TarArchive) -> Result<Inventory, StoreError> {
        let mut inv = oci::scan_layout(a)?;
        inv.problems.splice(0..0, a.index.problems.iter().cloned());
        Ok(inv)
    }

    fn plan(&self, a: &TarArchive, edit: &Edit<'_>) -> Result<WritePlan, StoreError> {
        plan_index_edit(a, edit)
    }
}

/// The plan of an index.json edit inside an archive (also Docker 25+'s index).
pub fn plan_index_edit(a: &TarArchive, edit: &Edit<'_>) -> Result<WritePlan, StoreError> {
    let edited = oci_index::apply(a, edit)?;
    let drop = oci_index::unshared_blobs(a, &edited.index, &edited.removed)
        .iter()
        .filter_map(|d| oci::blob_rel_path(d))
        .collect();
    Ok(WritePlan {
        updates: vec![("index.json".into(), edited.index)],
        drop,
    })
}

/// The layout inside a tar: also how Docker 25+ archives' OCI index is read.
impl LayoutBlobs for TarArchive {
    fn read_file(&self, rel: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        self.read_member(rel, limit)
    }

    fn blob(&self, digest: &str) -> Result<Option<BlobLocation>, StoreError> {
        let rel = oci::blob_rel_path(digest).ok_or_else(|| {
            StoreError::format(
                self.path().display(),
                format!("malformed digest {digest:?}"),
            )
        })?;
        Ok(self.location(&rel))
    }

    fn read_location(&self, loc: &BlobLocation, limit: u64) -> Result<Vec<u8>, StoreError> {
        TarArchive::read_location(self, loc, limit)
            .map_err(|e| StoreError::io(self.path().display(), e))
    }

    fn display(&self, rel: &str) -> String {
        self.member_display(rel)
    }

    fn bare_tag_repository(&self) -> String {
        oci::repository_from_file_name(self.path())
    }

    fn limits(&self) -> Limits {
        TarArchive::limits(self)
    }

    fn platform(&self) -> &super::shared::oci_walk::Platform {
        TarArchive::platform(self)
    }
}
