//! Stores, one kind per file, behind one trait: the `Source` trait (scan a store into
//! an [`Inventory`], read blobs by location) and the optional [`Writer`], the value
//! types they speak in, and [`KINDS`], the table of every kind (named like skopeo's
//! transports) with how each is detected and opened. What kinds share lives in
//! [`shared`].
//!
//! A source never decides what the tree looks like; the catalog does. A source reports
//! what its store *claims* (this config digest is this image, with these tags) and the
//! catalog verifies it.

pub(crate) mod containerd;
mod containerd_events;
#[rustfmt::skip]
#[allow(clippy::all)]
mod containerd_api;
#[rustfmt::skip]
#[allow(clippy::all)]
mod containerd_events_api;
pub(crate) mod containers_storage;
pub(crate) mod dir;
pub(crate) mod docker_archive;
pub(crate) mod docker_root;
mod error;
pub mod mem;
pub(crate) mod oci;
pub(crate) mod oci_archive;
pub(crate) mod registry;
pub use registry::{RegistryOptions, RegistryProxies};
pub use shared::oci_walk::Platform;
pub(crate) mod shared;

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::reference::{ShortStr, TagRef};
pub(crate) use crate::store_file::read_whole;
pub use crate::store_file::{FileId, StoreDir};
pub use error::StoreError;
pub use shared::blob::{BlobReader, read_blob, sha256_id};
pub use shared::label_from_file_name;

/// Every store kind, in the order a path of unknown kind is tried. A new kind is one
/// file (its [`Kind`] and its source) and one line here.
pub static KINDS: &[&Kind] = &[
    &docker_archive::KIND,
    &oci::KIND,
    &dir::KIND,
    &oci_archive::KIND,
    &containers_storage::KIND,
    &docker_root::KIND,
    &containerd::KIND,
    &registry::KIND,
    &mem::KIND,
];

/// A store kind: its name (the transport prefix), what it reads, and how a store of
/// it is found and opened.
pub struct Kind {
    pub prefix: &'static str,
    /// What the kind reads, for `--help` and error messages.
    pub about: &'static str,
    /// Whether a directory holds a store of this kind (from its marker files).
    pub is_dir_store: Option<fn(&StoreDir) -> bool>,
    /// For archive kinds: whether an indexed archive is one of this kind, and the
    /// source over it (an archive of unknown kind is indexed once, then asked).
    pub archive: Option<ArchiveKind>,
    /// Opens the stores `path` (the spec after the prefix) names: one, or (a
    /// containerd root given without `#namespace`) one per namespace.
    pub open: fn(&str, &SourceOptions) -> Result<Vec<Opened>, StoreError>,
}

/// How an archive kind takes an archive already indexed.
pub struct ArchiveKind {
    pub holds: fn(&shared::tar_store::TarArchive) -> bool,
    pub open: fn(shared::tar_store::TarArchive) -> Box<dyn Source>,
}

/// A kind, as sources name theirs.
pub type SourceKind = &'static Kind;

impl PartialEq for Kind {
    fn eq(&self, other: &Kind) -> bool {
        self.prefix == other.prefix
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix)
    }
}

/// Where a blob's bytes are, in terms the owning source understands, and the file
/// they were found in: `pin` is that file's identity when the blob was located (and,
/// for a config, verified), so that a read from anything else, a file swapped or
/// rewritten since, answers [`BlobChanged`] instead of other bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BlobLocation {
    /// A member of the source's (uncompressed) tar archive, as opened in generation
    /// `archive`; `pin` is the archive file's identity.
    Member {
        archive: u64,
        offset: u64,
        size: u64,
        pin: FileId,
    },
    /// A file of a store directory, by its path beneath the store's root (resolved
    /// there at every read, see `store_file::StoreDir`).
    File { rel: String, size: u64, pin: FileId },
    /// A blob named by its digest alone, in a store whose blobs are not files (a
    /// registry): its bytes are verified against the digest, not pinned.
    Digest { digest: String, size: u64 },
}

impl BlobLocation {
    pub fn size(&self) -> u64 {
        match self {
            BlobLocation::Member { size, .. }
            | BlobLocation::File { size, .. }
            | BlobLocation::Digest { size, .. } => *size,
        }
    }

