//! `oci:`: an OCI image layout directory (`oci-layout`, `index.json`, `blobs/`), read
//! through the shared descriptor walk and written by editing index.json.

use std::io;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::shared::blob::{file_blob_at, location_display, read_file_blob, repin_file_blob};
use super::shared::oci_index;
use super::shared::oci_walk::{
    LayoutBlobs, Platform, blob_rel_path, host_platform, repository_from_file_name, scan_layout,
};
use super::{
    BlobLocation, ChangeToken, Edit, Inventory, Kind, Opened, Source, SourceKind, SourceOptions,
    StoreDir, StoreError, StoreMeta, Writer, read_whole,
};
use crate::limits::Limits;

pub static KIND: Kind = Kind {
    prefix: "oci",
    about: "an OCI image layout directory (oci-layout, index.json, blobs/)",
    is_dir_store: Some(|dir| {
        ["oci-layout", "index.json"]
            .iter()
            .any(|f| dir.metadata(f).ok().flatten().is_some_and(|m| m.is_file()))
    }),
    archive: None,
    open,
};

fn open(spec: &str, options: &SourceOptions) -> Result<Vec<Opened>, StoreError> {
    let layout =
        OciLayout::open(&super::spec_path(spec), options.limits)?.with_platform(options.platform());
    Ok(vec![Opened::one(layout)])
}

/// An OCI image layout directory.
pub struct OciLayout {
    root: PathBuf,
    limits: Limits,
    platform: Platform,
    canonical_root: PathBuf,
    /// Every file of the layout is reached through this (see `store_file::StoreDir`).
    dir: StoreDir,
    meta: StoreMeta,
}

impl OciLayout {
    /// The platform picked from multi-platform indexes (the host's unless said).
    pub fn with_platform(mut self, platform: Platform) -> OciLayout {
        self.platform = platform;
        self
    }

    pub fn open(root: &Path, limits: Limits) -> Result<OciLayout, StoreError> {
        let canonical_root = root
            .canonicalize()
            .map_err(|e| StoreError::io(root.display(), e))?;
        let dir = StoreDir::open(root, "layout").map_err(|e| StoreError::io(root.display(), e))?;
        dir.open_own("index.json", false).map_err(|e| {
            StoreError::io(
                format!("{}: not an OCI layout", dir.display("index.json")),
                e,
            )
        })?;
        // who may read and rename files in the layout directory may read and tag
        let meta = dir
            .metadata(".")
            .map_err(|e| StoreError::io(root.display(), e))?
            .ok_or_else(|| StoreError::NotFound(format!("{}: missing", root.display())))?;
        Ok(OciLayout {
            root: root.to_path_buf(),
            limits,
            platform: host_platform(),
            canonical_root,
            dir,
            meta: StoreMeta::of(&meta),
        })
    }

    /// One index.json edit: under the layout's exclusive lock, read, edit, replace
    /// atomically; then (for a delete) remove the blobs no remaining entry uses. A
    /// crash before the rename leaves the old index, after it at worst unreferenced
    /// blobs, which every reader ignores.
    fn edit(&self, edit: Edit<'_>) -> Result<(), StoreError> {
        let _lock = self
            .dir
            .lock(true)
            .map_err(|e| StoreError::io(format!("{}: lock", self.root.display()), e))?;
        self.dir.remove_stale_temps("index.json");
        let edited = oci_index::apply(self, &edit)?;
        let garbage = oci_index::unshared_blobs(self, &edited.index, &edited.removed);
        self.dir
            .replace("index.json", &edited.index)
            .map_err(|e| StoreError::io("write", e))?;
        for digest in garbage {
            if let Some(rel) = blob_rel_path(&digest) {
                match self.dir.remove_file(&rel) {
                    Ok(()) => debug!(blob = %self.dir.display(&rel), "removed: no image uses it"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => warn!("blob not removed: {e}"),
                }
            }
        }
        Ok(())
    }
}

impl LayoutBlobs for OciLayout {
    fn read_file(&self, rel: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        self.dir
            .read_own(rel, limit)
            .map_err(|e| StoreError::io(self.dir.display(rel), e))
    }

    fn blob(&self, digest: &str) -> Result<Option<BlobLocation>, StoreError> {
        let Some(rel) = blob_rel_path(digest) else {
            return Err(malformed_digest(&self.dir, digest));
        };
        file_blob_at(&self.dir, &rel)
    }

    fn read_location(&self, loc: &BlobLocation, limit: u64) -> Result<Vec<u8>, StoreError> {
        read_whole(loc.size(), limit, |off, buf| self.read_at(loc, off, buf))
            .map_err(|e| StoreError::io(location_display(&self.dir, loc), e))
    }

    fn display(&self, rel: &str) -> String {
        self.dir.display(rel)
    }

    fn bare_tag_repository(&self) -> String {
        repository_from_file_name(&self.canonical_root)
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn platform(&self) -> &Platform {
        &self.platform
    }
}

/// A digest no blob can be named by (in a descriptor of the store at `dir`).
pub(crate) fn malformed_digest(dir: &StoreDir, digest: &str) -> StoreError {
    StoreError::format(dir.display("."), format!("malformed digest {digest:?}"))
}

impl Source for OciLayout {
    fn kind(&self) -> SourceKind {
        &KIND
    }

    fn describe(&self) -> String {
        format!("{}:{}", KIND.prefix, self.root.display())
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn scan(&self) -> Result<Inventory, StoreError> {
        // flock on the layout directory: other imagefs mounts writing the same
        // layout hold it exclusively while they replace index.json.
        let _lock = self.dir.lock(false);
        scan_layout(self)
    }

    fn writer(&self) -> Option<&dyn Writer> {
        Some(self)
    }

    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        read_file_blob(&self.dir, blob, offset, buf)
    }

    fn repin(&self, blob: &BlobLocation) -> io::Result<BlobLocation> {
        repin_file_blob(&self.dir, blob)
    }

    /// index.json is the layout's root of trust: every change rewrites it.
    fn change_token(&self) -> io::Result<ChangeToken> {
        ChangeToken::of_file(&self.dir, "index.json")
    }

    fn meta(&self) -> Option<StoreMeta> {
        Some(self.meta)
    }

    fn watches(&self) -> Vec<super::Watch> {
        super::Watch::of(&self.dir, &["index.json"])
            .into_iter()
            .collect()
    }

    /// index.json, and the directories down to the blobs: a blob added, removed or
    /// renamed, or a directory swapped for a link, moves one of them. (A blob
    /// rewritten in place moves none; a config read is checked against its digest.)
    fn content_key(&self) -> Option<String> {
        Some(ChangeToken::identities(
            &self.dir,
            ["index.json", ".", "blobs", "blobs/sha256"],
        ))
    }
}

impl Writer for OciLayout {
    fn write(&self, edit: Edit<'_>) -> Result<(), StoreError> {
        self.edit(edit)
    }
}
