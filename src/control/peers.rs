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
//! [`Peers::rekey_in_place`] and [`Peers::set_me`] (a live identity switch),
//! [`Peers::handle_down`], [`Peers::handle_message`], [`Peers::confirm`],
//! [`Peers::set_endpoint`], [`Peers::handle_timeout`]. Outputs, drained in
//! this order after every input: [`Peers::poll_event`], then — only after the
//! driver has published any changed keys to the data plane —
//! [`Peers::poll_transmit`] (a `KeyConfirm` must not reach the peer before
//! our data plane can open what it then sends); [`Peers::take_changed`]
//! says the keys or endpoints changed; [`Peers::poll_timeout`] re-arms.

use super::admission::MAX_CONNECTIONS;
use super::connection::{ConnectionCommand, ConnectionId, NewKeys};
use super::proto::{ControlMessage, Hello};
use crate::crypto::session::KeySchedule;
use crate::id::{PeerId, ShortId};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod rekey;
mod rotated;

pub use rekey::keyset_of;
pub use rotated::InPlace;

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
    /// The router its control connection runs through end to end (issue
    /// 16), or `None` for a direct TCP connection.
    pub relayed_via: Option<PeerId>,
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
    /// The router the connection runs through, if relayed.
    pub relayed_via: Option<PeerId>,
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
    /// Closed: a new peer while [`MAX_CONNECTIONS`] are up (inbound ones
    /// that raced past admission, or dials).
    OverCap,
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
            // A direct connection outranks a relayed one (issue 16): it
            // never gives way to one, and always replaces one.
            let (old_relayed, new_relayed) = (
                existing.relayed_via.is_some(),
                arrival.relayed_via.is_some(),
            );
            if same_process && new_relayed && !old_relayed {
                self.close(arrival.connection, "a direct connection exists");
                return Arrived::Refused;
            }
            // A relayed connection through another relay is the opener
            // moving off a relay that went: it takes over (adopted, keys
            // and UDP path kept).
            let relay_moved = new_relayed && existing.relayed_via != arrival.relayed_via;
            if same_process
                && old_relayed == new_relayed
                && !relay_moved
                && self.keeps_existing(peer_id, existing.outbound, arrival.outbound)
            {
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
        if !self.peers.contains_key(&peer_id) && self.peers.len() >= MAX_CONNECTIONS {
            tracing::warn!(peer = %arrival.hello.name, remote = %arrival.remote, cap = MAX_CONNECTIONS, "connection cap reached; closing the new connection (multi-hop routes cover the rest)");
            self.close(arrival.connection, "connection cap reached");
            return Arrived::OverCap;
        }
        let Arrival {
            connection,
            peer,
            public_key,
            hello,
            remote,
            outbound,
            keys,
            relayed_via,
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
        let endpoint = endpoint_of(outbound, remote, &hello, relayed_via);
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
                relayed_via,
                rekey_started: None,
            },
        );
        self.events.push_back(PeerEvent::Up { peer, outbound });
        self.changed = true;
        Arrived::New
    }

    /// A second connection within one process. A simultaneous dial (each
    /// side dialled): keep the connection the leading side dialled. The
    /// same side dialling again: the new one wins, the dialler lost the old
    /// one (a NAT that rebinds resets its end while ours, whose packets the
    /// NAT now drops, looks alive for minutes; refusing would lock it out).
    fn keeps_existing(&self, peer: PeerId, existing_outbound: bool, new_outbound: bool) -> bool {
        let dialler = |outbound: bool| if outbound { self.me } else { peer };
        let (old, new) = (dialler(existing_outbound), dialler(new_outbound));
        old != new && old.leads(new)
    }

    fn adopt(&mut self, arrival: Arrival, now: Instant) {
        let Some(peer) = self.peers.get_mut(&arrival.peer) else {
            return;
        };
        tracing::debug!(peer = %peer.hello.name, remote = %arrival.remote, outbound = arrival.outbound, "duplicate connection adopted");
        let remote_index = arrival.keys.remote_index;
        peer.connection = arrival.connection;
        if peer.relayed_via.is_some() && arrival.relayed_via.is_none() {
            // Direct now: its UDP goes where the connection says, until
            // authenticated packets say otherwise.
            peer.endpoint = endpoint_of(arrival.outbound, arrival.remote, &arrival.hello, None);
        }
        peer.relayed_via = arrival.relayed_via;
        peer.remote = arrival.remote;
        peer.outbound = arrival.outbound;
        peer.rekey_started = None;
        peer.keys.install(keyset_of(arrival.keys, now), now);
        self.changed = true;
        self.confirm_to_peer(arrival.connection, remote_index);
    }

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
            | ControlMessage::Fragment { .. }
            | ControlMessage::Observed { .. }
            | ControlMessage::RelayTo { .. }
            | ControlMessage::RelayFrom { .. }
            | ControlMessage::PunchOffer { .. } => None,
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

    /// Whether `peer` is connected by a direct TCP connection (a relay
    /// forwards only to such neighbours: relays do not chain).
    pub fn is_direct(&self, peer: PeerId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.relayed_via.is_none())
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

/// Where a new record's UDP goes first. Inbound, the connection's source
/// port is not where its UDP listens: use what it announced. Relayed, its
/// listen address is behind a NAT: nowhere, until a punch finds a path.
fn endpoint_of(
    outbound: bool,
    remote: SocketAddr,
    hello: &Hello,
    relayed_via: Option<PeerId>,
) -> Option<SocketAddr> {
    match relayed_via {
        Some(_) => None,
        None if outbound => Some(remote),
        None => Some(hello.listen),
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
            relayed_via: None,
        }
    }
}

#[cfg(test)]
mod tests;
