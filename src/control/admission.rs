//! Admission of inbound TCP connections before their handshake (DESIGN.md
//! "Keys and sessions" → "Handshake": rate-limit handshakes per source and
//! globally, cap half-open connections; "Wire rules": cap connections per
//! router, default 200).
//!
//! Owns: the half-open set (accepted, handshake not finished), a one-second
//! handshake counter per source address and one for all sources. Does not
//! own the connections themselves (the caller says how many are up) nor any
//! timer: a rate window is reset lazily by the next connection, so there is
//! no `poll_timeout`.
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
/// Handshakes accepted from all sources together per [`RATE_WINDOW`]: many
/// sources each under their own limit still cannot make this router spend
/// more than this many message-1 checks a second.
pub const HANDSHAKES_GLOBAL: u32 = 200;
/// Connections (established plus half-open) a router holds at most
/// (DESIGN.md "Wire rules": default 200; multi-hop covers the rest).
pub const MAX_CONNECTIONS: usize = 200;
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
    /// More than [`HANDSHAKES_GLOBAL`] in this window from all sources.
    #[error("global handshake rate limit")]
    GlobalRateLimited,
    /// [`MAX_CONNECTIONS`] connections are already up or in progress.
    #[error("connection cap of {MAX_CONNECTIONS} reached")]
    ConnectionCap,
}

impl Refusal {
    /// The label in the status `handshakes` counters and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HalfOpenCap => "half_open_cap",
            Self::HalfOpenSourceCap => "half_open_source_cap",
            Self::RateLimited => "rate_limited",
            Self::GlobalRateLimited => "global_rate_limited",
            Self::ConnectionCap => "connection_cap",
        }
    }
}

/// Half-open connections and per-source handshake rates.
#[derive(Debug, Default)]
pub struct Admission {
    half_open: HashMap<ConnectionId, IpAddr>,
    /// Per source: the start of its current window and handshakes in it.
    rate: HashMap<IpAddr, (Instant, u32)>,
    /// All sources: the start of the current window and handshakes in it.
    global: Option<(Instant, u32)>,
}

impl Admission {
    /// Nothing half-open, no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection from `source` was accepted while `established`
    /// connections are up: admit it as half-open `connection`, or refuse
    /// it. A refusal by a cap changes nothing; a refusal by rate still
    /// counts the attempt (a flood stays limited).
    pub fn admit(
        &mut self,
        connection: ConnectionId,
        source: IpAddr,
        established: usize,
        now: Instant,
    ) -> Result<(), Refusal> {
        if established + self.half_open.len() >= MAX_CONNECTIONS {
            return Err(Refusal::ConnectionCap);
        }
        if self.half_open.len() >= MAX_HALF_OPEN {
            return Err(Refusal::HalfOpenCap);
        }
        let from_source = self.half_open.values().filter(|a| **a == source).count();
        if from_source >= MAX_HALF_OPEN_PER_SOURCE {
            return Err(Refusal::HalfOpenSourceCap);
        }
        let entry = self.rate.entry(source).or_insert((now, 0));
        if count_in_window(entry, now) > HANDSHAKES_PER_SOURCE {
            return Err(Refusal::RateLimited);
        }
        let global = self.global.get_or_insert((now, 0));
        if count_in_window(global, now) > HANDSHAKES_GLOBAL {
            return Err(Refusal::GlobalRateLimited);
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

/// Counts one attempt in `window` (its start and count), starting a new
/// window once [`RATE_WINDOW`] has passed; the count including this one.
fn count_in_window(window: &mut (Instant, u32), now: Instant) -> u32 {
    if now.saturating_duration_since(window.0) > RATE_WINDOW {
        *window = (now, 0);
    }
    window.1 = window.1.saturating_add(1);
    window.1
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
            assert_eq!(a.admit(id, ip(1), 0, now), Ok(()));
        }
        assert_eq!(a.admit(100, ip(1), 0, now), Err(Refusal::HalfOpenSourceCap));
        assert_eq!(a.admit(101, ip(2), 0, now), Ok(()));
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
                a.admit(id, ip(host), 0, now)
                    .unwrap_or_else(|r| panic!("{r}"));
                id += 1;
            }
        }
        assert_eq!(a.admit(1000, ip(250), 0, now), Err(Refusal::HalfOpenCap));
        a.finished(0);
        assert_eq!(a.admit(1000, ip(250), 0, now), Ok(()));
    }

    #[test]
    fn a_source_over_its_handshake_rate_is_refused_until_the_window_passes() {
        let now = Instant::now();
        let mut a = Admission::new();
        for id in 0..u64::from(HANDSHAKES_PER_SOURCE) {
            assert_eq!(a.admit(id, ip(1), 0, now), Ok(()));
            a.finished(id);
        }
        assert_eq!(a.admit(99, ip(1), 0, now), Err(Refusal::RateLimited));
        assert_eq!(
            a.admit(98, ip(2), 0, now),
            Ok(()),
            "other sources unaffected"
        );
        let later = now + RATE_WINDOW + Duration::from_millis(1);
        assert_eq!(a.admit(99, ip(1), 0, later), Ok(()));
    }

    #[test]
    fn many_sources_each_under_their_limit_meet_the_global_rate_limit() {
        let now = Instant::now();
        let mut a = Admission::new();
        let mut id = 0u64;
        let mut admitted = 0;
        let mut refused = Vec::new();
        for host in 1..=250u8 {
            for _ in 0..2 {
                match a.admit(id, ip(host), 0, now) {
                    Ok(()) => admitted += 1,
                    Err(r) => refused.push(r),
                }
                a.finished(id);
                id += 1;
            }
        }
        assert_eq!(admitted, HANDSHAKES_GLOBAL as usize);
        assert!(refused.iter().all(|r| *r == Refusal::GlobalRateLimited));
        let later = now + RATE_WINDOW + Duration::from_millis(1);
        assert_eq!(a.admit(id, ip(1), 0, later), Ok(()), "a new window");
    }

    #[test]
    fn inbound_connections_stop_at_the_connection_cap_counting_established_ones() {
        let now = Instant::now();
        let mut a = Admission::new();
        assert_eq!(
            a.admit(1, ip(1), MAX_CONNECTIONS, now),
            Err(Refusal::ConnectionCap)
        );
        assert_eq!(a.half_open(), 0, "a refusal by a cap changes nothing");
        assert_eq!(a.admit(1, ip(1), MAX_CONNECTIONS - 2, now), Ok(()));
        assert_eq!(a.admit(2, ip(2), MAX_CONNECTIONS - 2, now), Ok(()));
        assert_eq!(
            a.admit(3, ip(3), MAX_CONNECTIONS - 2, now),
            Err(Refusal::ConnectionCap),
            "half-open ones count too"
        );
        a.finished(1);
        assert_eq!(a.admit(3, ip(3), MAX_CONNECTIONS - 2, now), Ok(()));
    }

    #[test]
    fn refusal_labels_are_the_status_counter_names() {
        assert_eq!(Refusal::HalfOpenCap.as_str(), "half_open_cap");
        assert_eq!(Refusal::HalfOpenSourceCap.as_str(), "half_open_source_cap");
        assert_eq!(Refusal::RateLimited.as_str(), "rate_limited");
        assert_eq!(Refusal::GlobalRateLimited.as_str(), "global_rate_limited");
        assert_eq!(Refusal::ConnectionCap.as_str(), "connection_cap");
    }
}
