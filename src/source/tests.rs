//! Parser tests on hand-built archives and layouts: the Docker 25+ layout, and the
//! malformed cases real tools will not make.

use std::path::Path;

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::*;
use crate::tar_index::tests::tar_bytes;

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn hex_of(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap()
}

const CONFIG: &[u8] = br#"{"created":"2024-02-03T04:05:06Z","architecture":"amd64","os":"linux"}"#;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn tags(r: &ImageRecord) -> Vec<String> {
    r.tags.iter().map(|t| t.to_string()).collect()
}

/// What `docker save` (25+) writes: an OCI layout plus manifest.json into blobs/.
#[test]
fn docker_25_layout_gives_tags_and_manifest_digests() {
    let cfg = digest(CONFIG);
    let layer = b"layer bytes".to_vec();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": CONFIG.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}]
    }))
    .unwrap();
    let mdigest = digest(&manifest);
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": manifest.len(),
        "annotations": {"io.containerd.image.name": "docker.io/library/busybox:latest", "org.opencontainers.image.ref.name": "latest"}
    }]}))
    .unwrap();
    let mjson = serde_json::to_vec(&json!([{
        "Config": format!("blobs/sha256/{}", hex_of(&cfg)),
        "RepoTags": ["busybox:latest"],
        "Layers": [format!("blobs/sha256/{}", hex_of(&digest(&layer)))]
    }]))
    .unwrap();
    let names = [
        format!("blobs/sha256/{}", hex_of(&cfg)),
        format!("blobs/sha256/{}", hex_of(&mdigest)),
        format!("blobs/sha256/{}", hex_of(&digest(&layer))),
    ];
    let tar = tar_bytes(
        &[
            (names[0].as_str(), CONFIG),
            (names[1].as_str(), &manifest),
            (names[2].as_str(), &layer),
            ("index.json", &index),
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("manifest.json", &mjson),
        ],
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d25.tar", &tar);
    let src = open(path.to_str().unwrap()).unwrap();
    assert_eq!(src.kind(), &docker_archive::KIND);
    let inv = src.scan().unwrap();
    assert!(inv.problems.is_empty(), "{:?}", inv.problems);
    let r = &inv.images[0];
    assert_eq!(r.expected_id(), cfg);
    assert_eq!(tags(r), ["docker.io/library/busybox:latest"]);
    assert_eq!(r.manifest_digests, vec![mdigest]);
    assert_eq!(r.layers_size, Some(layer.len() as u64));
    assert_eq!(
        read_blob(src.as_ref(), r.config.as_ref().unwrap(), 1 << 20).unwrap(),
        CONFIG
    );

    // The same files as an oci-archive (no manifest.json): the containerd name wins.
    let tar = tar_bytes(
        &[
            (names[0].as_str(), CONFIG),
            (names[1].as_str(), &manifest),
            ("index.json", &index),
        ],
        &[],
    );
    let path = write(dir.path(), "o.tar", &tar);
    let src = open(path.to_str().unwrap()).unwrap();
    assert_eq!(src.kind(), &oci_archive::KIND);
    let inv = src.scan().unwrap();
    assert_eq!(tags(&inv.images[0]), ["docker.io/library/busybox:latest"]);
    assert_eq!(inv.images[0].claimed_id, cfg);
}

#[test]
fn null_repotags_missing_config_and_bad_names_are_reported_not_fatal() {
    let cfg = digest(CONFIG);
    let missing = "b".repeat(64);
    let mjson = serde_json::to_vec(&json!([
        {"Config": format!("{}.json", hex_of(&cfg)), "RepoTags": null, "Layers": []},
        {"Config": format!("{missing}.json"), "RepoTags": ["quay.io/app/broken:v1"], "Layers": ["nope/layer.tar"]},
        {"Config": "../../etc/passwd", "RepoTags": ["UPPER/case:1", "ok/name@sha256:zz"], "Layers": []}
    ]))
    .unwrap();
    let cfg_name = format!("{}.json", hex_of(&cfg));
    let tar = tar_bytes(
        &[(cfg_name.as_str(), CONFIG), ("manifest.json", &mjson)],
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "a.tar", &tar);
    let src = open(&format!("docker-archive:{}", path.display())).unwrap();
    let inv = src.scan().unwrap();
    assert_eq!(inv.images.len(), 3);
    assert!(inv.images[0].tags.is_empty());
    assert!(inv.images[1].config.is_none());
    assert_eq!(inv.images[1].expected_id(), format!("sha256:{missing}"));
    assert!(inv.images[2].config.is_none());
    let all = inv.problems.join("\n");
    assert!(all.contains("a.tar:manifest.json entry 1: config"), "{all}");
    assert!(all.contains("nope/layer.tar"), "{all}");
    assert!(all.contains("UPPER/case:1"), "{all}");
}

