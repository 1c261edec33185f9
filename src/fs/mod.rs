//! The core filesystem: every operation the kernel asks for, answered from the tree,
//! returning `Result<_, Error>` (an errno and its reason, see `error`). No fuser types
//! here; `crate::fuse` only translates, and logs each failure once.

mod error;
pub mod inode;
pub mod tree;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

use std::collections::BTreeSet;

use parking_lot::{Mutex, RwLock};
use tracing::{debug, info, warn};

use crate::catalog::{Catalog, Image};
use crate::config_cache::ConfigCache;
use crate::kept::{Kept, KeptKind};
use crate::reference::{Parsed, TagRef};
use crate::source::{BlobLocation, ChangeToken, Edit, Source, StoreMeta};
pub use error::{Errno, Error, FsResult};
use inode::InodeTable;
pub use inode::ROOT_INO;
pub use tree::Tree;
use tree::{NodeKind, NodeRole, StoreView};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    File,
    Symlink,
}

/// What stat shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    pub nlink: u32,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

impl Attr {
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(512)
    }
}

/// One directory entry, with its attributes for readdirplus.
#[derive(Debug)]
pub struct DirEntry<'a> {
    pub ino: u64,
    /// The offset to resume after this entry.
    pub offset: u64,
    pub name: &'a str,
    pub attr: Attr,
}

/// What a getxattr/listxattr caller gets, following the size-0 protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

/// Size 0 asks for the size; too small a buffer is ERANGE.
pub fn xattr_reply(value: Vec<u8>, size: u32) -> FsResult<XattrReply> {
    if size == 0 {
        return u32::try_from(value.len())
            .map(XattrReply::Size)
            .map_err(|_| Errno::ERANGE.into());
    }
    if value.len() > size as usize {
        return Err(Errno::ERANGE.into());
    }
    Ok(XattrReply::Data(value))
}

/// Something the kernel must forget after a store changed underneath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The name `name` in directory `parent`.
    Entry { parent: u64, name: String },
    /// The cached attributes (and data) of an inode.
    Inode(u64),
}

/// One mounted source.
pub struct Store {
    pub label: String,
    pub source: Box<dyn Source>,
}

#[derive(Clone, Debug, Default)]
pub struct FsOptions {
    /// `-o ro`: refuse writes with EROFS.
    pub read_only: bool,
    /// Where catalogs are kept between mounts (`Kept::none()`: every mount scans).
    pub kept: Kept,
    /// How much a store may make imagefs read and hash.
    pub limits: crate::limits::Limits,
}

struct State {
    catalogs: Vec<Arc<Catalog>>,
    metas: Vec<StoreMeta>,
    /// Per store: by-tag/ directories kept without tags (mkdir, or emptied by rm).
    extra_dirs: Vec<BTreeSet<String>>,
    /// Per store: the change token its catalog was read at.
    tokens: Vec<Option<ChangeToken>>,
    tree: Tree,
    /// Kept across reloads: a name keeps its inode number.
    inodes: InodeTable,
}

impl State {
    fn rebuild(&mut self, stores: &[Store]) -> Tree {
        let views: Vec<StoreView<'_>> = stores
            .iter()
            .zip(&self.catalogs)
            .zip(&self.extra_dirs)
            .map(|((s, c), x)| StoreView {
                label: &s.label,
                catalog: c,
                extra_dirs: x,
            })
            .collect();
        let tree = Tree::build(&views, &mut self.inodes);
        std::mem::replace(&mut self.tree, tree)
    }
}

pub struct ImageFs {
    stores: Vec<Store>,
    state: RwLock<State>,
    /// One writer at a time per store (the store's own lock guards against others).
    write_locks: Vec<Mutex<()>>,
    cache: ConfigCache,
    options: FsOptions,
    /// Catalogs scanned at mount, with their keys, until `keep_catalogs` saves them.
    to_keep: Mutex<Vec<(usize, String, Arc<Catalog>)>>,
    /// What the kernel asked for and was given, counted by the FUSE adapter.
    pub counters: KernelCounters,
    /// What the reload after a write through the mount found changed by another
    /// program since the last look (the watcher would not see it: the reload took
    /// its change token): told to the kernel by the watcher at once, outside the
    /// request, which holds the directory locks the notifications need.
    queued: Mutex<Vec<Invalidation>>,
    queued_wake: parking_lot::Condvar,
    /// Configs whose file changed on disk (touched, copied back) and was verified
    /// again: where they are now. Cleared with the store's catalog.
    repinned: Mutex<
        std::collections::HashMap<crate::config_cache::CacheKey, crate::source::BlobLocation>,
    >,
    /// Per store: the change token a reload failed at (not tried again until it moves).
    failed_tokens: Mutex<Vec<Option<ChangeToken>>>,
}

