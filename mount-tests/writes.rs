//! Writes through the mount (`rm`, `ln`, `mv`) on layouts and archives, checked by what
//! podman and skopeo read back; full disks, crashes at every step, and two writers.

use crate::common::*;

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
