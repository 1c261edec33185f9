//! The command line and the mount's life: options, mount points, daemon mode, signals,
//! fstab's form, and the shipped samples the README mounts.

use crate::common::*;

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