/// Shown in `user.imagefs.stats`: how many READ, GETXATTR and OPEN requests reached
/// imagefs, and how many files were pushed into the kernel's page cache before
/// anyone asked.
#[derive(Default)]
pub struct KernelCounters {
    pub reads: std::sync::atomic::AtomicU64,
    pub pushed: std::sync::atomic::AtomicU64,
    pub getxattrs: std::sync::atomic::AtomicU64,
    pub opens: std::sync::atomic::AtomicU64,
}

/// Why a read from the store gave no bytes.
enum ReadFailure {
    /// The config's file changed since it was verified.
    Changed,
    Failed(Error),
}

impl ImageFs {
    /// Scans every store. Fails with the first store that cannot be read at all; a
    /// store's partial problems are logged and the rest of it shown.
    pub fn new(
        stores: Vec<Store>,
        cache: ConfigCache,
        options: FsOptions,
    ) -> Result<ImageFs, crate::source::StoreError> {
        let mut catalogs = Vec::with_capacity(stores.len());
        let mut metas = Vec::with_capacity(stores.len());
        let mut tokens = Vec::with_capacity(stores.len());
        let mut to_keep = Vec::new();
        for (i, store) in stores.iter().enumerate() {
            if !options.read_only
                && let Some(writer) = store.source.writer()
                && let Err(e) = writer.recover()
            {
                warn!(store = %store.source.describe(), "cannot recover from an interrupted write: {e}");
            }
            tokens.push(store.source.change_token().ok());
            let source = store.source.as_ref();
            // Taken before the scan: a change during it makes the key stale, which
            // costs the next mount a scan and never shows a wrong catalog.
            let key = catalog_key(&options.kept, source, &options.limits);
            let started = std::time::Instant::now();
            let kept = key
                .as_ref()
                .and_then(|key| load_catalog(&options.kept, source, key));
            let catalog = match kept {
                Some(catalog) => {
                    catalog.log_problems(&source.describe());
                    info!(
                        store = %source.describe(),
                        images = catalog.images.len(),
                        dangling = catalog.dangling.len(),
                        load_ms = started.elapsed().as_secs_f64() * 1e3,
                        "store read from the catalog kept by an earlier mount"
                    );
                    Arc::new(catalog)
                }
                None => {
                    let inv = source.scan()?;
                    let scanned = started.elapsed();
                    let catalog = Arc::new(Catalog::build(i, source, inv, &cache, &options.limits));
                    catalog.log_problems(&source.describe());
                    info!(
                        store = %source.describe(),
                        images = catalog.images.len(),
                        dangling = catalog.dangling.len(),
                        scan_ms = scanned.as_secs_f64() * 1e3,
                        catalog_ms = (started.elapsed() - scanned).as_secs_f64() * 1e3,
                        "store read"
                    );
                    if let Some(key) = key {
                        to_keep.push((i, key, catalog.clone()));
                    }
                    catalog
                }
            };
            catalogs.push(catalog);
            metas.push(store.source.meta().unwrap_or(StoreMeta::NOT_LOCAL));
        }
        let mut state = State {
            extra_dirs: vec![BTreeSet::new(); stores.len()],
            catalogs,
            metas,
            tokens,
            tree: Tree::default(),
            inodes: InodeTable::new(stores.len() == 1),
        };
        let started = std::time::Instant::now();
        state.rebuild(&stores);
        debug!(
            nodes = state.tree.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "tree built"
        );
        let n_stores = stores.len();
        Ok(ImageFs {
            write_locks: stores.iter().map(|_| Mutex::new(())).collect(),
            stores,
            state: RwLock::new(state),
            cache,
            options,
            counters: KernelCounters::default(),
            to_keep: Mutex::new(to_keep),
            queued: Mutex::new(Vec::new()),
            queued_wake: parking_lot::Condvar::new(),
            repinned: Mutex::new(Default::default()),
            failed_tokens: Mutex::new(vec![None; n_stores]),
        })
    }

    /// What writes queued for the kernel to forget, waiting up to `timeout` for some.
    pub fn wait_for_queued(&self, timeout: std::time::Duration) -> Vec<Invalidation> {
        let mut queued = self.queued.lock();
        if queued.is_empty() {
            self.queued_wake.wait_for(&mut queued, timeout);
        }
        std::mem::take(&mut *queued)
    }

    pub fn stores(&self) -> &[Store] {
        &self.stores
    }

    /// The catalog of store `i`, as it is now.
    pub fn catalog(&self, i: usize) -> Option<Arc<Catalog>> {
        self.state.read().catalogs.get(i).cloned()
    }

    pub fn options(&self) -> &FsOptions {
        &self.options
    }

