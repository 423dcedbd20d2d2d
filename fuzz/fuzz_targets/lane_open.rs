//! A data worker's receive path, `router::lane::Lane::handle_datagram` (parse
//! through the checked view, session, window, open, mark, verdict), fed
//! hostile datagrams interleaved with honestly sealed ones, bit-flipped ones
//! and truncated ones, against a model of the replay windows.
//!
//! Input: records `[op][args…]` (see `common.rs`):
//! - `op % 4 == 0`: `[chunk]` raw bytes: never delivered or relayed;
//! - `op % 4 == 1`: `[lane][counter][dst][hop][chunk]` sealed honestly: the
//!   verdict is exactly the model's (fresh → deliver / relay / its drop
//!   reason; seen or too old → replay);
//! - `op % 4 == 2`: the same plus `[u16 at]`, one bit flipped: never
//!   delivered or relayed, and the window is not marked;
//! - `op % 4 == 3`: the same plus `[u16 len]`, truncated: likewise.
//!
//! `counter` is a u16 above the lane's highest (`op & 0x80` clear) or below
//! it (set), or a whole 48-bit value when `op & 0x40` is set.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use weft::crypto::{COUNTER_LIMIT, DataKey};
use weft::id::ShortId;
use weft::router::datagram::{OVERHEAD, OpenError, seal_datagram};
use weft::router::lane::{Discard, Lane, Verdict};
use weft::router::packet::{CONTROL_LANE, DataHeader, HEADER_LEN, PacketType, ipv4_key};
use weft::router::snapshot::{Link, Liveness, OwnedRange, RecvSession, SendKeys, Snapshot};

#[path = "common.rs"]
mod common;

const A: ShortId = ShortId(1);
const B: ShortId = ShortId(2);
const C: ShortId = ShortId(3);
const INDEX: u32 = 0x0000_0b0b;
const A_RANGE: (u32, u32) = (0x0a20_0000, 0x0a20_00ff);
/// A's IPv6 range, fd00::/120 (the model checks IPv6 sources against it).
const A_RANGE6: (u128, u128) = (0xfd00 << 112, (0xfd00 << 112) | 0xff);

/// B's table: receives from A under `INDEX`, relays to C.
fn table(epoch: Instant) -> Snapshot {
    let mut t = Snapshot::new(B, 1420);
    let range = |start: u32, owner| OwnedRange {
        start: ipv4_key(start),
        end: ipv4_key(start + 255),
        owner,
    };
    t.set_owners(vec![
        OwnedRange {
            start: A_RANGE6.0,
            end: A_RANGE6.1,
            owner: A,
        },
        range(A_RANGE.0, A),
        range(0x0a20_0100, B),
        range(0x0a20_0200, C),
    ]);
    let endpoint = |n: u8| Some(SocketAddr::from(([192, 0, 2, n], 6783)));
    let liveness = Arc::new(Liveness::new(epoch));
    t.set_link(
        A,
        Link {
            endpoint: endpoint(1),
            send: None,
            liveness: liveness.clone(),
        },
    );
    t.set_link(
        C,
        Link {
            endpoint: endpoint(3),
            send: Some(SendKeys {
                remote_index: 7,
                key: DataKey::from_bytes([0xbc; 32]),
            }),
            liveness,
        },
    );
    t.set_next_hop(C, C);
    t.add_session(
        INDEX,
        RecvSession {
            peer: A,
            key: DataKey::from_bytes([0xab; 32]),
            awaiting_confirmation: true,
        },
    );
    t
}

/// The verdict of a fresh, honest datagram carrying `inner`.
fn expected(dst: ShortId, hop_limit: u8, inner: &[u8]) -> Result<(), Discard> {
    if dst == B {
        let ours = match (inner.first().map(|b| b >> 4), inner.len()) {
            (Some(4), 20..) => {
                let src = u32::from_be_bytes([inner[12], inner[13], inner[14], inner[15]]);
                (A_RANGE.0..=A_RANGE.1).contains(&src)
            }
            (Some(6), 40..) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(&inner[8..24]);
                (A_RANGE6.0..=A_RANGE6.1).contains(&u128::from_be_bytes(b))
            }
            _ => return Err(Discard::NotIp),
        };
        if !ours {
            return Err(Discard::SpoofedSource);
        }
        Ok(())
    } else if hop_limit <= 1 {
        Err(Discard::HopLimit)
    } else {
        Ok(())
    }
}