    /// The location of a regular file beneath a store's root, as it is now.
    pub fn file(rel: String, meta: &std::fs::Metadata) -> BlobLocation {
        BlobLocation::File {
            rel,
            size: meta.len(),
            pin: FileId::of(meta),
        }
    }
}

/// A blob's file is no longer the one it was located (and verified) in: swapped,
/// rewritten or touched since. The reader may locate it again ([`Source::repin`]) and
/// must then verify it again.
#[derive(Debug, thiserror::Error)]
#[error("{0}: changed since it was read")]
pub struct BlobChanged(pub String);

impl BlobChanged {
    pub fn error(what: impl fmt::Display) -> io::Error {
        io::Error::other(BlobChanged(what.to_string()))
    }

    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<BlobChanged>())
    }
}

/// One image as the store records it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    /// The config digest the store claims (`sha256:<hex>`); verified by the catalog.
    /// Empty when the store does not name it (then the bytes' hash is the ID).
    pub claimed_id: String,
    /// With no claim: the ID the store's file name gives the config (a docker-archive's
    /// `<hex>.json`), which its content decides, as `docker load` decides it. A name
    /// that says otherwise is logged, not refused; a config that is missing dangles at
    /// it.
    #[serde(default)]
    pub named_id: String,
    /// The config blob; `None` when the store refers to a config it does not hold:
    /// the image's tags are then dangling.
    pub config: Option<BlobLocation>,
    /// How messages name the config: `sample.tar:abc….json`.
    pub config_name: String,
    pub tags: Vec<TagRef>,
    /// Manifest digests (`sha256:…`) known for this image.
    pub manifest_digests: Vec<String>,
    /// Digest references (`name@sha256:…`).
    pub digest_refs: Vec<String>,
    /// Sum of the layer sizes as the store records them.
    pub layers_size: Option<u64>,
    /// Other platforms of the same index (`linux/arm64/v8`), when this image was picked
    /// from a multi-platform index.
    pub other_platforms: Vec<String>,
    /// Source-specific extended attributes (`user.image.…`).
    pub extra_xattrs: Vec<(ShortStr, String)>,
}

impl ImageRecord {
    /// The ID the store expects: what it claims, else what the file name gives.
    pub fn expected_id(&self) -> &str {
        if self.claimed_id.is_empty() {
            &self.named_id
        } else {
            &self.claimed_id
        }
    }

    /// Files a name the store gives this image: a tag, a digest reference, or
    /// (an ID, or a malformed name) nothing as a tag, with a problem for the latter.
    pub fn add_name(&mut self, name: &str, what: &str, problems: &mut Vec<String>) {
        match crate::reference::parse(name) {
            // duplicates are dropped by the catalog, once
            Ok(crate::reference::Parsed::Tag(t)) => self.tags.push(t),
            Ok(crate::reference::Parsed::Digest { name, digest }) => {
                self.digest_refs.push(format!("{name}@{digest}"))
            }
            Ok(crate::reference::Parsed::Id(_)) => {}
            Err(e) => problems.push(format!("{what}: {e}: not shown as a tag")),
        }
    }
}

/// What a scan found: the images, and what was wrong with the store (each message
/// names the file and the problem).
#[derive(Debug, Default)]
pub struct Inventory {
    pub images: Vec<ImageRecord>,
    pub problems: Vec<String>,
}

/// A directory whose changes may change a store, held as the store holds it, and the
/// names in it that matter (empty: any).
pub struct Watch {
    pub dir: StoreDir,
    pub names: Vec<String>,
}

impl Watch {
    /// `names` of the directory `dir` (a clone of the store's own handle).
    pub fn of(dir: &StoreDir, names: &[&str]) -> Option<Watch> {
        Some(Watch {
            dir: dir.try_clone().ok()?,
            names: names.iter().map(|n| n.to_string()).collect(),
        })
    }
}

/// A cheap value that changes whenever the store may have changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeToken(pub String);

impl ChangeToken {
    /// A file's or directory's full identity for a content key: its [`FileId`].
    pub fn identity_of(m: &std::fs::Metadata) -> String {
        FileId::of(m).to_string()
    }

