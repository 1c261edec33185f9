//! Any bytes as a bbolt file (containerd's meta.db): the reader must answer with data
//! or an error, never a panic, a hang or an out-of-bounds read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imagefs::fuzzing::bbolt(data));
