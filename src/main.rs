//! The imagefs command: parse the command line, read the stores, mount, and (unless
//! -f) daemonize once the mount is up.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing::{error, info, warn};

use imagefs::ConfigCache;
use imagefs::Kept;
use imagefs::cli::{self, Args, MountOptions};
use imagefs::fs::{FsOptions, ImageFs, Store};
use imagefs::fuse::FuseAdapter;
use imagefs::notify::{Listings, Prefetcher};
use imagefs::source;

fn main() -> ExitCode {
    few_malloc_arenas();
    let args = Args::parse();
    init_logging(args.debug);
    // the crash tests' fault injection (see store_file::crash_point)
    if let Some(n) = std::env::var("IMAGEFS_TEST_CRASH_AT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        imagefs::crash_after(n);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("imagefs: {}", printable(&msg));
            ExitCode::FAILURE
        }
    }
}

/// A message for the terminal: control characters (an escape sequence in a member
/// name, a newline) shown escaped, as the log lines show them, never sent raw.
fn printable(msg: &str) -> String {
    msg.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// glibc gives each thread that allocates at once its own malloc arena, and keeps what
/// was freed in it: a registry scan's pool of parallel requests left 60 to 90 MiB
/// resident (the registry benchmark: 100 MiB peak for 10,000 tags; 27 MiB with two
/// arenas, 11 MiB with one). imagefs's threads mostly wait on the kernel and the
/// network, so one arena costs no contention the benchmarks show.
fn few_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn init_logging(debug: bool) {
    let default = if debug {
        "imagefs=debug"
    } else {
        "imagefs=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(args: Args) -> Result<(), String> {
    let (positional, mountpoint) = args.split()?;
    let options = cli::parse_options(&args.options)?;
    let mountpoint = prepare_mountpoint(Path::new(mountpoint))?;
    let foreground = args.foreground || args.debug;
    // Daemonizing forks before any store is read: the child then owns its memory
    // alone. Forked after the scan, a 2,000-image catalog was shared copy-on-write
    // with the waiting parent, and the child paid a page copy for every page it
    // touched (7 ms of a 28 ms mount-and-find).
    let mut status_pipe = if foreground {
        None
    } else {
        Some(daemonize().inspect_err(|_| mountpoint.remove_if_created())?)
    };
    let result = read_and_serve(positional, &mountpoint, &options, &mut status_pipe);
    mountpoint.remove_if_created();
    if let (Err(msg), Some(pipe)) = (&result, status_pipe.as_mut()) {
        // the parent says it; the child's stderr is the same terminal
        let _ = pipe.write_all(msg.as_bytes());
        // SAFETY: nothing is buffered (stderr is unbuffered, stdout unused).
        unsafe { libc::_exit(1) }
    }
    result
}

/// The mount point, and whether this run made it.
struct MountPoint {
    path: PathBuf,
    created: bool,
}

impl MountPoint {
    /// A mount point this run made is removed once unmounted (or when mounting
    /// failed), as ratarmount does, so that a mount leaves nothing behind.
    fn remove_if_created(&self) {
        // NotFound: the other process of a daemonizing mount removed it
        if self.created
            && let Err(e) = std::fs::remove_dir(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(
                "{}: cannot remove the mount point made for this mount: {e}",
                self.path.display()
            );
        }
    }
}

/// Checks the mount point, making it when it is missing (only its last component: a
/// missing parent is more likely a typo than a wish), as ratarmount does. Its
/// absolute path, because the daemon leaves the working directory.
fn prepare_mountpoint(path: &Path) -> Result<MountPoint, String> {
    let mut created = false;
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "{}: mount point is not a directory",
                path.display()
            ));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!(
                "{0}: {e}: a stale FUSE mount (its daemon died); `umount {0}` first",
                path.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "{}: the mount point is missing, and so is the directory it would be made in",
                    path.display()
                ),
                _ => format!(
                    "{}: the mount point is missing and cannot be made: {e}",
                    path.display()
                ),
            })?;
            info!("made the mount point {}", path.display());
            created = true;
        }
        Err(e) => return Err(format!("{}: mount point: {e}", path.display())),
    }
    let absolute =
        std::path::absolute(path).map_err(|e| format!("{}: mount point: {e}", path.display()))?;
    Ok(MountPoint {
        path: absolute,
        created,
    })
}

