//! Mount tests: imagefs mounted for real, driven with the tools a user would use
//! (`ls`, `stat`, `find`, `sha256sum`, `diff`, `getfattr`, `rm`, `ln`, `mv`), on
//! fixtures that buildah, podman and skopeo make at test time (mount-tests/
//! make-fixtures.sh). What podman and skopeo report for the same images is the truth
//! the mount is compared with.
//!
//! Needs root, /dev/fuse and the tools that `mount-tests/run` installs; without them
//! the first test stops the run with one line saying what is missing (see
//! [`prerequisites`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_imagefs");
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/mount-tests");

// ---------------------------------------------------------------------------------
// prerequisites

/// Root, /dev/fuse and every tool the tests run, checked once by `mount-tests/run
/// --check`, which holds the one list of them. When something is missing, the run ends
/// here with that script's one line (the missing thing and the command that brings
/// it), written past the test harness's capture, instead of every test failing with a
/// trace from the fixture script. Exiting fails the run: nothing is skipped or passed.
fn prerequisites() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let said = match Command::new("bash")
            .arg(format!("{SCRIPTS}/run"))
            .arg("--check")
            .stderr(Stdio::inherit())
            .output()
        {
            Ok(o) if o.status.success() => return,
            Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Err(e) => format!("mount tests: cannot run bash {SCRIPTS}/run --check: {e}"),
        };
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "\n{said}\n");
        let _ = err.flush();
        std::process::exit(1);
    });
}

/// The imagefs binary, once the machine can run the mount tests.
fn imagefs() -> Command {
    prerequisites();
    Command::new(BIN)
}

// ---------------------------------------------------------------------------------
// fixtures

struct Fixtures {
    dir: PathBuf,
    ids: BTreeMap<String, String>,
}

impl Fixtures {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
    fn id(&self, name: &str) -> &str {
        &self.ids[name]
    }
}

/// Made once per test run (anew each run), under cargo's scratch directory for
/// integration tests.
fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        prerequisites();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
        let out = Command::new("bash")
            .arg(format!("{SCRIPTS}/make-fixtures.sh"))
            .arg(&dir)
            .output()
            .expect("run make-fixtures.sh");
        assert!(
            out.status.success(),
            "make-fixtures.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ids = std::fs::read_to_string(dir.join("ids.env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Fixtures { dir, ids }
    })
}

fn mangle(case: &str, input: &str, out: &Path, arg: Option<&str>) -> String {
    prerequisites();
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{SCRIPTS}/mangle.py"))
        .arg(case)
        .arg(input)
        .arg(out);
    if let Some(a) = arg {
        cmd.arg(a);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "mangle {case}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------------
// running things

fn sh(cmd: &str) -> Output {
    prerequisites();
    Command::new("bash").arg("-c").arg(cmd).output().unwrap()
}

/// Runs a shell command that must succeed; returns its stdout.
fn ok(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn is_mounted(mp: &Path) -> bool {
    let mp = mp.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(mp.as_str()))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How soon a change made by another program must show in the mount (README: the
/// watcher polls every 250 ms; the tests assert this bound).
const SHOWS_WITHIN: Duration = Duration::from_millis(1500);

/// Waits for `cond` and asserts it came true within [`SHOWS_WITHIN`].
fn shows_soon(what: &str, cond: impl FnMut() -> bool) {
    let start = Instant::now();
    wait_for(what, cond);
    let took = start.elapsed();
    assert!(took < SHOWS_WITHIN, "{what} took {took:?}");
}

/// A foreground imagefs mount, stopped by PID (SIGTERM) and unmounted when dropped,
/// also when the test fails.
struct Mount {
    dir: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl Mount {
    fn new(args: &[&str]) -> Mount {
        Mount::with_env(args, &[])
    }

    fn with_env(args: &[&str], env: &[(&str, &str)]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().join("mnt");
        std::fs::create_dir(&mp).unwrap();
        let log = dir.path().join("imagefs.log");
        let child = imagefs()
            .arg("-f")
            .args(args)
            // kept catalogs and indexes stay with this mount, unless the test says
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .envs(env.iter().copied())
            .env("RUST_LOG", "imagefs=info")
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

    fn mp(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// `path` below the mount point, as a shell word.
    fn p(&self, rel: &str) -> String {
        format!("'{}/{}'", self.mp().display(), rel)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
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

/// (tag path under by-tag → image ID), from the mount: regular files by their inode's
/// by-id name.
pub(crate) fn tags_of(m: &Mount, root: &str) -> BTreeMap<String, String> {
    let ids: BTreeMap<String, String> = ok(&format!(
        "cd {} && find . -type f -printf '%i %P\\n'",
        m.p(&format!("{root}by-id"))
    ))
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(i, n)| (i.to_string(), n.to_string()))
    .collect();
    ok(&format!(
        "cd {} && find . -type f -printf '%i %P\\n'",
        m.p(&format!("{root}by-tag"))
    ))
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(ino, path)| (path.to_string(), ids.get(ino).cloned().unwrap_or_default()))
    .collect()
}

pub(crate) fn podman_json(cmd: &str) -> serde_json::Value {
    serde_json::from_str(&ok(cmd)).unwrap()
}

/// A private podman for the truth of what an archive holds.
fn podman(store: &Path) -> String {
    format!(
        "podman --root {0}/root --runroot {0}/run --storage-driver vfs --cgroup-manager cgroupfs --events-backend none",
        store.display()
    )
}

// ---------------------------------------------------------------------------------
// docker-archive

#[test]
fn docker_archive_ids_and_tags_equal_what_podman_loads() {
    let f = fixtures();
    let m = Mount::new(&[&f.path("sample.tar")]);

    // sha256sum of every by-id file equals its name
    let sums = ok(&format!("cd {} && sha256sum *", m.p("by-id")));
    let mut ids = BTreeSet::new();
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(format!("sha256:{sum}"), name);
        ids.insert(name.to_string());
    }
    let expected: BTreeSet<String> = ["WEB_V1", "WEB_V2", "API", "BUSYBOX"]
        .iter()
        .map(|k| f.id(k).to_string())
        .collect();
    assert_eq!(ids, expected);

    // podman load of the same archive into an empty store is the truth
    let store = tempfile::tempdir().unwrap();
    let pm = podman(store.path());
    ok(&format!("{pm} load -q -i {}", f.path("sample.tar")));
    let loaded = podman_json(&format!("{pm} images --no-trunc --format json"));
    let mut podman_tags = BTreeMap::new();
    let mut podman_ids = BTreeSet::new();
    for img in loaded.as_array().unwrap() {
        let id = format!("sha256:{}", img["Id"].as_str().unwrap());
        podman_ids.insert(id.clone());
        for name in img["Names"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            let (repo, tag) = name.rsplit_once(':').unwrap();
            podman_tags.insert(format!("{repo}:{tag}"), id.clone());
        }
    }
    assert_eq!(ids, podman_ids, "by-id differs from podman's image IDs");
    let mount_tags = tags_of(&m, "");
    assert_eq!(
        mount_tags, podman_tags,
        "by-tag differs from podman's names"
    );

    // the shapes the README promises
    let api = ok(&format!(
        "ls -i {} {}",
        m.p("by-tag/localhost/whoami/api:1.0"),
        m.p("by-tag/localhost/whoami/api:latest")
    ));
    let inodes: BTreeSet<&str> = api.split_whitespace().step_by(2).collect();
    assert_eq!(
        inodes.len(),
        1,
        "api:1.0 and api:latest must be one inode: {api}"
    );
    let untagged = ok(&format!(
        "cd {} && find . -links 1 -printf '%P\\n'",
        m.p("by-id")
    ));
    assert_eq!(
        lines(&untagged),
        lines(f.id("WEB_V1")),
        "the old web:latest is the untagged one"
    );
    let same = ok(&format!(
        "find {} -samefile {} -printf '%P\\n'",
        m.p("by-tag"),
        m.p(&format!("by-id/{}", f.id("BUSYBOX")))
    ));
    assert_eq!(
        lines(&same),
        lines(
            "docker.io/library/busybox:latest\nlocalhost:5000/mirror/busybox:stable\nquay.io/app/tool:v1"
        )
    );
    let dups = ok(&format!(
        "cd {} && find . -links +2 -printf '%P\\n'",
        m.p("by-id")
    ));
    assert_eq!(
        lines(&dups),
        lines(&format!("{}\n{}", f.id("API"), f.id("BUSYBOX")))
    );
    assert_eq!(ok(&format!("find {} -xtype l", m.p("by-tag"))), "");
}

#[test]
fn stat_shows_created_time_true_size_and_the_stores_modes() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let archive = copy_fixture(f, "sample.tar", dir.path());
    ok(&format!("chmod 640 '{archive}'"));
    for (options, file_mode, dir_mode) in [
        // the archive's read bits, and write bits for who may tag (link)
        (&[][..], "-rw-r-----", "drwxr-x---"),
        (&["-o", "ro"][..], "-r--r-----", "dr-xr-x---"),
    ] {
        let mut args = options.to_vec();
        args.push(&archive);
        let m = Mount::new(&args);
        let web = m.p("by-tag/localhost/whoami/web:latest");
        let config: serde_json::Value = serde_json::from_str(&ok(&format!("cat {web}"))).unwrap();
        let created = config["created"].as_str().unwrap();
        let stat = ok(&format!("stat -c '%Y %s %A %h %F' {web}"));
        let want_secs = ok(&format!("date -d '{created}' +%s"));
        let size = ok(&format!("wc -c < {web}"));
        assert_eq!(
            stat.trim(),
            format!(
                "{} {} {file_mode} 2 regular file",
                want_secs.trim(),
                size.trim()
            )
        );
        let d = ok(&format!("stat -c '%A %F' {}", m.p("by-tag/localhost")));
        assert_eq!(d.trim(), format!("{dir_mode} directory"));
        // ls -l of by-id lists every image, one regular file each
        let ls = ok(&format!("ls -l {}", m.p("by-id")));
        assert_eq!(ls.lines().filter(|l| l.starts_with(file_mode)).count(), 4);
    }
}

#[test]
fn getfattr_shows_what_a_table_would() {
    let f = fixtures();
    let m = Mount::new(&[&f.path("sample.tar")]);
    let out = ok(&format!(
        "getfattr -d --absolute-names {}",
        m.p("by-tag/localhost/whoami/api:latest")
    ));
    for want in [
        "user.image.tags=\"localhost/whoami/api:1.0,localhost/whoami/api:latest\"",
        "user.image.architecture=\"amd64\"",
        "user.image.os=\"linux\"",
        &format!(
            "user.image.source=\"docker-archive:{}\"",
            f.path("sample.tar")
        ),
    ] {
        assert!(out.contains(want), "missing {want} in:\n{out}");
    }
    // the layers' size: what the archive holds for this image's two layers
    let size = ok(&format!(
        "getfattr --only-values -n user.image.size {}",
        m.p("by-tag/localhost/whoami/api:latest")
    ));
    assert!(size.parse::<u64>().unwrap() > 0);
    // the config cache's counters on the mount's root, after reading every config twice
    ok(&format!("cat {0}/* {0}/* >/dev/null", m.p("by-id")));
    let stats: serde_json::Value = serde_json::from_str(&ok(&format!(
        "getfattr --only-values -n user.imagefs.stats {}",
        m.p("")
    )))
    .unwrap();
    let ids = ok(&format!("ls {}", m.p("by-id"))).lines().count() as u64;
    assert!(
        stats["config_cache"]["hits"].as_u64().unwrap() >= ids,
        "{stats}"
    );
    assert_eq!(stats["config_cache"]["capacity"], 32 << 20, "{stats}");
    // security labels and ACLs are not supported here: said once, ls stops asking
    let o = sh(&format!(
        "getfattr -n security.selinux {}",
        m.p("by-tag/localhost/whoami/api:latest")
    ));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not supported"),
        "{o:?}"
    );
    // unknown names: "No such attribute", not "Operation not supported"
    let o = sh(&format!(
        "getfattr -n user.nonexistent {}",
        m.p("by-tag/localhost/whoami/api:latest")
    ));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("No such attribute"),
        "{o:?}"
    );
}

#[test]
fn compressed_archives_mount_like_the_plain_one() {
    let f = fixtures();
    let m = Mount::new(&[
        &format!("plain={}", f.path("sample.tar")),
        &format!("gz={}", f.path("sample.tar.gz")),
        &format!("zst={}", f.path("sample.tar.zst")),
    ]);
    assert_eq!(
        lines(&ok(&format!("ls {}", m.p("")))),
        lines("gz\nplain\nzst")
    );
    ok(&format!("diff -r {} {}", m.p("plain"), m.p("gz")));
    ok(&format!("diff -r {} {}", m.p("plain"), m.p("zst")));
    assert_eq!(tags_of(&m, "gz/"), tags_of(&m, "plain/"));
}

// ---------------------------------------------------------------------------------
// OCI

/// The config digest skopeo resolves for `transport:ref` (host platform for indexes).
pub(crate) fn skopeo_id(image: &str) -> String {
    let cfg = ok(&format!(
        "skopeo inspect --raw --config {image} | sha256sum"
    ));
    format!("sha256:{}", cfg.split_whitespace().next().unwrap())
}

#[test]
fn oci_layout_ids_and_tags_equal_what_skopeo_reads() {
    let f = fixtures();
    let layout = f.path("layout");
    let m = Mount::new(&[&layout]);
    let mut want = BTreeMap::new();
    for (ref_name, path) in [
        ("localhost/whoami/api:1.0", "localhost/whoami/api:1.0"),
        ("localhost/whoami/api:latest", "localhost/whoami/api:latest"),
        ("localhost/whoami/web:latest", "localhost/whoami/web:latest"),
        // a bare tag (the OCI spec's form) belongs to the layout's own name
        ("stable", "localhost/layout:stable"),
    ] {
        want.insert(
            path.to_string(),
            skopeo_id(&format!("oci:{layout}:{ref_name}")),
        );
    }
    assert_eq!(tags_of(&m, ""), want);
    let ids: BTreeSet<String> = want.values().cloned().collect();
    assert_eq!(lines(&ok(&format!("ls {}", m.p("by-id")))), ids);
    let sums = ok(&format!("cd {} && sha256sum *", m.p("by-id")));
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(format!("sha256:{sum}"), name);
    }
    // manifest digests as skopeo sees them
    let digest = ok(&format!(
        "getfattr --only-values -n user.image.digest {}",
        m.p("by-tag/localhost/whoami/web:latest")
    ));
    let inspect: serde_json::Value = serde_json::from_str(&ok(&format!(
        "skopeo inspect oci:{layout}:localhost/whoami/web:latest"
    )))
    .unwrap();
    assert_eq!(digest, inspect["Digest"].as_str().unwrap());
}

#[test]
fn multi_platform_index_shows_the_host_platform_and_lists_the_others() {
    let f = fixtures();
    let multi = f.path("multi");
    let m = Mount::new(&[&multi]);
    let want = skopeo_id(&format!("oci:{multi}:localhost/whoami/multi:latest"));
    assert_eq!(ok(&format!("ls {}", m.p("by-id"))).trim(), want);
    let t = m.p("by-tag/localhost/whoami/multi:latest");
    assert_eq!(
        ok(&format!(
            "getfattr --only-values -n user.image.platforms {t}"
        )),
        "linux/arm64/v8"
    );
    assert_eq!(
        ok(&format!(
            "getfattr --only-values -n user.image.architecture {t}"
        )),
        "amd64"
    );
    // the arm64 image is the other one buildah made: not shown, only listed
    assert_ne!(want, f.id("API_ARM64"));
}

#[test]
fn oci_archive_mounts_in_place() {
    let f = fixtures();
    let arch = f.path("web.oci.tar");
    let m = Mount::new(&[&format!("oci-archive:{arch}")]);
    let want = skopeo_id(&format!("oci-archive:{arch}"));
    let tags = tags_of(&m, "");
    assert_eq!(
        tags,
        BTreeMap::from([("localhost/whoami/web:latest".to_string(), want)])
    );
}

#[test]
fn two_stores_compare_with_diff_and_comm() {
    let f = fixtures();
    let m = Mount::new(&[
        &format!("cache={}", f.path("sample.tar")),
        &format!("runtime={}", f.path("layout")),
    ]);
    // skopeo's docker→OCI conversion rewrote the configs: same tags, different images
    let o = sh(&format!(
        "diff -rq {} {}",
        m.p("cache/by-tag"),
        m.p("runtime/by-tag")
    ));
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("web:latest") && out.contains("differ"),
        "{out}"
    );
    assert!(out.contains("Only in") && out.contains("quay.io"), "{out}");
    let missing = ok(&format!(
        "comm -23 <(ls {}) <(ls {})",
        m.p("cache/by-id"),
        m.p("runtime/by-id")
    ));
    assert_eq!(lines(&missing).len(), 4, "{missing}");
    // link counts stay per store
    let api_cache = ok(&format!(
        "stat -c %h {}",
        m.p("cache/by-tag/localhost/whoami/api:1.0")
    ));
    assert_eq!(api_cache.trim(), "3");
}

// ---------------------------------------------------------------------------------
// bad input

#[test]
fn missing_config_makes_a_dangling_tag_and_the_rest_is_shown() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("missing.tar");
    let v2 = f.id("WEB_V2");
    let member = format!("{}.json", v2.trim_start_matches("sha256:"));
    mangle("drop-member", &f.path("sample.tar"), &out, Some(&member));
    let m = Mount::new(&[out.to_str().unwrap()]);
    let dangling = ok(&format!(
        "cd {} && find . -xtype l -printf '%P\\n'",
        m.p("by-tag")
    ));
    assert_eq!(dangling.trim(), "localhost/whoami/web:latest");
    let target = ok(&format!(
        "readlink {}",
        m.p("by-tag/localhost/whoami/web:latest")
    ));
    assert_eq!(target.trim(), format!("../../../by-id/{v2}"));
    assert_eq!(lines(&ok(&format!("ls {}", m.p("by-id")))).len(), 3);
    let log = m.log();
    assert!(
        log.contains("missing.tar") && log.contains("dangling"),
        "{log}"
    );
}

