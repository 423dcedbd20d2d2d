//! Control connections end to end through a router both ends reach (issue
//! 16, DESIGN.md "Endpoints, NAT and paths"): the driver side of
//! [`super::relay`]. An `impl Control` block plus the session table.
//!
//! Two routers A, B with no direct connection and a common neighbour R:
//! the side that [`PeerId::leads`] (the rule that also decides which dial
//! wins) opens a relayed connection: the ordinary connection task
//! ([`connection::run_relayed`]) on one end of an in-memory stream, whose
//! other end a small pump task turns into `RelayTo { peer: B }` messages to
//! R. R checks its [`RelayBudget`](super::relay::RelayBudget), stamps the
//! origin from the connection the bytes came on and sends
//! `RelayFrom { peer: A }` to B, which feeds them to its own relayed
//! connection with A (opening one as responder). The Noise handshake,
//! rekeys, gossip and IPAM then run unchanged; R forwards opaque records.
//!
//! The registry ranks such a connection below a direct one
//! (`super::peers`); it goes when R goes (and is opened again through
//! another common router); the pair's data takes the punched UDP path
//! (`super::punch`, driven from `events.rs`) or stays relayed multi-hop.

use super::Control;
use super::connection::{self, ConnectionEvent, ConnectionId};
use super::proto::ControlMessage;
use super::relay::{self, RelayChoice, RelayDrop};
use crate::id::{FollowRotation, PeerId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// How often the leading side looks for routers to open a relayed
/// connection to.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a router must be known without a direct connection before a
/// relayed one is opened (its dials get a chance first).
pub const DIRECT_FIRST: Duration = Duration::from_secs(2);
/// Most relayed connections at once (each costs a task pair and a share
/// of a relay's budget).
pub const MAX_SESSIONS: usize = 64;
/// How long a connection whose relay went is kept open while its
/// replacement through another relay comes up (it then adopts the peer's
/// record, keys and UDP path: no peer-down, no detour for the data).
pub const RETIRE_AFTER: Duration = Duration::from_secs(10);
/// How long a relayed connection this side opened may take to come up.
/// Past it the relay is taken for one that cannot forward to the target
/// (its own connection to it is relayed too, or went: relays do not chain,
/// and a gossip entry does not say which of a router's connections are
/// direct) and another common router is tried. A handshake through a
/// working relay takes a few RTTs.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a relay that did not bring a connection up is passed over for
/// that target, while any other common router is left.
pub const AVOID_FOR: Duration = Duration::from_secs(60);
/// Largest piece of the stream put in one relay message.
const CHUNK: usize = 16 * 1024;
/// In-memory stream buffer per direction.
const BUFFER: usize = 1024 * 1024;
/// Most relayed bytes waiting for one session's stream beyond [`BUFFER`].
/// Its connection stops reading when the control task is behind
/// (`super::backlog`) while the relay keeps delivering; past this the
/// session is closed (its stream lost bytes) and the opener opens it again.
pub const INCOMING_LIMIT: usize = 1024 * 1024;

/// One relayed connection.
#[derive(Debug)]
pub struct Session {
    /// The router at the other end.
    pub peer: PeerId,
    /// The router in the middle.
    pub via: PeerId,
    /// The connection task's ID.
    pub connection: ConnectionId,
    /// Whether this side opened it.
    pub outbound: bool,
    /// When it was opened, and whether its connection has come up since
    /// (checked against [`SETUP_TIMEOUT`] for the ones this side opened).
    opened: Instant,
    up: bool,
    /// Bytes from the relay for the connection's stream.
    incoming: Incoming,
}

/// The queue of relayed bytes for one session's stream, weighed so that it
/// never holds more than [`INCOMING_LIMIT`].
#[derive(Debug)]
pub struct Incoming {
    sender: mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

/// The pump's end of an [`Incoming`].
#[derive(Debug)]
pub struct IncomingRx {
    receiver: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

impl Incoming {
    /// A queue and its receiving end.
    pub fn new() -> (Self, IncomingRx) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let rx = IncomingRx {
            receiver,
            queued: Arc::clone(&queued),
        };
        (Self { sender, queued }, rx)
    }

    /// Queues `bytes`; false (nothing queued) when that would go over
    /// [`INCOMING_LIMIT`]. Bytes for a pump that is gone are dropped: its
    /// connection is ending and takes the session with it.
    pub fn push(&self, bytes: Vec<u8>) -> bool {
        let n = bytes.len();
        let room = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q + n <= INCOMING_LIMIT).then_some(q + n)
            });
        if room.is_err() {
            return false;
        }
        if self.sender.send(bytes).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
        true
    }
}

