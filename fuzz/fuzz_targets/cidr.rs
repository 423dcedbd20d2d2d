//! `--cluster-range` and friends: CIDR text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::cidr::Ipv4Cidr;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cidr) = text.parse::<Ipv4Cidr>() {
        assert!(cidr.prefix() <= 32);
        assert!(cidr.first() <= cidr.last());
        assert!(cidr.contains(cidr.first()) && cidr.contains(cidr.last()));
        assert_eq!(u64::from(cidr.last() - cidr.first()) + 1, cidr.size());
        assert!(cidr.overlaps(&cidr));
        // The canonical form parses back to the same range.
        assert_eq!(cidr.to_string().parse::<Ipv4Cidr>().ok(), Some(cidr));
    }
});
