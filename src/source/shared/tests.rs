//! The OCI descriptor walk and index.json edits, on a layout held in memory: what
//! each reads from an index, a nested index, a manifest, and what it reports when a
//! blob is missing, altered, or names itself.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value, json};

use super::oci_index;
use super::oci_walk::{self, Descriptor, LayoutBlobs};
use crate::limits::Limits;
use crate::reference::{Parsed, TagRef};
use crate::source::{BlobLocation, Edit, StoreError, sha256_id};

/// An OCI layout in memory: index.json and blobs by digest.
struct MemLayout {
    index: Vec<u8>,
    blobs: HashMap<String, Vec<u8>>,
    reads: Cell<usize>,
    limits: Limits,
    platform: oci_walk::Platform,
}

impl Default for MemLayout {
    fn default() -> Self {
        MemLayout {
            index: Vec::new(),
            blobs: HashMap::new(),
            reads: Cell::new(0),
            limits: Limits::default(),
            platform: oci_walk::host_platform(),
        }
    }
}

impl MemLayout {
    /// Adds a blob; its descriptor (with `media_type`).
    fn add(&mut self, media_type: &str, value: &Value) -> Value {
        let bytes = serde_json::to_vec(value).unwrap();
        self.add_bytes(media_type, bytes)
    }

    fn add_bytes(&mut self, media_type: &str, bytes: Vec<u8>) -> Value {
        let digest = sha256_id(&bytes);
        let desc = json!({"mediaType": media_type, "digest": digest, "size": bytes.len()});
        self.blobs.insert(digest, bytes);
        desc
    }

    /// An image: config, one layer of 1000 bytes, manifest; the manifest's descriptor.
    fn image(&mut self, n: u32) -> (Value, String) {
        let config = self.add(
            "application/vnd.oci.image.config.v1+json",
            &json!({"architecture": "amd64", "os": "linux", "n": n}),
        );
        let layer = json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{}", format!("{n:x}").repeat(64)[..64].to_string()),
            "size": 1000});
        let manifest = self.add(
            MT_MANIFEST,
            &json!({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                    "config": config, "layers": [layer]}),
        );
        (manifest, config["digest"].as_str().unwrap().to_string())
    }

    fn set_index(&mut self, manifests: Vec<Value>) {
        self.index =
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap();
    }
}

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";

impl LayoutBlobs for MemLayout {
    fn read_file(&self, rel: &str, _limit: u64) -> Result<Vec<u8>, StoreError> {
        match rel {
            "index.json" => Ok(self.index.clone()),
            _ => Err(StoreError::NotFound(rel.into())),
        }
    }

    fn blob(&self, digest: &str) -> Result<Option<BlobLocation>, StoreError> {
        Ok(self.blobs.get(digest).map(|b| BlobLocation::Digest {
            digest: digest.to_string(),
            size: b.len() as u64,
        }))
    }

    fn read_location(&self, loc: &BlobLocation, _limit: u64) -> Result<Vec<u8>, StoreError> {
        self.reads.set(self.reads.get() + 1);
        match loc {
            BlobLocation::Digest { digest, .. } => self
                .blobs
                .get(digest)
                .cloned()
                .ok_or_else(|| StoreError::NotFound(digest.clone())),
            other => Err(StoreError::internal("mem layout", format!("{other:?}"))),
        }
    }

    fn display(&self, rel: &str) -> String {
        format!("mem/{rel}")
    }

