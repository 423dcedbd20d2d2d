//! Identity rotation in the topology core (`rotation.rs`): the successor
//! keeps the name and short ID, the tombstone retires the old ID, and
//! nothing in a rotation is believed that its keys did not sign.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::crypto::Identity;
use crate::crypto::rotation::Rotation;
use crate::gossip::message::{Message, Update};

pub(super) fn identity(seed: u64) -> Identity {
    Identity::generate(&mut StdRng::seed_from_u64(seed))
}

pub(super) fn info(identity: &Identity, name: &str) -> PeerInfo {
    PeerInfo {
        id: identity.id(),
        name: name.into(),
        public_key: identity.public_key(),
        addresses: vec!["192.0.2.1:6783".parse().unwrap()],
    }
}

/// `owner`'s entry at `version` under `name`, announcing `short`.
pub(super) fn entry(owner: &Identity, name: &str, version: u64, short: ShortId) -> TopologyEntry {
    TopologyEntry {
        id: owner.id(),
        version,
        name: name.into(),
        public_key: owner.public_key(),
        addresses: vec!["192.0.2.7:6783".parse().unwrap()],
        short_id: short,
        mtu: 1420,
        connections: vec![],
    }
}

pub(super) fn signed(
    owner: &Identity,
    e: &TopologyEntry,
    rotation: Option<&Rotation>,
) -> SignedEntry {
    SignedEntry::sign_rotated(e, rotation, &SigningKey::from_identity(owner))
}

pub(super) fn update(entries: Vec<SignedEntry>) -> Vec<u8> {
    Message::Update(Update { entries }).encode()
}

/// A fresh core for `owner` under `name` (seed 9).
pub(super) fn core(owner: &Identity, name: &str, now: Instant) -> Gossip {
    Gossip::new(
        info(owner, name),
        SigningKey::from_identity(owner),
        GossipConfig::default(),
        9,
        now,
    )
}

/// A core ("me") with one neighbour, which knows router "x" under `old`
/// at version 5 with short ID 4242; drained.
pub(super) fn core_knowing_x(old: &Identity) -> (Gossip, PeerId, Instant) {
    let now = Instant::now();
    let me = identity(1);
    let mut g = core(&me, "me", now);
    let n = identity(2);
    g.connection_up(info(&n, "neighbour"), true, now);
    let x = entry(old, "x", 5, ShortId(4242));
    g.handle_message(n.id(), &update(vec![signed(old, &x, None)]), now)
        .unwrap();
    drain(&mut g);
    assert_eq!(g.name_holder("x"), Some(old.id()));
    (g, n.id(), now)
}

/// Drains transmits and events; returns the events.
pub(super) fn drain(g: &mut Gossip) -> Vec<GossipEvent> {
    while g.poll_transmit().is_some() {}
    std::iter::from_fn(|| g.poll_event()).collect()
}

