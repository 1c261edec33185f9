//! The core, tested without a mount, on an in-memory source.

use std::ffi::OsStr;
use std::io;

use sha2::{Digest as _, Sha256};

use super::*;
use crate::reference::{Parsed, TagRef};
use crate::source::mem::{MemStore, Writes};
use crate::source::{ImageRecord, StoreError, StoreMeta};

/// The store the core's tests mount: in memory, owned by uid 7, gid 8, mode 0644.
fn mem() -> MemStore {
    let s = MemStore::new("/mem");
    s.change(|st| {
        st.meta = Some(StoreMeta {
            uid: 7,
            gid: 8,
            mode: 0o644,
            mtime: SystemTime::UNIX_EPOCH,
            via_daemon: false,
        })
    });
    s
}

fn tag(s: &str) -> TagRef {
    match crate::reference::parse(s) {
        Ok(Parsed::Tag(t)) => t,
        other => panic!("{s}: {other:?}"),
    }
}

const WEB_V1: &[u8] =
    br#"{"created":"2021-03-12T18:29:51.123456789Z","architecture":"amd64","os":"linux","v":1}"#;
const WEB_V2: &[u8] =
    br#"{"created":"2022-01-01T00:00:00Z","architecture":"arm64","os":"linux","variant":"v8"}"#;
const API: &[u8] =
    br#"{"created":"2023-05-05T05:05:05+02:00","architecture":"amd64","os":"linux"}"#;

fn mount(sources: Vec<(&str, MemStore)>) -> ImageFs {
    let stores = sources
        .into_iter()
        .map(|(label, s)| Store::new(label, Box::new(s)))
        .collect();
    ImageFs::new(stores, ConfigCache::new(1 << 20), FsOptions::default()).unwrap()
}

/// Walks a path from the root.
fn resolve(fs: &ImageFs, path: &str) -> FsResult<Attr> {
    let mut attr = fs.getattr(ROOT_INO)?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        attr = fs.lookup(attr.ino, OsStr::new(part))?;
    }
    Ok(attr)
}

fn names(fs: &ImageFs, path: &str) -> Vec<String> {
    let ino = resolve(fs, path).unwrap().ino;
    let mut out = vec![];
    fs.readdir(ino, 0, |e| {
        out.push(e.name.to_string());
        false
    })
    .unwrap();
    out
}

/// A tag whose config is missing: quay.io/app/broken:v1 dangles.
fn missing_config() -> ImageRecord {
    ImageRecord {
        claimed_id: format!("sha256:{}", "e".repeat(64)),
        config: None,
        config_name: "mem:missing".into(),
        tags: vec![tag("quay.io/app/broken:v1")],
        ..Default::default()
    }
}

fn sample() -> (ImageFs, String, String, String) {
    let (fs, _, v1, v2, api) = sample_with_store();
    (fs, v1, v2, api)
}

/// [`sample`], with a handle on its store.
fn sample_with_store() -> (ImageFs, MemStore, String, String, String) {
    let s = mem();
    let handle = s.clone();
    let v1 = s.image(WEB_V1, &[]);
    let v2 = s.image(WEB_V2, &["localhost/whoami/web:latest"]);
    let api = s.image(
        API,
        &[
            "localhost/whoami/api:1.0",
            "localhost/whoami/api:latest",
            "busybox",
        ],
    );
    s.change(|st| st.records.push(missing_config()));
    (mount(vec![("only", s)]), handle, v1, v2, api)
}

#[test]
fn by_id_files_hold_the_config_and_hash_to_their_name() {
    let (fs, v1, _, _) = sample();
    let attr = resolve(&fs, &format!("by-id/{v1}")).unwrap();
    assert_eq!(attr.kind, FileKind::File);
    assert_eq!(attr.size, WEB_V1.len() as u64);
    let bytes = fs.read(attr.ino, 0, 1 << 16).unwrap();
    assert_eq!(bytes, WEB_V1);
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        v1
    );
    // reads at an offset and past the end
    assert_eq!(fs.read(attr.ino, 2, 7).unwrap(), &WEB_V1[2..9]);
    assert!(fs.read(attr.ino, 10_000, 10).unwrap().is_empty());
    // The root's stats show the cache at work: the catalog's hashing filled it, so
    // these reads hit.
    let stats = fs
        .getxattr(ROOT_INO, OsStr::new("user.imagefs.stats"))
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats).unwrap();
    let cache = &stats["config_cache"];
    assert!(cache["hits"].as_u64().unwrap() >= 2, "{stats}");
    assert!(cache["entries"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["stores"], 1);
    let names = fs.listxattr(ROOT_INO).unwrap();
    assert!(String::from_utf8_lossy(&names).contains("user.imagefs.stats"));
}

