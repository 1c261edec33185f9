//! The fuser adapter: decodes each request, calls the core (`crate::fs::ImageFs`), and
//! replies with what it returns. No filesystem logic lives here.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::sync::atomic::Ordering;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags,
    KernelConfig, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request, TimeOrNow,
};

use crate::fs::{self, Attr, FileKind, ImageFs, XattrReply};
use crate::notify::Listings;

/// How long the kernel may keep entries and attributes. The content of a by-id file
/// never changes (its name is its hash); names change only through a reload, which
/// tells the kernel itself.
pub const TTL: Duration = Duration::from_secs(10);

/// What imagefs asks of the kernel at init; both are optional: a kernel without them
/// still works, only slower. (The benchmark's minimal server asks the same.)
pub fn capabilities() -> InitFlags {
    InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_CACHE_SYMLINKS
}

/// The session's threads, each with its own /dev/fuse descriptor (`clone_fd`).
pub const THREADS: usize = 4;

pub struct FuseAdapter {
    fs: Arc<ImageFs>,
    /// What listings made known, for the page-cache prefetcher.
    listings: Listings,
}

impl FuseAdapter {
    pub fn new(fs: Arc<ImageFs>, listings: Listings) -> FuseAdapter {
        FuseAdapter { fs, listings }
    }
}

/// Logs a failed request once, with the operation and the inode (as mountpoint-s3's
/// `fuse_error!`), and gives the errno to reply with. Plain answers (no such name)
/// and refusals the mount's options make are not worth more than a debug line.
fn fail(op: &'static str, ino: u64, e: fs::Error) -> Errno {
    if e.message.is_empty() {
        tracing::trace!(op, ino, errno = e.errno.0);
    } else if e.expected {
        tracing::debug!(op, ino, "{e}");
    } else {
        tracing::warn!(op, ino, "{e}");
    }
    Errno::from_i32(e.errno.0)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks(),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
    }
}

fn reply_xattr(op: &'static str, ino: u64, r: fs::FsResult<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match r.and_then(|v| fs::xattr_reply(v, size)) {
        Ok(XattrReply::Size(n)) => reply.size(n),
        Ok(XattrReply::Data(d)) => reply.data(&d),
        Err(e) => reply.error(fail(op, ino, e)),
    }
}

fn reply_entry(op: &'static str, ino: u64, r: fs::FsResult<Attr>, reply: ReplyEntry) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(fail(op, ino, e)),
    }
}

fn reply_empty(op: &'static str, ino: u64, r: fs::FsResult<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(op, ino, e)),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry("lookup", parent.0, self.fs.lookup(parent.0, name), reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(fail("getattr", ino.0, e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(fail("setattr", ino.0, self.fs.refuse_write()));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(fail("readlink", ino.0, e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(fail("mknod", parent.0, self.fs.refuse_write()));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry("mkdir", parent.0, self.fs.mkdir(parent.0, name), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty("unlink", parent.0, self.fs.unlink(parent.0, name), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty("rmdir", parent.0, self.fs.rmdir(parent.0, name), reply);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(fail("symlink", parent.0, self.fs.refuse_write()));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        reply_empty(
            "rename",
            parent.0,
            self.fs
                .rename(parent.0, name, newparent.0, newname, no_replace),
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(
            "link",
            ino.0,
            self.fs.link(ino.0, newparent.0, newname),
            reply,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.fs.counters.opens.fetch_add(1, Ordering::Relaxed);
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.fs.open(ino.0, write) {
            // Nothing is kept per open file, so a read-only open answers ENOSYS: the
            // kernel then stops sending OPEN (and RELEASE) for files, which halves the
            // requests `cat by-id/*` costs, and keeps their page cache across opens, as
            // KEEP_CACHE did (a by-id file's bytes are its name's preimage: they never
            // change). Opens for writing that arrive first are refused here; later
            // ones are refused at the write or truncate.
            Ok(()) => reply.error(Errno::ENOSYS),
            Err(e) => reply.error(fail("open", ino.0, e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // As for files: nothing is kept per open directory, and ENOSYS makes the kernel
        // stop sending OPENDIR and RELEASEDIR (two requests per directory `find`
        // enters) and keep each listing it read (FOPEN_CACHE_DIR) until its directory
        // changes: through the mount, or as the watcher reports (`invalidations`).
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.error(Errno::ENOSYS),
            Err(e) => reply.error(fail("opendir", ino.0, e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(fail("write", ino.0, self.fs.refuse_write()));
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
        self.fs.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.listings.reading(ino.0);
        match self.fs.read(ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(fail("read", ino.0, e)),
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
        let r = self.fs.readdir(ino.0, offset, |e| {
            reply.add(INodeNo(e.ino), e.offset, file_type(e.attr.kind), e.name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("readdir", ino.0, e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut files = Vec::new();
        let r = self.fs.readdir(ino.0, offset, |e| {
            let full = reply.add(
                INodeNo(e.ino),
                e.offset,
                e.name,
                &TTL,
                &file_attr(&e.attr),
                Generation(0),
            );
            if !full && e.attr.kind == FileKind::File {
                files.push(e.ino);
            }
            full
        });
        match r {
            Ok(()) => {
                reply.ok();
                self.listings.listed(files);
            }
            Err(e) => reply.error(fail("readdirplus", ino.0, e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (bytes, files) = self.fs.statfs();
        reply.statfs(bytes.div_ceil(4096), 0, 0, files, 0, 4096, 255, 4096);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(fail("setxattr", ino.0, self.fs.refuse_write()));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.fs.counters.getxattrs.fetch_add(1, Ordering::Relaxed);
        reply_xattr(
            "getxattr",
            ino.0,
            self.fs.getxattr(ino.0, name),
            size,
            reply,
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr("listxattr", ino.0, self.fs.listxattr(ino.0), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(fail("removexattr", ino.0, self.fs.refuse_write()));
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let r = self.fs.getattr(ino.0).and_then(|_| {
            if mask.contains(AccessFlags::W_OK) && self.fs.options().read_only {
                Err(fs::Errno::EROFS.into())
            } else {
                Ok(())
            }
        });
        reply_empty("access", ino.0, r, reply);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(fail("create", parent.0, self.fs.refuse_write()));
    }
}
