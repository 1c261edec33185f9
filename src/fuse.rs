//! The fuser adapter: decodes each request, calls the core (`crate::fs::ImageFs`), and
//! replies with what it returns. No filesystem logic lives here.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags,
    KernelConfig, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request, TimeOrNow,
};

use crate::fs::{self, Attr, FileKind, ImageFs, XattrReply};

/// How long the kernel may keep entries and attributes. The content of a by-id file
/// never changes (its name is its hash); names change only through a reload, which
/// tells the kernel itself.
pub const TTL: Duration = Duration::from_secs(10);

pub struct FuseAdapter {
    fs: Arc<ImageFs>,
    /// To the [`Prefetcher`]'s thread: batches of listed files to push.
    prefetch: Option<SyncSender<PrefetchBatch>>,
    /// Listed files not yet handed to the prefetcher: that waits for a first READ,
    /// so that listings nobody reads from (`ls -l`, `find -links 1`) push nothing.
    listed: parking_lot::Mutex<Vec<PrefetchBatch>>,
    any_listed: std::sync::atomic::AtomicBool,
}

impl FuseAdapter {
    pub fn new(fs: Arc<ImageFs>, prefetch: Option<SyncSender<PrefetchBatch>>) -> FuseAdapter {
        FuseAdapter {
            fs,
            prefetch,
            listed: Default::default(),
            any_listed: Default::default(),
        }
    }
}

/// When a listing was answered, and the files in it.
pub type PrefetchBatch = (Instant, Vec<u64>);

/// The listed batches reordered to start just after `ino` (when listed), wrapping
/// round to the ones before it.
fn ahead_of(batches: Vec<PrefetchBatch>, ino: u64) -> Vec<PrefetchBatch> {
    let Some((b, i)) = batches
        .iter()
        .enumerate()
        .find_map(|(b, (_, files))| files.iter().position(|&f| f == ino).map(|i| (b, i)))
    else {
        return batches;
    };
    let mut out = Vec::with_capacity(batches.len() + 1);
    let mut before = Vec::new();
    for (k, (sent, files)) in batches.into_iter().enumerate() {
        match k.cmp(&b) {
            std::cmp::Ordering::Less => before.push((sent, files)),
            std::cmp::Ordering::Equal => {
                let (head, tail) = files.split_at(i + 1);
                out.push((sent, tail.to_vec()));
                before.push((sent, head.to_vec()));
            }
            std::cmp::Ordering::Greater => out.push((sent, files)),
        }
    }
    out.extend(before);
    out
}

/// Configs up to this size are pushed into the kernel's page cache.
const PREFETCH_MAX: u64 = 64 * 1024;
/// How long after a listing's reply its files are pushed.
const PREFETCH_DELAY: Duration = Duration::from_millis(3);

/// Pushes by-id files' bytes into the kernel's page cache (FUSE_NOTIFY_STORE), from a
/// thread of its own, once a directory listing has made their inodes known and a
/// first READ says that someone reads configs (`cat by-id/*`, `sha256sum`). A
/// `cat` or `sha256sum` over by-id then reads from the page cache: a READ round trip
/// costs tens of microseconds in a VM (two cross-CPU wakeups), a push a few, with no
/// reader waiting on it. A config's bytes never change (they are its name's
/// preimage), so a pushed page is never stale. Only small configs are pushed, once
/// each; a push the kernel refuses (inode not there yet, or forgotten) is simply
/// left to the READ path.
pub struct Prefetcher {
    fs: Arc<ImageFs>,
    notifier: fuser::Notifier,
    pushed: HashSet<u64>,
}

impl Prefetcher {
    pub fn channel() -> (SyncSender<PrefetchBatch>, Receiver<PrefetchBatch>) {
        // Bounded: when the thread lags, listings drop their batch instead of waiting.
        std::sync::mpsc::sync_channel(256)
    }

    pub fn spawn(
        fs: Arc<ImageFs>,
        notifier: fuser::Notifier,
        rx: Receiver<PrefetchBatch>,
    ) -> std::io::Result<()> {
        let mut p = Prefetcher {
            fs,
            notifier,
            pushed: HashSet::new(),
        };
        std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                while let Ok((sent, batch)) = rx.recv() {
                    // A push that lands while the listing's reader is still turning
                    // the reply into inodes is lost (the page never shows up), so
                    // each batch waits until its reader has very likely finished.
                    let ready = sent + PREFETCH_DELAY;
                    let now = Instant::now();
                    if ready > now {
                        std::thread::sleep(ready - now);
                    }
                    let mut retry = Vec::new();
                    for ino in batch {
                        if !p.push(ino) {
                            retry.push(ino);
                        }
                    }
                    if !retry.is_empty() {
                        // The listing's reader may not have made the inodes yet.
                        std::thread::sleep(PREFETCH_DELAY);
                        for ino in retry {
                            p.push(ino);
                        }
                    }
                }
            })
            .map(|_| ())
    }

    /// False when the kernel did not take it (worth one retry).
    fn push(&mut self, ino: u64) -> bool {
        if self.pushed.contains(&ino) {
            return true;
        }
        let Ok(attr) = self.fs.getattr(ino) else {
            return true;
        };
        if attr.kind != FileKind::File || attr.size > PREFETCH_MAX {
            self.pushed.insert(ino);
            return true;
        }
        let Ok(data) = self.fs.read(ino, 0, attr.size as u32) else {
            return true;
        };
        match self.notifier.store(INodeNo(ino), 0, &data) {
            Ok(()) => {
                tracing::trace!(ino, "pushed");
                self.fs
                    .counters
                    .pushed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.pushed.insert(ino);
                true
            }
            Err(e) => {
                tracing::trace!(ino, "page cache push refused: {e}");
                false
            }
        }
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
        // Both are optional: a kernel without them still works, only slower.
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_CACHE_SYMLINKS,
        );
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
        // Someone reads configs: push what was listed, ahead of the reader. Readers go
        // in listing order (`cat by-id/*`), so the pushes start just after the file
        // being read, and the files before it come last.
        if self.any_listed.swap(false, Ordering::AcqRel)
            && let Some(tx) = &self.prefetch
        {
            let batches = std::mem::take(&mut *self.listed.lock());
            for batch in ahead_of(batches, ino.0) {
                let _ = tx.try_send(batch);
            }
        }
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
                if self.prefetch.is_some() && !files.is_empty() {
                    let mut listed = self.listed.lock();
                    // bounded: a listing of a huge store keeps its first 64 batches
                    if listed.len() < 64 {
                        listed.push((Instant::now(), files));
                        self.any_listed.store(true, Ordering::Release);
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_starts_after_the_file_being_read() {
        let t = Instant::now();
        let order = |batches: Vec<PrefetchBatch>| -> Vec<u64> {
            batches.into_iter().flat_map(|(_, f)| f).collect()
        };
        let listed = vec![(t, vec![1, 2, 3]), (t, vec![4, 5]), (t, vec![6])];
        assert_eq!(order(ahead_of(listed.clone(), 2)), [3, 4, 5, 6, 1, 2]);
        assert_eq!(order(ahead_of(listed.clone(), 6)), [1, 2, 3, 4, 5, 6]);
        assert_eq!(order(ahead_of(listed, 9)), [1, 2, 3, 4, 5, 6]);
    }
}
