#![allow(clippy::unwrap_used)]
//! The NFLOG codec on bytes captured from the kernel (6.18, in a network
//! namespace of its own: an nft `log prefix "dcafe_in" group 6783` rule on
//! `output`, a socket bound as [`config_request`] does, then a ping, a UDP
//! datagram to port 53 and a TCP SYN to port 80), and on hostile variants.

use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const ICMP: &str = "9c00000000040000000000000000000002001a7f08000100080003000d000a0064636166655f696e00000000080005000000000108000b000000000008000e000000000058000900450000542c6c40004001103a7f0000017f0000020800590e344b00017983106b0000000021e4000000000000101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637";
const UDP: &str = "6c00000000040000000000000000000002001a7f08000100080003000d000a0064636166655f696e00000000080005000000000108000b000000000008000e000000000025000900450000213dc840004011ff007f0000017f000002e50f0035000dfe2168656c6c6f000000";
const TCP: &str = "8400000000040000000000000000000002001a7f08000100080003000d000a0064636166655f696e00000000080005000000000108000b000000000008000e0000000000400009004500003c740340004006c8b57f0000017f00000298f40050eb68752000000000a002ffd7fe3100000204ffd70402080ab8afcccb000000000103030a";
/// The kernel's answer to the bind: success.
const ACK: &str = "240000000200000101000000193400000000000030000000010405000100000000000000";
/// The answer to a second socket binding the same group: EPERM.
const REFUSED: &str = "300000000200000001000000dab653ceffffffff1c00000001040500010000000000000000001a7f0500010001000000";

fn packet(bytes: &[u8]) -> Logged {
    let batch = parse(bytes);
    assert_eq!(batch.malformed, 0);
    match &batch.messages[..] {
        [Message::Packet(logged)] => logged.clone(),
        other => panic!("{other:?}"),
    }
}

fn loopback(dst: u8) -> (Ipv4Addr, Ipv4Addr) {
    (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, dst))
}

#[test]
fn captured_packets_give_the_prefix_addresses_protocol_and_ports() {
    let (src, dst) = loopback(2);
    let tcp = packet(&hex(TCP));
    assert_eq!(tcp.prefix, "dcafe_in");
    assert_eq!(
        tcp.packet,
        Some(IpHeader {
            src: src.into(),
            dst: dst.into(),
            protocol: 6,
            ports: Some((39156, 80)),
        })
    );
    let udp = packet(&hex(UDP)).packet.unwrap();
    assert_eq!((udp.protocol, udp.ports), (17, Some((58639, 53))));
    let icmp = packet(&hex(ICMP)).packet.unwrap();
    assert_eq!((icmp.src, icmp.dst), (src.into(), dst.into()));
    assert_eq!((icmp.protocol, icmp.ports), (1, None));
}

#[test]
fn one_read_may_hold_several_messages() {
    let mut bytes = hex(ICMP);
    bytes.extend(hex(UDP));
    bytes.extend(hex(ACK));
    bytes.extend(hex(TCP));
    let batch = parse(&bytes);
    assert_eq!(batch.malformed, 0);
    assert_eq!(batch.messages.len(), 4);
    assert_eq!(batch.messages[2], Message::Ack { seq: 1, errno: 0 });
    assert!(matches!(&batch.messages[3], Message::Packet(l) if l.packet.unwrap().protocol == 6));
}

#[test]
fn the_bind_answer_says_success_or_the_error() {
    assert_eq!(
        parse(&hex(ACK)).messages,
        vec![Message::Ack { seq: 1, errno: 0 }]
    );
    assert_eq!(
        parse(&hex(REFUSED)).messages,
        vec![Message::Ack {
            seq: 1,
            errno: libc::EPERM
        }]
    );
}

/// The request the kernel acknowledged above (bind, copy mode, queue
/// threshold), with our copy range of 128 bytes (the capture had 64; the
/// kernel takes any range up to the packet, and tests/policy.rs binds with
/// this one).
#[test]
fn the_bind_request_is_the_one_the_kernel_accepted() {
    let expected = "3000000001040500010000000000000000001a7f05000100010000000a00020000000080020000000800040000000001";
    assert_eq!(config_request(GROUP, 1), hex(expected));
}

#[test]
fn every_truncation_is_counted_never_a_panic() {
    let whole = hex(TCP);
    for cut in 0..whole.len() {
        let batch = parse(&whole[..cut]);
        assert!(batch.messages.is_empty(), "cut {cut}: {batch:?}");
        assert_eq!(batch.malformed, u32::from(cut > 0), "cut {cut}");
    }
}

