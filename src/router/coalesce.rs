//! GRO-style coalescing on the TUN write side (DESIGN.md "The fast data
//! path" → Receive): consecutive decrypted TCP segments of one inner flow
//! are merged into one super-packet and written to the TUN with a virtio
//! header (GSO_TCPV4 or GSO_TCPV6, partial checksum), so the kernel handles
//! one 64 KB packet instead of forty-five 1.4 KB ones.
//!
//! A segment joins its flow's pending packet only if it is the next in
//! sequence, carries the same ACK and TCP options, no flags but ACK/PSH,
//! the same IP header fields the segments of one super-packet share (IPv4:
//! TTL, TOS, DF; IPv6: hop limit and the whole first word, so traffic class
//! and flow label), and the pending packet's segments so far were all full
//! (`mss`) and none had PSH. Anything else flushes that flow first, so a
//! flow's packets always reach the TUN in the order they arrived. Packets
//! that are not TCP data pass through untouched (the caller writes them),
//! and so do IPv4 packets with options or fragments and IPv6 packets with
//! extension headers: the kernel's segmenter could not cut those back the
//! way they came. As such an IPv6 packet's ports are not looked for, it
//! first flushes every held IPv6 flow between its two addresses.
//!
//! Checksums of the merged segments are not re-verified: each arrived under
//! an authenticated AEAD tag from a peer router whose segmenter computed them.

use super::checksum;
use super::vnet::{F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN, VnetHdr};

const PROTO_TCP: u8 = 6;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const MAX_PACKET: usize = 65_535;
/// Version byte, then the addresses and ports of the longer family.
const KEY_LEN: usize = 1 + 16 + 16 + 4;

/// What the caller does with a pushed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// The coalescer copied it; it reaches the TUN at the next flush.
    Held,
    /// Write it to the TUN now (with a plain virtio header), after whatever
    /// the coalescer just wrote.
    PassThrough,
}

/// Segments written to the TUN as part of a super-packet (two or more
/// merged), by inner family, since the last [`Coalescer::take_merged`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// TCP/IPv4 segments.
    pub v4: u64,
    /// TCP/IPv6 segments.
    pub v6: u64,
}

struct Slot {
    buf: Box<[u8]>,
    /// Packet bytes in `buf` after the virtio header; 0 = free.
    len: usize,
    key: [u8; KEY_LEN],
    /// The IP header's length: 20 (IPv4 without options) or 40 (IPv6).
    l3: usize,
    hlen: usize,
    mss: usize,
    next_seq: u32,
    count: usize,
    closed: bool,
    started: u64,
}

impl Slot {
    fn packet(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.len]
    }
}

/// Per-worker coalescing state: a few flows, each with a 64 KB buffer
/// allocated once.
pub struct Coalescer {
    slots: Vec<Slot>,
    tick: u64,
    merged: Merged,
}

/// The fields of a TCP segment (over either family) the coalescer looks at.
struct Tcp {
    key: [u8; KEY_LEN],
    /// Where the TCP header starts.
    l3: usize,
    hlen: usize,
    seq: u32,
    flags: u8,
    payload: usize,
    /// May join or start a merged packet.
    mergeable: bool,
}

/// The IP header of a TCP segment: its length, the span of its two
/// addresses, and whether it is plain enough to merge (IPv4: no options,
/// not a fragment; IPv6: TCP right after the fixed header) with a length
/// field that matches the packet.
fn ip_header(p: &[u8]) -> Option<(usize, std::ops::Range<usize>, bool)> {
    match *p.first()? >> 4 {
        4 if p.len() >= 20 && p[9] == PROTO_TCP => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let fragment = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            (ihl >= 20).then_some((ihl, 12..20, ihl == 20 && !fragment && total == p.len()))
        }
        // Any extension header (hop-by-hop, routing, fragment, ...) puts
        // something other than TCP in Next Header: passed through.
        6 if p.len() >= 40 && p[6] == PROTO_TCP => {
            let payload = usize::from(u16::from_be_bytes([p[4], p[5]]));
            Some((40, 8..40, payload + 40 == p.len()))
        }
        _ => None,
    }
}

