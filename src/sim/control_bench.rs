//! Control bytes per router per second over every channel (issue 14: "a
//! simulator benchmark reports control bytes per router per second for
//! 50–1,000 routers at idle and under traffic"), from the real cores:
//!
//! - **heartbeats** (UDP): a [`Heartbeats`] pair run for ten virtual
//!   minutes after establishment; bytes per link per second (with 28 bytes
//!   of IP and UDP header), times the router's neighbours;
//! - **topology gossip** (TCP): the gossip simulator ([`GossipSim`]) at
//!   the size asked, a quiet minute after convergence;
//! - **ring** (TCP): N converged allocators (`ring_bench.rs`), two virtual
//!   minutes of their anti-entropy with digests delivered to
//!   [`DELIVER`] neighbours and every reply (and reply to a reply) counted,
//!   scaled up to all neighbours; under traffic one router in ten
//!   allocates or releases an address every interval;
//! - **control link** (TCP): the records of one rekey (handshake and key
//!   confirmations, a [`LinkPair`]) every 120 s per link.
//!
//! Every TCP message is charged its control framing, its Noise record
//! (length and tag), a TCP/IP header with timestamps and the pure ACK it
//! draws from an idle receiver (per-router averages are symmetric, so the
//! ACK is charged to the sender). "Under traffic" changes only the ring:
//! heartbeats go at the same rate whatever the data plane carries (the
//! dialler pings every 1.5 s it has sent nothing; data only
//! adds liveness), and pods do not change the topology.
//!
//! Run: `cargo test --release --lib sim::control_bench -- --ignored --nocapture`
//! (`WEFT_BENCH_SIZES=50,200` to pick sizes; 1,000 takes minutes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::gossip::{GossipSim, SimConfig};
use super::link::{LinkPair, PipeConfig, link_config};
use super::ring_bench::converged;
use crate::control::heartbeat::{Heartbeats, LinkKeys};
use crate::control::proto::ControlMessage;
use crate::crypto::data::DataKey;
use crate::crypto::session::Keyset;
use crate::id::{PeerId, ShortId};
use crate::ipam::message::{Message, RING_DELTA_VERSION};
use crate::ipam::{Allocator, Destination, MemStore};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The connection cap (DESIGN.md "Wire rules").
const CAP: usize = 200;
/// Neighbours each ring digest is delivered to (scaled up to all).
const DELIVER: usize = 5;
/// IPv4 + UDP headers.
const UDP_HEADERS: usize = 28;
/// IPv4 + TCP headers with the timestamp option.
const TCP_HEADERS: usize = 52;
/// A control message on the wire besides its payload: the Noise record's
/// length and tag (18), the message's variant, channel and length (~4),
/// its TCP segment's headers, and the pure ACK an idle receiver sends.
const TCP_MESSAGE: usize = 18 + 4 + TCP_HEADERS + TCP_HEADERS;
/// The ring version two current routers speak.
const SPOKEN: u8 = crate::ipam::message::RING_DELTA_VERSION;
/// How often a link rekeys (DESIGN.md "Rekey").
const REKEY_EVERY: Duration = Duration::from_secs(120);

/// UDP heartbeat bytes one router sends per second on one idle link,
/// averaged over both ends (the dialler pings, the other side answers).
fn heartbeat_bytes_per_link() -> f64 {
    let t0 = Instant::now();
    let keyset = |local, remote, send: u8, recv: u8| Keyset {
        local_index: local,
        remote_index: remote,
        send: DataKey::from_bytes([send; 32]),
        recv: DataKey::from_bytes([recv; 32]),
        created: t0,
    };
    let addr = |last: u8| SocketAddr::from(([192, 0, 2, last], 6783));
    let (a_id, b_id) = (PeerId(1), PeerId(2));
    let mut a = Heartbeats::new(t0, ShortId(1), 1420);
    let mut b = Heartbeats::new(t0, ShortId(2), 1420);
    a.add(b_id, true, t0);
    b.add(a_id, false, t0);
    let (ka, kb) = (keyset(10, 20, 1, 2), keyset(20, 10, 2, 1));
    a.set_link(b_id, ShortId(1), link_keys(2, addr(2), &ka), t0);
    b.set_link(a_id, ShortId(2), link_keys(1, addr(1), &kb), t0);
    let (measure_from, until) = (
        t0 + Duration::from_secs(600),
        t0 + Duration::from_secs(1200),
    );
    let mut sent = 0usize;
    let mut now = t0;
    for _ in 0..1_000_000 {
        for _ in 0..3 {
            a.handle_timeout(now);
            b.handle_timeout(now);
            let counted = now >= measure_from;
            sent += carry(&mut a, addr(1), &mut b, now, counted);
            sent += carry(&mut b, addr(2), &mut a, now, counted);
        }
        while a.poll_event().is_some() || b.poll_event().is_some() {}
        let next = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .map(|(t, _)| t)
            .min()
            .unwrap();
        if next > until {
            break;
        }
        now = next.max(now + Duration::from_micros(1));
    }
    // Per router per link: half of what both ends sent.
    sent as f64 / 2.0 / (until - measure_from).as_secs_f64()
}

