//! The ring's unit tests and its proptest strategy.
#![allow(clippy::unwrap_used)]
use super::*;
use proptest::prelude::*;

fn range() -> AddrRange {
    AddrRange::parse("10.32.0.0/24").unwrap()
}

fn ids(n: u64) -> BTreeSet<PeerId> {
    (1..=n).map(PeerId).collect()
}

#[test]
fn genesis_is_deterministic_and_covers_the_range() {
    let a = Ring::genesis(range(), "voters", &ids(3));
    let b = Ring::genesis(range(), "voters", &ids(3));
    assert_eq!(a, b);
    assert_eq!(a.ranges_of(PeerId(1)), vec![(0, 84)]);
    assert_eq!(a.ranges_of(PeerId(3)), vec![(170, 255)]);
    assert_ne!(
        a.genesis_id(),
        Ring::genesis(range(), "seed", &ids(3)).genesis_id()
    );
}

#[test]
fn donation_splits_the_donor_range_and_keeps_the_rest() {
    let mut r = Ring::genesis(range(), "voters", &ids(2));
    assert!(r.donate(PeerId(1), 64, 100, PeerId(9)));
    assert_eq!(r.ranges_of(PeerId(1)), vec![(0, 63), (101, 127)]);
    assert_eq!(r.ranges_of(PeerId(9)), vec![(64, 100)]);
    assert!(
        !r.donate(PeerId(1), 120, 130, PeerId(9)),
        "crosses into another range"
    );
    assert!(!r.donate(PeerId(2), 0, 3, PeerId(9)), "not the owner");
}

#[test]
fn a_peer_cannot_write_entries_about_ranges_it_does_not_own() {
    let mine = Ring::genesis(range(), "voters", &ids(3));
    let mut forged = mine.clone();
    // Peer 3 claims part of peer 1's range.
    forged.entries.insert(
        10,
        Entry {
            owner: PeerId(3),
            version: 2,
            writer: PeerId(3),
            reclaim: false,
        },
    );
    let err = mine
        .validate_update(Some(PeerId(2)), &BTreeSet::new(), &forged)
        .unwrap_err();
    assert!(
        matches!(err, RingError::NotOwner { token: 10, .. }),
        "{err}"
    );
    // And a forged tie on our own token is refused too.
    let mut tie = mine.clone();
    tie.entries.insert(
        0,
        Entry {
            owner: PeerId(3),
            version: 1,
            writer: PeerId(3),
            reclaim: false,
        },
    );
    assert!(
        mine.validate_update(Some(PeerId(1)), &BTreeSet::new(), &tie)
            .is_err()
    );
    // Found by the ipam_allocator fuzz target: a peer sends our token
    // with the same version but another owner and *our* ID as writer
    // (winning the tie on owner), then chains a range after it.
    let mut impersonated = mine.clone();
    impersonated.entries.insert(
        0,
        Entry {
            owner: PeerId(5),
            version: 1,
            writer: PeerId(1),
            reclaim: false,
        },
    );
    impersonated.entries.insert(
        8,
        Entry {
            owner: PeerId(0),
            version: 12,
            writer: PeerId(12),
            reclaim: true,
        },
    );
    let err = mine
        .validate_update(Some(PeerId(1)), &BTreeSet::new(), &impersonated)
        .unwrap_err();
    assert!(matches!(err, RingError::NotOwner { token: 0, .. }), "{err}");
    // The honest donation by the owner is accepted.
    let mut honest = mine.clone();
    assert!(honest.donate(PeerId(1), 40, 84, PeerId(3)));
    mine.validate_update(Some(PeerId(2)), &BTreeSet::new(), &honest)
        .unwrap();
    honest
        .validate_update(Some(PeerId(1)), &BTreeSet::new(), &honest)
        .unwrap();
    // Router 1 itself never accepts a write in its name that it does not
    // have; only while relearning after a loss of state (`None`).
    assert!(
        mine.validate_update(Some(PeerId(1)), &BTreeSet::new(), &honest)
            .is_err()
    );
    mine.validate_update(None, &BTreeSet::new(), &honest)
        .unwrap();
}

#[test]
fn concurrent_reclaims_of_one_router_resolve_to_the_same_winner() {
    let base = Ring::genesis(range(), "voters", &ids(3));
    let mut r1 = base.clone();
    r1.reclaim(PeerId(1), PeerId(3));
    let mut r2 = base.clone();
    r2.reclaim(PeerId(2), PeerId(3));
    r1.validate_update(Some(PeerId(1)), &BTreeSet::new(), &r2)
        .unwrap();
    r2.validate_update(Some(PeerId(2)), &BTreeSet::new(), &r1)
        .unwrap();
    let mut a = r1.clone();
    a.join(&r2);
    let mut b = r2.clone();
    b.join(&r1);
    assert_eq!(a, b);
    assert_eq!(a.owner_at(200), Some(PeerId(2)));
}