#[test]
fn tags_are_hard_links_and_nlink_counts_names() {
    let (fs, v1, v2, api) = sample();
    let a = resolve(&fs, &format!("by-id/{api}")).unwrap();
    let t1 = resolve(&fs, "by-tag/localhost/whoami/api:1.0").unwrap();
    let t2 = resolve(&fs, "by-tag/docker.io/library/busybox:latest").unwrap();
    assert_eq!(a, t1);
    assert_eq!(a, t2);
    assert_eq!(a.nlink, 4);
    assert_eq!(resolve(&fs, &format!("by-id/{v2}")).unwrap().nlink, 2);
    // the untagged image: only its by-id name
    assert_eq!(resolve(&fs, &format!("by-id/{v1}")).unwrap().nlink, 1);
}

#[test]
fn dangling_tag_is_a_relative_symlink_into_by_id() {
    let (fs, ..) = sample();
    let l = resolve(&fs, "by-tag/quay.io/app/broken:v1").unwrap();
    assert_eq!(l.kind, FileKind::Symlink);
    let target = String::from_utf8(fs.readlink(l.ino).unwrap()).unwrap();
    assert_eq!(target, format!("../../../by-id/sha256:{}", "e".repeat(64)));
    // and it does not resolve
    assert_eq!(
        resolve(&fs, &format!("by-id/sha256:{}", "e".repeat(64))),
        Err(Errno::ENOENT.into())
    );
}

#[test]
fn directories_list_dots_and_children_in_order() {
    let (fs, ..) = sample();
    assert_eq!(names(&fs, ""), [".", "..", "by-id", "by-tag"]);
    assert_eq!(
        names(&fs, "by-tag"),
        [".", "..", "docker.io", "localhost", "quay.io"]
    );
    assert_eq!(
        names(&fs, "by-tag/localhost/whoami"),
        [".", "..", "api:1.0", "api:latest", "web:latest"]
    );
    // resuming at an offset continues after it
    let ino = resolve(&fs, "by-tag/localhost/whoami").unwrap().ino;
    let mut rest = vec![];
    fs.readdir(ino, 3, |e| {
        rest.push(e.name.to_string());
        false
    })
    .unwrap();
    assert_eq!(rest, ["api:latest", "web:latest"]);
    // a full buffer stops the listing
    let mut one = vec![];
    fs.readdir(ino, 0, |e| {
        one.push(e.name.to_string());
        true
    })
    .unwrap();
    assert_eq!(one.len(), 1);
    // nlink of a directory: 2 + subdirectories
    assert_eq!(resolve(&fs, "by-tag").unwrap().nlink, 5);
}

#[test]
fn attributes_follow_the_config_and_the_store() {
    let (fs, v1, _, api) = sample();
    let a = resolve(&fs, &format!("by-id/{v1}")).unwrap();
    assert_eq!(
        a.mtime,
        SystemTime::UNIX_EPOCH + std::time::Duration::new(1615573791, 123456789)
    );
    // the config's own read bits, and the owner may tag (link) as the store lets it
    assert_eq!((a.uid, a.gid, a.perm), (7, 8, 0o644));
    // an offset in `created` is honoured
    let b = resolve(&fs, &format!("by-id/{api}")).unwrap();
    assert_eq!(
        b.mtime,
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1683255905)
    );
    // the store is 0644: its owner may tag (write), everyone may read and search
    let d = resolve(&fs, "by-tag").unwrap();
    assert_eq!((d.uid, d.gid, d.perm), (7, 8, 0o755));
    // on a read-only mount no one may
    let s = mem();
    s.image(API, &["localhost/x:1"]);
    let stores = vec![Store::new("ro", Box::new(s))];
    let options = FsOptions {
        read_only: true,
        ..Default::default()
    };
    let ro = ImageFs::new(stores, ConfigCache::new(1 << 20), options).unwrap();
    assert_eq!(resolve(&ro, "by-tag").unwrap().perm, 0o555);
    let id = names(&ro, "by-id").pop().unwrap();
    assert_eq!(resolve(&ro, &format!("by-id/{id}")).unwrap().perm, 0o444);
}

