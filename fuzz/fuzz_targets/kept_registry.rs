//! Any bytes as a kept registry state's payload (framed with a valid checksum, so
//! that the decoding and the checks a mount makes on it are what runs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imagefs::fuzzing::kept_registry(data));