    /// Saves the catalogs scanned since the last call (at mount, or by a reload), for
    /// the next mount (see `crate::kept`). Called off the request path: by the
    /// watcher, and once more after unmount.
    pub fn keep_catalogs(&self) {
        let kept = &self.options.kept;
        if !kept.is_on() {
            return;
        }
        // Held throughout, so that the call after unmount waits for one under way.
        let mut pending = self.to_keep.lock();
        for (i, key, catalog) in pending.drain(..) {
            // Only the store's current catalog: a reload's newer one is queued too.
            if Arc::ptr_eq(&self.state.read().catalogs[i], &catalog) {
                let source = self.stores[i].source.as_ref();
                kept.store(
                    KeptKind::Catalog,
                    &catalog_what(source),
                    &key,
                    catalog.as_ref(),
                );
            }
        }
    }

    fn attr_of(&self, state: &State, ino: u64) -> FsResult<Attr> {
        let node = state.tree.get(ino).ok_or(Errno::ENOENT)?;
        let meta = node
            .store
            .and_then(|s| state.metas.get(s).copied())
            .or_else(|| state.metas.first().copied());
        let (uid, gid, mode, store_mtime, via_daemon) = match meta {
            Some(m) => (m.uid, m.gid, m.mode, m.mtime, m.via_daemon),
            None => (0, 0, 0o444, SystemTime::UNIX_EPOCH, false),
        };
        // Directories: readable and searchable by who may read the store, writable
        // (tag, untag, delete) by who may change it, unless the mount is read-only.
        let read_bits = (mode & 0o444) as u16;
        let write_bits = if self.options.read_only {
            0
        } else {
            (mode & 0o222) as u16
        };
        let attr = match &node.kind {
            NodeKind::Dir { subdirs, .. } => Attr {
                ino,
                kind: FileKind::Dir,
                size: 0,
                nlink: 2 + subdirs,
                perm: read_bits | (read_bits >> 2) | write_bits,
                uid,
                gid,
                mtime: store_mtime,
            },
            NodeKind::Image {
                store,
                index,
                nlink,
            } => {
                let image = image_at(state, *store, *index)?;
                // A config shows the owner and read bits of the file it is read from,
                // and write bits for who may change the store's names (writing the
                // bytes is always refused): the kernel lets only a file's owner, or
                // who may write it, make a hard link (protected_hardlinks), and `ln`
                // is how a tag is made.
                let (fuid, fgid, fperm) = match (&image.config, via_daemon) {
                    (_, true) | (BlobLocation::Digest { .. }, false) => {
                        (uid, gid, read_bits | write_bits)
                    }
                    (BlobLocation::File { pin, .. } | BlobLocation::Member { pin, .. }, false) => {
                        let w = store_write_bits_for(pin.uid, pin.gid, uid, gid, write_bits);
                        (pin.uid, pin.gid, (pin.mode & 0o444) as u16 | w)
                    }
                };
                Attr {
                    ino,
                    kind: FileKind::File,
                    size: image.config_size(),
                    nlink: *nlink,
                    perm: fperm,
                    uid: fuid,
                    gid: fgid,
                    mtime: image.mtime,
                }
            }
            NodeKind::Symlink { target } => Attr {
                ino,
                kind: FileKind::Symlink,
                size: target.len() as u64,
                nlink: 1,
                perm: 0o777,
                uid,
                gid,
                mtime: store_mtime,
            },
        };
        Ok(attr)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let state = self.state.read();
        let node = state.tree.get(parent).ok_or(Errno::ENOENT)?;
        if !matches!(node.kind, NodeKind::Dir { .. }) {
            return Err(Errno::ENOTDIR.into());
        }
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let ino = state.tree.lookup(parent, name).ok_or(Errno::ENOENT)?;
        self.attr_of(&state, ino)
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let state = self.state.read();
        self.attr_of(&state, ino)
    }

    /// Lists a directory from `offset` (0 = start; `.` and `..` first), calling `add`
    /// for each entry until it returns true (the reply buffer is full).
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(DirEntry<'_>) -> bool,
    ) -> FsResult<()> {
        let state = self.state.read();
        let node = state.tree.get(ino).ok_or(Errno::ENOENT)?;
        let NodeKind::Dir { children, .. } = &node.kind else {
            return Err(Errno::ENOTDIR.into());
        };
        let dots = [(".", ino), ("..", node.parent)];
        let entries = dots
            .iter()
            .map(|(n, i)| (*n, *i))
            .chain(children.iter().map(|(n, i)| (n.as_str(), *i)));
        for (index, (name, child)) in entries.enumerate().skip(offset as usize) {
            let attr = self.attr_of(&state, child)?;
            let full = add(DirEntry {
                ino: child,
                offset: index as u64 + 1,
                name,
                attr,
            });
            if full {
                break;
            }
        }
        Ok(())
    }

