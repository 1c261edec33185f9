//! The fixtures the real tools make (once per run), and copies of them.

use super::*;

pub struct Fixtures {
    pub dir: PathBuf,
    pub ids: BTreeMap<String, String>,
}

impl Fixtures {
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
    pub fn id(&self, name: &str) -> &str {
        &self.ids[name]
    }
}

/// Made once per test run (anew each run), under cargo's scratch directory for
/// integration tests.
pub fn fixtures() -> &'static Fixtures {
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

pub fn mangle(case: &str, input: &str, out: &Path, arg: Option<&str>) -> String {
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

/// A private podman for the truth of what an archive holds.
pub fn podman(store: &Path) -> String {
    format!(
        "podman --root {0}/root --runroot {0}/run --storage-driver vfs --cgroup-manager cgroupfs --events-backend none",
        store.display()
    )
}

/// A private copy of a fixture, to write to.
pub fn copy_fixture(f: &Fixtures, name: &str, dir: &Path) -> String {
    let dst = dir.join(name);
    ok(&format!("cp -a '{}' '{}'", f.path(name), dst.display()));
    dst.display().to_string()
}

/// (tag → image) of `archive` as podman loads it into an empty store.
pub fn podman_loaded_tags(archive: &str) -> BTreeMap<String, String> {
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

/// A private copy of the fixtures' podman/buildah store, and a podman on it.
pub struct CsStore {
    pub dir: tempfile::TempDir,
}

impl CsStore {
    pub fn new(f: &Fixtures) -> CsStore {
        let dir = tempfile::tempdir().unwrap();
        ok(&format!(
            "cp -a '{}' '{}/root'",
            f.path("cs"),
            dir.path().display()
        ));
        CsStore { dir }
    }
    pub fn root(&self) -> String {
        format!("{}/root", self.dir.path().display())
    }
    pub fn podman(&self) -> String {
        format!(
            "podman --root {0}/root --runroot {0}/run --storage-driver vfs --cgroup-manager cgroupfs --events-backend none",
            self.dir.path().display()
        )
    }
    /// (name → image ID) and the set of IDs, as `podman images -a` reports them
    /// (intermediate images included: by-id shows every image of the store);
    /// manifest lists apart (imagefs shows a list's tag on its host-platform image).
    pub fn podman_images(
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
