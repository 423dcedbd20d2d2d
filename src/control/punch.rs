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
//! 1. Both call [`Punch::want`] with a router R connected to both, their
//!    own candidates and the other's. The one whose turn it is to request
//!    (A; see "Who probes first") asks for `Request { via: R, to: B }`
//!    carrying its candidates and waits [`PunchConfig::offer_timeout`] for
//!    B's offer; B waits for A's request ([`PunchConfig::await_request`]).
//! 2. B gets A's offer through R ([`Punch::handle_offer`]): it answers the
//!    same way and starts probing at once; A starts probing when B's offer
//!    arrives, so B's probes leave first. Both probe every candidate of the
//!    other every 50–200 ms (jitter from the seed) for
//!    [`PunchConfig::window`]: the first probes open each NAT's mapping
//!    towards the other, later ones get through.
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
//! **Who probes first.** A Linux masquerade gateway that lets unsolicited
//! inbound reach itself keeps a conntrack entry for a probe that arrives
//! before its own router's first probe left; that router's flow to the
//! prober then gets another source port and the punch cannot work while
//! the entry lives (30 s after its last packet, `nf_conntrack_udp_timeout`).
//! Such a side must probe first; neither side knows its gateway's kind. So
//! the order is explicit and alternates: the first attempt's requester is
//! the side that [`PeerId::leads`] (its peer probes first); after an
//! unanswered window the sides swap, and the next attempt waits
//! [`PunchConfig::quiet`] (longer than that timeout) so that stale entries
//! at both gateways have expired. Two routers behind such gateways on both
//! ends still race (each must probe first); ARCHITECTURE.md "Endpoints,
//! NAT and paths".
//!
//! Drain order after every input: [`Punch::poll_transmit`] until `None`
//! (requests to rendezvous routers, then probes), then [`Punch::poll_event`]
//! until `None`, then sleep until [`Punch::poll_timeout`].
//!
//! Bounds: at most [`MAX_CANDIDATES`] candidates per peer, at most
//! [`PunchConfig::max_rounds`] probe rounds per attempt, at most one attempt
//! in progress per peer; an offer from a peer whose attempt was just
//! answered is ignored, so a flood of offers costs nothing; an offer in the
//! first half of the quiet period after an unanswered window is ignored
//! and counted, so a relayed peer that floods offers and never answers
//! gets one window of probes per half quiet period, not one per window.

mod candidates;
#[cfg(test)]
mod tests;
mod types;

pub use candidates::{order, usable};
pub use types::{PunchCounters, PunchEvent, PunchFailure, PunchState, PunchTimer, PunchTransmit};

use crate::id::{FollowRotation, PeerId};
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
    /// path keeps trying at least every 30 s), except after an unanswered
    /// window (`quiet`).
    pub retry_cap: Duration,
    /// After an unanswered window, no probe to the pair for this long
    /// (100–115 % of it): longer than a NAT's UDP timeout for a flow that
    /// was never answered (Linux: 30 s), so that the entries the failed
    /// attempt left at both gateways are gone before the order swaps.
    pub quiet: Duration,
    /// How long the side that should answer waits for the peer's request
    /// before it sends its own (twice that when it does not lead, so that
    /// two sides both waiting end in an ordered attempt).
    pub await_request: Duration,
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
            quiet: Duration::from_secs(35),
            await_request: Duration::from_secs(3),
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Our turn to answer: waiting for the peer's request, ours at
    /// `deadline` if none came.
    Awaiting {
        deadline: Instant,
        via: PeerId,
        mine: Vec<SocketAddr>,
    },
    Requested {
        deadline: Instant,
    },
    Probing {
        candidates: Vec<SocketAddr>,
        next_round: Instant,
        rounds: u32,
        deadline: Instant,
        best: Option<(SocketAddr, Duration)>,
        /// We answered the peer's request, so our probes left first.
        went_first: bool,
    },
    Punched {
        addr: SocketAddr,
        rtt: Duration,
    },
    Failed {
        reason: PunchFailure,
        retry_at: Option<Instant>,
        /// An offer before this is ignored (see [`Punch::handle_offer`]).
        offers_from: Instant,
    },
}

/// Which side of the next attempt this router takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// Send the request; the peer answers and probes first.
    Request,
    /// Wait for the peer's request, answer it and probe first.
    Answer,
}

#[derive(Debug)]
struct Pair {
    phase: Phase,
    /// The next wait after a failure (doubles up to the cap).
    interval: Duration,
    /// Our side of the next attempt.
    turn: Turn,
}

/// See the module docs.
#[derive(Debug)]
pub struct Punch {
    me: PeerId,
    config: PunchConfig,
    rng: StdRng,
    pairs: BTreeMap<PeerId, Pair>,
    transmits: VecDeque<PunchTransmit>,
    events: VecDeque<PunchEvent>,
    counters: PunchCounters,
}

impl Punch {
    /// The core of router `me` with the default timing; randomness from
    /// `seed`.
    pub fn new(me: PeerId, seed: u64) -> Self {
        Self::with_config(me, PunchConfig::default(), seed)
    }