    fn bare_tag_repository(&self) -> String {
        "localhost/layout".into()
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn platform(&self) -> &oci_walk::Platform {
        &self.platform
    }
}

fn named(mut desc: Value, name: &str) -> Value {
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    desc
}

fn tag(s: &str) -> TagRef {
    match crate::reference::parse(s) {
        Ok(Parsed::Tag(t)) => t,
        other => panic!("{s}: {other:?}"),
    }
}

fn tags_of(r: &crate::source::ImageRecord) -> Vec<String> {
    r.tags.iter().map(|t| t.to_string()).collect()
}

fn host() -> (&'static str, String) {
    let p = oci_walk::host_platform();
    (std::env::consts::OS, p.architecture)
}

#[test]
fn an_index_entry_gives_its_tag_config_and_manifest() {
    let mut layout = MemLayout::default();
    let (manifest, id) = layout.image(1);
    let (plain, plain_id) = layout.image(2);
    layout.set_index(vec![
        // the OCI spec's bare tag belongs to the layout's repository
        named(manifest.clone(), "1.0"),
        // a full reference, as skopeo and podman write it
        named(manifest.clone(), "quay.io/app/web:2"),
        // a digest reference is no tag
        named(
            plain.clone(),
            &format!("quay.io/app/web@{}", plain["digest"].as_str().unwrap()),
        ),
    ]);
    let inv = oci_walk::scan_layout(&layout).unwrap();
    assert!(inv.problems.is_empty(), "{:?}", inv.problems);
    // the manifest's two entries make one record with both names
    assert_eq!(inv.images.len(), 2);
    let first = &inv.images[0];
    assert_eq!(first.claimed_id, id);
    assert_eq!(
        tags_of(first),
        ["localhost/layout:1.0", "quay.io/app/web:2"]
    );
    assert_eq!(
        first.manifest_digests,
        [manifest["digest"].as_str().unwrap()]
    );
    assert_eq!(first.layers_size, Some(1000));
    assert!(matches!(first.config, Some(BlobLocation::Digest { .. })));
    assert_eq!(inv.images[1].claimed_id, plain_id);
    assert!(inv.images[1].tags.is_empty());
    assert_eq!(inv.images[1].digest_refs.len(), 1);
    // one manifest named twice is read once
    assert_eq!(layout.reads.get(), 2, "two distinct manifests, two reads");
}

#[test]
fn a_nested_index_resolves_to_the_host_platform_and_lists_the_others() {
    let mut layout = MemLayout::default();
    let (mine, mine_id) = layout.image(1);
    let (other, _) = layout.image(2);
    let (attestation, _) = layout.image(3);
    let (os, arch) = host();
    let mut entries = vec![];
    let mut o = other.clone();
    o["platform"] = json!({"os": "linux", "architecture": "s390x"});
    entries.push(o);
    let mut m = mine.clone();
    m["platform"] = json!({"os": os, "architecture": arch});
    entries.push(m);
    let mut a = attestation;
    a["platform"] = json!({"os": "unknown", "architecture": "unknown"});
    entries.push(a);
    let index = layout.add(
        MT_INDEX,
        &json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries}),
    );
    layout.set_index(vec![named(index.clone(), "docker.io/library/multi:1")]);
    let inv = oci_walk::scan_layout(&layout).unwrap();
    assert!(inv.problems.is_empty(), "{:?}", inv.problems);
    let r = &inv.images[0];
    assert_eq!(r.claimed_id, mine_id);
    assert_eq!(tags_of(r), ["docker.io/library/multi:1"]);
    // a pull by digest names the index: it comes first
    assert_eq!(
        r.manifest_digests,
        [
            index["digest"].as_str().unwrap(),
            mine["digest"].as_str().unwrap()
        ]
    );
    assert_eq!(
        r.other_platforms,
        ["linux/s390x"],
        "the attestation is no platform"
    );
    assert!(
        r.extra_xattrs
            .contains(&("user.image.platform".into(), format!("{os}/{arch}"))),
        "{:?}",
        r.extra_xattrs
    );
}

