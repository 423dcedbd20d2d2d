//! Lifecycle scenarios of the IPAM core over the in-memory network of
//! `tests.rs`: restarts and persistence, reclaim and tombstones, leave,
//! status, and the benchmark
//! (`cargo test --release --lib ipam::tests_lifecycle::bench -- --ignored --nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::tests::*;
use super::*;
use crate::id::PeerId;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

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

#[test]
fn leave_while_quarantined_passes_the_quarantine_on_to_the_heir() {
    let mut net = three("10.32.0.0/24");
    net.nodes.remove(&PeerId(3));
    net.node(1).set_reachable([PeerId(2)].into());
    let now = net.now;
    net.node(1).rmpeer(PeerId(3), false, now).unwrap();
    net.pump();
    let probe: IpAddr = "10.32.0.200".parse().unwrap();
    let covers =
        |ranges: &[(IpAddr, IpAddr)], a: IpAddr| ranges.iter().any(|(lo, hi)| *lo <= a && a <= *hi);
    assert!(!covers(&net.get(1).allocatable_ranges(now), probe));
    // Router 1 leaves with the reclaimed part still quarantined (a leave
    // was refused here before).
    let owned = net.get(1).status(now).owned_addresses;
    assert_eq!(net.node(1).leave(false, now).unwrap(), owned);
    net.pump();
    let now = net.now;
    assert_eq!(net.get(2).owner_of(probe), Some(PeerId(2)));
    let was_ones: IpAddr = "10.32.0.10".parse().unwrap();
    assert_eq!(net.get(2).owner_of(was_ones), Some(PeerId(2)));
    // The heir allocates at once from what router 1 held unquarantined,
    // never from the quarantined part until its quarantine is over.
    let ranges = net.get(2).allocatable_ranges(now);
    assert!(!covers(&ranges, probe), "{ranges:?}");
    assert!(covers(&ranges, was_ones), "{ranges:?}");
    assert!(net.get(2).quarantined_until(now).is_some());
    net.advance(Duration::from_secs(11));
    let now = net.now;
    let ranges = net.get(2).allocatable_ranges(now);
    assert!(covers(&ranges, probe), "quarantine over: {ranges:?}");
}
