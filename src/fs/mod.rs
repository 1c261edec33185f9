//! The core filesystem: every operation the kernel asks for, answered from the tree,
//! returning `Result<_, Errno>`. No fuser types here; `crate::fuse` only translates.

pub mod inode;
pub mod tree;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;
use tracing::{debug, info, warn};

use crate::catalog::{Catalog, Image};
use crate::config_cache::ConfigCache;
use crate::source::{Source, StoreMeta};
use inode::InodeTable;
pub use inode::ROOT_INO;
use tree::{NodeKind, StoreView, Tree};

/// An errno value, as the core answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EACCES: Errno = Errno(libc::EACCES);
}

pub type FsResult<T> = Result<T, Errno>;

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
            .map_err(|_| Errno::ERANGE);
    }
    if value.len() > size as usize {
        return Err(Errno::ERANGE);
    }
    Ok(XattrReply::Data(value))
}

/// One mounted source.
pub struct Store {
    pub label: String,
    pub source: Box<dyn Source>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct FsOptions {
    /// `-o ro`: refuse writes with EROFS.
    pub read_only: bool,
}

struct State {
    catalogs: Vec<Arc<Catalog>>,
    metas: Vec<StoreMeta>,
    tree: Tree,
    #[allow(dead_code)] // kept for reloads: numbers must survive them
    inodes: InodeTable,
}

pub struct ImageFs {
    stores: Vec<Store>,
    state: RwLock<State>,
    cache: ConfigCache,
    options: FsOptions,
}

/// Configs larger than this are read by range, never whole into the cache.
const WHOLE_READ_LIMIT: u64 = 1 << 20;

impl ImageFs {
    /// Scans every store. Fails with the first store that cannot be read at all; a
    /// store's partial problems are logged and the rest of it shown.
    pub fn new(
        stores: Vec<Store>,
        cache: ConfigCache,
        options: FsOptions,
    ) -> Result<ImageFs, crate::source::SourceError> {
        let mut catalogs = Vec::with_capacity(stores.len());
        let mut metas = Vec::with_capacity(stores.len());
        for (i, store) in stores.iter().enumerate() {
            let inv = store.source.scan()?;
            let catalog = Catalog::build(i, store.source.as_ref(), inv, &cache);
            catalog.log_problems(&store.source.describe());
            info!(
                store = %store.source.describe(),
                images = catalog.images.len(),
                dangling = catalog.dangling.len(),
                "store read"
            );
            catalogs.push(Arc::new(catalog));
            metas.push(store.source.meta());
        }
        let mut inodes = InodeTable::new(stores.len() == 1);
        let tree = build_tree(&stores, &catalogs, &mut inodes);
        Ok(ImageFs {
            stores,
            state: RwLock::new(State {
                catalogs,
                metas,
                tree,
                inodes,
            }),
            cache,
            options,
        })
    }

    pub fn stores(&self) -> &[Store] {
        &self.stores
    }

    /// The catalog of store `i`, as it is now.
    pub fn catalog(&self, i: usize) -> Option<Arc<Catalog>> {
        self.state.read().catalogs.get(i).cloned()
    }

    pub fn options(&self) -> FsOptions {
        self.options
    }