impl IncomingRx {
    /// The next bytes, their weight taken off; `None` once the session is gone.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let bytes = self.receiver.recv().await?;
        self.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
        Some(bytes)
    }
}

/// The relayed connections, by the router at the other end, and what was
/// dropped.
#[derive(Debug, Default)]
pub struct Sessions {
    by_peer: HashMap<PeerId, Session>,
    /// Connections whose relay went, kept until their replacement is up
    /// (or [`RETIRE_AFTER`]).
    retiring: Vec<(Session, Instant)>,
    /// When each router was first seen without a direct connection.
    unconnected_since: HashMap<PeerId, Instant>,
    next_check: Option<Instant>,
    /// Openers to tell that the stream of the session they opened with us
    /// broke: (opener, relay, since), sent once the relay is back.
    resets: Vec<(PeerId, PeerId, Instant)>,
    /// (target, relay) pairs that did not bring a connection up, and until
    /// when they are passed over.
    avoid: HashMap<(PeerId, PeerId), Instant>,
    /// Relay messages dropped at an end, by reason.
    pub dropped: HashMap<&'static str, u64>,
}

impl Sessions {
    /// The session whose connection task is `connection`.
    pub fn by_connection(&self, connection: ConnectionId) -> Option<&Session> {
        self.by_peer.values().find(|s| s.connection == connection)
    }

    /// The session with `peer`.
    pub fn get(&self, peer: PeerId) -> Option<&Session> {
        self.by_peer.get(&peer)
    }

    /// `old` moved to the identity key of `new` on a live link (issue 20):
    /// relayed connections to it, or through it, are the same streams.
    pub fn follow_rotation(&mut self, old: PeerId, new: PeerId) {
        let rename = |id: &mut PeerId| {
            if *id == old {
                *id = new;
            }
        };
        self.by_peer.follow_rotation(old, new);
        for session in self
            .by_peer
            .values_mut()
            .chain(self.retiring.iter_mut().map(|(s, _)| s))
        {
            rename(&mut session.peer);
            rename(&mut session.via);
        }
        self.unconnected_since.follow_rotation(old, new);
        for (opener, relay, _) in &mut self.resets {
            rename(opener);
            rename(relay);
        }
        self.avoid = std::mem::take(&mut self.avoid)
            .into_iter()
            .map(|((mut target, mut via), until)| {
                rename(&mut target);
                rename(&mut via);
                ((target, via), until)
            })
            .collect();
    }

    /// When to look for new relayed connections again.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_check
    }

    pub(super) fn count(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    /// Whether `via` is passed over as the relay for `target` at `now`.
    pub fn avoided(&self, target: PeerId, via: PeerId, now: Instant) -> bool {
        self.avoid
            .get(&(target, via))
            .is_some_and(|until| *until > now)
    }

    /// Marks the sessions whose connection the registry now holds
    /// (`is_up(peer, via)`) as up, and removes the ones this side opened
    /// that are still not up [`SETUP_TIMEOUT`] after opening: dropping a
    /// session closes its stream and so ends its connection task. Their
    /// (target, relay) pairs are avoided for [`AVOID_FOR`]; returned so the
    /// caller opens them again through another common router.
    pub fn expire_unanswered(
        &mut self,
        now: Instant,
        is_up: impl Fn(PeerId, PeerId) -> bool,
    ) -> Vec<(PeerId, PeerId)> {
        self.avoid.retain(|_, until| *until > now);
        let mut expired = Vec::new();
        for session in self.by_peer.values_mut().filter(|s| !s.up) {
            session.up = is_up(session.peer, session.via);
            if !session.up
                && session.outbound
                && now.saturating_duration_since(session.opened) >= SETUP_TIMEOUT
            {
                expired.push((session.peer, session.via));
            }
        }
        for (peer, via) in &expired {
            self.by_peer.remove(peer);
            self.avoid.insert((*peer, *via), now + AVOID_FOR);
        }
        for _ in &expired {
            self.count("relay_setup_timeout");
        }
        expired
    }
}

/// The common router to relay through for `target`: a direct neighbour of
/// ours whose signed entry lists a connection to `target`, by RTT
/// ([`relay::choose`]), passing over the `avoided` ones while any other is
/// left. `neighbours` yields (router, its connections, RTT).
pub fn pick<'a>(
    target: PeerId,
    neighbours: impl IntoIterator<Item = (PeerId, &'a [PeerId], Option<Duration>)>,
    avoided: impl Fn(PeerId) -> bool,
) -> Option<RelayChoice> {
    let common: Vec<(PeerId, Option<Duration>)> = neighbours
        .into_iter()
        .filter(|(id, connections, _)| *id != target && connections.contains(&target))
        .map(|(id, _, rtt)| (id, rtt))
        .collect();
    relay::choose(common.iter().copied().filter(|(id, _)| !avoided(*id)))
        .or_else(|| relay::choose(common))
}

