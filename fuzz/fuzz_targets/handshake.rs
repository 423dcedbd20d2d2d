//! The Noise handshake on hostile bytes: message 1 on the responder, message
//! 2 on the initiator, message 3 on the responder, and a full handshake with
//! fuzzed payloads whose keys must agree.
//!
//! Message 1s that authenticate also go through the replay guard twice: the
//! second admission must be refused.
//!
//! Input: `[mode][seed][rest…]`. Ephemerals are seeded from `seed`, so the
//! seed generator can produce valid messages 2 and 3 for the fuzzer to mutate.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use std::time::Duration;
use weft::crypto::{Handshake, HandshakeError, MSG1_LEN, Msg1Guard, Msg1Refused, Msg1Stamp};

#[path = "common.rs"]
mod common;

static CLUSTER: LazyLock<common::Cluster> = LazyLock::new(common::cluster);

/// The wall clock of every message 1 the target writes (gen_seeds uses it too).
const T0: Duration = Duration::from_secs(1_800_000_000);

/// A message 1 that authenticated: admitted at most once, whatever its time.
fn guard_twice(stamp: &Msg1Stamp, now: Duration) {
    let mut guard = Msg1Guard::new();
    if guard.admit(stamp, now).is_ok() {
        assert_eq!(guard.admit(stamp, now), Err(Msg1Refused::Replayed));
    }
}

fuzz_target!(|data: &[u8]| {
    let c = &*CLUSTER;
    let [mode, seed, rest @ ..] = data else {
        return;
    };
    let seed = u64::from(*seed);
    match mode % 5 {
        // Message 1 exactly as it came off the socket.
        0 => {
            if let Ok((_, stamp)) =
                Handshake::responder(&c.responder, &c.secrets, &c.prologue, rest)
            {
                guard_twice(&stamp, T0 + Duration::from_secs(seed));
            }
        }
        // Message 1 with the right secret ID, so the bytes reach snow.
        1 => {
            let mut msg1 = [0u8; MSG1_LEN];
            msg1[..4].copy_from_slice(&c.secrets.primary_id().0);
            let n = rest.len().min(MSG1_LEN - 4);
            msg1[4..4 + n].copy_from_slice(&rest[..n]);
            if let Ok((_, stamp)) =
                Handshake::responder(&c.responder, &c.secrets, &c.prologue, &msg1)
            {
                guard_twice(&stamp, T0);
            }
        }
        // Hostile message 3 after a real message 1 and 2.
        2 => {
            let (_init, msg1) =
                Handshake::initiator_seeded(&c.initiator, &c.secrets, &c.prologue, T0, seed)
                    .expect("initiator");
            let (mut resp, _) =
                Handshake::responder_seeded(&c.responder, &c.secrets, &c.prologue, &msg1, seed)
                    .expect("responder");
            resp.write_message(b"hello").expect("msg2");
            match resp.read_message(rest) {
                Ok(_) => {
                    assert!(resp.is_finished());
                    assert!(resp.remote_public_key().is_some());
                    resp.finish().expect("finished handshake yields keys");
                }
                Err(_) => {
                    // Any failure is final.
                    assert!(matches!(
                        resp.read_message(rest),
                        Err(HandshakeError::Failed)
                    ));
                    assert!(resp.finish().is_err());
                }
            }
        }
        // Hostile message 2 on the initiator.
        3 => {
            let (mut init, _msg1) =
                Handshake::initiator_seeded(&c.initiator, &c.secrets, &c.prologue, T0, seed)
                    .expect("initiator");
            match init.read_message(rest) {
                Ok(_) => {
                    assert!(init.remote_public_key().is_some());
                    let _ = init.write_message(b"");
                }
                Err(_) => {
                    assert!(matches!(
                        init.read_message(rest),
                        Err(HandshakeError::Failed)
                    ));
                }
            }
        }
        // A real handshake carrying fuzzed payloads: both sides agree.
        _ => {
            let (p2, p3) = rest.split_at(rest.len() / 2);
            let (mut init, msg1) =
                Handshake::initiator_seeded(&c.initiator, &c.secrets, &c.prologue, T0, seed)
                    .expect("initiator");
            let (mut resp, _) =
                Handshake::responder_seeded(&c.responder, &c.secrets, &c.prologue, &msg1, seed)
                    .expect("responder");
            let msg2 = resp.write_message(p2).expect("msg2");
            assert_eq!(init.read_message(&msg2).expect("read msg2"), p2);
            let msg3 = init.write_message(p3).expect("msg3");
            assert_eq!(resp.read_message(&msg3).expect("read msg3"), p3);
            assert_eq!(resp.remote_public_key(), Some(c.initiator.public_key()));
            assert_eq!(init.remote_public_key(), Some(c.responder.public_key()));
            let mut ik = init.finish().expect("initiator keys");
            let mut rk = resp.finish().expect("responder keys");
            let record = ik.tcp_send.seal(p2);
            assert_eq!(rk.tcp_recv.open(&record).expect("open"), p2);
            let record = rk.tcp_send.seal(p3);
            assert_eq!(ik.tcp_recv.open(&record).expect("open"), p3);
        }
    }
});