#[test]
fn an_index_without_the_platform_dangles_and_says_what_it_has() {
    let mut layout = MemLayout::default();
    let (a, _) = layout.image(1);
    let (b, b_id) = layout.image(2);
    let mut a = a;
    a["platform"] = json!({"os": "plan9", "architecture": "mips"});
    let mut b = b;
    b["platform"] = json!({"os": "plan9", "architecture": "arm", "variant": "v7"});
    // the index says no media type: it is told by the fields present
    let index = layout.add("", &json!({"manifests": [a, b]}));
    let index_digest = index["digest"].as_str().unwrap().to_string();
    let mut index = index;
    index.as_object_mut().unwrap().remove("mediaType");
    layout.set_index(vec![named(index, "localhost/x:1")]);
    let inv = oci_walk::scan_layout(&layout).unwrap();
    // never the first entry in the host's place
    let host = oci_walk::host_platform();
    assert!(inv.images[0].config.is_none(), "{:?}", inv.images[0]);
    assert_eq!(
        inv.images[0].claimed_id,
        format!("no-{}:{index_digest}", host.display().replace('/', "-"))
    );
    assert!(
        oci_walk::is_dangling_target(&inv.images[0].claimed_id),
        "{}",
        inv.images[0].claimed_id
    );
    let said = inv.problems.join("\n");
    assert!(
        said.contains("plan9/mips, plan9/arm/v7") && said.contains(&host.display()),
        "{said}"
    );
    // -o platform= picks another, variant and all
    layout.platform = oci_walk::Platform::parse("plan9/arm/v7").unwrap();
    let inv = oci_walk::scan_layout(&layout).unwrap();
    assert_eq!(inv.images[0].claimed_id, b_id, "{:?}", inv.problems);
    assert_eq!(inv.images[0].other_platforms, ["plan9/mips"]);
    layout.platform = oci_walk::Platform::parse("plan9/arm/v6").unwrap();
    assert!(
        oci_walk::scan_layout(&layout).unwrap().images[0]
            .config
            .is_none()
    );
}

#[test]
fn an_entry_without_a_platform_is_taken_only_when_none_matches() {
    let mut layout = MemLayout::default();
    let (mut other, _) = layout.image(1);
    let (any, any_id) = layout.image(2);
    let (mut host, host_id) = layout.image(3);
    other["platform"] = json!({"os": "plan9", "architecture": "mips"});
    let p = oci_walk::host_platform();
    host["platform"] = json!({"os": p.os, "architecture": p.architecture});
    let without = layout.add(
        MT_INDEX,
        &json!({"manifests": [other.clone(), any.clone()]}),
    );
    let with = layout.add(MT_INDEX, &json!({"manifests": [any, other, host]}));
    layout.set_index(vec![
        named(without, "localhost/x:1"),
        named(with, "localhost/x:2"),
    ]);
    let inv = oci_walk::scan_layout(&layout).unwrap();
    let id_of = |t: &str| {
        inv.images
            .iter()
            .find(|r| tags_of(r) == [t])
            .map(|r| r.claimed_id.clone())
    };
    assert_eq!(id_of("localhost/x:1"), Some(any_id), "{:?}", inv.problems);
    assert_eq!(
        id_of("localhost/x:2"),
        Some(host_id),
        "the platform's own first"
    );
}

#[test]
fn platforms_parse_and_match_as_containerd_matches_them() {
    use oci_walk::Platform;
    let p = |s: &str| Platform::parse(s).unwrap();
    assert_eq!(p("linux/arm/v7").variant.as_deref(), Some("v7"));
    for bad in [
        "linux",
        "Linux/amd64",
        "linux/amd64/",
        "/amd64",
        "a/b/c/d",
        "",
    ] {
        assert!(Platform::parse(bad).is_err(), "{bad}");
    }
    let entry = |os: &str, arch: &str, v: Option<&str>| Platform {
        os: os.into(),
        architecture: arch.into(),
        variant: v.map(str::to_string),
    };
    assert!(p("linux/arm64").matches(&entry("linux", "arm64", Some("v8"))));
    assert!(p("linux/arm64/v8").matches(&entry("linux", "arm64", None)));
    assert!(p("linux/arm").matches(&entry("linux", "arm", Some("v6"))));
    assert!(!p("linux/arm/v7").matches(&entry("linux", "arm", Some("v6"))));
    assert!(!p("linux/amd64").matches(&entry("windows", "amd64", None)));
}

