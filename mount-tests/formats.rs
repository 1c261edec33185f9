//! Formats that other projects' test fixtures hold and that `docker load` and skopeo
//! read: each derived at test time from our own fixtures (compressed, keys rewritten,
//! members renamed, copied by skopeo), and compared with what `docker load` and
//! `skopeo inspect` say for the same input.

use crate::common::*;

/// xz and bzip2 archives (skopeo's own test archive is xz), one stream or several,
/// read as the plain archive is, and as `docker load` and skopeo read them; a
/// compression that is not read is named.
#[test]
fn xz_and_bzip2_archives_read_as_docker_load_and_skopeo_read_them() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let sample = f.path("sample.tar");
    ok(&format!(
        "cd '{d}' && cp '{sample}' s.tar && xz -k -T1 s.tar && bzip2 -k s.tar &&
         half=$(( $(stat -c %s s.tar) / 2 )) &&
         head -c $half s.tar | xz > multi.tar.xz && tail -c +$((half + 1)) s.tar | xz >> multi.tar.xz &&
         head -c $half s.tar | bzip2 > multi.tar.bz2 && tail -c +$((half + 1)) s.tar | bzip2 >> multi.tar.bz2"
    ));
    let m = Mount::new(&[
        &format!("plain={sample}"),
        &format!("xz={d}/s.tar.xz"),
        &format!("bz={d}/s.tar.bz2"),
        &format!("multixz={d}/multi.tar.xz"),
        &format!("multibz={d}/multi.tar.bz2"),
    ]);
    let plain = tags_of(&m, "plain/");
    assert!(plain.len() > 4, "{plain:?}");
    for store in ["xz", "bz", "multixz", "multibz"] {
        ok(&format!("diff -r {} {}", m.p("plain"), m.p(store)));
        assert_eq!(tags_of(&m, &format!("{store}/")), plain, "{}", m.log());
    }
    // skopeo, on the xz and bzip2 files themselves
    for file in ["s.tar.xz", "s.tar.bz2"] {
        let web = skopeo_id(&format!(
            "docker-archive:{d}/{file}:localhost/whoami/web:latest"
        ));
        assert_eq!(plain["localhost/whoami/web:latest"], web, "{file}");
    }
    // docker load, of the xz file: the same tags and the same images
    let docker = Dockerd::start(tempfile::tempdir().unwrap());
    ok(&format!("{} load -q -i '{d}/s.tar.xz'", docker.docker()));
    let (tags, ids) = docker.images();
    assert_eq!(tags_of(&m, "xz/"), tags);
    assert_eq!(lines(&ok(&format!("ls {}", m.p("xz/by-id")))), ids);
    drop(m);

    // an lz4 archive is named for what it is
    ok(&format!(
        "cd '{d}' && printf '\\x04\\x22\\x4d\\x18' > s.tar.lz4 && head -c 4096 s.tar >> s.tar.lz4 && mkdir mnt"
    ));
    let o = sh(&format!(
        "timeout 30 {BIN} -f {d}/s.tar.lz4 {d}/mnt 2>&1; true"
    ));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("lz4-compressed") && said.contains("xz or bzip2"),
        "{said}"
    );
}

/// One image store per derived archive, each compared with `docker load` of the same
/// file: tags and image IDs as `docker images` lists them.
fn as_docker_loads_it(archive: &Path) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let docker = Dockerd::start(tempfile::tempdir().unwrap());
    ok(&format!(
        "{} load -q -i '{}'",
        docker.docker(),
        archive.display()
    ));
    docker.images()
}