    /// Checks an open: these files are read-only.
    pub fn open(&self, ino: u64, write: bool) -> FsResult<()> {
        let attr = self.getattr(ino)?;
        if attr.kind == FileKind::Dir && write {
            return Err(Errno::EISDIR.into());
        }
        if write {
            return Err(self.refuse_write());
        }
        Ok(())
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        // Only the location is taken out of the lock: reads of large configs go to
        // the source without holding it.
        let (store, config, id) = {
            let state = self.state.read();
            let node = state.tree.get(ino).ok_or(Errno::ENOENT)?;
            match &node.kind {
                NodeKind::Image { store, index, .. } => {
                    let image = image_at(&state, *store, *index)?;
                    (*store, image.config.clone(), image.id.clone())
                }
                NodeKind::Dir { .. } => return Err(Errno::EISDIR.into()),
                NodeKind::Symlink { .. } => return Err(Errno::EINVAL.into()),
            }
        };
        let total = config.size();
        if offset >= total {
            return Ok(Vec::new());
        }
        let len = (size as u64).min(total - offset) as usize;
        let start = offset as usize;
        let key = (store, config);
        if let Some(bytes) = self.cache.get(&key) {
            return bytes
                .get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or(Errno::EIO.into());
        }
        // A config whose file changed since it was verified is verified again (and
        // read from that file only) before a byte of it is served.
        let located = self.repinned.lock().get(&key).cloned();
        let located = located.unwrap_or_else(|| key.1.clone());
        match self.read_verified(store, &located, &id, offset, len, &key) {
            Err(ReadFailure::Changed) => {
                let fresh = self.reverify(store, &located, &id)?;
                self.repinned.lock().insert(key.clone(), fresh.clone());
                match self.read_verified(store, &fresh, &id, offset, len, &key) {
                    Ok(bytes) => Ok(bytes),
                    Err(ReadFailure::Changed) => Err(Error::new(
                        Errno::EIO,
                        format!(
                            "{}: config of {id} keeps changing under the mount: not served",
                            self.stores[store].source.describe()
                        ),
                    )),
                    Err(ReadFailure::Failed(e)) => Err(e),
                }
            }
            Err(ReadFailure::Failed(e)) => Err(e),
            Ok(bytes) => Ok(bytes),
        }
    }