/// Entries of one manifest share one record, and a tag still goes to the entry that
/// names it last (the catalog's rule: the last record claiming a tag wins), also when
/// another image or a dangling entry claimed it in between.
#[test]
fn entries_of_one_manifest_share_a_record_and_the_last_name_wins() {
    let mut layout = MemLayout::default();
    let (a, a_id) = layout.image(1);
    let (b, b_id) = layout.image(2);
    let missing = json!({"mediaType": MT_MANIFEST, "digest": format!("sha256:{}", "a".repeat(64)), "size": 10});
    layout.set_index(vec![
        named(a.clone(), "localhost/x:a"),
        named(b.clone(), "localhost/x:t"),
        named(a.clone(), "localhost/x:t"),
        named(a.clone(), "localhost/x:b"),
        a.clone(),
        named(b, "localhost/x:b2"),
        named(missing, "localhost/x:c"),
        named(a, "localhost/x:c"),
    ]);
    let inv = oci_walk::scan_layout(&layout).unwrap();
    let records: Vec<(String, Vec<String>)> = inv
        .images
        .iter()
        .map(|r| (r.claimed_id.clone(), tags_of(r)))
        .collect();
    // x:c was claimed by the dangling entry in between: A's x:c is a record of its own
    let dangling = &inv.images[3];
    assert!(dangling.config.is_none());
    assert!(dangling.claimed_id.starts_with("missing-"), "{dangling:?}");
    let s = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    assert_eq!(
        records,
        [
            (a_id.clone(), s(&["localhost/x:a", "localhost/x:b"])),
            (b_id.clone(), s(&["localhost/x:t", "localhost/x:b2"])),
            (a_id.clone(), s(&["localhost/x:t"])),
            (dangling.claimed_id.clone(), s(&["localhost/x:c"])),
            (a_id.clone(), s(&["localhost/x:c"])),
        ]
    );
    // the last record naming each tag is an entry of the image that named it last
    let last = |t: &str| {
        inv.images
            .iter()
            .rev()
            .find(|r| tags_of(r).iter().any(|n| n == t))
            .map(|r| r.claimed_id.clone())
    };
    for t in [
        "localhost/x:a",
        "localhost/x:t",
        "localhost/x:b",
        "localhost/x:c",
    ] {
        assert_eq!(last(t).as_deref(), Some(a_id.as_str()), "{t}");
    }
    assert_eq!(last("localhost/x:b2").as_deref(), Some(b_id.as_str()));
}

#[test]
fn what_cannot_be_followed_is_reported_and_its_tag_dangles() {
    let mut layout = MemLayout::default();
    let (good, good_id) = layout.image(1);
    let (altered, _) = layout.image(2);
    let altered_digest = altered["digest"].as_str().unwrap().to_string();
    layout.blobs.insert(altered_digest.clone(), b"{}".to_vec());
    let missing = json!({"mediaType": MT_MANIFEST, "digest": format!("sha256:{}", "a".repeat(64)), "size": 10});
    let loop_digest = format!("sha256:{}", "b".repeat(64));
    let bad_digest =
        json!({"mediaType": MT_MANIFEST, "digest": "sha256:../../etc/passwd", "size": 1});
    let not_json = layout.add_bytes(MT_MANIFEST, b"not json".to_vec());
    let odd_type = layout.add("text/plain", &json!({"hello": 1}));
    // no media type, and neither a manifest nor an index
    let mut untyped = layout.add("", &json!({"hello": 2}));
    untyped.as_object_mut().unwrap().remove("mediaType");
    // a manifest whose config is bigger than it says
    let config = layout.add(
        "application/vnd.oci.image.config.v1+json",
        &json!({"os": "linux"}),
    );
    let mut small = config.clone();
    small["size"] = json!(1);
    let lying = layout.add(MT_MANIFEST, &json!({"config": small, "layers": []}));
    layout.set_index(vec![
        named(good, "localhost/good:1"),
        named(altered, "localhost/altered:1"),
        named(missing, "localhost/missing:1"),
        named(
            json!({"mediaType": MT_INDEX, "digest": loop_digest, "size": 1}),
            "localhost/loop:1",
        ),
        named(bad_digest, "localhost/bad:1"),
        named(not_json, "localhost/notjson:1"),
        // an artifact's entry: passed over, as containers/image passes it, not tagged
        named(odd_type, "localhost/artifact:1"),
        untyped,
        named(lying, "localhost/lying:1"),
        named(
            json!({"mediaType": MT_MANIFEST, "digest": "sha256:x"}),
            "not a name!",
        ),
    ]);
    // an index that names itself
    let self_index =
        json!({"manifests": [{"mediaType": MT_INDEX, "digest": loop_digest, "size": 1}]});
    let bytes = serde_json::to_vec(&self_index).unwrap();
    // stored under the digest it names (its hash differs: reported as altered)
    layout.blobs.insert(loop_digest.clone(), bytes);
    let inv = oci_walk::scan_layout(&layout).unwrap();
    let problems = inv.problems.join("\n");
    assert!(problems.contains("hashes to"), "{problems}");
    assert!(problems.contains("blob missing"), "{problems}");
    assert!(problems.contains("malformed digest"), "{problems}");
    assert!(
        problems.contains("not a valid manifest or index"),
        "{problems}"
    );
    assert!(
        problems.contains("neither an image manifest nor an index"),
        "{problems}"
    );
    assert!(problems.contains("but the manifest"), "{problems}");
    assert!(problems.contains("not shown as a tag"), "{problems}");
    let by_tag: BTreeMap<String, &crate::source::ImageRecord> = inv
        .images
        .iter()
        .flat_map(|r| r.tags.iter().map(move |t| (t.to_string(), r)))
        .collect();
    assert_eq!(by_tag["localhost/good:1"].claimed_id, good_id);
    // a tag whose image cannot be followed dangles at a name for what is missing,
    // which no image ID can be
    for t in [
        "localhost/altered:1",
        "localhost/missing:1",
        "localhost/loop:1",
    ] {
        assert!(by_tag[t].config.is_none(), "{t}");
        assert!(
            by_tag[t].claimed_id.starts_with("missing-")
                && oci_walk::is_dangling_target(&by_tag[t].claimed_id),
            "{t}: {}",
            by_tag[t].claimed_id
        );
    }
    assert_eq!(
        by_tag["localhost/altered:1"].claimed_id,
        format!("missing-manifest:{altered_digest}")
    );
    assert_eq!(
        by_tag["localhost/loop:1"].claimed_id,
        format!("missing-index:{loop_digest}")
    );
    assert!(!by_tag.contains_key("localhost/artifact:1"));
    // the config's size is reported, the image still shown
    assert!(by_tag["localhost/lying:1"].config.is_some());
    // an untagged entry that cannot be followed is not shown at all
    assert_eq!(inv.images.len(), by_tag.len());
}

