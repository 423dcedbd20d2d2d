//! The sans-IO key schedule for one peer (DESIGN.md "Keys and sessions" → "Rekey").
//!
//! Holds up to three keysets, addressed by the 24-bit session index that
//! data packets carry in `receiver_index`:
//! - `next`: installed from a finished rekey handshake; its receive key works
//!   at once, but we do not send with it until the peer proves it holds it;
//! - `current`: the one we send with;
//! - `previous`: the one we sent with before the last switch, kept
//!   [`PREVIOUS_GRACE`] for packets still in flight.
//!
//! Any keyset is dropped [`REJECT_AFTER`] after its handshake.
//!
//! Inputs: [`KeySchedule::install`], [`KeySchedule::confirm`],
//! [`KeySchedule::rekey_started`], [`KeySchedule::handle_timeout`]. Outputs:
//! [`KeySchedule::poll_timeout`] (arm one timer for the earliest deadline),
//! [`KeySchedule::rekey_due`], and the keysets. The driver's loop: on each
//! input or when the timer fires, call `handle_timeout(now)`, then if
//! `rekey_due(now)` and this side starts rekeys (the lower ID), start a
//! handshake and call `rekey_started(now)`; re-arm from `poll_timeout()`;
//! publish `current()` and `receive_keysets()` to the data-plane snapshot
//! when they changed. Who chooses `local_index` values is the driver's
//! business; they must be unique among this peer's live keysets.

use crate::crypto::data::DataKey;
use std::time::{Duration, Instant};

/// A timer rekey starts this long after the current keyset's handshake.
pub const REKEY_AFTER: Duration = Duration::from_secs(120);
/// No keyset is used, for sending or receiving, after this age.
pub const REJECT_AFTER: Duration = Duration::from_secs(180);
/// How long `previous` still decrypts after the send key switched.
pub const PREVIOUS_GRACE: Duration = Duration::from_secs(10);
/// After a rekey handshake starts, `rekey_due` stays false this long (the
/// handshake's own time limit) so that a slow handshake is not started twice.
pub const REKEY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Session indices are 24 bits on the wire.
pub const INDEX_MASK: u32 = 0x00ff_ffff;

/// The keys of one handshake for the data plane, in both directions.
#[derive(Debug, Clone)]
pub struct Keyset {
    /// Our 24-bit session index; the peer puts it in `receiver_index`.
    pub local_index: u32,
    /// The peer's 24-bit session index; we put it in `receiver_index`.
    pub remote_index: u32,
    /// Seals what we send (lanes share it; the nonce carries the lane).
    pub send: DataKey,
    /// Opens what we receive.
    pub recv: DataKey,
    /// When the handshake finished.
    pub created: Instant,
}

impl Keyset {
    fn rejected_at(&self) -> Instant {
        self.created + REJECT_AFTER
    }
}

/// Why [`KeySchedule::poll_timeout`] wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyTimer {
    /// The current keyset is [`REKEY_AFTER`] old (or a rekey attempt timed out).
    Rekey,
    /// `previous` reaches the end of its grace period.
    PreviousExpiry,
    /// A keyset reaches [`REJECT_AFTER`].
    Reject,
}

/// next / current / previous keysets for one peer.
#[derive(Debug)]
pub struct KeySchedule {
    rekey_after: Duration,
    next: Option<Keyset>,
    current: Option<Keyset>,
    /// With the instant its grace ends.
    previous: Option<(Keyset, Instant)>,
    installed: u64,
    rekey_attempt: Option<Instant>,
}

impl KeySchedule {
    /// An empty schedule. `rekey_after` is [`REKEY_AFTER`] in production and
    /// shorter in tests; it is capped below [`REJECT_AFTER`].
    pub fn new(rekey_after: Duration) -> Self {
        Self {
            rekey_after: rekey_after.min(REJECT_AFTER - PREVIOUS_GRACE),
            next: None,
            current: None,
            previous: None,
            installed: 0,
            rekey_attempt: None,
        }
    }