    /// Reads `len` bytes at `offset` of a config from the store: a small config whole,
    /// hashed and cached (under `key`); a larger one by range from the very file it was
    /// verified in (the location's pin).
    #[allow(clippy::too_many_arguments)]
    fn read_verified(
        &self,
        store: usize,
        config: &crate::source::BlobLocation,
        id: &str,
        offset: u64,
        len: usize,
        key: &crate::config_cache::CacheKey,
    ) -> Result<Vec<u8>, ReadFailure> {
        let source = self.stores[store].source.as_ref();
        let fail = |e: std::io::Error| {
            if crate::source::BlobChanged::is(&e) {
                ReadFailure::Changed
            } else {
                ReadFailure::Failed(self.io_error(store, e))
            }
        };
        let start = offset as usize;
        if config.size() <= crate::catalog::WHOLE_READ_LIMIT {
            let bytes = crate::source::read_blob(source, config, crate::catalog::WHOLE_READ_LIMIT)
                .map_err(fail)?;
            // Checked at every read from the store, not only at scan: the catalog may
            // be one kept by an earlier mount, and the cache may have let it go.
            let hashed = crate::source::sha256_id(&bytes);
            if hashed != id {
                return Err(ReadFailure::Failed(changed_under_mount(
                    source, id, &hashed,
                )));
            }
            let out = bytes
                .get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or(ReadFailure::Failed(Errno::EIO.into()))?;
            self.cache.insert(key.clone(), Arc::from(bytes));
            return Ok(out);
        }
        self.cache.note_too_big();
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = source
                .read_at(config, offset + done as u64, &mut buf[done..])
                .map_err(fail)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// The config's location as its file is now, once that file's bytes hash to the
    /// image ID again (streamed: a config of any size).
    fn reverify(
        &self,
        store: usize,
        config: &crate::source::BlobLocation,
        id: &str,
    ) -> FsResult<crate::source::BlobLocation> {
        let source = self.stores[store].source.as_ref();
        let fresh = source.repin(config).map_err(|e| self.io_error(store, e))?;
        let hashed =
            crate::catalog::hash_blob(source, &fresh).map_err(|e| self.io_error(store, e))?;
        if hashed != id {
            return Err(changed_under_mount(source, id, &hashed));
        }
        debug!(store = %source.describe(), "config of {id} changed on disk and verified again");
        Ok(fresh)
    }

    fn io_error(&self, store: usize, e: std::io::Error) -> Error {
        Error::new(
            Errno::EIO,
            format!(
                "{}: cannot read config: {e}",
                self.stores[store].source.describe()
            ),
        )
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let state = self.state.read();
        match &state.tree.get(ino).ok_or(Errno::ENOENT)?.kind {
            NodeKind::Symlink { target } => Ok(target.clone().into_bytes()),
            _ => Err(Errno::EINVAL.into()),
        }
    }

    /// The extended attributes of a node, in a stable order.
    pub fn xattrs(&self, ino: u64) -> FsResult<Vec<(String, String)>> {
        let state = self.state.read();
        let node = state.tree.get(ino).ok_or(Errno::ENOENT)?;
        let mut out = Vec::new();
        match &node.kind {
            NodeKind::Image { store, index, .. } => {
                let image = image_at(&state, *store, *index)?;
                image_xattrs(image, &self.stores[*store].source.describe(), &mut out);
            }
            NodeKind::Dir { .. } => {
                // The store's own directory says where it comes from.
                if let Some(s) = node.store {
                    let is_store_root = state.tree.lookup(ino, "by-id").is_some();
                    if is_store_root {
                        out.push(("user.image.source".into(), self.stores[s].source.describe()));
                    }
                }
            }
            NodeKind::Symlink { .. } => {}
        }
        if ino == ROOT_INO {
            let stats = serde_json::json!({
                "config_cache": self.cache.stats(),
                "stores": self.stores.len(),
                "kernel": {
                    "reads": self.counters.reads.load(std::sync::atomic::Ordering::Relaxed),
                    "pushed": self.counters.pushed.load(std::sync::atomic::Ordering::Relaxed),
                    "getxattrs": self.counters.getxattrs.load(std::sync::atomic::Ordering::Relaxed),
                    "opens": self.counters.opens.load(std::sync::atomic::Ordering::Relaxed),
                },
            });
            out.push(("user.imagefs.stats".into(), stats.to_string()));
        }
        Ok(out)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = name.to_str().ok_or(Errno::ENODATA)?;
        // `ls -l` asks every file for security.selinux and the POSIX ACLs, a FUSE round
        // trip each. Those namespaces are not supported here, and saying so (rather
        // than "no such attribute") lets ls remember it for the whole file system and
        // stop asking: 2 requests per `ls -l` instead of 2 per file.
        if !name.starts_with("user.") {
            self.getattr(ino)?;
            return Err(Errno::EOPNOTSUPP.into());
        }
        if !name.starts_with("user.image.") && !name.starts_with("user.imagefs.") {
            self.getattr(ino)?;
            return Err(Errno::ENODATA.into());
        }
        self.xattrs(ino)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(Errno::ENODATA.into())
    }

    /// Names, each ending in NUL.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        for (name, _) in self.xattrs(ino)? {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// Refuses a write that no source can do (chmod, write into a config, a new
    /// regular file), or any write under `-o ro`, saying why.
    pub fn refuse_write(&self) -> Error {
        if self.options.read_only {
            Error::refused(Errno::EROFS, "mounted read-only")
        } else {
            Error::new(
                Errno::EPERM,
                "by-id files are image configs and by-tag entries are tags; only rm, ln, mv, mkdir and rmdir change them",
            )
        }
    }

    fn writable(&self) -> FsResult<()> {
        if self.options.read_only {
            return Err(Error::refused(Errno::EROFS, "mounted read-only"));
        }
        Ok(())
    }

    /// The store and role of a node.
    fn role(&self, ino: u64) -> FsResult<(Option<usize>, NodeRole)> {
        let state = self.state.read();
        let node = state.tree.get(ino).ok_or(Errno::ENOENT)?;
        Ok((node.store, node.role.clone()))
    }

    /// The image ID of an image inode.
    fn image_id(&self, ino: u64) -> FsResult<(usize, String)> {
        let state = self.state.read();
        match &state.tree.get(ino).ok_or(Errno::ENOENT)?.kind {
            NodeKind::Image { store, index, .. } => {
                Ok((*store, image_at(&state, *store, *index)?.id.clone()))
            }
            _ => Err(Errno::EPERM.into()),
        }
    }

    /// Rescans store `store` and rebuilds the tree; inode numbers are kept. Returns
    /// the tree as it was, for telling the kernel what changed.
    pub fn reload(&self, store: usize) -> Result<Tree, crate::source::StoreError> {
        let source = self.stores[store].source.as_ref();
        let token = source.change_token().ok();
        let key = catalog_key(&self.options.kept, source, &self.options.limits);
        let inv = source.scan()?;
        self.cache.forget_store(store);
        self.repinned.lock().retain(|(s, _), _| *s != store);
        let catalog = Arc::new(Catalog::build(
            store,
            source,
            inv,
            &self.cache,
            &self.options.limits,
        ));
        catalog.log_problems(&source.describe());
        // Queued, not written here: a reload may run inside a write request. The key
        // was taken before the scan, as at mount.
        if let Some(key) = key {
            self.to_keep.lock().push((store, key, catalog.clone()));
        }
        let mut state = self.state.write();
        state.catalogs[store] = catalog;
        state.metas[store] = source.meta().unwrap_or(StoreMeta::NOT_LOCAL);
        state.tokens[store] = token;
        Ok(state.rebuild(&self.stores))
    }

    /// Reloads every store whose change token moved (a change made by another
    /// program), and says what the kernel must forget. Cheap when nothing changed: one
    /// stat-like call per store.
    pub fn refresh_changed(&self) -> Vec<Invalidation> {
        let mut out = Vec::new();
        for (i, store) in self.stores.iter().enumerate() {
            let _one_writer = self.write_locks[i].lock();
            let now = store.source.change_token().ok();
            if now.is_none() || self.state.read().tokens[i] == now {
                continue;
            }
            // a store that cannot be read is said so once per change, not every tick
            if self.failed_tokens.lock()[i] == now {
                continue;
            }
            info!(store = %store.source.describe(), "changed outside the mount: reloading");
            match self.reload(i) {
                Ok(old) => {
                    self.failed_tokens.lock()[i] = None;
                    out.extend(self.invalidations(&old))
                }
                Err(e) => {
                    warn!("{e}: keeping the tree as it was until the store changes again");
                    self.failed_tokens.lock()[i] = now;
                }
            }
        }
        out
    }

    /// What changed between `old` and the current tree: names that went or now lead
    /// elsewhere, and inodes whose attributes changed, directories whose listing
    /// changed among them (the kernel keeps listings: opendir answers ENOSYS).
    fn invalidations(&self, old: &Tree) -> Vec<Invalidation> {
        let state = self.state.read();
        let mut out = Vec::new();
        for (ino, node) in old.iter() {
            if let NodeKind::Dir { children, .. } = &node.kind {
                for (name, child) in children {
                    if state.tree.lookup(ino, name) != Some(*child) {
                        out.push(Invalidation::Entry {
                            parent: ino,
                            name: name.clone(),
                        });
                    }
                }
            }
            let same_attr = match (&node.kind, state.tree.get(ino).map(|n| &n.kind)) {
                (NodeKind::Image { nlink: a, .. }, Some(NodeKind::Image { nlink: b, .. })) => {
                    a == b
                }
                (
                    NodeKind::Dir {
                        subdirs: a,
                        children: listed,
                    },
                    Some(NodeKind::Dir {
                        subdirs: b,
                        children: now,
                    }),
                ) => a == b && listed == now,
                (NodeKind::Symlink { target: a }, Some(NodeKind::Symlink { target: b })) => a == b,
                (_, None) => true, // gone: its names are invalidated above
                _ => false,
            };
            if !same_attr {
                out.push(Invalidation::Inode(ino));
            }
        }
        out
    }

    /// Runs one write on a store's source, then reloads the store.
    fn run_write(&self, store: usize, what: &str, edit: Edit<'_>) -> FsResult<()> {
        let _one_writer = self.write_locks[store].lock();
        let source = self.stores[store].source.as_ref();
        // Changed by another program since the last look? Then the reload below reads
        // that change too, and the kernel must be told of it. A write's own change the
        // kernel knows already (it updates the names and listings it touched), and is
        // not told: a notification waits for the directory locks, and one still
        // waiting when the daemon dies keeps the mount from failing over to ENOTCONN.
        let behind = source.change_token().ok() != self.state.read().tokens[store];
        let written = match source.writer() {
            Some(writer) => writer.write(edit),
            None => Err(crate::source::read_only(source, what)),
        };
        if let Err(e) = written {
            return Err(Error::from(e).context(format!("{what} refused")));
        }
        info!(store = %source.describe(), "{what}");
        let old = self.reload(store).map_err(|e| {
            Error::new(
                Errno::EIO,
                format!("{what} was written, but the store cannot be read back: {e}"),
            )
        })?;
        let changed = if behind {
            self.invalidations(&old)
        } else {
            Vec::new()
        };
        if !changed.is_empty() {
            self.queued.lock().extend(changed);
            self.queued_wake.notify_one();
        }
        Ok(())
    }

    /// Keeps a by-tag/ directory (and so its parents) when its last tag goes, as a
    /// real filesystem keeps an emptied directory until rmdir.
    fn keep_dir(&self, store: usize, path: &str) {
        if !path.is_empty() {
            self.state.write().extra_dirs[store].insert(path.to_string());
        }
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let child = self.lookup(parent, name)?;
        self.writable()?;
        let (store, parent_role) = self.role(parent)?;
        let (_, child_role) = self.role(child.ino)?;
        let store = store.ok_or(Errno::EPERM)?;
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        match (parent_role, child_role) {
            (NodeRole::TagDir(path), NodeRole::Image | NodeRole::Dangling) => {
                let tag = tag_at(&path, name)?;
                self.keep_dir(store, &path);
                self.run_write(store, &format!("untag {tag}"), Edit::Untag(&tag))
            }
            (NodeRole::ById, NodeRole::Image) => {
                if child.nlink > 1 {
                    return Err(Error::new(
                        Errno::EBUSY,
                        format!(
                            "{name}: not deleted: it still has {} tag(s); rm them first",
                            child.nlink - 1
                        ),
                    ));
                }
                self.run_write(store, &format!("delete {name}"), Edit::Delete(name))
            }
            (_, NodeRole::TagDir(_)) => Err(Errno::EISDIR.into()),
            _ => Err(self.refuse_write()),
        }
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let child = self.lookup(parent, name)?;
        if child.kind != FileKind::Dir {
            return Err(Errno::ENOTDIR.into());
        }
        self.writable()?;
        let (store, role) = self.role(child.ino)?;
        let (Some(store), NodeRole::TagDir(path)) = (store, role) else {
            return Err(self.refuse_write());
        };
        if path.is_empty() {
            return Err(self.refuse_write());
        }
        let mut state = self.state.write();
        if let Some(NodeKind::Dir { children, .. }) = state.tree.get(child.ino).map(|n| &n.kind)
            && !children.is_empty()
        {
            return Err(Errno(libc::ENOTEMPTY).into());
        }
        // Nothing to persist: a repository directory exists through its tags.
        state.extra_dirs[store].remove(&path);
        state.rebuild(&self.stores);
        Ok(())
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        self.getattr(parent)?;
        self.writable()?;
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if self.lookup(parent, OsStr::new(name)).is_ok() {
            return Err(Errno::EEXIST.into());
        }
        let (store, role) = self.role(parent)?;
        let (Some(store), NodeRole::TagDir(path)) = (store, role) else {
            return Err(self.refuse_write());
        };
        let dir = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}/{name}")
        };
        // A directory must be able to hold tags: `<dir>/x:t` must be canonical.
        tag_at(&dir, "x:t")?;
        {
            let mut state = self.state.write();
            state.extra_dirs[store].insert(dir);
            state.rebuild(&self.stores);
        }
        self.lookup(parent, OsStr::new(name))
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> FsResult<Attr> {
        self.getattr(ino)?;
        self.writable()?;
        let (store, id) = self.image_id(ino)?;
        let (dir_store, role) = self.role(new_parent)?;
        let NodeRole::TagDir(path) = role else {
            return Err(self.refuse_write());
        };
        if dir_store != Some(store) {
            return Err(Errno::EXDEV.into());
        }
        let tag = tag_at(&path, new_name.to_str().ok_or(Errno::EINVAL)?)?;
        self.run_write(
            store,
            &format!("tag {id} as {tag}"),
            Edit::Tag { id: &id, tag: &tag },
        )?;
        self.getattr(ino)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        let child = self.lookup(parent, name)?;
        self.writable()?;
        let (store, from_dir) = self.role(parent)?;
        let (_, child_role) = self.role(child.ino)?;
        let (to_store, to_dir) = self.role(new_parent)?;
        let (
            NodeRole::TagDir(from_path),
            NodeRole::Image | NodeRole::Dangling,
            NodeRole::TagDir(to_path),
        ) = (from_dir, child_role, to_dir)
        else {
            return Err(self.refuse_write());
        };
        let store = store.ok_or(Errno::EPERM)?;
        if to_store != Some(store) {
            return Err(Errno::EXDEV.into());
        }
        if no_replace && self.lookup(new_parent, new_name).is_ok() {
            return Err(Errno::EEXIST.into());
        }
        let from = tag_at(&from_path, name.to_str().ok_or(Errno::ENOENT)?)?;
        let to = tag_at(&to_path, new_name.to_str().ok_or(Errno::EINVAL)?)?;
        if from == to {
            return Ok(());
        }
        self.keep_dir(store, &from_path);
        self.run_write(
            store,
            &format!("re-tag {from} as {to}"),
            Edit::Retag {
                from: &from,
                to: &to,
            },
        )
    }

