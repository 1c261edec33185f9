//! Trust (issue 14): a root daemon over stores that others can write. Each test swaps
//! a store file, after the mount too, for what a hostile writer of the store would put
//! there (a link out of the store, a FIFO, other bytes), and checks that nothing
//! outside the store is read, written or deleted, and that nothing blocks. These
//! inputs are built by hand from the real fixtures: no tool makes them.

use crate::common::*;

fn mkfifo(path: &Path) {
    ok(&format!("mkfifo '{}'", path.display()));
}

/// A file outside every store, root's alone, that no mount may show or change.
fn secret(dir: &Path) -> PathBuf {
    let p = dir.join("secret");
    std::fs::write(&p, "TOPSECRET root-only bytes\n".repeat(4000)).unwrap();
    ok(&format!("chmod 600 '{}'", p.display()));
    p
}

/// Runs imagefs to completion (it must not hang: 20 s at most) and returns its exit
/// status and stderr.
fn imagefs_outcome(args: &[&str], mountpoint: &Path) -> (i32, String) {
    let mut cmd = vec![
        "timeout".to_string(),
        "20".into(),
        BIN.into(),
        "-o".into(),
        "nokeep".into(),
    ];
    cmd.extend(args.iter().map(|a| a.to_string()));
    cmd.push(mountpoint.display().to_string());
    prerequisites();
    let o = Command::new(&cmd[0]).args(&cmd[1..]).output().unwrap();
    if is_mounted(mountpoint) {
        let _ = sh(&format!("umount '{}'", mountpoint.display()));
    }
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_config_swapped_for_a_link_or_other_bytes_is_never_served() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let secret = secret(dir.path());
    let lw = copy_fixture(f, "layout", dir.path());
    // a config over 1 MiB: read by range, never whole, so it is the pin that guards it
    let big = mangle("layout-big-config", &lw, Path::new("-"), Some("2"));
    let small = skopeo_id(&format!("oci:{lw}:localhost/whoami/api:1.0"));
    // no config bytes kept in imagefs's memory: every read goes to the store
    let m = Mount::new(&["-o", "cache_size=0", &lw]);
    // from imagefs, not from the page cache the kernel kept of the verified bytes
    let read = |id: &str| {
        ok("echo 1 > /proc/sys/vm/drop_caches");
        sh(&format!("cat {}", m.p(&format!("by-id/{id}"))))
    };
    let sum = |id: &str| {
        let o = ok(&format!("sha256sum < {}", m.p(&format!("by-id/{id}"))));
        format!("sha256:{}", o.split_whitespace().next().unwrap())
    };
    assert_eq!(sum(&big), big);
    assert_eq!(sum(&small), small);
    let blob = |id: &str| PathBuf::from(format!("{lw}/blobs/sha256/{}", &id[7..]));
    let aside = dir.path().join("aside");
    for id in [&big, &small] {
        std::fs::copy(blob(id), &aside).unwrap();
        // an absolute link, a relative one climbing out, and other bytes in place
        let relative = format!(
            "../../{}",
            pathdiff(&secret, blob(id).parent().unwrap().parent().unwrap())
        );
        for target in [secret.display().to_string(), relative] {
            std::fs::remove_file(blob(id)).unwrap();
            std::os::unix::fs::symlink(&target, blob(id)).unwrap();
            let o = read(id);
            assert!(
                !o.status.success(),
                "{id} served through a link to {target}"
            );
            assert!(
                !String::from_utf8_lossy(&o.stdout).contains("TOPSECRET"),
                "{id}: the secret was served"
            );
        }
        std::fs::remove_file(blob(id)).unwrap();
        let mut other = std::fs::read(&aside).unwrap();
        let last = other.len() - 2;
        other[last] ^= 0x20;
        std::fs::write(blob(id), &other).unwrap();
        assert!(!read(id).status.success(), "{id}: other bytes were served");
        // the same bytes back, as another file: verified again, and served
        std::fs::copy(&aside, blob(id)).unwrap();
        assert_eq!(sum(id), *id);
    }
    assert!(m.log().contains("leads outside the layout"), "{}", m.log());
}

