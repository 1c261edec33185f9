//! Any string as an image reference: a tag parses to canonical components that join
//! back to its name, and its canonical form parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(imagefs::reference::Parsed::Tag(t)) = imagefs::reference::parse(s) {
        let canonical = t.to_string();
        match imagefs::reference::parse(&canonical) {
            Ok(imagefs::reference::Parsed::Tag(again)) => assert_eq!(again, t, "{canonical}"),
            other => panic!("{canonical} does not parse back: {other:?}"),
        }
        let comps = t.components();
        assert!(comps.iter().all(|c| !c.is_empty() && c != "." && c != ".."));
        assert_eq!(comps.last(), Some(&t.file_name()));
        let _ = t.file_name_fits();
    }
});
