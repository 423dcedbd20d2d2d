//! The peer registry: one record per connected router, duplicate-connection
//! arbitration, key schedules and the rekey policy (DESIGN.md "Keys and
//! sessions" → "Rekey"). A sans-IO core.
//!
//! Owns: which connection carries each peer, its hello, its UDP endpoint,
//! its [`KeySchedule`], and when a rekey was last started. Does not own the
//! connections (their tasks answer to a [`ConnectionId`]), liveness or
//! heartbeats (`heartbeat.rs`), nor the topology.
//!
//! The lower-ID rule (who starts timer rekeys, whose dial wins a
//! simultaneous dial) is asked only of [`PeerId::leads`].
//!
//! Inputs: [`Peers::handle_up`], [`Peers::handle_rekeyed`],
//! [`Peers::handle_down`], [`Peers::handle_message`], [`Peers::confirm`],
//! [`Peers::set_endpoint`], [`Peers::handle_timeout`]. Outputs, drained in
//! this order after every input: [`Peers::poll_event`], then — only after the
//! driver has published any changed keys to the data plane —
//! [`Peers::poll_transmit`] (a `KeyConfirm` must not reach the peer before
//! our data plane can open what it then sends); [`Peers::take_changed`]
//! says the keys or endpoints changed; [`Peers::poll_timeout`] re-arms.

use super::connection::{ConnectionCommand, ConnectionId, NewKeys};
use super::proto::{ControlMessage, Hello};
use crate::crypto::session::{KeySchedule, Keyset, REKEY_ATTEMPT_TIMEOUT};
use crate::id::{PeerId, ShortId};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A side that does not lead asks for a rekey only once its keys are this
/// many halves of `rekey_after` old (the leader missed it), so the two never
/// race into back-to-back rekeys.
const FOLLOWER_ASKS_AT_HALVES: u32 = 3;
/// Spacing between rekey attempts (a handshake's own time limit).
const REKEY_RETRY: Duration = REKEY_ATTEMPT_TIMEOUT;

/// One connected router.
#[derive(Debug)]
pub struct Peer {
    /// Its ID (from its static key).
    pub id: PeerId,
    /// Its static public key: a second connection must show the same one.
    pub public_key: [u8; 32],
    /// What it said about itself on the connection now in use.
    pub hello: Hello,
    /// The short ID the data plane uses for it (gossiped once known).
    pub short: ShortId,
    /// The connection in use.
    pub connection: ConnectionId,
    /// The connection's remote address.
    pub remote: SocketAddr,
    /// Whether we dialled that connection.
    pub outbound: bool,
    /// Where its UDP goes: from the handshake, then from authenticated packets.
    pub endpoint: Option<SocketAddr>,
    /// Its keysets.
    pub keys: KeySchedule,
    rekey_started: Option<Instant>,
}

/// A connection whose first handshake completed, as the registry sees it
/// (the driver keeps the connection's command channel).
#[derive(Debug)]
pub struct Arrival {
    /// Which connection.
    pub connection: ConnectionId,
    /// The peer's ID.
    pub peer: PeerId,
    /// The peer's static public key.
    pub public_key: [u8; 32],
    /// What the peer said about itself.
    pub hello: Hello,
    /// The connection's remote address.
    pub remote: SocketAddr,
    /// Whether we dialled.
    pub outbound: bool,
    /// The UDP keys of its handshake.
    pub keys: NewKeys,
}

/// What became of an arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrived {
    /// A new record: the first connection to this peer, or a restarted
    /// process replacing the old record (whose connection is closed).
    New,
    /// The same process connected twice and the new connection wins: the
    /// record moved onto it and its keys count as a rekey (no drops).
    Adopted,
    /// Closed: a duplicate that loses arbitration, or a key mismatch.
    Refused,
}

/// What the registry tells the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A record was created (see [`Arrived::New`]).
    Up {
        /// Which peer.
        peer: PeerId,
        /// Whether we dialled.
        outbound: bool,
    },
    /// A record went with its connection.
    Down {
        /// Which peer.
        peer: PeerId,
    },
}

/// Why [`Peers::poll_timeout`] wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeersTimer {
    /// A keyset expires (previous's grace or rejection).
    KeyExpiry,
    /// The rekey policy may act.
    Rekey,
}

