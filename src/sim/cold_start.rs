//! Issue 16, "Cold starts converge": routers started together, with the
//! real gossip core spreading the topology from a seed list of 3 and the
//! real connection maker dialling, on simulated time; a dial succeeds or
//! fails (at random, seeded) after a simulated round trip.
//!
//! - every router gets every direct connection it wants (up to the cap)
//!   within 60 s; a pair whose dial fails is tried again within 30 s;
//! - a cluster-wide outage (every dial fails) is retried in spread waves,
//!   not in synchronised ones, and the mesh forms soon after it ends.
#![allow(clippy::unwrap_used)]

use super::gossip::{DialRecord, GossipSim, SimConfig};
use crate::gossip::ConnectionMakerConfig;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);
/// How often the harness looks at the connection counts.
const LOOK: Duration = Duration::from_millis(250);

fn config(routers: usize, seeds: usize) -> SimConfig {
    SimConfig {
        routers,
        seeds,
        dial_failure: 0.05,
        record_dials: true,
        check_invariants: false,
        ..SimConfig::default()
    }
}

/// What a router wants: every other router, up to the connection cap.
fn wanted(n: usize) -> usize {
    (n - 1).min(ConnectionMakerConfig::default().max_connections)
}

/// Runs until every router holds the connections it wants or `limit`
/// passes; returns, per router, when it first did (from `begin`).
fn run_to_mesh(sim: &mut GossipSim, limit: Duration) -> Vec<Option<Duration>> {
    let n = sim.routers.len();
    let begin = sim.now;
    let mut done: Vec<Option<Duration>> = vec![None; n];
    loop {
        for (i, d) in done.iter_mut().enumerate() {
            if d.is_none() && sim.connections_of(i) >= wanted(n) {
                *d = Some(sim.now - begin);
            }
        }
        if done.iter().all(Option::is_some) || sim.now - begin >= limit {
            return done;
        }
        sim.run_for(LOOK);
    }
}

/// Prints and returns the routers' times to their mesh, sorted.
fn report(label: &str, sim: &GossipSim, done: &[Option<Duration>]) -> Vec<Duration> {
    let mut times: Vec<Duration> = done.iter().flatten().copied().collect();
    times.sort();
    let failed = sim.dials.iter().filter(|d| !d.ok).count();
    eprintln!(
        "{label}: {} of {} routers at their mesh ({} connections each); time p50 {:?}, max {:?}; {} dials ({} failed, {:.1} per router); {} links; seed {:#x}",
        times.len(),
        done.len(),
        wanted(done.len()),
        times.get(times.len() / 2),
        times.last(),
        sim.dials.len(),
        failed,
        sim.dials.len() as f64 / done.len() as f64,
        sim.link_count(),
        sim.seed,
    );
    times
}

/// For every failed dial of a pair not yet connected, the wait until the
/// pair's next dial (either end), or `None` when there was none.
fn retry_waits(dials: &[DialRecord]) -> Vec<(DialRecord, Option<Duration>)> {
    let mut by_pair: HashMap<(usize, usize), Vec<DialRecord>> = HashMap::new();
    for d in dials {
        if let Some(to) = d.to {
            by_pair
                .entry((d.from.min(to), d.from.max(to)))
                .or_default()
                .push(*d);
        }
    }
    let mut waits = Vec::new();
    for records in by_pair.values() {
        for (k, d) in records.iter().enumerate() {
            let connected_before = records[..k].iter().any(|e| e.ok);
            if d.ok || connected_before {
                continue;
            }
            let next = records[k + 1..].first().map(|e| e.at - d.at);
            waits.push((*d, next));
        }
    }
    waits
}

#[test]
fn two_hundred_routers_with_five_percent_of_dials_failing_form_the_full_mesh_within_sixty_seconds()
{
    let seed = 0x5eed_0016;
    let n = 200;
    let mut sim = GossipSim::new(config(n, 3), seed);
    let done = run_to_mesh(&mut sim, 60 * SECOND);
    let times = report("200 routers, 5 % of dials lost", &sim, &done);
    assert_eq!(
        times.len(),
        n,
        "routers short of the full mesh after 60 s (seed {seed:#x})"
    );
    assert_eq!(sim.link_count(), n * (n - 1) / 2);
    // A pair whose dial failed is tried again within 30 s (the outcome
    // is recorded a round trip after the dial: allow that much).
    let waits = retry_waits(&sim.dials);
    assert!(waits.len() > 100, "too few failures to show anything");
    let slowest = waits.iter().filter_map(|(_, w)| *w).max().unwrap();
    eprintln!(
        "{} failed dials of unconnected pairs, each tried again after at most {slowest:?}",
        waits.len()
    );
    for (d, wait) in &waits {
        assert!(
            wait.is_some_and(|w| w <= 30 * SECOND + 2 * sim.net_max_delay()),
            "router {} -> {:?} failed at {:?} and was next tried after {wait:?} (seed {seed:#x})",
            d.from,
            d.to,
            d.at - sim.start,
        );
    }
}

