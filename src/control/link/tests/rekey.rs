//! Rekeys: either side or both at once, under delay, without an answer,
//! under rotated secrets, and the record keys' expiry.

use super::*;

#[test]
fn a_rekey_started_by_either_side_installs_one_matching_keyset_on_each() {
    let (mut pair, first) = established(PipeConfig::INSTANT);
    for side in [0, 1, 0] {
        let (now, wall) = (pair.now, pair.wall());
        pair.links[side].rekey(now, wall).unwrap();
        assert!(pair.links[side].is_rekeying());
        pair.flush();
        pair.settle(100);
        let (a, b) = (rekeyed(pair.take_events(0)), rekeyed(pair.take_events(1)));
        assert_eq!((a.len(), b.len()), (1, 1), "side {side}");
        assert!(keysets_match(&a[0], &b[0]));
        assert!(
            pair.links[side]
                .poll_timeout()
                .is_some_and(|(_, timer)| timer == Timer::KeyExpiry),
            "only the keys' expiry stays armed"
        );
        assert!(a[0].initiator == (side == 0));
        assert_ne!(a[0].local_index, first[0].local_index);
    }
    // Records still flow under the switched TCP keys.
    records_flow_both_ways(&mut pair);
}

#[test]
fn when_both_sides_start_a_rekey_at_once_the_leaders_wins() {
    let delayed = PipeConfig {
        min_delay: Duration::from_millis(30),
        max_delay: Duration::from_millis(30),
        ..PipeConfig::INSTANT
    };
    let (mut pair, _) = established(delayed);
    let leader = link_config(1, SECRET)
        .identity
        .id()
        .leads(link_config(2, SECRET).identity.id());
    let leader_side = if leader { 0 } else { 1 };
    let (now, wall) = (pair.now, pair.wall());
    pair.links[0].rekey(now, wall).unwrap();
    pair.links[1].rekey(now, wall).unwrap();
    pair.flush();
    pair.settle(100);
    let keys = [rekeyed(pair.take_events(0)), rekeyed(pair.take_events(1))];
    assert_eq!(
        (keys[0].len(), keys[1].len()),
        (1, 1),
        "exactly one new keyset each"
    );
    assert!(keysets_match(&keys[0][0], &keys[1][0]));
    assert!(keys[leader_side][0].initiator, "the leader's handshake won");
    assert!(!pair.links.iter().any(ControlLink::is_rekeying));
}

#[test]
fn a_rekey_under_delayed_tcp_with_records_in_flight_loses_nothing() {
    let delayed = |ms| PipeConfig {
        min_delay: Duration::from_millis(ms),
        max_delay: Duration::from_millis(ms * 4),
        stall: 0.05,
        stall_delay: Duration::from_millis(800),
        chunking: Chunking::Random(50),
    };
    let mut pair = pair_with(
        [link_config(1, SECRET), link_config(2, SECRET)],
        [delayed(50), delayed(120)],
    );
    pair.settle(10_000);
    let _ = (pair.take_events(0), pair.take_events(1));
    let mut sent = [Vec::new(), Vec::new()];
    let mut received = [Vec::new(), Vec::new()];
    let mut keys = [Vec::new(), Vec::new()];
    let mut rekeys = 0;
    let mut collect = |pair: &mut LinkPair| {
        for side in 0..2 {
            for event in pair.take_events(side) {
                match event {
                    LinkEvent::Message(m) => received[side].push(m),
                    LinkEvent::Rekeyed(k) => keys[side].push(k),
                    other => panic!("{other:?}"),
                }
            }
        }
    };
    for round in 0..200u32 {
        for (side, sent) in sent.iter_mut().enumerate() {
            let message = gossip(round.to_be_bytes().to_vec());
            pair.links[side].send(&message).unwrap();
            sent.push(message);
        }
        if round % 20 == 5 && !pair.links.iter().any(ControlLink::is_rekeying) {
            let (now, wall) = (pair.now, pair.wall());
            pair.links[rekeys % 2].rekey(now, wall).unwrap();
            rekeys += 1;
        }
        pair.flush();
        let next = pair.now + Duration::from_millis(25);
        pair.run_until(next);
        collect(&mut pair);
    }
    pair.settle(100_000);
    collect(&mut pair);
    assert_eq!(received[1], sent[0], "every message once, in order");
    assert_eq!(received[0], sent[1], "every message once, in order");
    assert!(rekeys >= 2, "{rekeys}");
    assert_eq!((keys[0].len(), keys[1].len()), (rekeys, rekeys));
    for (a, b) in keys[0].iter().zip(&keys[1]) {
        assert!(keysets_match(a, b));
    }
}

#[test]
fn a_rekey_that_gets_no_answer_times_out_and_keeps_the_keys() {
    let (mut pair, _) = established(PipeConfig::INSTANT);
    let (now, wall) = (pair.now, pair.wall());
    pair.links[0].rekey(now, wall).unwrap();
    // The step-1 record is lost in the harness (never delivered).
    assert!(pair.links[0].poll_transmit().is_some());
    assert_eq!(
        pair.links[0].poll_timeout(),
        Some((now + REKEY_TIMEOUT, Timer::Rekey))
    );
    pair.links[0].handle_timeout(now + REKEY_TIMEOUT);
    assert!(!pair.links[0].is_rekeying() && pair.links[0].is_established());
    assert!(pair.links[0].poll_event().is_none());
}

fn secrets(lines: &[&[u8]]) -> ClusterSecrets {
    ClusterSecrets::parse(&lines.join(&b'\n')).unwrap()
}

fn rekey_on(pair: &mut LinkPair, side: usize) {
    let (now, wall) = (pair.now, pair.wall());
    pair.links[side].rekey(now, wall).unwrap();
    pair.flush();
    pair.settle(1000);
}