/// The registry.
#[derive(Debug)]
pub struct Peers {
    me: PeerId,
    rekey_after: Duration,
    peers: HashMap<PeerId, Peer>,
    transmits: VecDeque<(ConnectionId, ConnectionCommand)>,
    events: VecDeque<PeerEvent>,
    changed: bool,
}

impl Peers {
    /// An empty registry for router `me`, rekeying every `rekey_after`.
    pub fn new(me: PeerId, rekey_after: Duration) -> Self {
        Self {
            me,
            rekey_after,
            peers: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            changed: false,
        }
    }

    /// A connection finished its first handshake: arbitrate against an
    /// existing record (DESIGN.md "Rekey": a second connection replaces the
    /// first only once its handshake has completed).
    pub fn handle_up(&mut self, arrival: Arrival, now: Instant) -> Arrived {
        let peer_id = arrival.peer;
        if let Some(existing) = self.peers.get(&peer_id) {
            if existing.public_key != arrival.public_key {
                self.close(arrival.connection, "key mismatch");
                return Arrived::Refused;
            }
            let same_process = existing.hello.incarnation == arrival.hello.incarnation;
            if same_process && self.keeps_existing(peer_id, existing.outbound, arrival.outbound) {
                self.close(arrival.connection, "duplicate connection");
                return Arrived::Refused;
            }
            let old = existing.connection;
            self.close(old, "replaced by a newer connection");
            if same_process {
                self.adopt(arrival, now);
                return Arrived::Adopted;
            }
        }
        let Arrival {
            connection,
            peer,
            public_key,
            hello,
            remote,
            outbound,
            keys,
        } = arrival;
        if let Some(clash) = self
            .peers
            .values()
            .find(|p| p.hello.name == hello.name && p.id != peer)
        {
            tracing::warn!(name = %hello.name, old = %clash.id, new = %peer, "a router with a known name but a new key connected");
        }
        tracing::info!(peer = %hello.name, id = %peer, %remote, outbound, local = keys.local_index, remote_index = keys.remote_index, "connection up");
        let mut schedule = KeySchedule::new(self.rekey_after);
        schedule.install(keyset_of(keys, now), now);
        // Inbound, the connection's source port is not where its UDP
        // listens: use what it announced.
        let endpoint = Some(if outbound { remote } else { hello.listen });
        self.peers.insert(
            peer,
            Peer {
                id: peer,
                public_key,
                short: ShortId(hello.short_id),
                hello,
                connection,
                remote,
                outbound,
                endpoint,
                keys: schedule,
                rekey_started: None,
            },
        );
        self.events.push_back(PeerEvent::Up { peer, outbound });
        self.changed = true;
        Arrived::New
    }

    /// A simultaneous dial within one process: keep the connection the
    /// leading side dialled.
    fn keeps_existing(&self, peer: PeerId, existing_outbound: bool, new_outbound: bool) -> bool {
        let dialler = |outbound: bool| if outbound { self.me } else { peer };
        let (old, new) = (dialler(existing_outbound), dialler(new_outbound));
        old == new || old.leads(new)
    }

    fn adopt(&mut self, arrival: Arrival, now: Instant) {
        let Some(peer) = self.peers.get_mut(&arrival.peer) else {
            return;
        };
        tracing::debug!(peer = %peer.hello.name, remote = %arrival.remote, outbound = arrival.outbound, "duplicate connection adopted");
        let remote_index = arrival.keys.remote_index;
        peer.connection = arrival.connection;
        peer.remote = arrival.remote;
        peer.outbound = arrival.outbound;
        peer.rekey_started = None;
        peer.keys.install(keyset_of(arrival.keys, now), now);
        self.changed = true;
        self.confirm_to_peer(arrival.connection, remote_index);
    }

    /// A rekey handshake on `connection` finished: install its keys as
    /// `next` and tell the peer (after the driver publishes them).
    pub fn handle_rekeyed(&mut self, connection: ConnectionId, keys: NewKeys, now: Instant) {
        let Some(peer) = self.by_connection_mut(connection) else {
            return;
        };
        let remote_index = keys.remote_index;
        tracing::debug!(peer = %peer.hello.name, local = keys.local_index, remote = keys.remote_index, initiator = keys.initiator, "rekeyed");
        peer.keys.install(keyset_of(keys, now), now);
        peer.rekey_started = None;
        self.changed = true;
        self.confirm_to_peer(connection, remote_index);
    }

