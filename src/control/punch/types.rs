//! The punch core's inputs, outputs and reports (see `super`): what it
//! sends, what the control task acts on, why an attempt failed, and the
//! counters. Plain data; every rule is in [`super::Punch`].

use crate::id::PeerId;
use std::net::SocketAddr;
use std::time::Duration;

/// Why an attempt failed; `as_str` is the metric label and the reason in
/// status (`relayed via NAME (reason)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PunchFailure {
    /// No router is connected to both ends.
    NoRendezvous = 0,
    /// The peer advertises no endpoint but its listen address: its NAT
    /// gives each destination another port (symmetric NAT), which is never
    /// believed, or none was observed yet.
    SymmetricNat = 1,
    /// The peer never answered our request through the rendezvous.
    NoOffer = 2,
    /// Both sides probed for the whole window and no answer authenticated
    /// (a NAT that filters by destination port on both sides, or a
    /// symmetric one on the other side).
    NoAnswer = 3,
    /// A punched path stopped answering heartbeats.
    PathLost = 4,
}

/// How many [`PunchFailure`]s there are.
const FAILURES: usize = 5;

impl PunchFailure {
    /// Every reason, in counter order.
    pub const ALL: [Self; FAILURES] = [
        Self::NoRendezvous,
        Self::SymmetricNat,
        Self::NoOffer,
        Self::NoAnswer,
        Self::PathLost,
    ];

    /// The metric label, also the reason in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRendezvous => "no common router",
            Self::SymmetricNat => "symmetric NAT",
            Self::NoOffer => "no punch offer",
            Self::NoAnswer => "punch unanswered",
            Self::PathLost => "punched path lost",
        }
    }
}

/// What to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PunchTransmit {
    /// Send `via` a punch request for `to` carrying our candidates (it
    /// forwards it as an offer from us; `super::relay` bounds it).
    Request {
        /// The rendezvous router.
        via: PeerId,
        /// The router to punch to.
        to: PeerId,
        /// Our advertised endpoints in their advertised order (listen
        /// address first; see [`usable`]).
        candidates: Vec<SocketAddr>,
    },
    /// Send one authenticated probe to `peer` at `addr` on the heartbeat
    /// path (UDP, from the router's one data socket, so the NAT mapping it
    /// opens is the one data will use).
    Probe {
        /// The peer.
        peer: PeerId,
        /// One of its candidates.
        addr: SocketAddr,
    },
}

/// What the control task must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PunchEvent {
    /// The first authenticated answer: data to `peer` may go to `addr`.
    Punched {
        /// The peer.
        peer: PeerId,
        /// The candidate that answered.
        addr: SocketAddr,
        /// The probe's round trip.
        rtt: Duration,
    },
    /// A later answer within the window had a lower RTT: move to it.
    Improved {
        /// The peer.
        peer: PeerId,
        /// The better candidate.
        addr: SocketAddr,
        /// Its round trip.
        rtt: Duration,
    },
    /// The attempt failed; the pair stays relayed for `reason`.
    Failed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: PunchFailure,
    },
    /// The wait after a failure is over: call [`Punch::want`] again with
    /// fresh candidates and a rendezvous.
    RetryDue {
        /// The peer.
        peer: PeerId,
    },
}

/// Why the core wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchTimer {
    /// The next probe round of some attempt.
    Probe,
    /// Some attempt's window (or offer wait) ends.
    Deadline,
    /// Some failed pair may be retried.
    Retry,
}

/// Where a pair is, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PunchState {
    /// Waiting for the peer's request (its turn to request, ours to probe
    /// first).
    Awaiting,
    /// Waiting for the peer's offer through the rendezvous.
    Requested,
    /// Probing the peer's candidates.
    Probing,
    /// A path is fixed at `addr`.
    Punched {
        /// The candidate in use.
        addr: SocketAddr,
        /// Its lowest measured round trip.
        rtt: Duration,
    },
    /// The last attempt failed; relayed until the next.
    Failed(PunchFailure),
}

/// Attempts, successes and failures by reason since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PunchCounters {
    /// Attempts started (by us or answering the peer's offer).
    pub attempts: u64,
    /// Attempts that fixed a path.
    pub successes: u64,
    /// Failures, indexed by [`PunchFailure`] as `usize`.
    pub failures: [u64; FAILURES],
    /// Offers ignored in the quiet period after an unanswered window.
    pub offers_early: u64,
}

impl PunchCounters {
    /// `(label, count)` for every failure reason.
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        PunchFailure::ALL
            .iter()
            .map(|r| (r.as_str(), self.failures[*r as usize]))
    }
}