#[test]
fn digest_mismatch_is_reported_and_not_shown_as_that_image() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tampered.tar");
    let api = f.id("API");
    let member = format!("{}.json", api.trim_start_matches("sha256:"));
    mangle("tamper-member", &f.path("sample.tar"), &out, Some(&member));
    let m = Mount::new(&[out.to_str().unwrap()]);
    assert!(!ok(&format!("ls {}", m.p("by-id"))).contains(api));
    let dangling = ok(&format!(
        "cd {} && find . -xtype l -printf '%P\\n'",
        m.p("by-tag")
    ));
    assert_eq!(
        lines(&dangling),
        lines("localhost/whoami/api:1.0\nlocalhost/whoami/api:latest")
    );
    let log = m.log();
    assert!(
        log.contains(&format!("tampered.tar:{member}")) && log.contains("hashes to"),
        "{log}"
    );
}

#[test]
fn unsafe_member_names_are_ignored_with_a_warning() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("unsafe.tar");
    mangle("unsafe-names", &f.path("sample.tar"), &out, None);
    let m = Mount::new(&[out.to_str().unwrap()]);
    assert_eq!(lines(&ok(&format!("ls {}", m.p("by-id")))).len(), 4);
    let log = m.log();
    assert!(
        log.contains("\"../escape\"") && log.contains("unsafe name"),
        "{log}"
    );
    assert!(log.contains("/etc/imagefs-abs"), "{log}");
}

#[test]
fn unreadable_archives_fail_before_daemonizing_with_the_reason() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    for case in ["truncate", "corrupt-manifest"] {
        let out = dir.path().join(format!("{case}.tar"));
        mangle(case, &f.path("sample.tar"), &out, None);
        // no -f: the parent must exit non-zero with the reason, nothing mounted
        let o = imagefs().arg(&out).arg(&mp).output().unwrap();
        assert!(!o.status.success(), "{case}: mounted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{case}.tar")) && err.contains("manifest.json"),
            "{case}: {err}"
        );
        assert!(!is_mounted(&mp));
    }
    let o = imagefs()
        .arg("/nonexistent/x.tar")
        .arg(&mp)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/x.tar"));
}

#[test]
fn a_100_mib_config_is_served_whole_and_hashes_to_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.tar");
    let id = mangle("big-config", "-", &out, Some("100"));
    let m = Mount::new(&["-o", "cache_size=8M", out.to_str().unwrap()]);
    let f = m.p(&format!("by-id/{id}"));
    let size = ok(&format!("stat -c %s {f}"));
    assert!(size.trim().parse::<u64>().unwrap() > 100 << 20);
    let sum = ok(&format!("sha256sum < {}", m.p("by-tag/localhost/big:1")));
    assert_eq!(
        format!("sha256:{}", sum.split_whitespace().next().unwrap()),
        id
    );
}

// ---------------------------------------------------------------------------------
// command line and lifecycle

#[test]
fn writes_are_refused_read_only() {
    let f = fixtures();
    let m = Mount::new(&["-o", "ro", &f.path("sample.tar")]);
    let web = m.p("by-tag/localhost/whoami/web:latest");
    for cmd in [
        format!("rm {web}"),
        format!(
            "ln {} {}",
            m.p(&format!("by-id/{}", f.id("WEB_V1"))),
            m.p("by-tag/localhost/whoami/web:old")
        ),
        format!("mv {web} {}", m.p("by-tag/localhost/whoami/web:new")),
        format!("touch {}", m.p("by-tag/localhost/new")),
        format!("echo x >> {web}"),
    ] {
        let o = sh(&cmd);
        assert!(!o.status.success(), "{cmd} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("Read-only file system"), "{cmd}: {err}");
    }
    assert_eq!(tags_of(&m, "").len(), 6, "nothing changed");
}

#[test]
fn daemon_mode_returns_once_mounted_and_exits_on_umount() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let o = imagefs()
        .arg(f.path("sample.tar"))
        .arg(&mp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // up as soon as the command returns
    let ids = std::fs::read_dir(mp.join("by-id")).map(|d| d.count());
    let mp_s = mp.display().to_string();
    let daemon_running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&mp_s))
                .unwrap_or(false)
        })
    };
    let running = daemon_running();
    let _ = sh(&format!("umount '{mp_s}'"));
    assert_eq!(ids.ok(), Some(4));
    assert!(running, "no daemon process serves the mount");
    wait_for("the daemon to exit after umount", || !daemon_running());
    assert!(!is_mounted(&mp));
}

