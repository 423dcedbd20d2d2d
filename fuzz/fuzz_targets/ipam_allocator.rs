//! The IPAM allocator fed hostile ring messages from peers, interleaved with
//! allocations, releases, reclaims and timers. Checks after every step: the
//! ring's invariants hold, everything sent decodes, allocated addresses are
//! distinct and owned by this router.
//!
//! Input: `[mode][op args…]…`; mode picks the range and how the ring starts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use weft::id::PeerId;
use weft::ipam::message::Message;
use weft::ipam::signed::{RingCrypto, Signature};
use weft::ipam::{AddrRange, Allocator, Config, Init, MemStore};

/// Signs nothing and accepts every signature: the fuzzer explores the
/// ownership rules behind the signature check (the signature scheme has
/// its own tests; a forged writer is refused there, not here).
struct AcceptAll;

impl RingCrypto for AcceptAll {
    fn sign(&self, _: &[u8]) -> Signature {
        Signature::ZERO
    }
    fn verify(&self, _: PeerId, _: &[u8; 32], _: &[u8], _: &Signature) -> bool {
        true
    }
    fn binds(&self, _: PeerId, _: &[u8; 32]) -> bool {
        true
    }
}

#[path = "common.rs"]
mod common;

const RANGES: [&str; 3] = ["10.32.0.0/12", "10.0.0.0/28", "fd00::/120"];

fuzz_target!(|data: &[u8]| {
    let mut input = common::Bytes::new(data);
    let mode = input.u8();
    let range = AddrRange::parse(RANGES[usize::from(mode) % RANGES.len()]).expect("range");
    let me = PeerId(1);
    let peers = [PeerId(2), PeerId(3), PeerId(4)];
    let init = match (mode >> 2) % 3 {
        0 => Init::Voters(BTreeSet::from([me, peers[0], peers[1]])),
        1 => Init::Seed(BTreeSet::from([me, peers[0]])),
        _ => Init::Observer,
    };
    let mut now = Instant::now();
    let cfg = Config::new(me, range, init, Box::new(AcceptAll));
    let Ok(mut alloc) = Allocator::new(cfg, MemStore::default(), &[], now) else {
        return;
    };
    for id in [me].iter().chain(&peers) {
        alloc.learn_key(*id, [0; 32]);
    }
    let mut steps = 0;
    while !input.is_empty() && steps < 128 {
        steps += 1;
        let op = input.u8();
        let from = peers[usize::from(op >> 5) % peers.len()];
        match op % 9 {
            0 => {
                let _ = alloc.handle_message(from, input.chunk(), now);
            }
            1 => {
                // A valid envelope so the fuzzer reaches the bodies.
                let mut bytes = vec![1, input.u8() % 4];
                bytes.extend_from_slice(input.chunk());
                let _ = alloc.handle_message(from, &bytes, now);
            }
            2 => {
                now += Duration::from_millis(u64::from(input.u16()) * 16);
                let _ = alloc.handle_timeout(now);
            }
            3 => {
                let id = format!("c{}", input.u8() % 32);
                if let Ok(addr) = alloc.allocate(&id, "eth0", now) {
                    assert_eq!(
                        alloc.owner_of(addr),
                        Some(me),
                        "allocated {addr} I do not own"
                    );
                }
            }
            4 => {
                let id = format!("c{}", input.u8() % 32);
                let _ = alloc.release(&id, "eth0", now);
            }
            5 => {
                if let Ok(addr) = alloc.allocate_node(now) {
                    assert_eq!(
                        alloc.owner_of(addr),
                        Some(me),
                        "allocated {addr} I do not own"
                    );
                }
            }
            6 => alloc.handle_peer_up(from, now),
            7 => {
                let mask = input.u8();
                let reachable = peers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, p)| *p)
                    .collect();
                alloc.set_reachable(reachable);
            }
            _ => {
                let _ = alloc.rmpeer(from, op & 0x10 != 0, now);
            }
        }
        while let Some((_, bytes)) = alloc.poll_transmit() {
            if let Err(e) = Message::decode(&bytes) {
                panic!("sent an ipam message that does not decode: {e}");
            }
        }
        while alloc.poll_event().is_some() {}
        if let Some(ring) = alloc.ring() {
            if let Err(e) = ring.check_invariants() {
                panic!("ring invariant broken: {e}");
            }
            assert_eq!(ring.range(), range);
        }
        let allocations = alloc.allocations();
        let distinct: BTreeSet<_> = allocations.iter().map(|(_, a)| *a).collect();
        assert_eq!(
            distinct.len(),
            allocations.len(),
            "an address allocated twice"
        );
        let _ = alloc.status(now);
        let _ = alloc.phase();
        let _ = alloc.poll_timeout();
    }
});
