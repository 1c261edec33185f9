//! Any bytes as containers-storage's images.json, the rest of the store (big-data
//! files, layers.json, images.lock) the fixture store's.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let root = common::scratch("containers-storage").join("root");
    common::copy_dir(&common::fixtures().join("cs"), &root);
    std::fs::write(root.join("vfs-images/images.json"), data).expect("write images.json");
    common::mount_like(&format!("containers-storage:{}", root.display()));
});
