//! The live identity switch (issue 20): the rotating side moves to its
//! successor key on the live link, started by it, by the peer's rekey, or
//! both at once, whichever side leads before and after; forged or
//! mismatched announcements close the link; a peer too old to follow gets
//! the link closed instead.

use super::*;
use crate::crypto::identity::Identity;
use crate::crypto::rotation::Rotation;
use crate::id::PeerId;
use rand::SeedableRng;
use rand::rngs::StdRng;

const DELAYED: PipeConfig = PipeConfig {
    min_delay: Duration::from_millis(30),
    max_delay: Duration::from_millis(30),
    ..PipeConfig::INSTANT
};

fn identity(seed: u64) -> Identity {
    Identity::generate(&mut StdRng::seed_from_u64(seed))
}

/// The identity of side `side` of a test pair (`link_config(1)` and `(2)`).
fn identity_of(side: usize) -> Identity {
    link_config(side as u64 + 1, SECRET).identity
}

/// A successor for side `rotating` whose new ID leads the peer (`leads`)
/// or not: with the old ID's order, one of the two flips the rule.
fn successor(rotating: usize, leads: bool) -> Identity {
    let peer = identity_of(1 - rotating).id();
    (100..)
        .map(identity)
        .find(|new| new.id().leads(peer) == leads)
        .unwrap()
}

fn rotation_to(rotating: usize, new: &Identity) -> Rotation {
    Rotation::sign(&identity_of(rotating), new, 1_800_000_000)
}

fn switch(pair: &mut LinkPair, side: usize, new: &Identity) -> SwitchOutcome {
    let (now, wall) = (pair.now, pair.wall());
    let rotation = rotation_to(side, new);
    pair.links[side]
        .switch_identity(now, wall, new.clone(), rotation)
        .unwrap()
}

/// Each case: the rotating side and whether its new ID leads the peer.
fn cases() -> impl Iterator<Item = (usize, bool)> {
    [(0, false), (0, true), (1, false), (1, true)].into_iter()
}

/// What a side reported of a switch: rekeys, whether its own switch
/// completed, the peer moves it saw.
#[derive(Debug, Default)]
struct Seen {
    keys: Vec<NewKeys>,
    switched: usize,
    moved: Vec<(PeerId, PeerId, Rotation)>,
}

fn seen(events: Vec<LinkEvent>) -> Seen {
    let mut seen = Seen::default();
    for event in events {
        match event {
            LinkEvent::Rekeyed(keys) => seen.keys.push(keys),
            LinkEvent::IdentitySwitched => seen.switched += 1,
            LinkEvent::PeerRotated { old, new, rotation } => seen.moved.push((old, new, rotation)),
            other => panic!("unexpected: {other:?}"),
        }
    }
    seen
}

/// After a switch: one matching keyset each (or `rekeys`), the rotating
/// side done, the peer naming it by the new ID; then records both ways and
/// rekeys from each side under the new key.
fn assert_switched(pair: &mut LinkPair, rotating: usize, new: &Identity, rekeys: usize) {
    let peer = 1 - rotating;
    let (r, p) = (
        seen(pair.take_events(rotating)),
        seen(pair.take_events(peer)),
    );
    assert_eq!(
        (r.keys.len(), p.keys.len()),
        (rekeys, rekeys),
        "{r:?} {p:?}"
    );
    for (a, b) in r.keys.iter().zip(&p.keys) {
        assert!(keysets_match(a, b));
    }
    assert_eq!(r.switched, 1, "the rotating side completed once");
    assert!(r.moved.is_empty() && p.switched == 0);
    let old = identity_of(rotating).id();
    assert_eq!(p.moved, [(old, new.id(), rotation_to(rotating, new))]);
    assert_eq!(pair.links[peer].peer(), Some(new.id()));
    assert_eq!(pair.links[rotating].me(), new.id());
    assert!(!pair.links[rotating].is_switching());
    assert!(!pair.links.iter().any(ControlLink::is_rekeying));
    records_flow_both_ways(pair);
    for side in [rotating, peer] {
        let (now, wall) = (pair.now, pair.wall());
        pair.links[side].rekey(now, wall).unwrap();
        pair.flush();
        pair.settle(1000);
        let (a, b) = (seen(pair.take_events(0)), seen(pair.take_events(1)));
        assert_eq!((a.keys.len(), b.keys.len()), (1, 1), "rekey by {side}");
        assert!(a.moved.is_empty() && b.moved.is_empty() && a.switched + b.switched == 0);
    }
    records_flow_both_ways(pair);
}

#[test]
fn a_switch_by_the_rotating_side_moves_the_peer_and_keeps_the_link() {
    for (rotating, leads) in cases() {
        let (mut pair, _) = established(DELAYED);
        let new = successor(rotating, leads);
        assert_eq!(switch(&mut pair, rotating, &new), SwitchOutcome::Switching);
        assert!(pair.links[rotating].is_rekeying() && pair.links[rotating].is_switching());
        pair.flush();
        pair.settle(1000);
        assert_switched(&mut pair, rotating, &new, 1);
        assert!(pair.links.iter().all(ControlLink::is_established));
    }
}