#[test]
fn corrupt_manifest_json_fails_the_source_with_its_name() {
    let tar = tar_bytes(&[("manifest.json", b"[{\"Config\": ")], &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.tar", &tar);
    let err = open(path.to_str().unwrap()).unwrap().scan().unwrap_err();
    assert!(err.to_string().contains("bad.tar"), "{err}");
    assert!(err.to_string().contains("manifest.json"), "{err}");
}

#[test]
fn not_a_tar_fails_before_mounting() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "junk.tar", &[0x42u8; 3000]);
    let err = open(path.to_str().unwrap()).err().unwrap();
    assert!(err.to_string().contains("junk.tar"), "{err}");
}

#[test]
fn an_index_that_refers_to_itself_is_skipped_and_the_rest_shown() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layout");
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    // A blob that claims to be an index listing its own name.
    let fake = "c".repeat(64);
    let selfref = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{fake}"), "size": 10}]}))
    .unwrap();
    write(&root.join("blobs/sha256"), &fake, &selfref);
    // and a good image
    let cfg = digest(CONFIG);
    write(&root.join("blobs/sha256"), hex_of(&cfg), CONFIG);
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": CONFIG.len()}, "layers": []}))
    .unwrap();
    let md = digest(&manifest);
    write(&root.join("blobs/sha256"), hex_of(&md), &manifest);
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{fake}"), "size": selfref.len(),
         "annotations": {"org.opencontainers.image.ref.name": "loop"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
         "annotations": {"org.opencontainers.image.ref.name": "1.0"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:../../etc", "size": 1}
    ]}))
    .unwrap();
    write(&root, "index.json", &index);
    write(&root, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let src = open(root.to_str().unwrap()).unwrap();
    assert_eq!(src.kind(), &oci::KIND);
    let inv = src.scan().unwrap();
    // the good image, with its bare tag under the layout's name
    let good: Vec<_> = inv.images.iter().filter(|r| r.config.is_some()).collect();
    assert_eq!(good.len(), 1);
    assert_eq!(tags(good[0]), ["localhost/layout:1.0"]);
    let all = inv.problems.join("\n");
    assert!(
        all.contains("not to its name") || all.contains("refers back"),
        "{all}"
    );
    assert!(all.contains("malformed digest"), "{all}");
}

#[test]
fn a_blob_symlinked_out_of_the_layout_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("l");
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    let outside = write(dir.path(), "secret", CONFIG);
    let cfg = digest(CONFIG);
    std::os::unix::fs::symlink(&outside, root.join("blobs/sha256").join(hex_of(&cfg))).unwrap();
    write(&root, "index.json", b"{\"manifests\": []}");
    let layout = oci::OciLayout::open(&root, Default::default()).unwrap();
    use crate::source::shared::oci_walk::LayoutBlobs;
    let err = layout.blob(&cfg).unwrap_err();
    assert!(err.to_string().contains("outside the layout"), "{err}");
    // a link out of the store is the store's I/O failing, not a read-only store
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
}