/// Every dial fails for 90 s (the underlay of a restarted cluster is
/// down): the routers keep trying their seeds at least every 30 s, the
/// retries of the whole cluster are spread in time rather than arriving
/// in synchronised waves, and once dials succeed again the full mesh
/// forms within 30 s (the longest wait) plus a few seconds.
#[test]
fn a_cluster_wide_outage_is_retried_in_spread_waves_and_the_mesh_forms_soon_after() {
    let seed = 0x5eed_0116;
    let (n, seeds) = (100, 3);
    let mut sim = GossipSim::new(config(n, seeds), seed);
    sim.set_dial_failure(1.0);
    let outage = 90 * SECOND;
    sim.run_for(outage);
    let start = sim.start;
    let slack = 2 * sim.net_max_delay();
    // Each router retries each seed at least every 30 s.
    let mut last: HashMap<(usize, Option<usize>), Instant> = HashMap::new();
    for d in &sim.dials {
        assert!(!d.ok);
        if let Some(prev) = last.insert((d.from, d.to), d.at) {
            assert!(
                d.at - prev <= 30 * SECOND + slack,
                "router {} waited {:?} between dials of seed {:?} (seed {seed:#x})",
                d.from,
                d.at - prev,
                d.to
            );
        }
    }
    // Spread: once the first few retries are over, no 100 ms window holds
    // more than a small share of the cluster's dials (without jitter,
    // every router's k-th retry of a seed falls in one instant: n of them).
    let mut buckets: HashMap<u128, usize> = HashMap::new();
    for d in sim.dials.iter().filter(|d| d.at - start >= 20 * SECOND) {
        *buckets.entry((d.at - start).as_millis() / 100).or_default() += 1;
    }
    let total: usize = buckets.values().sum();
    let busiest = buckets.values().copied().max().unwrap();
    eprintln!(
        "outage: {} dials in 90 s; from 20 s on, {total} dials over {} of 700 windows of 100 ms, the busiest {busiest} (a synchronised wave would be {})",
        sim.dials.len(),
        buckets.len(),
        n * seeds
    );
    assert!(total >= n * seeds * 2, "too few retries: {total}");
    assert!(
        busiest * 10 <= n * seeds,
        "a 100 ms window holds {busiest} of {} routers' seed dials: retries synchronised (seed {seed:#x})",
        n * seeds
    );
    // Recovery: dials work again (5 % still fail).
    sim.set_dial_failure(0.05);
    let done = run_to_mesh(&mut sim, 60 * SECOND);
    let times = report("100 routers after a 90 s outage", &sim, &done);
    assert_eq!(times.len(), n, "routers short of the mesh (seed {seed:#x})");
    assert!(
        *times.last().unwrap() <= 40 * SECOND,
        "the mesh took {:?} after the outage (seed {seed:#x})",
        times.last()
    );
}

/// 1,000 routers, 3 seeds, 5 % of dials failing: every router holds the
/// connections it wants (the cap, 200) within 60 s.
#[test]
#[ignore = "minutes: cargo test --release --lib sim::cold_start::a_thousand -- --ignored --nocapture"]
fn a_thousand_routers_with_five_percent_of_dials_failing_reach_the_connection_cap_within_sixty_seconds()
 {
    let seed = 0x5eed_1016;
    let n = 1000;
    let mut sim = GossipSim::new(config(n, 3), seed);
    let wall = std::time::Instant::now();
    let done = run_to_mesh(&mut sim, 60 * SECOND);
    let times = report("1,000 routers, 5 % of dials lost", &sim, &done);
    eprintln!("wall time {:?}, {} steps", wall.elapsed(), sim.steps);
    assert_eq!(
        times.len(),
        n,
        "routers short of {} connections after 60 s (seed {seed:#x})",
        wanted(n)
    );
}
