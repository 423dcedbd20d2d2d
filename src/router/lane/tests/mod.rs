//! The lane's unit tests: two or three routers' tables in memory. The
//! fixtures live here; the tests of the receive path in `open.rs`, of the
//! send path and routing in `seal.rs`.

#![allow(clippy::unwrap_used)]
use super::*;
use crate::crypto::replay::WINDOW;
use crate::router::datagram::OVERHEAD;
use crate::router::packet::{CONTROL_LANE, HEADER_LEN, HOP_LIMIT, HeaderError, ipv4_key};
use crate::router::snapshot::{Link, Liveness, OwnedRange, RecvSession, SendKeys};

const A: ShortId = ShortId(1);
const B: ShortId = ShortId(2);
const C: ShortId = ShortId(3);
/// The receiver index B chose for A's keyset.
const B_INDEX: u32 = 0x0000_0b0b;
/// The receiver index C chose for B's keyset.
const C_INDEX: u32 = 0x0000_0c0c;
/// Pod ranges: A 10.32.0.0/24, B 10.32.1.0/24, C 10.32.2.0/24.
const A_POD: u32 = 0x0a20_0005;
const B_POD: u32 = 0x0a20_0105;
const C_POD: u32 = 0x0a20_0205;
/// IPv6 pod ranges: A fd00:0:0:a::/64, B fd00:0:0:b::/64.
const A_POD6: u128 = 0xfd00_0000_0000_000a_0000_0000_0000_0005;
const B_POD6: u128 = 0xfd00_0000_0000_000b_0000_0000_0000_0005;

fn from() -> SocketAddr {
    "192.0.2.1:6783".parse().unwrap()
}

fn key(n: u8) -> DataKey {
    DataKey::from_bytes([n; 32])
}

fn link(endpoint: &str, send: Option<SendKeys>, epoch: Instant) -> Link {
    Link {
        endpoint: Some(endpoint.parse().unwrap()),
        send,
        liveness: Arc::new(Liveness::new(epoch)),
    }
}

/// Keys to send under `remote_index` with key `key(n)`.
fn send_keys(remote_index: u32, n: u8) -> Option<SendKeys> {
    Some(SendKeys {
        remote_index,
        key: key(n),
    })
}

fn owners(table: &mut Snapshot) {
    let range = |start: u32, owner| OwnedRange {
        start: ipv4_key(start),
        end: ipv4_key(start + 255),
        owner,
    };
    let range6 = |pod: u128, owner| OwnedRange {
        start: pod >> 64 << 64,
        end: pod | u128::from(u64::MAX),
        owner,
    };
    table.set_owners(vec![
        range(0x0a20_0000, A),
        range(0x0a20_0100, B),
        range(0x0a20_0200, C),
        range6(A_POD6, A),
        range6(B_POD6, B),
    ]);
}

/// A's table: B is a direct neighbour, C is reached through B.
fn table_a(epoch: Instant) -> Snapshot {
    let mut t = Snapshot::new(A, 1420);
    owners(&mut t);
    t.set_link(B, link("192.0.2.2:6783", send_keys(B_INDEX, 0xab), epoch));
    t.set_next_hop(B, B);
    t.set_next_hop(C, B);
    t
}

/// B's table: receives from A under `B_INDEX`, sends to C.
fn table_b(epoch: Instant, awaiting_confirmation: bool) -> Snapshot {
    let mut t = Snapshot::new(B, 1420);
    owners(&mut t);
    t.set_link(A, link("192.0.2.1:6783", None, epoch));
    t.set_link(C, link("192.0.2.3:6783", send_keys(C_INDEX, 0xbc), epoch));
    t.set_next_hop(A, A);
    t.set_next_hop(C, C);
    t.add_session(
        B_INDEX,
        RecvSession {
            peer: A,
            key: key(0xab),
            awaiting_confirmation,
        },
    );
    t
}

/// A 40-byte IPv4 packet from `src` to `dst`.
fn ipv4(src: u32, dst: u32) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[9] = 17;
    p[12..16].copy_from_slice(&src.to_be_bytes());
    p[16..20].copy_from_slice(&dst.to_be_bytes());
    p
}

/// A 48-byte IPv6 packet from `src` to `dst`.
fn ipv6(src: u128, dst: u128) -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&8u16.to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.to_be_bytes());
    p[24..40].copy_from_slice(&dst.to_be_bytes());
    p
}

/// Seals `inner` with an explicit header (any counter, any lane).
fn sealed(header: DataHeader, key: &DataKey, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; inner.len() + OVERHEAD];
    buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
    seal_datagram(&header, key, &mut buf, inner.len()).unwrap();
    buf
}

fn a_to_b(lane: u8, counter: u64, inner: &[u8]) -> Vec<u8> {
    let header = DataHeader {
        kind: PacketType::Data,
        hop_limit: HOP_LIMIT,
        src: A,
        dst: B,
        session: B_INDEX,
        lane,
        counter,
    };
    sealed(header, &key(0xab), inner)
}

/// Seals one packet on A's lane `lane` through the `Lane` API.
fn send_from_a(lane: &mut Lane, table: &Snapshot, route: Route, inner: &[u8]) -> Vec<u8> {
    let mut sealer = lane.sealer(table, route, 1).unwrap();
    let mut buf = vec![0u8; 2048];
    buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
    let len = sealer.seal(&mut buf, inner.len()).unwrap();
    buf.truncate(len);
    buf
}

/// Owns every sender lane (one worker).
fn any_lane() -> Lane {
    Lane::new(0, 1)
}

/// Owns only sender lane `lane` (as many workers as lanes).
fn only(lane: u8) -> Lane {
    Lane::new(lane, u8::MAX)
}

/// The identity of B's receive key for A.
fn b_key(tb: &Snapshot) -> KeyId {
    tb.session(B_INDEX).unwrap().key.id()
}

/// A's send key toward B.
fn a_send_key(ta: &Snapshot) -> DataKey {
    ta.link(B).unwrap().send.as_ref().unwrap().key.clone()
}

fn to_b() -> Route {
    Route {
        src: A,
        dst: B,
        hop_limit: HOP_LIMIT,
    }
}

mod open;
mod seal;