    fn confirm_to_peer(&mut self, connection: ConnectionId, remote_index: u32) {
        self.transmits.push_back((
            connection,
            ConnectionCommand::Send(ControlMessage::KeyConfirm {
                session_index: remote_index,
            }),
        ));
    }

    /// `connection` ended. If it carried a peer, the record goes and its
    /// peer is returned (a replaced connection carries none).
    pub fn handle_down(&mut self, connection: ConnectionId, reason: &str) -> Option<PeerId> {
        let id = self.by_connection(connection)?.id;
        let peer = self.peers.remove(&id)?;
        tracing::info!(peer = %peer.hello.name, %reason, "connection down");
        self.events.push_back(PeerEvent::Down { peer: id });
        self.changed = true;
        Some(id)
    }

    /// A control message on `connection`. Key confirmations and rekey
    /// requests are handled here; a gossip payload is handed back as
    /// `(from, channel, payload)` for its core.
    pub fn handle_message(
        &mut self,
        connection: ConnectionId,
        message: ControlMessage,
        now: Instant,
    ) -> Option<(PeerId, u8, Vec<u8>)> {
        let me = self.me;
        let rekey_after = self.rekey_after;
        let peer = self.by_connection_mut(connection)?;
        match message {
            ControlMessage::KeyConfirm { session_index } => {
                tracing::debug!(peer = %peer.hello.name, session_index, "key confirm received");
                if peer.keys.confirm(session_index, now) {
                    self.changed = true;
                }
                None
            }
            ControlMessage::RekeyRequest => {
                let fresh = peer
                    .keys
                    .current()
                    .is_some_and(|k| now.saturating_duration_since(k.created) < rekey_after / 2);
                if me.leads(peer.id) && !fresh && peer.keys.next().is_none() {
                    self.transmits
                        .push_back((connection, ConnectionCommand::Rekey));
                }
                None
            }
            ControlMessage::Gossip { channel, payload } => Some((peer.id, channel, payload)),
            ControlMessage::Rekey { .. }
            | ControlMessage::TcpKeySwitch
            | ControlMessage::Close { .. }
            | ControlMessage::Fragment { .. } => None,
        }
    }

    /// A UDP packet authenticated under our keyset `local_index`; with
    /// `peer` known, only its schedule is asked. Promotes a `next` keyset.
    pub fn confirm(&mut self, peer: Option<PeerId>, local_index: u32, now: Instant) {
        for p in self.peers.values_mut() {
            if peer.is_none_or(|id| id == p.id) && p.keys.confirm(local_index, now) {
                self.changed = true;
            }
        }
    }

    /// An authenticated, newest packet from `peer` came from `address`.
    pub fn set_endpoint(&mut self, peer: PeerId, address: SocketAddr) {
        if let Some(p) = self.peers.get_mut(&peer)
            && p.endpoint != Some(address)
        {
            tracing::info!(peer = %p.hello.name, %address, "peer endpoint moved");
            p.endpoint = Some(address);
            self.changed = true;
        }
    }

