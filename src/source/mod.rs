//! The `Source` trait: one implementation per store kind (skopeo's transport names),
//! each turning its store into an [`Inventory`] and reading blobs by location.
//!
//! A source never decides what the tree looks like; the catalog does. A source reports
//! what its store *claims* (this config digest is this image, with these tags) and the
//! catalog verifies it.

pub mod archive;
pub mod compressed;
pub mod containerd;
#[rustfmt::skip]
#[allow(clippy::all)]
mod containerd_api;
pub mod containers_storage;
pub mod docker_archive;
pub mod docker_root;
pub mod json_limits;
pub mod oci;
pub mod oci_archive;
pub mod oci_index;
pub mod tar_rewrite;

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::reference::TagRef;
pub(crate) use crate::store_file::read_whole;
pub use crate::store_file::{FileId, StoreDir};

/// A store kind, named like skopeo's transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    DockerArchive,
    Oci,
    OciArchive,
    ContainersStorage,
    DockerRoot,
    Containerd,
    Registry,
}

impl SourceKind {
    pub const ALL: [SourceKind; 7] = [
        SourceKind::DockerArchive,
        SourceKind::Oci,
        SourceKind::OciArchive,
        SourceKind::ContainersStorage,
        SourceKind::DockerRoot,
        SourceKind::Containerd,
        SourceKind::Registry,
    ];

    pub fn prefix(self) -> &'static str {
        match self {
            SourceKind::DockerArchive => "docker-archive",
            SourceKind::Oci => "oci",
            SourceKind::OciArchive => "oci-archive",
            SourceKind::ContainersStorage => "containers-storage",
            SourceKind::DockerRoot => "docker-root",
            SourceKind::Containerd => "containerd",
            SourceKind::Registry => "registry",
        }
    }

    /// What the kind reads, for `--help` and error messages.
    pub fn about(self) -> &'static str {
        match self {
            SourceKind::DockerArchive => "a docker save / podman save tar (plain, gzip or zstd)",
            SourceKind::Oci => "an OCI image layout directory (oci-layout, index.json, blobs/)",
            SourceKind::OciArchive => "a tar of an OCI image layout",
            SourceKind::ContainersStorage => {
                "the store of podman, CRI-O and buildah (/var/lib/containers/storage)"
            }
            SourceKind::DockerRoot => "Docker's data root (/var/lib/docker)",
            SourceKind::Containerd => {
                "containerd's root (/var/lib/containerd; ROOT#NAMESPACE picks a namespace)"
            }
            SourceKind::Registry => "an OCI distribution registry (recognised, not read yet)",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
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
}

