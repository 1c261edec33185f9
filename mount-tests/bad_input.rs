//! Bad input: malformed, truncated, mismatched and unsafe stores are reported by name,
//! and the rest is shown.

use crate::common::*;

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

/// A docker-archive's image ID is its config's content, as `docker load` computes it:
/// a config member whose bytes changed is shown under their hash (not as the image
/// its name claims), its tags with it, and said.
#[test]
fn a_changed_config_is_shown_under_its_bytes_hash() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tampered.tar");
    let api = f.id("API");
    let member = format!("{}.json", api.trim_start_matches("sha256:"));
    mangle("tamper-member", &f.path("sample.tar"), &out, Some(&member));
    let m = Mount::new(&[out.to_str().unwrap()]);
    assert!(!ok(&format!("ls {}", m.p("by-id"))).contains(api));
    let tags = tags_of(&m, "");
    let now = &tags["localhost/whoami/api:1.0"];
    assert_ne!(now, api);
    assert_eq!(&tags["localhost/whoami/api:latest"], now);
    let sum = ok(&format!("sha256sum < {}", m.p(&format!("by-id/{now}"))));
    assert_eq!(
        format!("sha256:{}", sum.split_whitespace().next().unwrap()),
        *now
    );
    // (docker load refuses this one, whose bytes are no longer JSON; formats.rs
    // compares a renamed valid config with docker load)
    let log = m.log();
    assert!(
        log.contains(&format!("tampered.tar:{member}")) && log.contains("its bytes hash to"),
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