/// The relative path from `base` to `path` (both absolute).
fn pathdiff(path: &Path, base: &Path) -> String {
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = vec!["..".to_string(); b.len() - common];
    out.extend(
        p[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    out.join("/")
}

#[test]
fn blobs_swapped_for_a_link_to_another_layout_are_never_deleted_through_it() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let mounted = copy_fixture(f, "layout", dir.path());
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = copy_fixture(f, "layout", &other_dir);
    let count = |d: &str| {
        std::fs::read_dir(format!("{d}/blobs/sha256"))
            .unwrap()
            .count()
    };
    let before = count(&other);
    let m = Mount::new(&[&mounted]);
    // web untagged: the README's cron line would delete it, and its blobs
    ok(&format!("rm {}", m.p("by-tag/localhost/whoami/web:latest")));
    std::fs::rename(
        format!("{mounted}/blobs"),
        dir.path().join("blobs-moved-away"),
    )
    .unwrap();
    std::os::unix::fs::symlink(format!("{other}/blobs"), format!("{mounted}/blobs")).unwrap();
    let _ = sh(&format!("find {} -links 1 -delete", m.p("by-id")));
    assert_eq!(
        count(&other),
        before,
        "blobs of the other layout were deleted"
    );
    for tag in [
        "localhost/whoami/web:latest",
        "localhost/whoami/api:1.0",
        "stable",
    ] {
        ok(&format!(
            "skopeo inspect --raw oci:{other}:{tag} >/dev/null"
        ));
    }
}

#[test]
fn a_lock_file_linked_out_of_the_store_is_never_written() {
    let f = fixtures();
    let cs = CsStore::new(f);
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    let original = "root's own file: not a lock\n".repeat(8);
    std::fs::write(&victim, &original).unwrap();
    let lock = format!("{}/vfs-images/images.lock", cs.root());
    // linked before the mount: the store is refused, with the reason
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let mp = dir.path().join("mnt");
    let (code, err) = imagefs_outcome(&[&cs.root()], &mp);
    assert_ne!(code, 0);
    assert!(err.contains("images.lock: is a symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), original);
    // linked after the mount: the lock imagefs holds is the store's own file; a write
    // through the mount never follows the new link
    std::fs::remove_file(&lock).unwrap();
    std::fs::write(&lock, b"").unwrap();
    let m = Mount::new(&[&cs.root()]);
    std::fs::rename(&lock, dir.path().join("lock-moved-away")).unwrap();
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let _ = sh(&format!(
        "ln {} {}",
        m.p("by-tag/localhost/whoami/api:1.0"),
        m.p("by-tag/localhost/whoami/api:linked")
    ));
    let images_json = format!("{}/vfs-images/images.json", cs.root());
    std::fs::remove_file(&images_json).unwrap();
    std::os::unix::fs::symlink(&victim, &images_json).unwrap();
    let _ = sh(&format!(
        "ln {} {}",
        m.p("by-tag/localhost/whoami/api:1.0"),
        m.p("by-tag/localhost/whoami/api:linked2")
    ));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), original);
}

#[test]
fn fifos_in_place_of_store_files_are_refused_without_blocking() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    // an archive that is a FIFO, named with each prefix and with none
    let fifo = dir.path().join("pipe.tar");
    mkfifo(&fifo);
    let fifo_s = fifo.display().to_string();
    for spec in [
        format!("docker-archive:{fifo_s}"),
        format!("oci-archive:{fifo_s}"),
        fifo_s.clone(),
    ] {
        let started = Instant::now();
        let (code, err) = imagefs_outcome(&[&spec], &mp);
        assert!(code != 0 && code != 124, "{spec}: exit {code}: {err}");
        assert!(
            err.contains("FIFO") || err.contains("regular file"),
            "{spec}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{spec}: blocked"
        );
    }
    // a layout whose index.json is a FIFO
    let lw = copy_fixture(f, "layout", dir.path());
    std::fs::remove_file(format!("{lw}/index.json")).unwrap();
    mkfifo(Path::new(&format!("{lw}/index.json")));
    let (code, err) = imagefs_outcome(&[&lw], &mp);
    assert!(code != 0 && code != 124, "layout: exit {code}: {err}");
    assert!(err.contains("is a FIFO"), "layout: {err}");
    // containers-storage whose images.json is a FIFO
    let cs = CsStore::new(f);
    let images_json = format!("{}/vfs-images/images.json", cs.root());
    std::fs::remove_file(&images_json).unwrap();
    mkfifo(Path::new(&images_json));
    let (code, err) = imagefs_outcome(&[&cs.root()], &mp);
    assert!(
        code != 0 && code != 124,
        "containers-storage: exit {code}: {err}"
    );
    assert!(err.contains("is a FIFO"), "containers-storage: {err}");
}

