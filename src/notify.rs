//! Telling the kernel things it did not ask: what to forget when a store changed
//! (the watcher), and config bytes to hold before anyone reads them (the prefetcher,
//! and the policy of when it pushes). Both run beside the FUSE adapter, on threads of
//! their own, never inside a request, which holds the locks a notification waits for.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use fuser::INodeNo;

use crate::fs::{FileKind, ImageFs, Invalidation};

/// How often the watcher looks at every store's change token.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Watches the stores for changes made by other programs, reloads them, and tells the
/// kernel what to forget (outside any request, so the kernel can take its locks); also
/// tells it at once what writes through the mount queued. Keeps the catalogs scanned
/// since its last check.
pub fn spawn_watcher(fs: Arc<ImageFs>, notifier: fuser::Notifier) -> std::io::Result<()> {
    let tell = move |invalidations: Vec<Invalidation>| {
        for inv in invalidations {
            let r = match &inv {
                Invalidation::Entry { parent, name } => {
                    notifier.inval_entry(INodeNo(*parent), std::ffi::OsStr::new(name))
                }
                Invalidation::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
            };
            // ENOENT: the kernel had nothing cached for it, which is fine
            if let Err(e) = r
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                tracing::debug!("invalidate {inv:?}: {e}");
            }
        }
    };
    std::thread::Builder::new()
        .name("watcher".into())
        .spawn(move || {
            let mut watched = Watched::new(&fs);
            let mut next_check = Instant::now() + WATCH_INTERVAL;
            let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
            loop {
                let wait = next_check.saturating_duration_since(Instant::now());
                tell(fs.wait_for_queued(wait));
                if Instant::now() >= next_check {
                    // every store at a sweep; else those inotify named, and those it
                    // cannot watch
                    let sweep = Instant::now() >= next_sweep;
                    let due = watched.due();
                    tell(fs.refresh_changed_where(|i| sweep || due.contains(&i)));
                    if sweep {
                        next_sweep = Instant::now() + SWEEP_INTERVAL;
                    }
                    // what the mount, reloads and writes made, once settled, for the
                    // next mount
                    fs.keep_settled_catalogs();
                    next_check = Instant::now() + WATCH_INTERVAL;
                }
            }
        })
        .map(|_| ())
}

/// How often every store's token is looked at even when inotify said nothing: a
/// change inotify cannot see (another mount namespace's bind, a directory replaced
/// under the store, NFS) still shows, later.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The stores' directories under inotify (see `Source::watches`): which stores an
/// event named since the last tick, and which cannot be watched (polled every tick).
struct Watched {
    /// None: no inotify here; every store is polled at every tick.
    fd: Option<std::os::fd::OwnedFd>,
    /// Watch descriptor → the stores watching that directory, each with the names
    /// that matter to it there (empty: any). Stores in one directory share its watch.
    by_wd: std::collections::HashMap<i32, Vec<(usize, Vec<String>)>>,
    /// Stores with no watch, or whose watch broke.
    polled: HashSet<usize>,
    stores: usize,
}

impl Watched {
    fn new(fs: &ImageFs) -> Watched {
        use std::os::fd::{FromRawFd, OwnedFd};
        let stores = fs.store_count();
        let mut w = Watched {
            fd: None,
            by_wd: Default::default(),
            polled: (0..stores).collect(),
            stores,
        };
        // SAFETY: inotify_init1 takes flags only; a negative result is an error.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            tracing::debug!(
                "no inotify ({}): every store is polled",
                std::io::Error::last_os_error()
            );
            return w;
        }
        // SAFETY: a new descriptor, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mask = libc::IN_MODIFY
            | libc::IN_ATTRIB
            | libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF;
        let mut failed = HashSet::new();
        let mut watching = HashSet::new();
        for (store, watch) in fs.store_watches() {
            let path = watch.dir.held_path();
            let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
                failed.insert(store);
                continue;
            };
            // SAFETY: a valid descriptor and a NUL-terminated path.
            let wd = unsafe {
                libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), c.as_ptr(), mask)
            };
            if wd < 0 {
                tracing::debug!(
                    store,
                    "cannot watch {}: {}: polled",
                    watch.dir.display("."),
                    std::io::Error::last_os_error()
                );
                failed.insert(store);
                continue;
            }
            watching.insert(store);
            w.by_wd.entry(wd).or_default().push((store, watch.names));
        }
        w.polled = (0..stores)
            .filter(|i| !watching.contains(i) || failed.contains(i))
            .collect();
        tracing::debug!(
            watched = watching.len(),
            polled = w.polled.len(),
            "stores watched by inotify"
        );
        w.fd = Some(fd);
        w
    }

    /// The stores to look at now: those polled, and those an event named.
    fn due(&mut self) -> HashSet<usize> {
        let mut due = self.polled.clone();
        let Some(fd) = &self.fd else {
            return (0..self.stores).collect();
        };
        let mut buf = [0u8; 16 * 1024];
        loop {
            // SAFETY: reading into a buffer of its own length.
            let n = unsafe {
                libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(fd),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                break; // EAGAIN: nothing more
            }
            let mut at = 0usize;
            let n = n as usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            while at + head <= n {
                // SAFETY: the kernel wrote whole events; read unaligned from the buffer.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
                let len = ev.len as usize;
                let name_bytes = buf.get(at + head..(at + head + len).min(n)).unwrap_or(&[]);
                let name = name_bytes.split(|b| *b == 0).next().unwrap_or(&[]);
                at += head + len;
                if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                    // events were lost: look at every store
                    return (0..self.stores).collect();
                }
                let Some(stores) = self.by_wd.get(&ev.wd) else {
                    continue;
                };
                let gone =
                    ev.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED) != 0;
                for (store, names) in stores {
                    if gone {
                        // the directory itself went: polled from now on
                        self.polled.insert(*store);
                        due.insert(*store);
                    } else if names.is_empty() || names.iter().any(|w| w.as_bytes() == name) {
                        due.insert(*store);
                    }
                }
            }
        }
        due
    }
}