/// Whether a `RelayFrom` of `origin`, arriving through `via` with no
/// session for it, may open one as responder: `origin` leads (it is the
/// side that opens), it has no connection with us and the table has room.
pub fn accepts(me: PeerId, origin: PeerId, connected: bool, sessions: usize) -> bool {
    origin.leads(me) && !connected && sessions < MAX_SESSIONS
}

impl Control {
    /// Opens relayed connections to the routers this side leads that have
    /// had no connection for [`DIRECT_FIRST`], through the best common
    /// router; at most once per [`CHECK_EVERY`].
    pub(super) fn drive_relayed(&mut self, now: Instant) {
        if self.relayed.next_check.is_some_and(|at| at > now) {
            return;
        }
        self.relayed.next_check = Some(now + CHECK_EVERY);
        self.relayed
            .retiring
            .retain(|(_, since)| now.saturating_duration_since(*since) < RETIRE_AFTER);
        self.reopen_orphans(now);
        self.send_resets(now);
        self.reopen_unanswered(now);
        let me = self.me;
        let known: Vec<PeerId> = self
            .gossip
            .peers()
            .map(|e| e.id)
            .filter(|id| *id != me && !self.peers.contains(*id))
            .collect();
        self.relayed
            .unconnected_since
            .retain(|id, _| known.contains(id));
        for id in known {
            let since = *self.relayed.unconnected_since.entry(id).or_insert(now);
            if !me.leads(id)
                || now.saturating_duration_since(since) < DIRECT_FIRST
                || self.relayed.by_peer.contains_key(&id)
                || self.relayed.by_peer.len() >= MAX_SESSIONS
            {
                continue;
            }
            if let Some(choice) = self.relay_for(id, now) {
                tracing::debug!(peer = %id, via = %choice.via, why = choice.why(), "opening a relayed control connection");
                self.open_session(id, choice.via, true);
            }
        }
    }

    /// Sessions this side opened that were retired with no replacement
    /// (every common router's connection broke at once, as when this
    /// side's NAT rebinds) are opened again through another common router
    /// as soon as one is back: the new connection adopts the record (keys,
    /// punched path) before [`RETIRE_AFTER`]. Not through the relay the
    /// old one used: the far end would feed the new handshake to the old
    /// session.
    fn reopen_orphans(&mut self, now: Instant) {
        let orphans: Vec<(PeerId, PeerId)> = self
            .relayed
            .retiring
            .iter()
            .filter(|(s, _)| s.outbound && !self.relayed.by_peer.contains_key(&s.peer))
            .map(|(s, _)| (s.peer, s.via))
            .collect();
        for (peer, old_via) in orphans {
            if self.relayed.by_peer.contains_key(&peer) {
                continue;
            }
            if let Some(choice) = self.relay_avoiding(peer, Some(old_via), now) {
                tracing::info!(peer = %peer, from = %old_via, to = %choice.via, "relay back: reopening the control connection through another common router");
                self.open_session(peer, choice.via, true);
            }
        }
    }

    /// Sessions this side opened that did not come up in
    /// [`SETUP_TIMEOUT`] are opened again through another common router
    /// (here, not by the loop below: a retired connection may still hold
    /// the peer's record).
    fn reopen_unanswered(&mut self, now: Instant) {
        let peers = &self.peers;
        let expired = self.relayed.expire_unanswered(now, |peer, via| {
            peers
                .iter()
                .any(|p| p.id == peer && p.relayed_via == Some(via))
        });
        for (peer, via) in expired {
            let Some(choice) = self.relay_for(peer, now) else {
                continue;
            };
            tracing::info!(peer = %peer, from = %via, to = %choice.via, "relayed control connection not up in time: trying another common router");
            self.open_session(peer, choice.via, true);
        }
    }

    /// Tells each opener whose session with us lost its relay, once that
    /// relay is a direct neighbour again, that the stream broke: an empty
    /// `RelayTo` (forwarded as an empty `RelayFrom`, which a build without
    /// this feeds to the session as nothing). Given up after
    /// [`RETIRE_AFTER`]: the session has timed out by then.
    fn send_resets(&mut self, now: Instant) {
        let resets = std::mem::take(&mut self.relayed.resets);
        for (opener, via, since) in resets {
            if now.saturating_duration_since(since) >= RETIRE_AFTER {
                continue;
            }
            if self.peers.is_direct(via) {
                self.send_to_peer(
                    via,
                    ControlMessage::RelayTo {
                        peer: opener,
                        bytes: Vec::new(),
                    },
                );
            } else {
                self.relayed.resets.push((opener, via, since));
            }
        }
    }