    /// A fresh keyset from a finished handshake. Its receive side is usable
    /// at once. With no current keyset it becomes current at once; otherwise
    /// it becomes `next` (replacing an unconfirmed `next`) and is promoted by
    /// [`Self::confirm`]. Ends any pending rekey attempt.
    pub fn install(&mut self, keyset: Keyset, now: Instant) {
        let _ = now;
        self.installed += 1;
        self.rekey_attempt = None;
        if self.current.is_none() {
            self.current = Some(keyset);
            self.next = None;
        } else {
            self.next = Some(keyset);
        }
    }

    /// The peer proved it holds the keyset `local_index` (a control frame
    /// after its handshake, or a UDP packet that authenticated under its
    /// receive key). If that is `next`: next → current, current → previous
    /// (kept [`PREVIOUS_GRACE`]). Returns whether anything changed; confirming
    /// the current or an unknown index changes nothing.
    pub fn confirm(&mut self, local_index: u32, now: Instant) -> bool {
        if self
            .next
            .as_ref()
            .is_none_or(|n| n.local_index != local_index)
        {
            return false;
        }
        let promoted = self.next.take();
        if let Some(old) = std::mem::replace(&mut self.current, promoted) {
            self.previous = Some((old, now + PREVIOUS_GRACE));
        }
        true
    }

    /// A rekey handshake has started: `rekey_due` stays false for
    /// [`REKEY_ATTEMPT_TIMEOUT`] or until [`Self::install`].
    pub fn rekey_started(&mut self, now: Instant) {
        self.rekey_attempt = Some(now);
    }

