//! The floor of any FUSE tool, for the benchmark (issue 17, part 4): a minimal
//! in-memory FUSE server handed a finished tree, serving it. It reads the tree once
//! (a directory of files, hard links and symbolic links, such as the benchmark's tmpfs
//! copy of an imagefs mount) into memory and then reads nothing: no store, no cache
//! beyond what the kernel keeps. It answers with imagefs's TTLs and kernel options
//! (READDIRPLUS, parallel directory operations, cached symlinks, ENOSYS for opens so
//! the kernel keeps pages and listings, EOPNOTSUPP for security.* and ACL attributes,
//! nodev, nosuid, 4 threads, one device descriptor per thread), so that what it costs
//! is what FUSE itself costs.
//!
//! It is handed the tree as a snapshot file, read whole at start (what a server that
//! already holds the tree pays: one read, no walk), made once from a directory:
//!
//! usage: tree_server --snapshot DIR SNAPSHOT   (writes the snapshot of DIR)
//!        tree_server SNAPSHOT|DIR MOUNTPOINT   (serves it; in the foreground until unmounted)
//!
//! Its files are read and written with plain std::fs, not through imagefs's
//! containment layer: it is a benchmark tool run by root on the benchmark's own tmpfs
//! copy and snapshot, never on a store others can write.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, KernelConfig,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyOpen, ReplyXattr, Request,
};

/// imagefs's own, so that the two stay the same.
use imagefs::fuse::{THREADS, TTL, capabilities};

enum Body {
    /// Children in name order.
    Dir(Vec<(String, u64)>),
    File(Vec<u8>),
    Link(Vec<u8>),
}

struct Node {
    attr: FileAttr,
    parent: u64,
    body: Body,
}

struct Tree {
    nodes: HashMap<u64, Node>,
}

fn attr_of(ino: u64, m: &std::fs::Metadata, kind: FileType) -> FileAttr {
    let mtime = UNIX_EPOCH + Duration::new(m.mtime().max(0) as u64, m.mtime_nsec() as u32);
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.size().div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// The snapshot format: for each node, its inode, parent, kind, mode, uid, gid,
/// nlink, mtime and size, then its children (name, inode) or its bytes; all
/// little-endian, lengths before what they measure.
mod snapshot {
    use super::*;

    fn put(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
        put(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    pub fn write(tree: &Tree) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, tree.nodes.len() as u64);
        for (ino, n) in &tree.nodes {
            let a = &n.attr;
            let mtime = a.mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
            let kind = match n.body {
                Body::Dir(_) => 0,
                Body::File(_) => 1,
                Body::Link(_) => 2,
            };
            for v in [
                *ino,
                n.parent,
                kind,
                a.perm as u64,
                a.uid as u64,
                a.gid as u64,
            ] {
                put(&mut out, v);
            }
            for v in [
                a.nlink as u64,
                mtime.as_secs(),
                mtime.subsec_nanos() as u64,
                a.size,
            ] {
                put(&mut out, v);
            }
            match &n.body {
                Body::Dir(children) => {
                    put(&mut out, children.len() as u64);
                    for (name, child) in children {
                        put_bytes(&mut out, name.as_bytes());
                        put(&mut out, *child);
                    }
                }
                Body::File(b) | Body::Link(b) => put_bytes(&mut out, b),
            }
        }
        out
    }

    struct Reader<'a>(&'a [u8]);

    impl Reader<'_> {
        fn u64(&mut self) -> Option<u64> {
            let (head, rest) = self.0.split_at_checked(8)?;
            self.0 = rest;
            Some(u64::from_le_bytes(head.try_into().ok()?))
        }

        fn bytes(&mut self) -> Option<Vec<u8>> {
            let n = usize::try_from(self.u64()?).ok()?;
            let (head, rest) = self.0.split_at_checked(n)?;
            self.0 = rest;
            Some(head.to_vec())
        }
    }

    pub fn read(bytes: &[u8]) -> Option<Tree> {
        let mut r = Reader(bytes);
        let count = r.u64()?;
        let mut nodes = HashMap::with_capacity(count.min(1 << 24) as usize);
        for _ in 0..count {
            let mut v = [0u64; 10];
            for x in &mut v {
                *x = r.u64()?;
            }
            let [ino, parent, kind, perm, uid, gid, nlink, secs, nanos, size] = v;
            let (ft, body) = match kind {
                0 => {
                    let n = r.u64()?;
                    let mut children = Vec::with_capacity(n.min(1 << 24) as usize);
                    for _ in 0..n {
                        let name = String::from_utf8(r.bytes()?).ok()?;
                        children.push((name, r.u64()?));
                    }
                    (FileType::Directory, Body::Dir(children))
                }
                1 => (FileType::RegularFile, Body::File(r.bytes()?)),
                _ => (FileType::Symlink, Body::Link(r.bytes()?)),
            };
            let mtime = UNIX_EPOCH + Duration::new(secs, nanos as u32);
            let attr = FileAttr {
                ino: INodeNo(ino),
                size,
                blocks: size.div_ceil(512),
                atime: mtime,
                mtime,
                ctime: mtime,
                crtime: mtime,
                kind: ft,
                perm: perm as u16,
                nlink: nlink as u32,
                uid: uid as u32,
                gid: gid as u32,
                rdev: 0,
                blksize: 4096,
                flags: 0,
            };
            nodes.insert(ino, Node { attr, parent, body });
        }
        Some(Tree { nodes })
    }
}

