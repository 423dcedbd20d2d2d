//! The ring channel's idle cost per router (issue 14: "≤ 100 B/s per idle
//! peer"): N allocators (one seeded ring, N owners, N free-space records)
//! brought to one converged ring, then one gossip interval of the real
//! cores' output counted on the wire, each broadcast expanded to the
//! router's neighbours (the 200-connection cap, DESIGN.md "Wire rules").
//! Before: every router a pre-digest build (`ring_version` 1, full ring
//! every interval). After: digests. Digests are delivered to neighbours
//! (up to `DELIVER` each, to keep 1,000 routers quick) and their replies
//! counted too: at idle there are none.
//!
//! Run: `cargo test --release --lib sim::ring_bench -- --ignored --nocapture`
//! (numbers in bench/RESULTS.md). Bytes are ring-channel payloads; the
//! control record's framing and AEAD tag (about 25 bytes a message) are not
//! counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::id::PeerId;
use crate::ipam::message::{Message, RING_DIGEST_VERSION};
use crate::ipam::signed::TestCrypto;
use crate::ipam::{AddrRange, Allocator, Config, Destination, Init, MemStore};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const CAP: usize = 200;
const DELIVER: usize = 5;
const INTERVAL: Duration = Duration::from_secs(5);

/// `routers` allocators (IDs 1..=routers, each owning a share of the
/// range, each with its free-space record) holding one converged ring, with
/// nothing left to send (`control_bench.rs` starts from this too).
pub(super) fn converged(
    routers: usize,
    ring_version: u8,
    now: Instant,
) -> Vec<Allocator<MemStore>> {
    let range = AddrRange::parse("10.32.0.0/12").unwrap();
    let owners: BTreeSet<PeerId> = (1..=routers as u64).map(PeerId).collect();
    let mut nodes: Vec<Allocator<MemStore>> = owners
        .iter()
        .map(|id| {
            let mut cfg = Config::new(
                *id,
                range,
                Init::Seed(owners.clone()),
                TestCrypto::boxed(*id),
            );
            cfg.ring_version = ring_version;
            let mut a = Allocator::new(cfg, MemStore::default(), &[], now).unwrap();
            a.learn_test_keys(routers as u64);
            a
        })
        .collect();
    // Converge: every router's own record joined into one ring, handed to all.
    for n in &mut nodes {
        n.handle_peer_up(PeerId(0), now);
    }
    let mut merged = nodes[0].ring().unwrap().clone();
    for n in &mut nodes {
        while let Some((_, bytes)) = n.poll_transmit() {
            if let Ok(Message::Ring(r)) = Message::decode(&bytes) {
                merged.join(&r);
            }
        }
    }
    let all = Message::Ring(merged).encode();
    for n in &mut nodes {
        n.handle_message(PeerId(0), &all, now).unwrap();
        while n.poll_transmit().is_some() {}
    }
    nodes
}

/// Ring-channel bytes one router sends per second at idle, on average.
fn idle_bytes_per_router(routers: usize, ring_version: u8) -> f64 {
    let now = Instant::now();
    let mut nodes = converged(routers, ring_version, now);
    // One interval.
    let neighbours = (routers - 1).min(CAP);
    let negotiated = ring_version.min(RING_DIGEST_VERSION);
    let later = now + INTERVAL;
    let mut total = 0usize;
    let mut digests = Vec::new();
    for (i, n) in nodes.iter_mut().enumerate() {
        n.handle_timeout(later).unwrap();
        while let Some((to, bytes)) = n.poll_transmit() {
            let copies = match to {
                Destination::Peer(_) => 1,
                Destination::Broadcast => neighbours,
                Destination::Neighbours { min, max } if (min..=max).contains(&negotiated) => {
                    neighbours
                }
                Destination::Neighbours { .. } => 0,
                Destination::PeerSpeaking { min, .. } => usize::from(negotiated >= min),
            };
            total += copies * bytes.len();
            if copies > 0 && matches!(Message::decode(&bytes), Ok(Message::Digest(_))) {
                digests.push((i, bytes));
            }
        }
    }
    for (i, bytes) in digests {
        for k in 1..=DELIVER.min(neighbours) {
            let j = (i + k) % routers;
            let from = nodes[i].id();
            nodes[j].handle_message(from, &bytes, later).unwrap();
            while let Some((_, reply)) = nodes[j].poll_transmit() {
                // Scaled up: only DELIVER of the neighbours were asked.
                total += reply.len() * neighbours / DELIVER.min(neighbours);
            }
        }
    }
    total as f64 / routers as f64 / INTERVAL.as_secs_f64()
}

#[test]
#[ignore = "slow in debug: cargo test --release --lib sim::ring_bench -- --ignored --nocapture"]
fn ring_channel_idle_bytes_per_router_before_and_after_digests() {
    println!(
        "| routers | neighbours | before: full ring (B/s/router) | after: digests (B/s/router) | after, per peer (B/s) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for routers in [50, 200, 1000] {
        let before = idle_bytes_per_router(routers, 1);
        let after = idle_bytes_per_router(routers, RING_DIGEST_VERSION);
        let neighbours = (routers - 1).min(CAP);
        println!(
            "| {routers} | {neighbours} | {before:.0} | {after:.0} | {:.1} |",
            after / neighbours as f64
        );
        assert!(after / (neighbours as f64) < 100.0, "{after} B/s");
    }
}
