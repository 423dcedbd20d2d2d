//! Identity key rotation's ring hand-over (issue 20, step 3;
//! `allocator/rotate.rs`) over the in-memory network of `tests.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::signed::TestCrypto;
use super::tests::*;
use super::*;
use crate::id::PeerId;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Router `from` of `net` becomes router `to` (a new key): the allocator
/// is re-keyed under its new ID in the network's map.
fn rotate(net: &mut Net, from: u64, to: u64) -> u128 {
    let now = net.now;
    let mut node = net.nodes.remove(&PeerId(from)).unwrap();
    let handed = node
        .rotate_to(PeerId(to), TestCrypto::boxed(PeerId(to)), now)
        .unwrap();
    net.nodes.insert(PeerId(to), node);
    handed
}

fn owners_everywhere(net: &Net) -> BTreeSet<Option<PeerId>> {
    let mut owners = BTreeSet::new();
    for node in net.nodes.values() {
        for last in 0..=255u8 {
            owners.insert(node.owner_of(IpAddr::from([10, 32, 0, last])));
        }
    }
    owners
}

#[test]
fn a_rotation_hands_every_range_to_the_new_id_and_keeps_the_allocations() {
    let mut net = three("10.32.0.0/24");
    let pod = allocate_retrying(&mut net, 3, "pod-a");
    let now = net.now;
    let node_addr = net.node(3).allocate_node(now).unwrap();
    let owned = net.get(3).status(now).owned_addresses;
    let ranges = net.get(3).allocatable_ranges(now);
    assert!(owned > 0);
    assert_eq!(rotate(&mut net, 3, 7), owned);
    net.pump();
    let now = net.now;
    // Every router sees what 3 owned as 7's, and nothing as 3's.
    let owners = owners_everywhere(&net);
    assert!(!owners.contains(&Some(PeerId(3))), "{owners:?}");
    assert!(owners.contains(&Some(PeerId(7))), "{owners:?}");
    for id in [1, 2] {
        assert_eq!(net.get(id).owner_of(pod), Some(PeerId(7)));
    }
    // Each donation is the old key's write (an owner's write).
    let ring = net.get(7).ring().unwrap();
    assert!(
        ring.entries()
            .values()
            .filter(|e| e.owner == PeerId(7))
            .all(|e| e.writer == PeerId(3))
    );
    // Same node, same addresses: pods and the node address keep theirs,
    // the same ranges stay allocatable, and a new pod gets one of them.
    let moved = net.get(7);
    assert_eq!(moved.id(), PeerId(7));
    assert_eq!(moved.lookup("pod-a", "eth0"), Some(pod));
    assert_eq!(moved.status(now).owned_addresses, owned);
    assert_eq!(moved.allocatable_ranges(now), ranges);
    let next = net.node(7).allocate("pod-b", "eth0", now).unwrap();
    assert!(ranges.iter().any(|(lo, hi)| *lo <= next && next <= *hi));
    assert_eq!(net.node(7).allocate_node(now).unwrap(), node_addr);
}

#[test]
fn state_after_a_rotation_loads_under_the_new_id_only() {
    let mut net = three("10.32.0.0/24");
    let pod = allocate_retrying(&mut net, 3, "pod-a");
    rotate(&mut net, 3, 7);
    let now = net.now;
    let store = net.nodes.remove(&PeerId(7)).unwrap().into_store();
    let old = Allocator::new(
        config(3, "10.32.0.0/24", voters(&[1, 2, 3])),
        store.clone(),
        &[],
        now,
    );
    assert!(
        old.is_err(),
        "the old ID must not load the handed-over state"
    );
    let back = Allocator::new(
        config(7, "10.32.0.0/24", voters(&[1, 2, 3])),
        store,
        &[],
        now,
    )
    .unwrap();
    assert_eq!(back.lookup("pod-a", "eth0"), Some(pod));
    assert!(back.ring().unwrap().ranges_of(PeerId(3)).is_empty());
    assert!(!back.ring().unwrap().ranges_of(PeerId(7)).is_empty());
}

#[test]
fn a_rotation_whose_state_cannot_be_written_changes_and_sends_nothing() {
    let mut net = three("10.32.0.0/24");
    allocate_retrying(&mut net, 3, "pod-a");
    let now = net.now;
    let owned = net.get(3).status(now).owned_addresses;
    net.node(3).store_mut().fail = true;
    let err = net
        .node(3)
        .rotate_to(PeerId(7), TestCrypto::boxed(PeerId(7)), now)
        .unwrap_err();
    assert!(matches!(err, IpamError::Persist(_)), "{err}");
    assert!(net.node(3).poll_transmit().is_none());
    assert_eq!(net.get(3).id(), PeerId(3));
    assert_eq!(net.get(3).status(now).owned_addresses, owned);
    assert!(net.get(3).ring().unwrap().ranges_of(PeerId(7)).is_empty());
    // It still works as itself.
    net.node(3).store_mut().fail = false;
    net.node(3).allocate("pod-b", "eth0", now).unwrap();
}
