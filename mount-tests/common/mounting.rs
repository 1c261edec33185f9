//! Mounting imagefs, and the scratch mounts tests put stores on.

use super::*;

pub fn is_mounted(mp: &Path) -> bool {
    let mp = mp.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(mp.as_str()))
}

/// A foreground imagefs mount, stopped by PID (SIGTERM) and unmounted when dropped,
/// also when the test fails.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Mount {
    pub fn new(args: &[&str]) -> Mount {
        Mount::with_env(args, &[])
    }

    pub fn with_env(args: &[&str], env: &[(&str, &str)]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().join("mnt");
        std::fs::create_dir(&mp).unwrap();
        let log = dir.path().join("imagefs.log");
        let child = imagefs()
            .arg("-f")
            .args(args)
            // kept catalogs and indexes stay with this mount, unless the test says
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .env("RUST_LOG", "imagefs=info")
            .envs(env.iter().copied())
            .arg(&mp)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mount {
            dir,
            child: Some(child),
            log,
        };
        let mp2 = mp.clone();
        let start = Instant::now();
        while !is_mounted(&mp2) {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("imagefs exited ({st}) before mounting: {}", m.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "mount timed out: {}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn mp(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// `path` below the mount point, as a shell word.
    pub fn p(&self, rel: &str) -> String {
        format!("'{}/{}'", self.mp().display(), rel)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        if is_mounted(&self.mp()) {
            let _ = sh(&format!("umount -l '{}'", self.mp().display()));
        }
    }
}

/// A read-only bind mount of a directory, unmounted on drop.
pub struct ReadOnlyBind(pub PathBuf);

impl ReadOnlyBind {
    pub fn new(src: &Path, at: &Path) -> ReadOnlyBind {
        std::fs::create_dir(at).unwrap();
        ok(&format!(
            "mount --bind '{0}' '{1}' && mount -o remount,bind,ro '{1}'",
            src.display(),
            at.display()
        ));
        ReadOnlyBind(at.to_path_buf())
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l '{}'", self.0.display()));
    }
}

/// A 1 MiB tmpfs, to fill up; unmounted when dropped.
pub struct SmallTmpfs(pub PathBuf);

impl SmallTmpfs {
    pub fn new(parent: &Path) -> SmallTmpfs {
        let p = parent.join("small");
        std::fs::create_dir(&p).unwrap();
        ok(&format!(
            "mount -t tmpfs -o size=1M tmpfs '{}'",
            p.display()
        ));
        SmallTmpfs(p)
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l '{}'", self.0.display()));
    }
}
