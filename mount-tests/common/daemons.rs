//! The daemons tests start on their own roots and sockets, stopped by PID.

use super::*;

/// A private dockerd, offline (vfs, no networking), with its own data root, exec root
/// and socket under /tmp (socket paths must stay short); stopped by PID when dropped.
pub struct Dockerd {
    pub data: tempfile::TempDir,
    pub run: tempfile::TempDir,
    pub child: Option<Child>,
}

impl Dockerd {
    pub fn start(data: tempfile::TempDir) -> Dockerd {
        let run = tempfile::Builder::new()
            .prefix("ifs-dk")
            .tempdir_in("/tmp")
            .unwrap();
        let mut d = Dockerd {
            data,
            run,
            child: None,
        };
        d.spawn();
        d
    }
    pub fn root(&self) -> String {
        format!("{}/root", self.data.path().display())
    }
    pub fn host(&self) -> String {
        format!("unix://{}/s", self.run.path().display())
    }
    pub fn docker(&self) -> String {
        format!("DOCKER_HOST={} docker", self.host())
    }
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.data.path().join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .args([
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ])
            .args(["--bridge=none", "--userland-proxy=false"])
            .arg("--data-root")
            .arg(self.root())
            .arg("--exec-root")
            .arg(self.run.path().join("ex"))
            .arg("--host")
            .arg(self.host())
            .arg("--pidfile")
            .arg(self.run.path().join("pid"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd");
        self.child = Some(child);
        let docker = self.docker();
        wait_for("dockerd", || {
            sh(&format!("{docker} version")).status.success()
        });
    }
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
    /// (tag → ID) and IDs as `docker images -a` reports them, names made canonical.
    pub fn images(&self) -> (BTreeMap<String, String>, BTreeSet<String>) {
        let out = ok(&format!(
            "{} images -a --no-trunc --format '{{{{json .}}}}'",
            self.docker()
        ));
        let (mut tags, mut ids) = (BTreeMap::new(), BTreeSet::new());
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["ID"].as_str().unwrap().to_string();
            let (repo, tag) = (
                v["Repository"].as_str().unwrap(),
                v["Tag"].as_str().unwrap(),
            );
            if repo != "<none>" && tag != "<none>" {
                tags.insert(format!("{}:{tag}", docker_canonical(repo)), id.clone());
            }
            ids.insert(id);
        }
        (tags, ids)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private containerd (offline, CRI plugin off, native snapshotter), with its own
/// root, state and socket under /tmp; stopped by PID when dropped.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
}

impl Containerd {
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("ifs-ctd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path().display().to_string();
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{d}/sock\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd");
        let c = Containerd {
            dir,
            child: Some(child),
        };
        let ctr = c.ctr("default");
        wait_for("containerd", || {
            sh(&format!("{ctr} version")).status.success()
        });
        c
    }
    pub fn root(&self) -> String {
        format!("{}/root", self.dir.path().display())
    }
    pub fn ctr(&self, ns: &str) -> String {
        format!("ctr --address {}/sock -n {ns}", self.dir.path().display())
    }
    /// (tag → config digest) as ctr lists the namespace's images, each target
    /// resolved through the content store to its config.
    pub fn tags(&self, ns: &str) -> BTreeMap<String, String> {
        let ctr = self.ctr(ns);
        let mut out = BTreeMap::new();
        for line in ok(&format!("{ctr} images ls")).lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (name, digest) = (cols[0], cols[2]);
            if name.starts_with("sha256:") || name.contains('@') {
                continue; // ID records and digest references are not tags
            }
            let manifest: serde_json::Value =
                serde_json::from_str(&ok(&format!("{ctr} content get {digest}"))).unwrap();
            out.insert(
                name.to_string(),
                manifest["config"]["digest"].as_str().unwrap().to_string(),
            );
        }
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        let _ = sh(&format!(
            "umount -R {}/state 2>/dev/null; true",
            self.dir.path().display()
        ));
    }
}
