//! Cluster behaviour of the gossip core, in the simulator.
#![allow(clippy::unwrap_used)]

use super::gossip::{GossipSim, SimConfig};
use super::net::NetConfig;
use crate::gossip::message::{Message, Update};
use crate::gossip::topology::{ConnectionInfo, MAX_CONNECTIONS, TopologyEntry};
use crate::gossip::{Gossip, GossipConfig, GossipEvent, PeerInfo, RefusedReason};
use crate::id::{PeerId, ShortId};
use proptest::prelude::*;
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);
const CHECK: Duration = Duration::from_millis(100);

fn config(routers: usize) -> SimConfig {
    SimConfig {
        routers,
        ..SimConfig::default()
    }
}

fn rounds(sim: &GossipSim, d: Duration) -> f64 {
    d.as_secs_f64() / sim_interval(sim).as_secs_f64()
}

fn sim_interval(_sim: &GossipSim) -> Duration {
    GossipConfig::default().anti_entropy_interval
}

#[test]
fn a_small_cluster_forms_a_full_mesh_and_converges() {
    let mut sim = GossipSim::new(config(10), 1);
    let took = sim
        .run_until_converged(60 * SECOND, CHECK)
        .expect("converged");
    sim.run_for(5 * SECOND);
    assert!(sim.converged());
    assert_eq!(sim.link_count(), 45, "full mesh");
    for i in 0..10 {
        assert_eq!(sim.gossip(i).routes().len(), 9);
        for j in 0..10 {
            if i != j {
                assert_eq!(sim.gossip(i).routes().next_hop(sim.id(j)), Some(sim.id(j)));
            }
        }
    }
    eprintln!("10 routers converged in {took:?}");
}

#[test]
fn two_hundred_routers_with_three_seeds_and_ten_percent_loss_converge_in_bounded_rounds() {
    let seed = 0x5eed_0200;
    let mut cfg = config(200);
    cfg.net = NetConfig {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(80),
        loss: 0.10,
        duplicate: 0.01,
    };
    let mut sim = GossipSim::new(cfg, seed);
    let took = sim.run_until_converged(120 * SECOND, CHECK);
    let took = took.unwrap_or_else(|| panic!("no convergence (seed {seed})"));
    let r = rounds(&sim, took);
    eprintln!(
        "200 routers: converged after {r:.1} rounds, {} links, {} steps",
        sim.link_count(),
        sim.steps
    );
    assert!(r <= 40.0, "took {r} rounds (seed {seed})");
    // Every router knows every other, at the same versions.
    let summary = sim.gossip(0).summary();
    assert_eq!(summary.0, 200);
    for i in 0..200 {
        assert_eq!(sim.gossip(i).summary(), summary);
    }
    // Short IDs are unique once converged.
    let mut shorts: Vec<ShortId> = sim.gossip(0).peers().map(|e| e.short_id).collect();
    shorts.sort();
    shorts.dedup();
    assert_eq!(shorts.len(), 200);
}

/// Issue 16, cold starts: routers started together with 5 % of dials
/// lost at random form the full mesh they want within 60 s (measured: 3 s
/// of virtual time, 32 s of wall time in release). 200 routers want 199
/// connections each (under the cap); 1,000 with the default cap of 200
/// would be satisfied by inbound connections alone, which would show
/// nothing. With 5 % independent losses a pair rarely fails often enough
/// in a row to reach a long back-off, so this passes with the old 6-minute
/// cap too: the 30 s cadence itself is the connection maker's unit test.
#[test]
#[ignore = "minutes in debug: cargo test --release --lib sim::tests::two_hundred_routers_with_five -- --ignored"]
fn two_hundred_routers_with_five_percent_of_dials_failing_form_the_full_mesh_in_sixty_seconds() {
    let seed = 0x5eed_0016;
    let n = 200;
    let mut cfg = config(n);
    cfg.dial_failure = 0.05;
    cfg.check_invariants = false;
    let mut sim = GossipSim::new(cfg, seed);
    let mut elapsed = Duration::ZERO;
    let short = |sim: &GossipSim| (0..n).filter(|i| sim.connections_of(*i) < n - 1).count();
    while short(&sim) > 0 && elapsed < 60 * SECOND {
        sim.run_for(SECOND);
        elapsed += SECOND;
    }
    eprintln!(
        "{n} routers, 5 % of dials lost: full mesh after {elapsed:?} ({} steps)",
        sim.steps
    );
    assert_eq!(
        short(&sim),
        0,
        "routers short of the full mesh after 60 s (seed {seed})"
    );
    assert_eq!(sim.link_count(), n * (n - 1) / 2);
}