fn read_and_serve(
    positional: &[String],
    mountpoint: &MountPoint,
    options: &MountOptions,
    status_pipe: &mut Option<std::fs::File>,
) -> Result<(), String> {
    let kept = match cli::kept_dir().filter(|_| !options.nokeep) {
        Some(dir) if options.rescan => Kept::in_dir(dir).ignoring_kept(),
        Some(dir) => Kept::in_dir(dir),
        None => Kept::none(),
    };
    let kept = if options.read_only {
        kept.nothing_beside()
    } else {
        kept
    };
    let source_options = source::SourceOptions {
        docker_host: options
            .docker_host
            .clone()
            .or_else(cli::docker_host_from_env),
        containerd_address: options.containerd_address.clone(),
        limits: options.limits,
        kept: kept.clone(),
        registry: source::RegistryOptions {
            ca_files: cli::system_ca_file()
                .into_iter()
                .chain(options.registry_ca.iter().cloned())
                .collect(),
            insecure: options.registry_insecure,
            parallel: options.registry_parallel,
            timeout: options.registry_timeout,
            refresh: options.registry_refresh,
            auth_files: cli::registry_auth_files(),
            proxies: cli::registry_proxies(),
            config_bytes: usize::try_from(options.cache_size).unwrap_or(usize::MAX),
        },
        platform: options.platform.clone(),
    };
    let stores = if positional.is_empty() {
        discover_stores(&source_options)?
    } else {
        open_sources(positional, &source_options)?
    };
    let fs = ImageFs::new(
        stores,
        ConfigCache::new(options.cache_size),
        FsOptions {
            read_only: options.read_only,
            kept,
            limits: options.limits,
            platform: source_options.platform().display(),
        },
    )
    .map_err(|e| e.to_string())?;
    mount(Arc::new(fs), mountpoint, options, status_pipe)
}

fn open_sources(args: &[String], options: &source::SourceOptions) -> Result<Vec<Store>, String> {
    let specs = cli::parse_sources(args)?;
    let mut stores = Vec::new();
    for s in specs {
        for source::Opened { namespace, source } in
            source::open_all(&s.spec, options).map_err(|e| e.to_string())?
        {
            let label = match namespace {
                Some(ns) => format!("{}-{ns}", s.label),
                None => s.label.clone(),
            };
            let label = cli::unique_label(&label, |l| stores.iter().any(|s: &Store| s.label == l));
            stores.push(Store::new(label, source));
        }
    }
    Ok(stores)
}

/// The no-source default: every known store location that exists, said aloud.
fn discover_stores(options: &source::SourceOptions) -> Result<Vec<Store>, String> {
    let mut stores = Vec::new();
    let mut found = Vec::new();
    for (kind, path) in cli::default_store_locations() {
        if !path.exists() {
            continue;
        }
        let spec = format!("{kind}:{}", path.display());
        match source::open_all(&spec, options) {
            Ok(found) => {
                eprintln!("imagefs: found {spec}");
                let base = cli::parse_sources(std::slice::from_ref(&spec))
                    .ok()
                    .and_then(|v| v.into_iter().next())
                    .map(|s| s.label)
                    .unwrap_or_else(|| kind.to_string());
                for source::Opened { namespace, source } in found {
                    let label = match namespace {
                        Some(ns) => format!("{base}-{ns}"),
                        None => base.clone(),
                    };
                    let label =
                        cli::unique_label(&label, |l| stores.iter().any(|s: &Store| s.label == l));
                    stores.push(Store::new(label, source));
                }
            }
            Err(e) => {
                eprintln!("imagefs: found {spec}, cannot read it: {e}");
                found.push(spec);
            }
        }
    }
    if stores.is_empty() {
        if found.is_empty() {
            return Err("no SOURCE given and no image store found on this machine \
                        (looked in /var/lib/containers/storage, ~/.local/share/containers/storage, \
                        /var/lib/docker, /var/lib/containerd, /var/lib/rancher/k3s/agent/containerd)"
                .into());
        }
        return Err(format!(
            "no SOURCE given and none of the stores found can be read yet: {}",
            found.join(", ")
        ));
    }
    Ok(stores)
}