/// The peer starts a rekey, and `switch_after` later (its message 1 takes
/// 30 ms) the rotating side switches: the switch completes in one rekey,
/// with no side waiting out [`REKEY_TIMEOUT`].
fn peer_rekey_then_switch(switch_after: Duration) {
    for (rotating, leads) in cases() {
        let (mut pair, _) = established(DELAYED);
        let started = pair.now;
        let new = successor(rotating, leads);
        let (now, wall) = (pair.now, pair.wall());
        pair.links[1 - rotating].rekey(now, wall).unwrap();
        pair.flush();
        pair.run_until(started + switch_after);
        switch(&mut pair, rotating, &new);
        pair.flush();
        pair.settle(1000);
        assert!(
            pair.now - started < REKEY_TIMEOUT,
            "no side waited out a rekey: {rotating} {leads}"
        );
        assert_switched(&mut pair, rotating, &new, 1);
    }
}

#[test]
fn a_rekey_the_peer_starts_as_the_switch_starts_completes_it_without_a_stall() {
    // Both rekeys cross on the wire: one wins under the IDs both sides
    // agreed on before the switch.
    peer_rekey_then_switch(Duration::ZERO);
}

#[test]
fn the_peers_rekey_in_flight_at_the_switch_is_answered_under_the_new_key() {
    peer_rekey_then_switch(Duration::from_millis(10));
}

#[test]
fn a_switch_during_a_rekey_under_the_old_key_follows_it() {
    for (rotating, leads) in cases() {
        for rekeying in [0, 1] {
            let (mut pair, _) = established(PipeConfig::INSTANT);
            let new = successor(rotating, leads);
            let (now, wall) = (pair.now, pair.wall());
            pair.links[rekeying].rekey(now, wall).unwrap();
            // Message 1 reaches the peer, which answers under the old key.
            let step1 = pair.links[rekeying].poll_transmit().unwrap();
            pair.links[1 - rekeying].handle_bytes(now, &step1);
            assert!(pair.links.iter().all(ControlLink::is_rekeying));
            switch(&mut pair, rotating, &new);
            assert!(pair.links[rotating].is_switching());
            pair.flush();
            pair.settle(1000);
            // The old key's rekey, then the switch's.
            assert_switched(&mut pair, rotating, &new, 2);
        }
    }
}

#[test]
fn a_switch_under_delay_and_chunking_with_records_in_flight_loses_nothing() {
    let pipe = PipeConfig {
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(90),
        stall: 0.05,
        stall_delay: Duration::from_millis(400),
        chunking: Chunking::Random(40),
    };
    let (mut pair, _) = established(pipe);
    let new = successor(1, true);
    let mut sent = [Vec::new(), Vec::new()];
    let mut received = [Vec::new(), Vec::new()];
    for round in 0..60u32 {
        for (side, sent) in sent.iter_mut().enumerate() {
            let message = gossip(round.to_be_bytes().to_vec());
            pair.links[side].send(&message).unwrap();
            sent.push(message);
        }
        if round == 10 {
            switch(&mut pair, 1, &new);
        }
        if round == 11 {
            let (now, wall) = (pair.now, pair.wall());
            pair.links[0].rekey(now, wall).unwrap();
        }
        pair.flush();
        let next = pair.now + Duration::from_millis(15);
        pair.run_until(next);
        collect_messages(&mut pair, &mut received);
    }
    pair.settle(10_000);
    collect_messages(&mut pair, &mut received);
    assert_eq!(received[1], sent[0], "every message once, in order");
    assert_eq!(received[0], sent[1], "every message once, in order");
    assert_eq!(pair.links[0].peer(), Some(new.id()));
    assert!(!pair.links[1].is_switching());
}