    pub fn statfs(&self) -> (u64, u64) {
        let state = self.state.read();
        let files: usize = state
            .catalogs
            .iter()
            .map(|c| c.images.len() + c.dangling.len())
            .sum();
        let bytes: u64 = state
            .catalogs
            .iter()
            .flat_map(|c| c.images.iter().map(|i| i.config_size()))
            .sum();
        (bytes, files as u64)
    }
}

/// The store's write bits (`write`, for owner `suid` and group `sgid`) said for a
/// file of owner `fuid` and group `fgid`: its owner class may write if the store lets
/// that user or group, its group class if the store lets that group, others if the
/// store lets others.
fn store_write_bits_for(fuid: u32, fgid: u32, suid: u32, sgid: u32, write: u16) -> u16 {
    let (u, g, o) = (write & 0o200 != 0, write & 0o020 != 0, write & 0o002 != 0);
    let owner = (fuid == suid && u) || (fgid == sgid && g) || o;
    let group = (fgid == sgid && g) || o;
    (if owner { 0o200 } else { 0 }) | (if group { 0o020 } else { 0 }) | (if o { 0o002 } else { 0 })
}

/// A config whose bytes no longer hash to its ID: never served.
fn changed_under_mount(source: &dyn Source, id: &str, hashed: &str) -> Error {
    Error::new(
        Errno::EIO,
        format!(
            "{}: config of {id} now hashes to {hashed}: the store changed under the mount, not served",
            source.describe()
        ),
    )
}