#[test]
fn a_rekey_under_a_secret_the_peer_no_longer_holds_closes_the_link_on_both_sides() {
    for rekeying_side in [0, 1] {
        let (mut pair, _) = established(PipeConfig::INSTANT);
        // Side 0 moved to a new secret; side 1 was left on the old one.
        pair.links[0].set_secrets(secrets(&[OTHER_SECRET]));
        rekey_on(&mut pair, rekeying_side);
        let refuser = 1 - rekeying_side;
        let theirs = pair.take_events(refuser);
        let ours = pair.take_events(rekeying_side);
        assert!(
            matches!(failure(&theirs), Some(LinkError::RekeyRefused(_))),
            "the side that cannot open the rekey fails: {theirs:?}"
        );
        assert_eq!(
            failure(&theirs).unwrap().handshake_failure(),
            HandshakeFailure::Refused
        );
        match &ours[..] {
            [LinkEvent::Closed(CloseReason::ByPeer(reason))] => {
                assert!(reason.starts_with("rekey refused"), "{reason}");
            }
            other => panic!("the rekeying side is told: {other:?}"),
        }
        assert!(pair.links.iter().all(ControlLink::is_ended));
        assert!(pair.links.iter().all(|l| l.poll_timeout().is_none()));
    }
}

#[test]
fn the_readme_rotation_keeps_the_link_and_cuts_off_only_a_router_left_on_the_old_secret() {
    let (old, new) = (SECRET, OTHER_SECRET);
    // Three steps as the README says; each side rekeys after each step.
    let steps: [[&[&[u8]]; 2]; 3] = [
        [&[old, new], &[old, new]],
        [&[new, old], &[new, old]],
        [&[new], &[new]],
    ];
    let (mut pair, _) = established(PipeConfig::INSTANT);
    for step in steps {
        for (link, lines) in pair.links.iter_mut().zip(step) {
            link.set_secrets(secrets(lines));
        }
        for side in [0, 1] {
            rekey_on(&mut pair, side);
            assert_eq!(rekeyed(pair.take_events(0)).len(), 1);
            assert_eq!(rekeyed(pair.take_events(1)).len(), 1);
        }
    }
    assert!(pair.links.iter().all(ControlLink::is_established));
    // The same rotation where side 1 never gets the new secret: the link
    // survives while side 0 still holds the old one, and ends at the first
    // rekey after side 0 removed it.
    let (mut pair, _) = established(PipeConfig::INSTANT);
    pair.links[0].set_secrets(secrets(&[old, new]));
    rekey_on(&mut pair, 1);
    assert_eq!(rekeyed(pair.take_events(0)).len(), 1, "old still first");
    let _ = pair.take_events(1);
    pair.links[0].set_secrets(secrets(&[new]));
    rekey_on(&mut pair, 1);
    assert!(matches!(
        failure(&pair.take_events(0)),
        Some(LinkError::RekeyRefused(_))
    ));
    assert!(pair.links.iter().all(ControlLink::is_ended));
}

#[test]
fn record_keys_never_outlive_reject_after_and_each_rekey_pushes_the_expiry() {
    let (mut pair, _) = established(PipeConfig::INSTANT);
    let t0 = pair.now;
    for link in &pair.links {
        assert_eq!(
            link.poll_timeout(),
            Some((t0 + REJECT_AFTER, Timer::KeyExpiry))
        );
    }
    // Rekeys every 100 s keep it alive for 10 minutes.
    for round in 1..=6u32 {
        let at = t0 + Duration::from_secs(100) * round;
        pair.run_until(at);
        rekey_on(&mut pair, (round % 2) as usize);
        let (a, b) = (pair.take_events(0), pair.take_events(1));
        assert!(
            failure(&a).is_none() && failure(&b).is_none(),
            "round {round}"
        );
        for link in &pair.links {
            assert_eq!(link.poll_timeout().unwrap().0, at + REJECT_AFTER);
        }
    }
    // Then no more rekeys: both sides fail at the reject age, not after.
    let last = pair.now;
    pair.run_until(last + REJECT_AFTER - Duration::from_millis(1));
    assert!(pair.links.iter().all(ControlLink::is_established));
    pair.run_until(last + REJECT_AFTER);
    for side in 0..2 {
        assert!(matches!(
            failure(&pair.take_events(side)),
            Some(LinkError::KeysExpired)
        ));
    }
}

#[test]
fn a_peer_that_never_switches_its_tcp_key_is_cut_off_at_the_old_keys_reject_age() {
    let (mut pair, _) = established(PipeConfig::INSTANT);
    let t0 = pair.now;
    pair.run_until(t0 + Duration::from_secs(100));
    // Side 0 rekeys; side 1's step-3 answer and key switch are lost.
    let (now, wall) = (pair.now, pair.wall());
    pair.links[0].rekey(now, wall).unwrap();
    let step1 = pair.links[0].poll_transmit().unwrap();
    pair.links[1].handle_bytes(now, &step1);
    let step2 = pair.links[1].poll_transmit().unwrap();
    while pair.links[1].poll_transmit().is_some() {}
    pair.links[0].handle_bytes(now, &step2);
    while pair.links[0].poll_transmit().is_some() {}
    // Side 0 sends under new keys, but still opens under the first ones.
    assert_eq!(
        pair.links[0].poll_timeout(),
        Some((t0 + REJECT_AFTER, Timer::KeyExpiry))
    );
    pair.links[0].handle_timeout(t0 + REJECT_AFTER);
    assert!(matches!(
        pair.links[0].poll_event(),
        Some(LinkEvent::Rekeyed(_))
    ));
    assert!(matches!(
        pair.links[0].poll_event(),
        Some(LinkEvent::Failed(LinkError::KeysExpired))
    ));
}
