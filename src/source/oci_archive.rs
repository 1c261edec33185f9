//! `oci-archive:`: a tar of an OCI image layout, read in place through the tar index.

use std::io;
use std::path::Path;

use super::archive::TarArchive;
use super::oci::{self, LayoutBlobs};
use super::{BlobLocation, ChangeToken, Inventory, Source, SourceError, SourceKind, StoreMeta};

pub struct OciArchive {
    archive: TarArchive,
}

impl OciArchive {
    pub fn open(path: &Path) -> Result<OciArchive, SourceError> {
        Ok(OciArchive::from_archive(TarArchive::open(path)?))
    }

    pub fn from_archive(archive: TarArchive) -> OciArchive {
        OciArchive { archive }
    }
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
}

impl Source for OciArchive {
    fn kind(&self) -> SourceKind {
        SourceKind::OciArchive
    }

    fn path(&self) -> &Path {
        self.archive.path()
    }

    fn scan(&self) -> Result<Inventory, SourceError> {
        let mut inv = oci::scan_layout(&self.archive)
            .map_err(|e| SourceError::new(self.archive.path().display(), e))?;
        inv.problems
            .splice(0..0, self.archive.index.problems.iter().cloned());
        Ok(inv)
    }

    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.archive.read_at(blob, offset, buf)
    }

    fn change_token(&self) -> io::Result<ChangeToken> {
        self.archive.change_token()
    }

    fn meta(&self) -> StoreMeta {
        self.archive.meta()
    }
}