#[test]
fn a_partition_that_heals_converges_again() {
    let seed = 7;
    let mut sim = GossipSim::new(config(20), seed);
    sim.run_until_converged(60 * SECOND, CHECK)
        .expect("first convergence");
    let (left, right): (Vec<usize>, Vec<usize>) = (0..20).partition(|i| i % 2 == 0);
    sim.partition(&[left.clone(), right.clone()]);
    sim.run_for(5 * SECOND);
    // Each side converges on its own view (the other side is not yet reaped).
    for &i in &left {
        for &j in &right {
            assert_eq!(sim.gossip(i).routes().next_hop(sim.id(j)), None);
        }
    }
    sim.heal();
    let took = sim
        .run_until_converged(120 * SECOND, CHECK)
        .unwrap_or_else(|| panic!("seed {seed}"));
    eprintln!("healed partition converged in {took:?}");
    assert_eq!(sim.gossip(0).summary().0, 20);
    assert_eq!(sim.gossip(0).routes().len(), 19);
}

#[test]
fn a_router_that_dies_disappears_from_every_topology_and_route() {
    let mut sim = GossipSim::new(config(12), 3);
    sim.run_until_converged(60 * SECOND, CHECK)
        .expect("converged");
    let dead = 5;
    let dead_id = sim.id(dead);
    sim.kill(dead);
    sim.run_for(2 * SECOND);
    for i in (0..12).filter(|i| *i != dead) {
        assert_eq!(
            sim.gossip(i).routes().next_hop(dead_id),
            None,
            "router {i} still routes"
        );
    }
    let gc = GossipConfig::default().gc_timeout;
    let took = sim
        .run_until_converged(gc + 30 * SECOND, CHECK)
        .expect("dead router reaped");
    for i in (0..12).filter(|i| *i != dead) {
        assert!(sim.gossip(i).entry(dead_id).is_none());
    }
    eprintln!("dead router reaped after {took:?}");
}

#[test]
fn a_restarted_router_takes_a_version_above_its_old_entry() {
    let mut sim = GossipSim::new(config(8), 4);
    sim.run_until_converged(60 * SECOND, CHECK)
        .expect("converged");
    let old = sim.gossip(2).my_entry().version;
    sim.restart(2);
    sim.run_until_converged(60 * SECOND, CHECK)
        .expect("reconverged");
    assert!(sim.gossip(2).my_entry().version > old);
    assert_eq!(sim.gossip(0).summary().0, 8);
}

#[test]
fn routes_take_the_detour_while_an_edge_is_not_established_and_return() {
    let mut sim = GossipSim::new(config(4), 5);
    sim.run_until_converged(60 * SECOND, CHECK)
        .expect("converged");
    let (a, b) = (0, 1);
    assert_eq!(sim.gossip(a).routes().next_hop(sim.id(b)), Some(sim.id(b)));
    sim.set_udp_blocked(a, b, true);
    sim.run_for(2 * SECOND);
    let route = sim.gossip(a).routes().route(sim.id(b)).expect("a detour");
    assert_ne!(route.next_hop, sim.id(b));
    assert_eq!(route.hops, 2);
    sim.set_udp_blocked(a, b, false);
    sim.run_for(2 * SECOND);
    let route = sim.gossip(a).routes().route(sim.id(b)).expect("direct");
    assert_eq!((route.next_hop, route.hops), (sim.id(b), 1));
}

#[test]
fn restarts_partitions_loss_and_duplication_together_still_converge() {
    for seed in 100..103 {
        let mut cfg = config(30);
        cfg.net.loss = 0.2;
        cfg.net.duplicate = 0.1;
        let mut sim = GossipSim::new(cfg, seed);
        sim.run_for(3 * SECOND);
        sim.partition(&[(0..10).collect(), (10..30).collect()]);
        sim.restart(12);
        sim.run_for(4 * SECOND);
        sim.restart(3);
        sim.heal();
        sim.run_until_converged(120 * SECOND, CHECK)
            .unwrap_or_else(|| panic!("seed {seed}"));
    }
}

// ---- refused entries and hostile bytes --------------------------------

fn info(key: u8, name: &str) -> PeerInfo {
    let public_key = [key; 32];
    PeerInfo {
        id: PeerId::from_public_key(&public_key),
        name: name.into(),
        public_key,
        addresses: vec!["192.0.2.1:6783".parse().unwrap()],
    }
}

fn entry_of(p: &PeerInfo, version: u64) -> TopologyEntry {
    TopologyEntry {
        id: p.id,
        version,
        name: p.name.clone(),
        public_key: p.public_key,
        addresses: p.addresses.clone(),
        short_id: ShortId::preferred(p.id),
        mtu: 1420,
        connections: vec![],
    }
}

