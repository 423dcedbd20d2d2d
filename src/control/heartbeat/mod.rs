//! Heartbeats and path-MTU probes on the control lane (DESIGN.md "MTU",
//! "Endpoints behind NAT"). A sans-IO core.
//!
//! Owns, per connected peer: the heartbeat send counters and the replay
//! windows of its receive keysets, keyed by the key itself (its
//! [`KeyId`](crate::crypto::data::KeyId)), so that neither a receiver index reused for another key nor
//! a keyset that drops out of a sync and comes back restarts a counter (a
//! nonce reused) or resets a window (a replay accepted); both are pruned
//! with the keysets when [`Heartbeats::set_link`] re-syncs them from the
//! key schedule, and nothing is kept for a datagram that does not
//! authenticate (issue 15, defects 2 and 5). Also when an authenticated packet last arrived and
//! a heartbeat was last sent, the RTT, the path-MTU verdict and its probe
//! schedule, and whether the connection is established (authenticated UDP
//! arriving and a full-size probe answered). Does not own the keys (the peer
//! registry does) nor the data plane's traffic, which the driver reports
//! with [`Heartbeats::observe_data`] (it counts as liveness).
//!
//! What an idle link costs, per direction: one small datagram every
//! [`KEEPALIVE_INTERVAL`] (74 bytes on the wire with IP and UDP headers),
//! and a full-size probe at establishment, after a change (MTU, endpoint,
//! UDP coming back) and then at intervals growing up to
//! [`PMTU_RECHECK_MAX`] (about 2.5 B/s in the long run).
//!
//! Keepalives are passive on one side (WireGuard's passive keepalive, issue
//! 14): the side that dialled pings when it has sent nothing for
//! [`KEEPALIVE_INTERVAL`], and the other side's pong is that side's
//! keepalive, so the two directions stay proven with one round trip and
//! the dialler measures the RTT, which its next ping carries to the other
//! side. A peer that sends keepalives (kind 3) is a router from before this
//! change: with it, both sides send keepalives as that router expects.
//! A silent link is suspected after
//! [`SUSPECT_AFTER`] and pinged every [`SUSPECT_PING_EVERY`] (a lost
//! keepalive costs a round trip, not the link); it is down after
//! [`LIVENESS_TIMEOUT`], so a broken link is routed around in under 3 s.
//!
//! Inputs: [`Heartbeats::add`], [`Heartbeats::remove`],
//! [`Heartbeats::set_link`], [`Heartbeats::set_mtu`],
//! [`Heartbeats::observe_data`], [`Heartbeats::handle_datagram`],
//! [`Heartbeats::handle_timeout`]. Outputs, drained after every input:
//! [`Heartbeats::poll_event`] (endpoint and key confirmation, establishment
//! changes), [`Heartbeats::poll_transmit`] (datagrams for the control
//! socket), and [`Heartbeats::poll_timeout`].

mod link;
mod wire;

#[cfg(test)]
mod tests;

