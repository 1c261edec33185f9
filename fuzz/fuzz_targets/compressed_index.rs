//! Any bytes as a compressed archive's kept index payload (the data region, the
//! header, its length), as `load` takes it once the checksum passed; every kept
//! member is then read back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imagefs::fuzzing::compressed_index(data));
