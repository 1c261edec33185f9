//! A store changed underneath the mount by another program.

use crate::common::*;

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

/// Fifty sources in one mount are watched by inotify, not polled (issue 17, part 5):
/// the log says none is polled, and a change to any one shows within a second, an
/// archive saved over by rename and a layout that skopeo writes into alike.
#[test]
fn fifty_sources_are_watched_and_a_change_to_one_shows_within_a_second() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let mut args: Vec<String> = Vec::new();
    for i in 0..49 {
        let a = format!("{d}/a{i}.tar");
        std::fs::copy(f.path("sample.tar"), &a).unwrap();
        args.push(format!("a{i}={a}"));
    }
    ok(&format!("cp -r '{}' '{d}/layout'", f.path("layout")));
    args.push(format!("layout={d}/layout"));
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.insert(0, "nokeep");
    all.insert(0, "-o");
    let m = Mount::with_env(&all, &[("RUST_LOG", "imagefs=debug")]);
    // the watcher says so once it has started, which may be just after the mount
    wait_for("the watcher's start", || {
        m.log().contains("stores watched by inotify")
    });
    assert!(
        m.log()
            .contains("stores watched by inotify watched=50 polled=0"),
        "{}",
        m.log()
            .lines()
            .filter(|l| l.contains("inotify"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // an archive replaced by rename
    let w = m.p("a17/by-tag/localhost/whoami");
    ok(&format!("ls {w} >/dev/null"));
    let store = tempfile::tempdir().unwrap();
    let pm = podman(store.path());
    ok(&format!("{pm} load -q -i '{d}/a17.tar'"));
    ok(&format!(
        "{pm} tag localhost/whoami/api:latest localhost/whoami/api:watched"
    ));
    ok(&format!(
        "{pm} save -q -m -o '{d}/a17.new' localhost/whoami/api:watched && mv '{d}/a17.new' '{d}/a17.tar'"
    ));
    let start = Instant::now();
    wait_for("the renamed archive's tag", || {
        sh(&format!("stat {w}/api:watched")).status.success()
    });
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // a layout that skopeo writes a tag into
    let l = m.p("layout/by-tag/localhost/whoami");
    ok(&format!("ls {l} >/dev/null"));
    ok(&format!(
        "skopeo copy -q oci:{d}/layout:localhost/whoami/web:latest oci:{d}/layout:localhost/whoami/web:watched"
    ));
    let start = Instant::now();
    wait_for("skopeo's tag", || {
        sh(&format!("stat {l}/web:watched")).status.success()
    });
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
}
