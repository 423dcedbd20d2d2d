//! `Punch`: hole punching between two routers that have no direct link,
//! with the mesh as the rendezvous (sans-IO; DESIGN.md "Endpoints, NAT and
//! paths", issue 16).
//!
//! Owns, per peer: the attempt in progress (waiting for the peer's offer
//! through a rendezvous router, or probing), the path a punch fixed, the
//! retry back-off after a failure, and the counters (attempts, successes,
//! failures by [`PunchFailure`]). Does not own the rendezvous' forwarding
//! (`super::relay`), the probes' sealing (the heartbeat path sends them
//! under the pair's keys and reports only *authenticated* answers), the
//! candidates (the peers' signed entries) or the routes.
//!
//! The shape, for a pair A, B with no direct link:
//! 1. A calls [`Punch::want`] with a router R connected to both, its own
//!    candidates and B's; the core asks for `Request { via: R, to: B }`
//!    carrying A's candidates, and waits [`PunchConfig::offer_timeout`]
//!    for B's offer.
//! 2. B gets A's offer through R ([`Punch::handle_offer`]): it answers the
//!    same way and starts probing at once; A starts probing when B's offer
//!    arrives. Both probe every candidate of the other every 50–200 ms
//!    (jitter from the seed) for [`PunchConfig::window`]: the first probes
//!    open each NAT's mapping towards the other, later ones get through.
//! 3. The first authenticated answer fixes the path ([`PunchEvent::Punched`]);
//!    an answer from another candidate with a lower RTT within the window
//!    moves it ([`PunchEvent::Improved`]): the lowest measured RTT wins, not
//!    the first that worked.
//! 4. No answer within the window, no offer, no common router or a peer with
//!    no public candidate (a symmetric NAT is never believed, so its router
//!    advertises none) is a [`PunchEvent::Failed`] with the reason, and a
//!    retry after a doubling wait capped at [`PunchConfig::retry_cap`]
//!    (75–100 % of it, so a cluster-wide restart does not synchronise); the
//!    pair stays relayed meanwhile. A punched path that stops answering
//!    ([`Punch::handle_path_lost`]) is retried at once, then the same way.
//!
//! Drain order after every input: [`Punch::poll_transmit`] until `None`
//! (requests to rendezvous routers, then probes), then [`Punch::poll_event`]
//! until `None`, then sleep until [`Punch::poll_timeout`].
//!
//! Bounds: at most [`MAX_CANDIDATES`] candidates per peer, at most
//! [`PunchConfig::max_rounds`] probe rounds per attempt, at most one attempt
//! in progress per peer; an offer from a peer whose attempt was just
//! answered is ignored, so a flood of offers costs nothing.

mod candidates;
#[cfg(test)]
mod tests;

pub use candidates::{order, usable};

use crate::id::PeerId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most candidate endpoints probed per peer (the topology entry's bound).
pub const MAX_CANDIDATES: usize = crate::control::endpoints::MAX_ENDPOINTS;

/// Timing and bounds of punching.
#[derive(Clone, Debug)]
pub struct PunchConfig {
    /// Shortest gap between two probe rounds.
    pub probe_min: Duration,
    /// Longest gap between two probe rounds.
    pub probe_max: Duration,
    /// How long both sides probe before the attempt fails.
    pub window: Duration,
    /// Most probe rounds per attempt (bounds the probes whatever the clock).
    pub max_rounds: u32,
    /// How long to wait for the peer's offer through the rendezvous.
    pub offer_timeout: Duration,
    /// The first wait after a failure; it doubles up to `retry_cap`.
    pub retry_initial: Duration,
    /// The longest wait between attempts (issue 16: a pair without a direct
    /// path keeps trying at least every 30 s).
    pub retry_cap: Duration,
}

impl Default for PunchConfig {
    fn default() -> Self {
        Self {
            probe_min: Duration::from_millis(50),
            probe_max: Duration::from_millis(200),
            window: Duration::from_secs(5),
            max_rounds: 64,
            offer_timeout: Duration::from_secs(3),
            retry_initial: Duration::from_secs(5),
            retry_cap: Duration::from_secs(30),
        }
    }
}

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
}

