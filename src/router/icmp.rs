//! "Fragmentation needed" (IPv4) or "Packet Too Big" (IPv6) written back
//! into the TUN for an inner packet too big for the overlay (DESIGN.md
//! "MTU": "an inner packet too big for the path gets an ICMP frag-needed …
//! written back into the TUN (rate-limited)").
//!
//! Without it such a packet would vanish and a TCP connection with don't-
//! fragment set would stall (a PMTU black hole). The kernel normally stops
//! them at weft0's MTU; this covers what gets past it: the moment between the
//! cluster MTU falling (a router with a smaller underlay joins) and weft0
//! following, and GSO super-packets cut for a larger MTU. Pure functions and
//! a token bucket; the worker passes `now`.

use super::checksum;
use std::time::{Duration, Instant};

/// ICMP "destination unreachable", code "fragmentation needed and DF set"
/// (RFC 792, next-hop MTU from RFC 1191).
const DEST_UNREACHABLE: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const PROTO_ICMP: u8 = 1;
const IP_HEADER_LEN: usize = 20;
const ICMP_HEADER_LEN: usize = 8;
/// RFC 1812 4.3.2.3: quote as much as fits in a 576-byte reply.
const MAX_REPLY_LEN: usize = 576;
/// ICMPv6 "Packet Too Big" (RFC 4443 3.2).
const PACKET_TOO_BIG: u8 = 2;
const PROTO_ICMPV6: u8 = 58;
const IPV6_HEADER_LEN: usize = 40;
/// RFC 4443 2.4(c): an error quotes as much as fits in the IPv6 minimum MTU.
const MAX_REPLY_LEN_V6: usize = 1280;

/// The reply that tells the sender of `packet` (read from the TUN, either
/// family) the overlay `mtu`: [`frag_needed`] or [`packet_too_big`].
pub fn too_big(packet: &[u8], mtu: usize) -> Option<Vec<u8>> {
    match packet.first()? >> 4 {
        4 => frag_needed(packet, u16::try_from(mtu).unwrap_or(u16::MAX)),
        6 => packet_too_big(packet, u32::try_from(mtu).unwrap_or(u32::MAX)),
        _ => None,
    }
}

/// The ICMPv6 Packet Too Big reply to `packet` (an IPv6 packet read from
/// the TUN) announcing `mtu`, or `None` if none may be sent: not IPv6, an
/// ICMPv6 error itself (RFC 4443 2.4(e)), or a source that is not a unicast
/// host. IPv6 routers never fragment, so there is no don't-fragment bit to
/// look at: every oversized packet gets one. From the packet's destination,
/// as for IPv4, so it passes reverse-path filtering on weft0.
pub fn packet_too_big(packet: &[u8], mtu: u32) -> Option<Vec<u8>> {
    if packet.len() < IPV6_HEADER_LEN || packet[0] >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = packet[8..24].try_into().ok()?;
    let src_ip = std::net::Ipv6Addr::from(src);
    if src_ip.is_unspecified() || src_ip.is_multicast() || src_ip.is_loopback() {
        return None;
    }
    if packet[6] == PROTO_ICMPV6 {
        // Types below 128 are errors; only informational ones may provoke one.
        if *packet.get(IPV6_HEADER_LEN)? < 128 {
            return None;
        }
    }
    let quoted = packet
        .len()
        .min(MAX_REPLY_LEN_V6 - IPV6_HEADER_LEN - ICMP_HEADER_LEN);
    let icmp_len = ICMP_HEADER_LEN + quoted;
    let mut reply = vec![0u8; IPV6_HEADER_LEN + icmp_len];
    reply[0] = 0x60;
    let payload16 = icmp_len as u16; // ≤ 1240
    reply[4..6].copy_from_slice(&payload16.to_be_bytes());
    reply[6] = PROTO_ICMPV6;
    reply[7] = 64; // hop limit
    reply[8..24].copy_from_slice(&packet[24..40]);
    reply[24..40].copy_from_slice(&src);
    let pseudo = checksum::pseudo_header(&reply, PROTO_ICMPV6, icmp_len)?;
    let icmp = &mut reply[IPV6_HEADER_LEN..];
    icmp[0] = PACKET_TOO_BIG;
    icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_HEADER_LEN..].copy_from_slice(&packet[..quoted]);
    let icmp_sum = checksum::finish(checksum::sum(icmp, pseudo));
    icmp[2..4].copy_from_slice(&icmp_sum.to_be_bytes());
    Some(reply)
}