#[test]
fn indexes_nested_too_deep_end_with_a_problem() {
    // No blob can name its own digest, so a loop is caught as depth: seven indexes
    // deep is past the bound.
    let mut layout = MemLayout::default();
    let (leaf, _) = layout.image(1);
    let mut inner = layout.add(
        MT_INDEX,
        &json!({"mediaType": MT_INDEX, "manifests": [leaf]}),
    );
    for _ in 0..6 {
        inner = layout.add(
            MT_INDEX,
            &json!({"mediaType": MT_INDEX, "manifests": [inner]}),
        );
    }
    layout.set_index(vec![named(inner, "localhost/deep:1")]);
    let inv = oci_walk::scan_layout(&layout).unwrap();
    assert!(
        inv.problems.iter().any(|p| p.contains("nests too deep")),
        "{:?}",
        inv.problems
    );
    assert!(inv.images[0].config.is_none());
}

#[test]
fn a_broken_index_json_fails_the_scan_with_its_name() {
    let mut layout = MemLayout {
        index: b"{\"manifests\": 7}".to_vec(),
        ..Default::default()
    };
    let e = oci_walk::scan_layout(&layout).unwrap_err();
    assert!(e.to_string().contains("mem/index.json"), "{e}");
    layout.index = b"{}".to_vec();
    let e = oci_walk::scan_layout(&layout).unwrap_err();
    assert!(e.to_string().contains("no \"manifests\""), "{e}");
    // more entries than the mount allows: the first shown, the rest reported
    let images: Vec<Value> = (1..=3).map(|n| layout.image(n).0).collect();
    layout.set_index(images);
    layout.limits.max_images = 2;
    let inv = oci_walk::scan_layout(&layout).unwrap();
    assert_eq!(inv.images.len(), 2);
    assert_eq!(inv.problems.len(), 1, "{:?}", inv.problems);
}