fn collect_messages(pair: &mut LinkPair, received: &mut [Vec<ControlMessage>; 2]) {
    for (side, received) in received.iter_mut().enumerate() {
        for event in pair.take_events(side) {
            match event {
                LinkEvent::Message(m) => received.push(m),
                LinkEvent::Rekeyed(_)
                | LinkEvent::IdentitySwitched
                | LinkEvent::PeerRotated { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }
}

/// Side `rotating` runs a rekey under `sent_under` carrying `rotation`
/// (what a hostile or broken peer could send), started by side `starter`.
fn hostile_switch(rotating: usize, starter: usize, sent_under: Identity, rotation: Rotation) {
    let (mut pair, _) = established(PipeConfig::INSTANT);
    let link = &mut pair.links[rotating];
    link.switch = Some(super::super::switch::Switch {
        rotation,
        old_me: link.me,
        wall_clock: WALL_START,
        at: pair.now,
    });
    link.config.identity = sent_under;
    let (now, wall) = (pair.now, pair.wall());
    pair.links[starter].rekey(now, wall).unwrap();
    pair.flush();
    pair.settle(1000);
    let peer = 1 - rotating;
    let theirs = pair.take_events(peer);
    assert!(
        matches!(failure(&theirs), Some(LinkError::BadRotation(_))),
        "{theirs:?}"
    );
    assert!(
        theirs
            .iter()
            .all(|e| !matches!(e, LinkEvent::PeerRotated { .. }))
    );
    let ours = pair.take_events(rotating);
    assert!(
        ours.iter().any(|e| matches!(e,
            LinkEvent::Closed(CloseReason::ByPeer(reason)) if reason.starts_with("rekey refused"))),
        "the rotating side is told: {ours:?}"
    );
    assert!(pair.links[peer].is_ended());
}

#[test]
fn forged_or_mismatched_announcements_are_refused_and_the_link_closed() {
    for rotating in [0, 1] {
        for starter in [0, 1] {
            let (old, new, other) = (identity_of(rotating), identity(200), identity(201));
            // Someone else's key handed over: not the link's key.
            hostile_switch(
                rotating,
                starter,
                new.clone(),
                Rotation::sign(&other, &new, 7),
            );
            // The link's key handed to another key than the rekey's.
            hostile_switch(
                rotating,
                starter,
                other.clone(),
                Rotation::sign(&old, &new, 7),
            );
            // A signature that does not verify.
            let mut bytes = Rotation::sign(&old, &new, 7).encode();
            bytes[100] ^= 1;
            let forged = Rotation::decode(&bytes).unwrap();
            hostile_switch(rotating, starter, new.clone(), forged);
        }
    }
}

#[test]
fn a_rekey_under_a_new_key_without_an_announcement_is_refused_as_before() {
    for starter in [0, 1] {
        let (mut pair, _) = established(PipeConfig::INSTANT);
        pair.links[1].config.identity = identity(300);
        let (now, wall) = (pair.now, pair.wall());
        pair.links[starter].rekey(now, wall).unwrap();
        pair.flush();
        pair.settle(1000);
        assert!(matches!(
            failure(&pair.take_events(0)),
            Some(LinkError::RekeyUnderOtherKey)
        ));
    }
}

#[test]
fn a_peer_too_old_to_follow_gets_the_link_closed_to_be_redialled() {
    for rotating in [0, 1] {
        let mut configs = [link_config(1, SECRET), link_config(2, SECRET)];
        configs[1 - rotating].hello.versions.control.max =
            crate::control::proto::CONTROL_FAMILY_VERSION;
        let mut pair = pair_with(configs, [PipeConfig::INSTANT; 2]);
        pair.settle(1000);
        let _ = (pair.take_events(0), pair.take_events(1));
        let new = successor(rotating, true);
        assert_eq!(switch(&mut pair, rotating, &new), SwitchOutcome::Closed);
        pair.flush();
        pair.settle(1000);
        assert!(matches!(
            &pair.take_events(1 - rotating)[..],
            [LinkEvent::Closed(CloseReason::ByPeer(reason))] if reason.contains("identity key rotated")
        ));
        assert!(pair.links.iter().all(ControlLink::is_ended));
    }
}

#[test]
fn a_switch_is_refused_before_the_link_is_up_or_with_a_wrong_announcement() {
    let new = identity(400);
    let rotation = Rotation::sign(&identity_of(0), &new, 7);
    let mut link = ControlLink::initiator(
        link_config(1, SECRET),
        Box::new(CountingIndices(0)),
        Instant::now(),
        WALL_START,
    );
    assert!(matches!(
        link.switch_identity(Instant::now(), WALL_START, new.clone(), rotation),
        Err(LinkError::NotEstablished)
    ));
    let (mut pair, _) = established(PipeConfig::INSTANT);
    let (now, wall) = (pair.now, pair.wall());
    let wrong = [
        (identity(401), rotation),
        (new.clone(), Rotation::sign(&identity_of(1), &new, 7)),
    ];
    for (identity, rotation) in wrong {
        assert!(matches!(
            pair.links[0].switch_identity(now, wall, identity, rotation),
            Err(LinkError::SwitchRefused(_))
        ));
        assert!(!pair.links[0].is_switching() && !pair.links[0].is_rekeying());
    }
    assert_eq!(pair.links[0].me(), identity_of(0).id());
    assert_eq!(
        pair.links[0]
            .switch_identity(now, wall, new.clone(), rotation)
            .unwrap(),
        SwitchOutcome::Switching
    );
    let again = Rotation::sign(&new, &identity(402), 8);
    assert!(matches!(
        pair.links[0].switch_identity(now, wall, identity(402), again),
        Err(LinkError::SwitchRefused(_))
    ));
}