fn parse(p: &[u8]) -> Option<Tcp> {
    let (l3, addresses, plain) = ip_header(p)?;
    let thl = usize::from(*p.get(l3 + 12)? >> 4) * 4;
    let hlen = l3 + thl;
    if thl < 20 || p.len() < hlen {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    key[0] = p[0] >> 4;
    let n = addresses.len();
    key[1..1 + n].copy_from_slice(&p[addresses]);
    key[1 + n..5 + n].copy_from_slice(&p[l3..l3 + 4]);
    let flags = p[l3 + 13];
    let payload = p.len() - hlen;
    let mergeable =
        plain && payload > 0 && flags & !(TCP_ACK | TCP_PSH) == 0 && flags & TCP_ACK != 0;
    Some(Tcp {
        key,
        l3,
        hlen,
        seq: u32::from_be_bytes([p[l3 + 4], p[l3 + 5], p[l3 + 6], p[l3 + 7]]),
        flags,
        payload,
        mergeable,
    })
}

/// Whether the IP header fields every segment of one super-packet shares
/// (the kernel copies the first segment's to all) are equal in `a` and `b`,
/// two plain headers of the same family.
fn same_ip_fields(a: &[u8], b: &[u8]) -> bool {
    if a[0] >> 4 == 6 {
        // Version, traffic class, flow label; hop limit.
        a[..4] == b[..4] && a[7] == b[7]
    } else {
        // TOS, DF, TTL.
        a[1] == b[1] && a[6] & 0x40 == b[6] & 0x40 && a[8] == b[8]
    }
}

impl Coalescer {
    /// A coalescer holding at most `flows` pending flows.
    pub fn new(flows: usize) -> Self {
        let slots = (0..flows.max(1))
            .map(|_| Slot {
                buf: vec![0u8; VNET_HDR_LEN + MAX_PACKET].into_boxed_slice(),
                len: 0,
                key: [0; KEY_LEN],
                l3: 0,
                hlen: 0,
                mss: 0,
                next_seq: 0,
                count: 0,
                closed: false,
                started: 0,
            })
            .collect();
        Self {
            slots,
            tick: 0,
            merged: Merged::default(),
        }
    }

    /// Offers one inner IP packet. `write` receives complete TUN writes
    /// (virtio header included) for any flow that has to be flushed first.
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(&[u8])) -> Push {
        let Some(seg) = parse(packet) else {
            self.flush_behind_extension_headers(packet, write);
            return Push::PassThrough;
        };
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.len > 0 && s.key == seg.key)
        {
            if seg.mergeable && self.try_append(i, packet, &seg) {
                return Push::Held;
            }
            Self::flush_slot(&mut self.slots[i], &mut self.merged, write);
        }
        if !seg.mergeable {
            return Push::PassThrough;
        }
        let i = match self.slots.iter().position(|s| s.len == 0) {
            Some(i) => i,
            None => {
                let (i, _) = self
                    .slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.started)
                    .unwrap_or((0, &self.slots[0]));
                Self::flush_slot(&mut self.slots[i], &mut self.merged, write);
                i
            }
        };
        self.tick += 1;
        let slot = &mut self.slots[i];
        slot.buf[VNET_HDR_LEN..VNET_HDR_LEN + packet.len()].copy_from_slice(packet);
        slot.len = packet.len();
        slot.key = seg.key;
        slot.l3 = seg.l3;
        slot.hlen = seg.hlen;
        slot.mss = seg.payload;
        slot.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        slot.count = 1;
        slot.closed = seg.flags & TCP_PSH != 0;
        slot.started = self.tick;
        Push::Held
    }

    /// An IPv6 packet whose Next Header is an extension header may belong
    /// to a TCP flow held here (its ports lie behind headers we do not
    /// walk): every held IPv6 flow between the same two addresses goes
    /// first, so that flow's order is kept.
    fn flush_behind_extension_headers(&mut self, p: &[u8], write: &mut impl FnMut(&[u8])) {
        const EXTENSIONS: [u8; 10] = [0, 43, 44, 50, 51, 60, 135, 139, 140, 253];
        let Some(addresses) = p.get(8..40) else {
            return;
        };
        if p[0] >> 4 != 6 || !EXTENSIONS.contains(&p[6]) {
            return;
        }
        for slot in &mut self.slots {
            if slot.len > 0 && slot.key[0] == 6 && slot.key[1..33] == *addresses {
                Self::flush_slot(slot, &mut self.merged, write);
            }
        }
    }

    fn try_append(&mut self, i: usize, p: &[u8], seg: &Tcp) -> bool {
        let slot = &mut self.slots[i];
        let head = slot.packet();
        let l3 = slot.l3;
        // Same key, so same family and the same IP header length.
        let same_headers = seg.hlen == slot.hlen
            && same_ip_fields(p, head)
            && p[l3 + 8..l3 + 12] == head[l3 + 8..l3 + 12] // ACK number
            && p[l3 + 20..seg.hlen] == head[l3 + 20..slot.hlen]; // TCP options
        if slot.closed
            || !same_headers
            || seg.seq != slot.next_seq
            || seg.payload > slot.mss
            || slot.len + seg.payload > MAX_PACKET
        {
            return false;
        }
        let at = VNET_HDR_LEN + slot.len;
        slot.buf[at..at + seg.payload].copy_from_slice(&p[seg.hlen..]);
        slot.len += seg.payload;
        slot.next_seq = slot.next_seq.wrapping_add(seg.payload as u32);
        slot.count += 1;
        if seg.flags & TCP_PSH != 0 {
            slot.buf[VNET_HDR_LEN + l3 + 13] |= TCP_PSH;
            slot.closed = true;
        }
        // TCP window: the latest segment's is the current one.
        let window = VNET_HDR_LEN + l3 + 14;
        slot.buf[window..window + 2].copy_from_slice(&p[l3 + 14..l3 + 16]);
        if seg.payload < slot.mss {
            slot.closed = true;
        }
        true
    }

    /// Writes every pending flow.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8])) {
        for slot in &mut self.slots {
            if slot.len > 0 {
                Self::flush_slot(slot, &mut self.merged, write);
            }
        }
    }

    /// Whether any flow is pending.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| s.len == 0)
    }

    /// The merged-segment counts since the last call, reset to zero (the
    /// worker adds them to its statistics).
    pub fn take_merged(&mut self) -> Merged {
        std::mem::take(&mut self.merged)
    }

    fn flush_slot(slot: &mut Slot, merged: &mut Merged, write: &mut impl FnMut(&[u8])) {
        let (len, l3) = (slot.len, slot.l3);
        let mut hdr = VnetHdr::default();
        if slot.count > 1 {
            let p = &mut slot.buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
            let gso_type = if l3 == 40 {
                p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
                merged.v6 += slot.count as u64;
                GSO_TCPV6
            } else {
                p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                p[10..12].copy_from_slice(&[0, 0]);
                let c = checksum::ipv4_header(&p[..20]);
                p[10..12].copy_from_slice(&c.to_be_bytes());
                merged.v4 += slot.count as u64;
                GSO_TCPV4
            };
            // A partial checksum: the pseudo-header sum, folded, not
            // complemented; the kernel (or the pod's stack) completes it.
            let pseudo = checksum::pseudo_header(p, PROTO_TCP, len - l3).unwrap_or(0);
            p[l3 + 16..l3 + 18].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
            hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type,
                hdr_len: slot.hlen as u16,
                gso_size: slot.mss as u16,
                csum_start: l3 as u16,
                csum_offset: 16,
            };
        } else {
            hdr.gso_type = GSO_NONE;
        }
        let mut bytes = [0u8; VNET_HDR_LEN];
        hdr.emit(&mut bytes);
        slot.buf[..VNET_HDR_LEN].copy_from_slice(&bytes);
        write(&slot.buf[..VNET_HDR_LEN + len]);
        slot.len = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::router::segment::Segmenter;
    use crate::router::segment::tests::{checksums_valid, tcp4};

    fn collect(c: &mut Coalescer, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for p in packets {
            let mut w = |b: &[u8]| out.push(b.to_vec());
            if c.push(p, &mut w) == Push::PassThrough {
                let mut b = vec![0u8; VNET_HDR_LEN];
                b.extend_from_slice(p);
                out.push(b);
            }
        }
        c.flush(&mut |b: &[u8]| out.push(b.to_vec()));
        out
    }

    /// Cuts a coalesced write back into segments (what the kernel does) and
    /// checks their checksums by recomputation.
    fn resegment(write: &[u8]) -> Vec<Vec<u8>> {
        let hdr = VnetHdr::parse(write).unwrap();
        let mut s = Segmenter::new(&hdr, &write[VNET_HDR_LEN..]).unwrap();
        let mut buf = vec![0u8; s.max_segment_len()];
        let mut segs = Vec::new();
        while let Some(n) = s.next_into(&mut buf) {
            let seg = &buf[..n];
            assert!(if seg[0] >> 4 == 6 {
                valid6(seg)
            } else {
                checksums_valid(seg)
            });
            segs.push(buf[..n].to_vec());
        }
        segs
    }

    fn with_id(mut p: Vec<u8>, id: u16) -> Vec<u8> {
        p[4..6].copy_from_slice(&id.to_be_bytes());
        crate::router::segment::tests::fix_checksums(&mut p);
        p
    }

    /// A TCP/IPv6 segment fd00::1:1000 → fd00::2:2000 with `payload`, flow
    /// label 0x12345, hop limit 64 and a valid checksum.
    fn tcp6(seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 60 + payload.len()];
        p[..4].copy_from_slice(&[0x60, 0x01, 0x23, 0x45]);
        p[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[6] = PROTO_TCP;
        p[7] = 64;
        p[8..10].copy_from_slice(&[0xfd, 0]);
        p[23] = 1;
        p[24..26].copy_from_slice(&[0xfd, 0]);
        p[39] = 2;
        p[40..42].copy_from_slice(&1000u16.to_be_bytes());
        p[42..44].copy_from_slice(&2000u16.to_be_bytes());
        p[44..48].copy_from_slice(&seq.to_be_bytes());
        p[48..52].copy_from_slice(&ack.to_be_bytes());
        p[52] = 5 << 4;
        p[53] = flags;
        p[54..56].copy_from_slice(&65535u16.to_be_bytes());
        p[60..].copy_from_slice(payload);
        fix6(&mut p);
        p
    }

    /// Recomputes the TCP checksum of an IPv6 segment without extension
    /// headers.
    fn fix6(p: &mut [u8]) {
        p[56..58].copy_from_slice(&[0, 0]);
        let pseudo = checksum::pseudo_header(p, PROTO_TCP, p.len() - 40).unwrap();
        let c = checksum::finish(checksum::sum(&p[40..], pseudo));
        p[56..58].copy_from_slice(&c.to_be_bytes());
    }

    fn valid6(p: &[u8]) -> bool {
        let pseudo = checksum::pseudo_header(p, PROTO_TCP, p.len() - 40).unwrap();
        usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 == p.len()
            && checksum::fold(checksum::sum(&p[40..], pseudo)) == 0xffff
    }

    /// The packets a list of TUN writes stands for, super-packets cut again.
    fn unmerged(writes: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        for w in writes {
            let h = VnetHdr::parse(w).unwrap();
            if h.gso_type == GSO_NONE {
                all.push(w[VNET_HDR_LEN..].to_vec());
            } else {
                all.extend(resegment(w));
            }
        }
        all
    }

    fn data(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
    }

    #[test]
    fn consecutive_segments_of_one_flow_become_one_gso_write_that_resegments_intact() {
        let segs: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                let n = if i == 4 { 300 } else { 1000 };
                let flags = if i == 4 { 0x18 } else { 0x10 };
                with_id(
                    tcp4(100 + 1000 * i as u32, 9, flags, &data(n, i as u8)),
                    7 + i as u16,
                )
            })
            .collect();
        let mut c = Coalescer::new(4);
        let out = collect(&mut c, &segs);
        assert_eq!(out.len(), 1);
        let hdr = VnetHdr::parse(&out[0]).unwrap();
        assert_eq!(hdr.gso_type, GSO_TCPV4);
        assert_eq!(hdr.gso_size, 1000);
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        let again = resegment(&out[0]);
        assert_eq!(again, segs);
    }

    #[test]
    fn a_gap_a_different_ack_or_a_short_segment_starts_a_new_write_in_order() {
        let a = tcp4(0, 1, 0x10, &data(1000, 1));
        let gap = tcp4(2000, 1, 0x10, &data(1000, 2));
        let other_ack = tcp4(3000, 2, 0x10, &data(1000, 3));
        let short = tcp4(4000, 2, 0x10, &data(10, 4));
        let after_short = tcp4(4010, 2, 0x10, &data(10, 5));
        let packets: Vec<Vec<u8>> = [a, gap, other_ack, short, after_short]
            .into_iter()
            .enumerate()
            .map(|(i, p)| with_id(p, i as u16))
            .collect();
        let mut c = Coalescer::new(4);
        let out = collect(&mut c, &packets);
        // other_ack + short merge; after_short follows a short one.
        assert_eq!(out.len(), 4);
        let mut all = Vec::new();
        for w in &out {
            let h = VnetHdr::parse(w).unwrap();
            if h.gso_type == GSO_NONE {
                all.push(w[VNET_HDR_LEN..].to_vec());
            } else {
                all.extend(resegment(w));
            }
        }
        assert_eq!(all, packets);
    }

    #[test]
    fn non_tcp_and_control_segments_pass_through_after_their_flow_is_flushed() {
        let a = tcp4(0, 1, 0x10, &data(500, 1));
        let fin = tcp4(500, 1, 0x11, &data(5, 2));
        let mut icmp = tcp4(0, 0, 0, &[]);
        icmp[9] = 1;
        let mut c = Coalescer::new(2);
        let mut out = Vec::new();
        assert_eq!(c.push(&a, &mut |b: &[u8]| out.push(b.to_vec())), Push::Held);
        assert_eq!(
            c.push(&fin, &mut |b: &[u8]| out.push(b.to_vec())),
            Push::PassThrough
        );
        assert_eq!(out.len(), 1, "the held segment goes first");
        assert_eq!(&out[0][VNET_HDR_LEN..], &a[..]);
        assert_eq!(
            c.push(&icmp, &mut |b: &[u8]| out.push(b.to_vec())),
            Push::PassThrough
        );
        assert!(c.is_empty());
    }

    #[test]
    fn more_flows_than_slots_evicts_the_oldest_without_losing_data() {
        let mut packets = Vec::new();
        for flow in 0..5u8 {
            let mut p = tcp4(0, 1, 0x10, &data(100, flow));
            p[21] = flow; // source port
            crate::router::segment::tests::fix_checksums(&mut p);
            packets.push(p);
        }
        let mut c = Coalescer::new(2);
        let out = collect(&mut c, &packets);
        assert_eq!(out.len(), 5);
        let mut got: Vec<Vec<u8>> = out.iter().map(|w| w[VNET_HDR_LEN..].to_vec()).collect();
        got.sort();
        packets.sort();
        assert_eq!(got, packets);
    }

    #[test]
    fn consecutive_ipv6_segments_become_one_tcpv6_write_that_resegments_intact() {
        let segs: Vec<Vec<u8>> = (0..6)
            .map(|i| {
                let n = if i == 5 { 77 } else { 1200 };
                let flags = if i == 5 { 0x18 } else { 0x10 };
                tcp6(7 + 1200 * i as u32, 3, flags, &data(n, i as u8))
            })
            .collect();
        let mut c = Coalescer::new(4);
        let out = collect(&mut c, &segs);
        assert_eq!(out.len(), 1);
        let hdr = VnetHdr::parse(&out[0]).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.flags),
            (GSO_TCPV6, 1200, F_NEEDS_CSUM)
        );
        assert_eq!((hdr.csum_start, hdr.csum_offset, hdr.hdr_len), (40, 16, 60));
        let p = &out[0][VNET_HDR_LEN..];
        assert_eq!(
            usize::from(u16::from_be_bytes([p[4], p[5]])),
            p.len() - 40,
            "the IPv6 payload length covers the merged payload"
        );
        assert_eq!(p[53] & TCP_PSH, TCP_PSH, "the last segment's PSH");
        assert_eq!(resegment(&out[0]), segs);
        assert_eq!(c.take_merged(), Merged { v4: 0, v6: 6 });
        assert_eq!(c.take_merged(), Merged::default());
    }

    #[test]
    fn ipv6_segments_after_a_gap_or_with_other_flags_flow_label_hop_limit_class_ack_or_options_are_not_merged()
     {
        let base = |i: u32| tcp6(1000 * i, 1, 0x10, &data(1000, i as u8));
        let changed: [fn(&mut Vec<u8>); 7] = [
            |p| p[47] ^= 1,   // sequence gap
            |p| p[53] = 0x11, // FIN
            |p| p[3] ^= 1,    // flow label
            |p| p[7] = 63,    // hop limit
            |p| p[1] ^= 0x40, // traffic class
            |p| p[51] ^= 1,   // ACK number
            |p| {
                // A different TCP option (a timestamp-sized NOP run).
                let mut q = p[..60].to_vec();
                q.extend_from_slice(&[1, 1, 1, 1]);
                q.extend_from_slice(&p[60..]);
                q[52] = 6 << 4;
                let n = q.len() - 40;
                q[4..6].copy_from_slice(&(n as u16).to_be_bytes());
                *p = q;
            },
        ];
        for change in changed {
            let mut second = base(1);
            change(&mut second);
            fix6(&mut second);
            let packets = vec![base(0), second, base(2)];
            let mut c = Coalescer::new(4);
            let out = collect(&mut c, &packets);
            assert_eq!(out.len(), 3, "nothing merges across the change");
            assert_eq!(unmerged(&out), packets);
            assert_eq!(c.take_merged(), Merged::default());
        }
    }

    #[test]
    fn ipv6_with_an_extension_header_or_a_wrong_length_passes_through_after_its_flow() {
        // A held flow between other addresses is not flushed by either.
        let mut elsewhere = tcp6(0, 1, 0x10, &data(500, 4));
        elsewhere[39] = 9;
        fix6(&mut elsewhere);
        let first = tcp6(0, 1, 0x10, &data(500, 1));
        // A hop-by-hop header (8 bytes of PadN) before the TCP header.
        let plain = tcp6(500, 1, 0x10, &data(500, 2));
        let mut hbh = plain[..40].to_vec();
        hbh[6] = 0;
        hbh.extend_from_slice(&[PROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
        hbh.extend_from_slice(&plain[40..]);
        let n = hbh.len() - 40;
        hbh[4..6].copy_from_slice(&(n as u16).to_be_bytes());
        // Padding after the IPv6 payload.
        let mut padded = tcp6(500, 1, 0x10, &data(500, 3));
        padded.extend_from_slice(&[0; 4]);
        for odd in [hbh, padded] {
            let mut c = Coalescer::new(2);
            let mut out = Vec::new();
            assert_eq!(
                c.push(&first, &mut |b: &[u8]| out.push(b.to_vec())),
                Push::Held
            );
            let mut other = Coalescer::new(2);
            let mut none = |_: &[u8]| panic!("a flow between other addresses was flushed");
            assert_eq!(other.push(&elsewhere, &mut none), Push::Held);
            assert_eq!(other.push(&odd, &mut none), Push::PassThrough);
            assert!(!other.is_empty());
            let pushed = c.push(&odd, &mut |b: &[u8]| out.push(b.to_vec()));
            // Not mergeable (or not even found to be TCP): written now,
            // after the held segment of what may be its flow.
            assert_eq!(pushed, Push::PassThrough);
            assert_eq!(out.len(), 1);
            assert_eq!(&out[0][VNET_HDR_LEN..], &first[..]);
            assert!(c.is_empty());
        }
    }

    #[test]
    fn ipv4_and_ipv6_flows_interleaved_each_merge_in_order() {
        let mut packets = Vec::new();
        for i in 0..8u32 {
            packets.push(with_id(
                tcp4(1000 * i, 5, 0x10, &data(1000, i as u8)),
                i as u16,
            ));
            packets.push(tcp6(1000 * i, 5, 0x10, &data(1000, 100 + i as u8)));
        }
        let mut c = Coalescer::new(4);
        let out = collect(&mut c, &packets);
        assert_eq!(out.len(), 2);
        let kinds: Vec<u8> = out
            .iter()
            .map(|w| VnetHdr::parse(w).unwrap().gso_type)
            .collect();
        assert!(kinds.contains(&GSO_TCPV4) && kinds.contains(&GSO_TCPV6));
        let got = unmerged(&out);
        let (v4, v6): (Vec<_>, Vec<_>) = got.into_iter().partition(|p| p[0] >> 4 == 4);
        let (want4, want6): (Vec<_>, Vec<_>) = packets.into_iter().partition(|p| p[0] >> 4 == 4);
        assert_eq!((v4.len(), v6.len()), (8, 8));
        assert_eq!(v4, want4);
        assert_eq!(v6, want6);
        assert_eq!(c.take_merged(), Merged { v4: 8, v6: 8 });
    }

    #[test]
    fn hostile_short_and_inconsistent_packets_never_panic() {
        let good6 = tcp6(0, 1, 0x10, &data(300, 9));
        let good4 = tcp4(0, 1, 0x10, &data(300, 9));
        let mut c = Coalescer::new(2);
        let mut sink = |_: &[u8]| {};
        for good in [&good6, &good4] {
            for n in 0..good.len() {
                let _ = c.push(&good[..n], &mut sink);
            }
            for bad_offset in 0..16u8 {
                let mut p = good.clone();
                let at = if p[0] >> 4 == 6 { 52 } else { 32 };
                p[at] = bad_offset << 4;
                let _ = c.push(&p, &mut sink);
                // A lying IHL or payload length.
                p[0] = (p[0] & 0xf0) | bad_offset;
                p[4] = bad_offset;
                let _ = c.push(&p, &mut sink);
            }
        }
        // The same headers over a payload that stops at every length.
        for n in 40..70 {
            let mut p = good6[..n].to_vec();
            let len = (n - 40) as u16;
            p[4..6].copy_from_slice(&len.to_be_bytes());
            let _ = c.push(&p, &mut sink);
        }
        c.flush(&mut sink);
        assert!(c.is_empty());
    }
}