    /// A core with explicit timing (tests, the simulator).
    pub fn with_config(me: PeerId, config: PunchConfig, seed: u64) -> Self {
        Self {
            me,
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
        // A lost path (a NAT that rebound) is punched again at once by
        // both sides, whoever's turn it is: waiting for the peer would add
        // seconds to every rebinding.
        let lost = matches!(
            self.pairs.get(&peer).map(|p| &p.phase),
            Some(Phase::Failed {
                reason: PunchFailure::PathLost,
                ..
            })
        );
        match self.turn_of(peer) {
            Turn::Request => self.send_request(peer, via, mine, now),
            _ if lost => self.send_request(peer, via, mine, now),
            Turn::Answer => {
                let wait = if self.me.leads(peer) { 1 } else { 2 };
                let deadline = now + self.config.await_request * wait;
                let mine = mine.to_vec();
                self.enter(
                    peer,
                    Phase::Awaiting {
                        deadline,
                        via,
                        mine,
                    },
                );
            }
        }
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
            // The request we waited for (the attempt is counted).
            Some(Phase::Awaiting { .. }) => true,
            // Within the quiet period after an unanswered window: the peer,
            // if it follows the protocol, is quiet too (module docs), so
            // this is a relayed peer flooding offers to keep us probing
            // addresses of its choosing. Ignored and counted.
            Some(Phase::Failed { offers_from, .. }) if now < *offers_from => {
                self.counters.offers_early += 1;
                return;
            }
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
                went_first: answering,
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

    /// `old` moved to the identity key of `new` on a live link (issue 20):
    /// an attempt under way goes on with the same router.
    pub fn follow_rotation(&mut self, old: PeerId, new: PeerId) {
        self.pairs.follow_rotation(old, new);
    }

    /// This router moved to the identity key of `me` (issue 20): whose
    /// turn an attempt's next step is follows the new ID.
    pub fn set_me(&mut self, me: PeerId) {
        self.me = me;
    }

    /// `peer` has a direct link now, or left: forget the pair.
    pub fn forget(&mut self, peer: PeerId) {
        self.pairs.remove(&peer);
    }

    /// Probe rounds due, windows and offer waits over, back-offs over.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.probe_due(now);
        let mut failed = Vec::new();
        let mut requests = Vec::new();
        for (peer, pair) in &mut self.pairs {
            match &mut pair.phase {
                Phase::Awaiting {
                    deadline,
                    via,
                    mine,
                    ..
                } if *deadline <= now => {
                    requests.push((*peer, *via, std::mem::take(mine)));
                }
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
        // No request came: ours, so the attempt happens in some order.
        for (peer, via, mine) in requests {
            self.send_request(peer, via, &mine, now);
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
                Phase::Awaiting { deadline, .. } | Phase::Requested { deadline, .. } => {
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
            Phase::Awaiting { .. } => PunchState::Awaiting,
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

    /// Sends our request and waits for the peer's offer.
    fn send_request(&mut self, peer: PeerId, via: PeerId, mine: &[SocketAddr], now: Instant) {
        self.request(via, peer, mine);
        let deadline = now + self.config.offer_timeout;
        self.enter(peer, Phase::Requested { deadline });
    }

    /// Our side of the next attempt with `peer`: the first attempt's
    /// requester is the side that leads, so its peer probes first.
    fn turn_of(&self, peer: PeerId) -> Turn {
        self.pairs.get(&peer).map_or(
            if self.me.leads(peer) {
                Turn::Request
            } else {
                Turn::Answer
            },
            |p| p.turn,
        )
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

    /// Moves the pair with `peer` to `phase`, keeping its back-off and
    /// its turn.
    fn enter(&mut self, peer: PeerId, phase: Phase) {
        let interval = self.interval_of(peer);
        let turn = self.turn_of(peer);
        self.pairs.insert(
            peer,
            Pair {
                phase,
                interval,
                turn,
            },
        );
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
        let went_first = match self.pairs.get(&peer).map(|p| &p.phase) {
            Some(Phase::Probing { went_first, .. }) => Some(*went_first),
            _ => None,
        };
        let (wait, turn) = match (reason, went_first) {
            // Probes went both ways and none got through: maybe a gateway
            // that let the other's probes in first (module docs). Swap the
            // order and let every entry of this attempt expire first; the
            // side to answer only waits for the request (its own comes
            // after the other's latest, as a fallback).
            (PunchFailure::NoAnswer, Some(went_first)) => {
                let quiet = self.config.quiet;
                if went_first {
                    (quiet.mul_f64(self.rng.gen_range(1.0..=1.15)), Turn::Request)
                } else {
                    (quiet.mul_f64(1.15), Turn::Answer)
                }
            }
            // 75–100 %: jitter that never exceeds the interval (and so the
            // cap).
            _ => (
                interval.mul_f64(self.rng.gen_range(0.75..=1.0)),
                self.turn_of(peer),
            ),
        };
        // After an unanswered window both sides keep quiet for `quiet` or
        // more; an offer in the first half of it cannot come from a peer
        // that follows the protocol (half: the two windows end apart by the
        // rendezvous' delay, and the other side's quiet starts first).
        let offers_from = match reason {
            PunchFailure::NoAnswer => now + self.config.quiet / 2,
            _ => now,
        };
        self.pairs.insert(
            peer,
            Pair {
                phase: Phase::Failed {
                    reason,
                    retry_at: Some(now + wait),
                    offers_from,
                },
                interval: (interval * 2).min(self.config.retry_cap),
                turn,
            },
        );
        self.events.push_back(PunchEvent::Failed { peer, reason });
    }
}