use crate::control::family::Family;
use crate::crypto::replay::ReplayWindow;
use crate::crypto::session::Keyset;
use crate::id::{FollowRotation, PeerId, ShortId};
use crate::router::datagram::open_datagram;
use crate::router::packet::{CONTROL_LANE, DataHeader, PacketType};
use link::{Counter, Link, Pmtu, Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wire::Body;

/// A keepalive goes when this side has sent no heartbeat for this long
/// (DESIGN.md asks for at least every 20 s; liveness needs more).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(1500);
/// Nothing authenticated for this long: ping for an answer at once.
pub const SUSPECT_AFTER: Duration = Duration::from_millis(1700);
/// Pings while suspecting go this far apart.
pub const SUSPECT_PING_EVERY: Duration = Duration::from_millis(150);
/// Nothing authenticated for this long: UDP is down and the link is no
/// longer established (tests/mesh.rs wants a detour within 3 s).
pub const LIVENESS_TIMEOUT: Duration = Duration::from_millis(2300);
/// A probe unanswered this long is lost.
pub const PROBE_WAIT: Duration = Duration::from_millis(700);
/// Lost probes in a row that make the verdict "too small".
pub const PROBE_TRIES: u32 = 3;
/// After an answered probe the next one waits this long, then twice as
/// long, then [`PMTU_RECHECK_GROWTH`]-fold each time up to
/// [`PMTU_RECHECK_MAX`] (2, 4, 16, 64, 256, 600 s): a path that shrinks as
/// a link settles (tests/mesh.rs) is still caught within seconds, an old
/// one costs a probe every ten minutes.
pub const PMTU_RECHECK_FIRST: Duration = Duration::from_secs(2);
/// How much the wait between probes grows after the first two.
pub const PMTU_RECHECK_GROWTH: u32 = 4;
/// The longest wait between probes on a path that carries full size
/// (the kernel's EMSGSIZE and a changed endpoint or MTU probe at once).
pub const PMTU_RECHECK_MAX: Duration = Duration::from_secs(600);
/// While the verdict is "too small", probes go this often.
pub const PMTU_RETRY_FAILED: Duration = Duration::from_secs(3);
/// The side that did not dial waits this long before its first packet, so
/// the dialler's opens any NAT first (DESIGN.md "Endpoints behind NAT").
const INBOUND_FIRST: Duration = Duration::from_millis(250);

/// What the driver learns from the heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// A heartbeat from `peer` authenticated under our keyset `local_index`,
    /// arriving from `from` (its endpoint; and the keyset is confirmed).
    Authenticated {
        /// Which peer.
        peer: PeerId,
        /// Our receive keyset it opened under.
        local_index: u32,
        /// Where it came from.
        from: SocketAddr,
        /// Its counter is the highest this keyset accepted: only such a
        /// packet may move the peer's endpoint (DESIGN.md "Endpoints behind
        /// NAT"), so a delayed or reordered one cannot move it back.
        newest: bool,
    },
    /// An authenticated pong (not a probe's full-size answer) from `peer`,
    /// from `from`, echoing `stamp`: the family choice's RTT sample
    /// (`crate::control::family`) when it answers one of its probes.
    Pong {
        /// Which peer.
        peer: PeerId,
        /// Where it came from.
        from: SocketAddr,
        /// The stamp of the ping it answers.
        stamp: u64,
    },
    /// The connection became established or stopped being so.
    Established {
        /// Which peer.
        peer: PeerId,
        /// The new state.
        established: bool,
    },
}

/// Why [`Heartbeats::poll_timeout`] wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatTimer {
    /// A keepalive is due.
    Keepalive,
    /// A probe is due, or an outstanding one is lost.
    Probe,
    /// A silent link is to be pinged.
    Suspect,
    /// A link's liveness runs out.
    Liveness,
}

/// The UDP path's state in status (DESIGN.md "Operator contract").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpState {
    /// Authenticated packets arrive.
    Ok,
    /// They did, and stopped.
    Blocked,
    /// None yet.
    Unverified,
}

/// The path MTU's state in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmtuState {
    /// A full-size probe was answered and none lost since.
    Ok,
    /// Small packets pass, full-size ones do not (or not yet verified).
    TooSmall,
    /// Not known: UDP does not work.
    Unverified,
}

/// One link's heartbeat state, for status.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkStatus {
    /// UDP works both ways and carries full-size packets.
    pub established: bool,
    /// The last heartbeat round trip.
    pub rtt: Option<Duration>,
    /// The UDP path.
    pub udp: UdpState,
    /// The path MTU.
    pub pmtu: PmtuState,
}

/// What a link needs from the key schedule and the registry.
#[derive(Debug)]
pub struct LinkKeys<'a> {
    /// The peer's short ID (the header's `dst`).
    pub short: ShortId,
    /// Where its UDP goes.
    pub endpoint: Option<SocketAddr>,
    /// The keyset to send with.
    pub current: Option<&'a Keyset>,
    /// Every keyset that may still decrypt.
    pub receive: Vec<&'a Keyset>,
}

/// The heartbeat core for all peers.
pub struct Heartbeats {
    epoch: Instant,
    me: ShortId,
    mtu: usize,
    links: HashMap<PeerId, Link>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<HeartbeatEvent>,
}

