//! Data header and inner IPv4 addresses from a hostile datagram.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::router::packet::{DataHeader, HEADER_LEN, ipv4_addresses};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = DataHeader::parse(data) {
        // Accepted headers re-encode to exactly the bytes they came from.
        let mut out = [0u8; HEADER_LEN];
        header.emit(&mut out);
        assert_eq!(&out[..], &data[..HEADER_LEN]);
        assert!(header.session < 1 << 24);
        assert!(header.counter < 1 << 48);
        let _ = ipv4_addresses(&data[HEADER_LEN..]);
    }
    if let Some((src, dst)) = ipv4_addresses(data) {
        assert_eq!(src.to_be_bytes(), data[12..16]);
        assert_eq!(dst.to_be_bytes(), data[16..20]);
    }
});
