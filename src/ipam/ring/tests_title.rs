//! Signed titles (`title.rs`): honest splits pass to routers that missed
//! them, forgeries of every kind are refused.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::ipam::signed::{RingCrypto, SignError, TestCrypto, Verifier, entry_message};

fn range() -> AddrRange {
    AddrRange::parse("10.32.0.0/24").unwrap()
}

/// Owners 1 ([0, 128)) and 2 ([128, 256)), every entry at version 1.
fn genesis() -> Ring {
    Ring::genesis(range(), "voters", &[PeerId(1), PeerId(2)].into())
}

fn crypto(id: u64) -> TestCrypto {
    TestCrypto::new(PeerId(id))
}

/// `ring` after `me` gave `start..=end` to `to` and signed its writes.
fn give(ring: &Ring, me: u64, start: u128, end: u128, to: u64) -> Ring {
    let mut r = ring.clone();
    assert!(r.donate(PeerId(me), start, end, PeerId(to)));
    r.sign_own(PeerId(me), &crypto(me));
    r
}

fn entry(owner: u64, writer: u64, version: u64) -> Entry {
    Entry {
        owner: PeerId(owner),
        version,
        writer: PeerId(writer),
        reclaim: false,
    }
}

fn link(token: u128, e: Entry) -> Link {
    let signature = (e.version > 1).then(|| {
        let genesis = genesis().genesis_id();
        crypto(e.writer.0).sign(&entry_message(genesis, token, &e))
    });
    Link {
        token,
        entry: e,
        signature,
    }
}

/// The signatures of `theirs` as a receiver holding `base` checks them,
/// every writer's key known.
fn signatures(base: &Ring, theirs: &Ring) -> Result<(), RingError> {
    let mut v = Verifier::default();
    for i in 0..10 {
        v.learn_key(PeerId(i), TestCrypto::public_key(PeerId(i)));
    }
    let me = crypto(0);
    theirs.check_signatures(Some(base), &mut |w, m, s| {
        v.check(&me, w, m, s).map_err(RingError::from)
    })
}

/// Judged by router 2 (which owns none of the ranges in question) with
/// titles required, after the signatures.
fn judge(base: &Ring, theirs: &Ring) -> Result<Judged, RingError> {
    signatures(base, theirs)?;
    base.judge_update(Some(PeerId(2)), &BTreeSet::new(), theirs, true)
}

/// A (1) gives the top half of its range to B (3); B gives the bottom of
/// that on to C (4), keeping the rest.
fn splits() -> (Ring, Ring) {
    let first = give(&genesis(), 1, 64, 127, 3);
    let second = give(&first, 3, 64, 95, 4);
    (first, second)
}

#[test]
fn a_donation_carries_the_entry_its_writer_held_the_address_by() {
    let (first, second) = splits();
    assert_eq!(first.title(64).unwrap(), &[link(0, entry(1, 1, 1))]);
    let chain = [link(64, entry(3, 1, 2)), link(0, entry(1, 1, 1))];
    assert_eq!(second.title(64).unwrap(), &chain, "the gift");
    assert_eq!(second.title(96).unwrap(), &chain, "the part kept");
}

#[test]
fn a_router_that_saw_neither_split_accepts_both() {
    let (_, second) = splits();
    let judged = judge(&genesis(), &second).unwrap();
    assert_eq!(judged.titled_jumps, 1);
    assert_eq!(judged.untitled_jumps, 0);
}

#[test]
fn a_router_that_saw_only_the_first_split_accepts_the_second() {
    let (first, second) = splits();
    judge(&first, &second).unwrap();
    // And a third step, which is a jump for it: C gives on to D (5).
    let third = give(&second, 4, 64, 79, 5);
    assert_eq!(third.title(64).unwrap().len(), 3);
    assert_eq!(judge(&first, &third).unwrap().titled_jumps, 1);
    assert_eq!(judge(&genesis(), &third).unwrap().titled_jumps, 1);
}

