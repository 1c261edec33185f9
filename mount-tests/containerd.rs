//! containerd's root, against a containerd of the test's own.

use crate::common::*;

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

/// A busy node: commits that touch no image (leases, here) cost the mount nothing,
/// not even a rescan, while containerd's image events are followed; an image change
/// shows within the usual bound; and once containerd restarts, the mount follows it
/// again.
#[test]
fn commits_that_touch_no_image_cost_no_rescan() {
    let f = fixtures();
    let mut c = Containerd::start();
    let k8s = c.ctr("k8s.io");
    ok(&format!(
        "{k8s} images import --snapshotter native {} >/dev/null",
        f.path("sample.tar")
    ));
    let address = format!("containerd_address={}/sock", c.dir.path().display());
    let m = Mount::with_env(
        &["-o", &address, &format!("containerd:{}#k8s.io", c.root())],
        &[("RUST_LOG", "imagefs=debug")],
    );
    let scans = || m.log().matches("store read").count();
    // settled: the mount's scan, and the one when the subscription began
    let settled = || {
        let before = scans();
        std::thread::sleep(Duration::from_millis(1500));
        scans() == before
    };
    wait_for("the mount to settle", settled);
    let before = scans();
    for i in 0..30 {
        ok(&format!("{k8s} leases create --id busy-{i} >/dev/null"));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        scans(),
        before,
        "rescans for commits that touch no image\n{}",
        m.log()
    );
    // an image change still shows
    ok(&format!(
        "{k8s} images tag docker.io/library/busybox:latest localhost/whoami/busy:1 >/dev/null"
    ));
    let t = m.p("by-tag/localhost/whoami/busy:1");
    shows_soon("ctr's tag", || sh(&format!("stat {t}")).status.success());
    assert_eq!(tags_of(&m, ""), c.tags("k8s.io"));
    // containerd restarts: followed again
    c.stop();
    c.spawn();
    ok(&format!(
        "{k8s} images tag docker.io/library/busybox:latest localhost/whoami/busy:2 >/dev/null"
    ));
    let t = m.p("by-tag/localhost/whoami/busy:2");
    wait_for("the tag made after the restart", || {
        sh(&format!("stat {t}")).status.success()
    });
    wait_for("the mount to settle again", settled);
    let before = scans();
    for i in 0..10 {
        ok(&format!("{k8s} leases create --id again-{i} >/dev/null"));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(scans(), before, "rescans after the restart");
}

/// A containerd namespace's catalog is kept (issue 17, part 1): a remount of an
/// unchanged namespace reads it instead of the content store, and a record added
/// meanwhile makes the next mount read the namespace again.
#[test]
fn an_unchanged_namespace_is_mounted_from_its_kept_catalog() {
    const REUSED: &str = "store read from the catalog kept by an earlier mount";
    let f = fixtures();
    let c = Containerd::start();
    let k8s = c.ctr("k8s.io");
    ok(&format!(
        "{k8s} images import --snapshotter native {} >/dev/null",
        f.path("sample.tar")
    ));
    let cache = tempfile::tempdir().unwrap();
    let env = [("XDG_CACHE_HOME", cache.path().to_str().unwrap())];
    let address = format!("containerd_address={}/sock", c.dir.path().display());
    let spec = format!("containerd:{}#k8s.io", c.root());
    let mount = || Mount::with_env(&["-o", &address, &spec], &env);
    let m = mount();
    let first = tags_of(&m, "");
    assert!(!m.log().contains(REUSED), "{}", m.log());
    // SIGTERM unmounts cleanly, catalogs kept, even with the event thread running
    // (started while the store loaded, before main blocks the signal for its own
    // signal thread: it blocks it itself)
    let mut m = m;
    let status = m.stop();
    assert!(status.success(), "{status:?}");
    let first_log = m.log();
    assert!(
        first_log.contains("catalog kept for the next mount"),
        "{first_log}"
    );
    // unchanged: from the kept catalog, the same tree
    let m = mount();
    assert!(m.log().contains(REUSED), "{first_log}\n---\n{}", m.log());
    assert_eq!(tags_of(&m, ""), first);
    assert_eq!(first, c.tags("k8s.io"));
    let mut m = m;
    m.stop();
    // a tag made while unmounted: read again, and shown
    ok(&format!(
        "{k8s} images tag docker.io/library/busybox:latest localhost/whoami/kept:1 >/dev/null"
    ));
    let m = mount();
    assert!(!m.log().contains(REUSED), "{}", m.log());
    assert_eq!(tags_of(&m, ""), c.tags("k8s.io"));
    assert!(tags_of(&m, "").contains_key("localhost/whoami/kept:1"));
}
