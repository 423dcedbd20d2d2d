//! The rendezvous' side of punching and relayed control (sans-IO; DESIGN.md
//! "Endpoints, NAT and paths", issue 16): which common router to use, and
//! how much a router forwards for others.
//!
//! Owns: [`choose`], the choice of a relay (or rendezvous) among the routers
//! connected to both ends by measured RTT, with the reason for status; and
//! [`RelayBudget`], the per-pair bounds on what this router forwards for
//! others (punch requests, end-to-end control records): records and bytes
//! per second per (from, to) pair, a cap on the pairs tracked, and drops
//! counted by [`RelayDrop`]. Does not own the forwarding itself (the control
//! task sends what is admitted), the records' contents (opaque, sealed end
//! to end: a relay can neither read nor forge them) or the RTTs (the
//! heartbeats measure them).
//!
//! Input: [`RelayBudget::admit`] per record, [`RelayBudget::forget`] when a
//! peer leaves. No output queue and no timers: buckets refill from `now`.

use crate::id::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A relay chosen for a pair, and why (status: `relayed via NAME (why)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayChoice {
    /// The common router.
    pub via: PeerId,
    /// Its measured round trip from here, if any.
    pub rtt: Option<Duration>,
    /// How many common routers there were.
    pub of: usize,
}

impl RelayChoice {
    /// Why this one: `lowest RTT 3 ms of 2`, `only common router`, or
    /// `no RTT measured yet` (then the lowest ID, so both ends agree).
    pub fn why(&self) -> String {
        match (self.of, self.rtt) {
            (1, _) => "only common router".into(),
            (_, Some(rtt)) => format!("lowest RTT {} ms of {}", rtt.as_millis(), self.of),
            (_, None) => "no RTT measured yet".into(),
        }
    }
}

/// The common router with the lowest measured RTT; unmeasured ones come
/// last, ties go to the lower ID (deterministic). Not the first that
/// worked nor the fewest hops: a relay two continents away that answered
/// first would carry every packet of the pair.
pub fn choose(
    options: impl IntoIterator<Item = (PeerId, Option<Duration>)>,
) -> Option<RelayChoice> {
    let mut of = 0;
    let best = options
        .into_iter()
        .inspect(|_| of += 1)
        .min_by_key(|(id, rtt)| (rtt.is_none(), *rtt, *id))?;
    Some(RelayChoice {
        via: best.0,
        rtt: best.1,
        of,
    })
}

/// Why a record was not forwarded; `as_str` is the counter label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayDrop {
    /// The target is not a router this one is connected to (unknown, gone,
    /// or only reachable through another relay: relays do not chain).
    UnknownTarget = 0,
    /// Source and target are the same router, or one of them is us.
    Loop = 1,
    /// The pair sent more records per second than [`RelayLimits::records`].
    RecordRate = 2,
    /// The pair sent more bytes per second than [`RelayLimits::bytes`].
    ByteRate = 3,
    /// A record larger than [`RelayLimits::max_record`].
    TooLarge = 4,
    /// [`RelayLimits::max_pairs`] pairs are already tracked.
    TooManyPairs = 5,
}

/// How many [`RelayDrop`]s there are.
const DROPS: usize = 6;

impl RelayDrop {
    /// Every reason, in counter order.
    pub const ALL: [Self; DROPS] = [
        Self::UnknownTarget,
        Self::Loop,
        Self::RecordRate,
        Self::ByteRate,
        Self::TooLarge,
        Self::TooManyPairs,
    ];

    /// The counter label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownTarget => "relay_unknown_target",
            Self::Loop => "relay_loop",
            Self::RecordRate => "relay_record_rate",
            Self::ByteRate => "relay_byte_rate",
            Self::TooLarge => "relay_too_large",
            Self::TooManyPairs => "relay_too_many_pairs",
        }
    }
}

/// Bounds on forwarding for others.
#[derive(Clone, Debug)]
pub struct RelayLimits {
    /// Records per second per pair (burst: one second's worth).
    pub records: u32,
    /// Bytes per second per pair (burst: one second's worth).
    pub bytes: u32,
    /// Largest record forwarded (a control record; data never goes here).
    pub max_record: usize,
    /// Most (from, to) pairs tracked at once.
    pub max_pairs: usize,
}

impl Default for RelayLimits {
    /// Enough for an end-to-end handshake, rekeys, gossip digests and a
    /// punch exchange per pair; a full ring of 1,000 routers (~59 KB) gets
    /// through in under a second.
    fn default() -> Self {
        Self {
            records: 50,
            bytes: 128 * 1024,
            max_record: 64 * 1024 + 64,
            max_pairs: 4096,
        }
    }
}

/// One pair's buckets.
#[derive(Debug)]
struct Bucket {
    records: f64,
    bytes: f64,
    at: Instant,
}

/// See the module docs.
#[derive(Debug)]
pub struct RelayBudget {
    me: PeerId,
    limits: RelayLimits,
    pairs: HashMap<(PeerId, PeerId), Bucket>,
    forwarded: u64,
    forwarded_bytes: u64,
    dropped: [u64; DROPS],
}

impl RelayBudget {
    /// A budget for the router `me`.
    pub fn new(me: PeerId, limits: RelayLimits) -> Self {
        Self {
            me,
            limits,
            pairs: HashMap::new(),
            forwarded: 0,
            forwarded_bytes: 0,
            dropped: [0; DROPS],
        }
    }

    /// Whether to forward a record of `len` bytes from `from` to `to`;
    /// `connected` says whether `to` is a direct peer of ours. A refusal is
    /// counted and changes nothing else; an admission takes from the pair's
    /// buckets.
    pub fn admit(
        &mut self,
        from: PeerId,
        to: PeerId,
        len: usize,
        connected: bool,
        now: Instant,
    ) -> Result<(), RelayDrop> {
        let verdict = self.check(from, to, len, connected, now);
        match verdict {
            Ok(()) => {
                self.forwarded += 1;
                self.forwarded_bytes += len as u64;
            }
            Err(reason) => self.dropped[reason as usize] += 1,
        }
        verdict
    }

    /// Our own identity switched (issue 20): records to or from the new
    /// ID are ours, not forwarded.
    pub fn set_me(&mut self, me: PeerId) {
        self.me = me;
    }

    /// Forget the pairs `peer` is in (it left).
    pub fn forget(&mut self, peer: PeerId) {
        self.pairs.retain(|(a, b), _| *a != peer && *b != peer);
    }

    /// Records and bytes forwarded since start.
    pub fn forwarded(&self) -> (u64, u64) {
        (self.forwarded, self.forwarded_bytes)
    }

    /// `(label, count)` for every drop reason.
    pub fn dropped(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RelayDrop::ALL
            .iter()
            .map(|r| (r.as_str(), self.dropped[*r as usize]))
    }

    fn check(
        &mut self,
        from: PeerId,
        to: PeerId,
        len: usize,
        connected: bool,
        now: Instant,
    ) -> Result<(), RelayDrop> {
        if from == to || from == self.me || to == self.me {
            return Err(RelayDrop::Loop);
        }
        if !connected {
            return Err(RelayDrop::UnknownTarget);
        }
        if len > self.limits.max_record {
            return Err(RelayDrop::TooLarge);
        }
        let (records, bytes) = (f64::from(self.limits.records), f64::from(self.limits.bytes));
        if !self.pairs.contains_key(&(from, to)) {
            if self.pairs.len() >= self.limits.max_pairs {
                // Full buckets are as good as new ones: drop those first.
                self.pairs
                    .retain(|_, b| refilled(b, records, bytes, now) < (records, bytes));
                if self.pairs.len() >= self.limits.max_pairs {
                    return Err(RelayDrop::TooManyPairs);
                }
            }
            self.pairs.insert(
                (from, to),
                Bucket {
                    records,
                    bytes,
                    at: now,
                },
            );
        }
        let Some(bucket) = self.pairs.get_mut(&(from, to)) else {
            return Err(RelayDrop::TooManyPairs);
        };
        (bucket.records, bucket.bytes) = refilled(bucket, records, bytes, now);
        bucket.at = now;
        if bucket.records < 1.0 {
            return Err(RelayDrop::RecordRate);
        }
        // Lossless in f64 for any record size we admit.
        let len = len as f64;
        if bucket.bytes < len {
            return Err(RelayDrop::ByteRate);
        }
        bucket.records -= 1.0;
        bucket.bytes -= len;
        Ok(())
    }
}

/// A bucket's levels at `now`, refilled at the per-second rates and capped
/// at one second's worth.
fn refilled(bucket: &Bucket, records: f64, bytes: f64, now: Instant) -> (f64, f64) {
    let secs = now.saturating_duration_since(bucket.at).as_secs_f64();
    (
        (bucket.records + secs * records).min(records),
        (bucket.bytes + secs * bytes).min(bytes),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ME: PeerId = PeerId(1);
    const A: PeerId = PeerId(2);
    const B: PeerId = PeerId(3);

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn the_relay_with_the_lowest_measured_rtt_is_chosen_and_status_says_why() {
        let pick = choose([(PeerId(9), ms(40)), (PeerId(7), ms(3)), (PeerId(5), None)]).unwrap();
        assert_eq!(pick.via, PeerId(7));
        assert_eq!(pick.why(), "lowest RTT 3 ms of 3");
        let unmeasured = choose([(PeerId(9), None), (PeerId(5), None)]).unwrap();
        assert_eq!(
            unmeasured.via,
            PeerId(5),
            "the lower ID, so both ends agree"
        );
        assert_eq!(unmeasured.why(), "no RTT measured yet");
        let only = choose([(PeerId(9), ms(80))]).unwrap();
        assert_eq!(only.why(), "only common router");
        assert_eq!(choose([]), None);
    }

    #[test]
    fn a_record_for_an_unknown_target_or_a_loop_is_dropped_and_counted() {
        let now = Instant::now();
        let mut budget = RelayBudget::new(ME, RelayLimits::default());
        assert_eq!(
            budget.admit(A, B, 100, false, now),
            Err(RelayDrop::UnknownTarget)
        );
        assert_eq!(budget.admit(A, A, 100, true, now), Err(RelayDrop::Loop));
        assert_eq!(budget.admit(A, ME, 100, true, now), Err(RelayDrop::Loop));
        assert_eq!(
            budget.admit(A, B, 1 << 20, true, now),
            Err(RelayDrop::TooLarge)
        );
        assert_eq!(budget.forwarded(), (0, 0));
        let dropped: Vec<_> = budget.dropped().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            dropped,
            vec![
                ("relay_unknown_target", 1),
                ("relay_loop", 2),
                ("relay_too_large", 1)
            ]
        );
        assert!(budget.pairs.is_empty(), "refusals leave no state");
    }

    #[test]
    fn a_flooding_pair_is_capped_per_second_and_others_are_not_affected() {
        let t0 = Instant::now();
        let mut budget = RelayBudget::new(ME, RelayLimits::default());
        let passed = (0..10_000)
            .filter(|_| budget.admit(A, B, 100, true, t0).is_ok())
            .count();
        assert_eq!(passed, 50);
        assert!(
            budget.admit(B, A, 100, true, t0).is_ok(),
            "the other direction has its own budget"
        );
        // A second later the bucket is full again, never fuller.
        let later = t0 + Duration::from_secs(10);
        let passed = (0..10_000)
            .filter(|_| budget.admit(A, B, 100, true, later).is_ok())
            .count();
        assert_eq!(passed, 50);
    }

    #[test]
    fn bytes_are_capped_per_pair_per_second() {
        let t0 = Instant::now();
        let mut budget = RelayBudget::new(ME, RelayLimits::default());
        let big = 60 * 1024;
        assert!(budget.admit(A, B, big, true, t0).is_ok());
        assert!(budget.admit(A, B, big, true, t0).is_ok());
        assert_eq!(budget.admit(A, B, big, true, t0), Err(RelayDrop::ByteRate));
        assert!(
            budget
                .admit(A, B, big, true, t0 + Duration::from_millis(500))
                .is_ok()
        );
        assert_eq!(budget.forwarded(), (3, 3 * big as u64));
    }

    #[test]
    fn pairs_tracked_are_bounded_and_idle_ones_make_room() {
        let t0 = Instant::now();
        let limits = RelayLimits {
            max_pairs: 10,
            ..RelayLimits::default()
        };
        let mut budget = RelayBudget::new(ME, limits);
        for i in 0..10 {
            assert!(budget.admit(PeerId(100 + i), B, 10, true, t0).is_ok());
        }
        assert_eq!(
            budget.admit(A, B, 10, true, t0),
            Err(RelayDrop::TooManyPairs)
        );
        // Two seconds later every bucket is full again: room for new pairs.
        assert!(
            budget
                .admit(A, B, 10, true, t0 + Duration::from_secs(2))
                .is_ok()
        );
        assert!(budget.pairs.len() <= 10);
        budget.forget(B);
        assert!(budget.pairs.is_empty());
    }
}