#[test]
fn an_archive_swapped_for_a_fifo_under_the_mount_blocks_nothing() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let archive = copy_fixture(f, "sample.tar", dir.path());
    let m = Mount::new(&[&archive]);
    let ids = ok(&format!("ls {}", m.p("by-id")));
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, &archive).unwrap();
    // the watcher looks (250 ms), and must not wait on the FIFO holding the lock
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    let o = sh(&format!(
        "timeout 10 ln {} {}",
        m.p("by-tag/localhost/whoami/api:1.0"),
        m.p("by-tag/localhost/whoami/api:fifo")
    ));
    assert_ne!(o.status.code(), Some(124), "ln blocked");
    assert!(!o.status.success(), "a write to a FIFO succeeded");
    assert!(started.elapsed() < Duration::from_secs(10));
    // what was shown stays readable, and the mount answers
    assert_eq!(ok(&format!("timeout 10 ls {}", m.p("by-id"))), ids);
    assert!(m.log().contains("FIFO"), "{}", m.log());
}

// ---------------------------------------------------------------------------------
// bounded memory and CPU on hostile input (section 4)

/// Runs `mount-tests/hostile.py CASE OUT [ARG]`; its stdout.
fn hostile(case: &str, out: &Path, arg: Option<&str>) -> String {
    prerequisites();
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{SCRIPTS}/hostile.py")).arg(case).arg(out);
    if let Some(a) = arg {
        cmd.arg(a);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "hostile.py {case}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The daemon's peak resident memory so far, in MiB.
fn peak_rss_mib(m: &Mount) -> u64 {
    let pid = m.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

/// Mounts `args`, timing the mount; the mount, how long it took.
fn timed_mount(args: &[&str]) -> (Mount, Duration) {
    let started = Instant::now();
    let m = Mount::new(args);
    (m, started.elapsed())
}

#[test]
fn huge_extension_headers_are_refused_on_their_size() {
    let dir = tempfile::tempdir().unwrap();
    for (case, arg) in [
        ("pax-huge", "1"),
        ("longname-huge", "1"),
        ("pax-huge-gz", "32"),
    ] {
        let out = dir.path().join(format!("{case}.tar"));
        hostile(case, &out, Some(arg));
        let (m, took) = timed_mount(&[out.to_str().unwrap()]);
        assert!(
            took < Duration::from_secs(20),
            "{case}: mount took {took:?}"
        );
        // what precedes the header is shown; the header is named with its limit
        assert!(m.mp().join("by-tag/localhost/first:1").exists(), "{case}");
        assert!(
            m.log().contains("more than the 1048576 allowed"),
            "{case}: {}",
            m.log()
        );
        let rss = peak_rss_mib(&m);
        assert!(rss < 64, "{case}: peak RSS {rss} MiB");
    }
    // nothing big was kept beside the compressed one (its walk had a problem)
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains("imagefs-index") {
            panic!("an index was kept for a damaged archive: {name}");
        }
    }
}

#[test]
fn members_beyond_the_limit_are_not_indexed_or_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("many.tar.gz");
    // 600,000 empty members: past the default 500,000
    hostile("many-members-gz", &out, Some("600000"));
    let (m, took) = timed_mount(&[out.to_str().unwrap()]);
    assert!(took < Duration::from_secs(60), "mount took {took:?}");
    assert!(m.mp().join("by-tag/localhost/first:1").exists());
    assert!(m.log().contains("more than 500000 members"), "{}", m.log());
    let rss = peak_rss_mib(&m);
    assert!(rss < 160, "peak RSS {rss} MiB");
    drop(m);
    // and a store owner's own bound
    let (m, _) = timed_mount(&["-o", "max_members=1000", out.to_str().unwrap()]);
    assert!(m.log().contains("more than 1000 members"), "{}", m.log());
    let rss = peak_rss_mib(&m);
    assert!(rss < 64, "peak RSS {rss} MiB with max_members=1000");
}

#[test]
fn a_manifest_of_a_million_entries_is_cut_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("million.tar");
    hostile("manifest-million", &out, Some("1000000"));
    let (m, took) = timed_mount(&[out.to_str().unwrap()]);
    assert!(took < Duration::from_secs(30), "mount took {took:?}");
    assert!(m.mp().join("by-tag/localhost/first:1").exists());
    assert!(
        m.log()
            .contains("1000000 image records, more than the 500000 allowed"),
        "{}",
        m.log()
    );
    // about the manifest's own 19 MiB, and not 20 times that
    let rss = peak_rss_mib(&m);
    assert!(rss < 96, "peak RSS {rss} MiB");
}