/// What Docker before 25 writes: `<id>.json` configs, `<v1id>/layer.tar` layers as
/// real files, a `repositories` file, and short names in RepoTags.
#[test]
fn docker_pre_25_layout_with_short_names() {
    let cfg = digest(CONFIG);
    let cfg_name = format!("{}.json", hex_of(&cfg));
    let v1 = "d".repeat(64);
    let layer_name = format!("{v1}/layer.tar");
    let layer = vec![9u8; 2048];
    let mjson = serde_json::to_vec(&json!([{
        "Config": cfg_name, "RepoTags": ["busybox:latest", "user/app:1"], "Layers": [layer_name]
    }]))
    .unwrap();
    let v1json = format!("{v1}/json");
    let v1version = format!("{v1}/VERSION");
    let tar = tar_bytes(
        &[
            (v1version.as_str(), b"1.0"),
            (v1json.as_str(), b"{}"),
            (layer_name.as_str(), &layer),
            (cfg_name.as_str(), CONFIG),
            ("repositories", br#"{"busybox":{"latest":"dddd"}}"#),
            ("manifest.json", &mjson),
        ],
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "old.tar", &tar);
    let src = open(path.to_str().unwrap()).unwrap();
    let inv = src.scan().unwrap();
    assert!(inv.problems.is_empty(), "{:?}", inv.problems);
    let r = &inv.images[0];
    assert_eq!(r.expected_id(), cfg);
    assert_eq!(
        tags(r),
        ["docker.io/library/busybox:latest", "docker.io/user/app:1"]
    );
    assert_eq!(r.layers_size, Some(2048));
    assert!(r.manifest_digests.is_empty());
}

#[test]
fn chain_ids_are_dockers_and_containerds() {
    let (a, b) = (
        format!("sha256:{}", "a".repeat(64)),
        format!("sha256:{}", "b".repeat(64)),
    );
    assert_eq!(
        crate::source::shared::blob::chain_ids(&[&a, &b]),
        [
            a.clone(),
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c".to_string()
        ]
    );
    assert!(crate::source::shared::blob::chain_ids(&[]).is_empty());
    assert_eq!(
        crate::source::shared::blob::diff_ids(
            br#"{"rootfs":{"type":"layers","diff_ids":["x","y"]}}"#
        ),
        ["x", "y"]
    );
    assert!(crate::source::shared::blob::diff_ids(b"not json").is_empty());
}

/// A write over an index.json that turned bad after the scan is refused for what it
/// is (the store's file is broken, or cannot be read), never as a read-only store.
#[test]
fn a_write_over_a_broken_index_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layout");
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    write(
        &root,
        "index.json",
        br#"{"schemaVersion": 2, "manifests": []}"#,
    );
    let src = open(&format!("oci:{}", root.display())).unwrap();
    let writer = src.writer().expect("a layout is writable");
    let tag = match crate::reference::parse("localhost/app:1") {
        Ok(crate::reference::Parsed::Tag(t)) => t,
        other => panic!("{other:?}"),
    };
    write(&root, "index.json", b"{ not json");
    let e = writer.write(Edit::Untag(&tag)).unwrap_err();
    assert!(matches!(e, StoreError::Format { .. }), "{e:?}");
    assert!(e.to_string().contains("index.json"), "{e}");
    std::fs::remove_file(root.join("index.json")).unwrap();
    std::fs::create_dir(root.join("index.json")).unwrap();
    let e = writer.write(Edit::Untag(&tag)).unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }), "{e:?}");
}

/// A kind is one file and one line of KINDS: `mem:` is found by its prefix, opens its
/// description, and serves blobs that are no files, with a token that is no stat.
#[test]
fn a_registry_shaped_kind_is_one_file_and_one_table_line() {
    let dir = tempfile::tempdir().unwrap();
    let desc = dir.path().join("store.json");
    std::fs::write(
        &desc,
        br#"{"images": [{"config": {"architecture": "amd64", "os": "linux"}, "tags": ["localhost/app:1"]}],
            "dangling": [{"tag": "localhost/gone:1", "id": "sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}"#,
    )
    .unwrap();
    let src = open(&format!("mem:{}", desc.display())).unwrap();
    assert_eq!(src.kind(), &mem::KIND);
    assert!(src.path().is_none(), "no path on this machine");
    let inv = src.scan().unwrap();
    assert_eq!(inv.images.len(), 2);
    let image = &inv.images[0];
    assert!(matches!(image.config, Some(BlobLocation::Digest { .. })));
    let bytes = read_blob(src.as_ref(), image.config.as_ref().unwrap(), 1 << 20).unwrap();
    assert_eq!(sha256_id(&bytes), image.claimed_id);
    assert_eq!(tags(image), ["localhost/app:1"]);
    assert!(
        inv.images[1].config.is_none(),
        "the dangling tag's image is not there"
    );
    // a write moves the token, and is seen by the next scan
    let before = src.change_token().unwrap();
    let tag = match crate::reference::parse("localhost/app:2") {
        Ok(crate::reference::Parsed::Tag(t)) => t,
        other => panic!("{other:?}"),
    };
    let id = image.claimed_id.clone();
    src.writer()
        .unwrap()
        .write(Edit::Tag { id: &id, tag: &tag })
        .unwrap();
    assert_ne!(src.change_token().unwrap(), before);
    assert_eq!(
        tags(&src.scan().unwrap().images[0]),
        ["localhost/app:1", "localhost/app:2"]
    );
    // a refused edit changes nothing, its token included
    let after = src.change_token().unwrap();
    let e = src.writer().unwrap().write(Edit::Delete("sha256:nothing"));
    assert!(matches!(e, Err(StoreError::NotFound(_))), "{e:?}");
    assert_eq!(src.change_token().unwrap(), after);
    // never detected: a bare path is not taken for one
    assert!(open(desc.to_str().unwrap()).is_err());
}
