//! Any string as an image reference: a tag parses to canonical components that join
//! back to its name, and its canonical form parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imagefs::fuzzing::reference(data));