#[test]
fn hostile_lengths_end_the_batch() {
    let good = hex(UDP);
    // A message length of 0, of 3, or past the end: nothing after it can
    // be framed.
    for len in [0u32, 3, 10_000] {
        let mut bytes = good.clone();
        bytes[..4].copy_from_slice(&len.to_ne_bytes());
        bytes.extend(hex(ACK));
        let batch = parse(&bytes);
        assert_eq!((batch.messages.len(), batch.malformed), (0, 1), "{len}");
    }
    // An attribute of length 0, 2 or past its message: that message is
    // malformed, the next one still read.
    for attr_len in [0u16, 2, 500] {
        let mut bytes = good.clone();
        // The first attribute (after the 16-byte header and nfgenmsg).
        bytes[20..22].copy_from_slice(&attr_len.to_ne_bytes());
        bytes.extend(hex(ACK));
        let batch = parse(&bytes);
        assert_eq!(batch.malformed, 1, "{attr_len}");
        assert_eq!(batch.messages, vec![Message::Ack { seq: 1, errno: 0 }]);
    }
}

#[test]
fn a_hostile_prefix_is_bounded_and_printable() {
    let mut bytes = hex(UDP);
    // The prefix attribute: "dcafe_in\0" at offset 32..41; a newline (a
    // forged log line) and a byte past ASCII go, a quote stays.
    bytes[33] = b'\n';
    bytes[34] = 0xc3;
    bytes[35] = b'"';
    assert_eq!(packet(&bytes).prefix, "d\"e_in");
    // No terminating NUL and longer than the bound: cut.
    let mut long = Vec::new();
    long.extend_from_slice(&bytes[..28]);
    let prefix = [b'p'; 100];
    long.extend_from_slice(&104u16.to_ne_bytes());
    long.extend_from_slice(&10u16.to_ne_bytes());
    long.extend_from_slice(&prefix);
    let len = u32::try_from(long.len()).unwrap();
    long[..4].copy_from_slice(&len.to_ne_bytes());
    assert_eq!(packet(&long).prefix, "p".repeat(MAX_PREFIX));
}

fn ipv4(ihl: u8, protocol: u8, flags_fragment: u16, tail: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; usize::from(ihl) * 4];
    b[0] = 0x40 | ihl;
    b[6..8].copy_from_slice(&flags_fragment.to_be_bytes());
    b[9] = protocol;
    b[12..16].copy_from_slice(&[10, 32, 0, 1]);
    b[16..20].copy_from_slice(&[10, 32, 0, 2]);
    b.extend_from_slice(tail);
    b
}

#[test]
fn ports_come_after_options_and_only_in_first_fragments() {
    let ports = [0x30, 0x39, 0x00, 0x51];
    // SCTP with 4 bytes of options: ports after 24 bytes.
    let p = parse_ipv4(&ipv4(6, 132, 0, &ports)).unwrap();
    assert_eq!(p.ports, Some((12345, 81)));
    assert_eq!(p.src, IpAddr::from([10, 32, 0, 1]));
    // Don't-fragment set, offset 0: ports.
    assert!(
        parse_ipv4(&ipv4(5, 17, 0x4000, &ports))
            .unwrap()
            .ports
            .is_some()
    );
    // A later fragment: bytes there are data, not ports.
    assert_eq!(parse_ipv4(&ipv4(5, 6, 0x0010, &ports)).unwrap().ports, None);
    // Ports cut off: none.
    assert_eq!(parse_ipv4(&ipv4(5, 6, 0, &ports[..3])).unwrap().ports, None);
    // Not IPv4, or a header length under 20: nothing.
    let mut v6 = ipv4(5, 6, 0, &ports);
    v6[0] = 0x65;
    assert_eq!(parse_ipv4(&v6), None);
    let mut short = ipv4(5, 6, 0, &ports);
    short[0] = 0x44;
    assert_eq!(parse_ipv4(&short), None);
    assert_eq!(parse_ipv4(&[]), None);
}