/// One config named by 100,000 manifest.json entries, one manifest named by 20,000
/// index entries: each read and hashed once, not once per name.
#[test]
fn a_blob_named_many_times_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    for (case, out, names) in [
        ("config-many-entries", "many.tar", 100_000),
        ("layout-many-entries", "layout", 20_000),
    ] {
        let out = dir.path().join(out);
        let id = hostile(case, &out, Some(&names.to_string()));
        let (m, took) = timed_mount(&[out.to_str().unwrap()]);
        assert!(
            took < Duration::from_secs(20),
            "{case}: mount took {took:?}"
        );
        let links = ok(&format!("stat -c %h {}", m.p(&format!("by-id/{id}"))));
        assert_eq!(links.trim(), (names + 1).to_string(), "{case}");
    }
}

#[test]
fn a_config_over_the_limit_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("huge-config.tar");
    // a 100 GiB config (a hole on disk)
    hostile("big-sparse-config", &out, Some("100"));
    let (m, took) = timed_mount(&[out.to_str().unwrap()]);
    assert!(took < Duration::from_secs(10), "mount took {took:?}");
    let dangling = ok(&format!("find {} -xtype l", m.p("by-tag")));
    assert!(dangling.contains("localhost/huge:1"), "{dangling}");
    assert!(m.log().contains("max_config_size"), "{}", m.log());
}

#[test]
fn store_files_that_are_devices_are_refused() {
    let f = fixtures();
    // containers-storage: a manifest big-data file and layers.json as /dev/zero
    let cs = CsStore::new(f);
    let images = format!("{}/vfs-images", cs.root());
    let manifest = ok(&format!("ls {images}/*/manifest | head -1"));
    let dev = |p: &str| {
        std::fs::remove_file(p).unwrap();
        ok(&format!("mknod '{p}' c 1 5"));
    };
    dev(manifest.trim());
    dev(&format!("{}/vfs-layers/layers.json", cs.root()));
    let m = Mount::new(&[&cs.root()]);
    assert!(m.mp().join("by-tag/localhost/whoami/api:1.0").exists());
    assert!(m.log().contains("is a device"), "{}", m.log());
    let rss = peak_rss_mib(&m);
    assert!(rss < 64, "peak RSS {rss} MiB");
    drop(m);
    // a Docker root whose layer size file is /dev/zero
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("docker");
    hostile("docker-root-devices", &root, None);
    let m = Mount::new(&[&format!("docker-root:{}", root.display())]);
    assert!(m.mp().join("by-tag/localhost/dev:1").exists());
    let rss = peak_rss_mib(&m);
    assert!(rss < 64, "peak RSS {rss} MiB");
}

