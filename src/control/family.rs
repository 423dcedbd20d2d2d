//! Which address family a dual-stack pair's data takes (issue 19,
//! "Underlay": both families present, measure and prefer the better). A
//! sans-IO core: `now` in, probes and switches out.
//!
//! A peer is tracked while it is a direct neighbour, this router serves
//! both families and the peer advertises an endpoint of each. Every
//! [`PROBE_EVERY`] (then [`PROBE_STEADY`] once nothing changed for
//! [`STEADY_AFTER`]) both families get an authenticated heartbeat ping
//! (the driver sends it through [`crate::control::heartbeat::Heartbeats::probe`]
//! and hands back its stamp), and each answer is one RTT sample, smoothed
//! per family. The data path moves:
//!
//! - to the other family when it is clearly better: both families have
//!   [`MIN_SAMPLES`] samples, the other's smoothed RTT is at least
//!   [`BETTER_RATIO`] and [`BETTER_BY`] lower, its last probe was
//!   answered, and the last move is [`HOLD`] old (never flaps between two
//!   similar paths);
//! - back at once when the current family stops answering (
//!   [`FALLBACK_LOSSES`] probes lost in a row, or the heartbeats' liveness
//!   runs out: [`FamilyChoice::current_down`]) while the other answers.
//!
//! The current family is always the family of the peer's endpoint as the
//! registry holds it ([`FamilyChoice::track`]): a new connection that puts
//! it elsewhere wins, without counting as a switch.

use crate::id::{FollowRotation, PeerId};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Probes of both families go this often while a choice is fresh.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// ... and this often once nothing changed for [`STEADY_AFTER`] (a
/// dual-stack pair's idle cost: two pings and two pongs per period).
pub const PROBE_STEADY: Duration = Duration::from_secs(5);
/// How long without a switch or a lost probe before probing slows down.
pub const STEADY_AFTER: Duration = Duration::from_secs(30);
/// A probe unanswered this long is lost.
pub const PROBE_LOST_AFTER: Duration = Duration::from_millis(900);
/// Samples each family needs before their RTTs are compared.
pub const MIN_SAMPLES: u32 = 4;
/// The other family's smoothed RTT must be at most this share of the
/// current one's ...
pub const BETTER_RATIO: f64 = 0.8;
/// ... and lower by at least this much.
pub const BETTER_BY: Duration = Duration::from_millis(2);
/// The shortest time between two moves made for a better RTT.
pub const HOLD: Duration = Duration::from_secs(10);
/// Probes of the current family lost in a row that make it "not
/// answering".
pub const FALLBACK_LOSSES: u32 = 2;
/// The heartbeats' verdict that a link is down is taken as the current
/// family's only when the last move is this old (the verdict may be about
/// the family just left).
pub const DOWN_GRACE: Duration = Duration::from_secs(3);