#[test]
fn a_chain_is_cut_at_the_jump_bound_and_a_router_that_missed_more_refuses() {
    // 1 gives [64, 127] to 3; 3 and 4 then pass it back and forth, each
    // hop one version up.
    let hops = |n: u64| {
        let mut ring = give(&genesis(), 1, 64, 127, 3);
        for i in 0..n {
            let (me, to) = if i % 2 == 0 { (3, 4) } else { (4, 3) };
            ring = give(&ring, me, 64, 127, to);
        }
        ring
    };
    // A router that saw only the genesis accepts up to the jump bound:
    // the title reaches back to 1's gift.
    let within = hops(MAX_VERSION_JUMP - 1);
    assert_eq!(within.entries()[&64].version, 1 + MAX_VERSION_JUMP);
    assert_eq!(within.title(64).unwrap().len(), MAX_TITLE_LINKS);
    assert_eq!(judge(&genesis(), &within).unwrap().titled_jumps, 1);
    // One more hop: the title is cut, and the jump is beyond the bound.
    let beyond = hops(MAX_VERSION_JUMP);
    assert_eq!(beyond.title(64).unwrap().len(), MAX_TITLE_LINKS);
    let err = judge(&genesis(), &beyond).unwrap_err();
    assert!(matches!(err, RingError::Jump { token: 64, .. }), "{err}");
}

/// The attack: member 3 gives B's (2's) range to 4 at B's version
/// plus two, to a router (1) that never saw B's history.
fn attack(title: Option<Vec<Link>>) -> Ring {
    let mut forged = genesis();
    forged.insert_signed(128, entry(4, 3, 3), &crypto(3));
    if let Some(t) = title {
        forged.titles.insert(128, t);
    }
    forged
}

fn judged_by_1(base: &Ring, theirs: &Ring, require: bool) -> Result<Judged, RingError> {
    signatures(base, theirs)?;
    base.judge_update(Some(PeerId(1)), &BTreeSet::new(), theirs, require)
}

#[test]
fn a_member_giving_another_routers_range_away_is_refused_with_or_without_a_title() {
    let base = genesis();
    let reason = |r: Result<Judged, RingError>| match r {
        Err(RingError::Title { token: 128, reason }) => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        reason(judged_by_1(&base, &attack(None), true)),
        TitleError::Missing
    );
    // A title the forger signed itself never reaches the owner's write.
    let own = vec![link(128, entry(3, 3, 2))];
    assert_eq!(
        reason(judged_by_1(&base, &attack(Some(own)), true)),
        TitleError::Unconnected
    );
    // Before titles (a sender that sends none) the bounded jump passed:
    // this is the hole titles close, counted where it is still open.
    let judged = judged_by_1(&base, &attack(None), false).unwrap();
    assert_eq!(judged.untitled_jumps, 1);
}

/// The honest second split with link 0 of the gift's title replaced.
fn with_first_link(l: Link) -> Ring {
    let (_, mut second) = splits();
    second.titles.get_mut(&64).unwrap()[0] = l;
    second
}

#[test]
fn a_title_link_signed_by_another_router_is_refused() {
    let mut l = link(64, entry(3, 1, 2));
    l.signature = Some(crypto(9).sign(&entry_message(genesis().genesis_id(), 64, &l.entry)));
    let err = judge(&genesis(), &with_first_link(l)).unwrap_err();
    assert_eq!(
        err,
        RingError::Signature(SignError::BadSignature(PeerId(1)))
    );
    // A "genesis" link that is not the founding's entry.
    let err = judge(&genesis(), &with_first_link(link(64, entry(3, 1, 1)))).unwrap_err();
    assert_eq!(
        err,
        RingError::Signature(SignError::BadSignature(PeerId(1)))
    );
}

