//! The segmenter on hostile TUN reads: a virtio header and a packet. It must
//! never panic, never write past its output, and whatever it accepts as a
//! TCP/UDP IPv4 super-packet must come out as segments whose checksums
//! verify by recomputation and whose payloads rebuild the original.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::router::checksum::{fold, pseudo_header, sum};
use weft::router::segment::Segmenter;
use weft::router::vnet::{GSO_NONE, GSO_TCPV4, GSO_UDP_L4, VNET_HDR_LEN, VnetHdr};

fuzz_target!(|data: &[u8]| {
    let Some(hdr) = VnetHdr::parse(data) else {
        return;
    };
    let packet = &data[VNET_HDR_LEN..];
    let Ok(mut seg) = Segmenter::new(&hdr, packet) else {
        return;
    };
    let max = seg.max_segment_len();
    let kind = hdr.gso_kind();
    let v4 = packet.first().is_some_and(|b| b >> 4 == 4);
    let mut out = vec![0u8; max];
    let mut payload = Vec::new();
    let mut hlen = 0;
    let mut count = 0;
    while let Some(n) = seg.next_into(&mut out) {
        assert!(n <= max);
        count += 1;
        let s = &out[..n];
        if kind == GSO_NONE {
            assert_eq!(n, packet.len());
            continue;
        }
        if v4 {
            let ihl = usize::from(s[0] & 0x0f) * 4;
            assert_eq!(fold(sum(&s[..ihl], 0)), 0xffff, "IPv4 header checksum");
            let proto = s[9];
            let l4 = ihl;
            let pseudo = pseudo_header(s, proto, n - l4).unwrap();
            assert_eq!(fold(sum(&s[l4..], pseudo)), 0xffff, "L4 checksum");
            hlen = if kind == GSO_TCPV4 {
                l4 + usize::from(s[l4 + 12] >> 4) * 4
            } else {
                l4 + 8
            };
            payload.extend_from_slice(&s[hlen..]);
        }
        assert!(count <= 70_000);
    }
    assert_eq!(seg.remaining(), 0);
    if kind != GSO_NONE && v4 && (kind == GSO_TCPV4 || kind == GSO_UDP_L4) {
        assert_eq!(&payload[..], &packet[hlen..], "payload rebuilt");
    }
});