    /// The identities of several paths beneath a store's root, as one content key; a
    /// path that is missing gives an empty part, so its appearing later changes the
    /// key.
    pub fn identities<'a>(dir: &StoreDir, rels: impl IntoIterator<Item = &'a str>) -> String {
        rels.into_iter()
            .map(|rel| dir.identity(rel))
            .collect::<Vec<_>>()
            .join("|")
    }

    /// Inode, size and mtime of a file beneath a store's root (a link itself, not
    /// its target): a rewrite, in place or by rename, or a swap for a link, changes
    /// one.
    pub fn of_file(dir: &StoreDir, rel: &str) -> io::Result<ChangeToken> {
        let m = dir.symlink_metadata(rel)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: missing", dir.display(rel)),
            )
        })?;
        Ok(ChangeToken(format!(
            "{}:{}:{}.{}:{}",
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.file_type().is_symlink()
        )))
    }
}

/// Who may do what to the store, as the tree shows it (see README, "Trust"): its
/// directories carry `uid`, `gid` and `mode`'s read bits as read and search, and its
/// write bits as the right to tag, untag and delete; with `allow_other` the kernel
/// checks them (`default_permissions`). Config files show the owner and read bits of
/// the file they are read from, unless `via_daemon` (a store written through a
/// daemon's socket, whose users may read every config through it).
#[derive(Clone, Copy, Debug)]
pub struct StoreMeta {
    pub uid: u32,
    pub gid: u32,
    /// rw bits: r may read the store, w may change its names.
    pub mode: u32,
    pub mtime: SystemTime,
    pub via_daemon: bool,
}

impl StoreMeta {
    /// A store that is no local file: root's, readable by all, its names not writable.
    pub const NOT_LOCAL: StoreMeta = StoreMeta {
        uid: 0,
        gid: 0,
        mode: 0o444,
        mtime: UNIX_EPOCH,
        via_daemon: false,
    };

    /// From the file or directory that decides access to the store (an archive, a
    /// layout directory, containers-storage's images directory).
    pub fn of(meta: &std::fs::Metadata) -> StoreMeta {
        StoreMeta {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o666,
            mtime: UNIX_EPOCH
                + Duration::new(
                    meta.mtime().max(0) as u64,
                    meta.mtime_nsec().clamp(0, 999_999_999) as u32,
                ),
            via_daemon: false,
        }
    }

    /// The same store, its names not writable (a compressed archive; a daemon store
    /// whose daemon is not there).
    pub fn read_only(self) -> StoreMeta {
        StoreMeta {
            mode: self.mode & 0o444,
            ..self
        }
    }

    /// For a store written through a daemon: whoever may use the socket (read and
    /// write on it) may read and change the store.
    pub fn via_socket(self, socket: &Path) -> StoreMeta {
        match std::fs::metadata(socket) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                // a socket is used by writing to it: its w bits say who may
                let w = m.mode() & 0o222;
                StoreMeta {
                    uid: m.uid(),
                    gid: m.gid(),
                    mode: w | (w << 1),
                    via_daemon: true,
                    ..self
                }
            }
            _ => self,
        }
    }
}