proptest! {
    /// Arbitrary bytes, alone or after a valid message: no panic, and no
    /// more messages than 16-byte headers fit.
    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let batch = parse(&tail);
        prop_assert!(batch.messages.len() <= tail.len() / 16);
        let mut bytes = hex(TCP);
        bytes.extend(&tail);
        let batch = parse(&bytes);
        prop_assert!(!batch.messages.is_empty());
        let _ = parse_ipv4(&tail);
        if let Some(header) = parse_ip(&tail) {
            prop_assert!(header.ports.is_none() || matches!(header.protocol, 6 | 17 | 132));
        }
    }

    /// Any chain of extension headers, lengths and cuts: no panic; ports
    /// only for TCP, UDP and SCTP, and only when the whole chain is there.
    #[test]
    fn arbitrary_ipv6_extension_chains_never_panic(
        chain in proptest::collection::vec((prop_oneof![Just(0u8), Just(43), Just(44), Just(60), any::<u8>()], any::<u8>(), any::<u16>()), 0..12),
        upper in any::<u8>(),
        cut in 0usize..200,
    ) {
        let chain: Vec<Extension> = chain.into_iter().map(|(kind, units, fragment)| (kind, units % 4, fragment)).collect();
        let whole = ipv6(&chain, upper, &PORTS);
        let bytes = &whole[..cut.min(whole.len())];
        let header = parse_ip(bytes);
        prop_assert_eq!(header.is_some(), bytes.len() >= 40);
        if let Some(h) = header {
            prop_assert!(h.ports.is_none() || matches!(h.protocol, 6 | 17 | 132));
            if h.ports.is_some() && chain.iter().all(|e| matches!(e.0, 0 | 43 | 44 | 60)) {
                prop_assert_eq!(h.ports, Some((12345, 81)));
            }
        }
    }
}

/// An IPv6 extension header: its kind, length in 8-byte units past the
/// first 8 (fragment headers are always 8; an authentication header's in
/// 4-byte units past the first 8), and for a fragment header its
/// offset-and-flags field.
type Extension = (u8, u8, u16);

const PORTS: [u8; 4] = [0x30, 0x39, 0x00, 0x51];
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x32, 0, 0, 0, 0, 0, 1);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x32, 0, 0, 0, 0, 0, 2);

/// An IPv6 packet from fd00:32::1 to fd00:32::2: the fixed header, the
/// extension headers `chain`, then `upper`'s first bytes `tail`. Only
/// extension headers of `chain` link by their next header; the first kind
/// of `chain` is the fixed header's next header.
fn ipv6(chain: &[Extension], upper: u8, tail: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 40];
    b[0] = 0x60;
    b[6] = chain.first().map_or(upper, |e| e.0);
    b[7] = 64;
    b[8..24].copy_from_slice(&SRC6.octets());
    b[24..40].copy_from_slice(&DST6.octets());
    for (i, (kind, units, fragment)) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map_or(upper, |e| e.0);
        if *kind == 51 {
            // Authentication: 4-byte units past the first 8.
            let mut e = vec![0u8; (usize::from(*units) + 2) * 4];
            e[0] = next;
            e[1] = *units;
            b.extend_from_slice(&e);
        } else if *kind == 44 {
            let mut f = [0u8; 8];
            f[0] = next;
            f[2..4].copy_from_slice(&fragment.to_be_bytes());
            b.extend_from_slice(&f);
        } else {
            let mut e = vec![0u8; (usize::from(*units) + 1) * 8];
            e[0] = next;
            e[1] = *units;
            b.extend_from_slice(&e);
        }
    }
    b.extend_from_slice(tail);
    b
}

#[test]
fn ipv6_tcp_and_udp_give_the_addresses_protocol_and_ports() {
    let tcp = parse_ip(&ipv6(&[], 6, &PORTS)).unwrap();
    assert_eq!(
        tcp,
        IpHeader {
            src: SRC6.into(),
            dst: DST6.into(),
            protocol: 6,
            ports: Some((12345, 81)),
        }
    );
    let udp = parse_ip(&ipv6(&[], 17, &PORTS)).unwrap();
    assert_eq!((udp.protocol, udp.ports), (17, Some((12345, 81))));
    let icmp = parse_ip(&ipv6(&[], 58, &[128, 0, 0, 0])).unwrap();
    assert_eq!((icmp.protocol, icmp.ports), (58, None));
    // parse_ipv4 does not read IPv6, parse_ipv6 not IPv4.
    assert_eq!(parse_ipv4(&ipv6(&[], 6, &PORTS)), None);
    assert_eq!(parse_ipv6(&ipv4(5, 6, 0, &PORTS)), None);
    assert_eq!(
        parse_ip(&ipv4(5, 6, 0, &PORTS)).unwrap().ports,
        Some((12345, 81))
    );
}

#[test]
fn ipv6_ports_come_after_the_extension_headers() {
    // Hop-by-hop (8 bytes), routing (24), destination options (16), then
    // SCTP: 40 + 48 bytes before the ports.
    let chain = [(0, 0, 0), (43, 2, 0), (60, 1, 0)];
    let packet = ipv6(&chain, 132, &PORTS);
    assert_eq!(packet.len(), 40 + 48 + 4);
    let p = parse_ip(&packet).unwrap();
    assert_eq!((p.protocol, p.ports), (132, Some((12345, 81))));
    // A first fragment (offset 0, more fragments) of UDP: ports.
    let first = parse_ip(&ipv6(&[(44, 0, 0x0001)], 17, &PORTS)).unwrap();
    assert_eq!((first.protocol, first.ports), (17, Some((12345, 81))));
    // A later fragment: the protocol, no ports (those bytes are data).
    let later = parse_ip(&ipv6(&[(44, 0, 8 << 3)], 6, &PORTS)).unwrap();
    assert_eq!((later.protocol, later.ports), (6, None));
}

