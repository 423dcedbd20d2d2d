//! Cluster behaviour of the gossip core, in the simulator.
#![allow(clippy::unwrap_used)]

use super::gossip::{GossipSim, SimConfig};
use super::net::NetConfig;
use crate::gossip::GossipConfig;
use crate::id::ShortId;
use std::time::Duration;

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

#[test]
fn two_routers_ground_to_one_short_id_end_with_different_short_ids_on_every_router() {
    let (a, b) = super::gossip::clashing_identities();
    let (low, high) = if a.id() < b.id() { (a, b) } else { (b, a) };
    let shared = ShortId::preferred(low.id());
    assert_eq!(ShortId::preferred(high.id()), shared);
    let moved_to = |seed: u64| {
        // The two clashing routers are 0 and 1, and neither is a seed, so
        // they meet only through the rest of the mesh.
        let cfg = SimConfig {
            seeds: 2,
            ..config(10)
        };
        let mut identities: Vec<_> = (100..102)
            .map(|s| {
                crate::crypto::Identity::generate(
                    &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(s),
                )
            })
            .collect();
        identities.extend([low.clone(), high.clone()]);
        let mut sim = GossipSim::with_identities(cfg, seed, identities);
        sim.run_until_converged(60 * SECOND, CHECK)
            .unwrap_or_else(|| panic!("seed {seed}"));
        let (low_i, high_i) = (2, 3);
        assert_eq!(sim.id(low_i), low.id());
        let new = sim.gossip(high_i).short_id();
        assert_eq!(
            sim.gossip(low_i).short_id(),
            shared,
            "the lower ID keeps its value"
        );
        assert_ne!(new, shared);
        for i in 0..10 {
            let g = sim.gossip(i);
            assert_eq!(g.entry(low.id()).unwrap().short_id, shared, "router {i}");
            assert_eq!(g.entry(high.id()).unwrap().short_id, new, "router {i}");
            assert!(g.short_id_clashes().is_empty(), "router {i}");
            assert_eq!(g.peer_by_short(new), Some(high.id()));
            let mut shorts: Vec<ShortId> = g.peers().map(|e| e.short_id).collect();
            shorts.sort();
            shorts.dedup();
            assert_eq!(shorts.len(), 10, "router {i}: short IDs unique");
        }
        new
    };
    let first = moved_to(11);
    assert_eq!(first, ShortId::candidate(high.id(), 1));
    assert_eq!(moved_to(11), first, "same seed, same outcome");
    assert_eq!(moved_to(12), first, "derived from the ID, not the run");
}

/// Topology gossip bytes of a 20-router cluster: cold start to convergence,
/// then one idle minute (signed entries: each entry carries 64 bytes of
/// signature and a 1–2 byte length). Run in release:
/// `cargo test --release --lib topology_gossip_bytes -- --ignored --nocapture`
#[test]
#[ignore = "measurement"]
fn topology_gossip_bytes() {
    let mut sim = GossipSim::new(config(20), 5);
    sim.run_until_converged(60 * SECOND, CHECK)
        .expect("converged");
    let cold: u64 = sim.bytes_sent.iter().sum();
    sim.run_for(60 * SECOND);
    let idle = sim.bytes_sent.iter().sum::<u64>() - cold;
    eprintln!(
        "20 routers: cold start {cold} bytes ({} per router), idle minute {idle} bytes ({} per router)",
        cold / 20,
        idle / 20
    );
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
