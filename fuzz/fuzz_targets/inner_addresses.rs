//! `router::packet::inner_addresses`: the source and destination of an
//! inner packet read from the TUN or opened from a peer, IPv4 or IPv6
//! (issue 19). Oracle: a result only for a version nibble of 4 or 6 and at
//! least that family's fixed header; the keys are the header's address
//! bytes (IPv4 mapped into `::ffff:0:0/96`, IPv6 never there unless the
//! packet says so).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weft::router::packet::{addr_key, inner_addresses};

fuzz_target!(|data: &[u8]| {
    let got = inner_addresses(data);
    match (data.first().map(|b| b >> 4), data.len()) {
        (Some(4), 20..) => {
            let a = |at: usize| {
                addr_key(IpAddr::V4(Ipv4Addr::new(
                    data[at],
                    data[at + 1],
                    data[at + 2],
                    data[at + 3],
                )))
            };
            let got = got.expect("a whole IPv4 header");
            assert!(!got.ipv6);
            assert_eq!((got.src, got.dst), (a(12), a(16)));
        }
        (Some(6), 40..) => {
            let a = |at: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&data[at..at + 16]);
                addr_key(IpAddr::V6(Ipv6Addr::from(b)))
            };
            let got = got.expect("a whole IPv6 header");
            assert!(got.ipv6);
            assert_eq!((got.src, got.dst), (a(8), a(24)));
        }
        _ => assert_eq!(got, None),
    }
});
