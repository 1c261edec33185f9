//! `oci-archive:`: a tar of an OCI image layout, read in place through the tar index
//! and written through it (index.json in place; deleted blobs by a rewrite).

use std::io;
use std::path::Path;

use super::archive::{ArchiveStore, TarArchive, WritePlan};
use super::oci::{self, LayoutBlobs};
use super::oci_index::{self, IndexEdit};
use super::{
    BlobLocation, ChangeToken, Inventory, Source, SourceError, SourceKind, SourceOptions,
    StoreMeta, WriteError,
};
use crate::limits::Limits;
use crate::reference::TagRef;

pub struct OciArchive {
    store: ArchiveStore,
}

impl OciArchive {
    pub fn open(path: &Path, options: &SourceOptions) -> Result<OciArchive, SourceError> {
        Ok(OciArchive::from_archive(TarArchive::open(path, options)?))
    }

    pub fn from_archive(archive: TarArchive) -> OciArchive {
        OciArchive {
            store: ArchiveStore::new(archive),
        }
    }

    fn edit(&self, edit: IndexEdit<'_>) -> Result<(), WriteError> {
        self.store.write(|a| plan_index_edit(a, &edit)).map(|_| ())
    }
}

/// The plan of an index.json edit inside an archive (also Docker 25+'s index).
pub fn plan_index_edit(a: &TarArchive, edit: &IndexEdit<'_>) -> Result<WritePlan, WriteError> {
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
    fn read_file(&self, rel: &str, limit: u64) -> Result<Vec<u8>, String> {
        self.read_member(rel, limit)
    }

    fn blob(&self, digest: &str) -> Result<Option<BlobLocation>, String> {
        let rel =
            oci::blob_rel_path(digest).ok_or_else(|| format!("malformed digest {digest:?}"))?;
        Ok(self.location(&rel))
    }

    fn read_location(&self, loc: &BlobLocation, limit: u64) -> Result<Vec<u8>, String> {
        TarArchive::read_location(self, loc, limit)
            .map_err(|e| format!("{}: {e}", self.path().display()))
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
}

impl Source for OciArchive {
    fn kind(&self) -> SourceKind {
        SourceKind::OciArchive
    }

    fn path(&self) -> &Path {
        self.store.path()
    }

    fn scan(&self) -> Result<Inventory, SourceError> {
        let _lock = self.store.scan_lock();
        let a = self.store.refresh()?;
        let mut inv =
            oci::scan_layout(a.as_ref()).map_err(|e| SourceError::new(a.path().display(), e))?;
        inv.problems.splice(0..0, a.index.problems.iter().cloned());
        Ok(inv)
    }

    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.store.read_at(blob, offset, buf)
    }

    fn change_token(&self) -> io::Result<ChangeToken> {
        self.store.change_token()
    }

    fn meta(&self) -> StoreMeta {
        self.store.meta()
    }

    fn content_key(&self) -> Option<String> {
        self.store.content_key()
    }

    fn rebind(&self, blob: &mut BlobLocation) {
        self.store.rebind(blob)
    }

    fn repin(&self, blob: &BlobLocation) -> io::Result<BlobLocation> {
        self.store.repin(blob)
    }

    fn tag(&self, id: &str, tag: &TagRef) -> Result<(), WriteError> {
        self.edit(IndexEdit::Tag { id, tag })
    }

    fn recover(&self) -> Result<(), WriteError> {
        self.store.recover()
    }

    fn untag(&self, tag: &TagRef) -> Result<(), WriteError> {
        self.edit(IndexEdit::Untag(tag))
    }

    fn retag(&self, from: &TagRef, to: &TagRef) -> Result<(), WriteError> {
        self.edit(IndexEdit::Retag { from, to })
    }

    fn delete_image(&self, id: &str) -> Result<(), WriteError> {
        self.edit(IndexEdit::Delete(id))
    }
}