/// One side's keys as the heartbeat core wants them.
fn link_keys(short: u16, endpoint: SocketAddr, k: &Keyset) -> LinkKeys<'_> {
    LinkKeys {
        short: ShortId(short),
        endpoint: Some(endpoint),
        current: Some(k),
        receive: vec![k],
    }
}

/// Delivers what `from` queued to `to`; returns its bytes on the wire when
/// `counted`.
fn carry(
    from: &mut Heartbeats,
    from_addr: SocketAddr,
    to: &mut Heartbeats,
    now: Instant,
    counted: bool,
) -> usize {
    let mut sent = 0;
    while let Some((_, mut d)) = from.poll_transmit() {
        if counted {
            sent += d.len() + UDP_HEADERS;
        }
        to.handle_datagram(now, from_addr, &mut d);
    }
    sent
}

/// Topology gossip bytes per router per second at idle, framing included.
fn topology_bytes_per_router(routers: usize) -> f64 {
    let mut cfg = SimConfig {
        routers,
        ..SimConfig::default()
    };
    cfg.check_invariants = false;
    cfg.max_steps = u64::MAX;
    let mut sim = GossipSim::new(cfg, 0xc0de + routers as u64);
    sim.run_until_converged(Duration::from_secs(600), Duration::from_millis(100))
        .expect("the topology converges");
    // Connection setup settles, then a quiet minute.
    sim.run_for(Duration::from_secs(30));
    let (bytes, frames) = (
        sim.bytes_sent.iter().sum::<u64>(),
        sim.frames_sent.iter().sum::<u64>(),
    );
    let window = Duration::from_secs(60);
    sim.run_for(window);
    let bytes = sim.bytes_sent.iter().sum::<u64>() - bytes;
    let frames = sim.frames_sent.iter().sum::<u64>() - frames;
    (bytes + frames * TCP_MESSAGE as u64) as f64 / routers as f64 / window.as_secs_f64()
}

/// Ring-channel bytes per router per second over two virtual minutes, with
/// `churn`: one router in ten allocates or releases an address per interval.
fn ring_bytes_per_router(routers: usize, churn: bool) -> f64 {
    let start = Instant::now();
    let version = match std::env::var("WEFT_BENCH_RING") {
        Ok(v) => v.parse().unwrap_or(RING_DELTA_VERSION),
        Err(_) => RING_DELTA_VERSION,
    };
    let mut nodes = converged(routers, version, start);
    let neighbours = (routers - 1).min(CAP);
    let interval = Duration::from_secs(5);
    let rounds = 24;
    let mut total = 0f64;
    let charge = |len: usize, copies: f64| (len + TCP_MESSAGE) as f64 * copies;
    for round in 1..=rounds {
        let now = start + interval * round;
        if churn {
            for (i, n) in nodes.iter_mut().enumerate() {
                if (i + round as usize).is_multiple_of(10) {
                    let pod = format!("pod-{i}-{}", round / 2);
                    if round.is_multiple_of(2) {
                        let _ = n.allocate(&pod, "eth0", now);
                    } else {
                        let _ = n.release(&pod, "eth0", now);
                    }
                }
            }
        }
        // Each router's round; digests (and broadcasts) go to DELIVER of
        // its neighbours and the conversation that follows is counted,
        // scaled to all of them.
        let mut sends: Vec<(usize, Destination, Vec<u8>)> = Vec::new();
        for (i, n) in nodes.iter_mut().enumerate() {
            n.handle_timeout(now).unwrap();
            while let Some((to, bytes)) = n.poll_transmit() {
                sends.push((i, to, bytes));
            }
        }
        let scale = neighbours as f64 / DELIVER.min(neighbours) as f64;
        for (i, to, bytes) in sends {
            let targets: Vec<usize> = match to {
                Destination::Peer(id) => vec![(id.0 - 1) as usize],
                // Only for routers of another ring version: none here.
                Destination::Neighbours { min, max } if !(min..=max).contains(&SPOKEN) => continue,
                _ => (1..=DELIVER.min(neighbours))
                    .map(|k| (i + k) % routers)
                    .collect(),
            };
            let (first, copies) = match to {
                Destination::Peer(_) => (charge(bytes.len(), 1.0), 1.0),
                _ => (charge(bytes.len(), neighbours as f64), scale),
            };
            total += first;
            for j in targets {
                total += converse(&mut nodes, i, j, bytes.clone(), now, copies, &charge);
            }
        }
    }
    total / routers as f64 / (interval * rounds).as_secs_f64()
}