#[test]
fn xattrs_answer_like_a_table_would() {
    let (fs, _, v2, api) = sample();
    let ino = resolve(&fs, &format!("by-id/{api}")).unwrap().ino;
    let get = |n: &str| {
        fs.getxattr(ino, OsStr::new(n))
            .map(|v| String::from_utf8(v).unwrap())
    };
    assert_eq!(
        get("user.image.tags").unwrap(),
        "docker.io/library/busybox:latest,localhost/whoami/api:1.0,localhost/whoami/api:latest"
    );
    assert_eq!(get("user.image.architecture").unwrap(), "amd64");
    assert_eq!(get("user.image.size").unwrap(), "1234");
    assert_eq!(get("user.image.source").unwrap(), "mem:/mem");
    assert_eq!(
        get("user.image.created").unwrap(),
        "2023-05-05T05:05:05+02:00"
    );
    // other namespaces are unsupported (so ls stops asking), unknown user.* names absent
    assert_eq!(get("security.selinux"), Err(Errno::EOPNOTSUPP.into()));
    assert_eq!(
        get("system.posix_acl_access"),
        Err(Errno::EOPNOTSUPP.into())
    );
    assert_eq!(get("user.other"), Err(Errno::ENODATA.into()));
    assert_eq!(get("user.image.digest"), Err(Errno::ENODATA.into()));
    let v2ino = resolve(&fs, &format!("by-id/{v2}")).unwrap().ino;
    assert_eq!(
        fs.getxattr(v2ino, OsStr::new("user.image.variant"))
            .unwrap(),
        b"v8"
    );
    let list = fs.listxattr(ino).unwrap();
    assert!(list.ends_with(b"\0"));
    assert!(list.split(|&b| b == 0).any(|n| n == b"user.image.os"));
    // the size protocol
    let value = b"abc".to_vec();
    assert_eq!(xattr_reply(value.clone(), 0), Ok(XattrReply::Size(3)));
    assert_eq!(xattr_reply(value.clone(), 2), Err(Errno::ERANGE.into()));
    assert_eq!(xattr_reply(value.clone(), 3), Ok(XattrReply::Data(value)));
}