#[test]
fn golden_bytes_of_the_ring_encoding() {
    let mut r = Ring::genesis(range(), "voters", &ids(2));
    r.donate(PeerId(1), 64, 127, PeerId(2));
    r.set_record(PeerId(2), 190, 1);
    let bytes = crate::wire::encode(&r.to_wire()).unwrap();
    let expected: Vec<u8> = vec![
        0, 10, 32, 0, 0, 24, // range: IpAddr::V4 10.32.0.0, prefix 24
        253, 85, 94, 201, 116, 123, 53, 184, 210, // genesis (varint u64: 253 + 8 bytes LE)
        6, 118, 111, 116, 101, 114, 115, // founding mode "voters"
        2, 1, 2, // founding owners 1, 2
        3, // 3 entries
        0, 1, 1, 1, 0,
        0, // token 0: owner 1, version 1, writer 1, no reclaim, unsigned (genesis)
        64, 2, 2, 1, 0, 0, // token 64: owner 2, version 2, writer 1 (not signed in this test)
        128, 2, 1, 2, 0, 0, // token 128: owner 2, version 1, writer 2
        0, // no tombstones
        1, 2, 1, 190, 1, 0, // record of peer 2: version 1, free 190, pods 1, unsigned
    ];
    assert_eq!(bytes, expected, "ring wire format changed: {bytes:?}");
    // Ring version 6 appends the titles: token 64's is the genesis entry
    // its writer held it by.
    let titles = crate::wire::encode(&r.titles_wire()).unwrap();
    let expected: Vec<u8> = vec![
        1,  // 1 title
        64, // for token 64
        1,  // 1 link
        0, 1, 1, 1, 0, 0, // token 0: owner 1, version 1, writer 1, no reclaim, unsigned
    ];
    assert_eq!(titles, expected, "titles wire format changed: {titles:?}");
    let back = Ring::from_wire(crate::wire::decode(&bytes).unwrap()).unwrap();
    assert_eq!(back.clone().with_titles(None).unwrap().titles().len(), 0);
    let back = back
        .with_titles(Some(crate::wire::decode(&titles).unwrap()))
        .unwrap();
    assert_eq!(back, r);
}

#[test]
fn unsorted_or_headless_rings_are_refused() {
    let r = Ring::genesis(range(), "voters", &ids(3));
    let mut w = r.to_wire();
    w.entries.swap(0, 1);
    assert!(matches!(Ring::from_wire(w), Err(RingError::NotSorted(_))));
    let mut w = r.to_wire();
    w.entries.remove(0);
    assert_eq!(Ring::from_wire(w), Err(RingError::NoStart));
    let mut w = r.to_wire();
    w.entries.push((256, w.entries[0].1, w.entries[0].2));
    assert_eq!(Ring::from_wire(w), Err(RingError::OutOfRange(256)));
}

/// Random rings over one range and genesis: a random token set (always
/// containing 0) with random entries, tombstones and records.
pub(crate) fn arb_ring() -> impl Strategy<Value = Ring> {
    let entry = (1u64..5, 0u64..4, 1u64..4, 0u64..4, any::<bool>()).prop_map(
        |(owner, _, version, writer, reclaim)| Entry {
            owner: PeerId(owner),
            version,
            writer: PeerId(writer),
            reclaim,
        },
    );
    (
        prop::collection::btree_map(0u128..256, entry, 0..8),
        prop::collection::btree_set((1u64..5, 1u64..5), 0..3),
        prop::collection::btree_map(1u64..5, (1u64..4, 0u128..10, 0u64..3), 0..4),
    )
        .prop_map(|(mut entries, tombs, recs)| {
            let mut ring = Ring::genesis(range(), "voters", &ids(2));
            let first = entries.remove(&0).unwrap_or(ring.entries[&0]);
            ring.entries.insert(0, first);
            ring.entries.extend(entries);
            ring.tombstones = tombs
                .into_iter()
                .map(|(a, b)| (PeerId(a), PeerId(b)))
                .collect();
            ring.peers = recs
                .into_iter()
                .map(|(p, (version, free, pods))| {
                    (
                        PeerId(p),
                        PeerRecord {
                            version,
                            free,
                            pods,
                        },
                    )
                })
                .collect();
            ring
        })
}

fn joined(a: &Ring, b: &Ring) -> Ring {
    let mut r = a.clone();
    r.join(b);
    r
}

proptest! {
    #[test]
    fn merge_is_commutative(a in arb_ring(), b in arb_ring()) {
        prop_assert_eq!(joined(&a, &b), joined(&b, &a));
    }

    #[test]
    fn merge_is_associative(a in arb_ring(), b in arb_ring(), c in arb_ring()) {
        prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
    }

    #[test]
    fn merge_is_idempotent(a in arb_ring(), b in arb_ring()) {
        prop_assert_eq!(joined(&a, &a), a.clone());
        let ab = joined(&a, &b);
        prop_assert_eq!(joined(&ab, &b), ab.clone());
    }

    #[test]
    fn wire_round_trip_is_exact(a in arb_ring()) {
        let bytes = crate::wire::encode(&a.to_wire()).unwrap();
        let back = Ring::from_wire(crate::wire::decode(&bytes).unwrap()).unwrap();
        prop_assert_eq!(back, a);
    }

    #[test]
    fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(w) = crate::wire::decode::<RingWire>(&bytes) {
            let _ = Ring::from_wire(w);
        }
    }
}