    /// Drops `previous` after its grace and any keyset older than
    /// [`REJECT_AFTER`]; if that leaves no current keyset, an unconfirmed
    /// `next` becomes current. Idempotent; call it whenever the timer fires.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self
            .previous
            .as_ref()
            .is_some_and(|(k, grace_end)| now >= *grace_end || now >= k.rejected_at())
        {
            self.previous = None;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|k| now >= k.rejected_at())
        {
            self.current = None;
        }
        if self.next.as_ref().is_some_and(|k| now >= k.rejected_at()) {
            self.next = None;
        }
        if self.current.is_none() {
            // Nothing else to send with: use the unconfirmed keyset rather
            // than none (both sides finished its handshake, or the peer
            // drops what it cannot open and the next rekey fixes it).
            self.current = self.next.take();
        }
        if self
            .rekey_attempt
            .is_some_and(|t| now >= t + REKEY_ATTEMPT_TIMEOUT)
        {
            self.rekey_attempt = None;
        }
    }

    /// The earliest deadline and its reason: rekey due (only while there is
    /// a current keyset and no `next` waiting), previous's grace end, or a
    /// keyset's rejection.
    pub fn poll_timeout(&self) -> Option<(Instant, KeyTimer)> {
        let rekey = self.rekey_deadline().map(|t| (t, KeyTimer::Rekey));
        [rekey, self.poll_expiry()]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    /// The earliest expiry alone (previous's grace end or a keyset's
    /// rejection), for a driver whose rekey policy keeps its own deadline
    /// (a side that does not start timer rekeys must not wake at
    /// `rekey_deadline` over and over).
    pub fn poll_expiry(&self) -> Option<(Instant, KeyTimer)> {
        let previous = self.previous.as_ref().map(|(k, grace_end)| {
            if *grace_end <= k.rejected_at() {
                (*grace_end, KeyTimer::PreviousExpiry)
            } else {
                (k.rejected_at(), KeyTimer::Reject)
            }
        });
        let reject = [self.current.as_ref(), self.next.as_ref()]
            .into_iter()
            .flatten()
            .map(|k| (k.rejected_at(), KeyTimer::Reject))
            .min_by_key(|(t, _)| *t);
        [previous, reject]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    /// When a timer rekey falls due: `rekey_after` after the current
    /// keyset's handshake (or when a rekey attempt times out); none while a
    /// `next` keyset waits for confirmation or without a current keyset.
    pub fn rekey_deadline(&self) -> Option<Instant> {
        if self.next.is_some() {
            return None; // a rekey happened; waiting for confirmation
        }
        let current = self.current.as_ref()?;
        let due = current.created + self.rekey_after;
        Some(match self.rekey_attempt {
            Some(started) => due.max(started + REKEY_ATTEMPT_TIMEOUT),
            None => due,
        })
    }

    /// Whether this side should start a handshake now: there is no usable
    /// keyset at all, or the current one is older than `rekey_after` and no
    /// rekey is pending (neither an unconfirmed `next` nor a recent attempt).
    pub fn rekey_due(&self, now: Instant) -> bool {
        if self.current.is_none() && self.next.is_none() {
            return self
                .rekey_attempt
                .is_none_or(|t| now >= t + REKEY_ATTEMPT_TIMEOUT);
        }
        self.rekey_deadline().is_some_and(|t| now >= t)
    }

    /// The keyset to send with, if any.
    pub fn current(&self) -> Option<&Keyset> {
        self.current.as_ref()
    }

    /// The keyset waiting for confirmation, if any.
    pub fn next(&self) -> Option<&Keyset> {
        self.next.as_ref()
    }

    /// Every keyset that may still decrypt: next, current, previous.
    pub fn receive_keysets(&self) -> impl Iterator<Item = &Keyset> {
        [
            self.next.as_ref(),
            self.current.as_ref(),
            self.previous.as_ref().map(|(k, _)| k),
        ]
        .into_iter()
        .flatten()
    }

    /// The receive keyset addressed by `local_index`, if still held.
    pub fn find(&self, local_index: u32) -> Option<&Keyset> {
        self.receive_keysets()
            .find(|k| k.local_index == local_index)
    }

    /// Keysets installed after the first.
    pub fn rekeys(&self) -> u64 {
        self.installed.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn keyset(index: u32, created: Instant) -> Keyset {
        Keyset {
            local_index: index,
            remote_index: index + 100,
            send: DataKey::from_bytes([index as u8; 32]),
            recv: DataKey::from_bytes([index as u8 + 1; 32]),
            created,
        }
    }

    fn indices(s: &KeySchedule) -> Vec<u32> {
        s.receive_keysets().map(|k| k.local_index).collect()
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_first_keyset_becomes_current_at_once() {
        let t0 = Instant::now();
        let mut s = KeySchedule::new(REKEY_AFTER);
        assert!(s.rekey_due(t0), "no keys: handshake now");
        assert_eq!(s.poll_timeout(), None);
        s.install(keyset(1, t0), t0);
        assert_eq!(s.current().unwrap().local_index, 1);
        assert_eq!(s.rekeys(), 0);
        assert!(!s.rekey_due(t0));
        assert_eq!(s.poll_timeout(), Some((t0 + REKEY_AFTER, KeyTimer::Rekey)));
    }

    #[test]
    fn a_rekeyed_keyset_receives_at_once_but_sends_only_after_confirm() {
        let t0 = Instant::now();
        let mut s = KeySchedule::new(REKEY_AFTER);
        s.install(keyset(1, t0), t0);
        let t1 = t0 + S(120);
        assert!(s.rekey_due(t1));
        s.install(keyset(2, t1), t1);
        assert_eq!(s.rekeys(), 1);
        assert!(!s.rekey_due(t1), "next is waiting");
        assert_eq!(s.current().unwrap().local_index, 1);
        assert_eq!(indices(&s), [2, 1]);
        assert!(s.find(2).is_some());
        assert!(!s.confirm(1, t1), "confirming current changes nothing");
        assert!(!s.confirm(99, t1), "unknown index changes nothing");
        assert!(s.confirm(2, t1 + S(1)));
        assert!(!s.confirm(2, t1 + S(1)), "idempotent");
        assert_eq!(s.current().unwrap().local_index, 2);
        assert_eq!(indices(&s), [2, 1]);
        assert_eq!(
            s.poll_timeout(),
            Some((t1 + S(1) + PREVIOUS_GRACE, KeyTimer::PreviousExpiry))
        );
    }

    #[test]
    fn previous_is_kept_for_the_grace_period_then_dropped() {
        let t0 = Instant::now();
        let mut s = KeySchedule::new(REKEY_AFTER);
        s.install(keyset(1, t0), t0);
        s.install(keyset(2, t0 + S(5)), t0 + S(5));
        s.confirm(2, t0 + S(6));
        s.handle_timeout(t0 + S(6) + PREVIOUS_GRACE - Duration::from_millis(1));
        assert_eq!(indices(&s), [2, 1]);
        s.handle_timeout(t0 + S(6) + PREVIOUS_GRACE);
        assert_eq!(indices(&s), [2]);
        assert_eq!(
            s.poll_timeout(),
            Some((t0 + S(5) + REKEY_AFTER, KeyTimer::Rekey))
        );
    }

    #[test]
    fn keysets_are_rejected_after_180_seconds() {
        let t0 = Instant::now();
        let mut s = KeySchedule::new(REKEY_AFTER);
        s.install(keyset(1, t0), t0);
        s.rekey_started(t0 + REKEY_AFTER);
        // The rekey never completes; each attempt times out and is retried.
        assert!(!s.rekey_due(t0 + REKEY_AFTER + S(1)));
        assert!(s.rekey_due(t0 + REKEY_AFTER + REKEY_ATTEMPT_TIMEOUT));
        s.handle_timeout(t0 + REJECT_AFTER - S(1));
        assert!(s.current().is_some());
        s.handle_timeout(t0 + REJECT_AFTER);
        assert!(s.current().is_none());
        assert_eq!(indices(&s), Vec::<u32>::new());
        assert!(s.rekey_due(t0 + REJECT_AFTER));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn when_current_is_rejected_an_unconfirmed_next_takes_over() {
        let t0 = Instant::now();
        let mut s = KeySchedule::new(REKEY_AFTER);
        s.install(keyset(1, t0), t0);
        s.install(keyset(2, t0 + S(100)), t0 + S(100));
        assert_eq!(
            s.poll_timeout(),
            Some((t0 + REJECT_AFTER, KeyTimer::Reject))
        );
        s.handle_timeout(t0 + REJECT_AFTER);
        assert_eq!(
            s.current().unwrap().local_index,
            2,
            "promoted: nothing else to send with"
        );
        assert!(s.next().is_none());
        assert!(!s.confirm(2, t0 + REJECT_AFTER));
        assert_eq!(indices(&s), [2]);
        s.handle_timeout(t0 + S(100) + REJECT_AFTER);
        assert!(s.current().is_none());
    }

    #[test]
    fn a_second_rekey_before_confirmation_replaces_next() {
        let t0 = Instant::now();
        let mut s = KeySchedule::new(REKEY_AFTER);
        s.install(keyset(1, t0), t0);
        s.install(keyset(2, t0 + S(1)), t0 + S(1));
        s.install(keyset(3, t0 + S(2)), t0 + S(2));
        assert_eq!(indices(&s), [3, 1]);
        assert!(!s.confirm(2, t0 + S(3)));
        assert!(s.confirm(3, t0 + S(3)));
        assert_eq!(s.rekeys(), 2);
    }

    #[test]
    fn rekey_after_is_configurable_for_tests() {
        let t0 = Instant::now();
        let mut s = KeySchedule::new(S(2));
        s.install(keyset(1, t0), t0);
        assert!(!s.rekey_due(t0 + Duration::from_millis(1999)));
        assert!(s.rekey_due(t0 + S(2)));
        s.rekey_started(t0 + S(2));
        assert_eq!(
            s.poll_timeout(),
            Some((t0 + S(2) + REKEY_ATTEMPT_TIMEOUT, KeyTimer::Rekey))
        );
        s.install(keyset(2, t0 + S(3)), t0 + S(3));
        s.confirm(2, t0 + S(3));
        assert!(s.rekey_due(t0 + S(5)));
    }

    #[test]
    fn with_no_keys_an_attempt_suppresses_rekey_due_until_it_times_out() {
        let t0 = Instant::now();
        let mut s = KeySchedule::new(REKEY_AFTER);
        s.rekey_started(t0);
        assert!(!s.rekey_due(t0 + S(1)));
        assert!(s.rekey_due(t0 + REKEY_ATTEMPT_TIMEOUT));
    }
}