#[test]
fn a_config_that_does_not_match_its_digest_is_not_that_image() {
    let s = mem();
    let (loc, _) = s.blob(br#"{"tampered":true}"#);
    let claimed = format!("sha256:{}", "a".repeat(64));
    s.change(|st| {
        st.records.push(ImageRecord {
            claimed_id: claimed.clone(),
            config: Some(loc),
            config_name: "mem:tampered.json".into(),
            tags: vec![tag("localhost/evil:1")],
            ..Default::default()
        })
    });
    let good = s.image(API, &["localhost/good:1"]);
    let fs = mount(vec![("s", s)]);
    assert_eq!(names(&fs, "by-id"), [".", "..", good.as_str()]);
    let l = resolve(&fs, "by-tag/localhost/evil:1").unwrap();
    assert_eq!(l.kind, FileKind::Symlink);
    let cat = fs.catalog(0).unwrap();
    assert!(
        cat.problems
            .iter()
            .any(|p| p.contains("mem:tampered.json") && p.contains("not to")),
        "{:?}",
        cat.problems
    );
}

#[test]
fn several_stores_are_self_contained_directories() {
    let a = mem();
    let id = a.image(API, &["localhost/app:1"]);
    let b = mem();
    b.image(API, &["localhost/app:1", "localhost/app:2"]);
    let fs = mount(vec![("cache", a), ("runtime", b)]);
    assert_eq!(names(&fs, ""), [".", "..", "cache", "runtime"]);
    let ca = resolve(&fs, &format!("cache/by-id/{id}")).unwrap();
    let rb = resolve(&fs, &format!("runtime/by-id/{id}")).unwrap();
    // the same image in two stores: two inodes, each counting its own store's names
    assert_ne!(ca.ino, rb.ino);
    assert_eq!((ca.nlink, rb.nlink), (2, 3));
    assert_eq!(
        fs.getxattr(
            resolve(&fs, "cache").unwrap().ino,
            OsStr::new("user.image.source")
        )
        .unwrap(),
        b"mem:/mem"
    );
}

#[test]
fn writes_tag_untag_retag_and_delete() {
    let (fs, v1, v2, api) = sample();
    let whoami = resolve(&fs, "by-tag/localhost/whoami").unwrap().ino;
    let v1_ino = resolve(&fs, &format!("by-id/{v1}")).unwrap().ino;
    // ln by-id/<v1> by-tag/localhost/whoami/web:old
    let a = fs.link(v1_ino, whoami, OsStr::new("web:old")).unwrap();
    assert_eq!((a.ino, a.nlink), (v1_ino, 2));
    assert_eq!(
        resolve(&fs, "by-tag/localhost/whoami/web:old").unwrap().ino,
        v1_ino
    );
    // mv web:old web:v1 keeps the inode, one step
    fs.rename(
        whoami,
        OsStr::new("web:old"),
        whoami,
        OsStr::new("web:v1"),
        false,
    )
    .unwrap();
    assert_eq!(
        resolve(&fs, "by-tag/localhost/whoami/web:old"),
        Err(Errno::ENOENT.into())
    );
    assert_eq!(
        resolve(&fs, "by-tag/localhost/whoami/web:v1").unwrap().ino,
        v1_ino
    );
    // mv onto an existing tag moves it; with RENAME_NOREPLACE it refuses
    assert_eq!(
        fs.rename(
            whoami,
            OsStr::new("web:v1"),
            whoami,
            OsStr::new("web:latest"),
            true
        ),
        Err(Errno::EEXIST.into())
    );
    fs.rename(
        whoami,
        OsStr::new("web:v1"),
        whoami,
        OsStr::new("web:latest"),
        false,
    )
    .unwrap();
    assert_eq!(
        resolve(&fs, "by-tag/localhost/whoami/web:latest")
            .unwrap()
            .ino,
        v1_ino
    );
    // v2 lost its only tag: untagged now
    assert_eq!(resolve(&fs, &format!("by-id/{v2}")).unwrap().nlink, 1);
    // rm by-id of a tagged image: EBUSY; of an untagged one: gone
    let by_id = resolve(&fs, "by-id").unwrap().ino;
    assert_eq!(fs.unlink(by_id, OsStr::new(&api)), Err(Errno::EBUSY.into()));
    fs.unlink(by_id, OsStr::new(&v2)).unwrap();
    assert_eq!(
        resolve(&fs, &format!("by-id/{v2}")),
        Err(Errno::ENOENT.into())
    );
    // rm the last tag of a directory: the directory stays until rmdir
    fs.unlink(whoami, OsStr::new("web:latest")).unwrap();
    let quay_app = resolve(&fs, "by-tag/quay.io/app").unwrap().ino;
    fs.unlink(quay_app, OsStr::new("broken:v1")).unwrap();
    assert_eq!(names(&fs, "by-tag/quay.io/app"), [".", ".."]);
    let quay = resolve(&fs, "by-tag/quay.io").unwrap().ino;
    assert_eq!(fs.rmdir(quay, OsStr::new("app")), Ok(()));
    assert_eq!(
        resolve(&fs, "by-tag/quay.io/app"),
        Err(Errno::ENOENT.into())
    );
    // inode numbers survive reloads
    assert_eq!(resolve(&fs, &format!("by-id/{v1}")).unwrap().ino, v1_ino);
}

#[test]
fn writes_queue_what_the_kernel_must_forget_beyond_their_own_name() {
    let s = mem();
    let v1 = s.image(WEB_V1, &["localhost/whoami/web:1"]);
    s.image(WEB_V2, &[]);
    // the store holds v1 alone at mount; another program adds v2 later
    let v2 = s.change(|st| st.records.pop()).unwrap();
    let live = s.clone();
    let fs = mount(vec![("only", s)]);
    let now = std::time::Duration::ZERO;
    let by_id = resolve(&fs, "by-id").unwrap().ino;
    let whoami = resolve(&fs, "by-tag/localhost/whoami").unwrap().ino;
    let v1_ino = resolve(&fs, &format!("by-id/{v1}")).unwrap().ino;
    assert!(fs.wait_for_queued(now).is_empty());

    // what a write changes itself, the kernel knows (it updates what it touched)
    fs.link(v1_ino, whoami, OsStr::new("web:2")).unwrap();
    assert_eq!(fs.wait_for_queued(now), vec![]);

    // a write's reload also reads what changed behind the mount since the last
    // look, which the watcher will not see (the reload took the new token): queued
    live.change(|st| st.records.push(v2));
    fs.unlink(whoami, OsStr::new("web:2")).unwrap();
    let queued = fs.wait_for_queued(now);
    // the kernel keeps listings: by-id's changed, and the tag directory's
    assert!(queued.contains(&Invalidation::Inode(by_id)), "{queued:?}");
    assert!(queued.contains(&Invalidation::Inode(whoami)), "{queued:?}");
    assert!(queued.contains(&Invalidation::Inode(v1_ino)), "{queued:?}");
    assert!(fs.wait_for_queued(now).is_empty(), "taken once");
    assert_eq!(names(&fs, "by-id").len(), 4, "., .., v1 and v2");
}

#[test]
fn names_must_be_canonical_tags_and_directories_must_hold_them() {
    let (fs, v1, ..) = sample();
    let v1_ino = resolve(&fs, &format!("by-id/{v1}")).unwrap().ino;
    let by_tag = resolve(&fs, "by-tag").unwrap().ino;
    let whoami = resolve(&fs, "by-tag/localhost/whoami").unwrap().ino;
    for bad in ["web", "web:", "Web:1", "web:1:2", "..", "web:.x"] {
        assert_eq!(
            fs.link(v1_ino, whoami, OsStr::new(bad)),
            Err(Errno::EINVAL.into()),
            "{bad}"
        );
    }
    // docker.io/busybox is not canonical (docker.io/library/busybox is)
    let dio = resolve(&fs, "by-tag/docker.io").unwrap().ino;
    assert_eq!(
        fs.link(v1_ino, dio, OsStr::new("busybox:1")),
        Err(Errno::EINVAL.into())
    );
    // mkdir -p by-tag/registry.example:5000/team/app, then ln into it
    let reg = fs
        .mkdir(by_tag, OsStr::new("registry.example:5000"))
        .unwrap();
    let team = fs.mkdir(reg.ino, OsStr::new("team")).unwrap();
    assert_eq!(
        fs.mkdir(by_tag, OsStr::new("UPPER")),
        Err(Errno::EINVAL.into())
    );
    assert_eq!(
        fs.mkdir(team.ino, OsStr::new("a..b")),
        Err(Errno::EINVAL.into())
    );
    fs.link(v1_ino, team.ino, OsStr::new("app:1")).unwrap();
    assert_eq!(
        resolve(&fs, "by-tag/registry.example:5000/team/app:1")
            .unwrap()
            .ino,
        v1_ino
    );
    assert_eq!(
        fs.rmdir(reg.ino, OsStr::new("team")),
        Err(Errno::ENOTEMPTY.into())
    );
    // nothing but tags can be made or changed
    assert_eq!(fs.open(v1_ino, true), Err(Errno::EPERM.into()));
    assert_eq!(
        fs.rmdir(ROOT_INO, OsStr::new("by-tag")),
        Err(Errno::EPERM.into())
    );
    let by_id = resolve(&fs, "by-id").unwrap().ino;
    assert_eq!(
        fs.link(v1_ino, by_id, OsStr::new("x")),
        Err(Errno::EPERM.into())
    );
}

#[test]
fn read_only_mounts_and_read_only_sources_answer_erofs() {
    let s = mem();
    let id = s.image(API, &["localhost/app:1"]);
    let stores = vec![Store::new("s", Box::new(s))];
    let fs = ImageFs::new(
        stores,
        ConfigCache::new(1 << 20),
        FsOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let dir = resolve(&fs, "by-tag/localhost").unwrap().ino;
    let img = resolve(&fs, &format!("by-id/{id}")).unwrap().ino;
    assert_eq!(
        fs.unlink(dir, OsStr::new("app:1")),
        Err(Errno::EROFS.into())
    );
    assert_eq!(
        fs.link(img, dir, OsStr::new("app:2")),
        Err(Errno::EROFS.into())
    );
    assert_eq!(
        fs.rename(dir, OsStr::new("app:1"), dir, OsStr::new("app:3"), false),
        Err(Errno::EROFS.into())
    );
    assert_eq!(fs.mkdir(dir, OsStr::new("x")), Err(Errno::EROFS.into()));
    assert_eq!(fs.open(img, true), Err(Errno::EROFS.into()));
    assert_eq!(
        fs.unlink(dir, OsStr::new("nope:1")),
        Err(Errno::ENOENT.into())
    );

    // a source that cannot write answers EROFS even on a writable mount, and says so
    let s = mem();
    s.change(|st| st.writes = Writes::None);
    s.image(API, &["localhost/app:1"]);
    let fs = mount(vec![("s", s)]);
    let dir = resolve(&fs, "by-tag/localhost").unwrap().ino;
    let e = fs.unlink(dir, OsStr::new("app:1")).unwrap_err();
    assert_eq!(e.errno, Errno::EROFS);
    assert!(
        e.message.contains("untag") && e.message.contains("not supported"),
        "{e}"
    );
}

/// Each kind of store error reaches the caller as its errno, with the store's reason:
/// a disk error during a write is EIO (or the OS's own errno), never EROFS.
#[test]
fn store_errors_keep_their_cause_to_the_caller() {
    type Case = (fn() -> StoreError, Errno, &'static str);
    let cases: [Case; 7] = [
        (
            || StoreError::io("/mem/index.json", io::Error::from_raw_os_error(libc::EIO)),
            Errno::EIO,
            "index.json",
        ),
        (
            || StoreError::io("/mem/index.json", io::Error::other("short write")),
            Errno::EIO,
            "short write",
        ),
        (
            || {
                StoreError::io(
                    "/mem/index.json",
                    io::Error::from_raw_os_error(libc::ENOSPC),
                )
            },
            Errno(libc::ENOSPC),
            "index.json",
        ),
        (
            || StoreError::format("/mem/index.json", "not a valid OCI index"),
            Errno::EIO,
            "not a valid OCI index",
        ),
        (
            || StoreError::unsupported("compressed"),
            Errno::EROFS,
            "compressed",
        ),
        (
            || StoreError::Busy("a container uses it".into()),
            Errno::EBUSY,
            "container",
        ),
        (
            || StoreError::NotPermitted("podman rmi".into()),
            Errno::EPERM,
            "podman rmi",
        ),
    ];
    for (error, errno, reason) in cases {
        let s = mem();
        s.change(|st| st.writes = Writes::Fail(error));
        s.image(API, &["localhost/app:1"]);
        let fs = mount(vec![("s", s)]);
        let dir = resolve(&fs, "by-tag/localhost").unwrap().ino;
        let e = fs.unlink(dir, OsStr::new("app:1")).unwrap_err();
        assert_eq!(e.errno, errno, "{e}");
        assert!(e.message.contains("untag localhost/app:1 refused"), "{e}");
        assert!(e.message.contains(reason), "{e}");
        // refused: the store is as it was
        assert!(resolve(&fs, "by-tag/localhost/app:1").is_ok());
    }
}

#[test]
fn unknown_inodes_and_names_are_enoent() {
    let (fs, ..) = sample();
    assert_eq!(fs.getattr(9999), Err(Errno::ENOENT.into()));
    assert_eq!(
        fs.lookup(ROOT_INO, OsStr::new("..x")),
        Err(Errno::ENOENT.into())
    );
    let file = resolve(&fs, "by-tag/localhost/whoami/web:latest")
        .unwrap()
        .ino;
    assert_eq!(fs.lookup(file, OsStr::new("x")), Err(Errno::ENOTDIR.into()));
    assert_eq!(fs.readlink(file), Err(Errno::EINVAL.into()));
}

/// A store whose key is unchanged is shown from the catalog the last mount kept,
/// without a scan; another key, or `rescan`, scans. A config rewritten under a kept
/// catalog is refused at read, not served.
#[test]
fn kept_catalogs_are_reused_while_the_key_holds_and_reads_stay_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = |key: &str| {
        let s = mem();
        let web = s.image(WEB_V2, &["localhost/whoami/web:latest"]);
        let api = s.image(API, &["localhost/whoami/api:1.0", "busybox"]);
        s.change(|st| st.records.push(missing_config()));
        s.change(|st| st.content_key = Some(key.into()));
        (s, web, api)
    };
    let open = |s: MemStore, rescan: bool| {
        let handle = s.clone();
        let options = FsOptions {
            kept: if rescan {
                Kept::in_dir(dir.path().to_path_buf()).ignoring_kept()
            } else {
                Kept::in_dir(dir.path().to_path_buf())
            },
            ..Default::default()
        };
        let stores = vec![Store::new("only", Box::new(s))];
        let fs = ImageFs::new(stores, ConfigCache::new(1 << 20), options).unwrap();
        (fs, handle)
    };
    let tree = |fs: &ImageFs| {
        let mut out = names(fs, "by-id");
        out.extend(names(fs, "by-tag/localhost/whoami"));
        out.push(
            String::from_utf8(
                fs.readlink(resolve(fs, "by-tag/quay.io/app/broken:v1").unwrap().ino)
                    .unwrap(),
            )
            .unwrap(),
        );
        out
    };

    let (s, _, _) = store("k1");
    let (first, handle) = open(s, false);
    assert_eq!(handle.scans(), 1);
    let want = tree(&first);
    first.keep_catalogs();

    let (s, _, api) = store("k1");
    let (second, handle) = open(s, false);
    assert_eq!(handle.scans(), 0, "an unchanged store is not scanned");
    assert_eq!(tree(&second), want);
    let api_attr = resolve(&second, &format!("by-id/{api}")).unwrap();
    assert_eq!(api_attr.nlink, 3);
    assert_eq!(second.read(api_attr.ino, 0, 1 << 16).unwrap(), API);
    // a write reloads the store, and the reloaded catalog is what is kept next (the
    // watcher's next tick)
    let whoami = resolve(&second, "by-tag/localhost/whoami").unwrap().ino;
    second
        .link(api_attr.ino, whoami, OsStr::new("api:kept"))
        .unwrap();
    second.keep_catalogs();

    let (s, web, _) = store("k1");
    let (third, handle) = open(s, false);
    assert_eq!(handle.scans(), 0);
    assert_eq!(
        resolve(&third, "by-tag/localhost/whoami/api:kept")
            .unwrap()
            .ino,
        resolve(&third, &format!("by-id/{api}")).unwrap().ino
    );
    // rewritten in place, same length: refused when read
    let web_ino = resolve(&third, &format!("by-id/{web}")).unwrap().ino;
    handle.tamper(|st| {
        let blob = st.blobs.get_mut(&web).unwrap();
        let mut bytes = blob.to_vec();
        bytes[2] ^= 0x20;
        *blob = bytes.into();
    });
    assert_eq!(third.read(web_ino, 0, 1 << 16), Err(Errno::EIO.into()));

    let (s, _, _) = store("k2");
    let (_, handle) = open(s, false);
    assert_eq!(handle.scans(), 1, "another key scans");
    let (s, _, _) = store("k1");
    let (_, handle) = open(s, true);
    assert_eq!(handle.scans(), 1, "rescan scans");
}

/// A tag given to two images goes to the last, as `docker load` leaves it, in every
/// store; the loser is logged.
#[test]
fn a_tag_given_twice_names_the_last_image() {
    let s = mem();
    let first = s.image(WEB_V1, &["localhost/x:1", "localhost/x:only-first"]);
    let last = s.image(API, &["localhost/x:1"]);
    // a missing config claims a tag last: the tag dangles
    let mut gone = missing_config();
    gone.tags = vec![tag("localhost/x:only-first")];
    s.change(|st| st.records.push(gone));
    let fs = mount(vec![("only", s)]);
    let x1 = resolve(&fs, "by-tag/localhost/x:1").unwrap();
    assert_eq!(x1.ino, resolve(&fs, &format!("by-id/{last}")).unwrap().ino);
    assert_eq!(
        resolve(&fs, &format!("by-id/{first}")).unwrap().nlink,
        1,
        "the first image lost both its tags"
    );
    let broken = resolve(&fs, "by-tag/localhost/x:only-first").unwrap();
    assert_eq!(broken.kind, FileKind::Symlink);
    let problems = &fs.catalog(0).unwrap().problems;
    assert!(
        problems.iter().any(
            |p| p.contains("tag localhost/x:1 is given to") && p.contains("shown for the last")
        ),
        "{problems:?}"
    );
}

/// A tag whose file name no file system takes (over 255 bytes) is not shown under
/// by-tag/, is listed in user.image.tags, and cannot be made through the mount.
#[test]
fn tags_longer_than_a_file_name_are_listed_not_shown() {
    let long_repo = format!("localhost/{}", "r".repeat(200));
    let long_tag = format!("{long_repo}:{}", "t".repeat(100));
    let s = mem();
    let id = s.image(API, &[&long_tag, "localhost/x:1"]);
    let fs = mount(vec![("only", s)]);
    let img = resolve(&fs, &format!("by-id/{id}")).unwrap();
    assert_eq!(img.nlink, 2, "only the tag that fits is a name");
    assert!(
        names(&fs, "by-tag/localhost")
            .iter()
            .all(|n| n.len() <= 255)
    );
    let tags = fs.getxattr(img.ino, OsStr::new("user.image.tags")).unwrap();
    assert!(String::from_utf8(tags).unwrap().contains(&long_tag));
    assert!(
        fs.catalog(0)
            .unwrap()
            .problems
            .iter()
            .any(|p| p.contains("more than the 255 a file name may have"))
    );
    let dir = resolve(&fs, "by-tag/localhost").unwrap().ino;
    let name = format!("{}:{}", "r".repeat(200), "t".repeat(100));
    assert_eq!(
        fs.link(img.ino, dir, OsStr::new(&name)),
        Err(Errno::ENAMETOOLONG.into())
    );
}

/// What the catalogs show, for comparing: each image's ID, tags and attributes, and
/// the dangling tags.
type Shown = Vec<(
    Vec<(
        String,
        Vec<TagRef>,
        Vec<(crate::reference::ShortStr, String)>,
    )>,
    Vec<(TagRef, String)>,
)>;

fn shown(catalogs: &[&Catalog]) -> Shown {
    catalogs
        .iter()
        .map(|c| {
            (
                c.images
                    .iter()
                    .map(|i| (i.id.to_string(), i.tags.clone(), i.extra_xattrs.clone()))
                    .collect(),
                c.dangling
                    .iter()
                    .map(|d| (d.tag.clone(), d.target.clone()))
                    .collect(),
            )
        })
        .collect()
}

/// The mount's catalogs are what scanning its stores now gives, and its tree is what
/// building from them gives, node for node.
fn assert_as_scanned(fs: &ImageFs) {
    let mut state = fs.state.write();
    let fresh: Vec<Catalog> = fs
        .stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let inv = s.source.scan().unwrap();
            Catalog::build(i, s.source.as_ref(), inv, &fs.cache, &fs.options.limits)
        })
        .collect();
    let held: Vec<&Catalog> = state.stores.iter().map(|s| s.catalog.as_ref()).collect();
    assert_eq!(shown(&held), shown(&fresh.iter().collect::<Vec<_>>()));
    let built = state.build_tree(&fs.stores);
    assert_eq!(built.len(), state.tree.len());
    for (ino, node) in built.iter() {
        assert_eq!(state.tree.get(ino), Some(node), "inode {ino}");
    }
}