#[test]
fn sigterm_unmounts_cleanly() {
    let f = fixtures();
    let mut m = Mount::new(&[&f.path("sample.tar")]);
    assert!(is_mounted(&m.mp()));
    // several FUSE workers serve the mount (fuser's worker threads + the signal thread)
    let pid = m.child.as_ref().unwrap().id();
    // (the mount is up before the workers start: wait for them)
    let threads = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    wait_for("4 FUSE worker threads", || threads() >= 4);
    let st = m.stop();
    assert!(st.success(), "exit status {st}: {}", m.log());
    assert!(!is_mounted(&m.mp()), "still mounted after SIGTERM");
    // and the mount point is a plain empty directory again
    assert_eq!(std::fs::read_dir(m.mp()).unwrap().count(), 0);
}

#[test]
fn no_source_and_nothing_readable_says_so_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    // the machine's own stores, if any exist, are found and named; with none, or none
    // readable, imagefs says so and fails
    let system: Vec<&str> = [
        "/var/lib/containers/storage",
        "/var/lib/docker",
        "/var/lib/containerd",
        "/var/lib/rancher/k3s/agent/containerd",
    ]
    .into_iter()
    .filter(|p| Path::new(p).exists())
    .collect();
    let o = imagefs()
        .args(["-o", "ro"])
        .arg(dir.path())
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let mounted = is_mounted(dir.path());
    if mounted {
        let _ = sh(&format!("umount '{}'", dir.path().display()));
    }
    for p in &system {
        assert!(
            err.contains("found ") && err.contains(p),
            "{p} not named: {err}"
        );
    }
    if system.is_empty() {
        assert!(!o.status.success());
        assert!(err.contains("no SOURCE given"), "{err}");
        assert!(!mounted);
    } else {
        assert_eq!(o.status.success(), mounted, "{err}");
    }
}

#[test]
fn bad_options_and_mountpoints_are_refused() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let o = imagefs()
        .args(["-o", "bogus"])
        .arg(f.path("sample.tar"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bogus"));
    // a missing parent is a typo more likely than a wish: one line, nothing made
    let o = imagefs()
        .arg(f.path("sample.tar"))
        .arg(dir.path().join("nope/mnt"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nope/mnt: the mount point is missing, and so is the directory"));
    assert!(!dir.path().join("nope").exists());
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let o = imagefs()
        .arg(f.path("sample.tar"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a directory"));
    let o = imagefs().arg("-f").output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no MOUNTPOINT given"));
}

#[test]
fn a_missing_mount_point_is_made_and_removed_again_as_ratarmount_does() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("images");
    // daemonizing: made, mounted, removed after umount
    ok(&format!(
        "{BIN} '{}' '{}' && ls '{}/by-tag/localhost/whoami'",
        f.path("sample.tar"),
        mp.display(),
        mp.display()
    ));
    assert!(is_mounted(&mp));
    ok(&format!("umount '{}'", mp.display()));
    wait_for("the made mount point removed", || !mp.exists());
    // a mount that fails removes what it made
    let o = imagefs()
        .arg(dir.path().join("nothing.tar"))
        .arg(&mp)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(!mp.exists());
    // a directory that existed stays
    std::fs::create_dir(&mp).unwrap();
    ok(&format!(
        "{BIN} '{}' '{}'",
        f.path("sample.tar"),
        mp.display()
    ));
    ok(&format!("umount '{}'", mp.display()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(mp.is_dir());
}

#[test]
fn the_shipped_samples_mount_as_the_readme_says() {
    let dir = Path::new(SCRIPTS).join("fixtures");
    let m = Mount::new(&[
        &format!("cache={}", dir.join("sample.tar").display()),
        &format!("runtime={}", dir.join("runtime.oci.tar").display()),
    ]);
    let sums = ok(&format!("cd {} && sha256sum *", m.p("cache/by-id")));
    assert_eq!(sums.lines().count(), 4);
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(format!("sha256:{sum}"), name);
    }
    assert_eq!(
        ok(&format!(
            "cd {} && find . -links 1 | wc -l",
            m.p("cache/by-id")
        ))
        .trim(),
        "1"
    );
    let o = sh(&format!(
        "diff -r {} {}",
        m.p("cache/by-tag"),
        m.p("runtime/by-tag")
    ));
    assert_eq!(
        o.status.code(),
        Some(1),
        "the runtime's web:latest is another image"
    );
}

#[test]
fn mount_fuse_form_works_as_in_fstab() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    // what `imagefs#SOURCE MOUNTPOINT fuse ro 0 0` in /etc/fstab runs (mount.fuse
    // runs its helper with a clean PATH: the test names the binary by its path)
    let o = sh(&format!(
        "mount -t fuse '{BIN}#{}' '{}' -o ro,nodev,noauto",
        f.path("sample.tar"),
        mp.display()
    ));
    let listed = std::fs::read_dir(mp.join("by-id")).map(|d| d.count()).ok();
    let ro = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| {
            l.contains(&mp.display().to_string())
                && l.split(' ').nth(5).is_some_and(|o| o.starts_with("ro"))
        });
    let _ = sh(&format!("umount '{}'", mp.display()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(listed, Some(4));
    assert!(ro, "mounted read-write");
    wait_for("the daemon to let go", || !is_mounted(&mp));
}

/// Docker's familiar names, made canonical the way Docker itself does.
fn docker_canonical(repo: &str) -> String {
    let first = repo.split('/').next().unwrap_or_default();
    if !repo.contains('/') {
        format!("docker.io/library/{repo}")
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        repo.to_string()
    } else {
        format!("docker.io/{repo}")
    }
}

#[test]
fn docker_save_archive_ids_and_tags_equal_docker_images() {
    let f = fixtures();
    let m = Mount::new(&[&f.path("docker.tar")]);
    let mut want = BTreeMap::new();
    let mut saved_ids = BTreeSet::new();
    let images = std::fs::read_to_string(f.dir.join("docker-images.jsonl")).unwrap();
    let saved = [
        "localhost/whoami/web",
        "localhost/whoami/api",
        "docker.io/library/busybox",
        "quay.io/app/tool",
    ];
    for line in images.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let repo = docker_canonical(v["Repository"].as_str().unwrap());
        if saved.contains(&repo.as_str()) {
            let id = v["ID"].as_str().unwrap().to_string();
            want.insert(format!("{repo}:{}", v["Tag"].as_str().unwrap()), id.clone());
            saved_ids.insert(id);
        }
    }
    assert_eq!(want.len(), 6, "{images}");
    assert_eq!(tags_of(&m, ""), want);
    assert_eq!(lines(&ok(&format!("ls {}", m.p("by-id")))), saved_ids);
    // Docker keeps the IDs podman saved: the same configs, byte for byte
    ok(&format!(
        "cmp {} {}",
        m.p(&format!("by-id/{}", f.id("API"))),
        m.p("by-tag/localhost/whoami/api:1.0")
    ));
}

#[test]
fn a_stale_mount_point_is_named_as_such() {
    let f = fixtures();
    let mut m = Mount::new(&[&f.path("sample.tar")]);
    let mut child = m.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no chance to unmount
    child.wait().unwrap();
    let o = imagefs()
        .arg(f.path("sample.tar"))
        .arg(m.mp())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("stale") && err.contains("umount"), "{err}");
    // Drop unmounts the stale mount
}

#[test]
fn a_truncated_archive_shows_what_precedes_the_cut() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cut.tar");
    mangle("truncate-tail", &f.path("sample.tar"), &out, None);
    let m = Mount::new(&[out.to_str().unwrap()]);
    let shown = lines(&ok(&format!("ls {}", m.p("by-id"))));
    let dangling = lines(&ok(&format!(
        "cd {} && find . -xtype l -printf '%P\\n'",
        m.p("by-tag")
    )));
    // some images are before the cut, some after; each tag is either a link or dangling
    assert!(!shown.is_empty() && shown.len() < 4, "{shown:?}");
    assert!(!dangling.is_empty(), "no dangling tags after the cut");
    assert_eq!(tags_of(&m, "").len() + dangling.len(), 6);
    for id in &shown {
        let sum = ok(&format!("sha256sum < {}", m.p(&format!("by-id/{id}"))));
        assert_eq!(
            &format!("sha256:{}", sum.split_whitespace().next().unwrap()),
            id
        );
    }
    let log = m.log();
    assert!(
        log.contains("cut.tar") && (log.contains("truncated") || log.contains("damaged")),
        "{log}"
    );
}

/// After a listing, the first read of a config pushes the listed configs into the
/// kernel's page cache, so reading them afterwards costs no READ request; the bytes
/// are right either way. (Waits instead of racing the pusher: CI runs tests in
/// parallel on two CPUs.)
#[test]
fn listed_configs_are_read_from_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let many = dir.path().join("many.tar");
    ok(&format!(
        "python3 {SCRIPTS}/bench/make-many.py '{}' 300 400",
        many.display()
    ));
    let m = Mount::new(&[many.to_str().unwrap()]);
    let stats = || -> serde_json::Value {
        serde_json::from_str(&ok(&format!(
            "getfattr --only-values -n user.imagefs.stats {}",
            m.p("")
        )))
        .unwrap()
    };
    let kernel = |s: &serde_json::Value, k: &str| s["kernel"][k].as_u64().unwrap();
    // a listing alone pushes nothing: `find -links 1` and `ls -l` read no config
    ok(&format!("ls -l {} >/dev/null", m.p("by-id")));
    std::thread::sleep(Duration::from_millis(100));
    let listed = stats();
    assert_eq!(kernel(&listed, "pushed"), 0, "{listed}");
    // and `ls -l` stops asking for SELinux labels and ACLs after the first answer
    // (EOPNOTSUPP), rather than 2 requests for each of the 300 files
    assert!(kernel(&listed, "getxattrs") <= 6, "{listed}");
    // the first read pushes the rest
    let first = ok(&format!("ls {}", m.p("by-id")));
    let first = first.lines().next().unwrap();
    ok(&format!(
        "cat {} >/dev/null",
        m.p(&format!("by-id/{first}"))
    ));
    let start = Instant::now();
    while kernel(&stats(), "pushed") < 300 {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = kernel(&stats(), "reads");
    let sums = ok(&format!("cd {} && sha256sum *", m.p("by-id")));
    assert_eq!(sums.lines().count(), 300);
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(format!("sha256:{sum}"), name);
    }
    let after = stats();
    assert!(kernel(&after, "reads") - before <= 3, "{after}");
    // a read-only open is answered ENOSYS once, and the kernel stops sending OPEN
    assert!(kernel(&after, "opens") <= 2, "{after}");
}

#[test]
fn layer_bytes_are_never_read() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("biglayer.tar");
    mangle("big-layer", &f.path("sample.tar"), &out, Some("1"));
    let m = Mount::new(&[out.to_str().unwrap()]);
    ok(&format!(
        "ls -l {} && cd {} && sha256sum * && find {}",
        m.p("by-id"),
        m.p("by-id"),
        m.p("by-tag")
    ));
    let pid = m.child.as_ref().unwrap().id();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let rchar: u64 = io
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    // headers, manifest.json and configs: a few hundred KiB, against a 1 GiB layer
    assert!(
        rchar < 8 << 20,
        "imagefs read {rchar} bytes of a 1 GiB archive"
    );
    let size = ok(&format!(
        "getfattr --only-values -n user.image.size {}",
        m.p("by-tag/localhost/whoami/web:latest")
    ));
    assert!(size.parse::<u64>().unwrap() < 1 << 20);
}

// ---------------------------------------------------------------------------------
// writes

/// A private copy of a fixture, to write to.
fn copy_fixture(f: &Fixtures, name: &str, dir: &Path) -> String {
    let dst = dir.join(name);
    ok(&format!("cp -a '{}' '{}'", f.path(name), dst.display()));
    dst.display().to_string()
}