#[test]
fn a_meta_db_whose_pages_repeat_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("containerd");
    hostile("meta-shared", &root, Some("10"));
    let started = Instant::now();
    let (code, err) = imagefs_outcome(
        &[&format!("containerd:{}#default", root.display())],
        &dir.path().join("mnt"),
    );
    assert!(code != 0 && code != 124, "exit {code}: {err}");
    assert!(err.contains("twice"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------
// no panic, no abort (section 5)

#[test]
fn a_deep_index_chain_never_overflows_the_stack_on_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let lw = dir.path().join("layout");
    let a = hostile("index-chain", &lw, Some("100000"));
    let lw = lw.display().to_string();
    let m = Mount::new(&[&lw]);
    // every write walks the index (what a delete may remove): all of it, iteratively
    ok(&format!(
        "ln {} {}",
        m.p(&format!("by-id/{a}")),
        m.p("by-tag/localhost/a:2")
    ));
    ok(&format!("rm {}", m.p("by-tag/localhost/b:1")));
    let _ = sh(&format!("find {} -links 1 -delete", m.p("by-id")));
    // the daemon is alive, and what it wrote is what skopeo reads
    assert!(m.mp().join("by-tag/localhost/a:2").exists());
    assert_eq!(skopeo_id(&format!("oci:{lw}:localhost/a:2")), a);
    assert!(skopeo_fails(&format!("oci:{lw}:localhost/b:1")));
}

/// podman 4.3 tags by writing back a names list it read before taking the store's
/// lock, dropping a name imagefs added meanwhile to the same image; imagefs gives
/// such a name back (containers_storage::stale_drops). Ten rounds of 30 podman tags
/// and 30 links through the mount, at once, on one image: all 60 names stay.
#[test]
fn podman_tags_and_links_on_one_image_lose_no_name() {
    let f = fixtures();
    let cs = CsStore::new(f);
    let pm = cs.podman();
    let m = Mount::new(&[&cs.root()]);
    let api = m.p("by-tag/localhost/whoami/api:1.0");
    ok(&format!("mkdir -p {}", m.p("by-tag/localhost/f")));
    for round in 0..10 {
        let podman_loop = format!(
            "for i in $(seq 1 30); do {pm} tag localhost/whoami/api:1.0 localhost/p/x:{round}-$i || exit 1; done"
        );
        let fs_loop = format!(
            "for i in $(seq 1 30); do ln {api} {d}/y:{round}-$i || exit 1; done",
            d = m.p("by-tag/localhost/f"),
        );
        let tp = std::thread::spawn(move || sh(&podman_loop));
        let tf = std::thread::spawn(move || sh(&fs_loop));
        let (op, of) = (tp.join().unwrap(), tf.join().unwrap());
        assert!(op.status.success(), "{op:?}");
        assert!(of.status.success(), "{of:?}");
        let want: BTreeSet<String> = (1..=30)
            .flat_map(|i| {
                [
                    format!("localhost/p/x:{round}-{i}"),
                    format!("localhost/f/y:{round}-{i}"),
                ]
            })
            .collect();
        let this_round = |names: BTreeSet<String>| {
            names
                .into_iter()
                .filter(|n| n.contains(&format!(":{round}-")))
                .collect::<BTreeSet<_>>()
        };
        // the watcher sees podman's last write within a tick, and answers it
        let mut got = BTreeSet::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            got = this_round(lines(&ok(&format!(
                "{pm} images --format '{{{{.Repository}}}}:{{{{.Tag}}}}'"
            ))));
            if got == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(got, want, "round {round}: podman images");
        wait_for("the mount to show the same", || {
            this_round(tags_of(&m, "").into_keys().collect()) == want
        });
    }
}

/// The README's cron line on a live node: an untagged image a container uses is never
/// deleted (EBUSY, the container named in the log), as `docker rmi` refuses.
#[test]
fn images_in_use_by_containers_are_never_deleted() {
    let f = fixtures();
    // Docker: dockerd's own conflict answer
    let d = Dockerd::start(tempfile::tempdir().unwrap());
    let docker = d.docker();
    ok(&format!("{docker} load -q -i '{}'", f.path("sample.tar")));
    let web_v1 = f.id("WEB_V1");
    ok(&format!(
        "{docker} create --name user-of-v1 --entrypoint /app/version {web_v1} >/dev/null"
    ));
    let m = Mount::new(&[
        "-o",
        &format!("docker_host={}", d.host()),
        &format!("docker-root:{}", d.root()),
    ]);
    let o = sh(&format!("find {} -links 1 -delete", m.p("by-id")));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Device or resource busy"),
        "{o:?}"
    );
    assert!(
        d.images().1.contains(web_v1),
        "dockerd deleted an image in use"
    );
    assert!(m.log().contains("being used by"), "{}", m.log());
    drop(m);
    drop(d);

    // containerd: a container made from web:latest, whose tag then goes
    let mut c = Containerd::start();
    let k8s = c.ctr("k8s.io");
    ok(&format!(
        "{k8s} images import --snapshotter native {} >/dev/null",
        f.path("sample.tar")
    ));
    ok(&format!(
        "{k8s} containers create --snapshotter native localhost/whoami/web:latest user-of-web >/dev/null"
    ));
    let address = format!("containerd_address={}/sock", c.dir.path().display());
    let m = Mount::new(&["-o", &address, &format!("containerd:{}#k8s.io", c.root())]);
    let web = f.id("WEB_V2");
    ok(&format!("rm {}", m.p("by-tag/localhost/whoami/web:latest")));
    let o = sh(&format!("rm {}", m.p(&format!("by-id/{web}"))));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Device or resource busy"),
        "{o:?}"
    );
    assert!(
        m.log().contains("used by container user-of-web"),
        "{}",
        m.log()
    );
    assert!(
        lines(&ok(&format!("{k8s} images ls -q"))).contains(web),
        "the image's records were deleted"
    );
    // with the container gone, the same delete goes through
    ok(&format!("{k8s} containers rm user-of-web"));
    ok(&format!("rm {}", m.p(&format!("by-id/{web}"))));
    assert!(!lines(&ok(&format!("{k8s} images ls -q"))).contains(web));
    let _ = c.child.take().map(|mut ch| {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(ch.id() as i32, libc::SIGTERM) };
        ch.wait()
    });
}