pub(super) fn refusals(events: &[GossipEvent]) -> Vec<RefusedReason> {
    events
        .iter()
        .filter_map(|e| match e {
            GossipEvent::EntryRefused { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_successor_keeps_the_name_and_short_id_and_the_old_id_leaves() {
    let (old, new) = (identity(10), identity(11));
    let (mut g, n, now) = core_knowing_x(&old);
    let rotation = Rotation::sign(&old, &new, 1_796_000_000);
    let successor = entry(&new, "x", 1, ShortId(4242));
    g.handle_message(
        n,
        &update(vec![signed(&new, &successor, Some(&rotation))]),
        now,
    )
    .unwrap();
    let events = drain(&mut g);
    assert_eq!(refusals(&events), vec![]);
    assert!(events.contains(&GossipEvent::Rotated {
        old: old.id(),
        new: new.id(),
        rotation: Box::new(rotation),
    }));
    assert_eq!(g.name_holder("x"), Some(new.id()));
    assert_eq!(g.entry(new.id()).unwrap().short_id, ShortId(4242));
    assert!(g.entry(old.id()).is_none());
    assert_eq!(g.peer_by_short(ShortId(4242)), Some(new.id()));
    assert!(g.holds_short_id(new.id()));
    assert_eq!(g.successor_of(old.id()), Some(new.id()));
    // A later copy of the old ID's entry (a relay that has not heard yet)
    // does not bring it back, and is not a refusal to log.
    let stale = entry(&old, "x", 6, ShortId(4242));
    g.handle_message(n, &update(vec![signed(&old, &stale, None)]), now)
        .unwrap();
    assert_eq!(drain(&mut g), vec![]);
    assert!(g.entry(old.id()).is_none());
    // The successor's next versions carry the same announcement.
    let next = entry(&new, "x", 2, ShortId(4242));
    g.handle_message(n, &update(vec![signed(&new, &next, Some(&rotation))]), now)
        .unwrap();
    assert_eq!(refusals(&drain(&mut g)), vec![]);
    assert_eq!(g.entry(new.id()).unwrap().version, 2);
}

#[test]
fn without_an_announcement_the_new_key_meets_the_name_rule() {
    let (old, new) = (identity(10), identity(11));
    let (mut g, n, now) = core_knowing_x(&old);
    let plain = entry(&new, "x", 1, ShortId(4242));
    g.handle_message(n, &update(vec![signed(&new, &plain, None)]), now)
        .unwrap();
    assert_eq!(
        refusals(&drain(&mut g)),
        vec![RefusedReason::NameClash { holder: old.id() }]
    );
    assert_eq!(g.name_holder("x"), Some(old.id()));
}

#[test]
fn the_tombstone_retires_the_old_id_and_goes_to_every_new_neighbour() {
    let (old, new) = (identity(10), identity(11));
    let (mut g, n, now) = core_knowing_x(&old);
    let rotation = Rotation::sign(&old, &new, 1_796_000_000);
    let (_, grave) = tombstone(&rotation, "x", 1420, &SigningKey::from_identity(&old));
    g.handle_message(n, &update(vec![grave.clone()]), now)
        .unwrap();
    let events = drain(&mut g);
    assert_eq!(refusals(&events), vec![]);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, GossipEvent::Rotated { old: o, .. } if *o == old.id()))
    );
    // The successor's entry is not here yet: the old one stays, so the
    // router keeps a route under the ID the table knows.
    assert!(g.entry(old.id()).is_some());
    assert_eq!(g.name_holder("x"), Some(old.id()));
    // Learned once: a replay is no second event.
    g.handle_message(n, &update(vec![grave.clone()]), now)
        .unwrap();
    assert_eq!(drain(&mut g), vec![]);
    // The successor arrives: the old entry leaves, the name moves.
    let successor = entry(&new, "x", 1, ShortId(4242));
    g.handle_message(
        n,
        &update(vec![signed(&new, &successor, Some(&rotation))]),
        now,
    )
    .unwrap();
    assert_eq!(refusals(&drain(&mut g)), vec![]);
    assert!(g.entry(old.id()).is_none());
    assert_eq!(g.name_holder("x"), Some(new.id()));
    // A router that connects (a restart after the window) is handed it.
    let later = identity(3);
    g.connection_up(info(&later, "later"), true, now);
    let mut handed = false;
    while let Some((to, frame)) = g.poll_transmit() {
        if let Ok(Message::Update(u)) = Message::decode(&frame) {
            handed |= to == later.id() && u.entries.contains(&grave);
        }
    }
    assert!(handed, "the tombstone was not sent to the new neighbour");
    // And that router, fresh, learns the retirement from it.
    let mut fresh = Gossip::new(
        info(&later, "later"),
        SigningKey::from_identity(&later),
        GossipConfig::default(),
        3,
        now,
    );
    fresh.connection_up(info(&identity(1), "me"), true, now);
    fresh
        .handle_message(identity(1).id(), &update(vec![grave]), now)
        .unwrap();
    assert!(
        drain(&mut fresh)
            .iter()
            .any(|e| matches!(e, GossipEvent::Rotated { new: s, .. } if *s == new.id()))
    );
    assert_eq!(fresh.successor_of(old.id()), Some(new.id()));
}

#[test]
fn a_rotation_for_a_key_its_sender_does_not_hold_is_refused() {
    let (old, new, thief) = (identity(10), identity(11), identity(12));
    let (mut g, n, now) = core_knowing_x(&old);
    // The thief carries the true announcement old → new in its own entry:
    // the announcement names another key than the entry's.
    let genuine = Rotation::sign(&old, &new, 7);
    let borrowed = entry(&thief, "x", 1, ShortId(4242));
    // The thief names itself old's successor without old's key: it signs
    // both halves itself (by_old is the thief's, not old's).
    let mut forged = Rotation::sign(&thief, &thief_pair(), 7).encode();
    forged[1..33].copy_from_slice(&old.public_key());
    let forged = Rotation::decode(&forged).unwrap();
    let forged_entry = entry(&thief_pair(), "x", 1, ShortId(4242));
    // A tombstone for old that old did not sign.
    let (mut fake_grave, _) = tombstone(&genuine, "x", 1420, &SigningKey::from_identity(&old));
    fake_grave.version += 1;
    let fake_grave = signed(&thief, &fake_grave, Some(&genuine));
    g.handle_message(
        n,
        &update(vec![
            signed(&thief, &borrowed, Some(&genuine)),
            signed(&thief_pair(), &forged_entry, Some(&forged)),
            fake_grave,
        ]),
        now,
    )
    .unwrap();
    assert_eq!(
        refusals(&drain(&mut g)),
        vec![
            RefusedReason::BadRotation,
            RefusedReason::BadRotation,
            RefusedReason::BadSignature
        ]
    );
    assert_eq!(g.name_holder("x"), Some(old.id()));
    assert_eq!(g.successor_of(old.id()), None);
    assert!(g.entry(old.id()).is_some());
}

/// The key a thief names as old's successor in the forged announcement.
fn thief_pair() -> Identity {
    identity(13)
}

#[test]
fn a_second_different_successor_of_one_old_key_is_refused() {
    let (old, first, second) = (identity(10), identity(11), identity(12));
    let (mut g, n, now) = core_knowing_x(&old);
    let to_first = Rotation::sign(&old, &first, 7);
    let e = entry(&first, "x", 1, ShortId(4242));
    g.handle_message(n, &update(vec![signed(&first, &e, Some(&to_first))]), now)
        .unwrap();
    assert_eq!(refusals(&drain(&mut g)), vec![]);
    // The old key (stolen) signs a move to another key: both the other
    // key's entry and a tombstone naming it are refused.
    let to_second = Rotation::sign(&old, &second, 8);
    let e = entry(&second, "x", 1, ShortId(4242));
    let (_, grave) = tombstone(&to_second, "x", 1420, &SigningKey::from_identity(&old));
    g.handle_message(
        n,
        &update(vec![signed(&second, &e, Some(&to_second)), grave]),
        now,
    )
    .unwrap();
    let conflict = RefusedReason::RotationConflict {
        successor: first.id(),
    };
    assert_eq!(refusals(&drain(&mut g)), vec![conflict.clone(), conflict]);
    assert_eq!(g.name_holder("x"), Some(first.id()));
    assert!(g.entry(second.id()).is_none());
    assert_eq!(g.successor_of(old.id()), Some(first.id()));
}

#[test]
fn a_rotated_router_announces_under_the_old_short_id_and_hands_its_tombstone() {
    let (old, new) = (identity(10), identity(11));
    let now = Instant::now();
    let rotation = Rotation::sign(&old, &new, 1_796_000_000);
    let mut g = core(&new, "x", now).with_rotation(
        rotation,
        &SigningKey::from_identity(&old),
        ShortId::preferred(old.id()),
    );
    assert_eq!(g.short_id(), ShortId::preferred(old.id()));
    let mine = g.table.signed(new.id()).unwrap().clone();
    assert_eq!(mine.rotation(), Ok(Some(rotation)));
    // A peer that knew the old key takes my entry as the same router.
    let (mut peer, n, _) = core_knowing_x(&old);
    peer.handle_message(n, &update(vec![mine]), now).unwrap();
    assert_eq!(refusals(&drain(&mut peer)), vec![]);
    assert_eq!(peer.name_holder("x"), Some(new.id()));
    // My neighbours get the tombstone, and every version of my entry keeps
    // the announcement.
    let neighbour = identity(2);
    g.connection_up(info(&neighbour, "neighbour"), true, now);
    let mut tombstones = 0;
    while let Some((_, frame)) = g.poll_transmit() {
        if let Ok(Message::Update(u)) = Message::decode(&frame) {
            for e in u.entries {
                let claim = e.claim().unwrap();
                if claim.id == old.id() {
                    assert_eq!(e.verify(&claim), Ok(()));
                    tombstones += 1;
                }
            }
        }
    }
    assert_eq!(tombstones, 1);
    g.set_mtu(1400, now);
    let mine = g.table.signed(new.id()).unwrap();
    assert_eq!(mine.rotation(), Ok(Some(rotation)));
}

#[test]
fn a_short_id_the_old_key_moved_to_after_a_clash_is_carried_and_clashes_with_nobody() {
    let (old, new) = (identity(20), identity(21));
    let now = Instant::now();
    // "y" won a clash on the old key's preferred value; the old key moved
    // to its first candidate.
    let y = identity(22);
    let preferred = ShortId::preferred(old.id());
    let moved = ShortId::candidate(old.id(), 1);
    assert_ne!(moved, preferred);
    let me = identity(1);
    let mut peer = core(&me, "me", now);
    let n = identity(2);
    peer.connection_up(info(&n, "neighbour"), true, now);
    let x = entry(&old, "x", 5, moved);
    let y_entry = entry(&y, "y", 3, preferred);
    let known = vec![signed(&old, &x, None), signed(&y, &y_entry, None)];
    peer.handle_message(n.id(), &update(known.clone()), now)
        .unwrap();
    drain(&mut peer);
    assert!(peer.short_id_clashes().is_empty());

    // The rotated router carries the value its old key held.
    let rotation = Rotation::sign(&old, &new, 1_796_000_000);
    let mut g =
        core(&new, "x", now).with_rotation(rotation, &SigningKey::from_identity(&old), moved);
    assert_eq!(g.short_id(), moved);
    // It learns "y" (and its own old entry) and keeps its value.
    g.connection_up(info(&n, "neighbour"), true, now);
    g.handle_message(n.id(), &update(known), now).unwrap();
    let events = drain(&mut g);
    assert_eq!(g.short_id(), moved, "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, GossipEvent::ShortIdChanged { .. })),
        "{events:?}"
    );

    // A peer takes the successor at the carried value: no clash with "y",
    // the value still names the same router, "y" keeps its own.
    let mine = g.table.signed(new.id()).unwrap().clone();
    peer.handle_message(n.id(), &update(vec![mine]), now)
        .unwrap();
    assert_eq!(refusals(&drain(&mut peer)), vec![]);
    assert_eq!(peer.name_holder("x"), Some(new.id()));
    assert_eq!(peer.entry(new.id()).unwrap().short_id, moved);
    assert!(
        peer.short_id_clashes().is_empty(),
        "{:?}",
        peer.short_id_clashes()
    );
    assert_eq!(peer.peer_by_short(moved), Some(new.id()));
    assert_eq!(peer.peer_by_short(preferred), Some(y.id()));
}

/// The tombstones `g` hands a new neighbour, by ID.
fn tombstones_handed(g: &mut Gossip, now: Instant) -> Vec<PeerId> {
    drain(g);
    g.connection_up(info(&identity(3), "newcomer"), true, now);
    let mut ids = Vec::new();
    while let Some((_, frame)) = g.poll_transmit() {
        if let Ok(Message::Update(u)) = Message::decode(&frame) {
            for e in u.entries {
                if let (Ok(claim), Ok(Some(r))) = (e.claim(), e.rotation())
                    && r.old == claim.public_key
                {
                    ids.push(claim.id);
                }
            }
        }
    }
    ids
}

/// A rotation from `seed`'s key to `seed + 1`'s, and the old ID's
/// tombstone, as a router saves them.
fn saved_retirement(seed: u64) -> (Identity, Identity, Rotation, SignedEntry) {
    let (old, new) = (identity(seed), identity(seed + 1));
    let rotation = Rotation::sign(&old, &new, 1_796_000_000);
    let (_, grave) = tombstone(&rotation, "x", 1420, &SigningKey::from_identity(&old));
    (old, new, rotation, grave)
}

#[test]
fn a_saved_retirement_is_restored_checked_and_handed_on_after_a_restart() {
    let (old, new, rotation, grave) = saved_retirement(30);
    let now = Instant::now();
    // A peer restarted: a fresh core restores what it saved.
    let (mut g, n, _) = {
        let me = identity(1);
        let mut g = core(&me, "me", now);
        let n = identity(2);
        g.connection_up(info(&n, "neighbour"), true, now);
        (g, n.id(), now)
    };
    let before = g.retirement_changes();
    assert_eq!(g.restore_retirement(rotation, Some(grave.clone())), Ok(()));
    assert_ne!(g.retirement_changes(), before);
    assert_eq!(g.successor_of(old.id()), Some(new.id()));
    // No event: the driver restores the window itself.
    assert!(
        !drain(&mut g)
            .iter()
            .any(|e| matches!(e, GossipEvent::Rotated { .. }))
    );
    // The old key's entry, replayed by its holder, is not taken.
    let x = entry(&old, "x", 9, ShortId(4242));
    g.handle_message(n, &update(vec![signed(&old, &x, None)]), now)
        .unwrap();
    drain(&mut g);
    assert!(g.entry(old.id()).is_none());
    assert_eq!(tombstones_handed(&mut g, now), vec![old.id()]);
    let saved: Vec<_> = g
        .retirements()
        .map(|(id, r, t)| (id, *r, t.cloned()))
        .collect();
    assert_eq!(saved, vec![(old.id(), rotation, Some(grave.clone()))]);

    // Forged or mismatched records are refused and change nothing.
    let mut fresh = core(&identity(1), "me", now);
    let other = Rotation::sign(&old, &identity(32), 1_796_000_001);
    assert_eq!(
        fresh.restore_retirement(other, Some(grave.clone())),
        Err(RefusedReason::BadRotation),
        "a tombstone carrying another announcement"
    );
    let mut bent = grave.clone();
    bent.bytes[20] ^= 1;
    assert!(fresh.restore_retirement(rotation, Some(bent)).is_err());
    let mut bad = rotation.encode();
    bad[100] ^= 1;
    let bad = Rotation::decode(&bad).unwrap();
    assert_eq!(
        fresh.restore_retirement(bad, None),
        Err(RefusedReason::BadRotation)
    );
    assert_eq!(fresh.retirements().count(), 0);
    // A second successor of a key already retired is a conflict.
    assert_eq!(fresh.restore_retirement(rotation, None), Ok(()));
    assert!(matches!(
        fresh.restore_retirement(other, None),
        Err(RefusedReason::RotationConflict { .. })
    ));
}

#[test]
fn a_rotated_router_restarted_without_its_old_key_still_carries_its_announcement() {
    let (old, new, rotation, grave) = saved_retirement(40);
    let now = Instant::now();
    let mut g = core(&new, "x", now);
    assert_eq!(g.restore_retirement(rotation, Some(grave)), Ok(()));
    let mine = g.table.signed(new.id()).unwrap();
    assert_eq!(mine.rotation(), Ok(Some(rotation)));
    assert_eq!(tombstones_handed(&mut g, now), vec![old.id()]);
    // A core holding the old key does not retire itself from a file.
    let mut thief = core(&old, "x", now);
    assert!(thief.restore_retirement(rotation, None).is_err());
}