/// jib's manifest.json keys (`config`, `repoTags`, `layers`), read as Docker reads
/// them; a config member named for another hash, shown under its bytes' hash as
/// `docker load` shows it, with the misnamed member said; members named `./NAME`
/// (`tar -C dir -cf x .`) read as plain names, with no warning.
#[test]
fn archives_docker_load_reads_are_read_as_it_reads_them() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let sample = f.path("sample.tar");
    let jib = dir.path().join("jib.tar");
    mangle("lower-keys", &sample, &jib, None);
    let misnamed = dir.path().join("misnamed.tar");
    let member = mangle(
        "misname-config",
        &sample,
        &misnamed,
        Some("localhost/whoami/api:1.0"),
    );
    let dotted = dir.path().join("dotted.tar");
    mangle("dot-prefix", &sample, &dotted, None);
    let m = Mount::new(&[
        &format!("plain={sample}"),
        &format!("jib={}", jib.display()),
        &format!("misnamed={}", misnamed.display()),
        &format!("dotted={}", dotted.display()),
    ]);
    let plain = tags_of(&m, "plain/");
    let log = m.log();

    // jib's keys: what docker load and skopeo read, and the plain archive's tree
    let (tags, ids) = as_docker_loads_it(&jib);
    assert_eq!(tags_of(&m, "jib/"), tags, "{log}");
    assert_eq!(lines(&ok(&format!("ls {}", m.p("jib/by-id")))), ids);
    assert_eq!(
        skopeo_id(&format!(
            "docker-archive:{}:localhost/whoami/web:latest",
            jib.display()
        )),
        plain["localhost/whoami/web:latest"]
    );
    ok(&format!("diff -r {} {}", m.p("plain"), m.p("jib")));

    // the misnamed config: under the hash of its bytes, as docker load shows it
    let (tags, ids) = as_docker_loads_it(&misnamed);
    assert_eq!(tags_of(&m, "misnamed/"), tags, "{log}");
    assert_eq!(lines(&ok(&format!("ls {}", m.p("misnamed/by-id")))), ids);
    assert_eq!(
        tags["localhost/whoami/api:1.0"],
        plain["localhost/whoami/api:1.0"]
    );
    let dangling = ok(&format!("find {} -xtype l", m.p("misnamed/by-tag")));
    assert!(dangling.is_empty(), "{dangling}");
    assert!(
        log.contains(member.trim()) && log.contains("its bytes hash to"),
        "{log}"
    );

    // ./-prefixed members: the same tree, and nothing said about them
    ok(&format!("diff -r {} {}", m.p("plain"), m.p("dotted")));
    assert_eq!(tags_of(&m, "dotted/"), plain);
    assert!(!log.contains("unsafe"), "{log}");
    let (tags, _) = as_docker_loads_it(&dotted);
    assert_eq!(tags_of(&m, "dotted/"), tags);
}

/// The host's architecture as OCI names it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no fixture platform for {other}"),
    }
}

/// The platform rule: an index with no entry for the platform dangles (never its
/// first entry in the host's place), says which platforms it has, and
/// `-o platform=` picks another, as skopeo's `--override-arch` does. What a tag that
/// cannot be followed points at says what is missing, and an artifact's entry is
/// passed over.
#[test]
fn an_index_without_the_platform_dangles_and_platform_picks_another() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("multi");
    ok(&format!(
        "cp -r '{}' '{}'",
        f.path("multi"),
        layout.display()
    ));
    let host = host_arch();
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    let index = mangle(
        "layout-drop-arch",
        layout.to_str().unwrap(),
        &layout,
        Some(host),
    );
    let index = index.trim();
    let l = layout.display();
    // skopeo refuses it for this machine, and reads the other platform when asked
    let o = sh(&format!(
        "skopeo inspect --raw --config oci:{l}:localhost/whoami/multi:latest"
    ));
    assert!(!o.status.success(), "skopeo read it: {o:?}");
    let arm = ok(&format!(
        "skopeo --override-arch {other} inspect --raw --config oci:{l}:localhost/whoami/multi:latest | sha256sum"
    ));
    let arm = format!("sha256:{}", arm.split_whitespace().next().unwrap());

    let m = Mount::new(&[&layout.display().to_string()]);
    let by_tag = m.mp().join("by-tag/localhost/whoami");
    let target = |name: &str| {
        std::fs::read_link(by_tag.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", m.log()))
            .display()
            .to_string()
    };
    assert_eq!(
        target("multi:latest"),
        format!("../../../by-id/no-linux-{host}:{index}"),
        "{}",
        m.log()
    );
    assert_eq!(
        target("gone:1"),
        format!("../../../by-id/missing-manifest:sha256:{}", "e".repeat(64))
    );
    assert!(
        !by_tag.join("sig:1").exists() && std::fs::symlink_metadata(by_tag.join("sig:1")).is_err()
    );
    let dangling = lines(&ok(&format!("cd {} && find . -xtype l", m.p("by-tag"))));
    assert_eq!(
        dangling,
        lines("./localhost/whoami/gone:1\n./localhost/whoami/multi:latest")
    );
    assert!(
        m.log().contains(&format!(
            "has no manifest for linux/{host} (it has linux/{other}"
        )),
        "{}",
        m.log()
    );
    drop(m);

    let m = Mount::new(&[
        "-o",
        &format!("platform=linux/{other}"),
        &layout.display().to_string(),
    ]);
    assert_eq!(
        tags_of(&m, "")["localhost/whoami/multi:latest"],
        arm,
        "{}",
        m.log()
    );
    let said = sh(&format!("{BIN} -o platform=Linux {l} /nonexistent 2>&1"));
    assert!(!said.status.success());
    assert!(
        String::from_utf8_lossy(&said.stdout).contains("OS/ARCH"),
        "{said:?}"
    );
}