pub(crate) fn skopeo_fails(image: &str) -> bool {
    !sh(&format!("skopeo inspect --raw {image}"))
        .status
        .success()
}

#[test]
fn oci_layout_writes_are_what_skopeo_reads_back() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let lw = copy_fixture(f, "layout", dir.path());
    let m = Mount::new(&[&lw]);
    let whoami = m.p("by-tag/localhost/whoami");
    let web = f.id("WEB_V2");
    let web_oci = skopeo_id(&format!("oci:{lw}:localhost/whoami/web:latest"));
    assert_ne!(
        web, web_oci,
        "skopeo's conversion gives the layout its own IDs"
    );

    // untag
    ok(&format!("rm {whoami}/api:1.0"));
    assert!(skopeo_fails(&format!("oci:{lw}:localhost/whoami/api:1.0")));
    let api_oci = skopeo_id(&format!("oci:{lw}:localhost/whoami/api:latest"));
    // tag, into a new repository made with mkdir -p
    ok(&format!(
        "ln {} {whoami}/web:v2",
        m.p(&format!("by-id/{web_oci}"))
    ));
    ok(&format!(
        "mkdir -p {}",
        m.p("by-tag/registry.example:5000/team")
    ));
    ok(&format!(
        "ln {}/web:latest {}",
        whoami,
        m.p("by-tag/registry.example:5000/team/app:1")
    ));
    assert_eq!(
        skopeo_id(&format!("oci:{lw}:localhost/whoami/web:v2")),
        web_oci
    );
    assert_eq!(
        skopeo_id(&format!("oci:{lw}:registry.example:5000/team/app:1")),
        web_oci
    );
    assert_eq!(ok(&format!("stat -c %h {whoami}/web:latest")).trim(), "4");
    // re-tag
    ok(&format!("mv {whoami}/web:v2 {whoami}/web:v3"));
    assert!(skopeo_fails(&format!("oci:{lw}:localhost/whoami/web:v2")));
    assert_eq!(
        skopeo_id(&format!("oci:{lw}:localhost/whoami/web:v3")),
        web_oci
    );
    // a tagged image cannot be deleted
    let o = sh(&format!("rm {}", m.p(&format!("by-id/{api_oci}"))));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Device or resource busy"),
        "{o:?}"
    );
    // the bare-tag image loses its only tag: untagged, still there
    let busybox_oci = skopeo_id(&format!("oci:{lw}:stable"));
    ok(&format!("rm {}", m.p("by-tag/localhost/layout:stable")));
    let untagged = ok(&format!(
        "cd {} && find . -links 1 -printf '%P\\n'",
        m.p("by-id")
    ));
    assert_eq!(untagged.trim(), busybox_oci);
    // the cron job of the original report, as one line
    ok(&format!("find {} -links 1 -delete", m.p("by-id")));
    assert_eq!(
        lines(&ok(&format!("ls {}", m.p("by-id")))),
        lines(&format!("{api_oci}\n{web_oci}"))
    );
    // its blobs went with it; what remains is whole for skopeo
    let cfg_blob = format!(
        "{lw}/blobs/sha256/{}",
        busybox_oci.trim_start_matches("sha256:")
    );
    assert!(!Path::new(&cfg_blob).exists(), "{cfg_blob} left behind");
    for r in [
        "localhost/whoami/api:latest",
        "localhost/whoami/web:latest",
        "localhost/whoami/web:v3",
        "registry.example:5000/team/app:1",
    ] {
        ok(&format!(
            "skopeo copy -q oci:{lw}:{r} dir:{}/check-{}",
            dir.path().display(),
            r.replace(['/', ':'], "_")
        ));
    }
    // a fresh mount sees the same
    let before = tags_of(&m, "");
    drop(m);
    let again = Mount::new(&[&lw]);
    assert_eq!(tags_of(&again, ""), before);
}

#[test]
fn a_full_disk_answers_enospc_and_leaves_the_layout_as_it_was() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = SmallTmpfs::new(dir.path());
    let small = tmpfs.0.clone();
    let lw = copy_fixture(f, "layout", &small);
    let index_before = std::fs::read(format!("{lw}/index.json")).unwrap();
    let m = Mount::new(&[&lw]);
    // fill the filesystem
    let _ = sh(&format!(
        "dd if=/dev/zero of='{}/fill' bs=4k 2>/dev/null",
        small.display()
    ));
    let o = sh(&format!(
        "ln {} {}",
        m.p("by-tag/localhost/whoami/web:latest"),
        m.p("by-tag/localhost/whoami/web:full")
    ));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("No space left on device"),
        "{o:?}"
    );
    assert_eq!(
        std::fs::read(format!("{lw}/index.json")).unwrap(),
        index_before
    );
    assert_eq!(
        ok(&format!("ls -A '{lw}'")).lines().count(),
        3,
        "a temporary file was left"
    );
    // room again: the same write succeeds
    std::fs::remove_file(small.join("fill")).unwrap();
    ok(&format!(
        "ln {} {}",
        m.p("by-tag/localhost/whoami/web:latest"),
        m.p("by-tag/localhost/whoami/web:full")
    ));
    drop(m);
}

/// (tag → image) of `archive` as podman loads it into an empty store.
fn podman_loaded_tags(archive: &str) -> BTreeMap<String, String> {
    let store = tempfile::tempdir().unwrap();
    let pm = podman(store.path());
    ok(&format!("{pm} load -q -i '{archive}'"));
    let loaded = podman_json(&format!("{pm} images --no-trunc --format json"));
    let mut tags = BTreeMap::new();
    for img in loaded.as_array().unwrap() {
        let id = format!("sha256:{}", img["Id"].as_str().unwrap());
        for name in img["Names"].as_array().into_iter().flatten() {
            tags.insert(name.as_str().unwrap().to_string(), id.clone());
        }
    }
    tags
}

#[test]
fn docker_archive_writes_are_what_podman_loads() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let archive = copy_fixture(f, "sample.tar", dir.path());
    let size_before = std::fs::metadata(&archive).unwrap().len();
    let m = Mount::new(&[&archive]);
    let w = m.p("by-tag/localhost/whoami");
    ok(&format!("rm {w}/api:1.0"));
    ok(&format!(
        "ln {} {w}/web:v1",
        m.p(&format!("by-id/{}", f.id("WEB_V1")))
    ));
    ok(&format!(
        "mkdir -p {} && ln {w}/api:latest {}",
        m.p("by-tag/registry.example:5000/team"),
        m.p("by-tag/registry.example:5000/team/api:2")
    ));
    ok(&format!("mv {w}/web:v1 {w}/web:old"));
    // tag, untag and re-tag are metadata writes: the archive is not copied
    let grown = std::fs::metadata(&archive).unwrap().len() - size_before;
    assert!(grown < 64 * 1024, "archive grew by {grown} bytes");
    assert!(!m.log().contains("rewritten in full"), "{}", m.log());
    let mount_tags = tags_of(&m, "");
    assert_eq!(podman_loaded_tags(&archive), mount_tags);
    assert_eq!(mount_tags["localhost/whoami/web:old"], f.id("WEB_V1"));
    assert!(!mount_tags.contains_key("localhost/whoami/api:1.0"));
    // skopeo reads the new names too
    let cfg = ok(&format!(
        "skopeo inspect --raw --config docker-archive:{archive}:registry.example:5000/team/api:2 | sha256sum"
    ));
    assert_eq!(
        format!("sha256:{}", cfg.split_whitespace().next().unwrap()),
        f.id("API")
    );
    // delete: untag web v1 again, then the cron line removes it and nothing else
    ok(&format!("rm {w}/web:old"));
    ok(&format!("find {} -links 1 -delete", m.p("by-id")));
    let ids = lines(&ok(&format!("ls {}", m.p("by-id"))));
    assert_eq!(
        ids,
        lines(&format!(
            "{}\n{}\n{}",
            f.id("WEB_V2"),
            f.id("API"),
            f.id("BUSYBOX")
        ))
    );
    // the layers only web v1 used, from the original archive's manifest
    let original: serde_json::Value = serde_json::from_str(&ok(&format!(
        "tar xOf '{}' manifest.json",
        f.path("sample.tar")
    )))
    .unwrap();
    let layers_of = |id: &str| -> BTreeSet<String> {
        original
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["Config"]
                    .as_str()
                    .unwrap()
                    .starts_with(id.trim_start_matches("sha256:"))
            })
            .flat_map(|e| {
                e["Layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_str().unwrap().to_string())
            })
            .collect()
    };
    let v1_layers = layers_of(f.id("WEB_V1"));
    let others: BTreeSet<String> = ["WEB_V2", "API", "BUSYBOX"]
        .iter()
        .flat_map(|k| layers_of(f.id(k)))
        .collect();
    let unshared: Vec<&String> = v1_layers.difference(&others).collect();
    assert!(!unshared.is_empty());
    let members = ok(&format!("tar tf '{archive}'"));
    assert!(
        !members.contains(f.id("WEB_V1").trim_start_matches("sha256:")),
        "config left: {members}"
    );
    for l in &unshared {
        assert!(
            !members.lines().any(|m| m == l.as_str()),
            "layer {l} left behind"
        );
    }
    assert!(m.log().contains("rewritten in full"));
    assert_eq!(podman_loaded_tags(&archive), tags_of(&m, ""));
    // no temporary left beside the archive
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn oci_archive_and_docker_save_archive_writes_read_back() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let oa = copy_fixture(f, "web.oci.tar", dir.path());
    let da = copy_fixture(f, "docker.tar", dir.path());
    let m = Mount::new(&[&format!("oa={oa}"), &format!("da={da}")]);
    let web = skopeo_id(&format!("oci-archive:{oa}"));
    ok(&format!(
        "ln {} {}",
        m.p("oa/by-tag/localhost/whoami/web:latest"),
        m.p("oa/by-tag/localhost/whoami/web:2")
    ));
    ok(&format!(
        "rm {}",
        m.p("oa/by-tag/localhost/whoami/web:latest")
    ));
    assert_eq!(
        skopeo_id(&format!("oci-archive:{oa}:localhost/whoami/web:2")),
        web
    );
    assert!(skopeo_fails(&format!(
        "oci-archive:{oa}:localhost/whoami/web:latest"
    )));
    // the real Docker layout: short names in RepoTags, `repositories` kept in step
    ok(&format!(
        "mv {} {}",
        m.p("da/by-tag/docker.io/library/busybox:1.36"),
        m.p("da/by-tag/docker.io/library/busybox:1.37")
    ));
    ok(&format!("rm {}", m.p("da/by-tag/quay.io/app/tool:v1")));
    // Docker's own reading of its RepoTags is the truth for Docker's archive (podman
    // 4.3 reads a short `busybox:latest` as localhost/busybox:latest)
    let manifest: serde_json::Value =
        serde_json::from_str(&ok(&format!("tar xOf '{da}' manifest.json"))).unwrap();
    let mut written = BTreeSet::new();
    for e in manifest.as_array().unwrap() {
        for t in e["RepoTags"].as_array().into_iter().flatten() {
            let (repo, tag) = t.as_str().unwrap().rsplit_once(':').unwrap();
            written.insert(format!("{}:{tag}", docker_canonical(repo)));
        }
    }
    let mounted: BTreeSet<String> = tags_of(&m, "da/").into_keys().collect();
    assert_eq!(written, mounted);
    assert!(
        mounted.contains("docker.io/library/busybox:1.37")
            && !mounted.contains("quay.io/app/tool:v1")
    );
    // and podman accepts the archive, with the new name
    assert!(podman_loaded_tags(&da).contains_key("docker.io/library/busybox:1.37"));
    let repos: serde_json::Value =
        serde_json::from_str(&ok(&format!("tar xOf '{da}' repositories"))).unwrap();
    assert!(
        repos["busybox"].get("1.37").is_some() && repos["busybox"].get("1.36").is_none(),
        "{repos}"
    );
}