/// One change a writer makes to its store.
#[derive(Clone, Copy, Debug)]
pub enum Edit<'a> {
    /// Tag the image `id` as `tag`, moving an existing tag of that name.
    Tag { id: &'a str, tag: &'a TagRef },
    /// Remove the tag; the image stays (untagged if it was its last tag).
    Untag(&'a TagRef),
    /// Move tag `from` to `to` in one atomic step (replacing an existing `to`).
    Retag { from: &'a TagRef, to: &'a TagRef },
    /// Delete the untagged image `id`, with what no other image uses.
    Delete(&'a str),
}

/// What a write did, as its writer saw it under the store's own write lock.
#[derive(Debug, Default)]
pub struct Written {
    /// The store's change token just before the edit and just after it, both read
    /// under the store's exclusive lock: when the first is the token the mount's
    /// catalog was read at, this edit is the only change since. `None`: the writer
    /// cannot tell.
    pub tokens: Option<(ChangeToken, ChangeToken)>,
    /// The edit's effect is exactly what [`Edit`] says of tags (with `xattrs`);
    /// false when it did more (a delete, names put back that a stale writer
    /// dropped), and the store must be read.
    pub exact: bool,
    /// Attributes the edit set on an image beside its tags (containers-storage's
    /// names history), as a scan would now show them: (image ID, name, value).
    pub xattrs: Vec<(String, String, String)>,
}

/// Why a source without a [`Writer`] refuses `what`.
pub fn read_only(source: &dyn Source, what: &str) -> StoreError {
    StoreError::Unsupported(format!(
        "{}: cannot {what}: writing {} sources is not supported yet",
        source.describe(),
        source.kind()
    ))
}

/// A store imagefs can write (its [`Source::writer`]).
pub trait Writer: Send + Sync {
    /// Completes or undoes what a crashed writer left (called once, before the first
    /// scan, on writable mounts).
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn write(&self, edit: Edit<'_>) -> Result<(), StoreError>;

    /// [`Writer::write`], saying what it did where the writer can tell, so that the
    /// mount can apply the edit to what it shows instead of reading the store again
    /// (issue 17: a write costs what it changed, not the store's size).
    fn write_tracked(&self, edit: Edit<'_>) -> Result<Written, StoreError> {
        self.write(edit).map(|()| Written::default())
    }

    /// Whether [`Writer::write_tracked`] reports the change tokens around every edit
    /// it can describe, so that whether the store moved before it needs no look of
    /// the mount's own.
    fn reports_tokens(&self) -> bool {
        false
    }

    /// Why this store never deletes an image as such (`rm by-id/…`), whatever its tags:
    /// a registry, whose images are there only through their tags. `None`: it does.
    fn no_image_deletes(&self) -> Option<String> {
        None
    }
}

pub trait Source: Send + Sync {
    fn kind(&self) -> SourceKind;

    /// `kind:path`, as the user would name it.
    fn describe(&self) -> String;

    /// Where the store is on this machine, if it is a local file or directory (what a
    /// kept catalog is tied to).
    fn path(&self) -> Option<&Path> {
        None
    }

    /// Reads the store's index into an inventory. Called once per (re)load.
    fn scan(&self) -> Result<Inventory, StoreError>;

    /// Reads blob bytes at `offset`; a short count only at the blob's end.
    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// The store's current change token: any value that moves when the store may have
    /// changed (a file's identity, a lock's last-write token, a database's txid).
    fn change_token(&self) -> io::Result<ChangeToken>;

    /// The directories whose changes move the change token, for inotify: a store with
    /// watches has its token looked at when one fires (and every few seconds anyway);
    /// one without (a registry, containerd, memory) at every tick.
    fn watches(&self) -> Vec<Watch> {
        Vec::new()
    }

    /// The change token describes what the last scan read (a registry's is the digest
    /// of the tags it listed), so it is taken after the scan. A file's is taken
    /// before, so that a change during the scan is never missed.
    fn token_from_scan(&self) -> bool {
        false
    }

    /// Who may read and change the store, as the tree shows it; `None` for a store
    /// that is no local file (its tree then shows root's, read-only).
    fn meta(&self) -> Option<StoreMeta> {
        None
    }

    /// What names everything a catalog of this store shows, so that a catalog kept by
    /// an earlier mount can be reused while it is the same (see `crate::kept`). It
    /// must change whenever the store's index, a manifest or a config could have
    /// changed, and it includes ctimes, which no writer can set back. `None`: this
    /// store's catalog is never kept.
    fn content_key(&self) -> Option<String> {
        None
    }

    /// A location from a kept catalog, made valid for this opening of the store.
    fn rebind(&self, _blob: &mut BlobLocation) {}

    /// The blob's location as its file is now, after a read answered [`BlobChanged`]:
    /// the caller must verify the bytes again before trusting them.
    fn repin(&self, blob: &BlobLocation) -> io::Result<BlobLocation> {
        Ok(blob.clone())
    }

    /// How the store is written; `None`: it is read-only here (EROFS).
    fn writer(&self) -> Option<&dyn Writer> {
        None
    }
}

/// What the command line says about how to reach and read stores.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// `-o docker_host=unix:///path`: dockerd's socket (else DOCKER_HOST, else
    /// /var/run/docker.sock).
    pub docker_host: Option<String>,
    /// `-o containerd_address=/path`: containerd's socket.
    pub containerd_address: Option<String>,
    /// How much a store may make imagefs read and hold.
    pub limits: crate::limits::Limits,
    /// Where tar indexes and compressed indexes are kept between mounts.
    pub kept: crate::kept::Kept,
    /// How registries are reached (`registry_*` options, CAs, credential files).
    pub registry: registry::RegistryOptions,
    /// `-o platform=`: the platform picked from multi-platform indexes (None: the
    /// host's).
    pub platform: Option<shared::oci_walk::Platform>,
}

impl SourceOptions {
    /// The platform picked from multi-platform indexes.
    pub fn platform(&self) -> shared::oci_walk::Platform {
        self.platform
            .clone()
            .unwrap_or_else(shared::oci_walk::host_platform)
    }
}

/// A store opened from a spec, with the containerd namespace it stands for, if any.
pub struct Opened {
    /// The containerd namespace this store is, when a root was opened whole.
    pub namespace: Option<String>,
    pub source: Box<dyn Source>,
}

impl Opened {
    /// A store that is all its spec names.
    pub fn one(source: impl Source + 'static) -> Opened {
        Opened {
            namespace: None,
            source: Box::new(source),
        }
    }
}

/// Opens a source from a command-line spec with default options (one store).
pub fn open(spec: &str) -> Result<Box<dyn Source>, StoreError> {
    open_all(spec, &SourceOptions::default())?
        .into_iter()
        .next()
        .map(|o| o.source)
        .ok_or_else(|| StoreError::NotFound(format!("{spec}: no store")))
}

/// Opens every store a spec names (`kind:path`, or a bare path whose kind is
/// detected): one, except for a containerd root given without `#namespace`, which is
/// one store per namespace (namespaces are never merged).
pub fn open_all(spec: &str, options: &SourceOptions) -> Result<Vec<Opened>, StoreError> {
    let (kind, path) = split_prefix(spec);
    match kind {
        Some(k) => (k.open)(path, options),
        // an archive is indexed once, and its kind read from the index
        None if Path::new(path).is_file() => {
            let archive = shared::tar_store::TarArchive::open(Path::new(path), options)?;
            let (_, kind) = archive_kind(&archive)?;
            Ok(vec![Opened {
                namespace: None,
                source: (kind.open)(archive),
            }])
        }
        None => (detect(Path::new(path))?.open)(path, options),
    }
}

/// Which archive kind an indexed archive is, from its members.
fn archive_kind(
    archive: &shared::tar_store::TarArchive,
) -> Result<(SourceKind, &'static ArchiveKind), StoreError> {
    KINDS
        .iter()
        .find_map(|k| Some((*k, k.archive.as_ref().filter(|a| (a.holds)(archive))?)))
        .ok_or_else(|| {
            StoreError::format(
                archive.path().display(),
                "tar archive has neither manifest.json (docker-archive) nor index.json (oci-archive)",
            )
        })
}

/// Splits a known transport prefix off `spec`. A path that merely contains a colon
/// (`./a:b.tar`) keeps it.
pub fn split_prefix(spec: &str) -> (Option<SourceKind>, &str) {
    for kind in KINDS {
        if let Some(rest) = spec
            .strip_prefix(kind.prefix)
            .and_then(|r| r.strip_prefix(':'))
        {
            return (Some(kind), rest);
        }
    }
    (None, spec)
}

/// Guesses the kind of the store at `path` (a directory, or an archive).
pub fn detect(path: &Path) -> Result<SourceKind, StoreError> {
    let meta = std::fs::metadata(path).map_err(|e| StoreError::io(path.display(), e))?;
    if meta.is_dir() {
        let dir = StoreDir::open(path, "store").map_err(|e| StoreError::io(path.display(), e))?;
        return KINDS
            .iter()
            .copied()
            .find(|k| k.is_dir_store.is_some_and(|is| is(&dir)))
            .ok_or_else(|| {
                StoreError::unsupported(format!(
                    "{}: directory is not an OCI layout (no oci-layout or index.json), nor a skopeo dir: (no version and manifest.json), nor a store imagefs knows",
                    path.display()
                ))
            });
    }
    if meta.is_file() {
        let archive = shared::tar_store::TarArchive::open(path, &SourceOptions::default())?;
        return Ok(archive_kind(&archive)?.0);
    }
    Err(StoreError::unsupported(format!(
        "{}: neither a regular file nor a directory",
        path.display()
    )))
}

/// The path of a spec, for kinds that take one plainly.
pub(crate) fn spec_path(spec: &str) -> PathBuf {
    PathBuf::from(spec)
}

#[cfg(test)]
mod tests;