/// IPv4 or IPv6, the family of an underlay address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (a v4-mapped address counts as IPv4).
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: SocketAddr) -> Self {
        match crate::underlay::canonical(addr) {
            SocketAddr::V4(_) => Self::V4,
            SocketAddr::V6(_) => Self::V6,
        }
    }

    fn other(self) -> Self {
        match self {
            Self::V4 => Self::V6,
            Self::V6 => Self::V4,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::V4 => 0,
            Self::V6 => 1,
        }
    }

    /// `ipv4` or `ipv6`.
    pub fn label(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FamilyEvent {
    /// Send a heartbeat probe to `peer` at `addr`, then report its stamp
    /// with [`FamilyChoice::probe_sent`].
    Probe {
        /// Which peer.
        peer: PeerId,
        /// Where.
        addr: SocketAddr,
    },
    /// Move `peer`'s data path (its endpoint) to `to`.
    Switch {
        /// Which peer.
        peer: PeerId,
        /// The new endpoint.
        to: SocketAddr,
        /// Why, for the log.
        reason: String,
    },
}

/// One family's path to a peer.
#[derive(Clone, Debug, Default)]
struct FamilyPath {
    endpoint: Option<SocketAddr>,
    /// Smoothed RTT (RFC 6298's 1/8 gain), and how many samples made it.
    srtt: Option<Duration>,
    samples: u32,
    /// The probe in flight: its stamp and when it left.
    outstanding: Option<(u64, Instant)>,
    lost_in_a_row: u32,
}

impl FamilyPath {
    fn sample(&mut self, rtt: Duration) {
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
        self.samples = self.samples.saturating_add(1);
        self.lost_in_a_row = 0;
    }

    /// Its last probe was answered (and it has answered at all).
    fn answering(&self) -> bool {
        self.samples > 0 && self.lost_in_a_row == 0
    }

    fn rtt_label(&self) -> String {
        match self.srtt {
            Some(s) if self.lost_in_a_row < FALLBACK_LOSSES => {
                format!("{:.1} ms", s.as_secs_f64() * 1000.0)
            }
            Some(_) => "not answering".into(),
            None if self.lost_in_a_row >= FALLBACK_LOSSES => "not answering".into(),
            None => "not measured yet".into(),
        }
    }
}

/// A tracked peer.
#[derive(Clone, Debug)]
struct Tracked {
    current: Family,
    paths: [FamilyPath; 2],
    next_probe: Instant,
    /// The last switch.
    last_switch: Option<Instant>,
    /// When a probe was last lost or the path last moved.
    last_unrest: Instant,
}

impl Tracked {
    fn path(&self, family: Family) -> &FamilyPath {
        &self.paths[family.index()]
    }

    fn path_mut(&mut self, family: Family) -> &mut FamilyPath {
        &mut self.paths[family.index()]
    }
}

/// The family choice for every dual-stack peer.
#[derive(Default)]
pub struct FamilyChoice {
    peers: HashMap<PeerId, Tracked>,
    events: VecDeque<FamilyEvent>,
    switches: u64,
}

impl FamilyChoice {
    /// `peer` is a direct dual-stack neighbour whose data goes to
    /// `current`, and which advertises `advertised`. Starts tracking it
    /// when both families are there; stops (as [`Self::untrack`]) when
    /// not. Call it whenever either may have changed; cheap when nothing
    /// did.
    pub fn track(
        &mut self,
        peer: PeerId,
        current: SocketAddr,
        advertised: &[SocketAddr],
        now: Instant,
    ) {
        let family = Family::of(current);
        let other = advertised
            .iter()
            .map(|a| crate::underlay::canonical(*a))
            .find(|a| Family::of(*a) == family.other());
        let Some(other) = other else {
            self.untrack(peer);
            return;
        };
        let t = self.peers.entry(peer).or_insert_with(|| Tracked {
            current: family,
            paths: Default::default(),
            next_probe: now,
            last_switch: None,
            last_unrest: now,
        });
        // The registry's endpoint is the truth: a new connection or a
        // roaming peer may have moved it.
        t.current = family;
        t.path_mut(family).endpoint = Some(current);
        let alt = t.path_mut(family.other());
        if alt.endpoint.is_none() {
            alt.endpoint = Some(other);
        }
    }

    /// `old` moved to the identity key of `new` on a live link (issue 20):
    /// the paths measured are the same router's.
    pub fn follow_rotation(&mut self, old: PeerId, new: PeerId) {
        self.peers.follow_rotation(old, new);
    }

    /// `peer` is no longer a tracked dual-stack neighbour.
    pub fn untrack(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
    }

    /// Keeps only the peers `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(PeerId) -> bool) {
        self.peers.retain(|p, _| keep(*p));
    }

    /// Whether `peer` is tracked: its packets from the other family are
    /// probe traffic, not a move of its endpoint.
    pub fn tracks(&self, peer: PeerId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// The driver sent the probe of [`FamilyEvent::Probe`] to `addr` with
    /// this `stamp`.
    pub fn probe_sent(&mut self, peer: PeerId, addr: SocketAddr, stamp: u64, now: Instant) {
        if let Some(t) = self.peers.get_mut(&peer) {
            t.path_mut(Family::of(addr)).outstanding = Some((stamp, now));
        }
    }

    /// An authenticated pong from `peer`, from `from`, echoing `stamp`.
    /// Only the answer to this core's own probe is a sample (the send time
    /// is ours, so the RTT is exact to the microsecond).
    pub fn handle_pong(&mut self, peer: PeerId, from: SocketAddr, stamp: u64, now: Instant) {
        let Some(t) = self.peers.get_mut(&peer) else {
            return;
        };
        let family = Family::of(from);
        let path = t.path_mut(family);
        let Some((sent_stamp, sent_at)) = path.outstanding else {
            return;
        };
        if sent_stamp != stamp {
            return;
        }
        path.outstanding = None;
        path.endpoint = Some(crate::underlay::canonical(from));
        path.sample(now.saturating_duration_since(sent_at));
        self.decide(peer, now);
    }

    /// The heartbeats say `peer`'s link stopped carrying authenticated
    /// packets: move to the other family at once if it answers.
    pub fn current_down(&mut self, peer: PeerId, now: Instant) {
        let Some(t) = self.peers.get_mut(&peer) else {
            return;
        };
        if t.last_switch
            .is_some_and(|at| now.saturating_duration_since(at) < DOWN_GRACE)
        {
            return;
        }
        let current = t.current;
        let path = t.path_mut(current);
        path.lost_in_a_row = path.lost_in_a_row.max(FALLBACK_LOSSES);
        self.decide(peer, now);
    }

    /// `peer`'s data arrives over the family its data from here does not
    /// take: it chose otherwise, most likely because this path broke for
    /// it. Probes both families at once and keeps the fast pace, so a
    /// broken path is left within two probes even where the other side's
    /// data keeps the heartbeats' liveness up.
    pub fn peer_data_elsewhere(&mut self, peer: PeerId, now: Instant) {
        if let Some(t) = self.peers.get_mut(&peer) {
            t.next_probe = t.next_probe.min(now);
            t.last_unrest = now;
        }
    }

    /// Loses overdue probes and sends the probes that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            let Some(t) = self.peers.get_mut(&peer) else {
                continue;
            };
            let mut lost = false;
            let current = t.current;
            for family in [Family::V4, Family::V6] {
                let path = t.path_mut(family);
                if path
                    .outstanding
                    .is_some_and(|(_, at)| now >= at + PROBE_LOST_AFTER)
                {
                    path.outstanding = None;
                    path.lost_in_a_row = path.lost_in_a_row.saturating_add(1);
                    lost = true;
                    // A dead other family is probed at the steady pace;
                    // a loss on the path itself keeps the fast one.
                    if family == current {
                        t.last_unrest = now;
                    }
                }
            }
            if now >= t.next_probe {
                let steady = now.saturating_duration_since(t.last_unrest) >= STEADY_AFTER;
                t.next_probe = now + if steady { PROBE_STEADY } else { PROBE_EVERY };
                for path in &t.paths {
                    if let (Some(addr), None) = (path.endpoint, path.outstanding) {
                        self.events.push_back(FamilyEvent::Probe { peer, addr });
                    }
                }
            }
            if lost {
                self.decide(peer, now);
            }
        }
    }

    /// Moves `peer` to the other family if it is clearly better or the
    /// current one stopped answering.
    fn decide(&mut self, peer: PeerId, now: Instant) {
        let Some(t) = self.peers.get_mut(&peer) else {
            return;
        };
        let (cur, alt) = (t.path(t.current), t.path(t.current.other()));
        let Some(to) = alt.endpoint else {
            return;
        };
        if !alt.answering() {
            return;
        }
        let fallback = cur.lost_in_a_row >= FALLBACK_LOSSES;
        let better = match (cur.srtt, alt.srtt) {
            (Some(c), Some(a)) => {
                cur.samples >= MIN_SAMPLES
                    && alt.samples >= MIN_SAMPLES
                    && a.as_secs_f64() <= c.as_secs_f64() * BETTER_RATIO
                    && a + BETTER_BY <= c
                    && t.last_switch
                        .is_none_or(|at| now.saturating_duration_since(at) >= HOLD)
            }
            _ => false,
        };
        if !fallback && !better {
            return;
        }
        let from = t.current;
        let reason = if fallback {
            format!("{} stopped answering", from.label())
        } else {
            format!(
                "rtt {} vs {} on {}",
                alt.rtt_label(),
                cur.rtt_label(),
                from.label()
            )
        };
        t.current = from.other();
        t.last_switch = Some(now);
        t.last_unrest = now;
        t.next_probe = t.next_probe.min(now + PROBE_EVERY);
        self.switches += 1;
        self.events
            .push_back(FamilyEvent::Switch { peer, to, reason });
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<FamilyEvent> {
        self.events.pop_front()
    }

    /// When to call [`Self::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|t| {
                let lost = t
                    .paths
                    .iter()
                    .filter_map(|p| p.outstanding.map(|(_, at)| at + PROBE_LOST_AFTER));
                std::iter::once(t.next_probe).chain(lost)
            })
            .min()
    }

    /// For `weft status`: the family in use and why, e.g. `ipv6: rtt 0.4
    /// ms vs ipv4 30.2 ms`; `None` for a peer that is not tracked.
    pub fn describe(&self, peer: PeerId) -> Option<String> {
        let t = self.peers.get(&peer)?;
        let (cur, alt) = (t.path(t.current), t.path(t.current.other()));
        Some(format!(
            "{}: rtt {} vs {} {}",
            t.current.label(),
            cur.rtt_label(),
            t.current.other().label(),
            alt.rtt_label()
        ))
    }

    /// Moves of a data path from one family to the other since start.
    pub fn switches(&self) -> u64 {
        self.switches
    }
}

#[cfg(test)]
mod tests;
