//! `mem:`, a store described by a JSON file and held in memory, mounted by the real
//! binary: the in-memory kind the core's tests use is a kind like any other.

use crate::common::*;

#[test]
fn a_mem_store_mounts_hashes_and_takes_writes_in_memory_only() {
    let dir = tempfile::tempdir().unwrap();
    let desc = dir.path().join("store.json");
    let gone = format!("sha256:{}", "0".repeat(64));
    let description = format!(
        r#"{{"images": [
              {{"config": {{"architecture": "amd64", "os": "linux", "n": 1}},
                "tags": ["localhost/app:1", "localhost/app:latest"]}},
              {{"config": {{"architecture": "arm64", "os": "linux", "n": 2}}}}],
            "dangling": [{{"tag": "localhost/gone:1", "id": "{gone}"}}]}}"#
    );
    std::fs::write(&desc, &description).unwrap();
    let m = Mount::new(&[&format!("mem:{}", desc.display())]);

    // by-id: two configs, each hashing to its own name
    let ids = ok(&format!("ls {}", m.p("by-id")));
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let sums = ok(&format!("cd {} && sha256sum *", m.p("by-id")));
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(format!("sha256:{sum}"), name, "{sums}");
    }
    // the tags are hard links of their image; the dangling tag is a broken link
    let tagged = tags_of(&m, "");
    assert_eq!(
        tagged.keys().collect::<Vec<_>>(),
        ["localhost/app:1", "localhost/app:latest"]
    );
    assert_eq!(tagged["localhost/app:1"], tagged["localhost/app:latest"]);
    let links = ok(&format!("stat -c %h {}", m.p("by-tag/localhost/app:1")));
    assert_eq!(links.trim(), "3");
    let dangling = ok(&format!("cd {} && find . -xtype l", m.p("by-tag")));
    assert_eq!(dangling.trim(), "./localhost/gone:1");

    // ln tags the untagged image, rm untags, mv re-tags: all in memory
    let untagged = ids
        .iter()
        .find(|id| **id != tagged["localhost/app:1"])
        .unwrap();
    ok(&format!(
        "ln {} {}",
        m.p(&format!("by-id/{untagged}")),
        m.p("by-tag/localhost/app:2")
    ));
    ok(&format!("rm {}", m.p("by-tag/localhost/app:latest")));
    ok(&format!(
        "mv {} {}",
        m.p("by-tag/localhost/app:1"),
        m.p("by-tag/localhost/app:one")
    ));
    let now = tags_of(&m, "");
    assert_eq!(now["localhost/app:2"], *untagged);
    assert_eq!(now["localhost/app:one"], tagged["localhost/app:1"]);
    assert_eq!(now.len(), 2, "{now:?}");
    // a tagged image is not deleted; an untagged one is
    assert!(
        !sh(&format!("rm {}", m.p(&format!("by-id/{untagged}"))))
            .status
            .success()
    );
    ok(&format!("rm {}", m.p("by-tag/localhost/app:2")));
    ok(&format!("rm {}", m.p(&format!("by-id/{untagged}"))));
    assert_eq!(ok(&format!("ls {}", m.p("by-id"))).lines().count(), 1);
    // the description is the store's start, never written
    assert_eq!(std::fs::read_to_string(&desc).unwrap(), description);
}
