//! Scenario tests of the IPAM core over a tiny in-memory network: the ring's
//! start, allocation, donation, rings that meet, hostile input. Lifecycle
//! scenarios (restarts, reclaim, leave) are in `tests_lifecycle.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::id::PeerId;
use crate::ipam::signed::TestCrypto;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub(crate) struct Net {
    pub(crate) nodes: BTreeMap<PeerId, Allocator<MemStore>>,
    pub(crate) now: Instant,
    pub(crate) events: Vec<(PeerId, Event)>,
    pub(crate) errors: Vec<(PeerId, String)>,
}

pub(super) fn range(cidr: &str) -> AddrRange {
    AddrRange::parse(cidr).unwrap()
}

pub(super) fn config(me: u64, cidr: &str, init: Init) -> Config {
    let mut cfg = Config::new(PeerId(me), range(cidr), init, TestCrypto::boxed(PeerId(me)));
    cfg.gossip_interval = Duration::from_secs(1);
    cfg.convergence_bound = Duration::from_secs(5);
    cfg.request_timeout = Duration::from_secs(1);
    cfg.donation_interval = Duration::from_secs(2);
    cfg
}

pub(super) fn voters(ids: &[u64]) -> Init {
    Init::Voters(ids.iter().map(|i| PeerId(*i)).collect())
}

impl Net {
    pub(crate) fn new() -> Self {
        Self {
            nodes: BTreeMap::new(),
            now: Instant::now(),
            events: vec![],
            errors: vec![],
        }
    }

    pub(super) fn add(&mut self, cfg: Config) {
        let id = cfg.me;
        let mut node = Allocator::new(cfg, MemStore::default(), &[], self.now).unwrap();
        node.learn_test_keys(64);
        self.nodes.insert(id, node);
    }

    /// Delivers every queued message (broadcasts to all others) until quiet.
    pub(super) fn pump(&mut self) {
        for _ in 0..1000 {
            let mut queue = Vec::new();
            for (id, node) in self.nodes.iter_mut() {
                while let Some((to, bytes)) = node.poll_transmit() {
                    queue.push((*id, to, bytes));
                }
                while let Some(e) = node.poll_event() {
                    self.events.push((*id, e));
                }
            }
            if queue.is_empty() {
                return;
            }
            for (from, to, bytes) in queue {
                let targets: Vec<PeerId> = match to {
                    Destination::Peer(p) => vec![p],
                    Destination::Broadcast => {
                        self.nodes.keys().copied().filter(|p| *p != from).collect()
                    }
                    // Every node here speaks digests.
                    Destination::Neighbours { min, max }
                        if (min..=max).contains(&message::RING_DIGEST_VERSION) =>
                    {
                        self.nodes.keys().copied().filter(|p| *p != from).collect()
                    }
                    Destination::Neighbours { .. } => vec![],
                    // Every node here speaks the newest version.
                    Destination::PeerSpeaking { peer, .. } => vec![peer],
                };
                for t in targets {
                    if let Some(node) = self.nodes.get_mut(&t)
                        && let Err(e) = node.handle_message(from, &bytes, self.now)
                    {
                        self.errors.push((t, e.to_string()));
                    }
                }
            }
        }
        panic!("network did not go quiet");
    }

    pub(super) fn advance(&mut self, by: Duration) {
        self.now += by;
        for node in self.nodes.values_mut() {
            node.handle_timeout(self.now).unwrap();
        }
        self.pump();
    }

    pub(super) fn settle(&mut self) {
        for _ in 0..5 {
            self.advance(Duration::from_secs(1));
        }
    }

    pub(super) fn get(&self, id: u64) -> &Allocator<MemStore> {
        &self.nodes[&PeerId(id)]
    }

    pub(super) fn node(&mut self, id: u64) -> &mut Allocator<MemStore> {
        self.nodes.get_mut(&PeerId(id)).unwrap()
    }
}

pub(super) fn three(cidr: &str) -> Net {
    let mut net = Net::new();
    for i in 1..=3 {
        net.add(config(i, cidr, voters(&[1, 2, 3])));
    }
    net.settle();
    net
}

