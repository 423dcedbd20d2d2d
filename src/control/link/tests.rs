//! The control link in memory on a virtual clock (quinn's `Pair` style):
//! [`crate::sim::link::LinkPair`] joins two links by TCP-like byte pipes.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::control::proto::FRAGMENT_PIECE;
use crate::crypto::freshness::Msg1Guard;
use crate::sim::link::{
    Chunking, CountingIndices, LinkPair, PipeConfig, WALL_START, keysets_match, link_config,
};

mod hostile;
mod rekey;
mod switch;

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

/// One record each way arrives, once (under whatever keys are current).
fn records_flow_both_ways(pair: &mut LinkPair) {
    pair.links[0].send(&gossip(vec![7])).unwrap();
    pair.links[1].send(&gossip(vec![8])).unwrap();
    pair.flush();
    pair.settle(1000);
    assert_eq!(messages(pair.take_events(1)), [gossip(vec![7])]);
    assert_eq!(messages(pair.take_events(0)), [gossip(vec![8])]);
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
    // Up clears the handshake deadline: only the keys' expiry is armed.
    let up = pair.now;
    for link in &pair.links {
        assert_eq!(
            link.poll_timeout(),
            Some((up + REJECT_AFTER, Timer::KeyExpiry))
        );
    }
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