    /// The best common router for a relayed connection with `target`.
    fn relay_for(&self, target: PeerId, now: Instant) -> Option<RelayChoice> {
        self.relay_avoiding(target, None, now)
    }

    /// [`Self::relay_for`], never through `avoid`.
    fn relay_avoiding(
        &self,
        target: PeerId,
        avoid: Option<PeerId>,
        now: Instant,
    ) -> Option<RelayChoice> {
        let neighbours: Vec<(PeerId, Vec<PeerId>, Option<Duration>)> = self
            .peers
            .iter()
            .filter(|p| p.relayed_via.is_none() && Some(p.id) != avoid)
            // A relay must know the relay messages (control version 2).
            .filter(|p| p.hello.versions.control.max >= super::proto::CONTROL_PATHS_VERSION)
            .map(|p| {
                let connections = self
                    .gossip
                    .entry(p.id)
                    .map_or_else(Vec::new, |e| e.connections.iter().map(|c| c.peer).collect());
                let rtt = self.heartbeats.status(p.id, now).and_then(|l| l.rtt);
                (p.id, connections, rtt)
            })
            .collect();
        pick(
            target,
            neighbours
                .iter()
                .map(|(r, c, rtt)| (*r, c.as_slice(), *rtt)),
            |via| self.relayed.avoided(target, via, now),
        )
    }

    /// Starts a relayed connection task with `peer` through `via`.
    fn open_session(&mut self, peer: PeerId, via: PeerId, outbound: bool) {
        let id = self.next_id();
        let (near, far) = tokio::io::duplex(BUFFER);
        let (incoming, incoming_rx) = Incoming::new();
        let remote = self
            .gossip
            .entry(peer)
            .and_then(|e| e.addresses.first().copied())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        tokio::spawn(connection::run_relayed(
            self.context.clone(),
            id,
            near,
            remote,
            outbound,
            via,
        ));
        tokio::spawn(pump(far, id, incoming_rx, self.context.events.clone()));
        self.relayed.by_peer.insert(
            peer,
            Session {
                peer,
                via,
                connection: id,
                outbound,
                opened: Instant::now(),
                up: false,
                incoming,
            },
        );
    }

    /// `RelayTo` from the neighbour on `connection`: forward it as
    /// `RelayFrom`, within the budget, to a direct neighbour only.
    pub(super) fn handle_relay_to(
        &mut self,
        connection: ConnectionId,
        to: PeerId,
        bytes: Vec<u8>,
        now: Instant,
    ) {
        let Some(from) = self.direct_neighbour_on(connection) else {
            // Relays do not chain: nothing is forwarded for a relayed peer.
            self.relayed.count(RelayDrop::UnknownTarget.as_str());
            return;
        };
        let connected = self.peers.is_direct(to);
        if self
            .relay_budget
            .admit(from, to, bytes.len(), connected, now)
            .is_ok()
        {
            self.send_to_peer(to, ControlMessage::RelayFrom { peer: from, bytes });
        }
    }

    /// `RelayFrom` through the neighbour on `connection`: bytes for the
    /// relayed connection with `origin` (opened here as responder if
    /// [`accepts`] says so).
    pub(super) fn handle_relay_from(
        &mut self,
        connection: ConnectionId,
        origin: PeerId,
        bytes: Vec<u8>,
    ) {
        let Some(via) = self.direct_neighbour_on(connection) else {
            self.relayed.count("relay_from_unknown_relay");
            return;
        };
        if bytes.is_empty() {
            self.handle_relay_reset(origin, via);
            return;
        }
        let current = self
            .relayed
            .by_peer
            .get(&origin)
            .map(|s| (s.via, s.outbound));
        match current {
            Some((v, _)) if v == via => {}
            // The opener moved to another relay: follow it.
            Some((_, false)) => {
                self.retire(origin, Instant::now());
                self.open_session(origin, via, false);
            }
            Some(_) => {
                self.relayed.count("relay_from_wrong_relay");
                return;
            }
            None => {
                let connected = self.peers.is_direct(origin);
                if !accepts(self.me, origin, connected, self.relayed.by_peer.len()) {
                    self.relayed.count("relay_from_refused");
                    return;
                }
                self.open_session(origin, via, false);
            }
        }
        let full = self
            .relayed
            .by_peer
            .get(&origin)
            .is_some_and(|session| !session.incoming.push(bytes));
        if full {
            // The stream cannot take bytes out of order or lose some: the
            // session goes (its pump ends, the connection sees its stream
            // close) and the opener opens it again.
            self.relayed.count("relay_incoming_full");
            self.relayed.by_peer.remove(&origin);
        }
    }