/// What a kept catalog stands for: the store as named and where it is.
fn catalog_what(source: &dyn Source) -> String {
    format!(
        "{}\n{}",
        source.describe(),
        source
            .path()
            .map(crate::kept::canonical)
            .unwrap_or_default()
    )
}

/// The key a kept catalog must carry to stand for `source` now, read under `limits`
/// (a catalog cut short by a lower limit is not one for a higher); `None` when its
/// catalog is not kept. Taken before a scan: a change during it makes the key stale,
/// which costs the next mount a scan and never shows a wrong catalog.
fn catalog_key(kept: &Kept, source: &dyn Source, limits: &crate::limits::Limits) -> Option<String> {
    if !kept.is_on() {
        return None;
    }
    let content = source.content_key()?;
    Some(format!(
        "{}\n{}\n{limits:?}\n{}",
        env!("CARGO_PKG_VERSION"),
        source.describe(),
        content
    ))
}

/// The catalog kept for `source` under `key`, its locations made valid for this
/// opening of the store.
fn load_catalog(kept: &Kept, source: &dyn Source, key: &str) -> Option<Catalog> {
    let mut catalog: Catalog = kept.load(KeptKind::Catalog, &catalog_what(source), key)?;
    for image in &mut catalog.images {
        source.rebind(&mut image.config);
    }
    Some(catalog)
}

