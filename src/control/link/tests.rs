//! The control link in memory on a virtual clock (quinn's `Pair` style):
//! [`crate::sim::link::LinkPair`] joins two links by TCP-like byte pipes.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::control::proto::FRAGMENT_PIECE;
use crate::crypto::freshness::Msg1Guard;
use crate::sim::link::{
    Chunking, CountingIndices, LinkPair, PipeConfig, WALL_START, keysets_match, link_config,
};

const SECRET: &[u8] = b"the cluster secret of these tests, 32+ bytes";
const OTHER_SECRET: &[u8] = b"another cluster's secret, also 32+ bytes long";

fn pair_with(configs: [LinkConfig; 2], pipes: [PipeConfig; 2]) -> LinkPair {
    LinkPair::new(1, configs, pipes)
}

fn pair(pipe: PipeConfig) -> LinkPair {
    pair_with(
        [link_config(1, SECRET), link_config(2, SECRET)],
        [pipe, pipe],
    )
}

/// A pair whose handshake completed; returns both sides' first keysets.
fn established(pipe: PipeConfig) -> (LinkPair, [NewKeys; 2]) {
    let mut pair = pair(pipe);
    pair.settle(10_000);
    let keys = [0, 1].map(|side| match pair.take_events(side).pop() {
        Some(LinkEvent::Up(up)) => up.keys,
        other => panic!("side {side} not up: {other:?}"),
    });
    (pair, keys)
}

fn gossip(bytes: Vec<u8>) -> ControlMessage {
    ControlMessage::Gossip {
        channel: 1,
        payload: bytes,
    }
}

fn messages(events: Vec<LinkEvent>) -> Vec<ControlMessage> {
    events
        .into_iter()
        .map(|event| match event {
            LinkEvent::Message(message) => message,
            other => panic!("not a message: {other:?}"),
        })
        .collect()
}

fn rekeyed(events: Vec<LinkEvent>) -> Vec<NewKeys> {
    events
        .into_iter()
        .filter_map(|event| match event {
            LinkEvent::Rekeyed(keys) => Some(keys),
            LinkEvent::Message(_) => None,
            other => panic!("unexpected: {other:?}"),
        })
        .collect()
}

fn failure(events: &[LinkEvent]) -> Option<&LinkError> {
    events.iter().find_map(|event| match event {
        LinkEvent::Failed(e) => Some(e),
        _ => None,
    })
}

fn responder(secret: &[u8]) -> ControlLink {
    ControlLink::responder(
        link_config(2, secret),
        Box::new(CountingIndices(0)),
        Instant::now(),
    )
}

fn msg1() -> Vec<u8> {
    let mut initiator = ControlLink::initiator(
        link_config(1, SECRET),
        Box::new(CountingIndices(0)),
        Instant::now(),
        WALL_START,
    );
    initiator.poll_transmit().unwrap()
}

fn drain_events(link: &mut ControlLink) -> Vec<LinkEvent> {
    std::iter::from_fn(|| link.poll_event()).collect()
}

#[test]
fn a_handshake_brings_both_sides_up_with_matching_keys_and_hellos() {
    let (pair, keys) = established(PipeConfig::INSTANT);
    assert!(pair.links.iter().all(ControlLink::is_established));
    assert!(keys[0].initiator && !keys[1].initiator);
    assert!(keysets_match(&keys[0], &keys[1]));
    // Up clears the handshake deadline: nothing is armed on an idle link.
    assert!(pair.links.iter().all(|l| l.poll_timeout().is_none()));
}

