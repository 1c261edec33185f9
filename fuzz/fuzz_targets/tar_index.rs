//! Any bytes as a tar archive: the index must come back (possibly empty, with
//! problems), and link resolution must stay inside the archive.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let index = imagefs::tar_index::TarIndex::build(std::io::Cursor::new(data), data.len() as u64);
    for (name, member) in index.entries() {
        assert!(!name.starts_with('/') && !name.split('/').any(|c| c == ".."));
        let _ = index.resolve(name);
        let _ = member.entry_end();
    }
});
