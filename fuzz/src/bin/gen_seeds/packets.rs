//! Seeds of the data path's targets: `lane_open`, `segment`, `coalesce`.

use super::*;

/// `lane_open`: honest data for this router and for a relay, a replay, a
/// flipped bit, a truncation and raw bytes (record layout in the target).
pub(super) fn lane_open() {
    // IPv4/UDP from 10.32.0.5 (the sender's range) to 10.32.1.5; the lane
    // reads only the version and the addresses.
    let packet: [u8; 28] = [
        0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 32, 0, 5, 10, 32, 1, 5, 0xc0, 0x01, 0x14,
        0xb5, 0, 8, 0, 0,
    ];
    // `[op][lane][u16 counter][dst][hop][u16 len][packet]`
    let honest = |op: u8, lane: u8, counter: u16, dst: u8, hop: u8| {
        let mut r = vec![op, lane];
        r.extend_from_slice(&counter.to_le_bytes());
        r.extend_from_slice(&[dst, hop]);
        r.extend_from_slice(&(packet.len() as u16).to_le_bytes());
        r.extend_from_slice(&packet);
        r
    };
    write("lane_open", "deliver", &honest(1, 0, 0, 0, 8));
    write("lane_open", "relay", &honest(1, 1, 0, 1, 8));
    let replay = [honest(1, 0, 5, 0, 8), honest(0x81, 0, 0, 0, 8)].concat();
    write("lane_open", "replay", &replay);
    let flip = [honest(2, 0, 0, 0, 8), vec![200, 0], honest(1, 0, 0, 0, 8)].concat();
    write("lane_open", "flip", &flip);
    write(
        "lane_open",
        "truncated",
        &[honest(3, 2, 0, 0, 8), vec![20, 0]].concat(),
    );
    let mut raw = vec![0u8, 32, 0, 0x10, 8, 0, 1, 0, 2, 0, 0x0b, 0x0b, 0];
    raw.resize(3 + 32, 0);
    write("lane_open", "raw", &raw);
}