impl Heartbeats {
    /// No links. Stamps count milliseconds from `epoch`; probes are padded
    /// to the overlay `mtu`.
    pub fn new(epoch: Instant, me: ShortId, mtu: u32) -> Self {
        Self {
            epoch,
            me,
            mtu: mtu as usize,
            links: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A new connection to `peer` (replacing any earlier link state). The
    /// side that dialled sends first: a probe, which also opens the path;
    /// it also sends the pings that keep the idle link proven.
    pub fn add(&mut self, peer: PeerId, outbound: bool, now: Instant) {
        let first_tx = if outbound { now } else { now + INBOUND_FIRST };
        self.links.insert(
            peer,
            Link {
                short: ShortId::default(),
                endpoint: None,
                sender: None,
                counters: HashMap::new(),
                receivers: HashMap::new(),
                first_tx,
                pinger: outbound,
                legacy: false,
                last_tx: None,
                last_rx: None,
                last_ping: None,
                peer_stamp: None,
                udp_ok: false,
                was_up: false,
                established: false,
                rtt: None,
                pmtu: Pmtu::new(first_tx),
            },
        );
    }

    /// `old` moved to the identity key of `new` on a live link (issue 20):
    /// its link state (keys' counters, windows, RTT, path MTU) is the
    /// same link's and moves with it.
    pub fn follow_rotation(&mut self, old: PeerId, new: PeerId) {
        self.links.follow_rotation(old, new);
    }

    /// `peer`'s connection went: its counters and windows go with it.
    pub fn remove(&mut self, peer: PeerId) {
        self.links.remove(&peer);
    }

    /// Brings `peer`'s keys, short IDs and endpoint up to date: windows of
    /// keysets no longer held are dropped, a new receive key at a reused
    /// index gets a new window, a send key's counter lives as long as the
    /// key, and a new endpoint is probed at once.
    pub fn set_link(&mut self, peer: PeerId, me: ShortId, keys: LinkKeys<'_>, now: Instant) {
        self.me = me;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.short = keys.short;
        if link.endpoint.is_some() && link.endpoint != keys.endpoint {
            link.pmtu.recheck(now);
        }
        link.endpoint = keys.endpoint;
        link.sender = keys.current.map(|k| Sender {
            remote_index: k.remote_index,
            key: k.send.clone(),
        });
        link.counters.retain(|_, c| c.life.is_alive());
        link.receivers.retain(|index, r| {
            keys.receive
                .iter()
                .any(|k| k.local_index == *index && k.recv.id() == r.key.id())
        });
        for k in keys.receive {
            link.receivers
                .entry(k.local_index)
                .or_insert_with(|| Receiver {
                    key: k.recv.clone(),
                    window: ReplayWindow::new(),
                });
        }
    }

    /// The overlay MTU probes are padded to; a change is probed at once.
    pub fn set_mtu(&mut self, mtu: u32, now: Instant) {
        if self.mtu == mtu as usize {
            return;
        }
        self.mtu = mtu as usize;
        for link in self.links.values_mut() {
            link.pmtu.recheck(now);
        }
    }

    /// Sending to `to` failed with EMSGSIZE: the kernel knows the path is
    /// smaller than the probe, so the verdict is "too small" at once.
    pub fn handle_too_big(&mut self, to: SocketAddr, now: Instant) {
        for link in self.links.values_mut() {
            if link.endpoint == Some(to) && link.pmtu.outstanding.is_some() {
                link.pmtu.verdict = Some(false);
                link.pmtu.outstanding = None;
                link.pmtu.next = now + PMTU_RETRY_FAILED;
            }
        }
    }

    /// The data plane last received an authenticated packet from `peer` at
    /// `last_rx`: it counts as liveness like a heartbeat.
    pub fn observe_data(&mut self, peer: PeerId, last_rx: Option<Instant>) {
        if let Some(link) = self.links.get_mut(&peer) {
            link.last_rx = link.last_rx.max(last_rx);
        }
    }

    /// A datagram on the control socket. Anything that is not a heartbeat
    /// under a held keyset, replays, or fails its tag is dropped unseen.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        let mut holder = None;
        let links = &mut self.links;
        // One implementation of the framing (DESIGN.md "The data header"):
        // the data plane's checked view, would-accept, open, then mark.
        let opened = open_datagram(datagram, |header| {
            if header.kind != PacketType::Heartbeat || header.lane != CONTROL_LANE {
                return None;
            }
            let (&peer, link) = links
                .iter_mut()
                .find(|(_, l)| l.receivers.contains_key(&header.session))?;
            holder = Some(peer);
            let receiver = link.receivers.get_mut(&header.session)?;
            Some((&receiver.key, &mut receiver.window))
        });
        let (Ok(opened), Some(peer)) = (opened, holder) else {
            return;
        };
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let local_index = opened.header().session;
        let newest = opened.is_newest();
        let body = opened.body();
        // A dual-stack peer's packet over the family its data does not
        // take (a probe of `crate::control::family`, or its answer) says
        // nothing of this path: no liveness, no RTT, and it is answered
        // where it came from.
        let on_path = link
            .endpoint
            .is_none_or(|e| Family::of(e) == Family::of(from));
        if on_path {
            link.last_rx = link.last_rx.max(Some(now));
        }
        self.events.push_back(HeartbeatEvent::Authenticated {
            peer,
            local_index,
            from,
            newest,
        });
        let sent_at = |stamp: u64| self.epoch + Duration::from_millis(stamp);
        match Body::decode(body) {
            Some(Body::Ping { stamp, rtt_us }) => {
                // The pinging side measures; the other side learns it here.
                if !link.pinger && rtt_us != 0 && on_path {
                    link.rtt = Some(Duration::from_micros(u64::from(rtt_us)));
                }
                // A link with no endpoint yet (a punch in progress, issue
                // 16) answers where the authenticated ping came from.
                let to = link.endpoint.filter(|_| on_path).unwrap_or(from);
                self.send_to(peer, Body::Pong { stamp, full: false }, to, now);
            }
            Some(Body::Probe { stamp }) => {
                let to = link.endpoint.filter(|_| on_path).unwrap_or(from);
                self.send_to(peer, Body::Pong { stamp, full: true }, to, now);
            }
            Some(Body::Pong { stamp, full }) => {
                if on_path {
                    link.rtt = Some(now.saturating_duration_since(sent_at(stamp)));
                    if full {
                        link.pmtu.answered(now);
                    }
                }
                if !full {
                    self.events
                        .push_back(HeartbeatEvent::Pong { peer, from, stamp });
                }
            }
            Some(Body::Keepalive {
                stamp,
                echo,
                held_ms,
            }) => {
                // Only a router from before passive keepalives sends these.
                link.legacy = true;
                link.peer_stamp = Some((stamp, now));
                if echo != 0 {
                    let held = Duration::from_millis(u64::from(held_ms));
                    link.rtt = Some(
                        now.saturating_duration_since(sent_at(echo))
                            .saturating_sub(held),
                    );
                }
            }
            None => {}
        }
    }

    /// Updates liveness and establishment, then sends what is due: lost
    /// or scheduled probes, suspect pings, keepalives.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (&peer, link) in &mut self.links {
            let udp_ok = link.udp_ok_at(now);
            if udp_ok != link.udp_ok {
                let returned = udp_ok && link.was_up;
                link.udp_ok = udp_ok;
                link.last_ping = None;
                link.was_up |= udp_ok;
                if returned {
                    link.pmtu.recheck(now);
                } else if !udp_ok {
                    link.pmtu.outstanding = None;
                }
            }
            if let Some((_, tries)) = link.pmtu.outstanding
                && now >= link.pmtu.deadline()
                && tries >= PROBE_TRIES
            {
                link.pmtu.verdict = Some(false);
                link.pmtu.outstanding = None;
                link.pmtu.next = now + PMTU_RETRY_FAILED;
            }
            let established = udp_ok && link.pmtu.verdict == Some(true);
            if established != link.established {
                link.established = established;
                self.events
                    .push_back(HeartbeatEvent::Established { peer, established });
            }
            if !link.can_send() {
                continue;
            }
            if link.may_probe() && now >= link.pmtu.deadline() {
                let tries = link.pmtu.outstanding.map_or(0, |(_, n)| n);
                link.pmtu.outstanding = Some((now, tries + 1));
                due.push((peer, Kind::Probe));
            } else if link.suspect_at().is_some_and(|t| now >= t) {
                link.last_ping = Some(now);
                due.push((peer, Kind::Ping));
            } else if link.keepalive_at().is_some_and(|t| now >= t) {
                due.push((peer, Kind::Keepalive));
            }
        }
        let stamp = self.millis(now);
        for (peer, kind) in due {
            let body = match kind {
                Kind::Probe => Body::Probe { stamp },
                Kind::Ping => self.ping(peer, stamp),
                Kind::Keepalive if self.links.get(&peer).is_some_and(|l| l.legacy) => {
                    self.keepalive(peer, stamp, now)
                }
                Kind::Keepalive => self.ping(peer, stamp),
            };
            self.send(peer, body, now);
        }
    }

    /// A ping carrying the RTT this side last measured (0 = none).
    fn ping(&self, peer: PeerId, stamp: u64) -> Body {
        let rtt = self.links.get(&peer).and_then(|l| l.rtt);
        let rtt_us = rtt.map_or(0, |r| {
            u32::try_from(r.as_micros()).unwrap_or(u32::MAX).max(1)
        });
        Body::Ping { stamp, rtt_us }
    }

    /// A keepalive echoing the peer's last stamp (once), for a peer from
    /// before passive keepalives.
    fn keepalive(&mut self, peer: PeerId, stamp: u64, now: Instant) -> Body {
        let echoed = self.links.get_mut(&peer).and_then(|l| l.peer_stamp.take());
        let (echo, held_ms) = echoed.map_or((0, 0), |(s, at)| {
            let held = now.saturating_duration_since(at).as_millis();
            (s, u32::try_from(held).unwrap_or(u32::MAX))
        });
        Body::Keepalive {
            stamp,
            echo,
            held_ms,
        }
    }

    /// The next datagram for the control socket.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HeartbeatEvent> {
        self.events.pop_front()
    }

    /// The next keepalive, probe or suspect ping, or the moment a link's
    /// liveness runs out. A link that cannot send (no keys) reports only
    /// its liveness, so no deadline stays in the past.
    pub fn poll_timeout(&self) -> Option<(Instant, HeartbeatTimer)> {
        self.links
            .values()
            .flat_map(|l| {
                let sends = l.can_send();
                let liveness = l
                    .udp_ok
                    .then(|| {
                        l.last_rx
                            .map(|t| (t + LIVENESS_TIMEOUT, HeartbeatTimer::Liveness))
                    })
                    .flatten();
                let probe =
                    (sends && l.may_probe()).then(|| (l.pmtu.deadline(), HeartbeatTimer::Probe));
                let lost = l
                    .pmtu
                    .outstanding
                    .filter(|(_, tries)| *tries >= PROBE_TRIES)
                    .map(|_| (l.pmtu.deadline(), HeartbeatTimer::Probe));
                let suspect = sends
                    .then(|| l.suspect_at().map(|t| (t, HeartbeatTimer::Suspect)))
                    .flatten();
                let keepalive = sends
                    .then(|| l.keepalive_at().map(|t| (t, HeartbeatTimer::Keepalive)))
                    .flatten();
                [liveness, probe, lost, suspect, keepalive]
            })
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    /// `peer`'s link state.
    pub fn status(&self, peer: PeerId, now: Instant) -> Option<LinkStatus> {
        let link = self.links.get(&peer)?;
        let udp_ok = link.udp_ok_at(now);
        Some(LinkStatus {
            established: link.established,
            rtt: link.rtt,
            udp: if udp_ok {
                UdpState::Ok
            } else if link.last_rx.is_some() {
                UdpState::Blocked
            } else {
                UdpState::Unverified
            },
            pmtu: match (udp_ok, link.pmtu.verdict) {
                (true, Some(true)) => PmtuState::Ok,
                (true, _) => PmtuState::TooSmall,
                (false, _) => PmtuState::Unverified,
            },
        })
    }

    /// Receive keysets held over all links (replay windows in memory).
    pub fn windows(&self) -> usize {
        self.links.values().map(|l| l.receivers.len()).sum()
    }

    /// Milliseconds from the epoch, never 0 (0 means "no echo").
    fn millis(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_millis() as u64).max(1)
    }

    /// Sends one authenticated ping to `peer` at `addr`, one of its
    /// candidate endpoints (a punch probe, `crate::control::punch`): its
    /// answer, like any authenticated heartbeat, is reported with the
    /// address it came from, and measures the RTT.
    /// Returns the ping's stamp, which its pong echoes.
    pub fn probe(&mut self, peer: PeerId, addr: SocketAddr, now: Instant) -> u64 {
        let stamp = self.millis(now);
        let body = self.ping(peer, stamp);
        self.send_to(peer, body, addr, now);
        stamp
    }

    /// Seals `body` for `peer` and queues it; any heartbeat counts as this
    /// side's traffic on the link.
    fn send(&mut self, peer: PeerId, body: Body, now: Instant) {
        if let Some(endpoint) = self.links.get(&peer).and_then(|l| l.endpoint) {
            self.send_to(peer, body, endpoint, now);
        }
    }

    /// [`Self::send`] to `endpoint`.
    fn send_to(&mut self, peer: PeerId, body: Body, endpoint: SocketAddr, now: Instant) {
        let (me, mtu) = (self.me, self.mtu);
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let Some(sender) = link.sender.as_ref() else {
            return;
        };
        let counter = link
            .counters
            .entry(sender.key.id())
            .or_insert_with(|| Counter {
                next: 0,
                life: sender.key.life(),
            });
        let header = DataHeader {
            kind: PacketType::Heartbeat,
            hop_limit: 1,
            src: me,
            dst: link.short,
            session: sender.remote_index,
            lane: CONTROL_LANE,
            counter: counter.next,
        };
        counter.next += 1;
        let datagram = wire::seal(&sender.key, &header, body.encode(mtu));
        // Only what goes over the path counts as this side's traffic on it.
        if link
            .endpoint
            .is_none_or(|e| Family::of(e) == Family::of(endpoint))
        {
            link.last_tx = Some(now);
        }
        self.transmits.push_back((endpoint, datagram));
    }
}

/// What `handle_timeout` decided to send.
#[derive(Clone, Copy)]
enum Kind {
    Probe,
    Ping,
    Keepalive,
}