#[test]
fn up_names_the_peer_by_its_key_and_carries_its_hello() {
    let mut pair = pair(PipeConfig::INSTANT);
    pair.settle(100);
    let (a, b) = (link_config(1, SECRET), link_config(2, SECRET));
    match pair.take_events(0).pop() {
        Some(LinkEvent::Up(up)) => {
            assert_eq!(up.public_key, b.identity.public_key());
            assert_eq!(up.peer, b.identity.id());
            assert_eq!(up.hello.name, b.hello.name);
            assert_eq!(up.hello.session_index, up.keys.remote_index);
        }
        other => panic!("{other:?}"),
    }
    match pair.take_events(1).pop() {
        Some(LinkEvent::Up(up)) => assert_eq!(up.peer, a.identity.id()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_peer_without_the_secret_gets_nothing_back() {
    let mut link = responder(OTHER_SECRET);
    assert_eq!(link.read_limit(), handshake_msg1_len());
    link.handle_bytes(Instant::now(), &msg1());
    assert!(link.poll_transmit().is_none(), "nothing is sent back");
    let events = drain_events(&mut link);
    assert!(
        matches!(failure(&events), Some(LinkError::Refused(_))),
        "{events:?}"
    );
    assert_eq!(
        failure(&events).unwrap().handshake_failure(),
        HandshakeFailure::Refused
    );
    // And the initiator, hearing nothing, gives up at the deadline.
    let mut pair = pair_with(
        [link_config(1, SECRET), link_config(2, OTHER_SECRET)],
        [PipeConfig::INSTANT; 2],
    );
    pair.settle(100);
    assert_eq!(pair.written[1], 0);
    assert!(matches!(
        failure(&pair.events[0]),
        Some(LinkError::HandshakeTimeout)
    ));
}

fn handshake_msg1_len() -> usize {
    crate::crypto::handshake::MSG1_LEN
}

#[test]
fn message_1_is_read_alone_and_the_rest_waits_for_its_admission() {
    let mut link = responder(SECRET);
    let mut bytes = msg1();
    bytes.extend_from_slice(&[0xab; 100]);
    link.handle_bytes(Instant::now(), &bytes[..handshake_msg1_len()]);
    assert_eq!(
        link.read_limit(),
        0,
        "no reading while admission is pending"
    );
    assert!(matches!(
        link.poll_event(),
        Some(LinkEvent::Msg1Authenticated { .. })
    ));
    assert!(
        link.poll_transmit().is_none(),
        "no DH work before admission"
    );
    // A real initiator sends nothing before message 2: bytes now are a misbehaving peer.
    link.handle_bytes(Instant::now(), &bytes[handshake_msg1_len()..]);
    assert!(matches!(
        link.poll_event(),
        Some(LinkEvent::Failed(LinkError::UnexpectedBytes { len: 100 }))
    ));
}

#[test]
fn a_replayed_message_1_is_refused_before_any_answer() {
    let mut guard = Msg1Guard::new();
    let msg1 = msg1();
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let mut link = responder(SECRET);
        link.handle_bytes(Instant::now(), &msg1);
        let Some(LinkEvent::Msg1Authenticated { stamp }) = link.poll_event() else {
            panic!("message 1 did not authenticate");
        };
        link.admit_msg1(Instant::now(), guard.admit(&stamp, WALL_START));
        outcomes.push((link.poll_transmit().is_some(), drain_events(&mut link)));
    }
    assert!(
        outcomes[0].0 && outcomes[0].1.is_empty(),
        "the first is answered"
    );
    assert!(!outcomes[1].0, "the replay gets nothing back");
    let error = failure(&outcomes[1].1).unwrap();
    assert!(matches!(error, LinkError::Replayed));
    assert_eq!(error.handshake_failure().as_str(), "replayed");
}

#[test]
fn a_message_1_from_a_skewed_clock_is_refused_as_clock_skew() {
    let mut link = responder(SECRET);
    link.handle_bytes(Instant::now(), &msg1());
    let Some(LinkEvent::Msg1Authenticated { stamp }) = link.poll_event() else {
        panic!("message 1 did not authenticate");
    };
    let later = WALL_START + Duration::from_secs(3600);
    link.admit_msg1(Instant::now(), Msg1Guard::new().admit(&stamp, later));
    let events = drain_events(&mut link);
    assert_eq!(
        failure(&events).unwrap().handshake_failure().as_str(),
        "clock_skew"
    );
}

#[test]
fn records_flow_both_ways_including_fragmented_large_messages() {
    let (mut pair, _) = established(PipeConfig::INSTANT);
    let large = gossip((0..FRAGMENT_PIECE as u32 + 5000).map(|i| i as u8).collect());
    let small = gossip(vec![1, 2, 3]);
    pair.links[0].send(&large).unwrap();
    pair.links[0].send(&small).unwrap();
    pair.links[1].send(&small).unwrap();
    pair.links[1].send(&large).unwrap();
    pair.flush();
    pair.settle(1000);
    assert_eq!(
        messages(pair.take_events(1)),
        [large.clone(), small.clone()]
    );
    assert_eq!(messages(pair.take_events(0)), [small, large]);
}

#[test]
fn any_chunking_of_the_stream_gives_the_same_result() {
    for chunking in [Chunking::Bytes, Chunking::Random(5), Chunking::Random(4000)] {
        let pipe = PipeConfig {
            chunking,
            ..PipeConfig::INSTANT
        };
        let (mut pair, keys) = established(pipe);
        assert!(keysets_match(&keys[0], &keys[1]), "{chunking:?}");
        let mut sent: Vec<_> = [10, 300, 2000].map(|n| gossip(vec![n as u8; n])).into();
        if chunking != Chunking::Bytes {
            sent.push(gossip(vec![9; FRAGMENT_PIECE + 100]));
        }
        for message in &sent {
            pair.links[0].send(message).unwrap();
            pair.links[1].send(message).unwrap();
        }
        pair.flush();
        pair.settle(1_000_000);
        assert_eq!(messages(pair.take_events(0)), sent, "{chunking:?}");
        assert_eq!(messages(pair.take_events(1)), sent, "{chunking:?}");
    }
}

#[test]
fn garbage_before_message_1_authenticates_is_refused_without_panic() {
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..50 {
        let mut link = responder(SECRET);
        let len = rng.gen_range(0..300);
        let garbage: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        link.handle_bytes(Instant::now(), &garbage);
        let events = drain_events(&mut link);
        assert!(link.poll_transmit().is_none());
        if len >= handshake_msg1_len() {
            assert!(
                matches!(failure(&events), Some(LinkError::Refused(_))),
                "{events:?}"
            );
        } else {
            assert!(events.is_empty(), "a truncated message 1 waits for more");
        }
    }
}

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn a_truncated_handshake_times_out_after_ten_seconds() {
    let start = Instant::now();
    let mut link =
        ControlLink::responder(link_config(2, SECRET), Box::new(CountingIndices(0)), start);
    link.handle_bytes(start, &msg1()[..40]);
    assert_eq!(
        link.poll_timeout(),
        Some((start + HANDSHAKE_TIMEOUT, Timer::Handshake))
    );
    link.handle_timeout(start + HANDSHAKE_TIMEOUT - Duration::from_millis(1));
    assert!(link.poll_event().is_none());
    link.handle_timeout(start + HANDSHAKE_TIMEOUT);
    let events = drain_events(&mut link);
    assert!(matches!(
        failure(&events),
        Some(LinkError::HandshakeTimeout)
    ));
    assert_eq!(link.poll_timeout(), None);
    // After the end, input is ignored.
    link.handle_bytes(start, &[0; 100]);
    assert!(link.poll_event().is_none());
}

#[test]
fn oversized_or_garbled_frames_end_the_link_with_a_typed_error() {
    // An initiator told of a 60 KB message 2.
    let mut pair = pair(PipeConfig::INSTANT);
    let now = pair.now;
    pair.links[0].handle_bytes(now, &[0xf0, 0x00]);
    assert!(matches!(
        pair.links[0].poll_event(),
        Some(LinkEvent::Failed(LinkError::HandshakeMessageTooLong {
            len: 0xf000
        }))
    ));
    // Established links: a record length over the cap, a record that does not open.
    type Expected = fn(&LinkError) -> bool;
    let cases: [(&[u8], Expected); 3] = [
        (&[0xff, 0xff, 0xff, 0xff], |e| {
            matches!(e, LinkError::RecordTooLong { .. })
        }),
        (
            &[
                0, 0, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
            ],
            |e| matches!(e, LinkError::BadRecord(_)),
        ),
        (&[0, 0, 0, 3, 1, 2, 3], |e| {
            matches!(e, LinkError::BadRecord(_))
        }),
    ];
    for (bytes, expected) in cases {
        let (mut pair, _) = established(PipeConfig::INSTANT);
        let now = pair.now;
        pair.links[1].handle_bytes(now, bytes);
        let events = drain_events(&mut pair.links[1]);
        let error = failure(&events).unwrap();
        assert!(expected(error), "{error:?}");
        assert_eq!(error.handshake_failure().as_str(), "protocol");
        assert!(pair.links[1].is_ended());
        assert_eq!(
            pair.links[1].send(&gossip(vec![])).unwrap_err().to_string(),
            LinkError::NotEstablished.to_string()
        );
    }
}

#[test]
fn random_bytes_never_panic_a_link_in_any_phase() {
    let mut rng = StdRng::seed_from_u64(9);
    for round in 0..8 {
        let (mut pair, _) = established(PipeConfig::INSTANT);
        let mut initiator = pair_with(
            [link_config(3, SECRET), link_config(4, SECRET)],
            [PipeConfig::INSTANT; 2],
        );
        let garbage: Vec<u8> = (0..rng.gen_range(1..200)).map(|_| rng.r#gen()).collect();
        let now = pair.now;
        pair.links[round % 2].handle_bytes(now, &garbage);
        initiator.links[0].handle_bytes(now, &garbage);
        pair.flush();
        initiator.flush();
    }
}

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
        assert!(pair.links[side].poll_timeout().is_none());
        assert!(a[0].initiator == (side == 0));
        assert_ne!(a[0].local_index, first[0].local_index);
    }
    // Records still flow under the switched TCP keys.
    pair.links[0].send(&gossip(vec![7])).unwrap();
    pair.links[1].send(&gossip(vec![8])).unwrap();
    pair.flush();
    pair.settle(100);
    assert_eq!(messages(pair.take_events(1)), [gossip(vec![7])]);
    assert_eq!(messages(pair.take_events(0)), [gossip(vec![8])]);
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

#[test]
fn close_sends_a_reason_the_peer_reports() {
    let (mut pair, _) = established(PipeConfig::INSTANT);
    pair.links[0].close("shutting down");
    pair.flush();
    pair.settle(100);
    let ours = pair.take_events(0);
    let theirs = pair.take_events(1);
    assert!(matches!(&ours[..], [LinkEvent::Closed(CloseReason::ByUs(r))] if r == "shutting down"));
    match &theirs[..] {
        [LinkEvent::Closed(reason)] => assert_eq!(reason.to_string(), "peer closed: shutting down"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dialling_ourselves_or_another_range_is_refused_with_its_label() {
    let mut pair = pair_with(
        [link_config(1, SECRET), link_config(1, SECRET)],
        [PipeConfig::INSTANT; 2],
    );
    pair.settle(100);
    for side in 0..2 {
        let error = failure(&pair.events[side]).unwrap();
        assert_eq!(error.handshake_failure(), HandshakeFailure::SelfConnection);
    }
    let mut other_range = link_config(2, SECRET);
    other_range.hello.cluster_range = "10.0.0.0/8".into();
    let mut pair = pair_with(
        [link_config(1, SECRET), other_range],
        [PipeConfig::INSTANT; 2],
    );
    pair.settle(100);
    let error = failure(&pair.events[0]).unwrap();
    assert_eq!(error.handshake_failure().as_str(), "incompatible");
    assert!(
        error.to_string().contains("uses cluster range 10.0.0.0/8"),
        "{error}"
    );
}

#[test]
fn commands_before_the_handshake_are_refused_without_changing_anything() {
    let mut pair = pair(PipeConfig::INSTANT);
    let (now, wall) = (pair.now, pair.wall());
    assert!(matches!(
        pair.links[1].send(&gossip(vec![])),
        Err(LinkError::NotEstablished)
    ));
    assert!(matches!(
        pair.links[1].rekey(now, wall),
        Err(LinkError::NotEstablished)
    ));
    pair.settle(100);
    assert!(pair.links.iter().all(ControlLink::is_established));
}
