//! The coalescer on hostile and on well-formed decrypted packets. Arbitrary
//! bytes must never panic it. Well-formed TCP segments built from the input
//! (four flows, two over IPv4 and two over IPv6, any order, gaps, short
//! segments, PSH/FIN, IPv6 flow-label and hop-limit changes) must come out,
//! once the writes are cut again at their virtio `gso_size`, as exactly the
//! segments that went in, per flow and in order, with valid checksums.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use weft::router::checksum::{finish, fold, ipv4_header, pseudo_header, sum};
use weft::router::coalesce::{Coalescer, Push};
use weft::router::segment::Segmenter;
use weft::router::vnet::{VNET_HDR_LEN, VnetHdr};

fn tcp4(flow: u8, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = 40 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p[20..22].copy_from_slice(&(1000 + u16::from(flow)).to_be_bytes());
    p[22..24].copy_from_slice(&2000u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&7u32.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&1000u16.to_be_bytes());
    p[40..].copy_from_slice(payload);
    let c = ipv4_header(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let pseudo = pseudo_header(&p, 6, len - 20).unwrap();
    let c = finish(sum(&p[20..], pseudo));
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

/// A TCP/IPv6 segment fd00::1 → fd00::2 of `flow` with the given first
/// word's low bits (traffic class and flow label) and hop limit.
fn tcp6(flow: u8, seq: u32, flags: u8, label: u8, hops: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 60 + payload.len()];
    p[..4].copy_from_slice(&[0x60, 0, 0, label]);
    p[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[6] = 6;
    p[7] = hops;
    p[8] = 0xfd;
    p[23] = 1;
    p[24] = 0xfd;
    p[39] = 2;
    p[40..42].copy_from_slice(&(1000 + u16::from(flow)).to_be_bytes());
    p[42..44].copy_from_slice(&2000u16.to_be_bytes());
    p[44..48].copy_from_slice(&seq.to_be_bytes());
    p[48..52].copy_from_slice(&7u32.to_be_bytes());
    p[52] = 5 << 4;
    p[53] = flags;
    p[54..56].copy_from_slice(&1000u16.to_be_bytes());
    p[60..].copy_from_slice(payload);
    let pseudo = pseudo_header(&p, 6, p.len() - 40).unwrap();
    let c = finish(sum(&p[40..], pseudo));
    p[56..58].copy_from_slice(&c.to_be_bytes());
    p
}

/// The IP header length of a segment built here.
fn l3(p: &[u8]) -> usize {
    if p[0] >> 4 == 6 { 40 } else { 20 }
}

/// (flow, seq, flags, IPv6 first word and hop limit, payload) of a segment.
fn key(p: &[u8]) -> (u8, u32, u8, [u8; 5], Vec<u8>) {
    let t = l3(p);
    let flow = (u16::from_be_bytes([p[t], p[t + 1]]) - 1000) as u8;
    let seq = u32::from_be_bytes([p[t + 4], p[t + 5], p[t + 6], p[t + 7]]);
    let ip6 = if t == 40 {
        [p[0], p[1], p[2], p[3], p[7]]
    } else {
        [0; 5]
    };
    (flow, seq, p[t + 13] & !0x08, ip6, p[t + 20..].to_vec())
}

type Key = (u8, u32, u8, [u8; 5], Vec<u8>);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut c = Coalescer::new(usize::from(mode % 4) + 1);
    let mut writes: Vec<Vec<u8>> = Vec::new();
    if mode & 0x80 != 0 {
        // Raw: arbitrary packets separated by their first byte's length.
        let mut at = 0;
        while at < rest.len() {
            let n = usize::from(rest[at]) * 8 + 1;
            let end = (at + 1 + n).min(rest.len());
            let p = &rest[at + 1..end];
            let _ = c.push(p, &mut |b: &[u8]| writes.push(b.to_vec()));
            at = end;
        }
        c.flush(&mut |b: &[u8]| writes.push(b.to_vec()));
        return;
    }
    // Structured: 4-byte records (flow, seq step, length, flags).
    let mut next_seq = [0u32; 4];
    let mut input = Vec::new();
    for r in rest.chunks_exact(4) {
        let flow = r[0] % 4;
        let len = usize::from(r[2]) * 8 % 1500;
        let seq = match r[1] % 4 {
            0 | 1 => next_seq[usize::from(flow)],
            2 => next_seq[usize::from(flow)].wrapping_add(1),
            _ => u32::from(r[1]) << 24,
        };
        let flags = [0x10, 0x10, 0x18, 0x11, 0x12, 0x10 | 0x80][usize::from(r[3] % 6)];
        let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ r[3]).collect();
        next_seq[usize::from(flow)] = seq.wrapping_add(len as u32);
        // Flows 2 and 3 are IPv6; a record's top bits change the flow
        // label or the hop limit now and then.
        let p = if flow >= 2 {
            let label = u8::from(r[3] & 0x40 != 0);
            let hops = 64 - u8::from(r[3] & 0x20 != 0);
            tcp6(flow, seq, flags, label, hops, &payload)
        } else {
            tcp4(flow, seq, flags, &payload)
        };
        if c.push(&p, &mut |b: &[u8]| writes.push(b.to_vec())) == Push::PassThrough {
            let mut w = vec![0u8; VNET_HDR_LEN];
            w.extend_from_slice(&p);
            writes.push(w);
        }
        input.push(p);
    }
    c.flush(&mut |b: &[u8]| writes.push(b.to_vec()));
    assert!(c.is_empty());
    let mut got: BTreeMap<u8, Vec<Key>> = BTreeMap::new();
    for w in &writes {
        let hdr = VnetHdr::parse(w).unwrap();
        let mut s = Segmenter::new(&hdr, &w[VNET_HDR_LEN..]).unwrap();
        let mut buf = vec![0u8; s.max_segment_len()];
        while let Some(n) = s.next_into(&mut buf) {
            let seg = &buf[..n];
            let t = l3(seg);
            if t == 20 {
                assert_eq!(fold(sum(&seg[..20], 0)), 0xffff);
            } else {
                assert_eq!(usize::from(u16::from_be_bytes([seg[4], seg[5]])), n - 40);
            }
            let pseudo = pseudo_header(seg, 6, n - t).unwrap();
            assert_eq!(fold(sum(&seg[t..], pseudo)), 0xffff);
            let k = key(seg);
            got.entry(k.0).or_default().push(k);
        }
    }
    let mut want: BTreeMap<u8, Vec<Key>> = BTreeMap::new();
    for p in &input {
        let k = key(p);
        want.entry(k.0).or_default().push(k);
    }
    assert_eq!(got, want);
});
