//! containers-storage (podman's and buildah's store), against `podman images`.

use crate::common::*;

#[test]
fn containers_storage_ids_and_names_equal_podman_images() {
    let f = fixtures();
    let cs = CsStore::new(f);
    let m = Mount::new(&[&cs.root()]);
    let (names, ids, lists) = cs.podman_images();
    let mut mounted = tags_of(&m, "");
    // the manifest list's tag is a hard link to its amd64 instance, api
    assert!(
        lists.contains_key("localhost/whoami/multi:latest"),
        "{lists:?}"
    );
    assert_eq!(
        mounted.remove("localhost/whoami/multi:latest").as_deref(),
        Some(f.id("API"))
    );
    assert_eq!(mounted, names);
    assert_eq!(lines(&ok(&format!("ls {}", m.p("by-id")))), ids);
    // the re-tag scenario: web v1 is untagged, and its history says what it was
    let untagged = lines(&ok(&format!(
        "cd {} && find . -links 1 -printf '%P\\n'",
        m.p("by-id")
    )));
    assert!(untagged.contains(f.id("WEB_V1")), "{untagged:?}");
    let history = ok(&format!(
        "getfattr --only-values -n user.image.history {}",
        m.p(&format!("by-id/{}", f.id("WEB_V1")))
    ));
    assert_eq!(history, "localhost/whoami/web:latest");
    let sums = ok(&format!("cd {} && sha256sum *", m.p("by-id")));
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(format!("sha256:{sum}"), name);
    }
}

#[test]
fn containers_storage_writes_and_podman_writes_meet() {
    let f = fixtures();
    let cs = CsStore::new(f);
    let pm = cs.podman();
    let m = Mount::new(&[&cs.root()]);
    let w = m.p("by-tag/localhost/whoami");
    // imagefs writes, podman reads
    ok(&format!("rm {w}/web:latest"));
    ok(&format!("ln {w}/api:1.0 {w}/api:fs"));
    ok(&format!("mv {w}/api:arm64 {w}/api:arm"));
    let (names, _, _) = cs.podman_images();
    assert!(!names.contains_key("localhost/whoami/web:latest"));
    assert_eq!(names["localhost/whoami/api:fs"], f.id("API"));
    assert_eq!(names["localhost/whoami/api:arm"], f.id("API_ARM64"));
    let untagged = ok(&format!(
        "{pm} images --no-trunc --filter dangling=true --format '{{{{.ID}}}}'"
    ));
    assert!(
        untagged.contains(f.id("WEB_V2").trim_start_matches("sha256:")),
        "{untagged}"
    );
    // podman writes, the mount shows it within a second (the last-write token)
    ok(&format!(
        "{pm} tag localhost/whoami/api:1.0 localhost/whoami/api:podman"
    ));
    shows_soon("podman's tag", || {
        sh(&format!("stat {w}/api:podman")).status.success()
    });
    ok(&format!(
        "{pm} untag localhost/whoami/api:1.0 localhost/whoami/api:fs"
    ));
    wait_for("podman's untag", || {
        !sh(&format!("stat {w}/api:fs")).status.success()
    });
    // delete is podman's: EPERM, and the log says what to use
    let o = sh(&format!("rm {}", m.p(&format!("by-id/{}", f.id("WEB_V1")))));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
        "{o:?}"
    );
    assert!(m.log().contains("podman rmi"), "{}", m.log());
    // buildah commits while mounted: the new image shows within a second
    let bh = format!(
        "BUILDAH_ISOLATION=chroot buildah --root {0}/root --runroot {0}/run --storage-driver vfs",
        cs.dir.path().display()
    );
    let ctr = ok(&format!("{bh} from localhost/whoami/api:1.0"))
        .trim()
        .to_string();
    ok(&format!(
        "{bh} config --label new=1 {ctr} && {bh} commit -q {ctr} localhost/whoami/built:1 >/dev/null"
    ));
    shows_soon("buildah's commit", || {
        sh(&format!("stat {w}/built:1")).status.success()
    });
    let built = ok(&format!(
        "{pm} image inspect --format '{{{{.ID}}}}' localhost/whoami/built:1"
    ));
    let by_id = m.p(&format!("by-id/sha256:{}", built.trim()));
    assert!(sh(&format!("stat {by_id}")).status.success());
}

/// podman tagging and untagging in a loop beside imagefs doing the same: the store's
/// lock protocol loses no update on either side.
#[test]
fn podman_and_imagefs_writing_at_once_lose_no_update() {
    let f = fixtures();
    let cs = CsStore::new(f);
    let pm = cs.podman();
    let m = Mount::new(&[&cs.root()]);
    let podman_loop = format!(
        "for i in $(seq 1 8); do {pm} tag localhost/whoami/api:1.0 localhost/p/x:$i || exit 1; done; \
         for i in 1 3 5 7; do {pm} untag localhost/whoami/api:1.0 localhost/p/x:$i || exit 1; done"
    );
    let fs_loop = format!(
        "mkdir -p {d} && for i in $(seq 1 8); do ln {w}/web:latest {d}/y:$i || exit 1; done; \
         for i in 1 3 5 7; do rm {d}/y:$i || exit 1; done",
        d = m.p("by-tag/localhost/f"),
        w = m.p("by-tag/localhost/whoami"),
    );
    let tp = std::thread::spawn(move || sh(&podman_loop));
    let tf = std::thread::spawn(move || sh(&fs_loop));
    let (op, of) = (tp.join().unwrap(), tf.join().unwrap());
    assert!(op.status.success(), "{op:?}");
    assert!(of.status.success(), "{of:?}");
    let (names, _, _) = cs.podman_images();
    let got: BTreeSet<String> = names
        .keys()
        .filter(|n| n.starts_with("localhost/p/") || n.starts_with("localhost/f/"))
        .cloned()
        .collect();
    let want: BTreeSet<String> = (2..=8)
        .step_by(2)
        .flat_map(|i| [format!("localhost/p/x:{i}"), format!("localhost/f/y:{i}")])
        .collect();
    assert_eq!(got, want);
    wait_for("the mount to show the same", || {
        tags_of(&m, "")
            .into_keys()
            .filter(|n| n.starts_with("localhost/p/") || n.starts_with("localhost/f/"))
            .collect::<BTreeSet<_>>()
            == want
    });
}

