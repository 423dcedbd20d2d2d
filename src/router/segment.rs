//! Cutting a TUN super-packet into wire-sized segments (DESIGN.md "The fast
//! data path"): exactly at the virtio `gso_size`, never at "the MTU". For
//! TCP every segment gets its own IP ID, length, sequence number, flags (FIN
//! and PSH only on the last, CWR only on the first) and checksums; for UDP
//! (USO) the cut is the application's datagram boundary and each datagram
//! gets its own length and checksum. A packet that is not a super-packet but
//! carries a partial checksum (NEEDS_CSUM) has that checksum completed.
//!
//! The segmenter is an iterator over one packet that writes each segment
//! into a caller buffer, so the caller controls placement (room for the data
//! header before and the tag after) and nothing allocates.

use super::checksum;
use super::vnet::{F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VnetHdr};

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a packet from the TUN could not be segmented. The packet is dropped
/// and counted; the kernel never hands us these, a fuzzer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// Shorter than the headers it claims.
    #[error("packet truncated")]
    Truncated,
    /// Not IPv4/IPv6, or the L4 protocol does not match the GSO type.
    #[error("headers do not match the GSO type")]
    Malformed,
    /// A GSO type we did not ask the kernel for.
    #[error("unsupported GSO type {0}")]
    Unsupported(u8),
    /// A super-packet with `gso_size` 0.
    #[error("gso_size is zero")]
    ZeroSize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One segment: the packet itself, with an optional checksum to complete
    /// at (start, field offset).
    Whole(Option<(usize, usize)>),
    Tcp,
    Udp,
}

/// Iterates over the segments of one packet read from the TUN.
#[derive(Debug)]
pub struct Segmenter<'a> {
    packet: &'a [u8],
    kind: Kind,
    v4: bool,
    l4: usize,
    hlen: usize,
    mss: usize,
    next: usize,
    count: usize,
}