#[test]
fn ipv6_ports_come_after_an_authentication_header_as_nft_sees_them() {
    // IPv6: hop-by-hop (8 bytes), AH with a 12-byte ICV (24 bytes), TCP.
    let packet = ipv6(&[(0, 0, 0), (51, 4, 0)], 6, &PORTS);
    assert_eq!(packet.len(), 40 + 8 + 24 + 4);
    let p = parse_ip(&packet).unwrap();
    assert_eq!((p.protocol, p.ports), (6, Some((12345, 81))));
    // Cut inside the AH: the walk stops at it, no ports.
    let cut = parse_ip(&packet[..40 + 8 + 10]).unwrap();
    assert_eq!((cut.protocol, cut.ports), (51, None));
    // IPv4: AH is the protocol, no ports, as nft's `th` and `meta l4proto`
    // see it there (the kernel skips AH only for IPv6).
    let mut ah = vec![0u8; 24];
    ah[0] = 17;
    ah[1] = 4;
    ah.extend_from_slice(&PORTS);
    let v4 = parse_ip(&ipv4(5, 51, 0, &ah)).unwrap();
    assert_eq!((v4.protocol, v4.ports), (51, None));
}

#[test]
fn an_ipv6_packet_cut_short_keeps_its_addresses_never_a_panic() {
    let chain = [(0, 0, 0), (43, 2, 0)];
    let whole = ipv6(&chain, 6, &PORTS);
    for cut in 0..whole.len() {
        let header = parse_ip(&whole[..cut]);
        if cut < 40 {
            assert_eq!(header, None, "cut {cut}");
            continue;
        }
        let header = header.unwrap();
        assert_eq!((header.src, header.dst), (SRC6.into(), DST6.into()));
        assert_eq!(header.ports, None, "cut {cut}");
        // Cut inside an extension header: the walk stops at it.
        let expected = match cut {
            40..48 => 0,
            48..72 => 43,
            _ => 6,
        };
        assert_eq!(header.protocol, expected, "cut {cut}");
    }
    assert_eq!(parse_ip(&whole).unwrap().ports, Some((12345, 81)));
}

#[test]
fn hostile_ipv6_extension_headers_are_bounded() {
    // A length past the packet: the walk stops there.
    let mut long = ipv6(&[(60, 0, 0)], 6, &PORTS);
    long[41] = 255;
    let p = parse_ip(&long).unwrap();
    assert_eq!((p.protocol, p.ports), (60, None));
    // More extension headers than walked: the walk stops at the ninth.
    let many = [(60, 0, 0); 9];
    let p = parse_ip(&ipv6(&many, 6, &PORTS)).unwrap();
    assert_eq!((p.protocol, p.ports), (60, None));
    let eight = parse_ip(&ipv6(&many[..8], 6, &PORTS)).unwrap();
    assert_eq!((eight.protocol, eight.ports), (6, Some((12345, 81))));
    // Not a known extension header (ESP): that is the protocol, no ports.
    let esp = parse_ip(&ipv6(&[], 50, &PORTS)).unwrap();
    assert_eq!((esp.protocol, esp.ports), (50, None));
    // Other versions: nothing.
    let mut v5 = ipv6(&[], 6, &PORTS);
    v5[0] = 0x50;
    assert_eq!(parse_ip(&v5), None);
    assert_eq!(parse_ip(&[]), None);
}

/// An IPv6 packet in an NFLOG message (the captured TCP message with its
/// payload attribute replaced) comes out of `parse` with its header.
#[test]
fn an_nflog_message_with_an_ipv6_payload_gives_its_header() {
    let captured = hex(TCP);
    // The payload attribute is the last one, its 4-byte header at 68.
    assert_eq!(u16_at(&captured, 70), Some(NFULA_PAYLOAD));
    let payload = ipv6(&[(0, 0, 0)], 6, &PORTS);
    let mut bytes = captured[..68].to_vec();
    attribute(&mut bytes, NFULA_PAYLOAD, &payload);
    let len = u32::try_from(bytes.len()).unwrap();
    bytes[..4].copy_from_slice(&len.to_ne_bytes());
    let logged = packet(&bytes);
    assert_eq!(logged.prefix, "dcafe_in");
    let header = logged.packet.unwrap();
    assert_eq!((header.src, header.dst), (SRC6.into(), DST6.into()));
    assert_eq!((header.protocol, header.ports), (6, Some((12345, 81))));
}