fn image_at(state: &State, store: usize, index: usize) -> FsResult<&Image> {
    state
        .catalogs
        .get(store)
        .and_then(|c| c.images.get(index))
        .ok_or(Errno::ENOENT.into())
}

fn image_xattrs(image: &Image, source: &str, out: &mut Vec<(String, String)>) {
    let mut put = |name: &str, value: String| {
        if !value.is_empty() {
            out.push((format!("user.image.{name}"), value));
        }
    };
    put("tags", join(image.tags.iter().map(|t| t.to_string())));
    put(
        "digest",
        image.manifest_digests.first().cloned().unwrap_or_default(),
    );
    put(
        "digests",
        join(
            image
                .manifest_digests
                .iter()
                .chain(image.digest_refs.iter())
                .cloned(),
        ),
    );
    put("source", source.to_string());
    put(
        "size",
        image.layers_size.map(|s| s.to_string()).unwrap_or_default(),
    );
    put(
        "architecture",
        image.architecture.clone().unwrap_or_default(),
    );
    put("os", image.os.clone().unwrap_or_default());
    put("variant", image.variant.clone().unwrap_or_default());
    put("created", image.created.clone().unwrap_or_default());
    put("platforms", join(image.other_platforms.iter().cloned()));
    for (name, value) in &image.extra_xattrs {
        if let Some(short) = name.strip_prefix("user.image.") {
            put(short, value.clone());
        }
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

/// The tag whose by-tag/ path is `<dir>/<name>`; EINVAL unless that path is the tag's
/// canonical place (so `docker.io/busybox:1` must be written
/// `docker.io/library/busybox:1`).
pub fn tag_at(dir: &str, name: &str) -> FsResult<TagRef> {
    // a name no file system would take is no tag of the mount's either
    if name.len() > crate::reference::NAME_MAX {
        return Err(Errno::ENAMETOOLONG.into());
    }
    let full = if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    };
    let tag = match crate::reference::parse(&full) {
        Ok(Parsed::Tag(t)) => t,
        _ => return Err(Errno::EINVAL.into()),
    };
    let comps = tag.components();
    if comps.iter().map(String::as_str).ne(full.split('/')) {
        return Err(Errno::EINVAL.into());
    }
    Ok(tag)
}

#[cfg(test)]
mod tests;