/// A write whose writer shows it was the store's only change is applied in place:
/// no scan, and the catalog and tree are exactly what a scan and a build would give.
#[test]
fn writes_are_applied_in_place_as_a_scan_would_show_them() {
    let (fs, handle, v1, v2, api) = sample_with_store();
    let scans = std::cell::Cell::new(handle.scans());
    let dir = |p: &str| resolve(&fs, p).unwrap().ino;
    let image = |id: &str| resolve(&fs, &format!("by-id/{id}")).unwrap().ino;
    let step = |what: &str| {
        assert_eq!(
            handle.scans(),
            scans.get(),
            "{what}: the store was read again"
        );
        assert_as_scanned(&fs);
        scans.set(handle.scans());
    };
    let whoami = dir("by-tag/localhost/whoami");
    fs.link(image(&v1), whoami, OsStr::new("web:old")).unwrap();
    step("ln into a directory");
    let localhost = dir("by-tag/localhost");
    fs.mkdir(localhost, OsStr::new("new")).unwrap();
    fs.mkdir(dir("by-tag/localhost/new"), OsStr::new("deep"))
        .unwrap();
    fs.link(
        image(&v1),
        dir("by-tag/localhost/new/deep"),
        OsStr::new("app:1"),
    )
    .unwrap();
    step("ln into new directories");
    fs.rename(
        whoami,
        OsStr::new("api:latest"),
        whoami,
        OsStr::new("web:latest"),
        false,
    )
    .unwrap();
    assert_eq!(resolve(&fs, &format!("by-id/{v2}")).unwrap().nlink, 1);
    step("mv onto another image's tag");
    let quay_app = dir("by-tag/quay.io/app");
    fs.link(image(&v2), quay_app, OsStr::new("gone:v9"))
        .unwrap();
    fs.rename(
        quay_app,
        OsStr::new("broken:v1"),
        whoami,
        OsStr::new("broken:v1"),
        false,
    )
    .unwrap();
    assert!(
        fs.readlink(
            resolve(&fs, "by-tag/localhost/whoami/broken:v1")
                .unwrap()
                .ino
        )
        .is_ok()
    );
    step("mv of a dangling tag to another directory");
    fs.link(image(&v1), whoami, OsStr::new("broken:v1"))
        .unwrap();
    step("ln over a dangling tag");
    let library = dir("by-tag/docker.io/library");
    fs.link(image(&v2), library, OsStr::new("busybox:latest"))
        .unwrap();
    fs.link(image(&api), library, OsStr::new("busybox:latest"))
        .unwrap();
    step("ln of a tag onto another image and back");
    fs.unlink(whoami, OsStr::new("web:old")).unwrap();
    fs.unlink(quay_app, OsStr::new("gone:v9")).unwrap();
    assert_eq!(names(&fs, "by-tag/quay.io/app"), [".", ".."]);
    step("rm of a directory's last tag: the directory is held");
    fs.unlink(dir("by-tag/localhost/new/deep"), OsStr::new("app:1"))
        .unwrap();
    step("rm in a directory made by mkdir");
    assert_eq!(
        resolve(&fs, "by-tag/localhost/new/deep").unwrap().kind,
        FileKind::Dir
    );
}