fn with_entry(base: &Ring, token: u128, owner: u64, writer: u64, version: u64) -> Ring {
    let mut r = base.clone();
    r.entries.insert(
        token,
        Entry {
            owner: PeerId(owner),
            version,
            writer: PeerId(writer),
            reclaim: false,
        },
    );
    r
}

#[test]
fn a_version_jump_over_another_routers_range_is_accepted_only_as_a_bounded_gift() {
    let mine = Ring::genesis(range(), "voters", &ids(3));
    let none = BTreeSet::new();
    // History we missed: 1 gave its range to 2, which gave it on to 3.
    mine.validate_update(Some(PeerId(3)), &none, &with_entry(&mine, 0, 3, 2, 3))
        .unwrap();
    // The same jump taking the range for its writer is refused.
    let taken = mine.validate_update(Some(PeerId(3)), &none, &with_entry(&mine, 0, 2, 2, 3));
    assert!(
        matches!(
            taken,
            Err(RingError::Jump {
                token: 0,
                from: 1,
                to: 3
            })
        ),
        "{taken:?}"
    );
    // So is a gift beyond the bound.
    let far = with_entry(&mine, 0, 3, 2, 2 + MAX_VERSION_JUMP);
    assert!(matches!(
        mine.validate_update(Some(PeerId(3)), &none, &far),
        Err(RingError::Jump { .. })
    ));
    // And any jump over our own range (router 1 knows its history).
    let gift = with_entry(&mine, 0, 3, 2, 3);
    assert!(mine.validate_update(Some(PeerId(1)), &none, &gift).is_err());
}

#[test]
fn a_new_tombstone_of_a_reachable_router_is_refused() {
    let mine = Ring::genesis(range(), "voters", &ids(3));
    let mut theirs = mine.clone();
    theirs.reclaim(PeerId(2), PeerId(1));
    let live: BTreeSet<PeerId> = [PeerId(1)].into();
    assert_eq!(
        mine.validate_update(Some(PeerId(3)), &live, &theirs),
        Err(RingError::TombstoneOfLive {
            dead: PeerId(1),
            by: PeerId(2)
        })
    );
    mine.validate_update(Some(PeerId(3)), &BTreeSet::new(), &theirs)
        .unwrap();
}

#[test]
fn versions_above_the_ceiling_and_foreign_foundings_do_not_decode() {
    let r = Ring::genesis(range(), "voters", &ids(2));
    let mut w = r.to_wire();
    w.entries[1].1.version = MAX_VERSION + 1;
    assert_eq!(
        Ring::from_wire(w),
        Err(RingError::VersionTooHigh(MAX_VERSION + 1))
    );
    let mut w = r.to_wire();
    w.founding.owners.push(PeerId(9));
    assert_eq!(Ring::from_wire(w), Err(RingError::BadFounding));
}

#[test]
fn a_joined_winner_keeps_its_writers_signature() {
    use crate::ipam::signed::TestCrypto;
    let base = Ring::genesis(range(), "voters", &ids(2));
    let mut theirs = base.clone();
    assert!(theirs.donate(PeerId(1), 64, 100, PeerId(2)));
    theirs.sign_own(PeerId(1), &TestCrypto::new(PeerId(1)));
    let mut a = base.clone();
    a.join(&theirs);
    assert_eq!(a, theirs, "entries and signatures");
    let mut b = theirs.clone();
    b.join(&base);
    assert_eq!(b, theirs);
}

#[test]
fn the_winner_of_a_competing_reclaim_may_write_over_the_losers_entry() {
    // Routers 2 and 3 both reclaim dead router 1; 3's reclaim wins (higher
    // owner) and 3 then gives the range to 4. A router holding 2's reclaim
    // that never saw 3's accepts 3's donation.
    let base = Ring::genesis(range(), "voters", &ids(3));
    let mut two = base.clone();
    two.reclaim(PeerId(2), PeerId(1));
    let mut three = base.clone();
    three.reclaim(PeerId(3), PeerId(1));
    assert!(three.donate(PeerId(3), 0, 84, PeerId(4)));
    two.validate_update(Some(PeerId(5)), &BTreeSet::new(), &three)
        .unwrap();
    // The loser may not do the same over the winner's reclaim.
    let mut loser = base.clone();
    loser.reclaim(PeerId(2), PeerId(1));
    assert!(loser.donate(PeerId(2), 0, 84, PeerId(4)));
    let mut winner = base.clone();
    winner.reclaim(PeerId(3), PeerId(1));
    assert!(
        winner
            .validate_update(Some(PeerId(5)), &BTreeSet::new(), &loser)
            .is_err()
    );
}
