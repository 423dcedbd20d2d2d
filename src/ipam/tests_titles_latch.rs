//! The titles latch (issue 15's last hole; `allocator/titles_latch.rs`): a
//! member posing as a build before titles has its untitled jumps refused
//! in a ring this build initialised, and accepted (counted) only in a ring
//! a build before titles initialised. No ring takes the latch back.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::message::{Message, RING_TITLES_VERSION};
use super::ring::Marks;
use super::signed::TestCrypto;
use super::tests::{Net, config, three, voters};
use super::tests_security::{
    assert_missing_title, assert_one_jump_without_title, give_away_routers_1_range_as,
};
use super::{Allocator, Config, Event, Ring};
use crate::id::PeerId;
use std::collections::BTreeSet;

/// Restarts `id` from its store with this build's defaults, changed by `shape`.
fn restart(net: &mut Net, id: u64, shape: impl FnOnce(&mut Config)) {
    let store = net.nodes.remove(&PeerId(id)).unwrap().into_store();
    let mut cfg = config(id, "10.32.0.0/24", voters(&[1, 2, 3]));
    shape(&mut cfg);
    let mut node = Allocator::new(cfg, store, &[], net.now).unwrap();
    node.learn_test_keys(64);
    net.nodes.insert(PeerId(id), node);
}

/// Three voters whose ring a build before titles (ring version 5)
/// initialised, each then restarted from its store as this build: an
/// upgraded cluster, no connection versions told yet.
fn upgraded_three() -> Net {
    let mut net = Net::new();
    for i in 1..=3 {
        let mut cfg = config(i, "10.32.0.0/24", voters(&[1, 2, 3]));
        cfg.ring_version = 5;
        net.add(cfg);
    }
    net.settle();
    for i in 1..=3 {
        restart(&mut net, i, |_| {});
    }
    net
}

/// Who `id` took the latch from, from its events (drained).
fn latched_from(net: &mut Net, id: u64) -> Vec<PeerId> {
    std::iter::from_fn(|| net.node(id).poll_event())
        .filter_map(|e| match e {
            Event::TitlesRequired { from, saved } => {
                assert!(saved, "the latch is saved with the ring");
                Some(from)
            }
            _ => None,
        })
        .collect()
}

fn latched(net: &mut Net, id: u64) -> bool {
    let node = net.node(id);
    assert_eq!(
        node.titles_required_of_all(),
        node.ring().unwrap().titles_required()
    );
    node.titles_required_of_all()
}

/// Router 2 connected to 1 speaking titles and to 3 as `three_speaks`.
fn connect_2(net: &mut Net, three_speaks: u8) {
    let node = net.node(2);
    node.set_peer_ring_version(PeerId(1), Some(RING_TITLES_VERSION));
    node.set_peer_ring_version(PeerId(3), Some(three_speaks));
}

#[test]
fn a_ring_this_build_initialises_refuses_a_member_posing_as_older_from_birth() {
    let mut net = three("10.32.0.0/24");
    for i in 1..=3 {
        assert!(latched(&mut net, i), "router {i}");
        assert!(net.node(i).titles_waiting_for().is_empty());
    }
    connect_2(&mut net, 5);
    let before = net.node(2).ring().unwrap().clone();
    let err = give_away_routers_1_range_as(&mut net, Ring::without_titles).unwrap_err();
    assert_missing_title(&err);
    assert_eq!(net.node(2).ring().unwrap(), &before);
    // A restart keeps the latch (it is in the ring record), with no
    // connection told yet.
    restart(&mut net, 2, |_| {});
    assert!(latched(&mut net, 2));
    net.node(2).set_peer_ring_version(PeerId(3), Some(5));
    let err = give_away_routers_1_range_as(&mut net, Ring::without_titles).unwrap_err();
    assert_missing_title(&err);
}

#[test]
fn a_ring_from_before_titles_is_never_latched_and_accepts_the_pose_counted() {
    let mut net = upgraded_three();
    for i in 1..=3 {
        assert!(!latched(&mut net, i), "router {i}");
    }
    connect_2(&mut net, 5);
    assert_eq!(
        net.node(2).titles_waiting_for(),
        BTreeSet::from([PeerId(3)])
    );
    // Every owner seen speaking titles does not set it (the history has
    // hand-overs without titles, which a router that missed one would
    // refuse for good).
    net.node(2).set_peer_ring_version(PeerId(3), None);
    net.node(2)
        .set_peer_ring_version(PeerId(3), Some(RING_TITLES_VERSION));
    assert!(net.node(2).titles_waiting_for().is_empty());
    assert!(!latched(&mut net, 2));
    // The hole left there: member 3, posing as a build before titles,
    // gives router 1's range away; it is accepted, and counted.
    net.node(2).set_peer_ring_version(PeerId(3), Some(5));
    give_away_routers_1_range_as(&mut net, Ring::without_titles).unwrap();
    assert_one_jump_without_title(&mut net);
}

#[test]
fn a_latch_from_a_peers_ring_spreads_and_no_ring_without_it_clears_it() {
    // Voters of two builds initialised the same ring: router 1's copy
    // carries the latch, 2's and 3's do not.
    let mut net = upgraded_three();
    let mut latched_ring = net.node(1).ring().unwrap().clone();
    assert!(latched_ring.require_titles());
    let now = net.now;
    net.node(2)
        .handle_message(PeerId(1), &Message::Ring(latched_ring).encode(), now)
        .unwrap();
    assert!(latched(&mut net, 2));
    assert_eq!(latched_from(&mut net, 2), [PeerId(1)]);
    net.pump();
    assert!(
        latched(&mut net, 3),
        "router 3 learned it from 2's broadcast"
    );
    // 3 sends 2 its ring with the latch cleared, and as a build before
    // titles sends it: 2 stays latched, and refuses the give-away.
    let now = net.now;
    let mut cleared = net
        .node(3)
        .ring()
        .unwrap()
        .clone()
        .with_marks(Marks::default());
    cleared.set_record(PeerId(3), 7, 0);
    cleared.sign_own(PeerId(3), &TestCrypto::new(PeerId(3)));
    for ring in [cleared.clone(), cleared.without_titles()] {
        let bytes = Message::Ring(ring).encode();
        let _ = net.node(2).handle_message(PeerId(3), &bytes, now);
        assert!(latched(&mut net, 2));
    }
    net.node(2).set_peer_ring_version(PeerId(3), Some(5));
    let err = give_away_routers_1_range_as(&mut net, Ring::without_titles).unwrap_err();
    assert_missing_title(&err);
    // A router that does not require titles takes no part.
    restart(&mut net, 2, |c| c.require_titles = false);
    assert!(!net.node(2).titles_required_of_all());
    assert!(net.node(2).titles_waiting_for().is_empty());
}
