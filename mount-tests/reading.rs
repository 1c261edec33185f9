//! Reading: what the mount shows of each store kind (archives, compressed or not, OCI
//! layouts and archives, docker save), compared with what podman, skopeo and docker
//! report for the same images; and what reading costs (the page cache, no layer read).

use crate::common::*;

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
