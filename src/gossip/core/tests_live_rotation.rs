//! The live key switch (`live_rotation.rs`): the rotating router moves its
//! entry and retires its old ID on every neighbour at once; a neighbour
//! moves its link to the new ID without a down/up, and has a route to the
//! router under one of its IDs at every point, whichever of the gossip and
//! the link's rekey comes first.
#![allow(clippy::unwrap_used)]

use super::tests_rotation::{
    core, core_knowing_x, drain, entry, identity, info, refusals, signed, update,
};
use super::*;
use crate::crypto::Identity;
use crate::crypto::rotation::Rotation;
use crate::gossip::message::Message;

fn established(peers: &[&Identity]) -> Vec<ConnectionInfo> {
    let mut list: Vec<ConnectionInfo> = peers
        .iter()
        .map(|p| ConnectionInfo {
            peer: p.id(),
            established: true,
            outbound: true,
        })
        .collect();
    list.sort_by_key(|c| c.peer);
    list
}

/// Every frame queued, decoded.
fn frames(g: &mut Gossip) -> Vec<(PeerId, Message)> {
    std::iter::from_fn(|| g.poll_transmit())
        .map(|(to, bytes)| (to, Message::decode(&bytes).unwrap()))
        .collect()
}

#[test]
fn a_live_rotation_moves_my_entry_and_sends_it_with_the_tombstone_to_every_neighbour() {
    let now = Instant::now();
    let (old, new, a, b) = (identity(10), identity(11), identity(2), identity(3));
    let mut g = core(&old, "x", now);
    for n in [&a, &b] {
        g.connection_up(info(n, "n"), true, now);
        g.set_established(n.id(), true, now);
    }
    g.set_mtu(1400, now);
    drain(&mut g);
    let was = g.my_entry().clone();
    let rotation = Rotation::sign(&old, &new, 1_796_000_000);
    let old_key = SigningKey::from_identity(&old);

    // Announcements that are not mine to make change nothing.
    let other = Rotation::sign(&a, &new, 1_796_000_000);
    let signer = || SigningKey::from_identity(&new);
    assert_eq!(
        g.rotate(info(&new, "x"), signer(), other, &old_key, now),
        Err(RefusedReason::BadRotation)
    );
    assert_eq!(
        g.rotate(info(&b, "x"), signer(), rotation, &old_key, now),
        Err(RefusedReason::BadRotation)
    );
    assert_eq!(g.id(), old.id());
    assert!(frames(&mut g).is_empty());

    g.rotate(info(&new, "x"), signer(), rotation, &old_key, now)
        .unwrap();
    assert_eq!(g.id(), new.id());
    let mine = g.my_entry().clone();
    assert_eq!(mine.name, "x");
    assert_eq!(mine.short_id, was.short_id);
    assert_eq!(mine.mtu, 1400);
    assert_eq!(mine.version, was.version + 1);
    assert_eq!(mine.connections, established(&[&a, &b]));
    assert!(g.entry(old.id()).is_none());
    assert_eq!(g.name_holder("x"), Some(new.id()));
    assert_eq!(g.successor_of(old.id()), Some(new.id()));
    let (_, grave) = tombstone(&rotation, "x", 1400, &old_key);
    let held: Vec<_> = g.retirements().map(|(o, _, t)| (o, t.cloned())).collect();
    assert_eq!(held, vec![(old.id(), Some(grave.clone()))]);
    let mine_signed = g.table.signed(new.id()).unwrap().clone();
    assert_eq!(mine_signed.rotation(), Ok(Some(rotation)));
    // One frame per neighbour, now: my new entry, then the tombstone.
    let sent = frames(&mut g);
    let mut to: Vec<PeerId> = sent.iter().map(|(to, _)| *to).collect();
    to.sort();
    let mut expected = vec![a.id(), b.id()];
    expected.sort();
    assert_eq!(to, expected);
    for (_, m) in sent {
        let Message::Update(u) = m else {
            panic!("not an update: {m:?}")
        };
        assert_eq!(u.entries, vec![mine_signed.clone(), grave.clone()]);
    }
    assert!(!g.has_pending_changes());
}

/// A peer "me" with neighbours `x` (the old key, established both ways)
/// and `a`, knowing x's entry at version 5 (short ID 4242) listing me.
fn peer_of_x(old: &Identity, a: &Identity) -> (Gossip, Instant) {
    let now = Instant::now();
    let me = identity(1);
    let mut g = core(&me, "me", now);
    for n in [old, a] {
        g.connection_up(info(n, "n"), true, now);
        g.set_established(n.id(), true, now);
    }
    let mut x = entry(old, "x", 5, ShortId(4242));
    x.connections = established(&[&me]);
    g.handle_message(old.id(), &update(vec![signed(old, &x, None)]), now)
        .unwrap();
    drain(&mut g);
    while g.poll_transmit().is_some() {}
    assert_eq!(g.routes().next_hop(old.id()), Some(old.id()));
    (g, now)
}

