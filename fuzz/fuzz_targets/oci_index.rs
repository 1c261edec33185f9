//! Any bytes as an OCI layout's index.json, the blobs the fixture layout's.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let layout = common::scratch("oci-index").join("layout");
    common::copy_dir(&common::fixtures().join("layout"), &layout);
    std::fs::write(layout.join("index.json"), data).expect("write index.json");
    common::mount_like(&format!("oci:{}", layout.display()));
});
