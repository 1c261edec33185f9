//! Any bytes as a kept catalog's payload (framed with a valid checksum, so that the
//! decoding is what runs): a catalog or an error, and a decoded one keeps its promises.
#![no_main]

use imagefs::kept::{self, KeptKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let framed = kept::frame(KeptKind::Catalog, data);
    if let Ok((_, catalog)) = kept::decode::<imagefs::catalog::Catalog>(KeptKind::Catalog, &framed) {
        for image in &catalog.images {
            let _ = image.config_size();
            for t in &image.tags {
                let _ = t.file_name();
            }
        }
    }
});