/// What the rotated router sends: its entry under `new` (listing `me`,
/// established) and the old ID's tombstone.
fn rotated_update(old: &Identity, new: &Identity, me: PeerId, rotation: &Rotation) -> Vec<u8> {
    let mut successor = entry(new, "x", 6, ShortId(4242));
    successor.connections = vec![ConnectionInfo {
        peer: me,
        established: true,
        outbound: false,
    }];
    let (_, grave) = tombstone(rotation, "x", 1420, &SigningKey::from_identity(old));
    update(vec![signed(new, &successor, Some(rotation)), grave])
}

/// After `neighbour_rotated`, what goes out by the next rate-limited push
/// (before anti-entropy's first round) is my own entry and nothing else:
/// no digest, no tombstone, no other entry.
fn only_my_entry_sent(g: &mut Gossip, now: Instant) -> Instant {
    let later = now + Duration::from_millis(600);
    g.handle_timeout(later);
    let me = g.id();
    let sent = frames(g);
    assert!(!sent.is_empty(), "my entry was not pushed");
    for (to, m) in sent {
        let Message::Update(u) = m else {
            panic!("to {to}: not an update: {m:?}")
        };
        let ids: Vec<PeerId> = u.entries.iter().map(|e| e.claim().unwrap().id).collect();
        assert_eq!(ids, vec![me], "to {to}");
    }
    later
}

#[test]
fn gossip_first_then_the_link_moves_and_the_router_is_always_routed() {
    let (old, new, a) = (identity(10), identity(11), identity(2));
    let (mut g, now) = peer_of_x(&old, &a);
    let rotation = Rotation::sign(&old, &new, 1_796_000_000);
    g.handle_message(
        old.id(),
        &rotated_update(&old, &new, g.id(), &rotation),
        now,
    )
    .unwrap();
    assert_eq!(refusals(&drain(&mut g)), vec![]);
    // The link still runs under the old ID: the route to the new ID uses it.
    assert!(g.entry(old.id()).is_none());
    let route = g.routes().route(new.id()).unwrap();
    assert_eq!((route.next_hop, route.hops), (old.id(), 1));
    while g.poll_transmit().is_some() {}

    g.neighbour_rotated(old.id(), new.id(), rotation, now)
        .unwrap();
    // Already learned from the gossip: no second event.
    let events = drain(&mut g);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, GossipEvent::Rotated { .. }))
    );
    let neighbours: Vec<(PeerId, bool, bool)> = g.neighbours().collect();
    assert!(neighbours.contains(&(new.id(), true, true)));
    assert!(!neighbours.iter().any(|(id, _, _)| *id == old.id()));
    assert_eq!(g.routes().next_hop(new.id()), Some(new.id()));
    let later = only_my_entry_sent(&mut g, now);
    let mine = g.my_entry();
    assert!(mine.connection(new.id()).is_some_and(|c| c.established));
    assert!(mine.connection(old.id()).is_none());
    // Frames now come from the new ID.
    assert!(g.handle_message(new.id(), &update(vec![]), later).is_ok());
    assert!(g.handle_message(old.id(), &update(vec![]), later).is_err());
}

#[test]
fn the_link_first_then_gossip_and_the_router_is_always_routed() {
    let (old, new, a) = (identity(10), identity(11), identity(2));
    let (mut g, now) = peer_of_x(&old, &a);
    let rotation = Rotation::sign(&old, &new, 1_796_000_000);
    // A mismatched announcement changes nothing.
    let wrong = Rotation::sign(&old, &a, 1_796_000_000);
    assert_eq!(
        g.neighbour_rotated(old.id(), new.id(), wrong, now),
        Err(RefusedReason::BadRotation)
    );
    assert_eq!(g.routes().next_hop(old.id()), Some(old.id()));

    g.neighbour_rotated(old.id(), new.id(), rotation, now)
        .unwrap();
    let events = drain(&mut g);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, GossipEvent::Rotated { new: n, .. } if *n == new.id()))
    );
    // The successor's entry is not here yet: the router is still known,
    // and routed, under the old ID, over the link that now has the new one.
    assert!(g.entry(old.id()).is_some());
    assert_eq!(g.routes().next_hop(old.id()), Some(new.id()));
    let later = only_my_entry_sent(&mut g, now);
    assert_eq!(g.routes().next_hop(old.id()), Some(new.id()));

    g.handle_message(
        new.id(),
        &rotated_update(&old, &new, g.id(), &rotation),
        later,
    )
    .unwrap();
    assert_eq!(refusals(&drain(&mut g)), vec![]);
    assert!(g.entry(old.id()).is_none());
    assert_eq!(g.routes().next_hop(new.id()), Some(new.id()));
    assert_eq!(g.routes().route(old.id()), None);
    assert_eq!(g.peer_by_short(ShortId(4242)), Some(new.id()));
}