#[test]
fn forged_title_links_are_refused_by_reason() {
    let reason = |l: Link| match judge(&genesis(), &with_first_link(l)) {
        Err(RingError::Title { token: 64, reason }) => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        reason(link(64, entry(3, 1, 3))),
        TitleError::NotDescending,
        "the link's version is the entry's"
    );
    assert_eq!(
        reason(link(64, entry(5, 1, 2))),
        TitleError::OwnerNotWriter,
        "owned by someone else than the gift's writer"
    );
    assert_eq!(reason(link(65, entry(3, 1, 2))), TitleError::TokenAbove);
    let (_, mut long) = splits();
    let mut chain = long.title(64).unwrap().to_vec();
    chain.extend(vec![chain[1]; MAX_TITLE_LINKS]);
    long.titles.insert(64, chain);
    assert!(matches!(
        judge(&genesis(), &long),
        Err(RingError::Title {
            token: 64,
            reason: TitleError::TooLong
        })
    ));
}

#[test]
fn a_title_over_a_range_cut_since_is_refused() {
    // 1 gave [32, 127] to 7, and the receiver saw it; 1 then gives 7's
    // [64, 127] to 4 at 7's version plus two, on its genesis title.
    let base = give(&genesis(), 1, 32, 127, 7);
    let mut forged = base.clone();
    forged.insert_signed(64, entry(4, 1, 4), &crypto(1));
    forged.titles.insert(64, vec![link(0, entry(1, 1, 1))]);
    assert!(matches!(
        judge(&base, &forged),
        Err(RingError::Title {
            token: 64,
            reason: TitleError::Cut(32)
        })
    ));
    // The same at the very token: 1 gave all of [0, 127] to 5 and then
    // gives it to 4 on the genesis entry it had given away.
    let base = give(&genesis(), 1, 0, 127, 5);
    let mut forged = base.clone();
    forged.insert_signed(0, entry(4, 1, 4), &crypto(1));
    forged.titles.insert(0, vec![link(0, entry(1, 1, 1))]);
    assert!(matches!(
        judge(&base, &forged),
        Err(RingError::Title {
            token: 0,
            reason: TitleError::Cut(0)
        })
    ));
}

#[test]
fn titles_travel_with_the_ring_and_an_old_sender_is_marked_untitled() {
    use crate::ipam::message::Message;
    let (_, second) = splits();
    let bytes = Message::Ring(second.clone()).encode();
    let Message::Ring(back) = Message::decode(&bytes).unwrap() else {
        panic!("not a ring");
    };
    assert_eq!(back, second);
    assert!(!back.untitled());
    // A sender below version 6 appends nothing: judged as before titles.
    let bytes = Message::Ring(second.clone().without_titles()).encode();
    let Message::Ring(old) = Message::decode(&bytes).unwrap() else {
        panic!("not a ring");
    };
    assert!(old.untitled() && old.titles().is_empty());
    // Titles on a token the ring does not hold, or too long, are malformed.
    let mut bad = second.titles_wire();
    bad[0].0 = 1;
    assert!(second.clone().with_titles(Some(bad)).is_err());
    let mut bad = second.titles_wire();
    bad[0].1 = vec![bad[0].1[0]; MAX_TITLE_LINKS + 1];
    assert_eq!(
        second.clone().with_titles(Some(bad)),
        Err(RingError::BadTitle(64))
    );
}

#[test]
fn a_join_takes_the_title_with_the_winning_entry() {
    let (first, second) = splits();
    let mut mine = genesis();
    mine.join(&first);
    assert_eq!(mine.title(64), first.title(64));
    mine.join(&second);
    assert_eq!(mine.title(64), second.title(64));
    assert_eq!(mine.title(96), second.title(96));
    // A reclaim's title is the reclaimed entry and its title.
    let before = mine.entries()[&64];
    mine.reclaim(PeerId(2), PeerId(4));
    assert_eq!(mine.title(64).unwrap()[0].entry, before);
}
