//! `ipam::AddrRange::parse`, the family-agnostic range text (`--ipalloc-range`
//! and the state files): never panics; an accepted range is aligned and its
//! text parses back to the same range.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::ipam::AddrRange;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(range) = AddrRange::parse(text) {
        let again = AddrRange::parse(&range.to_string()).expect("canonical text parses");
        assert_eq!(again, range);
    }
});