// ---------------------------------------------------------------------------------
// smaller defects (section 6)

/// A tag an archive gives two images names the last, as `docker load` leaves it.
#[test]
fn a_tag_given_twice_names_what_docker_load_names() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let dup = dir.path().join("dup.tar");
    mangle(
        "duplicate-tag",
        &f.path("sample.tar"),
        &dup,
        Some("localhost/dup:1"),
    );
    let d = Dockerd::start(tempfile::tempdir().unwrap());
    ok(&format!("{} load -q -i '{}'", d.docker(), dup.display()));
    let loaded = ok(&format!(
        "{} image inspect --format '{{{{.Id}}}}' localhost/dup:1",
        d.docker()
    ));
    let m = Mount::new(&[dup.to_str().unwrap()]);
    assert_eq!(tags_of(&m, "")["localhost/dup:1"], loaded.trim());
    assert!(m.log().contains("shown for the last"), "{}", m.log());
}

/// The one line a failed mount prints shows control characters escaped: a name with
/// a terminal escape in it cannot recolour or rewrite the user's terminal.
#[test]
fn failures_never_print_raw_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("\u{1b}[2J\u{1b}[31mpwned\u{7}.tar");
    let (code, err) = imagefs_outcome(&[evil.to_str().unwrap()], &dir.path().join("mnt"));
    assert_ne!(code, 0);
    assert!(err.contains("pwned"), "{err}");
    assert!(
        !err.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters: {err:?}"
    );
    assert!(err.contains("\\u{1b}"), "{err}");
}

// ---------------------------------------------------------------------------------
// allow_other: each user may do through the mount what the store lets them (section 2)

const NOBODY: u32 = 65534;
/// A group no one else is in, for the daemon sockets' users.
const SOCKET_GROUP: u32 = 4242;

