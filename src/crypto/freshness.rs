//! Refusing a replayed handshake message 1 (DESIGN.md "Handshake": "until
//! message 1 authenticates … allocate nothing more"; issue "Hostile input":
//! replayed handshake messages).
//!
//! With `XXpsk0` message 1 already proves the cluster secret, but nothing in
//! it is bound to the moment: a message 1 captured off the wire authenticates
//! forever, and each replay would make the responder do two Diffie-Hellman
//! operations and hold a half-open slot. The initiator therefore puts its
//! wall-clock time in message 1 (inside the AEAD), and the responder admits a
//! message 1 only if
//!
//! - its time is within [`WINDOW`] of the responder's clock, and
//! - its ephemeral key was not admitted before (remembered for as long as the
//!   message could still pass the time check).
//!
//! Together these refuse every replay: a young copy by the set, an old one by
//! the clock. Checking costs one hash lookup and no DH, and only messages
//! that authenticated are ever stored, so someone without the secret cannot
//! fill the set. Sans-IO: the driver passes the wall clock.

use crate::crypto::handshake::Msg1Stamp;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// How far an initiator's clock may be from ours, either way. Generous:
/// nodes of a cluster run NTP (Kubernetes' certificates need it too), but a
/// laptop waking from sleep may be a minute or two off until it resyncs.
pub const WINDOW: Duration = Duration::from_secs(300);

/// How many admitted ephemeral keys are remembered at most: 16,384 × 32 B
/// = 512 KiB. Legitimate handshakes are a few per peer per rekey interval
/// (120 s), so this covers a window's worth for thousands of peers; past it,
/// the oldest are forgotten early and counted.
pub const CAPACITY: usize = 16_384;

/// Why a message 1 was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Msg1Refused {
    /// Its timestamp is more than [`WINDOW`] from our clock: a replay of an
    /// old message, or a peer whose clock is off.
    #[error(
        "handshake message 1 is timestamped {skew_secs} s {direction} our clock (limit {} s): a replay, or the clocks differ; synchronise the nodes' clocks (NTP)",
        WINDOW.as_secs()
    )]
    ClockSkew {
        /// How far off, in whole seconds.
        skew_secs: u64,
        /// `"behind"` or `"ahead of"`.
        direction: &'static str,
    },
    /// Its ephemeral key was seen before: a replay.
    #[error("handshake message 1 was replayed")]
    Replayed,
}

/// The responder's memory of admitted message 1s. One per router.
#[derive(Debug, Default)]
pub struct Msg1Guard {
    seen: HashSet<[u8; 32]>,
    /// Admission order with each entry's expiry (its send time + `WINDOW`).
    order: VecDeque<([u8; 32], Duration)>,
    evicted_early: u64,
}

impl Msg1Guard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits `stamp` at wall-clock time `now` (since the Unix epoch), or says
    /// why not. An admitted message is remembered; a refused one changes
    /// nothing.
    pub fn admit(&mut self, stamp: &Msg1Stamp, now: Duration) -> Result<(), Msg1Refused> {
        let (skew, direction) = if stamp.sent_at <= now {
            (now - stamp.sent_at, "behind")
        } else {
            (stamp.sent_at - now, "ahead of")
        };
        if skew > WINDOW {
            return Err(Msg1Refused::ClockSkew {
                skew_secs: skew.as_secs(),
                direction,
            });
        }
        self.expire(now);
        if self.seen.contains(&stamp.ephemeral) {
            return Err(Msg1Refused::Replayed);
        }
        if self.order.len() >= CAPACITY
            && let Some((oldest, _)) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
            self.evicted_early += 1;
        }
        self.seen.insert(stamp.ephemeral);
        self.order
            .push_back((stamp.ephemeral, stamp.sent_at.saturating_add(WINDOW)));
        Ok(())
    }

    /// How many keys are remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// How many keys were forgotten before their time because the guard was
    /// full (a replay of those could pass until their window ends).
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    /// Forgets keys whose messages could no longer pass the clock check.
    /// Expiries are nearly in admission order (clocks differ a little), so
    /// stopping at the first live one may keep a few a little longer: safe.
    fn expire(&mut self, now: Duration) {
        while let Some((key, expiry)) = self.order.front() {
            if *expiry >= now {
                break;
            }
            self.seen.remove(key);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: Duration = Duration::from_secs(1_800_000_000);

    fn stamp(key: u8, sent_at: Duration) -> Msg1Stamp {
        Msg1Stamp {
            sent_at,
            ephemeral: [key; 32],
        }
    }

    #[test]
    fn a_fresh_message_is_admitted_once_and_its_replay_refused() {
        let mut guard = Msg1Guard::new();
        assert_eq!(guard.admit(&stamp(1, NOW), NOW), Ok(()));
        assert_eq!(
            guard.admit(&stamp(1, NOW), NOW + Duration::from_secs(1)),
            Err(Msg1Refused::Replayed)
        );
        assert_eq!(guard.admit(&stamp(2, NOW), NOW), Ok(()));
    }

    #[test]
    fn a_replay_after_the_key_is_forgotten_fails_the_clock_check() {
        let mut guard = Msg1Guard::new();
        guard.admit(&stamp(1, NOW), NOW).unwrap();
        let later = NOW + WINDOW + Duration::from_secs(1);
        // Another admission expires the first key ...
        guard.admit(&stamp(2, later), later).unwrap();
        assert_eq!(guard.len(), 1);
        // ... and its replay is now too old.
        assert!(matches!(
            guard.admit(&stamp(1, NOW), later),
            Err(Msg1Refused::ClockSkew {
                direction: "behind",
                ..
            })
        ));
    }

    #[test]
    fn clocks_within_the_window_either_way_are_accepted_beyond_it_refused() {
        let mut guard = Msg1Guard::new();
        assert_eq!(guard.admit(&stamp(1, NOW - WINDOW), NOW), Ok(()));
        assert_eq!(guard.admit(&stamp(2, NOW + WINDOW), NOW), Ok(()));
        let err = guard
            .admit(&stamp(3, NOW + WINDOW + Duration::from_secs(7)), NOW)
            .unwrap_err();
        assert_eq!(
            err,
            Msg1Refused::ClockSkew {
                skew_secs: 307,
                direction: "ahead of"
            }
        );
        assert!(err.to_string().contains("NTP"), "{err}");
        // A refused message is not remembered.
        assert_eq!(guard.len(), 2);
    }

    #[test]
    fn the_guard_is_bounded_and_forgets_the_oldest_first() {
        let mut guard = Msg1Guard::new();
        for i in 0..CAPACITY as u32 + 10 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            let s = Msg1Stamp {
                sent_at: NOW,
                ephemeral: key,
            };
            guard.admit(&s, NOW).unwrap();
        }
        assert_eq!(guard.len(), CAPACITY);
        assert_eq!(guard.evicted_early(), 10);
        let mut newest = [0u8; 32];
        newest[..4].copy_from_slice(&(CAPACITY as u32 + 9).to_be_bytes());
        let s = Msg1Stamp {
            sent_at: NOW,
            ephemeral: newest,
        };
        assert_eq!(guard.admit(&s, NOW), Err(Msg1Refused::Replayed));
    }

    #[test]
    fn absurd_timestamps_do_not_panic() {
        let mut guard = Msg1Guard::new();
        assert!(guard.admit(&stamp(1, Duration::MAX), NOW).is_err());
        assert!(guard.admit(&stamp(2, Duration::ZERO), NOW).is_err());
        assert!(
            guard
                .admit(&stamp(3, Duration::ZERO), Duration::ZERO)
                .is_ok()
        );
    }
}
