//! Hostile bytes: garbage, truncation, oversized frames and random input
//! in every phase end the link with a typed error or wait, never panic.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
