//! "Fragmentation needed" written back into the TUN for an inner packet too
//! big for the overlay (DESIGN.md "MTU": "an inner packet too big for the
//! path gets an ICMP frag-needed … written back into the TUN (rate-limited)").
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
