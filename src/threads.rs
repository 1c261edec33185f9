//! Threads that outlive a store's loading. main blocks SIGTERM, SIGINT and SIGHUP
//! once the stores are read, so that its signal thread alone takes them and unmounts
//! cleanly (keeping the catalogs); until then a Ctrl-C still ends a long first scan.
//! A thread a store starts while it loads (a registry's poller, containerd's event
//! subscription) would inherit the unblocked mask, and the kernel could deliver a
//! SIGTERM to it: the process would die without unmounting. So such threads block
//! those signals themselves, here.

use std::io;
use std::thread::JoinHandle;

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and the threads it starts
/// from now on); the set, for `sigwait`.
pub fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a zeroed set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// A named thread that never takes the termination signals.
pub fn spawn_background(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            block_termination_signals();
            f()
        })
}