/// A catalog read from the store is kept at the watcher's first look; one changed by
/// writes only once they have settled, or at unmount: a burst of writes keeps one
/// catalog, not one per write.
#[test]
fn catalogs_changed_by_writes_are_kept_once_the_writes_settle() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let s = mem();
        s.image(WEB_V2, &["localhost/whoami/web:latest"]);
        // the same key for every opening: what a mount shows is the kept catalog
        s.change(|st| st.content_key = Some("k".into()));
        let handle = s.clone();
        let options = FsOptions {
            kept: Kept::in_dir(dir.path().to_path_buf()),
            ..Default::default()
        };
        let stores = vec![Store::new("only", Box::new(s))];
        let fs = ImageFs::new(stores, ConfigCache::new(1 << 20), options).unwrap();
        (fs, handle)
    };
    let (fs, _) = open();
    fs.keep_settled_catalogs();
    let (_, handle) = open();
    assert_eq!(
        handle.scans(),
        0,
        "the scanned catalog is kept at the first look"
    );

    let whoami = resolve(&fs, "by-tag/localhost/whoami").unwrap().ino;
    let web = resolve(&fs, "by-tag/localhost/whoami/web:latest")
        .unwrap()
        .ino;
    fs.link(web, whoami, OsStr::new("web:a")).unwrap();
    fs.link(web, whoami, OsStr::new("web:b")).unwrap();
    fs.keep_settled_catalogs();
    let (unsettled, _) = open();
    assert_eq!(
        names(&unsettled, "by-tag/localhost/whoami"),
        [".", "..", "web:latest"],
        "kept while the writes had not settled"
    );
    // at unmount the current catalog is kept, whatever its age
    fs.keep_catalogs();
    let (after, handle) = open();
    assert_eq!(handle.scans(), 0);
    assert_eq!(
        names(&after, "by-tag/localhost/whoami"),
        [".", "..", "web:a", "web:b", "web:latest"]
    );
}