/// A core with one neighbour, drained.
fn core_with_neighbour() -> (Gossip, PeerInfo, Instant) {
    let now = Instant::now();
    let mut g = Gossip::new(info(1, "me"), GossipConfig::default(), 9, now);
    let n = info(2, "neighbour");
    g.connection_up(n.clone(), true, now);
    while g.poll_transmit().is_some() {}
    while g.poll_event().is_some() {}
    (g, n, now)
}

fn refusals(g: &mut Gossip) -> Vec<RefusedReason> {
    let mut out = Vec::new();
    while let Some(e) = g.poll_event() {
        if let GossipEvent::EntryRefused { reason, .. } = e {
            out.push(reason);
        }
    }
    out
}

fn update(entries: Vec<TopologyEntry>) -> Vec<u8> {
    Message::Update(Update { entries }).encode()
}

#[test]
fn refused_entries_change_nothing() {
    let (mut g, n, now) = core_with_neighbour();
    let before = g.summary();
    // Another key under my own name.
    let clash = entry_of(&info(3, "me"), 1);
    // Oversized: too many connections, addresses, too long a name.
    let mut many = entry_of(&info(4, "many"), 1);
    many.connections = (0..=MAX_CONNECTIONS as u64)
        .map(|i| ConnectionInfo {
            peer: PeerId(i),
            established: true,
            outbound: true,
        })
        .collect();
    let mut addrs = entry_of(&info(5, "addrs"), 1);
    addrs.addresses = vec!["192.0.2.9:1".parse().unwrap(); 17];
    let long = entry_of(&info(6, &"n".repeat(300)), 1);
    // An id that is not its key's.
    let mut forged = entry_of(&info(7, "forged"), 1);
    forged.id = n.id;
    g.handle_message(n.id, &update(vec![clash, many, addrs, long, forged]), now)
        .unwrap();
    assert_eq!(g.summary(), before);
    let reasons = refusals(&mut g);
    assert_eq!(reasons.len(), 5);
    assert!(matches!(reasons[0], RefusedReason::NameClash { .. }));
    assert!(matches!(reasons[1], RefusedReason::TooManyConnections(_)));
    assert!(matches!(reasons[2], RefusedReason::TooManyAddresses(_)));
    assert!(matches!(reasons[3], RefusedReason::NameTooLong(_)));
    assert_eq!(reasons[4], RefusedReason::IdMismatch);
}

#[test]
fn a_second_key_under_a_known_name_is_refused_while_the_first_is_known() {
    let (mut g, n, now) = core_with_neighbour();
    g.handle_message(n.id, &update(vec![entry_of(&info(3, "alice"), 1)]), now)
        .unwrap();
    let before = g.summary();
    g.handle_message(n.id, &update(vec![entry_of(&info(4, "alice"), 9)]), now)
        .unwrap();
    assert_eq!(g.summary(), before);
    assert_eq!(g.name_holder("alice"), Some(info(3, "alice").id));
}

#[test]
fn an_entry_changes_only_to_a_newer_version() {
    let (mut g, n, now) = core_with_neighbour();
    let p = info(3, "p");
    let mut e = entry_of(&p, 5);
    g.handle_message(n.id, &update(vec![e.clone()]), now)
        .unwrap();
    e.mtu = 1300;
    g.handle_message(n.id, &update(vec![e.clone()]), now)
        .unwrap();
    assert_eq!(
        g.entry(p.id).unwrap().mtu,
        1420,
        "same version, other content: ignored"
    );
    e.version = 4;
    g.handle_message(n.id, &update(vec![e.clone()]), now)
        .unwrap();
    assert_eq!(g.entry(p.id).unwrap().version, 5);
    e.version = 6;
    g.handle_message(n.id, &update(vec![e]), now).unwrap();
    assert_eq!(g.entry(p.id).unwrap().mtu, 1300);
    assert_eq!(g.cluster_mtu(), 1300);
}

#[test]
fn nobody_else_can_change_my_entry() {
    let (mut g, n, now) = core_with_neighbour();
    let mine = g.my_entry().clone();
    let mut fake = mine.clone();
    fake.version = mine.version + 10;
    fake.mtu = 600;
    fake.addresses.clear();
    g.handle_message(n.id, &update(vec![fake]), now).unwrap();
    let after = g.my_entry();
    assert_eq!(after.mtu, mine.mtu);
    assert_eq!(after.addresses, mine.addresses);
    assert!(after.version > mine.version + 10, "jumps above what it saw");
}

#[test]
fn frames_from_a_router_without_a_connection_are_rejected() {
    let (mut g, _n, now) = core_with_neighbour();
    let stranger = info(9, "stranger");
    let r = g.handle_message(stranger.id, &update(vec![entry_of(&stranger, 1)]), now);
    assert!(r.is_err());
    assert!(g.entry(stranger.id).is_none());
}

