//! What every mount test uses: the prerequisites check, running commands, waiting,
//! and (in the submodules) fixtures, mounts, and the daemons tests start.

pub use std::collections::{BTreeMap, BTreeSet};
pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command, Output, Stdio};
pub use std::sync::OnceLock;
pub use std::time::{Duration, Instant};

mod daemons;
mod fixtures;
mod mounting;

pub use daemons::*;
pub use fixtures::*;
pub use mounting::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_imagefs");

pub const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/mount-tests");

/// Root, /dev/fuse and every tool the tests run, checked once by `mount-tests/run
/// --check`, which holds the one list of them. When something is missing, the run ends
/// here with that script's one line (the missing thing and the command that brings
/// it), written past the test harness's capture, instead of every test failing with a
/// trace from the fixture script. Exiting fails the run: nothing is skipped or passed.
pub fn prerequisites() {
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
pub fn imagefs() -> Command {
    prerequisites();
    Command::new(BIN)
}

pub fn sh(cmd: &str) -> Output {
    prerequisites();
    Command::new("bash").arg("-c").arg(cmd).output().unwrap()
}

/// Runs a shell command that must succeed; returns its stdout.
pub fn ok(cmd: &str) -> String {
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

pub fn lines(s: &str) -> BTreeSet<String> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
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
pub const SHOWS_WITHIN: Duration = Duration::from_millis(1500);

/// Waits for `cond` and asserts it came true within [`SHOWS_WITHIN`].
pub fn shows_soon(what: &str, cond: impl FnMut() -> bool) {
    let start = Instant::now();
    wait_for(what, cond);
    let took = start.elapsed();
    assert!(took < SHOWS_WITHIN, "{what} took {took:?}");
}

/// (tag path under by-tag → image ID), from the mount: regular files by their inode's
/// by-id name.
pub fn tags_of(m: &Mount, root: &str) -> BTreeMap<String, String> {
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

pub fn podman_json(cmd: &str) -> serde_json::Value {
    serde_json::from_str(&ok(cmd)).unwrap()
}

/// The config digest skopeo resolves for `transport:ref` (host platform for indexes).
pub fn skopeo_id(image: &str) -> String {
    let cfg = ok(&format!(
        "skopeo inspect --raw --config {image} | sha256sum"
    ));
    format!("sha256:{}", cfg.split_whitespace().next().unwrap())
}

/// Docker's familiar names, made canonical the way Docker itself does.
pub fn docker_canonical(repo: &str) -> String {
    let first = repo.split('/').next().unwrap_or_default();
    if !repo.contains('/') {
        format!("docker.io/library/{repo}")
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        repo.to_string()
    } else {
        format!("docker.io/{repo}")
    }
}

pub fn skopeo_fails(image: &str) -> bool {
    !sh(&format!("skopeo inspect --raw {image}"))
        .status
        .success()
}

/// The daemon's bytes read so far (`rchar`, which counts page-cache hits too).
pub fn daemon_rchar(m: &Mount) -> u64 {
    let pid = m.child.as_ref().unwrap().id();
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Runs the write sequence on a mount until one fails; returns how many succeeded.
pub fn run_ops(m: &Mount, ops: &[String]) -> usize {
    for (i, op) in ops.iter().enumerate() {
        let cmd = op.replace("$M", &m.mp().display().to_string());
        if !sh(&cmd).status.success() {
            return i;
        }
    }
    ops.len()
}

/// Runs a command with `input` on its standard input; returns its stdout.
pub fn ok_bytes(cmd: &str, input: &[u8]) -> Vec<u8> {
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

pub fn resolve_ok(m: &Mount, rel: &str) -> bool {
    std::fs::metadata(m.mp().join(rel)).is_ok()
}

/// Tags of a mount read while it may change under the reader: names that vanish
/// between listing and stat are left out.
pub fn tags_of_lenient(m: &Mount) -> Vec<String> {
    let o = sh(&format!(
        "cd {} && find . -type f -printf '%P\\n' 2>/dev/null",
        m.p("by-tag")
    ));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