#[test]
fn compressed_archives_are_read_only() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let gz = copy_fixture(f, "sample.tar.gz", dir.path());
    let m = Mount::new(&[&gz]);
    let o = sh(&format!("rm {}", m.p("by-tag/localhost/whoami/api:1.0")));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only file system"),
        "{o:?}"
    );
    assert!(
        m.log().contains("compressed archives are read-only"),
        "{}",
        m.log()
    );
}

/// The daemon's bytes read so far (`rchar`, which counts page-cache hits too).
fn daemon_rchar(m: &Mount) -> u64 {
    let pid = m.child.as_ref().unwrap().id();
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A read-only bind mount of a directory, unmounted on drop.
struct ReadOnlyBind(PathBuf);

impl ReadOnlyBind {
    fn new(src: &Path, at: &Path) -> ReadOnlyBind {
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

#[test]
fn compressed_archive_index_is_kept_and_the_next_mount_decompresses_nothing() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // 32 MiB of incompressible layer in front of the sample's members.
    ok(&format!(
        "cd {d} && head -c 32M /dev/urandom > big.layer && tar cf a.tar big.layer && \
         tar Af a.tar '{}' && rm big.layer && gzip -1 a.tar",
        f.path("sample.tar")
    ));
    let gz = format!("{d}/a.tar.gz");
    let listing = |m: &Mount| {
        ok(&format!(
            "cd {} && sha256sum * && find {} -printf '%P %l\\n' | sort",
            m.p("by-id"),
            m.p("by-tag")
        ))
    };
    let mut first = Mount::new(&[&gz]);
    let want = listing(&first);
    assert!(want.contains("localhost/whoami/api:1.0"), "{want}");
    assert!(daemon_rchar(&first) > 32 << 20);
    assert!(first.log().contains("indexing the compressed archive"));
    first.stop();
    assert!(Path::new(&format!("{gz}.imagefs-index")).is_file());

    let second = Mount::new(&[&gz]);
    assert_eq!(listing(&second), want);
    let rchar = daemon_rchar(&second);
    assert!(rchar < 4 << 20, "the second mount read {rchar} bytes");
    assert!(!second.log().contains("indexing the compressed archive"));
    drop(second);

    // In a read-only directory the index goes to $XDG_CACHE_HOME/imagefs.
    std::fs::remove_file(format!("{gz}.imagefs-index")).unwrap();
    let ro_dir = PathBuf::from(format!("{d}-ro"));
    let ro = ReadOnlyBind::new(dir.path(), &ro_dir);
    let cache = tempfile::tempdir().unwrap();
    let cache_env = cache.path().to_str().unwrap();
    let ro_gz = format!("{}/a.tar.gz", ro.0.display());
    let m = Mount::with_env(&[&ro_gz], &[("XDG_CACHE_HOME", cache_env)]);
    assert_eq!(listing(&m), want);
    drop(m);
    assert!(!Path::new(&format!("{ro_gz}.imagefs-index")).exists());
    let kept = ok(&format!("ls {cache_env}/imagefs"));
    assert!(kept.lines().any(|l| l.ends_with(".index")), "{kept}");
    let m = Mount::with_env(&[&ro_gz], &[("XDG_CACHE_HOME", cache_env)]);
    assert_eq!(listing(&m), want);
    assert!(daemon_rchar(&m) < 4 << 20);
    drop(m);
    drop(ro);
    let _ = std::fs::remove_dir(ro_dir);
}

/// A store unchanged since the last mount is read from the catalog that mount kept
/// (the same tree, not a manifest or config read); a changed store or `-o rescan` is
/// read again; a config rewritten in place under a kept catalog is refused when read.
#[test]
fn unchanged_stores_are_read_from_the_catalog_the_last_mount_kept() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let env = [("XDG_CACHE_HOME", cache.to_str().unwrap())];
    let listing = |m: &Mount| {
        ok(&format!(
            "cd {} && ls -li --full-time by-id && find by-tag -printf '%p %i %n %l\\n' | sort \
             && sha256sum by-id/* && getfattr -d -R by-tag | sort",
            m.p("")
        ))
    };
    const KEPT: &str = "catalog kept for the next mount";
    const REUSED: &str = "store read from the catalog kept by an earlier mount";
    for name in ["sample.tar", "layout"] {
        let store = copy_fixture(f, name, dir.path());
        let first = Mount::with_env(&[&store], &env);
        let want = listing(&first);
        assert!(!first.log().contains(REUSED), "{}", first.log());
        let log = {
            let mut first = first;
            first.stop();
            first.log()
        };
        assert!(log.contains(KEPT), "{name}: {log}");

        let second = Mount::with_env(&[&store], &env);
        assert!(second.log().contains(REUSED), "{name}: {}", second.log());
        assert_eq!(listing(&second), want, "{name}");
        drop(second);

        let rescan = Mount::with_env(&["-o", "rescan", &store], &env);
        assert!(!rescan.log().contains(REUSED), "{name}: {}", rescan.log());
        assert_eq!(listing(&rescan), want, "{name}");
        drop(rescan);
    }

    // A changed archive (here only touched: its mtime and ctime move) is read again.
    let archive = dir.path().join("sample.tar");
    ok(&format!("touch '{}'", archive.display()));
    let m = Mount::with_env(&[archive.to_str().unwrap()], &env);
    assert!(!m.log().contains(REUSED), "{}", m.log());
    // A write through the mount reloads the store, and the reloaded catalog is kept:
    // the next mount needs no scan and shows the write.
    let id = ok(&format!("ls {}", m.p("by-id")));
    let id = id.lines().next().unwrap();
    ok(&format!(
        "mkdir -p {0} && ln {1} {0}/kept:1",
        m.p("by-tag/localhost/kept"),
        m.p(&format!("by-id/{id}"))
    ));
    drop(m);
    let m = Mount::with_env(&[archive.to_str().unwrap()], &env);
    assert!(m.log().contains(REUSED), "{}", m.log());
    ok(&format!(
        "test {} -ef {}",
        m.p("by-tag/localhost/kept/kept:1"),
        m.p(&format!("by-id/{id}"))
    ));
    drop(m);

    // An archive of many members: its tar index is kept too, so the next mount reads
    // the two kept files and not the archive's 1,200 headers.
    let many = dir.path().join("many.tar");
    ok(&format!(
        "python3 {SCRIPTS}/bench/make-many.py '{}' 600 800",
        many.display()
    ));
    let many = many.to_str().unwrap();
    // what each daemon read while mounting (the headers and configs, or the kept files)
    let first = Mount::with_env(&[many], &env);
    let read_first = daemon_rchar(&first);
    let want = listing(&first);
    drop(first);
    let second = Mount::with_env(&[many], &env);
    let read_second = daemon_rchar(&second);
    assert!(second.log().contains(REUSED), "{}", second.log());
    assert_eq!(listing(&second), want);
    assert!(
        read_second * 2 < read_first,
        "the second mount read {read_second} bytes, the first {read_first}"
    );
    drop(second);

    // A config blob rewritten in place moves nothing the layout's key covers: the
    // kept catalog is used, and reading that config fails instead of serving bytes
    // that are not the image's.
    let layout = dir.path().join("layout");
    let m = Mount::with_env(&[layout.to_str().unwrap()], &env);
    assert!(m.log().contains(REUSED), "{}", m.log());
    let ids = ok(&format!("ls {}", m.p("by-id")));
    drop(m);
    let victim = ids.lines().next().unwrap().trim();
    let blob = layout
        .join("blobs/sha256")
        .join(victim.trim_start_matches("sha256:"));
    ok(&format!(
        "printf X | dd of='{}' bs=1 seek=0 conv=notrunc status=none",
        blob.display()
    ));
    let m = Mount::with_env(&[layout.to_str().unwrap()], &env);
    assert!(m.log().contains(REUSED), "{}", m.log());
    let o = sh(&format!("cat {}", m.p(&format!("by-id/{victim}"))));
    assert!(!o.status.success(), "a rewritten config was served");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Input/output error"),
        "{o:?}"
    );
    assert!(m.log().contains("now hashes to"), "{}", m.log());
    // the other configs still read, and still hash to their names
    for id in ids.lines().skip(1) {
        let sum = ok(&format!("sha256sum < {}", m.p(&format!("by-id/{id}"))));
        assert!(id.ends_with(sum.split_whitespace().next().unwrap()), "{id}");
    }
    drop(m);
    // -o rescan reads the store again and sees what is wrong at once
    let m = Mount::with_env(&["-o", "rescan", layout.to_str().unwrap()], &env);
    assert!(!ok(&format!("ls {}", m.p("by-id"))).contains(victim));
    assert!(m.log().contains("hashes to"), "{}", m.log());
}

/// Runs the write sequence on a mount until one fails; returns how many succeeded.
fn run_ops(m: &Mount, ops: &[String]) -> usize {
    for (i, op) in ops.iter().enumerate() {
        let cmd = op.replace("$M", &m.mp().display().to_string());
        if !sh(&cmd).status.success() {
            return i;
        }
    }
    ops.len()
}

/// kill -9 at every durable step of a loop of writes (fault injection counts the
/// steps): each time, the archive must be in the state before or after the write
/// that was cut, and podman, skopeo and a fresh mount must all accept it.
#[test]
fn a_crash_at_any_step_of_a_write_leaves_the_old_or_the_new_archive() {
    let f = fixtures();
    let v1 = f.id("WEB_V1");
    let ops: Vec<String> = vec![
        "mv $M/by-tag/localhost/whoami/web:latest $M/by-tag/localhost/whoami/web:a".into(),
        format!("ln $M/by-id/{v1} $M/by-tag/localhost/whoami/web:b"),
        "rm $M/by-tag/localhost/whoami/web:b".into(),
        "mv $M/by-tag/localhost/whoami/web:a $M/by-tag/localhost/whoami/web:latest".into(),
        format!("rm $M/by-id/{v1}"),
    ];
    // the states before and after each op, from an uninterrupted run
    let dir = tempfile::tempdir().unwrap();
    let clean = copy_fixture(f, "sample.tar", dir.path());
    let mut states = vec![];
    {
        let m = Mount::new(&[&clean]);
        states.push(tags_of(&m, ""));
        for op in &ops {
            assert_eq!(
                run_ops(&m, std::slice::from_ref(op)),
                1,
                "{op}: {}",
                m.log()
            );
            states.push(tags_of(&m, ""));
        }
    }
    let mut n = 1;
    loop {
        let work = tempfile::tempdir().unwrap();
        let archive = copy_fixture(f, "sample.tar", work.path());
        let mut m = Mount::with_env(&[&archive], &[("IMAGEFS_TEST_CRASH_AT", &n.to_string())]);
        let done = run_ops(&m, &ops);
        let log = m.log();
        if done == ops.len() {
            m.stop();
            assert!(!log.contains("killed at"), "{log}");
            break; // every step has been a crash point
        }
        assert!(
            log.contains("killed at"),
            "op {done} failed without the crash: {log}"
        );
        // the daemon killed itself: reap it, drop the dead mount
        drop(m.child.take().map(|mut c| c.wait()));
        drop(m);
        let step = log
            .lines()
            .find(|l| l.contains("killed at"))
            .unwrap_or_default()
            .to_string();
        // before any recovery: skopeo and podman accept it, in one of the two states
        ok(&format!(
            "skopeo inspect --raw docker-archive:{archive}:localhost/whoami/api:latest >/dev/null"
        ));
        let podman_sees = podman_loaded_tags(&archive);
        assert!(
            podman_sees == states[done] || podman_sees == states[done + 1],
            "crash point {n} ({step}) during op {done}: podman loads {podman_sees:?}"
        );
        // a fresh mount: one of the two states around the cut op
        let fresh = Mount::new(&[&archive]);
        let now = tags_of(&fresh, "");
        assert!(
            now == states[done] || now == states[done + 1],
            "crash point {n} ({step}) during op {done}: {now:?}"
        );
        let sums = ok(&format!("cd {} && sha256sum *", fresh.p("by-id")));
        for line in sums.lines() {
            let (sum, name) = line.split_once("  ").unwrap();
            assert_eq!(format!("sha256:{sum}"), name);
        }
        drop(fresh);
        // the mount finished any half-done switch: now every reader agrees
        assert_eq!(
            podman_loaded_tags(&archive),
            now,
            "crash point {n} ({step})"
        );
        n += 1;
    }
    assert!(
        n > 15,
        "only {n} crash points: the sweep did not reach every step"
    );
}