    /// An empty `RelayFrom`: the far end of the session we opened with
    /// `origin` through `via` lost bytes of its stream (its connection with
    /// the relay broke) and dropped its side. Opened again at once; the
    /// new connection adopts the record. Anything else is counted.
    fn handle_relay_reset(&mut self, origin: PeerId, via: PeerId) {
        let ours = self
            .relayed
            .by_peer
            .get(&origin)
            .is_some_and(|s| s.outbound && s.via == via);
        if !ours {
            self.relayed.count("relay_reset_refused");
            return;
        }
        let now = Instant::now();
        self.retire(origin, now);
        if let Some(choice) = self.relay_for(origin, now) {
            tracing::info!(peer = %origin, via = %choice.via, "the far end lost the relayed stream: reopening the control connection");
            self.open_session(origin, choice.via, true);
        }
    }

    /// The neighbour on `connection`, if that is a direct connection.
    fn direct_neighbour_on(&self, connection: ConnectionId) -> Option<PeerId> {
        self.peers
            .iter()
            .find(|p| p.connection == connection && p.relayed_via.is_none())
            .map(|p| p.id)
    }

    /// Stream bytes of the relayed connection `id`: to its relay.
    pub(super) fn handle_relay_out(&mut self, id: ConnectionId, bytes: Vec<u8>) {
        let Some((peer, via)) = self.relayed.by_connection(id).map(|s| (s.peer, s.via)) else {
            return;
        };
        self.send_to_peer(via, ControlMessage::RelayTo { peer, bytes });
    }

    /// The connection task `id` ended: its session goes (if it is one).
    pub(super) fn relayed_ended(&mut self, id: ConnectionId) {
        self.relayed.by_peer.retain(|_, s| s.connection != id);
        self.relayed.retiring.retain(|(s, _)| s.connection != id);
    }

    /// Keeps the session with `peer` open, off the table, until its
    /// replacement adopts the peer's record (the registry then closes it).
    fn retire(&mut self, peer: PeerId, now: Instant) {
        if let Some(session) = self.relayed.by_peer.remove(&peer) {
            self.relayed.retiring.push((session, now));
        }
    }

    /// The neighbour `via` went: every connection relayed through it is
    /// retired; the ones this side opened are opened again at once through
    /// another common router (or, if none is left, by
    /// [`Self::reopen_orphans`] once one is back) and the other side
    /// follows; the opener of each of the others is told, once `via` is
    /// back, that its stream lost bytes ([`Self::send_resets`]), in case
    /// only our connection with the relay broke (our NAT rebound) and the
    /// opener saw nothing. Its pairs are forgotten by the budget.
    pub(super) fn relay_gone(&mut self, via: PeerId, now: Instant) {
        self.relay_budget.forget(via);
        let moved: Vec<(PeerId, bool)> = self
            .relayed
            .by_peer
            .values()
            .filter(|s| s.via == via)
            .map(|s| (s.peer, s.outbound))
            .collect();
        for (peer, outbound) in moved {
            self.retire(peer, now);
            if !outbound {
                self.relayed.resets.push((peer, via, now));
            }
            if let Some(choice) = outbound.then(|| self.relay_for(peer, now)).flatten() {
                tracing::info!(peer = %peer, from = %via, to = %choice.via, "relay gone: moving the control connection to another common router");
                self.open_session(peer, choice.via, true);
            }
        }
    }
}

/// Pumps the far end of a relayed connection's stream: what the connection
/// writes goes to the control task as `RelayOut`, what the relay delivers
/// is written in. Ends when either side goes (the connection then sees its
/// stream close).
async fn pump(
    far: tokio::io::DuplexStream,
    id: ConnectionId,
    mut incoming: IncomingRx,
    events: mpsc::UnboundedSender<ConnectionEvent>,
) {
    let (mut read, mut write) = tokio::io::split(far);
    let mut buffer = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            read = read.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let bytes = buffer[..n].to_vec();
                    if events.send(ConnectionEvent::RelayOut { id, bytes }).is_err() {
                        break;
                    }
                }
            },
            bytes = incoming.recv() => match bytes {
                Some(bytes) => {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
}

#[cfg(test)]
mod tests;
