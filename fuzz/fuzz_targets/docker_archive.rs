//! Any bytes as a docker-save archive's manifest.json, the rest of the archive the
//! sample's (configs, layers, podman's layer links).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "common.rs"]
mod common;

/// The sample archive's members but manifest.json: (header, data).
fn members() -> &'static Vec<(tar::Header, Vec<u8>)> {
    static M: OnceLock<Vec<(tar::Header, Vec<u8>)>> = OnceLock::new();
    M.get_or_init(|| {
        let file = std::fs::File::open(common::fixtures().join("sample.tar"))
            .expect("the sample archive (run the mount tests first)");
        let mut out = Vec::new();
        let mut a = tar::Archive::new(file);
        for e in a.entries().expect("sample.tar") {
            let mut e = e.expect("sample.tar member");
            if e.path_bytes().as_ref() == b"manifest.json" {
                continue;
            }
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).expect("read");
            out.push((e.header().clone(), data));
        }
        out
    })
}

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("docker-archive").join("a.tar");
    let mut b = tar::Builder::new(Vec::new());
    for (h, d) in members() {
        let mut h = h.clone();
        let _ = b.append(&mut h, &d[..]);
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o444);
    h.set_cksum();
    let _ = b.append_data(&mut h, "manifest.json", data);
    let Ok(bytes) = b.into_inner() else { return };
    std::fs::write(&path, bytes).expect("write the archive");
    common::mount_like(&format!("docker-archive:{}", path.display()));
});
