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
        let mut c = Containerd { dir, child: None };
        c.spawn();
        c
    }
    /// Starts containerd (again) on the same root and socket.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd");
        self.child = Some(child);
        let ctr = self.ctr("default");
        wait_for("containerd", || {
            sh(&format!("{ctr} version")).status.success()
        });
    }
    /// Stops it, by PID.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
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
        self.stop();
        let _ = sh(&format!(
            "umount -R {}/state 2>/dev/null; true",
            self.dir.path().display()
        ));
    }
}

/// A private docker-registry (distribution 2.8) on 127.0.0.1 and a free port, its
/// storage in a temporary directory, deletes enabled; stopped by PID when dropped.
/// `extra` is more of its YAML configuration (auth, TLS).
pub struct RegistryD {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    pub extra: String,
    /// `--dest-tls-verify=false` or `--dest-cert-dir=…` and credentials, for skopeo.
    pub skopeo_dest: String,
    pub skopeo_src: String,
}

impl RegistryD {
    pub fn start(extra: &str) -> RegistryD {
        let port = free_port();
        let mut r = RegistryD {
            dir: tempfile::tempdir().unwrap(),
            port,
            child: None,
            extra: extra.to_string(),
            skopeo_dest: "--dest-tls-verify=false".into(),
            skopeo_src: "--src-tls-verify=false".into(),
        };
        r.spawn();
        r
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn spawn(&mut self) {
        let config = self.dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n{}",
                self.dir.path().join("data").display(),
                self.addr(),
                self.extra
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        self.child = Some(
            Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                // the access log goes to stdout, the rest to stderr: one file
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry"),
        );
        let addr = self.addr();
        wait_for("docker-registry", || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `skopeo copy` of `src` (a transport:reference) to `repo:tag` here.
    pub fn push(&self, src: &str, repo_tag: &str) {
        ok(&format!(
            "skopeo copy -q --all {} {src} docker://{}/{repo_tag}",
            self.skopeo_dest,
            self.addr()
        ));
    }

    /// `skopeo list-tags`, sorted; none for a repository the registry does not have.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let o = sh(&format!(
            "skopeo list-tags {} docker://{}/{repo}",
            self.skopeo_src.replace("--src-", "--"),
            self.addr()
        ));
        if !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("404") {
            return Vec::new();
        }
        assert!(o.status.success(), "skopeo list-tags {repo}: {o:?}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut tags: Vec<String> = v["Tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        tags
    }

    /// `skopeo inspect`'s manifest digest, and the sha256 of `--config --raw`: what a
    /// pull would call the image.
    pub fn inspect(&self, repo_tag: &str) -> (String, String) {
        let tls = self.skopeo_src.replace("--src-", "--");
        let v = podman_json(&format!(
            "skopeo inspect {tls} docker://{}/{repo_tag}",
            self.addr()
        ));
        let config = ok(&format!(
            "skopeo inspect {tls} --config --raw docker://{}/{repo_tag} | sha256sum",
            self.addr()
        ));
        (
            v["Digest"].as_str().unwrap_or_default().to_string(),
            format!(
                "sha256:{}",
                config.split_whitespace().next().unwrap_or_default()
            ),
        )
    }
}

impl Drop for RegistryD {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A helper server of the tests' own (a python script of mount-tests/) listening on
/// `port`; stopped by PID when dropped.
pub struct Helper {
    pub child: Child,
    pub port: u16,
}

impl Helper {
    /// Spawns `script` with `args`, and waits until `port` takes connections.
    pub fn start(script: &str, port: u16, args: &[&std::ffi::OsStr]) -> Helper {
        let child = Command::new("python3")
            .arg(format!("{SCRIPTS}/{script}"))
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect(script);
        wait_for(script, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Helper { child, port }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
