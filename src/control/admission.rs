//! Admission of inbound TCP connections before their handshake (DESIGN.md
//! "Keys and sessions" → "Handshake": rate-limit handshakes per source, cap
//! half-open connections).
//!
//! Owns: the half-open set (accepted, handshake not finished) and a
//! one-second handshake counter per source address. Does not own the
//! connections themselves nor any timer: a rate window is reset lazily by
//! the next connection from that source, so there is no `poll_timeout`.
//!
//! Inputs: [`Admission::admit`] on accept, [`Admission::finished`] when the
//! handshake completes or fails. Pure: `now` comes in, nothing goes out but
//! the verdict.

use super::connection::ConnectionId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Handshakes accepted per source address per [`RATE_WINDOW`].
pub const HANDSHAKES_PER_SOURCE: u32 = 20;
/// The rate limit's window.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Connections accepted whose handshake has not completed yet.
pub const MAX_HALF_OPEN: usize = 64;
/// Of those, from any one source address: one host alone cannot fill the
/// global cap and lock newcomers out (tests/hostile.rs).
pub const MAX_HALF_OPEN_PER_SOURCE: usize = 8;
/// Rate entries kept before stale ones are swept (bounds memory under a
/// flood from many sources).
const RATE_ENTRIES_SWEEP: usize = 4096;

/// Why a connection was refused before its handshake. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// [`MAX_HALF_OPEN`] handshakes are already in progress.
    #[error("too many handshakes in progress")]
    HalfOpenCap,
    /// [`MAX_HALF_OPEN_PER_SOURCE`] from this source are in progress.
    #[error("too many handshakes in progress from this source")]
    HalfOpenSourceCap,
    /// More than [`HANDSHAKES_PER_SOURCE`] in this window from this source.
    #[error("handshake rate limit for this source")]
    RateLimited,
}

impl Refusal {
    /// The label in the status `handshakes` counters and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HalfOpenCap => "half_open_cap",
            Self::HalfOpenSourceCap => "half_open_source_cap",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Half-open connections and per-source handshake rates.
#[derive(Debug, Default)]
pub struct Admission {
    half_open: HashMap<ConnectionId, IpAddr>,
    /// Per source: the start of its current window and handshakes in it.
    rate: HashMap<IpAddr, (Instant, u32)>,
}

impl Admission {
    /// Nothing half-open, no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection from `source` was accepted: admit it as half-open
    /// `connection`, or refuse it. A refusal by a cap changes nothing; a
    /// refusal by rate still counts the attempt (a flood stays limited).
    pub fn admit(
        &mut self,
        connection: ConnectionId,
        source: IpAddr,
        now: Instant,
    ) -> Result<(), Refusal> {
        if self.half_open.len() >= MAX_HALF_OPEN {
            return Err(Refusal::HalfOpenCap);
        }
        let from_source = self.half_open.values().filter(|a| **a == source).count();
        if from_source >= MAX_HALF_OPEN_PER_SOURCE {
            return Err(Refusal::HalfOpenSourceCap);
        }
        let entry = self.rate.entry(source).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) > RATE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > HANDSHAKES_PER_SOURCE {
            return Err(Refusal::RateLimited);
        }
        if self.rate.len() > RATE_ENTRIES_SWEEP {
            self.rate
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < RATE_WINDOW);
        }
        self.half_open.insert(connection, source);
        Ok(())
    }

    /// `connection`'s handshake completed or failed: it is no longer
    /// half-open. Unknown connections (outbound ones) are ignored.
    pub fn finished(&mut self, connection: ConnectionId) {
        self.half_open.remove(&connection);
    }

    /// Handshakes in progress on inbound connections.
    pub fn half_open(&self) -> usize {
        self.half_open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn one_source_is_capped_below_the_global_cap_and_others_still_get_in() {
        let now = Instant::now();
        let mut a = Admission::new();
        for id in 0..MAX_HALF_OPEN_PER_SOURCE as u64 {
            assert_eq!(a.admit(id, ip(1), now), Ok(()));
        }
        assert_eq!(a.admit(100, ip(1), now), Err(Refusal::HalfOpenSourceCap));
        assert_eq!(a.admit(101, ip(2), now), Ok(()));
    }

    #[test]
    fn the_global_half_open_cap_refuses_everyone_until_a_handshake_finishes() {
        let now = Instant::now();
        let mut a = Admission::new();
        let mut id = 0;
        'fill: for host in 1..=255u8 {
            for _ in 0..MAX_HALF_OPEN_PER_SOURCE {
                if a.half_open() == MAX_HALF_OPEN {
                    break 'fill;
                }
                a.admit(id, ip(host), now).unwrap_or_else(|r| panic!("{r}"));
                id += 1;
            }
        }
        assert_eq!(a.admit(1000, ip(250), now), Err(Refusal::HalfOpenCap));
        a.finished(0);
        assert_eq!(a.admit(1000, ip(250), now), Ok(()));
    }

    #[test]
    fn a_source_over_its_handshake_rate_is_refused_until_the_window_passes() {
        let now = Instant::now();
        let mut a = Admission::new();
        for id in 0..u64::from(HANDSHAKES_PER_SOURCE) {
            assert_eq!(a.admit(id, ip(1), now), Ok(()));
            a.finished(id);
        }
        assert_eq!(a.admit(99, ip(1), now), Err(Refusal::RateLimited));
        assert_eq!(a.admit(98, ip(2), now), Ok(()), "other sources unaffected");
        let later = now + RATE_WINDOW + Duration::from_millis(1);
        assert_eq!(a.admit(99, ip(1), later), Ok(()));
    }

    #[test]
    fn refusal_labels_are_the_status_counter_names() {
        assert_eq!(Refusal::HalfOpenCap.as_str(), "half_open_cap");
        assert_eq!(Refusal::HalfOpenSourceCap.as_str(), "half_open_source_cap");
        assert_eq!(Refusal::RateLimited.as_str(), "rate_limited");
    }
}