/// Allocates on `id`, pumping the network and advancing time while it says "try again".
pub(super) fn allocate_retrying(net: &mut Net, id: u64, cid: &str) -> IpAddr {
    for _ in 0..50 {
        let now = net.now;
        match net.node(id).allocate(cid, "eth0", now) {
            Ok(a) => return a,
            Err(AllocError::TryAgain(_)) => net.advance(Duration::from_millis(500)),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("allocation never succeeded");
}

#[test]
fn three_routers_from_empty_state_agree_on_one_ring() {
    let net = three("10.32.0.0/12");
    let rings: Vec<&Ring> = net.nodes.values().map(|n| n.ring().unwrap()).collect();
    assert!(rings.windows(2).all(|w| w[0].entries() == w[1].entries()));
    assert!(
        rings
            .windows(2)
            .all(|w| w[0].genesis_id() == w[1].genesis_id())
    );
    let mut total = 0;
    for n in net.nodes.values() {
        assert_eq!(n.phase(), Phase::Ready);
        total += n.status(net.now).owned_addresses;
    }
    assert_eq!(total, 1 << 20);
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

#[test]
fn a_lone_voter_of_three_waits_and_says_how_many_agree() {
    let mut net = Net::new();
    net.add(config(1, "10.32.0.0/12", voters(&[1, 2, 3])));
    net.settle();
    let now = net.now;
    let n = net.node(1);
    assert!(matches!(
        n.phase(),
        Phase::WaitingForVoters {
            agreed: 1,
            quorum: 2,
            ..
        }
    ));
    let err = n.allocate("c1", "eth0", now).unwrap_err();
    assert_eq!(err.cni_code(), 11, "{err}");
}

#[test]
fn two_of_three_voters_are_a_quorum_and_the_third_learns_the_same_ring() {
    let mut net = Net::new();
    net.add(config(1, "10.32.0.0/12", voters(&[1, 2, 3])));
    net.add(config(2, "10.32.0.0/12", voters(&[1, 2, 3])));
    net.settle();
    assert!(net.node(1).is_ready() && net.node(2).is_ready());
    net.add(config(3, "10.32.0.0/12", voters(&[1, 2, 3])));
    net.settle();
    assert_eq!(net.get(3).ring(), net.get(1).ring());
}

#[test]
fn a_voter_with_a_different_voter_set_waits_and_says_so() {
    let mut net = Net::new();
    net.add(config(1, "10.32.0.0/12", voters(&[1, 2])));
    net.add(config(2, "10.32.0.0/12", voters(&[1, 2, 3])));
    net.settle();
    for id in [1, 2] {
        let phase = net.node(id).phase();
        assert!(
            matches!(&phase, Phase::WaitingForVoters { mismatched, .. } if mismatched.len() == 1),
            "{phase:?}"
        );
    }
    assert!(
        net.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Alarm(Alarm::VoterSetMismatch { .. })))
    );
}

#[test]
fn non_voters_and_observers_wait_and_learn() {
    let mut net = Net::new();
    net.add(config(9, "10.32.0.0/12", Init::Observer));
    net.add(config(8, "10.32.0.0/12", voters(&[1, 2, 3])));
    net.settle();
    assert_eq!(net.node(9).phase(), Phase::WaitingForRing);
    assert_eq!(net.node(8).phase(), Phase::WaitingForRing);
    for i in 1..=3 {
        net.add(config(i, "10.32.0.0/12", voters(&[1, 2, 3])));
    }
    net.settle();
    assert!(net.node(9).is_ready() && net.node(8).is_ready());
    assert!(net.node(9).ring().unwrap().ranges_of(PeerId(9)).is_empty());
}

#[test]
fn seed_mode_splits_by_the_named_routers_without_a_vote() {
    let mut net = Net::new();
    let seed = Init::Seed([PeerId(1), PeerId(2)].into());
    net.add(config(1, "10.32.0.0/24", seed.clone()));
    net.add(config(2, "10.32.0.0/24", seed));
    assert!(net.node(1).is_ready() && net.node(2).is_ready());
    assert_eq!(
        net.get(1).ring().unwrap().entries(),
        net.get(2).ring().unwrap().entries()
    );
    let now = net.now;
    assert_eq!(
        net.node(1).allocate("c1", "eth0", now).unwrap().to_string(),
        "10.32.0.1"
    );
    assert_eq!(
        net.node(2).allocate("c1", "eth0", now).unwrap().to_string(),
        "10.32.0.128"
    );
}

#[test]
fn a_thousand_allocations_over_three_routers_are_distinct_and_idempotent() {
    let mut net = three("10.32.0.0/12");
    let mut seen = BTreeSet::new();
    for i in 0..1000u64 {
        let id = i % 3 + 1;
        let cid = format!("pod-{i}");
        let now = net.now;
        let a = net.node(id).allocate(&cid, "eth0", now).unwrap();
        assert_eq!(
            net.node(id).allocate(&cid, "eth0", now).unwrap(),
            a,
            "retry gives the same answer"
        );
        assert_eq!(net.node(id).lookup(&cid, "eth0"), Some(a));
        assert_eq!(net.node(id).owner_of(a), Some(PeerId(id)));
        assert!(seen.insert(a), "{a} allocated twice");
    }
    assert_eq!(seen.len(), 1000);
}

#[test]
fn exhaustion_triggers_a_donation_and_allocation_continues() {
    let mut net = three("10.32.0.0/24");
    let mut seen = BTreeSet::new();
    for i in 0..150 {
        let a = allocate_retrying(&mut net, 1, &format!("pod-{i}"));
        assert!(seen.insert(a));
    }
    assert!(
        net.events
            .iter()
            .any(|(id, e)| *id == PeerId(1) && matches!(e, Event::RangeReceived { .. }))
    );
    assert!(
        net.events
            .iter()
            .any(|(_, e)| matches!(e, Event::RangeDonated { to: PeerId(1), .. }))
    );
    // Every router's view agrees on who owns what, and no one else owns router 1's pods.
    net.settle();
    for a in &seen {
        for n in net.nodes.values() {
            assert_eq!(n.owner_of(*a), Some(PeerId(1)));
        }
    }
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

#[test]
fn a_donation_between_two_routers_tells_the_third_that_owners_changed() {
    let mut net = three("10.32.0.0/24");
    net.events.clear();
    for i in 0..150 {
        allocate_retrying(&mut net, 1, &format!("pod-{i}"));
    }
    let donor = net
        .events
        .iter()
        .find_map(|(id, e)| matches!(e, Event::RangeDonated { to: PeerId(1), .. }).then_some(*id))
        .expect("router 1 got a donation");
    let third = if donor == PeerId(2) {
        PeerId(3)
    } else {
        PeerId(2)
    };
    assert!(
        net.events
            .iter()
            .any(|(id, e)| *id == third && *e == Event::OwnersChanged),
        "{third} merged a donation from {donor} to router 1 without saying owners changed"
    );
}

#[test]
fn two_separately_initialised_rings_refuse_to_merge_with_a_clear_error() {
    let mut net = Net::new();
    net.add(config(1, "10.32.0.0/16", Init::Seed([PeerId(1)].into())));
    net.add(config(2, "10.32.0.0/16", Init::Seed([PeerId(2)].into())));
    let now = net.now;
    net.node(1).allocate("a", "eth0", now).unwrap();
    net.node(2).allocate("b", "eth0", now).unwrap();
    net.advance(Duration::from_secs(1));
    let g1 = net.node(1).ring().unwrap().genesis_id();
    let g2 = net.node(2).ring().unwrap().genesis_id();
    assert_ne!(g1, g2);
    let msg = &net
        .errors
        .iter()
        .find(|(id, _)| *id == PeerId(1))
        .expect("an error")
        .1;
    assert!(
        msg.contains(&g1.to_string()) && msg.contains(&g2.to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("weft reset --state") && msg.contains("rmpeer"),
        "{msg}"
    );
    assert!(matches!(net.node(1).phase(), Phase::Conflict { .. }));
    // Nothing moved.
    assert_eq!(net.node(1).ring().unwrap().genesis_id(), g1);
    assert_eq!(
        net.node(1).lookup("a", "eth0").unwrap().to_string(),
        "10.32.0.1"
    );
}

#[test]
fn a_ring_holding_no_pods_yields_to_one_that_does() {
    let mut net = Net::new();
    net.add(config(1, "10.32.0.0/16", Init::Seed([PeerId(1)].into())));
    net.add(config(2, "10.32.0.0/16", Init::Seed([PeerId(2)].into())));
    let now = net.now;
    net.node(1).allocate("a", "eth0", now).unwrap();
    net.node(2).allocate_node(now).unwrap();
    net.advance(Duration::from_secs(1));
    let g1 = net.node(1).ring().unwrap().genesis_id();
    assert_eq!(net.node(2).ring().unwrap().genesis_id(), g1);
    assert!(
        net.events
            .iter()
            .any(|(id, e)| *id == PeerId(2) && matches!(e, Event::RingReplaced { .. }))
    );
    assert!(
        net.node(2).allocations().is_empty(),
        "node address must be re-requested"
    );
}

#[test]
fn hostile_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let mut net = three("10.32.0.0/16");
    let now = net.now;
    net.node(1).allocate("keep", "eth0", now).unwrap();
    net.pump();
    let snapshot = |n: &Allocator<MemStore>| (n.ring().cloned(), n.allocations(), n.status(now));
    let before = snapshot(net.node(1));

    // Random bytes.
    let mut rng_state = 0x1234_5678u64;
    for len in 0..200 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (rng_state >> 56) as u8
            })
            .collect();
        let _ = net.node(1).handle_message(PeerId(2), &bytes, now);
    }
    assert!(
        net.node(1)
            .handle_message(PeerId(2), &[1, 1, 0xff], now)
            .is_err()
    );

    // A ring in which router 3 takes part of router 1's range.
    let mut forged = net.node(3).ring().unwrap().to_wire();
    forged.entries.insert(
        1,
        (
            100,
            ring::Entry {
                owner: PeerId(3),
                version: 9,
                writer: PeerId(3),
                reclaim: false,
            },
            None,
        ),
    );
    let forged = Ring::from_wire(forged).unwrap();
    let err = net
        .node(1)
        .handle_message(PeerId(3), &message::Message::Ring(forged).encode(), now)
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");

    // Malformed container IDs.
    for bad in ["", "has space", "../etc", &"x".repeat(256)] {
        let err = net.node(1).allocate(bad, "eth0", now).unwrap_err();
        assert!(matches!(err, AllocError::InvalidKey(_)), "{err}");
        assert!(err.to_string().contains("invalid container ID"), "{err}");
    }
    // Release of something never allocated.
    let err = net.node(1).release("never", "eth0", now).unwrap_err();
    assert!(matches!(err, AllocError::NotFound { .. }), "{err}");

    assert_eq!(snapshot(net.node(1)), before);
    assert!(net.node(1).poll_transmit().is_none(), "nothing sent");
}