    /// Sets the short ID the data plane uses for `peer`.
    pub fn set_short(&mut self, peer: PeerId, short: ShortId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.short = short;
        }
    }

    /// Expires keysets and applies the rekey policy: the leading side starts
    /// a timer rekey when due; the other asks with `RekeyRequest` only when
    /// its keys are overdue; attempts are [`REKEY_RETRY`] apart.
    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in self.peers.values_mut() {
            let before = peer.keys.receive_keysets().count();
            peer.keys.handle_timeout(now);
            if peer.keys.receive_keysets().count() != before {
                self.changed = true;
            }
            let leads = self.me.leads(peer.id);
            let overdue = peer.keys.current().is_some_and(|k| {
                now.saturating_duration_since(k.created) >= follower_asks_after(self.rekey_after)
            });
            let retry_ok = peer
                .rekey_started
                .is_none_or(|t| now.saturating_duration_since(t) >= REKEY_RETRY);
            if peer.keys.rekey_due(now) && retry_ok && (leads || overdue) {
                peer.rekey_started = Some(now);
                peer.keys.rekey_started(now);
                let command = if leads {
                    ConnectionCommand::Rekey
                } else {
                    ConnectionCommand::Send(ControlMessage::RekeyRequest)
                };
                self.transmits.push_back((peer.connection, command));
            }
        }
    }

    /// The earliest key expiry or moment the rekey policy may act.
    pub fn poll_timeout(&self) -> Option<(Instant, PeersTimer)> {
        self.peers
            .values()
            .flat_map(|p| {
                let expiry = p
                    .keys
                    .poll_expiry()
                    .map(|(t, _)| (t, PeersTimer::KeyExpiry));
                let rekey = self.rekey_at(p).map(|t| (t, PeersTimer::Rekey));
                [expiry, rekey]
            })
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    /// When the rekey policy may next act for `peer`: never earlier than it
    /// would, so a past deadline always makes `handle_timeout` act.
    fn rekey_at(&self, peer: &Peer) -> Option<Instant> {
        let leads = self.me.leads(peer.id);
        let mut at = match (peer.keys.rekey_deadline(), peer.keys.current()) {
            (Some(due), Some(current)) if !leads => {
                due.max(current.created + follower_asks_after(self.rekey_after))
            }
            (Some(due), _) => due,
            // No keys at all: only the leader acts, and `handle_timeout`
            // has already started it, so the retry spacing is the deadline.
            (None, None) if leads && peer.keys.next().is_none() => {
                peer.rekey_started? + REKEY_RETRY
            }
            (None, _) => return None,
        };
        if let Some(started) = peer.rekey_started {
            at = at.max(started + REKEY_RETRY);
        }
        Some(at)
    }

    /// The next command for a connection.
    pub fn poll_transmit(&mut self) -> Option<(ConnectionId, ConnectionCommand)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// Whether keys, endpoints or records changed since the last call (the
    /// forwarding snapshot must be republished).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&mut self, reason: &str) {
        let connections: Vec<ConnectionId> = self.peers.values().map(|p| p.connection).collect();
        for c in connections {
            self.close(c, reason);
        }
    }

    fn close(&mut self, connection: ConnectionId, reason: &str) {
        self.transmits
            .push_back((connection, ConnectionCommand::Close(reason.into())));
    }

    /// The record for `peer`.
    pub fn get(&self, peer: PeerId) -> Option<&Peer> {
        self.peers.get(&peer)
    }

    /// Whether `peer` is connected.
    pub fn contains(&self, peer: PeerId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// Every record, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// Connected peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is connected.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The peer known at `addr`: where it listens or where its connection
    /// comes from.
    pub fn at_address(&self, addr: SocketAddr) -> Option<&Peer> {
        self.peers
            .values()
            .find(|p| p.hello.listen == addr || p.remote == addr)
    }

    /// The peer whose data-plane short ID is `short`.
    pub fn by_short(&self, short: ShortId) -> Option<PeerId> {
        self.peers.values().find(|p| p.short == short).map(|p| p.id)
    }

    fn by_connection(&self, connection: ConnectionId) -> Option<&Peer> {
        self.peers.values().find(|p| p.connection == connection)
    }

    fn by_connection_mut(&mut self, connection: ConnectionId) -> Option<&mut Peer> {
        self.peers.values_mut().find(|p| p.connection == connection)
    }

    /// Rekeys completed, over all peers.
    pub fn rekeys(&self) -> u64 {
        self.peers.values().map(|p| p.keys.rekeys()).sum()
    }
}

fn follower_asks_after(rekey_after: Duration) -> Duration {
    rekey_after * FOLLOWER_ASKS_AT_HALVES / 2
}

/// A keyset from a connection's new keys, created `now`.
pub fn keyset_of(keys: NewKeys, now: Instant) -> Keyset {
    Keyset {
        local_index: keys.local_index,
        remote_index: keys.remote_index,
        send: keys.send,
        recv: keys.recv,
        created: now,
    }
}

