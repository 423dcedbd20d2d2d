//! A live identity rotation in a running mesh of 20 routers: every router
//! ends with the new ID and the old one retired, none is ever without a
//! route to the rotated router, and the rotation costs a few entries per
//! link, not a table.
#![allow(clippy::unwrap_used)]

use crate::crypto::Identity;
use crate::gossip::ConnectionMakerConfig;
use crate::id::PeerId;
use crate::sim::gossip::{GossipSim, SimConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::time::Duration;

fn total(v: &[u64]) -> u64 {
    v.iter().sum()
}

/// Routers (other than `r`) with no route to `r` under either ID.
fn unrouted(sim: &GossipSim, r: usize, old: PeerId, new: PeerId) -> Vec<usize> {
    (0..sim.routers.len())
        .filter(|&j| j != r)
        .filter(|&j| {
            let routes = sim.gossip(j).routes();
            routes.route(new).or(routes.route(old)).is_none()
        })
        .collect()
}

#[test]
fn a_live_rotation_in_a_running_mesh_keeps_the_router_routed_and_costs_no_table() {
    let config = SimConfig {
        routers: 20,
        maker: ConnectionMakerConfig {
            // A partial mesh: most routers reach the rotated one over others.
            max_connections: 4,
            ..Default::default()
        },
        record_entries: true,
        ..Default::default()
    };
    let mut sim = GossipSim::new(config, 20);
    sim.run_until_converged(Duration::from_secs(120), Duration::from_secs(1))
        .expect("the mesh did not converge");
    // Let anti-entropy back off, then measure a quiet period.
    sim.run_for(Duration::from_secs(30));
    let quiet = Duration::from_secs(20);
    let (bytes0, frames0) = (total(&sim.bytes_sent), total(&sim.frames_sent));
    sim.run_for(quiet);
    let quiet_bytes = total(&sim.bytes_sent) - bytes0;
    let quiet_frames = total(&sim.frames_sent) - frames0;

    let r = 7;
    let (name, short) = (
        sim.gossip(r).my_entry().name.clone(),
        sim.gossip(r).short_id(),
    );
    let old_id = sim.id(r);
    let two_hops = unrouted(&sim, r, old_id, old_id).is_empty()
        && (0..20).any(|j| {
            sim.gossip(j)
                .routes()
                .route(old_id)
                .is_some_and(|x| x.hops >= 2)
        });
    assert!(
        two_hops,
        "the mesh is not partial: the test would not cover relays"
    );
    assert!(unrouted(&sim, r, old_id, old_id).is_empty());
    let degree = sim.connections_of(r) as u64;
    let table_bytes: u64 = sim
        .gossip(r)
        .peers()
        .filter_map(|e| sim.gossip(r).signed_entry(e.id))
        .map(|s| s.bytes.len() as u64 + 64)
        .sum();

    let (bytes1, frames1) = (total(&sim.bytes_sent), total(&sim.frames_sent));
    let neighbours: Vec<PeerId> = sim.gossip(r).neighbours().map(|(id, _, _)| id).collect();
    sim.entries_sent.clear();
    let fresh = Identity::generate(&mut StdRng::seed_from_u64(777));
    let (old, new) = sim.rotate_identity(r, fresh, 1_796_000_000);
    assert_eq!(old, old_id);
    let end = sim.now + quiet;
    let mut steps = 0u64;
    while sim.now < end && sim.step() {
        steps += 1;
        let lost = unrouted(&sim, r, old, new);
        assert!(
            lost.is_empty(),
            "routers {lost:?} had no route to the rotated router at step {steps}"
        );
    }
    sim.run_for(end.saturating_duration_since(sim.now));
    let rotation_bytes = total(&sim.bytes_sent) - bytes1;
    let rotation_frames = total(&sim.frames_sent) - frames1;

    for j in 0..20 {
        let g = sim.gossip(j);
        let e = g
            .entry(new)
            .unwrap_or_else(|| panic!("router {j} lacks the new ID"));
        assert_eq!((&e.name, e.short_id), (&name, short), "router {j}");
        assert!(g.entry(old).is_none(), "router {j} still holds the old ID");
        if j != r {
            assert_eq!(g.successor_of(old), Some(new), "router {j}");
            assert!(g.routes().route(new).is_some(), "router {j}");
        }
        assert_eq!(sim.routers[j].refused, 0, "router {j} refused entries");
    }
    assert!(sim.converged());
    let extra = rotation_bytes.saturating_sub(quiet_bytes);
    let rotation_entries: u64 = sim.entries_sent.values().sum();
    println!(
        "rotation: {rotation_frames} frames / {rotation_bytes} B / {rotation_entries} entries \
         in {quiet:?} (quiet: {quiet_frames} frames / {quiet_bytes} B); extra {extra} B; \
         one table {table_bytes} B, degree {degree}"
    );
    let sent = |id: &PeerId| sim.entries_sent.get(id).copied().unwrap_or(0);
    let by_neighbour: Vec<u64> = neighbours.iter().map(sent).collect();
    println!(
        "entries sent: new {}, old (tombstone) {}, neighbours {by_neighbour:?}",
        sent(&new),
        sent(&old)
    );
    // What moved is the rotated router (its new entry and its old ID's
    // tombstone) and its neighbours' entries (their link renamed): no
    // other router's entry travelled, as it would in a table resend.
    let others: Vec<(PeerId, u64)> = sim
        .entries_sent
        .iter()
        .filter(|(id, _)| **id != old && **id != new && !neighbours.contains(id))
        .map(|(id, n)| (*id, *n))
        .collect();
    assert_eq!(others, vec![], "entries of uninvolved routers were sent");
    assert!(sim.entries_sent.get(&new).is_some_and(|n| *n >= 19));
}