fn passed(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Deliver { .. } | Verdict::Relay { .. })
}

fuzz_target!(|data: &[u8]| {
    let mut input = common::Bytes::new(data);
    let epoch = Instant::now();
    let table = table(epoch);
    let key = DataKey::from_bytes([0xab; 32]);
    let from = SocketAddr::from(([198, 51, 100, 1], 40000));
    // One worker: every lane is its own (no foreign_lane drops to model).
    let mut lane = Lane::new(0, 1);
    let mut model: HashMap<u8, common::ReplayModel> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    while !input.is_empty() {
        let op = input.u8();
        if op % 4 == 0 {
            let mut raw = input.chunk().to_vec();
            let verdict = lane.handle_datagram(&table, &mut raw, from, epoch);
            assert!(!passed(&verdict), "a forgery passed: {verdict:?}");
            continue;
        }
        let sender_lane = input.u8() % CONTROL_LANE;
        let window = model.entry(sender_lane).or_default();
        let highest = window.highest.unwrap_or(0);
        let counter = if op & 0x40 != 0 {
            input.u64() & COUNTER_LIMIT
        } else if op & 0x80 == 0 {
            (highest + u64::from(input.u16())).min(COUNTER_LIMIT)
        } else {
            highest.saturating_sub(u64::from(input.u16()))
        };
        let dst = if input.u8() & 1 == 0 { B } else { C };
        let hop_limit = input.u8() % 10;
        let inner = input.chunk();
        let inner = &inner[..inner.len().min(buf.len() - OVERHEAD)];
        let header = DataHeader {
            kind: PacketType::Data,
            hop_limit,
            src: A,
            dst,
            session: INDEX,
            lane: sender_lane,
            counter,
        };
        buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
        let len = seal_datagram(&header, &key, &mut buf, inner.len()).expect("fits");
        let datagram = &mut buf[..len];
        match op % 4 {
            1 => {
                let fresh = window.fresh(counter);
                let verdict = lane.handle_datagram(&table, datagram, from, epoch);
                if !fresh {
                    assert_eq!(
                        verdict,
                        Verdict::Discard(Discard::Open(OpenError::Replay)),
                        "{counter}"
                    );
                    continue;
                }
                window.mark(counter);
                match (expected(dst, hop_limit, inner), verdict) {
                    (Ok(()), Verdict::Deliver { inner: range }) if dst == B => {
                        assert_eq!(&buf[range], inner);
                    }
                    (
                        Ok(()),
                        Verdict::Relay {
                            route,
                            inner: range,
                        },
                    ) if dst == C => {
                        assert_eq!((route.src, route.dst), (A, C));
                        assert_eq!(route.hop_limit, hop_limit - 1);
                        assert_eq!(&buf[range], inner);
                    }
                    (Err(reason), Verdict::Discard(got)) => assert_eq!(got, reason),
                    (want, got) => panic!("expected {want:?}, got {got:?}"),
                }
            }
            2 => {
                let at = usize::from(input.u16()) % (len * 8);
                datagram[at / 8] ^= 1 << (at % 8);
                let verdict = lane.handle_datagram(&table, datagram, from, epoch);
                assert!(!passed(&verdict), "a flipped bit {at} passed: {verdict:?}");
            }
            _ => {
                let short = usize::from(input.u16()) % len;
                let verdict = lane.handle_datagram(&table, &mut datagram[..short], from, epoch);
                assert!(
                    !passed(&verdict),
                    "{short} of {len} bytes passed: {verdict:?}"
                );
            }
        }
    }
});