/// A change another program makes to the store shows within a second, through the
/// kernel's 10 s entry and attribute caches.
#[test]
fn a_store_changed_underneath_shows_within_a_second() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let archive = copy_fixture(f, "sample.tar", dir.path());
    let m = Mount::new(&[&archive]);
    let w = m.p("by-tag/localhost/whoami");
    // prime the kernel's caches, listings included (it keeps them: opendir is ENOSYS)
    ok(&format!(
        "ls -li {w} {} && stat {w}/api:latest",
        m.p("by-id")
    ));
    assert_eq!(ok(&format!("stat -c %h {w}/api:latest")).trim(), "3");
    // podman, outside the mount: tag, untag, save over the archive (in place: podman
    // truncates and rewrites the file)
    let store = tempfile::tempdir().unwrap();
    let pm = podman(store.path());
    ok(&format!("{pm} load -q -i '{archive}'"));
    ok(&format!(
        "{pm} tag localhost/whoami/api:latest localhost/whoami/api:new"
    ));
    ok(&format!("{pm} untag localhost/whoami/web:latest"));
    ok(&format!(
        "{pm} save -q -m -o '{archive}.new' localhost/whoami/api:1.0 localhost/whoami/api:latest localhost/whoami/api:new && mv '{archive}.new' '{archive}'"
    ));
    let start = Instant::now();
    wait_for("the new tag", || {
        sh(&format!("stat {w}/api:new")).status.success()
    });
    wait_for("the old tag to go", || {
        !sh(&format!("stat {w}/web:latest")).status.success()
    });
    wait_for("the link count", || {
        ok(&format!("stat -c %h {w}/api:latest")).trim() == "4"
    });
    let took = start.elapsed();
    assert!(took < SHOWS_WITHIN, "took {took:?}");
    assert_eq!(
        lines(&ok(&format!("ls {w}"))),
        lines("api:1.0\napi:latest\napi:new")
    );
    assert_eq!(
        lines(&ok(&format!("ls {}", m.p("by-id")))),
        lines(f.id("API"))
    );
    // another imagefs mount of the same archive writes in place (under the lock):
    // this one follows. A tag added alone, to a directory whose listing the kernel
    // keeps, shows in that listing too.
    let other = Mount::new(&[&archive]);
    let ow = other.p("by-tag/localhost/whoami");
    ok(&format!("ln {ow}/api:1.0 {ow}/api:extra"));
    let start = Instant::now();
    wait_for("the other mount's tag in the listing", || {
        lines(&ok(&format!("ls {w}"))).contains("api:extra")
    });
    let took = start.elapsed();
    assert!(took < SHOWS_WITHIN, "the kept listing went stale: {took:?}");
    ok(&format!("rm {ow}/api:new {ow}/api:extra"));
    wait_for("the other mount's untag", || {
        !sh(&format!("stat {w}/api:new")).status.success()
    });
    assert_eq!(ok(&format!("stat -c %h {w}/api:latest")).trim(), "3");
    assert_eq!(lines(&ok(&format!("ls {w}"))), lines("api:1.0\napi:latest"));
}

#[test]
fn a_full_disk_leaves_the_archive_as_it_was() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = SmallTmpfs::new(dir.path());
    let small = tmpfs.0.clone();
    let archive = copy_fixture(f, "sample.tar", &small);
    let before = std::fs::read(&archive).unwrap();
    let m = Mount::new(&[&archive]);
    let _ = sh(&format!(
        "dd if=/dev/zero of='{}/fill' bs=4k 2>/dev/null",
        small.display()
    ));
    let w = m.p("by-tag/localhost/whoami");
    // a tag needs a spare slot (growth); a delete needs a whole new archive
    let o = sh(&format!("ln {w}/web:latest {w}/web:full"));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("No space left on device"),
        "{o:?}"
    );
    let o = sh(&format!("rm {}", m.p(&format!("by-id/{}", f.id("WEB_V1")))));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("No space left on device"),
        "{o:?}"
    );
    // the archive reads as before: same members, same tags for podman
    assert_eq!(
        lines(&ok(&format!("tar tf '{archive}'"))),
        lines(&String::from_utf8_lossy(&ok_bytes("tar tf -", &before)))
    );
    assert_eq!(
        ok(&format!("ls -A '{}'", small.display())).lines().count(),
        2,
        "a temporary was left"
    );
    std::fs::remove_file(small.join("fill")).unwrap();
    drop(m);
    assert_eq!(podman_loaded_tags(&archive).len(), 6);
}

/// Runs a command with `input` on its standard input; returns its stdout.
fn ok_bytes(cmd: &str, input: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd}");
    out.stdout
}

/// Two mounts of one archive writing at the same time: the archive's lock serialises
/// them, each write starts from the other's result, and no update is lost.
#[test]
fn two_mounts_writing_one_archive_lose_no_update() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let archive = copy_fixture(f, "sample.tar", dir.path());
    let a = Mount::new(&[&archive]);
    let b = Mount::new(&[&archive]);
    let api = f.id("API");
    let script = |m: &Mount, who: &str| {
        format!(
            "for i in $(seq 1 12); do ln {id} {w}/{who}:$i || exit 1; done; \
             for i in $(seq 1 12 | grep -v '^3$'); do rm {w}/{who}:$i || exit 1; done",
            id = m.p(&format!("by-id/{api}")),
            w = m.p("by-tag/localhost/whoami"),
        )
    };
    let (sa, sb) = (script(&a, "a"), script(&b, "b"));
    let ta = std::thread::spawn(move || sh(&sa));
    let tb = std::thread::spawn(move || sh(&sb));
    let (oa, ob) = (ta.join().unwrap(), tb.join().unwrap());
    assert!(oa.status.success(), "{oa:?}");
    assert!(ob.status.success(), "{ob:?}");
    // 24 tags and 22 untags: each mount kept its :3, and the other's too
    let want: BTreeSet<String> = lines(
        "docker.io/library/busybox:latest\nlocalhost/whoami/a:3\nlocalhost/whoami/api:1.0\n\
         localhost/whoami/api:latest\nlocalhost/whoami/b:3\nlocalhost/whoami/web:latest\n\
         localhost:5000/mirror/busybox:stable\nquay.io/app/tool:v1",
    );
    let loaded: BTreeSet<String> = podman_loaded_tags(&archive).into_keys().collect();
    assert_eq!(loaded, want);
    wait_for("both mounts to agree", || {
        tags_of(&a, "").into_keys().collect::<BTreeSet<_>>() == want
            && tags_of(&b, "").into_keys().collect::<BTreeSet<_>>() == want
    });
}

/// A 1 MiB tmpfs, to fill up; unmounted when dropped.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn new(parent: &Path) -> SmallTmpfs {
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

// ---------------------------------------------------------------------------------
// containers-storage

/// A private copy of the fixtures' podman/buildah store, and a podman on it.
pub(crate) struct CsStore {
    dir: tempfile::TempDir,
}

impl CsStore {
    fn new(f: &Fixtures) -> CsStore {
        let dir = tempfile::tempdir().unwrap();
        ok(&format!(
            "cp -a '{}' '{}/root'",
            f.path("cs"),
            dir.path().display()
        ));
        CsStore { dir }
    }
    fn root(&self) -> String {
        format!("{}/root", self.dir.path().display())
    }
    fn podman(&self) -> String {
        format!(
            "podman --root {0}/root --runroot {0}/run --storage-driver vfs --cgroup-manager cgroupfs --events-backend none",
            self.dir.path().display()
        )
    }
    /// (name → image ID) and the set of IDs, as `podman images -a` reports them
    /// (intermediate images included: by-id shows every image of the store);
    /// manifest lists apart (imagefs shows a list's tag on its host-platform image).
    fn podman_images(
        &self,
    ) -> (
        BTreeMap<String, String>,
        BTreeSet<String>,
        BTreeMap<String, String>,
    ) {
        let v = podman_json(&format!(
            "{} images -a --no-trunc --format json",
            self.podman()
        ));
        let (mut names, mut ids, mut lists) = (BTreeMap::new(), BTreeSet::new(), BTreeMap::new());
        for img in v.as_array().unwrap() {
            let id = format!("sha256:{}", img["Id"].as_str().unwrap());
            // (podman 4.3's JSON does not say which are manifest lists)
            let is_list = sh(&format!(
                "{} manifest inspect {} >/dev/null",
                self.podman(),
                img["Id"].as_str().unwrap()
            ))
            .status
            .success();
            for n in img["Names"].as_array().into_iter().flatten() {
                let n = n.as_str().unwrap().to_string();
                if is_list {
                    lists.insert(n, id.clone());
                } else {
                    names.insert(n, id.clone());
                }
            }
            if !is_list {
                ids.insert(id);
            }
        }
        (names, ids, lists)
    }
}

#[test]
fn containers_storage_ids_and_names_equal_podman_images() {
    let f = fixtures();
    let cs = CsStore::new(f);
    let m = Mount::new(&[&cs.root()]);
    let (names, ids, lists) = cs.podman_images();
    let mut mounted = tags_of(&m, "");
    // the manifest list's tag is a hard link to its amd64 instance, api
    assert!(
        lists.contains_key("localhost/whoami/multi:latest"),
        "{lists:?}"
    );
    assert_eq!(
        mounted.remove("localhost/whoami/multi:latest").as_deref(),
        Some(f.id("API"))
    );
    assert_eq!(mounted, names);
    assert_eq!(lines(&ok(&format!("ls {}", m.p("by-id")))), ids);
    // the re-tag scenario: web v1 is untagged, and its history says what it was
    let untagged = lines(&ok(&format!(
        "cd {} && find . -links 1 -printf '%P\\n'",
        m.p("by-id")
    )));
    assert!(untagged.contains(f.id("WEB_V1")), "{untagged:?}");
    let history = ok(&format!(
        "getfattr --only-values -n user.image.history {}",
        m.p(&format!("by-id/{}", f.id("WEB_V1")))
    ));
    assert_eq!(history, "localhost/whoami/web:latest");
    let sums = ok(&format!("cd {} && sha256sum *", m.p("by-id")));
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(format!("sha256:{sum}"), name);
    }
}