/// The ICMPv4 frag-needed reply to `packet` (an IPv4 packet read from the
/// TUN) announcing `mtu`, or `None` if none may be sent: not IPv4, DF not
/// set, not the first fragment, an ICMP error itself (RFC 1122 3.2.2), or a
/// source that is not a unicast host. The reply comes from the packet's
/// destination, so it arrives on weft0 from an address routed via weft0 and
/// passes reverse-path filtering (a reply from a local address would be
/// dropped as a martian).
pub fn frag_needed(packet: &[u8], mtu: u16) -> Option<Vec<u8>> {
    let header_len = usize::from(*packet.first()? & 0x0f) * 4;
    if packet[0] >> 4 != 4 || header_len < IP_HEADER_LEN || packet.len() < header_len {
        return None;
    }
    let flags_fragment = u16::from_be_bytes([packet[6], packet[7]]);
    let dont_fragment = flags_fragment & 0x4000 != 0;
    let first_fragment = flags_fragment & 0x1fff == 0;
    if !dont_fragment || !first_fragment {
        return None;
    }
    let src = [packet[12], packet[13], packet[14], packet[15]];
    let dst = [packet[16], packet[17], packet[18], packet[19]];
    let src_ip = std::net::Ipv4Addr::from(src);
    if src_ip.is_unspecified()
        || src_ip.is_broadcast()
        || src_ip.is_multicast()
        || src_ip.is_loopback()
    {
        return None;
    }
    if packet[9] == PROTO_ICMP {
        // Only queries (echo, timestamp, …) may provoke an error.
        let icmp_type = *packet.get(header_len)?;
        if !matches!(icmp_type, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18) {
            return None;
        }
    }
    let quoted = packet
        .len()
        .min(MAX_REPLY_LEN - IP_HEADER_LEN - ICMP_HEADER_LEN);
    let total = IP_HEADER_LEN + ICMP_HEADER_LEN + quoted;
    let mut reply = vec![0u8; total];
    let total16 = total as u16; // ≤ 576
    reply[0] = 0x45;
    reply[2..4].copy_from_slice(&total16.to_be_bytes());
    reply[8] = 64; // TTL
    reply[9] = PROTO_ICMP;
    reply[12..16].copy_from_slice(&dst);
    reply[16..20].copy_from_slice(&src);
    let header_sum = checksum::ipv4_header(&reply[..IP_HEADER_LEN]);
    reply[10..12].copy_from_slice(&header_sum.to_be_bytes());
    let icmp = &mut reply[IP_HEADER_LEN..];
    icmp[0] = DEST_UNREACHABLE;
    icmp[1] = FRAG_NEEDED;
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_HEADER_LEN..].copy_from_slice(&packet[..quoted]);
    let icmp_sum = checksum::finish(checksum::sum(icmp, 0));
    icmp[2..4].copy_from_slice(&icmp_sum.to_be_bytes());
    Some(reply)
}

/// At most [`RATE`] replies per second per worker, with bursts of [`BURST`]
/// (like the kernel's `icmp_ratelimit`): a flood of oversized packets cannot
/// turn into a flood of replies.
#[derive(Debug)]
pub struct ReplyLimit {
    tokens: f64,
    last: Option<Instant>,
}

/// Replies per second.
pub const RATE: f64 = 20.0;
/// Replies in one burst.
pub const BURST: f64 = 10.0;

impl Default for ReplyLimit {
    fn default() -> Self {
        Self {
            tokens: BURST,
            last: None,
        }
    }
}

