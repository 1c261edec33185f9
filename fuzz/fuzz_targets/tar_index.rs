//! Any bytes as a tar archive: the index must come back (possibly empty, with
//! problems), and link resolution must stay inside the archive.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imagefs::fuzzing::tar_index(data));
