//! A Docker root, against a dockerd of the test's own.

use crate::common::*;

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