/// Delivers `bytes` from `i` to `j` and the replies back and forth (digest,
/// digest, ring; or digest, bucket hashes, delta, delta back, and a retry);
/// returns the replies' cost.
fn converse(
    nodes: &mut [Allocator<MemStore>],
    i: usize,
    j: usize,
    bytes: Vec<u8>,
    now: Instant,
    copies: f64,
    charge: &impl Fn(usize, f64) -> f64,
) -> f64 {
    let mut cost = 0.0;
    let mut hop = (i, j, bytes);
    for _ in 0..6 {
        let (from, to, msg) = hop;
        let from_id = nodes[from].id();
        let _ = nodes[to].handle_message(from_id, &msg, now);
        let mut next = None;
        while let Some((_, reply)) = nodes[to].poll_transmit() {
            cost += charge(reply.len(), copies);
            if next.is_none()
                && matches!(
                    Message::decode(&reply),
                    Ok(Message::Digest(_)
                        | Message::Ring(_)
                        | Message::DeltaDigest(_)
                        | Message::Buckets(_)
                        | Message::Delta(_))
                )
            {
                next = Some((to, from, reply));
            }
        }
        match next {
            Some(n) => hop = n,
            None => break,
        }
    }
    cost
}

/// Control-link bytes per link per second: one rekey every
/// [`REKEY_EVERY`] (handshake and a key confirmation each way).
fn link_bytes_per_link() -> f64 {
    const SECRET: &[u8] = b"simulated cluster secret, at least 32 bytes";
    let mut pair = LinkPair::new(
        7,
        [link_config(1, SECRET), link_config(2, SECRET)],
        [PipeConfig::INSTANT, PipeConfig::INSTANT],
    );
    pair.settle(10_000);
    let before = pair.written[0] + pair.written[1];
    let (now, wall) = (pair.now, pair.wall());
    pair.links[0].rekey(now, wall).expect("a rekey starts");
    pair.flush();
    pair.settle(10_000);
    for side in 0..2 {
        let confirm = ControlMessage::KeyConfirm { session_index: 1 };
        pair.links[side]
            .send(&confirm)
            .expect("a confirmation goes");
    }
    pair.flush();
    pair.settle(10_000);
    let records = pair.written[0] + pair.written[1] - before;
    // Three handshake messages and two confirmations, each a segment and an ACK.
    let wire = records + 5 * 2 * TCP_HEADERS;
    wire as f64 / 2.0 / REKEY_EVERY.as_secs_f64()
}

#[test]
#[ignore = "minutes in release: cargo test --release --lib sim::control_bench -- --ignored --nocapture"]
fn control_bytes_per_router_on_every_channel_at_idle_and_under_traffic() {
    let sizes: Vec<usize> = std::env::var("WEFT_BENCH_SIZES")
        .unwrap_or_else(|_| "50,200,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let heartbeat = heartbeat_bytes_per_link();
    let link = link_bytes_per_link();
    println!("per link: heartbeats {heartbeat:.1} B/s, control link (rekeys) {link:.1} B/s");
    println!(
        "| routers | neighbours | heartbeats | topology | ring idle | ring busy | rekeys | idle B/s/router | busy B/s/router | idle per peer |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for routers in sizes {
        let neighbours = (routers - 1).min(CAP);
        let hb = heartbeat * neighbours as f64;
        let lk = link * neighbours as f64;
        let topo = topology_bytes_per_router(routers);
        let ring_idle = ring_bytes_per_router(routers, false);
        let ring_busy = ring_bytes_per_router(routers, true);
        let idle = hb + topo + ring_idle + lk;
        let busy = hb + topo + ring_busy + lk;
        println!(
            "| {routers} | {neighbours} | {hb:.0} | {topo:.0} | {ring_idle:.0} | {ring_busy:.0} | {lk:.0} | {idle:.0} | {busy:.0} | {:.1} |",
            idle / neighbours as f64
        );
        assert!(
            idle / (neighbours as f64) < 100.0,
            "{idle:.0} B/s at {routers}"
        );
    }
}