impl BlobLocation {
    pub fn size(&self) -> u64 {
        match self {
            BlobLocation::Member { size, .. } | BlobLocation::File { size, .. } => *size,
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
#[derive(Clone, Debug, Default)]
pub struct ImageRecord {
    /// The config digest the store claims (`sha256:<hex>`); verified by the catalog.
    /// Empty when the store does not name it (then the bytes' hash is the ID).
    pub claimed_id: String,
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
    pub extra_xattrs: Vec<(String, String)>,
}

impl ImageRecord {
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

/// A source failed as a whole (cannot be opened, or has no readable index).
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct SourceError {
    /// The file the problem is in.
    pub location: String,
    pub message: String,
}

impl SourceError {
    pub fn new(location: impl fmt::Display, message: impl fmt::Display) -> SourceError {
        SourceError {
            location: location.to_string(),
            message: message.to_string(),
        }
    }
}

/// Why a write was refused; each maps to the errno the caller sees.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The source kind (or this store) cannot be written: EROFS.
    #[error("{0}")]
    NotSupported(String),
    /// The source can write, but leaves this operation to its own tools: EPERM.
    #[error("{0}")]
    NotPermitted(String),
    /// The image is in use (tagged, or held by a daemon): EBUSY.
    #[error("{0}")]
    Busy(String),
    /// No such tag or image: ENOENT.
    #[error("{0}")]
    NotFound(String),
    /// The store's own files failed us; the store is unchanged.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl WriteError {
    pub fn io(context: impl fmt::Display, source: io::Error) -> WriteError {
        WriteError::Io {
            context: context.to_string(),
            source,
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            WriteError::NotSupported(_) => libc::EROFS,
            WriteError::NotPermitted(_) => libc::EPERM,
            WriteError::Busy(_) => libc::EBUSY,
            WriteError::NotFound(_) => libc::ENOENT,
            WriteError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

pub trait Source: Send + Sync {
    fn kind(&self) -> SourceKind;

    /// The store's path as given (after the transport prefix).
    fn path(&self) -> &Path;

    /// `kind:path`, as the user would name it.
    fn describe(&self) -> String {
        format!("{}:{}", self.kind(), self.path().display())
    }

    /// Reads the store's index into an inventory. Called once per (re)load.
    fn scan(&self) -> Result<Inventory, SourceError>;

    /// Reads blob bytes at `offset`; a short count only at the blob's end.
    fn read_at(&self, blob: &BlobLocation, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// The store's current change token.
    fn change_token(&self) -> io::Result<ChangeToken>;

    fn meta(&self) -> StoreMeta;

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
    fn repin(&self, blob: &BlobLocation) -> io::Result<BlobLocation>;

    /// Completes or undoes what a crashed writer left (called once, before the first
    /// scan, on writable mounts).
    fn recover(&self) -> Result<(), WriteError> {
        Ok(())
    }

    /// Tag the image `id` as `tag`, moving an existing tag of that name.
    fn tag(&self, _id: &str, _tag: &TagRef) -> Result<(), WriteError> {
        Err(self.cannot("tag"))
    }

    /// Remove the tag `tag`; the image stays (untagged if it was its last tag).
    fn untag(&self, _tag: &TagRef) -> Result<(), WriteError> {
        Err(self.cannot("untag"))
    }

    /// Move tag `from` to `to` in one atomic step (replacing an existing `to`).
    fn retag(&self, _from: &TagRef, _to: &TagRef) -> Result<(), WriteError> {
        Err(self.cannot("re-tag"))
    }

    /// Delete the untagged image `id`, with what no other image uses.
    fn delete_image(&self, _id: &str) -> Result<(), WriteError> {
        Err(self.cannot("delete images"))
    }

    fn cannot(&self, what: &str) -> WriteError {
        WriteError::NotSupported(format!(
            "{}: cannot {what}: writing {} sources is not supported yet",
            self.describe(),
            self.kind()
        ))
    }
}

/// The chain IDs of an image's layers, from its config's `rootfs.diff_ids`: what
/// Docker's layerdb and containerd's snapshots are keyed by. The first is the first
/// diff ID; each next is the digest of "<previous chain ID> <diff ID>".
pub fn chain_ids(diff_ids: &[&str]) -> Vec<String> {
    use sha2::{Digest as _, Sha256};
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.to_string(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}")))
            ),
        };
        out.push(next);
    }
    out
}

/// The diff IDs a config lists (`rootfs.diff_ids`); empty when it is not JSON.
pub fn diff_ids(config: &[u8]) -> Vec<String> {
    serde_json::from_slice::<serde_json::Value>(config)
        .ok()
        .and_then(|v| {
            v.pointer("/rootfs/diff_ids")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

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

/// `sha256:<hex>`: the ID (config) or digest (manifest) that names these bytes.
pub fn sha256_id(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Reads a whole blob, refusing ones larger than `limit` (indexes and manifests are
/// small; a huge one is an attack or a corrupt store, not something to buffer).
pub fn read_blob(source: &dyn Source, blob: &BlobLocation, limit: u64) -> io::Result<Vec<u8>> {
    read_whole(blob.size(), limit, |off, buf| {
        source.read_at(blob, off, buf)
    })
}

/// A `Read` over one blob, for streaming hashes and parses of large configs.
pub struct BlobReader<'a> {
    source: &'a dyn Source,
    blob: &'a BlobLocation,
    pos: u64,
}

impl<'a> BlobReader<'a> {
    pub fn new(source: &'a dyn Source, blob: &'a BlobLocation) -> BlobReader<'a> {
        BlobReader {
            source,
            blob,
            pos: 0,
        }
    }
}

impl io::Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.blob.size().saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        let n = self.source.read_at(self.blob, self.pos, &mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob ends after {} of {} bytes", self.pos, self.blob.size()),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// `read_at` for the stores whose blobs are files (layouts, containers-storage,
/// Docker's data root, containerd's content store): the file is opened beneath the
/// store's root at every read, and must be the one the blob was located in.
pub(crate) fn read_file_blob(
    dir: &StoreDir,
    blob: &BlobLocation,
    offset: u64,
    buf: &mut [u8],
) -> io::Result<usize> {
    match blob {
        BlobLocation::File { rel, size, pin } => {
            let file = dir.open_read(rel)?;
            if FileId::of_file(&file)? != *pin {
                return Err(BlobChanged::error(dir.display(rel)));
            }
            pread_clamped(&file, 0, *size, offset, buf)
        }
        BlobLocation::Member { .. } => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a store of files has no tar members",
        )),
    }
}

/// `repin` for the stores whose blobs are files.
pub(crate) fn repin_file_blob(dir: &StoreDir, blob: &BlobLocation) -> io::Result<BlobLocation> {
    match blob {
        BlobLocation::File { rel, .. } => {
            let file = dir.open_read(rel)?;
            Ok(BlobLocation::file(rel.clone(), &file.metadata()?))
        }
        BlobLocation::Member { .. } => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a store of files has no tar members",
        )),
    }
}

/// Reads from a file at `offset`, clamped to a blob of `size` bytes.
pub(crate) fn pread_clamped(
    file: &std::fs::File,
    start: u64,
    size: u64,
    offset: u64,
    buf: &mut [u8],
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    if offset >= size {
        return Ok(0);
    }
    let want = buf
        .len()
        .min((size - offset).min(usize::MAX as u64) as usize);
    // offsets come from indexes a store (or a kept file) gave: never trusted to add up
    let at = start
        .checked_add(offset)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "offset beyond any file"))?;
    file.read_at(&mut buf[..want], at)
}

/// What the command line says about how to reach stores.
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
}

/// Opens a source from a command-line spec with default options.
pub fn open(spec: &str) -> Result<Box<dyn Source>, SourceError> {
    open_with(spec, &SourceOptions::default())
}

/// A store opened from a spec, with the containerd namespace it stands for, if any.
pub type Opened = (Option<String>, Box<dyn Source>);

/// Opens every store a spec names: one, except for a containerd root given without
/// `#namespace`, which is one store per namespace (namespaces are never merged).
/// Each comes with the namespace it stands for, if any.
pub fn open_all(spec: &str, options: &SourceOptions) -> Result<Vec<Opened>, SourceError> {
    let (kind, path) = split_prefix(spec);
    let is_containerd = kind == Some(SourceKind::Containerd)
        || (kind.is_none()
            // a containerd root is a directory: an archive is not indexed twice to learn that
            && Path::new(path).is_dir()
            && detect(Path::new(path)).is_ok_and(|k| k == SourceKind::Containerd));
    if is_containerd {
        let (root, ns) = containerd::split_namespace(path);
        let root = Path::new(root);
        let namespaces = match ns {
            Some(ns) => vec![ns.to_string()],
            None => containerd::namespaces(root)?,
        };
        if namespaces.is_empty() {
            return Err(SourceError::new(
                root.display(),
                "no namespace with image records",
            ));
        }
        let single = ns.is_some();
        return namespaces
            .into_iter()
            .map(|n| {
                let s: Box<dyn Source> = Box::new(containerd::Containerd::open(
                    root,
                    &n,
                    options.containerd_address.as_deref(),
                    options.limits,
                )?);
                Ok(((!single).then_some(n), s))
            })
            .collect();
    }
    Ok(vec![(None, open_with(spec, options)?)])
}

/// Opens a source from a command-line spec: `kind:path`, or a bare path whose kind is
/// detected.
pub fn open_with(spec: &str, options: &SourceOptions) -> Result<Box<dyn Source>, SourceError> {
    let (kind, path) = split_prefix(spec);
    let path = PathBuf::from(path);
    let kind = match kind {
        Some(k) => k,
        // an archive is indexed once, and its kind read from the index
        None if path.is_file() => return archive::open_detected(&path, options),
        None => detect(&path)?,
    };
    let limits = options.limits;
    match kind {
        SourceKind::DockerArchive => Ok(Box::new(docker_archive::DockerArchive::open(
            &path, options,
        )?)),
        SourceKind::Oci => Ok(Box::new(oci::OciLayout::open(&path, limits)?)),
        SourceKind::OciArchive => Ok(Box::new(oci_archive::OciArchive::open(&path, options)?)),
        SourceKind::ContainersStorage => Ok(Box::new(containers_storage::ContainersStorage::open(
            &path, limits,
        )?)),
        SourceKind::Containerd => {
            let text = path.to_string_lossy().into_owned();
            let (root, ns) = containerd::split_namespace(&text);
            let ns = ns.ok_or_else(|| {
                SourceError::new(root, "name the namespace: containerd:ROOT#NAMESPACE")
            })?;
            Ok(Box::new(containerd::Containerd::open(
                Path::new(root),
                ns,
                options.containerd_address.as_deref(),
                limits,
            )?))
        }
        SourceKind::DockerRoot => Ok(Box::new(docker_root::DockerRoot::open(
            &path,
            options.docker_host.as_deref(),
            limits,
        )?)),
        other => Err(SourceError::new(
            path.display(),
            format!(
                "{other}: sources of this kind are not supported by this version of imagefs yet"
            ),
        )),
    }
}

/// Splits a known transport prefix off `spec`. A path that merely contains a colon
/// (`./a:b.tar`) keeps it.
pub fn split_prefix(spec: &str) -> (Option<SourceKind>, &str) {
    for kind in SourceKind::ALL {
        if let Some(rest) = spec
            .strip_prefix(kind.prefix())
            .and_then(|r| r.strip_prefix(':'))
        {
            return (Some(kind), rest);
        }
    }
    (None, spec)
}

/// Guesses a store's kind from what is at `path`.
pub fn detect(path: &Path) -> Result<SourceKind, SourceError> {
    let meta = std::fs::metadata(path).map_err(|e| SourceError::new(path.display(), e))?;
    if meta.is_dir() {
        let dir = StoreDir::open(path, "store").map_err(|e| SourceError::new(path.display(), e))?;
        let is = |rel: &str, want_dir: bool| {
            dir.metadata(rel)
                .ok()
                .flatten()
                .is_some_and(|m| if want_dir { m.is_dir() } else { m.is_file() })
        };
        if is("oci-layout", false) || is("index.json", false) {
            return Ok(SourceKind::Oci);
        }
        if ["vfs-images", "overlay-images", "btrfs-images", "zfs-images"]
            .iter()
            .any(|d| is(&format!("{d}/images.json"), false))
            || dir.metadata("storage.lock").ok().flatten().is_some()
        {
            return Ok(SourceKind::ContainersStorage);
        }
        if is("image", true)
            && (is("containers", true)
                || dir
                    .entries("image", 1024)
                    .unwrap_or_default()
                    .iter()
                    .any(|(name, d)| *d && is(&format!("image/{name}/imagedb"), true)))
        {
            return Ok(SourceKind::DockerRoot);
        }
        if is("io.containerd.metadata.v1.bolt", true) {
            return Ok(SourceKind::Containerd);
        }
        return Err(SourceError::new(
            path.display(),
            "directory is not an OCI layout (no oci-layout or index.json), nor a store imagefs knows",
        ));
    }
    if meta.is_file() {
        return archive::detect_archive_kind(path);
    }
    Err(SourceError::new(
        path.display(),
        "neither a regular file nor a directory",
    ))
}

#[cfg(test)]
mod tests;