/// Builders shared by the control cores' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::control::proto::Versions;
    use crate::crypto::data::DataKey;

    pub(crate) fn new_keys(index: u32) -> NewKeys {
        NewKeys {
            local_index: index,
            remote_index: index + 1000,
            send: DataKey::from_bytes([1; 32]),
            recv: DataKey::from_bytes([2; 32]),
            initiator: true,
        }
    }

    pub(crate) fn arrival(
        peer: PeerId,
        connection: ConnectionId,
        outbound: bool,
        incarnation: u64,
    ) -> Arrival {
        Arrival {
            connection,
            peer,
            public_key: [peer.0 as u8; 32],
            hello: Hello {
                versions: Versions::OURS,
                name: format!("n{}", peer.0),
                short_id: peer.0 as u16,
                listen: SocketAddr::from(([192, 0, 2, peer.0 as u8], 6783)),
                mtu: 1420,
                incarnation,
                session_index: connection as u32,
                cluster_range: "10.32.0.0/12".into(),
            },
            remote: SocketAddr::from(([192, 0, 2, peer.0 as u8], 40_000 + connection as u16)),
            outbound,
            keys: new_keys(connection as u32),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::tests_support::{arrival, new_keys as keys};
    use super::*;

    const REKEY: Duration = Duration::from_secs(120);

    fn low() -> PeerId {
        PeerId(1)
    }
    fn high() -> PeerId {
        PeerId(2)
    }

    fn drain(p: &mut Peers) -> Vec<(ConnectionId, ConnectionCommand)> {
        std::iter::from_fn(|| p.poll_transmit()).collect()
    }

    fn is_close(c: &ConnectionCommand) -> bool {
        matches!(c, ConnectionCommand::Close(_))
    }

    #[test]
    fn a_simultaneous_dial_keeps_the_connection_the_lower_id_dialled() {
        let now = Instant::now();
        // I am the lower ID: my outbound dial wins over the peer's inbound one.
        let mut p = Peers::new(low(), REKEY);
        assert_eq!(p.handle_up(arrival(high(), 1, true, 7), now), Arrived::New);
        assert_eq!(
            p.handle_up(arrival(high(), 2, false, 7), now),
            Arrived::Refused
        );
        let sent = drain(&mut p);
        assert!(sent.iter().any(|(c, m)| *c == 2 && is_close(m)));
        assert_eq!(p.get(high()).unwrap().connection, 1);

        // I am the higher ID: the peer's dial (inbound here) wins, adopted.
        let mut p = Peers::new(high(), REKEY);
        p.handle_up(arrival(low(), 1, true, 7), now);
        drain(&mut p);
        assert_eq!(
            p.handle_up(arrival(low(), 2, false, 7), now),
            Arrived::Adopted
        );
        let sent = drain(&mut p);
        assert!(sent.iter().any(|(c, m)| *c == 1 && is_close(m)));
        assert!(sent.iter().any(|(c, m)| *c == 2
            && matches!(
                m,
                ConnectionCommand::Send(ControlMessage::KeyConfirm { .. })
            )));
        let peer = p.get(low()).unwrap();
        assert_eq!(peer.connection, 2);
        assert!(peer.keys.next().is_some(), "adopted keys count as a rekey");
    }

    #[test]
    fn a_restarted_peer_replaces_the_old_record_with_fresh_keys() {
        let now = Instant::now();
        let mut p = Peers::new(low(), REKEY);
        p.handle_up(arrival(high(), 1, true, 7), now);
        assert_eq!(p.handle_up(arrival(high(), 2, false, 8), now), Arrived::New);
        let sent = drain(&mut p);
        assert!(sent.iter().any(|(c, m)| *c == 1 && is_close(m)));
        let peer = p.get(high()).unwrap();
        assert_eq!(peer.connection, 2);
        assert!(peer.keys.next().is_none());
        assert_eq!(
            peer.endpoint,
            Some(peer.hello.listen),
            "inbound: announced listen address"
        );
        // The old connection's end does not remove the new record.
        assert_eq!(p.handle_down(1, "closed"), None);
        assert!(p.contains(high()));
    }

    #[test]
    fn a_second_connection_with_another_key_is_closed() {
        let now = Instant::now();
        let mut p = Peers::new(low(), REKEY);
        p.handle_up(arrival(high(), 1, true, 7), now);
        drain(&mut p);
        let mut other = arrival(high(), 2, false, 8);
        other.public_key = [9; 32];
        assert_eq!(p.handle_up(other, now), Arrived::Refused);
        assert_eq!(p.get(high()).unwrap().connection, 1);
    }

    #[test]
    fn only_the_leader_starts_a_timer_rekey_and_retries_are_spaced() {
        let t0 = Instant::now();
        let mut p = Peers::new(low(), REKEY);
        p.handle_up(arrival(high(), 1, true, 7), t0);
        drain(&mut p);
        let (due, why) = p.poll_timeout().unwrap();
        assert_eq!((due, why), (t0 + REKEY, PeersTimer::Rekey));
        p.handle_timeout(due);
        assert!(matches!(drain(&mut p)[..], [(1, ConnectionCommand::Rekey)]));
        let (next, _) = p.poll_timeout().unwrap();
        assert_eq!(next, due + REKEY_RETRY, "the retry waits");
        p.handle_timeout(due + Duration::from_secs(1));
        assert!(drain(&mut p).is_empty());
        p.handle_timeout(next);
        assert!(matches!(drain(&mut p)[..], [(1, ConnectionCommand::Rekey)]));
    }

    #[test]
    fn the_follower_asks_for_a_rekey_only_when_overdue() {
        let t0 = Instant::now();
        // (With 120 s, 1.5 × 120 s is exactly REJECT_AFTER: the keys are
        // gone before the follower would ask; tests use shorter rekeys.)
        let rekey = Duration::from_secs(20);
        let mut p = Peers::new(high(), rekey);
        p.handle_up(arrival(low(), 1, true, 7), t0);
        drain(&mut p);
        p.handle_timeout(t0 + rekey);
        assert!(drain(&mut p).is_empty(), "due, but the leader rekeys");
        let (at, _) = p.poll_timeout().unwrap();
        assert_eq!(at, t0 + rekey * 3 / 2, "no wake-up until overdue");
        p.handle_timeout(at);
        assert!(matches!(
            drain(&mut p)[..],
            [(1, ConnectionCommand::Send(ControlMessage::RekeyRequest))]
        ));
    }

    #[test]
    fn a_rekey_request_is_honoured_by_the_leader_only_when_its_keys_are_not_fresh() {
        let t0 = Instant::now();
        let mut p = Peers::new(low(), REKEY);
        p.handle_up(arrival(high(), 1, true, 7), t0);
        drain(&mut p);
        p.handle_message(1, ControlMessage::RekeyRequest, t0 + Duration::from_secs(1));
        assert!(drain(&mut p).is_empty(), "fresh keys");
        p.handle_message(1, ControlMessage::RekeyRequest, t0 + REKEY);
        assert!(matches!(drain(&mut p)[..], [(1, ConnectionCommand::Rekey)]));

        let mut f = Peers::new(high(), REKEY);
        f.handle_up(arrival(low(), 1, true, 7), t0);
        drain(&mut f);
        f.handle_message(1, ControlMessage::RekeyRequest, t0 + REKEY);
        assert!(drain(&mut f).is_empty(), "the follower never starts one");
    }

    #[test]
    fn a_rekey_installs_next_and_confirms_after_which_current_switches() {
        let t0 = Instant::now();
        let mut p = Peers::new(low(), REKEY);
        p.handle_up(arrival(high(), 1, true, 7), t0);
        drain(&mut p);
        assert!(p.take_changed());
        p.handle_rekeyed(1, keys(50), t0);
        assert!(p.take_changed());
        assert!(matches!(
            drain(&mut p)[..],
            [(
                1,
                ConnectionCommand::Send(ControlMessage::KeyConfirm {
                    session_index: 1050
                })
            )]
        ));
        p.confirm(Some(high()), 50, t0);
        assert!(p.take_changed());
        assert_eq!(
            p.get(high()).unwrap().keys.current().unwrap().local_index,
            50
        );
    }

    #[test]
    fn no_deadline_lies_in_the_past_after_a_timeout_pass() {
        // A busy loop would follow from a deadline that handle_timeout
        // does not move past.
        let t0 = Instant::now();
        for me in [low(), high()] {
            let other = if me == low() { high() } else { low() };
            let mut p = Peers::new(me, REKEY);
            p.handle_up(arrival(other, 1, true, 7), t0);
            let mut now = t0;
            for _ in 0..50 {
                let Some((at, _)) = p.poll_timeout() else {
                    break;
                };
                now = now.max(at);
                p.handle_timeout(now);
                drain(&mut p);
                if let Some((next, _)) = p.poll_timeout() {
                    assert!(next > now, "{me:?}: deadline {next:?} not after {now:?}");
                }
            }
        }
    }

    #[test]
    fn gossip_is_handed_back_with_its_sender() {
        let t0 = Instant::now();
        let mut p = Peers::new(low(), REKEY);
        p.handle_up(arrival(high(), 1, true, 7), t0);
        let got = p.handle_message(
            1,
            ControlMessage::Gossip {
                channel: 2,
                payload: vec![1, 2],
            },
            t0,
        );
        assert_eq!(got, Some((high(), 2, vec![1, 2])));
        assert_eq!(p.handle_message(9, ControlMessage::RekeyRequest, t0), None);
    }
}