/// When the prefetcher pushes: listed files are held until a first READ says that
/// someone reads configs, so that listings nobody reads from (`ls -l`,
/// `find -links 1`) push nothing; then what was listed goes, ahead of the reader.
#[derive(Default)]
pub struct Listings {
    /// To the [`Prefetcher`]'s thread; `None`: nothing is pushed.
    prefetch: Option<SyncSender<PrefetchBatch>>,
    listed: parking_lot::Mutex<Vec<PrefetchBatch>>,
    any_listed: AtomicBool,
}

impl Listings {
    pub fn new(prefetch: Option<SyncSender<PrefetchBatch>>) -> Listings {
        Listings {
            prefetch,
            ..Default::default()
        }
    }

    /// A listing's reply went out with these regular files in it.
    pub fn listed(&self, files: Vec<u64>) {
        if self.prefetch.is_none() || files.is_empty() {
            return;
        }
        let mut listed = self.listed.lock();
        // bounded: a listing of a huge store keeps its first 64 batches
        if listed.len() < 64 {
            listed.push(PrefetchBatch {
                sent: Instant::now(),
                files,
            });
            self.any_listed.store(true, Ordering::Release);
        }
    }

    /// A READ of `ino` arrived. Readers go in listing order (`cat by-id/*`), so the
    /// pushes start just after the file being read, and the files before it come last.
    pub fn reading(&self, ino: u64) {
        if self.any_listed.swap(false, Ordering::AcqRel)
            && let Some(tx) = &self.prefetch
        {
            let batches = std::mem::take(&mut *self.listed.lock());
            for batch in ahead_of(batches, ino) {
                // full: the thread lags, and this batch is left to the READ path
                let _ = tx.try_send(batch);
            }
        }
    }
}

/// The files of one listing, and when its reply went out.
#[derive(Clone, Debug)]
pub struct PrefetchBatch {
    pub sent: Instant,
    pub files: Vec<u64>,
}

/// The listed batches reordered to start just after `ino` (when listed), wrapping
/// round to the ones before it.
fn ahead_of(batches: Vec<PrefetchBatch>, ino: u64) -> Vec<PrefetchBatch> {
    let Some((b, i)) = batches
        .iter()
        .enumerate()
        .find_map(|(b, batch)| batch.files.iter().position(|&f| f == ino).map(|i| (b, i)))
    else {
        return batches;
    };
    let mut out = Vec::with_capacity(batches.len() + 1);
    let mut before = Vec::new();
    for (k, batch) in batches.into_iter().enumerate() {
        match k.cmp(&b) {
            std::cmp::Ordering::Less => before.push(batch),
            std::cmp::Ordering::Equal => {
                let (head, tail) = batch.files.split_at(i + 1);
                out.push(PrefetchBatch {
                    sent: batch.sent,
                    files: tail.to_vec(),
                });
                before.push(PrefetchBatch {
                    sent: batch.sent,
                    files: head.to_vec(),
                });
            }
            std::cmp::Ordering::Greater => out.push(batch),
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
                while let Ok(PrefetchBatch { sent, files }) = rx.recv() {
                    // A push that lands while the listing's reader is still turning
                    // the reply into inodes is lost (the page never shows up), so
                    // each batch waits until its reader has very likely finished.
                    let ready = sent + PREFETCH_DELAY;
                    let now = Instant::now();
                    if ready > now {
                        std::thread::sleep(ready - now);
                    }
                    let mut retry = Vec::new();
                    for ino in files {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_starts_after_the_file_being_read() {
        let t = Instant::now();
        let batch = |files: &[u64]| PrefetchBatch {
            sent: t,
            files: files.to_vec(),
        };
        let order = |batches: Vec<PrefetchBatch>| -> Vec<u64> {
            batches.into_iter().flat_map(|b| b.files).collect()
        };
        let listed = vec![batch(&[1, 2, 3]), batch(&[4, 5]), batch(&[6])];
        assert_eq!(order(ahead_of(listed.clone(), 2)), [3, 4, 5, 6, 1, 2]);
        assert_eq!(order(ahead_of(listed.clone(), 6)), [1, 2, 3, 4, 5, 6]);
        assert_eq!(order(ahead_of(listed, 9)), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn nothing_is_handed_over_before_a_first_read() {
        let (tx, rx) = Prefetcher::channel();
        let listings = Listings::new(Some(tx));
        listings.listed(vec![1, 2]);
        listings.listed(vec![]);
        assert!(rx.try_recv().is_err());
        listings.reading(1);
        let got: Vec<u64> = rx.try_iter().flat_map(|b| b.files).collect();
        assert_eq!(got, [2, 1]);
        // handed over once
        listings.reading(2);
        assert!(rx.try_recv().is_err());
    }
}