#[test]
fn blob_paths_and_bare_tag_repositories() {
    assert_eq!(
        oci_walk::blob_rel_path(&format!("sha256:{}", "a".repeat(64))).unwrap(),
        format!("blobs/sha256/{}", "a".repeat(64))
    );
    for bad in ["sha256:../../x", "sha256:", "../blobs", "sha256:ABC"] {
        assert_eq!(oci_walk::blob_rel_path(bad), None, "{bad}");
    }
    let repo = |p: &str| oci_walk::repository_from_file_name(std::path::Path::new(p));
    assert_eq!(repo("/tmp/My_Cache.oci.tar.gz"), "localhost/my-cache");
    assert_eq!(repo("/tmp/__"), "localhost/image");
}

/// The layout as the index walk now sees it: tag → image ID.
fn tags_now(layout: &MemLayout) -> BTreeMap<String, String> {
    let inv = oci_walk::scan_layout(layout).unwrap();
    assert!(inv.problems.is_empty(), "{:?}", inv.problems);
    inv.images
        .iter()
        .flat_map(|r| r.tags.iter().map(|t| (t.to_string(), r.claimed_id.clone())))
        .collect()
}

fn edit(layout: &mut MemLayout, e: Edit<'_>) -> Result<oci_index::Edited, StoreError> {
    let edited = oci_index::apply(layout, &e)?;
    layout.index = edited.index.clone();
    Ok(edited)
}

fn entries(layout: &MemLayout) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&layout.index).unwrap();
    v["manifests"].as_array().unwrap().clone()
}

#[test]
fn index_edits_tag_untag_retag_and_delete_as_a_layout_records_them() {
    let mut layout = MemLayout::default();
    let (one, one_id) = layout.image(1);
    let (two, two_id) = layout.image(2);
    layout.set_index(vec![named(one.clone(), "localhost/app:1"), two.clone()]);

    // a tag reuses the image's unnamed entry, or adds one
    edit(
        &mut layout,
        Edit::Tag {
            id: &two_id,
            tag: &tag("localhost/app:2"),
        },
    )
    .unwrap();
    assert_eq!(entries(&layout).len(), 2, "the unnamed entry took the name");
    edit(
        &mut layout,
        Edit::Tag {
            id: &one_id,
            tag: &tag("localhost/app:latest"),
        },
    )
    .unwrap();
    assert_eq!(entries(&layout).len(), 3);
    let ref_name = "org.opencontainers.image.ref.name";
    assert_eq!(
        entries(&layout)[2]["annotations"][ref_name],
        "localhost/app:latest"
    );
    // a tag names one image: moving it takes it from the other
    edit(
        &mut layout,
        Edit::Tag {
            id: &two_id,
            tag: &tag("localhost/app:latest"),
        },
    )
    .unwrap();
    assert_eq!(
        tags_now(&layout),
        BTreeMap::from([
            ("localhost/app:1".to_string(), one_id.clone()),
            ("localhost/app:2".to_string(), two_id.clone()),
            ("localhost/app:latest".to_string(), two_id.clone()),
        ])
    );

    // re-tag over an existing name replaces it
    edit(
        &mut layout,
        Edit::Retag {
            from: &tag("localhost/app:1"),
            to: &tag("localhost/app:2"),
        },
    )
    .unwrap();
    assert_eq!(
        tags_now(&layout),
        BTreeMap::from([
            ("localhost/app:2".to_string(), one_id.clone()),
            ("localhost/app:latest".to_string(), two_id.clone()),
        ])
    );

    // an image's last entry keeps its descriptor when its name goes: still in by-id
    edit(&mut layout, Edit::Untag(&tag("localhost/app:2"))).unwrap();
    let inv = oci_walk::scan_layout(&layout).unwrap();
    assert!(
        inv.images
            .iter()
            .any(|r| r.claimed_id == one_id && r.tags.is_empty())
    );

    // a tagged image is not deleted; an untagged one is, with the blobs only it used
    let e = edit(&mut layout, Edit::Delete(&two_id)).err().unwrap();
    assert!(matches!(e, StoreError::Busy(_)), "{e:?}");
    let edited = edit(&mut layout, Edit::Delete(&one_id)).unwrap();
    assert_eq!(edited.removed.len(), 1);
    let unshared = oci_index::unshared_blobs(&layout, &edited.index, &edited.removed);
    assert!(unshared.contains(&one_id), "{unshared:?}");
    assert!(unshared.contains(&one["digest"].as_str().unwrap().to_string()));
    assert!(!unshared.contains(&two_id), "{unshared:?}");
    assert!(!unshared.contains(&two["digest"].as_str().unwrap().to_string()));
    assert_eq!(
        tags_now(&layout),
        BTreeMap::from([("localhost/app:latest".to_string(), two_id.clone())])
    );

    // what is not there is NotFound, and the index is left as it was
    let before = layout.index.clone();
    for e in [
        Edit::Untag(&tag("localhost/none:1")),
        Edit::Retag {
            from: &tag("localhost/none:1"),
            to: &tag("localhost/x:1"),
        },
        Edit::Delete(&one_id),
    ] {
        let err = oci_index::apply(&layout, &e).err().unwrap();
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    }
    assert_eq!(layout.index, before);
}

