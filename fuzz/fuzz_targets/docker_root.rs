//! Any bytes as a Docker data root's repositories.json; imagedb holds the sample's
//! configs, layerdb nothing (sizes are then unknown).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Once;

#[path = "common.rs"]
mod common;

fn root() -> std::path::PathBuf {
    static MADE: Once = Once::new();
    let root = common::scratch("docker-root").join("docker");
    MADE.call_once(|| {
        let content = root.join("image/vfs/imagedb/content/sha256");
        std::fs::create_dir_all(&content).expect("imagedb");
        std::fs::create_dir_all(root.join("containers")).expect("containers");
        let file = std::fs::File::open(common::fixtures().join("sample.tar"))
            .expect("the sample archive (run the mount tests first)");
        let mut a = tar::Archive::new(file);
        for e in a.entries().expect("sample.tar") {
            let mut e = e.expect("member");
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            if let Some(hex) = name.strip_suffix(".json").filter(|h| h.len() == 64) {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).expect("read");
                std::fs::write(content.join(hex), data).expect("write a config");
            }
        }
    });
    root
}

fuzz_target!(|data: &[u8]| {
    let root = root();
    std::fs::write(root.join("image/vfs/repositories.json"), data).expect("write");
    common::mount_like(&format!("docker-root:{}", root.display()));
});
