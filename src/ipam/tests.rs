//! Scenario tests of the IPAM core over a tiny in-memory network, plus the
//! benchmark (`cargo test --release --lib ipam::tests::bench -- --ignored --nocapture`).
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

fn range(cidr: &str) -> AddrRange {
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

    fn get(&self, id: u64) -> &Allocator<MemStore> {
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

#[test]
fn a_restart_with_the_same_state_keeps_ranges_and_allocations() {
    let mut net = three("10.32.0.0/16");
    let now = net.now;
    let a = net.node(1).allocate("c", "eth0", now).unwrap();
    let node_addr = net.node(1).allocate_node(now).unwrap();
    let ranges = net.node(1).allocatable_ranges(now);
    let store = net.nodes.remove(&PeerId(1)).unwrap().into_store();
    let back = Allocator::new(
        config(1, "10.32.0.0/16", voters(&[1, 2, 3])),
        store,
        &[],
        now,
    )
    .unwrap();
    assert!(back.is_ready());
    assert_eq!(back.lookup("c", "eth0"), Some(a));
    assert_eq!(back.allocatable_ranges(now), ranges);
    let mut back = back;
    assert_eq!(back.allocate_node(now).unwrap(), node_addr);
}

#[test]
fn state_survives_a_restart_through_the_file_store() {
    let dir = std::env::temp_dir().join(format!("weft-ipam-file-{}", std::process::id()));
    let now = Instant::now();
    let cfg = config(1, "10.32.0.0/16", Init::Seed([PeerId(1)].into()));
    let mut a = Allocator::new(cfg, FileStore::open(&dir).unwrap(), &[], now).unwrap();
    let addr = a.allocate("c", "eth0", now).unwrap();
    drop(a);
    let cfg = config(1, "10.32.0.0/16", Init::Seed([PeerId(1)].into()));
    let b = Allocator::new(cfg, FileStore::open(&dir).unwrap(), &[], now).unwrap();
    assert_eq!(b.lookup("c", "eth0"), Some(addr));
    let other = config(1, "10.33.0.0/16", Init::Seed([PeerId(1)].into()));
    let err = Allocator::new(other, FileStore::open(&dir).unwrap(), &[], now)
        .err()
        .unwrap();
    assert!(matches!(err, IpamError::RangeChanged { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_state_router_does_not_reuse_addresses_still_in_use_in_the_kernel() {
    let mut net = three("10.32.0.0/24");
    let now = net.now;
    let mut kernel = Vec::new();
    for i in 0..5 {
        let a = net.node(1).allocate(&format!("c{i}"), "eth0", now).unwrap();
        kernel.push(InUse {
            addr: a,
            key: if i == 0 {
                None
            } else {
                Some(AllocKey::pod(&format!("c{i}"), "eth0").unwrap())
            },
        });
    }
    net.nodes.remove(&PeerId(1));
    let fresh = Allocator::new(
        config(1, "10.32.0.0/24", voters(&[1, 2, 3])),
        MemStore::default(),
        &kernel,
        now,
    )
    .unwrap();
    let mut fresh = fresh;
    fresh.learn_test_keys(64);
    net.nodes.insert(PeerId(1), fresh);
    assert_eq!(
        net.node(1).phase(),
        Phase::WaitingForRing,
        "does not vote: it has addresses in use"
    );
    net.settle();
    assert!(net.node(1).is_ready());
    // Its own ranges are quarantined until the cluster has converged.
    let now = net.now;
    assert!(matches!(
        net.node(1).allocate("new", "eth0", now),
        Err(AllocError::TryAgain(_))
    ));
    net.advance(Duration::from_secs(11));
    let mut fresh_addrs = BTreeSet::new();
    for i in 0..20 {
        let a = allocate_retrying(&mut net, 1, &format!("n{i}"));
        fresh_addrs.insert(a);
    }
    for k in &kernel {
        assert!(
            !fresh_addrs.contains(&k.addr),
            "{} handed out again",
            k.addr
        );
    }
    assert_eq!(
        net.node(1).lookup("c3", "eth0"),
        Some(kernel[3].addr),
        "known holders keep their key"
    );
    let now = net.now;
    net.node(1).release("c3", "eth0", now).unwrap();
}

#[test]
fn a_router_restored_from_stale_state_adopts_its_newer_entries_and_never_allocates_what_it_gave_away()
 {
    let mut net = three("10.32.0.0/24");
    let stale = net.node(1).store().clone();
    // Router 1 gives half of its space to 2.
    let now = net.now;
    for i in 0..90 {
        let _ = net.node(2).allocate(&format!("p{i}"), "eth0", now);
        net.pump();
    }
    net.settle();
    let given: Vec<(IpAddr, IpAddr)> = net.get(2).allocatable_ranges(net.now);
    assert!(given.len() > 1, "router 2 got a donation: {given:?}");
    // Router 1 comes back from the stale copy.
    net.nodes.remove(&PeerId(1));
    let back = Allocator::new(
        config(1, "10.32.0.0/24", voters(&[1, 2, 3])),
        stale,
        &[],
        net.now,
    )
    .unwrap();
    let mut back = back;
    back.learn_test_keys(64);
    net.nodes.insert(PeerId(1), back);
    net.settle();
    let r1 = net.node(1).ring().unwrap().clone();
    assert_eq!(r1.entries(), net.node(2).ring().unwrap().entries());
    let mine = r1.ranges_of(PeerId(1));
    let theirs = r1.ranges_of(PeerId(2));
    for (a, b) in &mine {
        for (c, d) in &theirs {
            assert!(b < c || d < a, "overlap");
        }
    }
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

#[test]
fn rmpeer_is_refused_while_reachable_and_quarantines_what_it_takes() {
    let mut net = three("10.32.0.0/24");
    net.node(1).set_reachable([PeerId(2), PeerId(3)].into());
    let now = net.now;
    assert!(matches!(
        net.node(1).rmpeer(PeerId(3), false, now),
        Err(IpamError::PeerReachable(_))
    ));
    assert!(matches!(
        net.node(1).rmpeer(PeerId(1), false, now),
        Err(IpamError::ReclaimSelf)
    ));
    net.nodes.remove(&PeerId(3));
    net.node(1).set_reachable([PeerId(2)].into());
    let taken = net.node(1).rmpeer(PeerId(3), false, now).unwrap();
    assert_eq!(taken, 86);
    net.pump();
    assert_eq!(
        net.node(2).owner_of("10.32.0.200".parse().unwrap()),
        Some(PeerId(1))
    );
    // Fill router 1's own space; the reclaimed part stays untouched while quarantined.
    let mut got = Vec::new();
    let now = net.now;
    while let Ok(a) = net
        .node(1)
        .allocate(&format!("p{}", got.len()), "eth0", now)
    {
        got.push(a);
    }
    let last_octet = |a: &IpAddr| match a {
        IpAddr::V4(v) => v.octets()[3],
        IpAddr::V6(_) => unreachable!(),
    };
    assert!(got.iter().all(|a| last_octet(a) < 170), "{got:?}");
    assert_eq!(
        got.len(),
        84,
        "its own 85 addresses minus the network address"
    );
    net.advance(Duration::from_secs(11));
    let now = net.now;
    let probe: IpAddr = "10.32.0.200".parse().unwrap();
    let ranges = net.get(1).allocatable_ranges(now);
    assert!(
        ranges.iter().any(|(a, b)| *a <= probe && probe <= *b),
        "quarantine over: {ranges:?}"
    );
    net.node(1).allocate("after", "eth0", now).unwrap();
}

#[test]
fn two_reclaims_of_one_router_resolve_to_one_owner() {
    let mut net = three("10.32.0.0/24");
    net.nodes.remove(&PeerId(3));
    let now = net.now;
    net.node(1).rmpeer(PeerId(3), false, now).unwrap();
    net.node(2).rmpeer(PeerId(3), false, now).unwrap();
    net.settle();
    let r1 = net.node(1).ring().unwrap().entries().clone();
    assert_eq!(&r1, net.node(2).ring().unwrap().entries());
    let owner = net
        .node(1)
        .owner_of("10.32.0.200".parse().unwrap())
        .unwrap();
    assert_eq!(owner, PeerId(2), "the higher ID wins the tie");
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

#[test]
fn a_router_that_sees_its_own_tombstone_stops_allocating_and_raises_an_alarm() {
    let mut net = three("10.32.0.0/24");
    let parked = net.nodes.remove(&PeerId(3)).unwrap();
    let now = net.now;
    net.node(1).rmpeer(PeerId(3), false, now).unwrap();
    net.pump();
    net.nodes.insert(PeerId(3), parked);
    net.settle();
    let now = net.now;
    let err = net.node(3).allocate("c", "eth0", now).unwrap_err();
    assert!(matches!(err, AllocError::Tombstoned(PeerId(1))), "{err}");
    assert!(matches!(net.node(3).phase(), Phase::Tombstoned { .. }));
    assert!(
        net.events
            .iter()
            .any(|(id, e)| *id == PeerId(3) && matches!(e, Event::Alarm(Alarm::Tombstoned { .. })))
    );
}

#[test]
fn a_failed_persist_allocates_nothing_and_sends_nothing() {
    let mut net = three("10.32.0.0/24");
    let now = net.now;
    net.node(1).store_mut().fail = true;
    assert!(matches!(
        net.node(1).allocate("c", "eth0", now),
        Err(AllocError::Persist(_))
    ));
    assert!(net.node(1).allocations().is_empty());
    // A donation the donor cannot persist is not sent.
    let before = net.node(1).ring().cloned();
    let req = message::Message::DonateRequest(message::DonateRequest {
        genesis: before.as_ref().unwrap().genesis_id(),
    });
    assert!(matches!(
        net.node(1).handle_message(PeerId(2), &req.encode(), now),
        Err(IpamError::Persist(_))
    ));
    assert_eq!(net.node(1).ring().cloned(), before);
    assert!(net.node(1).poll_transmit().is_none());
}

#[test]
fn status_reports_ownership_allocation_and_unreachable_share() {
    let mut net = three("10.32.0.0/24");
    let now = net.now;
    net.node(1).allocate("c", "eth0", now).unwrap();
    net.node(1).allocate_node(now).unwrap();
    net.node(1).set_reachable([PeerId(2)].into());
    let s = net.node(1).status(now);
    assert_eq!(
        s.owned_ranges,
        vec![OwnedRange {
            start: "10.32.0.0".parse().unwrap(),
            end: "10.32.0.84".parse().unwrap()
        }]
    );
    assert_eq!(s.owned_addresses, 85);
    assert_eq!(s.allocated, 2);
    assert_eq!(s.free, 85 - 1 - 2, "network address reserved");
    assert_eq!(s.ring_peers, 3);
    assert!((s.unreachable_share - 86.0 / 256.0).abs() < 1e-9);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["owned_ranges"][0]["start"], "10.32.0.0");
    assert_eq!(json["state"]["phase"], "ready");
}

/// Release-mode figures for the report.
#[test]
#[ignore]
fn bench_ring_size_and_allocation_time() {
    for n in [100u64, 1000] {
        let owners: BTreeSet<PeerId> = (0..n)
            .map(|i| PeerId(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1)))
            .collect();
        let mut ring = Ring::genesis(range("10.32.0.0/12"), "voters", &owners);
        for o in &owners {
            ring.set_record(*o, 1000, 10);
        }
        // One donation per router on average, as a ring that has lived a while.
        let list: Vec<PeerId> = owners.iter().copied().collect();
        for (i, o) in list.iter().enumerate() {
            let (lo, hi) = ring.ranges_of(*o)[0];
            ring.donate(*o, lo + (hi - lo) / 2, hi, list[(i + 1) % list.len()]);
        }
        let bytes = message::Message::Ring(ring.clone()).encode();
        let t = Instant::now();
        let decoded = message::Message::decode(&bytes).unwrap();
        let dt = t.elapsed();
        assert!(matches!(decoded, message::Message::Ring(_)));
        println!(
            "ring of {n} routers ({} entries): {} bytes encoded, decode {:?}",
            ring.entries().len(),
            bytes.len(),
            dt
        );
    }
    let now = Instant::now();
    let cfg = config(
        1,
        "10.32.0.0/12",
        Init::Seed([PeerId(1), PeerId(2), PeerId(3)].into()),
    );
    let mut a = Allocator::new(cfg, MemStore::default(), &[], now).unwrap();
    let count = 1_000;
    let t = Instant::now();
    for i in 0..count {
        a.allocate(&format!("pod-{i}"), "eth0", now).unwrap();
    }
    let dt = t.elapsed();
    println!(
        "allocate (core + in-memory persist of the table): {:?} per call over {count}",
        dt / count
    );
    let t = Instant::now();
    for i in 0..count {
        a.allocate(&format!("pod-{i}"), "eth0", now).unwrap();
    }
    println!(
        "allocate retry (idempotent lookup): {:?} per call",
        t.elapsed() / count
    );
}

#[test]
fn leave_hands_every_range_to_live_peers_and_refuses_while_pods_remain() {
    let mut net = three("10.32.0.0/24");
    let a = allocate_retrying(&mut net, 3, "pod-a");
    let now = net.now;
    net.node(3).set_reachable([].into());
    assert!(matches!(
        net.node(3).leave(false, now),
        Err(IpamError::PodsRemain(1))
    ));
    net.node(3).release("pod-a", "eth0", now).unwrap();
    assert!(matches!(
        net.node(3).leave(false, now),
        Err(IpamError::NoHeir)
    ));
    net.node(3).set_reachable([PeerId(1), PeerId(2)].into());
    let owned = net.get(3).status(now).owned_addresses;
    let given = net.node(3).leave(false, now).unwrap();
    assert_eq!(given, owned);
    net.pump();
    // Every router now agrees that no address is router 3's, and a's
    // address went to one of the others.
    for id in 1..=3 {
        for last in 0..=255u8 {
            let addr = IpAddr::from([10, 32, 0, last]);
            let owner = net.get(id).owner_of(addr);
            assert!(
                matches!(owner, Some(PeerId(1 | 2))),
                "router {id} sees {addr} owned by {owner:?}"
            );
        }
    }
    assert!(matches!(net.get(1).owner_of(a), Some(PeerId(1 | 2))));
    assert_eq!(net.get(3).status(now).owned_addresses, 0);
    // The heirs allocate from what they got: 254 usable addresses in all.
    let mut got = std::collections::BTreeSet::new();
    for i in 0..300 {
        for id in [1, 2] {
            let now = net.now;
            if let Ok(x) = net.node(id).allocate(&format!("p{id}-{i}"), "eth0", now) {
                assert!(got.insert(x), "{x} allocated twice");
            }
        }
        net.advance(Duration::from_millis(100));
    }
    assert!(
        got.len() >= 250,
        "{} addresses allocated after the leave",
        got.len()
    );
    assert!(got.contains(&a), "the leaver's old address is usable again");
}