    fn attr_of(&self, state: &State, ino: u64) -> FsResult<Attr> {
        let node = state.tree.get(ino).ok_or(Errno::ENOENT)?;
        let meta = node
            .store
            .and_then(|s| state.metas.get(s).copied())
            .or_else(|| state.metas.first().copied());
        let (uid, gid, mode, store_mtime) = match meta {
            Some(m) => (m.uid, m.gid, m.mode, m.mtime),
            None => (0, 0, 0o444, SystemTime::UNIX_EPOCH),
        };
        // Read-only files keep the store's read bits; directories are searchable
        // wherever they are readable.
        let read_bits = (mode & 0o444) as u16;
        let attr = match &node.kind {
            NodeKind::Dir { subdirs, .. } => Attr {
                ino,
                kind: FileKind::Dir,
                size: 0,
                nlink: 2 + subdirs,
                perm: read_bits | (read_bits >> 2),
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
                Attr {
                    ino,
                    kind: FileKind::File,
                    size: image.config_size(),
                    nlink: *nlink,
                    perm: read_bits,
                    uid,
                    gid,
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
            return Err(Errno::ENOTDIR);
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
            return Err(Errno::ENOTDIR);
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
            return Err(Errno::EISDIR);
        }
        if write {
            return Err(self.refuse_write("open for writing", ino));
        }
        Ok(())
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        // Only the location is taken out of the lock: reads of large configs go to
        // the source without holding it.
        let (store, config) = {
            let state = self.state.read();
            let node = state.tree.get(ino).ok_or(Errno::ENOENT)?;
            match &node.kind {
                NodeKind::Image { store, index, .. } => {
                    (*store, image_at(&state, *store, *index)?.config.clone())
                }
                NodeKind::Dir { .. } => return Err(Errno::EISDIR),
                NodeKind::Symlink { .. } => return Err(Errno::EINVAL),
            }
        };
        let total = config.size();
        if offset >= total {
            return Ok(Vec::new());
        }
        let len = (size as u64).min(total - offset) as usize;
        let start = offset as usize;
        let source = self.stores[store].source.as_ref();
        let key = (store, config);
        if let Some(bytes) = self.cache.get(&key) {
            return bytes
                .get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or(Errno::EIO);
        }
        let config = &key.1;
        if total <= WHOLE_READ_LIMIT {
            let bytes = crate::source::read_blob(source, config, WHOLE_READ_LIMIT)
                .map_err(|e| self.io_error(store, ino, e))?;
            let out = bytes
                .get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or(Errno::EIO)?;
            self.cache.insert(key, Arc::from(bytes));
            return Ok(out);
        }
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = source
                .read_at(config, offset + done as u64, &mut buf[done..])
                .map_err(|e| self.io_error(store, ino, e))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn io_error(&self, store: usize, ino: u64, e: std::io::Error) -> Errno {
        warn!(store = %self.stores[store].source.describe(), ino, "cannot read config: {e}");
        Errno::EIO
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let state = self.state.read();
        match &state.tree.get(ino).ok_or(Errno::ENOENT)?.kind {
            NodeKind::Symlink { target } => Ok(target.clone().into_bytes()),
            _ => Err(Errno::EINVAL),
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
        Ok(out)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = name.to_str().ok_or(Errno::ENODATA)?;
        self.xattrs(ino)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(Errno::ENODATA)
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

    /// Every write this version refuses: EROFS under `-o ro` (and, until writes are
    /// implemented, for every source), with a log line saying why.
    pub fn refuse_write(&self, op: &str, ino: u64) -> Errno {
        if self.options.read_only {
            debug!(op, ino, "refused: mounted read-only");
        } else {
            warn!(
                op,
                ino, "refused: writing through the mount is not implemented yet"
            );
        }
        Errno::EROFS
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.lookup(parent, name)?;
        Err(self.refuse_write("unlink", parent))
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let attr = self.lookup(parent, name)?;
        if attr.kind != FileKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Err(self.refuse_write("rmdir", parent))
    }

    pub fn mkdir(&self, parent: u64, _name: &OsStr) -> FsResult<Attr> {
        self.getattr(parent)?;
        Err(self.refuse_write("mkdir", parent))
    }

    pub fn link(&self, ino: u64, new_parent: u64, _new_name: &OsStr) -> FsResult<Attr> {
        self.getattr(ino)?;
        Err(self.refuse_write("link", new_parent))
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        _new_parent: u64,
        _new_name: &OsStr,
    ) -> FsResult<()> {
        self.lookup(parent, name)?;
        Err(self.refuse_write("rename", parent))
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

fn image_at(state: &State, store: usize, index: usize) -> FsResult<&Image> {
    state
        .catalogs
        .get(store)
        .and_then(|c| c.images.get(index))
        .ok_or(Errno::ENOENT)
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

fn build_tree(stores: &[Store], catalogs: &[Arc<Catalog>], inodes: &mut InodeTable) -> Tree {
    let views: Vec<StoreView<'_>> = stores
        .iter()
        .zip(catalogs)
        .map(|(s, c)| StoreView {
            label: &s.label,
            catalog: c,
        })
        .collect();
    Tree::build(&views, inodes)
}

#[cfg(test)]
mod tests;
