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
