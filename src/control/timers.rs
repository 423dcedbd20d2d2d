//! The control loop's one timer (DESIGN.md "Sans-IO cores": drivers sleep
//! until the earliest `poll_timeout`, with no fixed tick).
//!
//! Owns nothing but the rule for turning the cores' deadlines into one
//! wake-up: the earliest wins, and the loop never wakes sooner than
//! [`MIN_SLEEP`] after a pass, so a core whose deadline stays in the past
//! after its `handle_timeout` (a bug) costs a wake-up per millisecond and a
//! debug line, not a spinning CPU.

use std::time::{Duration, Instant};

/// The shortest sleep after a pass.
pub const MIN_SLEEP: Duration = Duration::from_millis(1);

/// Which core's deadline the loop sleeps until.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Topology push, anti-entropy or reaping.
    Gossip,
    /// The ring's anti-entropy or a donation timeout.
    Ipam,
    /// A keyset expiry or the rekey policy.
    Keys,
    /// A heartbeat, keepalive or probe, or a liveness verdict.
    Heartbeat,
    /// A dial or its time limit.
    Dial,
    /// The end of a `weft leave` grace period.
    Leave,
    /// Looking for routers to open a relayed connection to.
    Relay,
    /// A punch probe round, window, offer wait or retry.
    Punch,
    /// A dual-stack peer's family probe is due or lost.
    Family,
}

/// The earliest of `deadlines`, but not before `now + MIN_SLEEP`; `None`
/// when no core has a deadline.
pub fn next_wake(
    now: Instant,
    deadlines: impl IntoIterator<Item = (Option<Instant>, Wake)>,
) -> Option<(Instant, Wake)> {
    let (at, why) = deadlines
        .into_iter()
        .filter_map(|(t, why)| Some((t?, why)))
        .min_by_key(|(t, _)| *t)?;
    if at <= now {
        tracing::debug!(?why, late = ?now - at, "a deadline is still due after the pass");
    }
    Some((at.max(now + MIN_SLEEP), why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_deadline_wins() {
        let now = Instant::now();
        let s = Duration::from_secs(1);
        let wake = next_wake(
            now,
            [
                (Some(now + 3 * s), Wake::Gossip),
                (None, Wake::Dial),
                (Some(now + s), Wake::Heartbeat),
                (Some(now + 2 * s), Wake::Keys),
            ],
        );
        assert_eq!(wake, Some((now + s, Wake::Heartbeat)));
    }

    #[test]
    fn a_deadline_left_in_the_past_cannot_make_the_loop_spin() {
        let now = Instant::now();
        let stuck = now.checked_sub(Duration::from_secs(5)).unwrap_or(now);
        let wake = next_wake(now, [(Some(stuck), Wake::Ipam)]);
        assert_eq!(wake, Some((now + MIN_SLEEP, Wake::Ipam)));
    }

    #[test]
    fn no_deadline_means_no_wake_up() {
        assert_eq!(next_wake(Instant::now(), [(None, Wake::Leave)]), None);
    }
}