/// An IPv4 packet: 20-byte header (or more, with `ip_options`), then
/// `l4`, header checksum set. The L4 checksum is left to the caller.
fn ipv4(proto: u8, ip_options: &[u8], l4: &[u8]) -> Vec<u8> {
    use weft::router::checksum::ipv4_header;
    let ihl = 20 + ip_options.len();
    let len = ihl + l4.len();
    let mut p = vec![0u8; ihl];
    p[0] = 0x40 | (ihl / 4) as u8;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1c46u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&[10, 32, 0, 5]);
    p[16..20].copy_from_slice(&[10, 33, 1, 7]);
    p[20..].copy_from_slice(ip_options);
    let c = ipv4_header(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

/// An IPv6 packet around `l4`.
fn ipv6(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    p[6] = proto;
    p[7] = 64;
    p[8..24].copy_from_slice(&[0xfd, 0, 0, 0x32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
    p[24..40].copy_from_slice(&[0xfd, 0, 0, 0x33, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 7]);
    p.extend_from_slice(l4);
    p
}

/// A TCP header (+ `options`, a multiple of 4) and payload.
fn tcp(seq: u32, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let thl = 20 + options.len();
    let mut t = vec![0u8; thl];
    t[0..2].copy_from_slice(&43_512u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&0x5eed_0001u32.to_be_bytes());
    t[12] = ((thl / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&502u16.to_be_bytes());
    t[20..].copy_from_slice(options);
    t.extend_from_slice(payload);
    t
}

/// A UDP header and payload.
fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&51_820u16.to_be_bytes());
    u[2..4].copy_from_slice(&4789u16.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

/// Writes the L4 checksum of `p` (IPv4 or IPv6, header length `l4`) at
/// `l4 + offset`: complete, or as the kernel leaves it for checksum
/// offload (`partial`: the folded pseudo-header sum only).
fn l4_checksum(p: &mut [u8], l4: usize, proto: u8, offset: usize, partial: bool) {
    use weft::router::checksum::{finish, fold, pseudo_header, sum};
    p[l4 + offset..l4 + offset + 2].fill(0);
    let pseudo = pseudo_header(p, proto, p.len() - l4).expect("ip header");
    let c = if partial {
        fold(pseudo)
    } else {
        finish(sum(&p[l4..], pseudo))
    };
    p[l4 + offset..l4 + offset + 2].copy_from_slice(&c.to_be_bytes());
}

fn payload(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
}

/// TCP options as Linux sends them on an established flow: NOP NOP TS.
const TS_OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78];

/// `segment`: a virtio-net header then the packet, as the kernel writes a
/// GSO super-packet (checksum offload: `csum_start` at L4, the L4 field
/// holding the pseudo-header sum) to a TUN with IFF_VNET_HDR.
pub(super) fn segment() {
    use weft::router::vnet::{
        F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN, VnetHdr,
    };
    let seed = |name: &str,
                gso_type: u8,
                gso_size: u16,
                l4: usize,
                csum_offset: u16,
                p: &[u8],
                hlen: usize| {
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: hlen as u16,
            gso_size,
            csum_start: l4 as u16,
            csum_offset,
        };
        let mut out = [0u8; VNET_HDR_LEN];
        hdr.emit(&mut out);
        let mut input = out.to_vec();
        input.extend_from_slice(p);
        write("segment", name, &input);
    };
    // TCP/IPv4: three full segments and a short one, PSH on the last.
    let mut p = ipv4(
        6,
        &[],
        &tcp(1_000_000, 0x18, &TS_OPTIONS, &payload(3 * 1388 + 500, 1)),
    );
    l4_checksum(&mut p, 20, 6, 16, true);
    seed("tcp4-tso", GSO_TCPV4, 1388, 20, 16, &p, 52);
    // ECN (CWR on the first segment only), no options, exact multiple.
    let mut p = ipv4(6, &[], &tcp(7, 0x90, &[], &payload(4 * 1448, 2)));
    p[1] = 0x02; // ECT(0)
    let c = weft::router::checksum::ipv4_header(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    l4_checksum(&mut p, 20, 6, 16, true);
    seed("tcp4-ecn", GSO_TCPV4 | GSO_ECN, 1448, 20, 16, &p, 40);
    // IP options (router alert), one segment only.
    let mut p = ipv4(
        6,
        &[0x94, 0x04, 0, 0],
        &tcp(u32::MAX - 100, 0x10, &[], &payload(300, 3)),
    );
    l4_checksum(&mut p, 24, 6, 16, true);
    seed("tcp4-ipopt", GSO_TCPV4, 1400, 24, 16, &p, 44);
    // A 16 KB burst: the sequence number wraps inside it.
    let mut p = ipv4(
        6,
        &[],
        &tcp(u32::MAX - 5000, 0x10, &TS_OPTIONS, &payload(16_000, 4)),
    );
    l4_checksum(&mut p, 20, 6, 16, true);
    seed("tcp4-wrap", GSO_TCPV4, 1388, 20, 16, &p, 52);
    // UDP GSO (QUIC, WireGuard): 1200-byte datagrams.
    let mut p = ipv4(17, &[], &udp(&payload(3 * 1200 + 77, 5)));
    l4_checksum(&mut p, 20, 17, 6, true);
    seed("udp4-gso", GSO_UDP_L4, 1200, 20, 6, &p, 28);
    // IPv6: TCP and UDP.
    let mut p = ipv6(6, &tcp(42, 0x18, &TS_OPTIONS, &payload(2 * 1368 + 10, 6)));
    l4_checksum(&mut p, 40, 6, 16, true);
    seed("tcp6-tso", GSO_TCPV6, 1368, 40, 16, &p, 72);
    let mut p = ipv6(17, &udp(&payload(2 * 1180 + 3, 7)));
    l4_checksum(&mut p, 40, 17, 6, true);
    seed("udp6-gso", GSO_UDP_L4, 1180, 40, 6, &p, 48);
    // No GSO: a single packet with checksum offload, and an ICMP echo.
    let mut p = ipv4(17, &[], &udp(b"\x01\x00\x00\x01dns query"));
    l4_checksum(&mut p, 20, 17, 6, true);
    seed("udp4-csum", GSO_NONE, 0, 20, 6, &p, 0);
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(&payload(56, 8));
    let c = weft::router::checksum::finish(weft::router::checksum::sum(&icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let p = ipv4(1, &[], &icmp);
    let mut input = [0u8; VNET_HDR_LEN].to_vec();
    input.extend_from_slice(&p);
    write("segment", "icmp4-plain", &input);
}

/// `coalesce`: a mode byte (`0x80` set: raw packets, each led by a length
/// byte n for n*8+1 bytes; else 4-byte records `flow, seq step, length/8,
/// flags`, see the target) and what follows.
pub(super) fn coalesce() {
    // Structured: an in-order bulk flow of 1448-byte segments (181*8) with
    // a PSH, interleaved flows, a gap, a retransmission, FIN and SYN.
    let mut s = vec![3u8]; // four flows
    for i in 0..12u8 {
        s.extend_from_slice(&[0, 0, 181, if i == 11 { 2 } else { 0 }]);
        s.extend_from_slice(&[1 + i % 3, 1, 171, 1]);
    }
    s.extend_from_slice(&[0, 2, 181, 0]); // a gap
    s.extend_from_slice(&[0, 3, 181, 0]); // out of order
    s.extend_from_slice(&[2, 0, 10, 3]); // FIN
    s.extend_from_slice(&[3, 0, 0, 4]); // SYN
    s.extend_from_slice(&[1, 0, 181, 5]); // CWR
    write("coalesce", "structured-bulk", &s);
    let mut s = vec![0u8]; // one flow: a short segment ends the run
    for len in [181u8, 181, 181, 100, 181, 181] {
        s.extend_from_slice(&[0, 0, len, 0]);
    }
    write("coalesce", "structured-short", &s);

    // Raw: real decrypted TCP/IPv4 segments of 8n+1 bytes, in order, then
    // others the coalescer must pass through.
    let mut raw = vec![0x80u8 | 1];
    let mut push = |p: &[u8]| {
        assert_eq!(p.len() % 8, 1, "raw records are 8n+1 bytes");
        raw.push((p.len() / 8) as u8);
        raw.extend_from_slice(p);
    };
    let mut seq = 5_000u32;
    for (i, n) in [1397usize, 1397, 1397, 1397, 997].into_iter().enumerate() {
        let flags = if i == 4 { 0x18 } else { 0x10 };
        let mut p = ipv4(6, &[], &tcp(seq, flags, &TS_OPTIONS, &payload(n, i as u8)));
        l4_checksum(&mut p, 20, 6, 16, false);
        push(&p);
        seq = seq.wrapping_add(n as u32);
    }
    let mut p = ipv4(17, &[], &udp(&payload(1381, 9)));
    l4_checksum(&mut p, 20, 17, 6, false);
    push(&p);
    let mut p = ipv6(6, &tcp(1, 0x10, &[], &payload(1381, 10)));
    l4_checksum(&mut p, 40, 6, 16, false);
    push(&p);
    write("coalesce", "raw-tcp4", &raw);
}
