//! Any bytes as a kept tar index's payload (framed with a valid checksum): an index
//! whose names resolve inside the archive, or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imagefs::fuzzing::kept_tar_index(data));
