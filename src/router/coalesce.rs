//! GRO-style coalescing on the TUN write side (DESIGN.md "The fast data
//! path" → Receive): consecutive decrypted TCP segments of one inner flow
//! are merged into one super-packet and written to the TUN with a virtio
//! header (GSO_TCPV4, partial checksum), so the kernel handles one 64 KB
//! packet instead of forty-five 1.4 KB ones.
//!
//! A segment joins its flow's pending packet only if it is the next in
//! sequence, carries the same ACK, TTL, TOS, DF bit and TCP options, no
//! flags but ACK/PSH, and the pending packet's segments so far were all full
//! (`mss`) and none had PSH. Anything else flushes that flow first, so a
//! flow's packets always reach the TUN in the order they arrived. Packets
//! that are not IPv4 TCP data pass through untouched (the caller writes
//! them). IPv4 only for now: the data plane routes only IPv4 (IPv6 is
//! future work, DESIGN.md "Coming later").
//!
//! Checksums of the merged segments are not re-verified: each arrived under
//! an authenticated AEAD tag from a peer router whose segmenter computed them.

use super::checksum;
use super::vnet::{F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, VNET_HDR_LEN, VnetHdr};

const PROTO_TCP: u8 = 6;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const MAX_PACKET: usize = 65_535;

/// What the caller does with a pushed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// The coalescer copied it; it reaches the TUN at the next flush.
    Held,
    /// Write it to the TUN now (with a plain virtio header), after whatever
    /// the coalescer just wrote.
    PassThrough,
}

struct Slot {
    buf: Box<[u8]>,
    /// Packet bytes in `buf` after the virtio header; 0 = free.
    len: usize,
    key: [u8; 12],
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
}

/// The fields of a TCP/IPv4 segment the coalescer looks at.
struct Tcp4 {
    key: [u8; 12],
    hlen: usize,
    seq: u32,
    flags: u8,
    payload: usize,
    /// May join or start a merged packet.
    mergeable: bool,
}

fn parse(p: &[u8]) -> Option<Tcp4> {
    let first = *p.first()?;
    if first >> 4 != 4 || p.len() < 40 || p[9] != PROTO_TCP {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let thl = usize::from(*p.get(ihl + 12)? >> 4) * 4;
    let hlen = ihl + thl;
    if thl < 20 || p.len() < hlen {
        return None;
    }
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&p[12..20]);
    key[8..].copy_from_slice(&p[ihl..ihl + 4]);
    let flags = p[ihl + 13];
    let fragment = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let payload = p.len() - hlen;
    let mergeable = ihl == 20
        && !fragment
        && total == p.len()
        && payload > 0
        && flags & !(TCP_ACK | TCP_PSH) == 0
        && flags & TCP_ACK != 0;
    Some(Tcp4 {
        key,
        hlen,
        seq: u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]]),
        flags,
        payload,
        mergeable,
    })
}

impl Coalescer {
    /// A coalescer holding at most `flows` pending flows.
    pub fn new(flows: usize) -> Self {
        let slots = (0..flows.max(1))
            .map(|_| Slot {
                buf: vec![0u8; VNET_HDR_LEN + MAX_PACKET].into_boxed_slice(),
                len: 0,
                key: [0; 12],
                hlen: 0,
                mss: 0,
                next_seq: 0,
                count: 0,
                closed: false,
                started: 0,
            })
            .collect();
        Self { slots, tick: 0 }
    }

    /// Offers one inner IP packet. `write` receives complete TUN writes
    /// (virtio header included) for any flow that has to be flushed first.
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(&[u8])) -> Push {
        let Some(seg) = parse(packet) else {
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
            Self::flush_slot(&mut self.slots[i], write);
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
                Self::flush_slot(&mut self.slots[i], write);
                i
            }
        };
        self.tick += 1;
        let slot = &mut self.slots[i];
        slot.buf[VNET_HDR_LEN..VNET_HDR_LEN + packet.len()].copy_from_slice(packet);
        slot.len = packet.len();
        slot.key = seg.key;
        slot.hlen = seg.hlen;
        slot.mss = seg.payload;
        slot.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        slot.count = 1;
        slot.closed = seg.flags & TCP_PSH != 0;
        slot.started = self.tick;
        Push::Held
    }

    fn try_append(&mut self, i: usize, p: &[u8], seg: &Tcp4) -> bool {
        let slot = &mut self.slots[i];
        let head = slot.packet();
        let same_headers = seg.hlen == slot.hlen
            && p[1] == head[1] // TOS
            && p[6] & 0x40 == head[6] & 0x40 // DF
            && p[8] == head[8] // TTL
            && p[28..32] == head[28..32] // ACK number
            && p[40..seg.hlen] == head[40..slot.hlen]; // TCP options
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
            slot.buf[VNET_HDR_LEN + 33] |= TCP_PSH;
            slot.closed = true;
        }
        // TCP window: the latest segment's is the current one.
        slot.buf[VNET_HDR_LEN + 34..VNET_HDR_LEN + 36].copy_from_slice(&p[34..36]);
        if seg.payload < slot.mss {
            slot.closed = true;
        }
        true
    }

    /// Writes every pending flow.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8])) {
        for slot in &mut self.slots {
            if slot.len > 0 {
                Self::flush_slot(slot, write);
            }
        }
    }

    /// Whether any flow is pending.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| s.len == 0)
    }

    fn flush_slot(slot: &mut Slot, write: &mut impl FnMut(&[u8])) {
        let len = slot.len;
        let mut hdr = VnetHdr::default();
        if slot.count > 1 {
            let p = &mut slot.buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
            p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::ipv4_header(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            // A partial checksum: the pseudo-header sum, folded, not
            // complemented; the kernel (or the pod's stack) completes it.
            let pseudo = checksum::pseudo_header(p, PROTO_TCP, len - 20).unwrap_or(0);
            p[36..38].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
            hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: slot.hlen as u16,
                gso_size: slot.mss as u16,
                csum_start: 20,
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
            assert!(checksums_valid(&buf[..n]));
            segs.push(buf[..n].to_vec());
        }
        segs
    }

    fn with_id(mut p: Vec<u8>, id: u16) -> Vec<u8> {
        p[4..6].copy_from_slice(&id.to_be_bytes());
        crate::router::segment::tests::fix_checksums(&mut p);
        p
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
}