#[test]
fn containers_storage_writes_and_podman_writes_meet() {
    let f = fixtures();
    let cs = CsStore::new(f);
    let pm = cs.podman();
    let m = Mount::new(&[&cs.root()]);
    let w = m.p("by-tag/localhost/whoami");
    // imagefs writes, podman reads
    ok(&format!("rm {w}/web:latest"));
    ok(&format!("ln {w}/api:1.0 {w}/api:fs"));
    ok(&format!("mv {w}/api:arm64 {w}/api:arm"));
    let (names, _, _) = cs.podman_images();
    assert!(!names.contains_key("localhost/whoami/web:latest"));
    assert_eq!(names["localhost/whoami/api:fs"], f.id("API"));
    assert_eq!(names["localhost/whoami/api:arm"], f.id("API_ARM64"));
    let untagged = ok(&format!(
        "{pm} images --no-trunc --filter dangling=true --format '{{{{.ID}}}}'"
    ));
    assert!(
        untagged.contains(f.id("WEB_V2").trim_start_matches("sha256:")),
        "{untagged}"
    );
    // podman writes, the mount shows it within a second (the last-write token)
    ok(&format!(
        "{pm} tag localhost/whoami/api:1.0 localhost/whoami/api:podman"
    ));
    shows_soon("podman's tag", || {
        sh(&format!("stat {w}/api:podman")).status.success()
    });
    ok(&format!(
        "{pm} untag localhost/whoami/api:1.0 localhost/whoami/api:fs"
    ));
    wait_for("podman's untag", || {
        !sh(&format!("stat {w}/api:fs")).status.success()
    });
    // delete is podman's: EPERM, and the log says what to use
    let o = sh(&format!("rm {}", m.p(&format!("by-id/{}", f.id("WEB_V1")))));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
        "{o:?}"
    );
    assert!(m.log().contains("podman rmi"), "{}", m.log());
    // buildah commits while mounted: the new image shows within a second
    let bh = format!(
        "BUILDAH_ISOLATION=chroot buildah --root {0}/root --runroot {0}/run --storage-driver vfs",
        cs.dir.path().display()
    );
    let ctr = ok(&format!("{bh} from localhost/whoami/api:1.0"))
        .trim()
        .to_string();
    ok(&format!(
        "{bh} config --label new=1 {ctr} && {bh} commit -q {ctr} localhost/whoami/built:1 >/dev/null"
    ));
    shows_soon("buildah's commit", || {
        sh(&format!("stat {w}/built:1")).status.success()
    });
    let built = ok(&format!(
        "{pm} image inspect --format '{{{{.ID}}}}' localhost/whoami/built:1"
    ));
    let by_id = m.p(&format!("by-id/sha256:{}", built.trim()));
    assert!(sh(&format!("stat {by_id}")).status.success());
}

/// podman tagging and untagging in a loop beside imagefs doing the same: the store's
/// lock protocol loses no update on either side.
#[test]
fn podman_and_imagefs_writing_at_once_lose_no_update() {
    let f = fixtures();
    let cs = CsStore::new(f);
    let pm = cs.podman();
    let m = Mount::new(&[&cs.root()]);
    let podman_loop = format!(
        "for i in $(seq 1 8); do {pm} tag localhost/whoami/api:1.0 localhost/p/x:$i || exit 1; done; \
         for i in 1 3 5 7; do {pm} untag localhost/whoami/api:1.0 localhost/p/x:$i || exit 1; done"
    );
    let fs_loop = format!(
        "mkdir -p {d} && for i in $(seq 1 8); do ln {w}/web:latest {d}/y:$i || exit 1; done; \
         for i in 1 3 5 7; do rm {d}/y:$i || exit 1; done",
        d = m.p("by-tag/localhost/f"),
        w = m.p("by-tag/localhost/whoami"),
    );
    let tp = std::thread::spawn(move || sh(&podman_loop));
    let tf = std::thread::spawn(move || sh(&fs_loop));
    let (op, of) = (tp.join().unwrap(), tf.join().unwrap());
    assert!(op.status.success(), "{op:?}");
    assert!(of.status.success(), "{of:?}");
    let (names, _, _) = cs.podman_images();
    let got: BTreeSet<String> = names
        .keys()
        .filter(|n| n.starts_with("localhost/p/") || n.starts_with("localhost/f/"))
        .cloned()
        .collect();
    let want: BTreeSet<String> = (2..=8)
        .step_by(2)
        .flat_map(|i| [format!("localhost/p/x:{i}"), format!("localhost/f/y:{i}")])
        .collect();
    assert_eq!(got, want);
    wait_for("the mount to show the same", || {
        tags_of(&m, "")
            .into_keys()
            .filter(|n| n.starts_with("localhost/p/") || n.starts_with("localhost/f/"))
            .collect::<BTreeSet<_>>()
            == want
    });
}

#[test]
fn containers_storage_missing_config_dangles_and_the_rest_shows() {
    let f = fixtures();
    let cs = CsStore::new(f);
    let web = f.id("WEB_V2");
    let hex = web.trim_start_matches("sha256:");
    // containers/storage's file name for the config's big-data key
    let key = ok(&format!("printf %s '{web}' | base64 -w0"));
    std::fs::remove_file(format!("{}/vfs-images/{hex}/={key}", cs.root())).unwrap();
    let m = Mount::new(&[&cs.root()]);
    let dangling = ok(&format!(
        "cd {} && find . -xtype l -printf '%P\\n'",
        m.p("by-tag")
    ));
    assert_eq!(dangling.trim(), "localhost/whoami/web:latest");
    assert!(resolve_ok(&m, &format!("by-id/{}", f.id("API"))));
    assert!(m.log().contains("is missing"), "{}", m.log());
}

fn resolve_ok(m: &Mount, rel: &str) -> bool {
    std::fs::metadata(m.mp().join(rel)).is_ok()
}

#[test]
fn no_source_finds_the_users_containers_storage() {
    let f = fixtures();
    let home = tempfile::tempdir().unwrap();
    let store = home.path().join(".local/share/containers");
    std::fs::create_dir_all(&store).unwrap();
    ok(&format!(
        "cp -a '{}' '{}/storage'",
        f.path("cs"),
        store.display()
    ));
    let mp = home.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let o = imagefs()
        .arg("-o")
        .arg("ro")
        .arg(&mp)
        .env("HOME", home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let listed = std::fs::read_dir(&mp).map(|d| {
        d.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    });
    let _ = sh(&format!("umount '{}'", mp.display()));
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "found containers-storage:{}/storage",
            store.display()
        )),
        "{err}"
    );
    let listed = listed.unwrap();
    assert!(
        listed
            .iter()
            .any(|n| n == "by-id" || n.starts_with("storage")),
        "{listed:?}"
    );
}

// ---------------------------------------------------------------------------------
// docker-root

/// A private dockerd, offline (vfs, no networking), with its own data root, exec root
/// and socket under /tmp (socket paths must stay short); stopped by PID when dropped.
struct Dockerd {
    data: tempfile::TempDir,
    run: tempfile::TempDir,
    child: Option<Child>,
}

impl Dockerd {
    fn start(data: tempfile::TempDir) -> Dockerd {
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
    fn root(&self) -> String {
        format!("{}/root", self.data.path().display())
    }
    fn host(&self) -> String {
        format!("unix://{}/s", self.run.path().display())
    }
    fn docker(&self) -> String {
        format!("DOCKER_HOST={} docker", self.host())
    }
    fn spawn(&mut self) {
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
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
    /// (tag → ID) and IDs as `docker images -a` reports them, names made canonical.
    fn images(&self) -> (BTreeMap<String, String>, BTreeSet<String>) {
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

#[test]
fn docker_root_reads_like_docker_images_and_writes_through_dockerd_or_its_files() {
    let f = fixtures();
    let mut d = Dockerd::start(tempfile::tempdir().unwrap());
    let docker = d.docker();
    ok(&format!("{docker} load -q -i '{}'", f.path("sample.tar")));
    let m = Mount::new(&[
        "-o",
        &format!("docker_host={}", d.host()),
        &format!("docker-root:{}", d.root()),
    ]);
    let (tags, ids) = d.images();
    assert_eq!(tags_of(&m, ""), tags);
    assert_eq!(lines(&ok(&format!("ls {}", m.p("by-id")))), ids);
    // the untagged web v1 (docker's <none>), and a sha256sum that matches every name
    assert!(
        lines(&ok(&format!(
            "cd {} && find . -links 1 -printf '%P\\n'",
            m.p("by-id")
        )))
        .contains(f.id("WEB_V1"))
    );
    for line in ok(&format!("cd {} && sha256sum *", m.p("by-id"))).lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(format!("sha256:{sum}"), name);
    }
    // docker tag while mounted
    ok(&format!(
        "{docker} tag busybox:latest localhost/whoami/dock:1"
    ));
    let w = m.p("by-tag/localhost/whoami");
    shows_soon("docker's tag", || {
        sh(&format!("stat {w}/dock:1")).status.success()
    });
    // writes through the Engine API
    ok(&format!(
        "ln {w}/api:1.0 {w}/api:fs && mv {w}/api:fs {w}/api:moved && rm {w}/dock:1"
    ));
    let o = sh(&format!("rm {w}/web:latest"));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Device or resource busy"),
        "{o:?}"
    );
    assert!(m.log().contains("last tag"), "{}", m.log());
    ok(&format!("rm {}", m.p(&format!("by-id/{}", f.id("WEB_V1")))));
    let (tags, ids) = d.images();
    assert_eq!(tags_of(&m, ""), tags);
    assert!(
        tags.contains_key("localhost/whoami/api:moved")
            && !tags.contains_key("localhost/whoami/dock:1")
    );
    assert!(!ids.contains(f.id("WEB_V1")));
    // dockerd stopped: the same writes go to repositories.json, and dockerd sees them
    d.stop();
    ok(&format!(
        "ln {w}/api:1.0 {w}/api:offline && mv {w}/api:moved {w}/api:back && rm {w}/web:latest"
    ));
    let o = sh(&format!("rm {}", m.p(&format!("by-id/{}", f.id("WEB_V2")))));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
        "{o:?}"
    );
    let offline = tags_of(&m, "");
    d.spawn();
    let (tags, _) = d.images();
    assert_eq!(tags, offline);
    assert!(
        tags.contains_key("localhost/whoami/api:offline")
            && tags.contains_key("localhost/whoami/api:back")
    );
    assert!(!tags.contains_key("localhost/whoami/web:latest"));

    // An unchanged root is read from the catalog the last mount kept; a tag docker
    // makes in between is a change, and the next mount reads the root again.
    drop(m);
    let cache = tempfile::tempdir().unwrap();
    let env = [("XDG_CACHE_HOME", cache.path().to_str().unwrap())];
    let args = [
        "-o",
        &format!("docker_host={}", d.host()),
        &format!("docker-root:{}", d.root()),
    ];
    const REUSED: &str = "store read from the catalog kept by an earlier mount";
    let mut first = Mount::with_env(&args, &env);
    let want = tags_of(&first, "");
    first.stop();
    let mut second = Mount::with_env(&args, &env);
    assert!(second.log().contains(REUSED), "{}", second.log());
    assert_eq!(tags_of(&second, ""), want);
    assert_eq!(
        lines(&ok(&format!("ls {}", second.p("by-id")))),
        d.images().1
    );
    second.stop();
    ok(&format!(
        "{docker} tag busybox:latest localhost/whoami/dock:2"
    ));
    let third = Mount::with_env(&args, &env);
    assert!(!third.log().contains(REUSED), "{}", third.log());
    assert_eq!(tags_of(&third, ""), d.images().0);
    assert!(tags_of(&third, "").contains_key("localhost/whoami/dock:2"));
}

#[test]
fn docker_root_with_no_images_says_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("root/containerd")).unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let o = imagefs()
        .arg(format!("docker-root:{}/root", dir.path().display()))
        .arg(&mp)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("containerd") && err.contains("moby"), "{err}");
}