/// Runs `cmd` as nobody (uid and gid 65534), in `groups` only.
fn as_nobody(cmd: &str, groups: &[u32]) -> Output {
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups={}",
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    sh(&format!(
        "setpriv --reuid={NOBODY} --regid={NOBODY} {groups} -- bash -c {}",
        shell_quote(cmd)
    ))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A shared mount, reachable by every user (its directory is searchable).
fn shared_mount(args: &[&str]) -> Mount {
    let mut all = vec!["-o", "allow_other"];
    all.extend_from_slice(args);
    let m = Mount::new(&all);
    ok(&format!("chmod 711 '{}'", m.dir.path().display()));
    m
}

/// Refused for permission: EACCES, or EPERM where the kernel refuses a hard link to a
/// file the user may not write (protected_hardlinks).
fn denied(o: &Output) -> bool {
    let err = String::from_utf8_lossy(&o.stderr);
    !o.status.success()
        && (err.contains("Permission denied") || err.contains("Operation not permitted"))
}

/// What nobody may do in one store's mount: (read a config, tag).
fn nobody_may(m: &Mount, id: &str, from: &str, to: &str, groups: &[u32]) -> (bool, bool) {
    let read = as_nobody(
        &format!("cat {} >/dev/null", m.p(&format!("by-id/{id}"))),
        groups,
    );
    let tag = as_nobody(&format!("ln {} {}", m.p(from), m.p(to)), groups);
    for o in [&read, &tag] {
        assert!(
            o.status.success() || denied(o),
            "not a permission answer: {o:?}"
        );
    }
    (read.status.success(), tag.status.success())
}

/// Mounts `args` shared and checks what nobody (in `groups`) may do: (read, tag).
fn expect_nobody(
    args: &[&str],
    id: &str,
    tag: (&str, &str),
    groups: &[u32],
    want: (bool, bool),
    what: &str,
) {
    let m = shared_mount(args);
    assert_eq!(nobody_may(&m, id, tag.0, tag.1, groups), want, "{what}");
    // root, the mounting user, may still do everything
    if want.1 {
        ok(&format!("rm {}", m.p(tag.1)));
    }
}

#[test]
fn a_shared_mount_lets_each_user_do_what_the_store_lets_them() {
    let f = fixtures();
    let api = f.id("API");
    let api_tag = (
        "by-tag/localhost/whoami/api:1.0",
        "by-tag/localhost/whoami/api:shared",
    );
    let dir = tempfile::tempdir().unwrap();
    ok(&format!("chmod 755 '{}'", dir.path().display()));
    // docker-archive and oci-archive: the archive file's owner and modes
    for name in ["sample.tar", "web.oci.tar"] {
        let archive = copy_fixture(f, name, dir.path());
        let (id, tag) = if name == "sample.tar" {
            (api.to_string(), api_tag)
        } else {
            (
                skopeo_id(&format!("oci-archive:{archive}")),
                (
                    "by-tag/localhost/whoami/web:latest",
                    "by-tag/localhost/whoami/web:shared",
                ),
            )
        };
        let before = ok(&format!("sha256sum < '{archive}'"));
        for (how, want, what) in [
            (
                "chown 0:0 {a} && chmod 644 {a}",
                (true, false),
                "0644, root's",
            ),
            ("chmod 600 {a}", (false, false), "0600, root's"),
            ("chown 65534:65534 {a}", (true, true), "nobody's own"),
        ] {
            ok(&how.replace("{a}", &format!("'{archive}'")));
            if !want.1 {
                // what nobody may not change stays as it was
                assert_eq!(ok(&format!("sha256sum < '{archive}'")), before, "{name}");
            }
            expect_nobody(&[&archive], &id, tag, &[], want, &format!("{name} {what}"));
        }
    }
    // an OCI layout: the layout directory's
    let lw = copy_fixture(f, "layout", dir.path());
    let lid = skopeo_id(&format!("oci:{lw}:localhost/whoami/api:1.0"));
    expect_nobody(&[&lw], &lid, api_tag, &[], (true, false), "layout, root's");
    ok(&format!("chown -R {NOBODY}:{NOBODY} '{lw}'"));
    expect_nobody(&[&lw], &lid, api_tag, &[], (true, true), "layout, nobody's");
    // containers-storage: the images directory's; configs their big-data files'
    let cs = CsStore::new(f);
    ok(&format!("chmod 755 '{}'", cs.dir.path().display()));
    let m = shared_mount(&[&cs.root()]);
    let (_, tagged) = nobody_may(&m, api, api_tag.0, api_tag.1, &[]);
    assert!(!tagged, "containers-storage root's: nobody tagged");
    drop(m);
    ok(&format!("chown -R {NOBODY}:{NOBODY} '{}'", cs.root()));
    expect_nobody(
        &[&cs.root()],
        api,
        api_tag,
        &[],
        (true, true),
        "containers-storage, nobody's",
    );
    // docker-root: whoever may use dockerd's socket
    let d = Dockerd::start(tempfile::tempdir().unwrap());
    ok(&format!(
        "{} load -q -i '{}'",
        d.docker(),
        f.path("sample.tar")
    ));
    let socket = d.host().trim_start_matches("unix://").to_string();
    ok(&format!(
        "chown 0:{SOCKET_GROUP} '{socket}' && chmod 660 '{socket}'"
    ));
    ok(&format!(
        "chmod 711 '{}'",
        Path::new(&socket).parent().unwrap().display()
    ));
    let host = format!("docker_host={}", d.host());
    let root = format!("docker-root:{}", d.root());
    let args = ["-o", &host, &root];
    expect_nobody(
        &args,
        api,
        api_tag,
        &[],
        (false, false),
        "docker, not in the socket's group",
    );
    let m = shared_mount(&args);
    assert_eq!(
        nobody_may(&m, api, api_tag.0, api_tag.1, &[SOCKET_GROUP]),
        (true, true),
        "docker, in the socket's group"
    );
    assert!(d.images().0.contains_key("localhost/whoami/api:shared"));
    drop(m);
    drop(d);
    // containerd: whoever may use containerd's socket
    let mut c = Containerd::start();
    let k8s = c.ctr("k8s.io");
    ok(&format!(
        "{k8s} images import --snapshotter native {} >/dev/null",
        f.path("sample.tar")
    ));
    let socket = format!("{}/sock", c.dir.path().display());
    ok(&format!(
        "chown 0:{SOCKET_GROUP} '{socket}' && chmod 660 '{socket}'"
    ));
    ok(&format!("chmod 711 '{}'", c.dir.path().display()));
    let address = format!("containerd_address={socket}");
    let root = format!("containerd:{}#k8s.io", c.root());
    let args = ["-o", &address, &root];
    expect_nobody(
        &args,
        api,
        api_tag,
        &[],
        (false, false),
        "containerd, not in the group",
    );
    let m = shared_mount(&args);
    assert_eq!(
        nobody_may(&m, api, api_tag.0, api_tag.1, &[SOCKET_GROUP]),
        (true, true),
        "containerd, in the socket's group"
    );
    assert!(lines(&ok(&format!("{k8s} images ls -q"))).contains("localhost/whoami/api:shared"));
    let _ = c.child.take().map(|mut ch| {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(ch.id() as i32, libc::SIGTERM) };
        ch.wait()
    });
}