#[test]
fn on_a_short_id_clash_the_lower_id_keeps_its_value() {
    // Find two keys whose preferred short IDs collide.
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0u32..)
        .find_map(|i| {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            let id = PeerId::from_public_key(&key);
            seen.insert(ShortId::preferred(id), key)
                .map(|other| (other, key))
        })
        .unwrap();
    let now = Instant::now();
    let mk = |key: [u8; 32], name: &str| PeerInfo {
        id: PeerId::from_public_key(&key),
        name: name.into(),
        public_key: key,
        addresses: vec![],
    };
    let (pa, pb) = (mk(a, "a"), mk(b, "b"));
    let (low, high) = if pa.id < pb.id { (pa, pb) } else { (pb, pa) };
    let mut g_low = Gossip::new(low.clone(), GossipConfig::default(), 1, now);
    let mut g_high = Gossip::new(high.clone(), GossipConfig::default(), 2, now);
    let shared = g_low.short_id();
    assert_eq!(shared, g_high.short_id());
    g_low.connection_up(high.clone(), true, now);
    g_high.connection_up(low.clone(), false, now);
    // Exchange, letting rate-limited pushes run.
    let mut now = now;
    for _ in 0..20 {
        now += SECOND;
        g_low.handle_timeout(now);
        g_high.handle_timeout(now);
        while let Some((_, bytes)) = g_low.poll_transmit() {
            g_high.handle_message(low.id, &bytes, now).unwrap();
        }
        while let Some((_, bytes)) = g_high.poll_transmit() {
            g_low.handle_message(high.id, &bytes, now).unwrap();
        }
    }
    assert_eq!(g_low.short_id(), shared);
    assert_ne!(g_high.short_id(), shared);
    assert_eq!(g_low.entry(high.id).unwrap().short_id, g_high.short_id());
    assert_eq!(g_high.peer_by_short(shared), Some(low.id));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic_and_change_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (mut g, n, now) = core_with_neighbour();
        let before = g.summary();
        let _ = g.handle_message(n.id, &bytes, now);
        prop_assert_eq!(g.summary(), before);
    }

    #[test]
    fn random_bodies_behind_a_valid_envelope_never_panic(
        kind in 1u8..=4,
        body in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let (mut g, n, now) = core_with_neighbour();
        let before = g.summary();
        let mut frame = vec![1, 1, kind];
        frame.extend_from_slice(&body);
        let _ = g.handle_message(n.id, &frame, now);
        // Random bodies cannot carry an entry whose id derives from its key.
        prop_assert_eq!(g.summary(), before);
    }
}

/// The benchmark of DESIGN.md invariant 2: rounds to converge from a cold
/// start (3 seeds, connection cap 200) and steady-state gossip bytes per
/// router per minute. Run in release:
/// `cargo test --release --lib gossip_scaling_benchmark -- --ignored --nocapture`
/// (`WEFT_BENCH_SIZES=50,100` to pick sizes).
#[test]
#[ignore]
fn gossip_scaling_benchmark() {
    let sizes: Vec<usize> = std::env::var("WEFT_BENCH_SIZES")
        .unwrap_or_else(|_| "50,100,200,500,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    eprintln!(
        "| routers | rounds to converge | links | steady bytes/router/min | per router per peer | wall s |"
    );
    eprintln!("|---|---|---|---|---|---|");
    for n in sizes {
        let wall = std::time::Instant::now();
        let mut cfg = config(n);
        if let Some(cap) = std::env::var("WEFT_BENCH_CAP")
            .ok()
            .and_then(|c| c.parse().ok())
        {
            cfg.maker.max_connections = cap;
        }
        cfg.check_invariants = false;
        cfg.max_steps = u64::MAX;
        let seed = 0xbe7c + n as u64;
        let mut sim = GossipSim::new(cfg, seed);
        let took = sim
            .run_until_converged(600 * SECOND, CHECK)
            .unwrap_or_else(|| panic!("n={n} seed {seed}"));
        let r = rounds(&sim, took);
        // Let connection setup finish, then measure a quiet minute.
        sim.run_for(20 * SECOND);
        let before: u64 = sim.bytes_sent.iter().sum();
        sim.run_for(60 * SECOND);
        let after: u64 = sim.bytes_sent.iter().sum();
        let per_router = (after - before) as f64 / n as f64;
        eprintln!(
            "| {n} | {r:.1} | {} | {per_router:.0} | {:.1} | {:.1} |",
            sim.link_count(),
            per_router / n as f64,
            wall.elapsed().as_secs_f64()
        );
    }
}