#[test]
fn a_router_two_hops_away_routes_the_new_id_over_entries_that_still_name_the_old() {
    // me — a — x: a's entry still lists x's old ID when x's successor
    // arrives; the route to x's new ID goes through a at once.
    let now = Instant::now();
    let (me, a, old, new) = (identity(1), identity(2), identity(10), identity(11));
    let mut g = core(&me, "me", now);
    g.connection_up(info(&a, "a"), true, now);
    g.set_established(a.id(), true, now);
    let mut a_entry = entry(&a, "a", 3, ShortId(7));
    a_entry.connections = established(&[&me, &old]);
    let mut x = entry(&old, "x", 5, ShortId(4242));
    x.connections = established(&[&a]);
    g.handle_message(
        a.id(),
        &update(vec![signed(&a, &a_entry, None), signed(&old, &x, None)]),
        now,
    )
    .unwrap();
    drain(&mut g);
    assert_eq!(g.routes().route(old.id()).map(|r| r.hops), Some(2));
    let rotation = Rotation::sign(&old, &new, 1_796_000_000);
    let mut successor = entry(&new, "x", 6, ShortId(4242));
    successor.connections = established(&[&a]);
    let (_, grave) = tombstone(&rotation, "x", 1420, &SigningKey::from_identity(&old));
    g.handle_message(
        a.id(),
        &update(vec![signed(&new, &successor, Some(&rotation)), grave]),
        now,
    )
    .unwrap();
    assert_eq!(refusals(&drain(&mut g)), vec![]);
    let route = g.routes().route(new.id()).unwrap();
    assert_eq!((route.next_hop, route.hops), (a.id(), 2));
}

#[test]
fn a_full_table_of_retirements_drops_the_oldest_ended_one_never_an_open_one() {
    let (old, new) = (identity(10), identity(11));
    let (mut g, n, t0) = core_knowing_x(&old);
    let filler = Rotation::sign(&identity(30), &identity(31), 1);
    for i in 0..crate::crypto::rotation::MAX_TRACKED as u64 {
        let learned = t0 + Duration::from_secs(i % 3);
        let r = super::rotation::Retirement {
            successor: PeerId(u64::MAX),
            rotation: filler,
            tombstone: None,
            learned,
        };
        g.retired.insert(PeerId(i), r);
    }
    let rotation = Rotation::sign(&old, &new, 1_796_000_000);
    let (_, grave) = tombstone(&rotation, "x", 1420, &SigningKey::from_identity(&old));
    // Every window open: refused, nothing dropped (and our own switch
    // would be refused before it starts).
    assert!(!g.has_room_for_retirement(t0 + Duration::from_secs(5)));
    g.handle_message(n, &update(vec![grave.clone()]), t0 + Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        refusals(&drain(&mut g)),
        vec![RefusedReason::TooManyRotations]
    );
    assert_eq!(g.successor_of(old.id()), None);
    // Windows over: the first learned (lowest ID among them) makes room.
    let later = t0 + GossipConfig::default().retirement_window + Duration::from_secs(1);
    assert!(g.has_room_for_retirement(later));
    g.handle_message(n, &update(vec![grave]), later).unwrap();
    assert_eq!(refusals(&drain(&mut g)), vec![]);
    assert_eq!(g.successor_of(old.id()), Some(new.id()));
    assert_eq!(g.successor_of(PeerId(0)), None);
    assert_eq!(g.successor_of(PeerId(3)), Some(PeerId(u64::MAX)));
    assert_eq!(g.successor_of(PeerId(1)), Some(PeerId(u64::MAX)));
    assert_eq!(g.retired.len(), crate::crypto::rotation::MAX_TRACKED);
    // The driver's pruning drops one by ID.
    let changes = g.retirement_changes();
    g.forget_retirement(old.id());
    assert_eq!(g.successor_of(old.id()), None);
    assert!(g.retirement_changes() > changes);
    assert!(g.tombstones_to_hand().is_empty());
}

#[test]
fn a_carried_short_id_is_announced_after_a_plain_restart() {
    let now = Instant::now();
    let x = identity(11);
    let g = core(&x, "x", now).with_short_id(ShortId(4242));
    assert_eq!(g.short_id(), ShortId(4242));
    assert_eq!(
        g.table.signed(x.id()).unwrap().claim().unwrap().short_id,
        ShortId(4242)
    );
}