#[test]
fn index_edits_keep_what_they_do_not_understand_and_containerds_names() {
    let mut layout = MemLayout::default();
    let (one, _) = layout.image(1);
    let mut entry = named(one, "localhost/app:1");
    entry["annotations"]["io.containerd.image.name"] = json!("localhost/app:1");
    entry["annotations"]["org.example.kept"] = json!("yes");
    entry["x-unknown-field"] = json!([1, 2]);
    let mut index = json!({"schemaVersion": 2, "manifests": [entry]});
    index["x-top"] = json!("kept");
    layout.index = serde_json::to_vec(&index).unwrap();
    edit(
        &mut layout,
        Edit::Retag {
            from: &tag("localhost/app:1"),
            to: &tag("localhost/app:2"),
        },
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&layout.index).unwrap();
    assert_eq!(v["x-top"], "kept");
    let e = &v["manifests"][0];
    assert_eq!(e["x-unknown-field"], json!([1, 2]));
    assert_eq!(e["annotations"]["org.example.kept"], "yes");
    assert_eq!(
        e["annotations"]["io.containerd.image.name"],
        "localhost/app:2"
    );
    assert_eq!(
        e["annotations"]["org.opencontainers.image.ref.name"],
        "localhost/app:2"
    );
    edit(&mut layout, Edit::Untag(&tag("localhost/app:2"))).unwrap();
    let v: Value = serde_json::from_slice(&layout.index).unwrap();
    let ann = &v["manifests"][0]["annotations"];
    assert_eq!(
        ann,
        &json!({"org.example.kept": "yes"}),
        "only the names went"
    );
    assert!(tags_now(&layout).is_empty());
}

#[test]
fn an_index_over_the_bound_is_not_rewritten() {
    let mut layout = MemLayout::default();
    let (one, one_id) = layout.image(1);
    layout.set_index(vec![
        named(one.clone(), "localhost/a:1"),
        named(one, "localhost/a:2"),
    ]);
    layout.limits.max_images = 1;
    let e = oci_index::apply(
        &layout,
        &Edit::Tag {
            id: &one_id,
            tag: &tag("localhost/a:3"),
        },
    )
    .err()
    .unwrap();
    assert!(matches!(e, StoreError::Unsupported(_)), "{e:?}");
    layout.index = b"[not json".to_vec();
    let e = oci_index::apply(&layout, &Edit::Untag(&tag("localhost/a:1")))
        .err()
        .unwrap();
    assert!(matches!(e, StoreError::Format { .. }), "{e:?}");
}

#[test]
fn reachable_blobs_are_walked_without_recursion_and_bounded() {
    let mut layout = MemLayout::default();
    let (leaf, id) = layout.image(1);
    let mut top = leaf.clone();
    for _ in 0..200 {
        top = layout.add(MT_INDEX, &json!({"manifests": [top]}));
    }
    let mut seen = HashSet::new();
    let desc: Descriptor = serde_json::from_value(top).unwrap();
    assert!(oci_index::reachable(&layout, &desc, &mut seen));
    // 200 indexes, the manifest, its config and its layer
    assert_eq!(seen.len(), 203);
    assert!(seen.contains(&id));
}
