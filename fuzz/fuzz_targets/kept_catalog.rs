//! Any bytes as a kept catalog's payload (framed with a valid checksum, so that the
//! decoding is what runs): a catalog or an error, and a decoded one keeps its promises.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imagefs::fuzzing::kept_catalog(data));