impl<'a> Segmenter<'a> {
    /// Checks `packet` (an IP packet without the virtio header) against
    /// `hdr` and prepares to cut it.
    pub fn new(hdr: &VnetHdr, packet: &'a [u8]) -> Result<Self, SegmentError> {
        let kind = match hdr.gso_kind() {
            GSO_NONE => {
                let csum = if hdr.flags & F_NEEDS_CSUM != 0 {
                    let start = usize::from(hdr.csum_start);
                    let field = start + usize::from(hdr.csum_offset);
                    if field + 2 > packet.len() {
                        return Err(SegmentError::Truncated);
                    }
                    Some((start, field))
                } else {
                    None
                };
                return Ok(Self {
                    packet,
                    kind: Kind::Whole(csum),
                    v4: true,
                    l4: 0,
                    hlen: packet.len(),
                    mss: 0,
                    next: 0,
                    count: 1,
                });
            }
            GSO_TCPV4 | GSO_TCPV6 => Kind::Tcp,
            GSO_UDP_L4 => Kind::Udp,
            other => return Err(SegmentError::Unsupported(other)),
        };
        let proto = if kind == Kind::Tcp {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        let first = *packet.first().ok_or(SegmentError::Truncated)?;
        let (v4, l4) = match first >> 4 {
            4 => {
                let ihl = usize::from(first & 0x0f) * 4;
                if ihl < 20 || packet.len() < ihl {
                    return Err(SegmentError::Truncated);
                }
                if packet[9] != proto || (hdr.gso_kind() == GSO_TCPV6) {
                    return Err(SegmentError::Malformed);
                }
                (true, ihl)
            }
            6 => {
                if packet.len() < 40 {
                    return Err(SegmentError::Truncated);
                }
                if packet[6] != proto || hdr.gso_kind() == GSO_TCPV4 {
                    return Err(SegmentError::Malformed);
                }
                (false, 40)
            }
            _ => return Err(SegmentError::Malformed),
        };
        let hlen = match kind {
            Kind::Tcp => {
                let off = *packet.get(l4 + 12).ok_or(SegmentError::Truncated)?;
                let thl = usize::from(off >> 4) * 4;
                if thl < 20 {
                    return Err(SegmentError::Malformed);
                }
                l4 + thl
            }
            _ => l4 + 8,
        };
        if packet.len() < hlen {
            return Err(SegmentError::Truncated);
        }
        let mss = usize::from(hdr.gso_size);
        if mss == 0 {
            return Err(SegmentError::ZeroSize);
        }
        let payload = packet.len() - hlen;
        Ok(Self {
            packet,
            kind,
            v4,
            l4,
            hlen,
            mss,
            next: 0,
            count: payload.div_ceil(mss).max(1),
        })
    }

    /// Segments not yet produced.
    pub fn remaining(&self) -> usize {
        self.count - self.next
    }

    /// The length of the longest segment: an output buffer at least this
    /// long always suffices.
    pub fn max_segment_len(&self) -> usize {
        match self.kind {
            Kind::Whole(_) => self.packet.len(),
            _ => self.hlen + self.mss.min(self.packet.len() - self.hlen),
        }
    }

    /// Writes the next segment to the start of `out` and returns its length;
    /// `None` when all are done or `out` is shorter than
    /// [`Self::max_segment_len`].
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.next >= self.count || out.len() < self.max_segment_len() {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let p = self.packet;
        if let Kind::Whole(csum) = self.kind {
            out[..p.len()].copy_from_slice(p);
            if let Some((start, field)) = csum {
                // The field holds the pseudo-header sum; the rest is ours.
                let c = checksum::finish(checksum::sum(&out[start..p.len()], 0));
                out[field..field + 2].copy_from_slice(&nonzero(c).to_be_bytes());
            }
            return Some(p.len());
        }
        let (hlen, l4) = (self.hlen, self.l4);
        let start = hlen + i * self.mss;
        let end = (start + self.mss).min(p.len());
        let len = hlen + (end - start);
        out[..hlen].copy_from_slice(&p[..hlen]);
        out[hlen..len].copy_from_slice(&p[start..end]);
        let seg = &mut out[..len];
        if self.v4 {
            seg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            let id = u16::from_be_bytes([seg[4], seg[5]]).wrapping_add(i as u16);
            seg[4..6].copy_from_slice(&id.to_be_bytes());
            seg[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::ipv4_header(&seg[..l4]);
            seg[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            seg[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        }
        let field = if self.kind == Kind::Tcp {
            let seq = u32::from_be_bytes([seg[l4 + 4], seg[l4 + 5], seg[l4 + 6], seg[l4 + 7]])
                .wrapping_add((i * self.mss) as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            if i + 1 < self.count {
                seg[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                seg[l4 + 13] &= !TCP_CWR;
            }
            l4 + 16
        } else {
            seg[l4 + 4..l4 + 6].copy_from_slice(&((len - l4) as u16).to_be_bytes());
            l4 + 6
        };
        seg[field..field + 2].copy_from_slice(&[0, 0]);
        let proto = if self.kind == Kind::Tcp {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        let pseudo = checksum::pseudo_header(seg, proto, len - l4).unwrap_or(0);
        let c = checksum::finish(checksum::sum(&seg[l4..], pseudo));
        seg[field..field + 2].copy_from_slice(&nonzero(c).to_be_bytes());
        Some(len)
    }
}

/// A computed checksum of 0 is sent as 0xffff (the same value in one's
/// complement; 0 means "no checksum" to UDP).
fn nonzero(c: u16) -> u16 {
    if c == 0 { 0xffff } else { c }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::router::vnet::F_NEEDS_CSUM;

    /// An IPv4 TCP packet 10.0.0.1:1000 → 10.0.0.2:2000 with `payload`,
    /// valid checksums, and the given flags.
    pub(crate) fn tcp4(seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = 40 + payload.len();
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&1000u16.to_be_bytes());
        p[22..24].copy_from_slice(&2000u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&ack.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&65535u16.to_be_bytes());
        p[40..].copy_from_slice(payload);
        fix_checksums(&mut p);
        p
    }

    /// Recomputes the IPv4 header and TCP/UDP checksums of `p`.
    pub(crate) fn fix_checksums(p: &mut [u8]) {
        let ihl = usize::from(p[0] & 0xf) * 4;
        p[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::ipv4_header(&p[..ihl]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let field = if p[9] == PROTO_TCP { ihl + 16 } else { ihl + 6 };
        p[field..field + 2].copy_from_slice(&[0, 0]);
        let pseudo = checksum::pseudo_header(p, p[9], p.len() - ihl).unwrap();
        let c = checksum::finish(checksum::sum(&p[ihl..], pseudo));
        p[field..field + 2].copy_from_slice(&nonzero(c).to_be_bytes());
    }

    /// Whether the IPv4 header and L4 checksums of `p` verify.
    pub(crate) fn checksums_valid(p: &[u8]) -> bool {
        let ihl = usize::from(p[0] & 0xf) * 4;
        if checksum::fold(checksum::sum(&p[..ihl], 0)) != 0xffff {
            return false;
        }
        let pseudo = checksum::pseudo_header(p, p[9], p.len() - ihl).unwrap();
        checksum::fold(checksum::sum(&p[ihl..], pseudo)) == 0xffff
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn all_segments(hdr: &VnetHdr, p: &[u8]) -> Vec<Vec<u8>> {
        let mut s = Segmenter::new(hdr, p).unwrap();
        let mut out = vec![0u8; s.max_segment_len()];
        let mut segs = Vec::new();
        while let Some(n) = s.next_into(&mut out) {
            segs.push(out[..n].to_vec());
        }
        assert_eq!(s.remaining(), 0);
        segs
    }

    fn tso(mss: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: mss,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    #[test]
    fn a_tcp_super_packet_is_cut_at_gso_size_with_valid_checksums_and_sequence() {
        let data = payload(10_001);
        let mut p = tcp4(0xffff_fff0, 77, 0x18 | TCP_FIN | TCP_CWR, &data);
        // The kernel hands over a partial checksum; the segmenter must not care.
        p[36..38].copy_from_slice(&[0xde, 0xad]);
        let segs = all_segments(&tso(1000), &p);
        assert_eq!(segs.len(), 11);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(checksums_valid(s), "segment {i}");
            assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16);
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add(1000 * i as u32));
            let last = i == segs.len() - 1;
            assert_eq!(s[33] & TCP_FIN != 0, last);
            assert_eq!(s[33] & TCP_PSH != 0, last);
            assert_eq!(s[33] & TCP_CWR != 0, i == 0);
            assert!(s.len() <= 1040);
            joined.extend_from_slice(&s[40..]);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn a_udp_super_packet_is_cut_at_datagram_boundaries() {
        let data = payload(2_500);
        let mut p = tcp4(0, 0, 0, &[]);
        p.truncate(28);
        p[9] = PROTO_UDP;
        p.extend_from_slice(&data);
        let n = p.len();
        p[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 28,
            gso_size: 1200,
            csum_start: 20,
            csum_offset: 6,
        };
        let segs = all_segments(&hdr, &p);
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for s in &segs {
            assert!(checksums_valid(s));
            assert_eq!(
                usize::from(u16::from_be_bytes([s[24], s[25]])),
                s.len() - 20
            );
            joined.extend_from_slice(&s[28..]);
        }
        assert_eq!(segs[2].len(), 28 + 100);
        assert_eq!(joined, data);
    }

    #[test]
    fn a_plain_packet_with_a_partial_checksum_gets_it_completed() {
        let mut p = tcp4(5, 6, 0x18, &payload(333));
        let ihl = 20;
        // What the kernel leaves: the pseudo-header sum, folded, not inverted.
        let pseudo = checksum::pseudo_header(&p, PROTO_TCP, p.len() - ihl).unwrap();
        p[36..38].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let segs = all_segments(&hdr, &p);
        assert_eq!(segs.len(), 1);
        assert!(checksums_valid(&segs[0]));
    }

    #[test]
    fn hostile_headers_are_refused_not_panicked_on() {
        let p = tcp4(0, 0, 0x10, &payload(100));
        assert_eq!(
            Segmenter::new(&tso(0), &p).err(),
            Some(SegmentError::ZeroSize)
        );
        assert_eq!(
            Segmenter::new(&tso(100), &p[..30]).err(),
            Some(SegmentError::Truncated)
        );
        let mut h = tso(100);
        h.gso_type = 3;
        assert_eq!(
            Segmenter::new(&h, &p).err(),
            Some(SegmentError::Unsupported(3))
        );
        let plain = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 200,
            ..VnetHdr::default()
        };
        assert_eq!(
            Segmenter::new(&plain, &p).err(),
            Some(SegmentError::Truncated)
        );
        // A short output buffer yields nothing rather than panicking.
        let mut s = Segmenter::new(&tso(50), &p).unwrap();
        assert_eq!(s.next_into(&mut [0u8; 10]), None);
    }
}