impl Tree {
    /// Reads the whole tree below `root` (hard links: one inode), with a work list.
    fn read(root: &Path) -> std::io::Result<Tree> {
        let mut nodes = HashMap::new();
        let mut numbers: HashMap<(u64, u64), u64> = HashMap::new();
        let mut next = 2u64;
        let meta = std::fs::symlink_metadata(root)?;
        nodes.insert(
            1,
            Node {
                attr: attr_of(1, &meta, FileType::Directory),
                parent: 1,
                body: Body::Dir(Vec::new()),
            },
        );
        let mut work = vec![(root.to_path_buf(), 1u64)];
        while let Some((dir, dir_ino)) = work.pop() {
            let mut children = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                let m = std::fs::symlink_metadata(&path)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let known = numbers.get(&(m.dev(), m.ino())).copied();
                let ino = known.unwrap_or_else(|| {
                    let n = next;
                    next += 1;
                    numbers.insert((m.dev(), m.ino()), n);
                    n
                });
                children.push((name, ino));
                if known.is_some() {
                    continue;
                }
                let ft = m.file_type();
                let (kind, body) = if ft.is_dir() {
                    work.push((path.clone(), ino));
                    (FileType::Directory, Body::Dir(Vec::new()))
                } else if ft.is_symlink() {
                    let target = std::fs::read_link(&path)?;
                    (
                        FileType::Symlink,
                        Body::Link(target.into_os_string().into_encoded_bytes()),
                    )
                } else {
                    (FileType::RegularFile, Body::File(std::fs::read(&path)?))
                };
                nodes.insert(
                    ino,
                    Node {
                        attr: attr_of(ino, &m, kind),
                        parent: dir_ino,
                        body,
                    },
                );
            }
            children.sort();
            if let Some(Node {
                body: Body::Dir(c), ..
            }) = nodes.get_mut(&dir_ino)
            {
                *c = children;
            }
        }
        Ok(Tree { nodes })
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Option<&Node> {
        let Body::Dir(children) = &self.nodes.get(&parent)?.body else {
            return None;
        };
        let name = name.to_str()?;
        let i = children
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()?;
        self.nodes.get(&children[i].1)
    }

    /// `.`, `..` and the children, from `offset`.
    fn entries(&self, ino: u64, offset: u64) -> Option<Vec<(u64, &str, &Node)>> {
        let node = self.nodes.get(&ino)?;
        let Body::Dir(children) = &node.body else {
            return None;
        };
        let dots = [(ino, "."), (node.parent, "..")];
        Some(
            dots.into_iter()
                .chain(children.iter().map(|(n, i)| (*i, n.as_str())))
                .skip(offset as usize)
                .filter_map(|(i, n)| Some((i, n, self.nodes.get(&i)?)))
                .collect(),
        )
    }
}

impl Filesystem for Tree {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup(parent.0, name) {
            Some(n) => reply.entry(&TTL, &n.attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.nodes.get(&ino.0) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.nodes.get(&ino.0).map(|n| &n.body) {
            Some(Body::Link(t)) => reply.data(t),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.nodes.get(&ino.0).map(|n| &n.body) {
            Some(Body::File(bytes)) => {
                let start = (offset as usize).min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                reply.data(&bytes[start..end]);
            }
            _ => reply.error(Errno::EISDIR),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.entries(ino.0, offset) else {
            return reply.error(Errno::ENOTDIR);
        };
        for (i, (child, name, node)) in entries.into_iter().enumerate() {
            if reply.add(INodeNo(child), offset + i as u64 + 1, node.attr.kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(entries) = self.entries(ino.0, offset) else {
            return reply.error(Errno::ENOTDIR);
        };
        for (i, (child, name, node)) in entries.into_iter().enumerate() {
            let next = offset + i as u64 + 1;
            if reply.add(INodeNo(child), next, name, &TTL, &node.attr, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, name: &OsStr, _size: u32, reply: ReplyXattr) {
        // as imagefs: security.* and ACLs are not supported (ls remembers it), user.*
        // has nothing here
        if name.to_string_lossy().starts_with("user.") {
            reply.error(Errno::ENODATA)
        } else {
            reply.error(Errno::EOPNOTSUPP)
        }
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("tree_server: {what}: {e}");
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir, out] = args.as_slice()
        && flag == "--snapshot"
    {
        let tree = Tree::read(Path::new(dir)).unwrap_or_else(|e| fail(dir, e));
        std::fs::write(out, snapshot::write(&tree)).unwrap_or_else(|e| fail(out, e));
        return;
    }
    let [_, tree, mountpoint] = args.as_slice() else {
        eprintln!(
            "usage: tree_server --snapshot DIR SNAPSHOT | tree_server SNAPSHOT|DIR MOUNTPOINT"
        );
        std::process::exit(2);
    };
    let started = SystemTime::now();
    let path = Path::new(tree);
    let tree = if path.is_dir() {
        Tree::read(path).unwrap_or_else(|e| fail(tree, e))
    } else {
        let bytes = std::fs::read(path).unwrap_or_else(|e| fail(tree, e));
        snapshot::read(&bytes).unwrap_or_else(|| fail(tree, "not a snapshot"))
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("tree_server".into()),
        MountOption::Subtype("tree_server".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.n_threads = Some(THREADS);
    config.clone_fd = true;
    eprintln!(
        "tree_server: {} nodes read in {:.1} ms",
        tree.nodes.len(),
        started.elapsed().unwrap_or_default().as_secs_f64() * 1e3
    );
    if let Err(e) = fuser::mount(tree, mountpoint, &config) {
        eprintln!("tree_server: {mountpoint}: {e}");
        std::process::exit(1);
    }
}