impl ReplyLimit {
    /// Takes a token if one is left at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now
                .saturating_duration_since(last)
                .min(Duration::from_secs(1));
            self.tokens = (self.tokens + elapsed.as_secs_f64() * RATE).min(BURST);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An IPv4 packet of `len` bytes from 10.32.0.5 to 10.40.0.9.
    fn packet(len: usize, proto: u8, flags_fragment: u16) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6..8].copy_from_slice(&flags_fragment.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 32, 0, 5]);
        p[16..20].copy_from_slice(&[10, 40, 0, 9]);
        let sum = checksum::ipv4_header(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    #[test]
    fn a_df_packet_gets_a_valid_frag_needed_from_its_destination_quoting_its_start() {
        let big = packet(1500, 6, 0x4000);
        let reply = frag_needed(&big, 1380).unwrap();
        assert_eq!(reply.len(), MAX_REPLY_LEN);
        assert_eq!(reply[9], PROTO_ICMP);
        assert_eq!(&reply[12..16], &[10, 40, 0, 9], "from the destination");
        assert_eq!(&reply[16..20], &[10, 32, 0, 5], "to the source");
        assert_eq!(checksum::finish(checksum::sum(&reply[..20], 0)), 0);
        let icmp = &reply[20..];
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1380);
        assert_eq!(checksum::finish(checksum::sum(icmp, 0)), 0);
        assert_eq!(&icmp[8..], &big[..MAX_REPLY_LEN - 28]);
    }

    #[test]
    fn a_short_packet_is_quoted_whole() {
        let p = packet(60, 17, 0x4000);
        let reply = frag_needed(&p, 1380).unwrap();
        assert_eq!(reply.len(), 28 + 60);
        assert_eq!(&reply[28..], &p[..]);
    }

    #[test]
    fn no_reply_without_df_to_later_fragments_or_to_icmp_errors() {
        assert!(frag_needed(&packet(1500, 6, 0), 1380).is_none());
        assert!(frag_needed(&packet(1500, 17, 0x4000 | 0x00b9), 1380).is_none());
        let mut error = packet(1500, PROTO_ICMP, 0x4000);
        error[20] = 3;
        assert!(frag_needed(&error, 1380).is_none());
        let mut echo = packet(1500, PROTO_ICMP, 0x4000);
        echo[20] = 8;
        assert!(frag_needed(&echo, 1380).is_some());
    }

    #[test]
    fn no_reply_to_unspecified_multicast_or_broadcast_sources() {
        for src in [
            [0, 0, 0, 0],
            [224, 0, 0, 1],
            [255, 255, 255, 255],
            [127, 0, 0, 1],
        ] {
            let mut p = packet(1500, 6, 0x4000);
            p[12..16].copy_from_slice(&src);
            assert!(frag_needed(&p, 1380).is_none(), "{src:?}");
        }
    }

    #[test]
    fn garbage_never_panics_and_gets_no_reply() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 53 + 7) as u8).collect();
            let _ = frag_needed(&junk, 1380);
        }
        assert!(
            frag_needed(&[0x46; 20], 1380).is_none(),
            "IHL 6 beyond the packet"
        );
        assert!(
            frag_needed(&[0x65; 40], 1380).is_none(),
            "IPv6 version nibble"
        );
    }

    /// An IPv6 packet of `len` bytes from fd00::5 to fd00:1::9.
    fn packet6(len: usize, next_header: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[6] = next_header;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd00::5".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00:1::9".parse::<std::net::Ipv6Addr>().unwrap().octets());
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    #[test]
    fn an_oversized_ipv6_packet_gets_a_valid_packet_too_big_from_its_destination() {
        let big = packet6(1500, 6);
        let reply = too_big(&big, 1380).unwrap();
        assert_eq!(reply.len(), MAX_REPLY_LEN_V6);
        assert_eq!(reply[0] >> 4, 6);
        assert_eq!(usize::from(u16::from_be_bytes([reply[4], reply[5]])), 1240);
        assert_eq!(reply[6], PROTO_ICMPV6);
        assert_eq!(&reply[8..24], &big[24..40], "from the destination");
        assert_eq!(&reply[24..40], &big[8..24], "to the source");
        let icmp = &reply[40..];
        assert_eq!((icmp[0], icmp[1]), (2, 0));
        assert_eq!(
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
            1380
        );
        assert_eq!(&icmp[8..], &big[..1232]);
        // The checksum covers the pseudo header: summed again it is zero.
        let pseudo = checksum::pseudo_header(&reply, PROTO_ICMPV6, icmp.len()).unwrap();
        assert_eq!(checksum::finish(checksum::sum(icmp, pseudo)), 0);
        // A small one is quoted whole.
        let small = packet6(100, 17);
        assert_eq!(&too_big(&small, 1380).unwrap()[48..], &small[..]);
    }

    #[test]
    fn no_packet_too_big_for_icmpv6_errors_or_non_unicast_sources() {
        let mut error = packet6(1500, PROTO_ICMPV6);
        error[40] = 1; // destination unreachable
        assert!(packet_too_big(&error, 1380).is_none());
        error[40] = 128; // echo request
        assert!(packet_too_big(&error, 1380).is_some());
        for src in ["::", "ff02::1", "::1"] {
            let mut p = packet6(1500, 6);
            p[8..24].copy_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
            assert!(packet_too_big(&p, 1380).is_none(), "{src}");
        }
        for len in 0..80 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 53 + 7) as u8 | 0x60).collect();
            let _ = too_big(&junk, 1380);
        }
        assert!(too_big(&[], 1380).is_none());
    }

    #[test]
    fn replies_are_limited_to_a_burst_then_the_rate() {
        let mut limit = ReplyLimit::default();
        let t0 = Instant::now();
        let burst = (0..100).filter(|_| limit.allow(t0)).count();
        assert_eq!(burst, BURST as usize);
        let later = t0 + Duration::from_millis(500);
        let refill = (0..100).filter(|_| limit.allow(later)).count();
        assert_eq!(
            refill, BURST as usize,
            "half a second at 20/s, capped at the burst"
        );
        let soon = later + Duration::from_millis(100);
        assert_eq!((0..100).filter(|_| limit.allow(soon)).count(), 2);
    }
}