// ---------------------------------------------------------------------------------
// containerd

/// A private containerd (offline, CRI plugin off, native snapshotter), with its own
/// root, state and socket under /tmp; stopped by PID when dropped.
struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Containerd {
    fn start() -> Containerd {
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
    fn root(&self) -> String {
        format!("{}/root", self.dir.path().display())
    }
    fn ctr(&self, ns: &str) -> String {
        format!("ctr --address {}/sock -n {ns}", self.dir.path().display())
    }
    /// (tag → config digest) as ctr lists the namespace's images, each target
    /// resolved through the content store to its config.
    fn tags(&self, ns: &str) -> BTreeMap<String, String> {
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

#[test]
fn containerd_namespaces_read_like_ctr_with_cri_names_and_the_retag_case() {
    let f = fixtures();
    let c = Containerd::start();
    let k8s = c.ctr("k8s.io");
    ok(&format!(
        "{k8s} images import --snapshotter native {} >/dev/null",
        f.path("sample.tar")
    ));
    ok(&format!(
        "{} images import --snapshotter native {} >/dev/null",
        c.ctr("default"),
        f.path("web.oci.tar")
    ));
    // the way CRI names an image: an ID record and a digest reference beside the tag;
    // then the kim re-tag: web:latest moved to another image
    let web = f.id("WEB_V2");
    let web_target = ok(&format!(
        "{k8s} images ls | awk '$1 == \"localhost/whoami/web:latest\" {{print $3}}'"
    ));
    ok(&format!(
        "{k8s} images tag localhost/whoami/web:latest {web} >/dev/null"
    ));
    ok(&format!(
        "{k8s} images tag localhost/whoami/web:latest localhost/whoami/web@{} >/dev/null",
        web_target.trim()
    ));
    ok(&format!(
        "{k8s} images tag --force localhost/whoami/api:1.0 localhost/whoami/web:latest >/dev/null"
    ));
    let m = Mount::new(&[&format!("containerd:{}", c.root())]);
    assert_eq!(
        lines(&ok(&format!("ls {}", m.p("")))),
        lines("root-default\nroot-k8s.io")
    );
    assert_eq!(tags_of(&m, "root-k8s.io/"), c.tags("k8s.io"));
    assert_eq!(tags_of(&m, "root-default/"), c.tags("default"));
    // the old web is untagged: only its ID record and digest reference name it
    let untagged = ok(&format!(
        "cd {} && find . -links 1 -printf '%P\\n'",
        m.p("root-k8s.io/by-id")
    ));
    assert_eq!(untagged.trim(), web);
    let digests = ok(&format!(
        "getfattr --only-values -n user.image.digests {}",
        m.p(&format!("root-k8s.io/by-id/{web}"))
    ));
    assert!(
        digests.contains("localhost/whoami/web@sha256:"),
        "{digests}"
    );
    for line in ok(&format!("cd {} && sha256sum *", m.p("root-k8s.io/by-id"))).lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(format!("sha256:{sum}"), name);
    }
    // ctr images tag while mounted
    ok(&format!(
        "{k8s} images tag docker.io/library/busybox:latest localhost/whoami/ctr:1 >/dev/null"
    ));
    let t = m.p("root-k8s.io/by-tag/localhost/whoami/ctr:1");
    shows_soon("ctr's tag", || sh(&format!("stat {t}")).status.success());
    // a tag whose manifest blob is gone dangles
    ok(&format!(
        "{} images import --snapshotter native {} >/dev/null",
        c.ctr("gone"),
        f.path("web.oci.tar")
    ));
    let target = ok(&format!(
        "{} images ls | awk 'NR > 1 {{print $3}}'",
        c.ctr("gone")
    ));
    let hex = target.trim().trim_start_matches("sha256:");
    let blob = format!(
        "{}/io.containerd.content.v1.content/blobs/sha256/{hex}",
        c.root()
    );
    std::fs::remove_file(&blob).unwrap();
    let g = Mount::new(&[&format!("containerd:{}#gone", c.root())]);
    assert_eq!(
        ok(&format!(
            "cd {} && find . -xtype l -printf '%P\\n'",
            g.p("by-tag")
        ))
        .trim(),
        "localhost/whoami/web:latest"
    );
}

/// containerd importing, tagging and removing in a loop while the mount is read over
/// and over: the lock-free reader never shows garbage (every by-id file hashes to its
/// name, every tag is one containerd had) and the daemon survives.
#[test]
fn reading_meta_db_while_containerd_writes_never_shows_garbage() {
    let f = fixtures();
    let c = Containerd::start();
    let k8s = c.ctr("k8s.io");
    ok(&format!(
        "{k8s} images import --snapshotter native {} >/dev/null",
        f.path("sample.tar")
    ));
    let m = Mount::new(&[&format!("containerd:{}#k8s.io", c.root())]);
    let writer = format!(
        "for i in $(seq 1 40); do {k8s} images tag localhost/whoami/api:1.0 localhost/stress/t:$i >/dev/null || exit 1; \
         if [ $((i % 3)) = 0 ]; then {k8s} images rm localhost/stress/t:$((i - 1)) >/dev/null || exit 1; fi; done"
    );
    let w = std::thread::spawn(move || sh(&writer));
    let allowed: BTreeSet<String> = c.tags("k8s.io").into_keys().collect();
    let mut rounds = 0;
    while !w.is_finished() || rounds < 5 {
        rounds += 1;
        let listing = sh(&format!("cd {} && sha256sum * 2>/dev/null", m.p("by-id")));
        for line in String::from_utf8_lossy(&listing.stdout).lines() {
            let (sum, name) = line.split_once("  ").unwrap();
            assert_eq!(format!("sha256:{sum}"), name, "garbage in by-id");
        }
        for tag in tags_of_lenient(&m) {
            assert!(
                allowed.contains(&tag) || tag.starts_with("localhost/stress/t:"),
                "unexpected tag {tag}"
            );
        }
    }
    let o = w.join().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(m.child.is_some() && is_mounted(&m.mp()));
    wait_for("the final state", || {
        let mounted: BTreeSet<String> = tags_of_lenient(&m).into_iter().collect();
        mounted == c.tags("k8s.io").into_keys().collect::<BTreeSet<_>>()
    });
    assert!(!m.log().contains("panicked"), "{}", m.log());
}

/// Tags of a mount read while it may change under the reader: names that vanish
/// between listing and stat are left out.
fn tags_of_lenient(m: &Mount) -> Vec<String> {
    let o = sh(&format!(
        "cd {} && find . -type f -printf '%P\\n' 2>/dev/null",
        m.p("by-tag")
    ));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn containerd_writes_go_through_its_api_and_keep_untagged_images() {
    let f = fixtures();
    let mut c = Containerd::start();
    let k8s = c.ctr("k8s.io");
    ok(&format!(
        "{k8s} images import --snapshotter native {} >/dev/null",
        f.path("sample.tar")
    ));
    let address = format!("containerd_address={}/sock", c.dir.path().display());
    let m = Mount::new(&["-o", &address, &format!("containerd:{}#k8s.io", c.root())]);
    let w = m.p("by-tag/localhost/whoami");
    let names = || lines(&ok(&format!("{k8s} images ls -q")));
    // tag, re-tag: records named as the mount says
    ok(&format!(
        "ln {w}/api:1.0 {w}/api:fs && mv {w}/api:fs {w}/api:moved"
    ));
    assert!(
        names().contains("localhost/whoami/api:moved")
            && !names().contains("localhost/whoami/api:fs")
    );
    assert_eq!(c.tags("k8s.io")["localhost/whoami/api:moved"], f.id("API"));
    // the last tag of web goes: an ID record keeps the image, which is now untagged
    let web = f.id("WEB_V2");
    ok(&format!("rm {w}/web:latest"));
    assert!(names().contains(web), "{:?}", names());
    assert!(!names().contains("localhost/whoami/web:latest"));
    let untagged = lines(&ok(&format!(
        "cd {} && find . -links 1 -printf '%P\\n'",
        m.p("by-id")
    )));
    assert!(untagged.contains(web), "{untagged:?}");
    // delete: every record of the untagged image goes
    ok(&format!("rm {}", m.p(&format!("by-id/{web}"))));
    assert!(!names().contains(web));
    assert!(
        !sh(&format!("stat {}", m.p(&format!("by-id/{web}"))))
            .status
            .success()
    );
    assert_eq!(tags_of(&m, ""), c.tags("k8s.io"));
    // no containerd: EROFS, and the log says why; meta.db is never written by imagefs
    let stopped = c.child.take().map(|mut ch| {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(ch.id() as i32, libc::SIGTERM) };
        ch.wait()
    });
    assert!(stopped.is_some());
    let o = sh(&format!("ln {w}/api:1.0 {w}/api:offline"));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only file system"),
        "{o:?}"
    );
    assert!(m.log().contains("no containerd answers"), "{}", m.log());
}

// ---------------------------------------------------------------------------------
// The benchmark must keep working: run on tiny inputs, nothing asserted about time.

#[test]
fn benchmark_runs_on_tiny_inputs() {
    let f = fixtures();
    let work = tempfile::tempdir().unwrap();
    let walk = Path::new(BIN)
        .parent()
        .unwrap()
        .join("examples/header_walk");
    assert!(walk.is_file(), "cargo test builds the examples: {walk:?}");
    let out = ok(&format!(
        "python3 {SCRIPTS}/bench/bench.py --tiny --runs 1 --bin '{BIN}' --walk '{}' \
         --cs-template '{}' '{}'",
        walk.display(),
        f.path("cs"),
        work.path().display()
    ));
    for title in [
        "(a) docker-archive",
        "(b) the same, gzip",
        "(c) docker-archive",
        "(d) OCI layout",
        "(e) containers-storage",
    ] {
        assert!(out.contains(title), "no table for {title}:\n{out}");
    }
    assert!(!out.contains("FAILED"), "{out}");
    // (a) and (c) show the floor: the same commands on a tmpfs copy, no mount
    let floors = out
        .lines()
        .filter(|l| l.contains("on a tmpfs copy of the tree"))
        .filter(|l| {
            l.split('|')
                .nth(3)
                .is_some_and(|w| w.trim().parse::<f64>().is_ok())
        })
        .count();
    assert_eq!(floors, 2, "{out}");
    // every imagefs row of the tool tables has a warm time, every fixed cost a figure
    let (tools, fixed): (Vec<&str>, Vec<&str>) = out
        .lines()
        .filter(|l| l.starts_with("| imagefs"))
        .partition(|l| l.split('|').count() > 4);
    assert!(tools.len() >= 7 && fixed.len() >= 2, "{out}");
    for r in tools {
        let warm = r.split('|').nth(3).unwrap_or_default().trim();
        assert!(warm.parse::<f64>().is_ok_and(|t| t > 0.0), "{r}");
    }
    for r in fixed {
        let ms = r.split('|').nth(2).unwrap_or_default().trim();
        assert!(ms.parse::<f64>().is_ok_and(|t| t > 0.0), "{r}");
    }
    assert!(work.path().join("results.md").is_file());
}

// ---------------------------------------------------------------------------------
// trust: hostile store contents (issue 14)

mod trust;
