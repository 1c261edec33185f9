//! Kept files: catalogs and compressed indexes a mount keeps for the next one.

use crate::common::*;

#[test]
fn compressed_archive_index_is_kept_and_the_next_mount_decompresses_nothing() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // 32 MiB of incompressible layer in front of the sample's members.
    ok(&format!(
        "cd {d} && head -c 32M /dev/urandom > big.layer && tar cf a.tar big.layer && \
         tar Af a.tar '{}' && rm big.layer && gzip -1 a.tar",
        f.path("sample.tar")
    ));
    let gz = format!("{d}/a.tar.gz");
    let listing = |m: &Mount| {
        ok(&format!(
            "cd {} && sha256sum * && find {} -printf '%P %l\\n' | sort",
            m.p("by-id"),
            m.p("by-tag")
        ))
    };
    let mut first = Mount::new(&[&gz]);
    let want = listing(&first);
    assert!(want.contains("localhost/whoami/api:1.0"), "{want}");
    assert!(daemon_rchar(&first) > 32 << 20);
    assert!(first.log().contains("indexing the compressed archive"));
    first.stop();
    assert!(Path::new(&format!("{gz}.imagefs-index")).is_file());

    let second = Mount::new(&[&gz]);
    assert_eq!(listing(&second), want);
    let rchar = daemon_rchar(&second);
    assert!(rchar < 4 << 20, "the second mount read {rchar} bytes");
    assert!(!second.log().contains("indexing the compressed archive"));
    drop(second);

    // In a read-only directory the index goes to $XDG_CACHE_HOME/imagefs.
    std::fs::remove_file(format!("{gz}.imagefs-index")).unwrap();
    let ro_dir = PathBuf::from(format!("{d}-ro"));
    let ro = ReadOnlyBind::new(dir.path(), &ro_dir);
    let cache = tempfile::tempdir().unwrap();
    let cache_env = cache.path().to_str().unwrap();
    let ro_gz = format!("{}/a.tar.gz", ro.0.display());
    let m = Mount::with_env(&[&ro_gz], &[("XDG_CACHE_HOME", cache_env)]);
    assert_eq!(listing(&m), want);
    drop(m);
    assert!(!Path::new(&format!("{ro_gz}.imagefs-index")).exists());
    let kept = ok(&format!("ls {cache_env}/imagefs"));
    assert!(kept.lines().any(|l| l.ends_with(".index")), "{kept}");
    let m = Mount::with_env(&[&ro_gz], &[("XDG_CACHE_HOME", cache_env)]);
    assert_eq!(listing(&m), want);
    assert!(daemon_rchar(&m) < 4 << 20);
    drop(m);
    drop(ro);
    let _ = std::fs::remove_dir(ro_dir);
}