fn fuser_config(fs: &ImageFs, options: &MountOptions) -> fuser::Config {
    use fuser::MountOption;
    let mut config = fuser::Config::default();
    let fsname = options.fsname.clone().unwrap_or_else(|| {
        fs.stores()
            .iter()
            .map(|s| s.source.describe())
            .collect::<Vec<_>>()
            // not ',': the name travels inside a comma-separated option string when
            // fuser mounts through fusermount3
            .join(";")
    });
    let mut mo = vec![
        MountOption::FSName(fsname),
        MountOption::Subtype("imagefs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if options.read_only {
        mo.push(MountOption::RO);
    }
    // Shared with every user, the mount lets each do what the store's own modes let
    // them: the kernel checks the modes the tree shows (the store's owner and bits).
    if options.default_permissions || options.allow_other {
        mo.push(MountOption::DefaultPermissions);
    }
    if options.noatime {
        mo.push(MountOption::NoAtime);
    }
    config.mount_options = mo;
    config.acl = if options.allow_other {
        fuser::SessionACL::All
    } else if options.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(imagefs::fuse::THREADS);
    config.clone_fd = true;
    config
}

/// Forks. The child returns the pipe on which it will say "ok" once mounted (or why
/// not); the parent waits for that and exits: 0 once the mount is up, else with the
/// child's message as its error.
fn daemonize() -> Result<std::fs::File, String> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no thread has been started yet (no store has been opened), so the child
    // is a faithful copy.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(read_end);
            // Still in the terminal's process group: a Ctrl-C while a big archive is
            // indexed stops both processes. `serve` detaches once mounted.
            Ok(std::fs::File::from(write_end))
        }
        _child => {
            drop(write_end);
            let mut msg = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut msg);
            match msg.strip_prefix("ok") {
                // SAFETY: nothing is buffered (stderr is unbuffered, stdout unused).
                Some(_) => unsafe { libc::_exit(0) },
                None if msg.is_empty() => {
                    Err("the mounting process died before the mount was up".into())
                }
                None => Err(msg),
            }
        }
    }
}

/// Mounts and serves until unmounted; says "ok" on `status_pipe` once mounted.
fn mount(
    fs: Arc<ImageFs>,
    mountpoint: &MountPoint,
    options: &MountOptions,
    status_pipe: &mut Option<std::fs::File>,
) -> Result<(), String> {
    let config = fuser_config(&fs, options);
    let result = serve(fs, &mountpoint.path, &config, status_pipe);
    if result.is_ok() {
        mountpoint.remove_if_created();
        // Unmounted: every write was persisted when it was answered, so what is left
        // is freeing the catalog, tree and caches, which `umount` and a waiting
        // `imagefs -f` would otherwise wait for (milliseconds on a big store).
        // SAFETY: nothing is buffered (stderr is unbuffered, stdout unused).
        unsafe { libc::_exit(0) }
    }
    result
}

fn serve(
    fs: Arc<ImageFs>,
    mountpoint: &std::path::Path,
    config: &fuser::Config,
    status_pipe: &mut Option<std::fs::File>,
) -> Result<(), String> {
    // taken by the signal thread alone: blocked here, before the threads below start
    // (threads the stores started while loading block them themselves)
    let signals = imagefs::threads::block_termination_signals();
    let (prefetch_tx, prefetch_rx) = Prefetcher::channel();
    let mut session = fuser::Session::new(
        FuseAdapter::new(fs.clone(), Listings::new(Some(prefetch_tx))),
        mountpoint,
        config,
    )
    .map_err(|e| format!("{}: cannot mount: {e}", mountpoint.display()))?;
    Prefetcher::spawn(fs.clone(), session.notifier(), prefetch_rx)
        .map_err(|e| format!("cannot start the prefetch thread: {e}"))?;
    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0i32;
            // SAFETY: sigwait on a set we initialised; blocks this thread only.
            unsafe { libc::sigwait(&signals, &mut sig) };
            info!(signal = sig, "unmounting {}", mp.display());
            if let Err(e) = unmounter.unmount() {
                error!("unmount of {} failed: {e}", mp.display());
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    imagefs::notify::spawn_watcher(fs.clone(), session.notifier())
        .map_err(|e| format!("cannot start the store watcher: {e}"))?;
    info!(mountpoint = %mountpoint.display(), stores = fs.stores().len(), "mounted");
    // The parent reads until EOF: closing our end is what lets it exit.
    if let Some(mut pipe) = status_pipe.take() {
        // SAFETY: setsid has no preconditions; it detaches from the terminal.
        unsafe { libc::setsid() };
        let _ = pipe.write_all(b"ok");
        drop(pipe);
        detach_stdio();
    }
    let ended = session.run().map_err(|e| {
        warn!("session ended: {e}");
        format!("{}: {e}", mountpoint.display())
    });
    // A mount shorter than a watcher tick still leaves its catalogs for the next one.
    fs.keep_catalogs();
    ended
}

/// A daemon's standard streams go to /dev/null, so that the terminal it came from
/// can close.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which we own.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    // SAFETY: chdir to "/" so the daemon holds no directory busy.
    unsafe { libc::chdir(c"/".as_ptr()) };
}
