//! Any bytes as a compressed archive's persisted index: the header JSON (up to the
//! first NUL byte) and the data region after it, as `load` would take them once the
//! checksum passed; every kept member is then read back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (json, region) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let _ = imagefs::source::compressed::fuzz_index_header(json, region);
});