/// A store unchanged since the last mount is read from the catalog that mount kept
/// (the same tree, not a manifest or config read); a changed store or `-o rescan` is
/// read again; a config rewritten in place under a kept catalog is refused when read.
#[test]
fn unchanged_stores_are_read_from_the_catalog_the_last_mount_kept() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let env = [("XDG_CACHE_HOME", cache.to_str().unwrap())];
    let listing = |m: &Mount| {
        ok(&format!(
            "cd {} && ls -li --full-time by-id && find by-tag -printf '%p %i %n %l\\n' | sort \
             && sha256sum by-id/* && getfattr -d -R by-tag | sort",
            m.p("")
        ))
    };
    const KEPT: &str = "catalog kept for the next mount";
    const REUSED: &str = "store read from the catalog kept by an earlier mount";
    for name in ["sample.tar", "layout"] {
        let store = copy_fixture(f, name, dir.path());
        let first = Mount::with_env(&[&store], &env);
        let want = listing(&first);
        assert!(!first.log().contains(REUSED), "{}", first.log());
        let log = {
            let mut first = first;
            first.stop();
            first.log()
        };
        assert!(log.contains(KEPT), "{name}: {log}");

        let second = Mount::with_env(&[&store], &env);
        assert!(second.log().contains(REUSED), "{name}: {}", second.log());
        assert_eq!(listing(&second), want, "{name}");
        drop(second);

        let rescan = Mount::with_env(&["-o", "rescan", &store], &env);
        assert!(!rescan.log().contains(REUSED), "{name}: {}", rescan.log());
        assert_eq!(listing(&rescan), want, "{name}");
        drop(rescan);
    }

    // A changed archive (here only touched: its mtime and ctime move) is read again.
    let archive = dir.path().join("sample.tar");
    ok(&format!("touch '{}'", archive.display()));
    let m = Mount::with_env(&[archive.to_str().unwrap()], &env);
    assert!(!m.log().contains(REUSED), "{}", m.log());
    // A write through the mount reloads the store, and the reloaded catalog is kept:
    // the next mount needs no scan and shows the write.
    let id = ok(&format!("ls {}", m.p("by-id")));
    let id = id.lines().next().unwrap();
    ok(&format!(
        "mkdir -p {0} && ln {1} {0}/kept:1",
        m.p("by-tag/localhost/kept"),
        m.p(&format!("by-id/{id}"))
    ));
    drop(m);
    let m = Mount::with_env(&[archive.to_str().unwrap()], &env);
    assert!(m.log().contains(REUSED), "{}", m.log());
    ok(&format!(
        "test {} -ef {}",
        m.p("by-tag/localhost/kept/kept:1"),
        m.p(&format!("by-id/{id}"))
    ));
    drop(m);

    // An archive of many members: its tar index is kept too, so the next mount reads
    // the two kept files and not the archive's 1,200 headers.
    let many = dir.path().join("many.tar");
    ok(&format!(
        "python3 {SCRIPTS}/bench/make-many.py '{}' 600 800",
        many.display()
    ));
    let many = many.to_str().unwrap();
    // what each daemon read while mounting (the headers and configs, or the kept files)
    let first = Mount::with_env(&[many], &env);
    let read_first = daemon_rchar(&first);
    let want = listing(&first);
    drop(first);
    let second = Mount::with_env(&[many], &env);
    let read_second = daemon_rchar(&second);
    assert!(second.log().contains(REUSED), "{}", second.log());
    assert_eq!(listing(&second), want);
    assert!(
        read_second * 2 < read_first,
        "the second mount read {read_second} bytes, the first {read_first}"
    );
    drop(second);

    // A config blob rewritten in place moves nothing the layout's key covers: the
    // kept catalog is used, and reading that config fails instead of serving bytes
    // that are not the image's.
    let layout = dir.path().join("layout");
    let m = Mount::with_env(&[layout.to_str().unwrap()], &env);
    assert!(m.log().contains(REUSED), "{}", m.log());
    let ids = ok(&format!("ls {}", m.p("by-id")));
    drop(m);
    let victim = ids.lines().next().unwrap().trim();
    let blob = layout
        .join("blobs/sha256")
        .join(victim.trim_start_matches("sha256:"));
    ok(&format!(
        "printf X | dd of='{}' bs=1 seek=0 conv=notrunc status=none",
        blob.display()
    ));
    let m = Mount::with_env(&[layout.to_str().unwrap()], &env);
    assert!(m.log().contains(REUSED), "{}", m.log());
    let o = sh(&format!("cat {}", m.p(&format!("by-id/{victim}"))));
    assert!(!o.status.success(), "a rewritten config was served");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Input/output error"),
        "{o:?}"
    );
    assert!(m.log().contains("now hashes to"), "{}", m.log());
    // the other configs still read, and still hash to their names
    for id in ids.lines().skip(1) {
        let sum = ok(&format!("sha256sum < {}", m.p(&format!("by-id/{id}"))));
        assert!(id.ends_with(sum.split_whitespace().next().unwrap()), "{id}");
    }
    drop(m);
    // -o rescan reads the store again and sees what is wrong at once
    let m = Mount::with_env(&["-o", "rescan", layout.to_str().unwrap()], &env);
    assert!(!ok(&format!("ls {}", m.p("by-id"))).contains(victim));
    assert!(m.log().contains("hashes to"), "{}", m.log());
}
