//! Any bytes as a manifest or index blob of an OCI layout: the blob is stored under
//! its digest and named, tagged, by the layout's only index entry; the other blobs
//! are the fixture layout's, so a fuzzed manifest can name their configs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let layout = common::scratch("oci-blob").join("layout");
    common::copy_dir(&common::fixtures().join("layout"), &layout);
    let hex = common::sha256_hex(data);
    let blob = layout.join("blobs/sha256").join(&hex);
    std::fs::write(&blob, data).expect("write the blob");
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:{hex}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"localhost/fuzz:1"}}}}]}}"#,
        data.len()
    );
    std::fs::write(layout.join("index.json"), index).expect("write index.json");
    common::mount_like(&format!("oci:{}", layout.display()));
    let _ = std::fs::remove_file(blob);
});