#[test]
fn containers_storage_missing_config_dangles_and_the_rest_shows() {
    let f = fixtures();
    let cs = CsStore::new(f);
    let web = f.id("WEB_V2");
    let hex = web.trim_start_matches("sha256:");
    // containers/storage's file name for the config's big-data key
    let key = ok(&format!("printf %s '{web}' | base64 -w0"));
    std::fs::remove_file(format!("{}/vfs-images/{hex}/={key}", cs.root())).unwrap();
    let m = Mount::new(&[&cs.root()]);
    let dangling = ok(&format!(
        "cd {} && find . -xtype l -printf '%P\\n'",
        m.p("by-tag")
    ));
    assert_eq!(dangling.trim(), "localhost/whoami/web:latest");
    assert!(resolve_ok(&m, &format!("by-id/{}", f.id("API"))));
    assert!(m.log().contains("is missing"), "{}", m.log());
}

#[test]
fn no_source_finds_the_users_containers_storage() {
    let f = fixtures();
    let home = tempfile::tempdir().unwrap();
    let store = home.path().join(".local/share/containers");
    std::fs::create_dir_all(&store).unwrap();
    ok(&format!(
        "cp -a '{}' '{}/storage'",
        f.path("cs"),
        store.display()
    ));
    let mp = home.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let o = imagefs()
        .arg("-o")
        .arg("ro")
        .arg(&mp)
        .env("HOME", home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let listed = std::fs::read_dir(&mp).map(|d| {
        d.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    });
    let _ = sh(&format!("umount '{}'", mp.display()));
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "found containers-storage:{}/storage",
            store.display()
        )),
        "{err}"
    );
    let listed = listed.unwrap();
    assert!(
        listed
            .iter()
            .any(|n| n == "by-id" || n.starts_with("storage")),
        "{listed:?}"
    );
}

/// What a mount shows, for comparing two mounts: every tag with its link count and
/// link target, and every image's extended attributes but its source.
fn shown(m: &Mount) -> (String, String) {
    let mp = m.mp();
    let tree = ok(&format!(
        "cd '{}' && find by-id by-tag \\( -type f -o -type l \\) -printf '%y %n %p %l\\n' | sort",
        mp.display()
    ));
    let xattrs = ok(&format!(
        "cd '{}/by-id' && getfattr -d -m '^user\\.image\\.' -- * | grep -v '^user.image.source='",
        mp.display()
    ));
    (tree, xattrs)
}

/// A write through the mount whose edit was, by the tokens the store's lock shows, the
/// store's only change is applied to what the mount shows without reading the store
/// again; what the mount then shows is what a fresh mount shows (the names history
/// included). A write that does more than its edit (the names of a manifest list,
/// shown on its instance too) reads the store.
#[test]
fn writes_are_applied_in_place_as_a_fresh_mount_shows_them() {
    let f = fixtures();
    let cs = CsStore::new(f);
    let m = Mount::with_env(&[&cs.root()], &[("RUST_LOG", "imagefs=debug")]);
    let w = m.p("by-tag/localhost/whoami");
    ok(&format!("mv {w}/multi:latest {w}/multi:moved"));
    assert_eq!(m.log().matches("applied=false").count(), 1, "{}", m.log());
    ok(&format!("ln {w}/web:latest {w}/web:inplace"));
    ok(&format!(
        "mkdir -p {d} && ln {v1} {d}/app:1",
        d = m.p("by-tag/localhost/newrepo/deep"),
        v1 = m.p(&format!("by-id/{}", f.id("WEB_V1")))
    ));
    ok(&format!("mv {w}/web:inplace {w}/web:moved"));
    ok(&format!("rm {w}/web:moved"));
    ok(&format!("rm {w}/api:1.0 && ln {w}/web:latest {w}/api:1.0"));
    let applied = m.log().matches("applied=true").count();
    assert_eq!(applied, 6, "{}", m.log());
    let fresh = Mount::new(&["-o", "rescan", &cs.root()]);
    let (tree, xattrs) = shown(&m);
    assert_eq!((&tree, &xattrs), (&shown(&fresh).0, &shown(&fresh).1));
    // and what was written is what podman reads
    assert!(
        tree.contains("by-tag/localhost/newrepo/deep/app:1"),
        "{tree}"
    );
    assert!(
        xattrs.contains("localhost/whoami/web:inplace"),
        "the history: {xattrs}"
    );
    let (names, _, _) = cs.podman_images();
    assert_eq!(names["localhost/newrepo/deep/app:1"], f.id("WEB_V1"));
    assert_eq!(names["localhost/whoami/api:1.0"], f.id("WEB_V2"));
    assert!(!names.contains_key("localhost/whoami/web:moved"));
}
