//! The core filesystem: every operation the kernel asks for, answered from the tree,
//! returning `Result<_, Error>` (an errno and its reason, see `error`). No fuser types
//! here; `crate::fuse` only translates, and logs each failure once.

mod error;
pub mod inode;
mod load;
mod patch;
mod read;
mod refresh;
pub mod tree;
mod write;
mod xattr;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

use std::collections::BTreeSet;

use parking_lot::{Mutex, RwLock};

use crate::catalog::{Catalog, Image};
use crate::config_cache::ConfigCache;
use crate::kept::Kept;
use crate::source::{BlobLocation, ChangeToken, Source, StoreMeta};
pub use error::{Errno, Error, FsResult};
use inode::InodeTable;
pub use inode::ROOT_INO;
pub use refresh::Invalidation;
pub use tree::Tree;
use tree::{NodeKind, NodeRole, StoreView};
pub use write::tag_at;
pub use xattr::{XattrReply, xattr_reply};

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

/// One mounted source: its directory's name, the source, and who is writing it.
pub struct Store {
    pub label: String,
    pub source: Box<dyn Source>,
    /// One writer (or reloader) at a time; the store's own lock guards against others.
    writing: Mutex<()>,
    /// The change token a reload failed at (not tried again until it moves).
    failed_token: Mutex<Option<ChangeToken>>,
}

impl Store {
    pub fn new(label: impl Into<String>, source: Box<dyn Source>) -> Store {
        Store {
            label: label.into(),
            source,
            writing: Mutex::new(()),
            failed_token: Mutex::new(None),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FsOptions {
    /// `-o ro`: refuse writes with EROFS.
    pub read_only: bool,
    /// Where catalogs are kept between mounts (`Kept::none()`: every mount scans).
    pub kept: Kept,
    /// How much a store may make imagefs read and hash.
    pub limits: crate::limits::Limits,
    /// The platform picked from multi-platform indexes, as shown (`linux/amd64`): a
    /// catalog kept for one is not used for another.
    pub platform: String,
}

/// One store as the mount holds it.
struct StoreState {
    catalog: Arc<Catalog>,
    /// Who may read and change it, as the tree shows it.
    meta: StoreMeta,
    /// by-tag/ directories held without tags (made by mkdir, or emptied by rm) until
    /// rmdir, as a real filesystem holds an emptied directory.
    held_dirs: BTreeSet<String>,
    /// The change token its catalog was read at.
    token: Option<ChangeToken>,
    /// Moves with every change of the catalog, so that the catalog kept for the
    /// next mount is the current one.
    generation: u64,
}

impl StoreState {
    fn new(catalog: Arc<Catalog>, meta: StoreMeta, token: Option<ChangeToken>) -> StoreState {
        StoreState {
            catalog,
            meta,
            held_dirs: BTreeSet::new(),
            token,
            generation: 0,
        }
    }
}

struct State {
    /// In the order of `ImageFs::stores`.
    stores: Vec<StoreState>,
    tree: Tree,
    /// Kept across reloads: a name keeps its inode number.
    inodes: InodeTable,
}

impl State {
    /// Builds the tree again from the catalogs; the tree as it was.
    fn rebuild(&mut self, stores: &[Store]) -> Tree {
        let tree = self.build_tree(stores);
        std::mem::replace(&mut self.tree, tree)
    }

    /// The tree the stores' catalogs give now (inode numbers from the mount's table).
    fn build_tree(&mut self, stores: &[Store]) -> Tree {
        let views: Vec<StoreView<'_>> = stores
            .iter()
            .zip(&self.stores)
            .map(|(s, st)| StoreView {
                label: &s.label,
                catalog: &st.catalog,
                held_dirs: &st.held_dirs,
            })
            .collect();
        Tree::build(&views, &mut self.inodes)
    }
}

pub struct ImageFs {
    stores: Vec<Store>,
    state: RwLock<State>,
    cache: ConfigCache,
    options: FsOptions,
    /// Catalogs scanned (at mount, or by a reload) until `keep_catalogs` keeps them.
    unkept: Mutex<Vec<load::UnkeptCatalog>>,
    /// Held while catalogs are being kept.
    keeping: Mutex<()>,
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

impl ImageFs {
    pub fn stores(&self) -> &[Store] {
        &self.stores
    }

    /// The catalog of store `i`, as it is now.
    pub fn catalog(&self, i: usize) -> Option<Arc<Catalog>> {
        self.state.read().stores.get(i).map(|s| s.catalog.clone())
    }

    pub fn options(&self) -> &FsOptions {
        &self.options
    }

    fn attr_of(&self, state: &State, ino: u64) -> FsResult<Attr> {
        let node = state.tree.get(ino).ok_or(Errno::ENOENT)?;
        let meta = node
            .store
            .and_then(|s| state.stores.get(s))
            .or_else(|| state.stores.first())
            .map(|s| s.meta);
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
            .chain(children.iter().map(|(n, i)| (&**n, *i)));
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

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let state = self.state.read();
        match &state.tree.get(ino).ok_or(Errno::ENOENT)?.kind {
            NodeKind::Symlink { target } => Ok(target.clone().into_bytes()),
            _ => Err(Errno::EINVAL.into()),
        }
    }

    pub fn statfs(&self) -> (u64, u64) {
        let state = self.state.read();
        let files: usize = state
            .stores
            .iter()
            .map(|s| s.catalog.images.len() + s.catalog.dangling.len())
            .sum();
        let bytes: u64 = state
            .stores
            .iter()
            .flat_map(|s| s.catalog.images.iter().map(|i| i.config_size()))
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

fn image_at(state: &State, store: usize, index: usize) -> FsResult<&Image> {
    state
        .stores
        .get(store)
        .and_then(|s| s.catalog.images.get(index))
        .ok_or(Errno::ENOENT.into())
}

#[cfg(test)]
mod reference_model;
#[cfg(test)]
mod tests;