/// skopeo's `dir:` transport, one image or (`--all`) an index with its instances:
/// found without a prefix, its image the one `skopeo inspect` and `podman pull dir:`
/// read, untagged as podman leaves it; writes are refused.
#[test]
fn skopeo_dir_copies_are_read_as_skopeo_and_podman_read_them() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let sample = f.path("sample.tar");
    ok(&format!(
        "skopeo copy -q docker-archive:{sample}:localhost/whoami/web:latest dir:{d}/web &&
         skopeo copy -q --all oci:{}:localhost/whoami/multi:latest dir:{d}/multi",
        f.path("multi")
    ));
    let m = Mount::new(&[&format!("web={d}/web"), &format!("multi=dir:{d}/multi")]);
    for store in ["web", "multi"] {
        let want = skopeo_id(&format!("dir:{d}/{store}"));
        assert_eq!(
            lines(&ok(&format!("ls {}", m.p(&format!("{store}/by-id"))))),
            lines(&want),
            "{}",
            m.log()
        );
        // untagged, as podman pull dir: leaves it
        assert!(ok(&format!("ls {}", m.p(&format!("{store}/by-tag")))).is_empty());
        let links = ok(&format!(
            "stat -c %h {}",
            m.p(&format!("{store}/by-id/{want}"))
        ));
        assert_eq!(links.trim(), "1");
    }
    let web_id = skopeo_id(&format!("dir:{d}/web"));
    assert_eq!(web_id, f.id("WEB_V2"));
    // the index's digest (what a pull by digest names) and its other platforms
    let digest = ok(&format!(
        "getfattr --only-values -n user.image.digest {}/by-id/*",
        m.p("multi")
    ));
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&format!("skopeo inspect dir:{d}/multi"))).unwrap();
    assert_eq!(digest, inspect["Digest"].as_str().unwrap());
    assert!(
        ok(&format!(
            "getfattr --only-values -n user.image.platforms {}/by-id/*",
            m.p("multi")
        ))
        .contains("arm64")
    );
    // podman pull dir: gives the same image, and no name
    let store = tempfile::tempdir().unwrap();
    let pm = podman(store.path());
    ok(&format!("{pm} pull -q dir:{d}/web >/dev/null"));
    let listed = ok(&format!(
        "{pm} images --no-trunc --format '{{{{.Repository}}}}:{{{{.Tag}}}} {{{{.ID}}}}'"
    ));
    assert_eq!(listed.trim(), format!("<none>:<none> {web_id}"));
    // a dir: keeps no name: tagging is refused
    let o = sh(&format!(
        "ln {} {}/localhost/x:1",
        m.p(&format!("web/by-id/{web_id}")),
        m.p("web/by-tag")
    ));
    assert!(!o.status.success(), "{o:?}");
}

/// `-o ro` writes nothing beside the store: a compressed archive's index goes to
/// the cache directory (and a writable mount of the user's own directory keeps it
/// beside the archive, as before).
#[test]
fn a_read_only_mount_writes_nothing_beside_the_store() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("s.tar.gz");
    std::fs::copy(f.path("sample.tar.gz"), &gz).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().display().to_string();
    let m = Mount::with_env(
        &["-o", "ro", &gz.display().to_string()],
        &[("XDG_CACHE_HOME", &c)],
    );
    assert!(tags_of(&m, "").len() > 4);
    drop(m);
    let beside: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside, ["s.tar.gz"], "written beside the store under ro");
    let kept = ok(&format!("find '{c}/imagefs' -type f"));
    assert!(!kept.trim().is_empty(), "the index went nowhere");
    // a writable mount with an empty cache indexes it again, beside it
    let m = Mount::new(&[&gz.display().to_string()]);
    drop(m);
    assert!(dir.path().join("s.tar.gz.imagefs-index").exists());
}