impl PunchCounters {
    /// `(label, count)` for every failure reason.
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        PunchFailure::ALL
            .iter()
            .map(|r| (r.as_str(), self.failures[*r as usize]))
    }
}

#[derive(Debug)]
enum Phase {
    Requested {
        deadline: Instant,
    },
    Probing {
        candidates: Vec<SocketAddr>,
        next_round: Instant,
        rounds: u32,
        deadline: Instant,
        best: Option<(SocketAddr, Duration)>,
    },
    Punched {
        addr: SocketAddr,
        rtt: Duration,
    },
    Failed {
        reason: PunchFailure,
        retry_at: Option<Instant>,
    },
}

#[derive(Debug)]
struct Pair {
    phase: Phase,
    /// The next wait after a failure (doubles up to the cap).
    interval: Duration,
}

/// See the module docs.
#[derive(Debug)]
pub struct Punch {
    config: PunchConfig,
    rng: StdRng,
    pairs: BTreeMap<PeerId, Pair>,
    transmits: VecDeque<PunchTransmit>,
    events: VecDeque<PunchEvent>,
    counters: PunchCounters,
}

impl Punch {
    /// A core with the default timing; randomness from `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_config(PunchConfig::default(), seed)
    }

    /// A core with explicit timing (tests, the simulator).
    pub fn with_config(config: PunchConfig, seed: u64) -> Self {
        Self {
            config,
            rng: StdRng::seed_from_u64(seed),
            pairs: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: PunchCounters::default(),
        }
    }

    /// Start punching to `peer` if nothing is in progress, fixed, or
    /// waiting out a back-off: `via` is a router connected to both (the
    /// lowest-RTT one, see `super::relay::choose`), `mine` our endpoints,
    /// `theirs` the peer's from its signed entry.
    pub fn want(
        &mut self,
        peer: PeerId,
        via: Option<PeerId>,
        mine: &[SocketAddr],
        theirs: &[SocketAddr],
        now: Instant,
    ) {
        if let Some(pair) = self.pairs.get(&peer) {
            match pair.phase {
                Phase::Failed {
                    retry_at: Some(at), ..
                } if at > now => return,
                Phase::Failed { .. } => {}
                _ => return,
            }
        }
        self.counters.attempts += 1;
        let Some(via) = via else {
            self.fail(peer, PunchFailure::NoRendezvous, now);
            return;
        };
        // Either side without a public endpoint (a symmetric NAT, never
        // believed) makes the pair unpunchable: the peer would refuse our
        // offer by the same rule, so both ends name the reason and nothing
        // is sent.
        if usable(theirs, mine).is_empty() {
            self.fail(peer, PunchFailure::SymmetricNat, now);
            return;
        }
        let theirs = usable(mine, theirs);
        if theirs.is_empty() {
            self.fail(peer, PunchFailure::SymmetricNat, now);
            return;
        }
        self.request(via, peer, mine);
        let deadline = now + self.config.offer_timeout;
        self.enter(peer, Phase::Requested { deadline });
    }

    /// The peer's offer arrived through `via`: answer it (unless this is the
    /// answer to our own request) and probe its candidates.
    pub fn handle_offer(
        &mut self,
        peer: PeerId,
        via: PeerId,
        mine: &[SocketAddr],
        theirs: &[SocketAddr],
        now: Instant,
    ) {
        let ordered = usable(mine, theirs);
        let answering = match self.pairs.get(&peer).map(|p| &p.phase) {
            // Our own request's answer: probe, do not answer again.
            Some(Phase::Requested { .. }) => false,
            // Already probing or punched: a repeated offer changes nothing.
            Some(Phase::Probing { .. } | Phase::Punched { .. }) => return,
            Some(Phase::Failed { .. }) | None => {
                self.counters.attempts += 1;
                true
            }
        };
        if ordered.is_empty() {
            // Nothing of the peer's is reachable from here: do not answer
            // (its attempt ends as `NoOffer`), fail ours.
            self.fail(peer, PunchFailure::SymmetricNat, now);
            return;
        }
        if answering {
            self.request(via, peer, mine);
        }
        let deadline = now + self.config.window;
        self.enter(
            peer,
            Phase::Probing {
                candidates: ordered,
                next_round: now,
                rounds: 0,
                deadline,
                best: None,
            },
        );
        self.probe_due(now);
    }

    /// An authenticated probe answer from `peer`, received from `from`,
    /// `rtt` after the probe left. Answers from an address that is not one
    /// of the peer's candidates still count: it is where its NAT maps it.
    pub fn handle_answer(&mut self, peer: PeerId, from: SocketAddr, rtt: Duration) {
        let Some(pair) = self.pairs.get_mut(&peer) else {
            return;
        };
        let Phase::Probing { best, .. } = &mut pair.phase else {
            return;
        };
        match best {
            None => {
                *best = Some((from, rtt));
                self.counters.successes += 1;
                pair.interval = self.config.retry_initial;
                self.events.push_back(PunchEvent::Punched {
                    peer,
                    addr: from,
                    rtt,
                });
            }
            Some((addr, best_rtt)) if *addr != from && rtt < *best_rtt => {
                *best = Some((from, rtt));
                self.events.push_back(PunchEvent::Improved {
                    peer,
                    addr: from,
                    rtt,
                });
            }
            Some((addr, best_rtt)) if *addr == from => *best_rtt = (*best_rtt).min(rtt),
            Some(_) => {}
        }
    }

    /// The punched path to `peer` stopped answering: relayed again, and a
    /// new attempt at once (a path that worked and broke is most often a
    /// NAT that rebound, whose new mapping is there to punch; issue 16).
    /// The back-off still doubles, so a path that keeps breaking is retried
    /// ever more slowly once an attempt fails.
    pub fn handle_path_lost(&mut self, peer: PeerId, now: Instant) {
        // Also within the window, once an answer fixed the path.
        if matches!(self.state(peer), Some(PunchState::Punched { .. })) {
            self.fail(peer, PunchFailure::PathLost, now);
            if let Some(Pair {
                phase: Phase::Failed { retry_at, .. },
                ..
            }) = self.pairs.get_mut(&peer)
            {
                *retry_at = Some(now);
            }
        }
    }

    /// `peer` has a direct link now, or left: forget the pair.
    pub fn forget(&mut self, peer: PeerId) {
        self.pairs.remove(&peer);
    }

    /// Probe rounds due, windows and offer waits over, back-offs over.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.probe_due(now);
        let mut failed = Vec::new();
        for (peer, pair) in &mut self.pairs {
            match &mut pair.phase {
                Phase::Requested { deadline, .. } if *deadline <= now => {
                    failed.push((*peer, PunchFailure::NoOffer));
                }
                Phase::Probing { deadline, best, .. } if *deadline <= now => match *best {
                    Some((addr, rtt)) => pair.phase = Phase::Punched { addr, rtt },
                    None => failed.push((*peer, PunchFailure::NoAnswer)),
                },
                Phase::Failed { retry_at, .. } if retry_at.is_some_and(|at| at <= now) => {
                    *retry_at = None;
                    self.events.push_back(PunchEvent::RetryDue { peer: *peer });
                }
                _ => {}
            }
        }
        for (peer, reason) in failed {
            self.fail(peer, reason, now);
        }
    }

    /// The next thing to send.
    pub fn poll_transmit(&mut self) -> Option<PunchTransmit> {
        self.transmits.pop_front()
    }

    /// The next thing to act on.
    pub fn poll_event(&mut self) -> Option<PunchEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline and what it is for.
    pub fn poll_timeout(&self) -> Option<(Instant, PunchTimer)> {
        self.pairs
            .values()
            .flat_map(|pair| match &pair.phase {
                Phase::Requested { deadline, .. } => {
                    [Some((*deadline, PunchTimer::Deadline)), None]
                }
                Phase::Probing {
                    next_round,
                    deadline,
                    rounds,
                    ..
                } => [
                    (*rounds < self.config.max_rounds).then_some((*next_round, PunchTimer::Probe)),
                    Some((*deadline, PunchTimer::Deadline)),
                ],
                Phase::Punched { .. } => [None, None],
                Phase::Failed { retry_at, .. } => {
                    [retry_at.map(|at| (at, PunchTimer::Retry)), None]
                }
            })
            .flatten()
            .min_by_key(|(at, _)| *at)
    }

    /// Where the pair with `peer` is, if punching was ever wanted.
    pub fn state(&self, peer: PeerId) -> Option<PunchState> {
        Some(match &self.pairs.get(&peer)?.phase {
            Phase::Requested { .. } => PunchState::Requested,
            Phase::Probing {
                best: Some((addr, rtt)),
                ..
            }
            | Phase::Punched { addr, rtt } => PunchState::Punched {
                addr: *addr,
                rtt: *rtt,
            },
            Phase::Probing { .. } => PunchState::Probing,
            Phase::Failed { reason, .. } => PunchState::Failed(*reason),
        })
    }

    /// The counters since start.
    pub fn counters(&self) -> &PunchCounters {
        &self.counters
    }

    /// Asks `via` to offer our endpoints to `peer` (as advertised: the
    /// receiver tells the listen address from the public ones by position).
    fn request(&mut self, via: PeerId, peer: PeerId, mine: &[SocketAddr]) {
        self.transmits.push_back(PunchTransmit::Request {
            via,
            to: peer,
            candidates: mine.iter().take(MAX_CANDIDATES).copied().collect(),
        });
    }

    /// Moves the pair with `peer` to `phase`, keeping its back-off.
    fn enter(&mut self, peer: PeerId, phase: Phase) {
        let interval = self.interval_of(peer);
        self.pairs.insert(peer, Pair { phase, interval });
    }

    fn interval_of(&self, peer: PeerId) -> Duration {
        self.pairs
            .get(&peer)
            .map_or(self.config.retry_initial, |p| p.interval)
    }

    /// One probe to every candidate of every attempt whose round is due.
    fn probe_due(&mut self, now: Instant) {
        let (min, max, max_rounds) = (
            self.config.probe_min,
            self.config.probe_max,
            self.config.max_rounds,
        );
        for (peer, pair) in &mut self.pairs {
            let Phase::Probing {
                candidates,
                next_round,
                rounds,
                deadline,
                ..
            } = &mut pair.phase
            else {
                continue;
            };
            if *next_round > now || *rounds >= max_rounds || *deadline <= now {
                continue;
            }
            for addr in candidates.iter() {
                self.transmits.push_back(PunchTransmit::Probe {
                    peer: *peer,
                    addr: *addr,
                });
            }
            *rounds += 1;
            *next_round = now + self.rng.gen_range(min..=max);
            if *rounds >= max_rounds {
                // Out of rounds: the last probes get one gap to be answered.
                *deadline = (*deadline).min(now + max);
            }
        }
    }

    fn fail(&mut self, peer: PeerId, reason: PunchFailure, now: Instant) {
        self.counters.failures[reason as usize] += 1;
        let interval = self.interval_of(peer);
        // 75–100 %: jitter that never exceeds the interval (and so the cap).
        let wait = interval.mul_f64(self.rng.gen_range(0.75..=1.0));
        self.pairs.insert(
            peer,
            Pair {
                phase: Phase::Failed {
                    reason,
                    retry_at: Some(now + wait),
                },
                interval: (interval * 2).min(self.config.retry_cap),
            },
        );
        self.events.push_back(PunchEvent::Failed { peer, reason });
    }
}