// ---------------------------------------------------------------------------------
// kept catalogs and indexes (section 3)

/// A catalog kept in a directory another user can write is not used: under `sudo -E`
/// a forged one would decide what root's mount serves.
#[test]
fn kept_files_are_used_only_from_a_directory_of_the_user_alone() {
    const REUSED: &str = "store read from the catalog kept by an earlier mount";
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let store = copy_fixture(f, "layout", dir.path());
    let cache = dir.path().join("cache");
    let env = [("XDG_CACHE_HOME", cache.to_str().unwrap())];
    let mut first = Mount::with_env(&[&store], &env);
    first.stop();
    let second = Mount::with_env(&[&store], &env);
    assert!(second.log().contains(REUSED), "{}", second.log());
    drop(second);
    let kept = cache.join("imagefs");
    for (what, how) in [
        (
            "another user's directory",
            format!("chown -R {NOBODY}:{NOBODY} '{}'", kept.display()),
        ),
        (
            "a directory others can write",
            format!("chown -R 0:0 '{0}' && chmod 777 '{0}'", kept.display()),
        ),
        (
            "another user's files",
            format!(
                "chmod 700 '{0}' && chown {NOBODY} '{0}'/*.catalog",
                kept.display()
            ),
        ),
    ] {
        ok(&how);
        let m = Mount::with_env(&[&store], &env);
        assert!(
            !m.log().contains(REUSED),
            "{what}: the kept catalog was used"
        );
        drop(m);
    }
    // an index beside a compressed archive: only this user's or the archive owner's
    let gz = dir.path().join("sample.tar.gz");
    ok(&format!(
        "cp '{}' '{}'",
        f.path("sample.tar.gz"),
        gz.display()
    ));
    let m = Mount::with_env(&["-o", "nokeep", gz.to_str().unwrap()], &env);
    drop(m);
    let index = dir.path().join("sample.tar.gz.imagefs-index");
    assert!(index.exists());
    ok(&format!("chown {NOBODY} '{}'", index.display()));
    let m = Mount::with_env(&["-o", "nokeep", gz.to_str().unwrap()], &env);
    assert!(
        m.log().contains("indexing the compressed archive"),
        "{}",
        m.log()
    );
}
