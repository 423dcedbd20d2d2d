//! Connection lifecycle in the control loop: accepting (through admission),
//! dialling what the connection maker asks for, and acting on each
//! connection task's events (up, rekeyed, a message, handshake failed,
//! down). Part of the loop's inputs (mod.rs); an `impl Control` block, no
//! protocol rule of its own: admission, the registry and the connection
//! maker decide.

use super::connection::{
    self, ConnectionCommand, ConnectionEvent, ConnectionId, HandshakeFailure, PeerUp,
};
use super::peers::{self, Arrival};
use super::proto::ControlMessage;
use super::{Control, rotation};
use crate::id::PeerId;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

impl Control {
    pub(super) fn handle_accept(
        &mut self,
        stream: tokio::net::TcpStream,
        remote: SocketAddr,
        now: Instant,
    ) {
        let id = self.next_id();
        if let Err(refusal) = self.admission.admit(id, remote.ip(), self.peers.len(), now) {
            self.count_handshake(refusal.as_str());
            if self
                .last_admission_log
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                self.last_admission_log = Some(now);
                let count = self.handshakes.get(refusal.as_str()).copied().unwrap_or(0);
                tracing::warn!(%remote, reason = refusal.as_str(), count, "refused an inbound connection before its handshake: {refusal}");
            }
            return;
        }
        tokio::spawn(connection::run_inbound(
            self.context.clone(),
            id,
            stream,
            remote,
        ));
    }

    /// A relayed connection came up: it must be the router its session
    /// was opened for (the relay cannot splice another in); then it goes
    /// to the registry like any connection, ranked below a direct one.
    fn relayed_up(&mut self, up: PeerUp, now: Instant) {
        let expected = self.relayed.by_connection(up.id).map(|s| s.peer);
        let (arrival, commands) = arrival_of(up);
        let id = arrival.connection;
        if !self.admit_rotated(arrival.peer, &commands, now) {
            self.relayed_ended(id);
            return;
        }
        if expected != Some(arrival.peer) {
            tracing::warn!(peer = %arrival.peer, ?expected, "a relayed connection reached another router than asked; closing it");
            let _ = commands.send(ConnectionCommand::Close("not the router asked for".into()));
            self.relayed_ended(id);
            return;
        }
        self.links.insert(id, commands);
        self.count_handshake("ok_relayed");
        if self.peers.handle_up(arrival, now) == peers::Arrived::OverCap {
            self.count_handshake("connection_cap");
        }
    }

    /// Identity rotation (`rotation.rs`): a connection from a key whose
    /// window is over is closed, as one without the cluster secret would
    /// be; one from a successor closes the links still on the keys it
    /// moved from. Whether the connection may go on.
    fn admit_rotated(
        &mut self,
        peer: PeerId,
        commands: &mpsc::UnboundedSender<ConnectionCommand>,
        now: Instant,
    ) -> bool {
        let linked: Vec<PeerId> = self.peers.iter().map(|p| p.id).collect();
        match self.rotations.arrival(peer, linked, now) {
            rotation::Arrival::Refuse => {
                self.count_handshake("retired_key");
                let _ = commands.send(ConnectionCommand::Close(
                    "the identity key was retired by a rotation".into(),
                ));
                // At most once a second, as every refused handshake.
                if self
                    .last_refusal_log
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    self.last_refusal_log = Some(now);
                    tracing::warn!(%peer, successor = %self.rotations.current(peer),
                        refused = self.handshakes.get("retired_key").copied().unwrap_or(0),
                        "refused a connection: its identity key was retired by a rotation and the window is over");
                }
                false
            }
            rotation::Arrival::Accept { replaces } => {
                for old in replaces {
                    if let Some(link) = self
                        .peers
                        .get(old)
                        .and_then(|p| self.links.get(&p.connection))
                    {
                        let _ = link.send(ConnectionCommand::Close(
                            "replaced by its successor identity key".into(),
                        ));
                    }
                }
                true
            }
        }
    }

    pub(super) fn next_id(&mut self) -> ConnectionId {
        let id = self.next_connection;
        self.next_connection += 1;
        id
    }

    pub(super) fn count_handshake(&mut self, result: &str) {
        *self.handshakes.entry(result.to_string()).or_default() += 1;
    }

    /// Another router known at `addr`: a connected peer's listen or remote
    /// address, or an address in another router's signed entry (so that a
    /// peer cannot make this router take it for its own).
    fn other_router_at(&self, addr: SocketAddr) -> Option<PeerId> {
        let me = self.me;
        self.peers.at_address(addr).map(|p| p.id).or_else(|| {
            self.gossip
                .peers()
                .find(|e| e.id != me && e.addresses.contains(&addr))
                .map(|e| e.id)
        })
    }

    /// Starts the dials the connection maker asks for.
    pub(super) fn drive_dials(&mut self, now: Instant) {
        while let Some(addr) = self.maker.poll_dial(now) {
            if self.self_addresses.contains(&addr) {
                // Mine: not a candidate of any seed or router either.
                self.maker.add_own(addr);
                continue;
            }
            let id = self.next_id();
            self.dialing.insert(id, addr);
            tokio::spawn(connection::run_outbound(self.context.clone(), id, addr));
        }
    }

    pub(super) fn handle_connection_event(&mut self, event: ConnectionEvent, now: Instant) {
        match event {
            ConnectionEvent::Up(up) if up.relayed_via.is_some() => self.relayed_up(up, now),
            ConnectionEvent::Up(up) => {
                let (arrival, commands) = arrival_of(up);
                let id = arrival.connection;
                self.admission.finished(id);
                if !self.admit_rotated(arrival.peer, &commands, now) {
                    self.dialing.remove(&id);
                    return;
                }
                // A direct connection ends any punching (it outranks the
                // relayed one it replaces).
                self.punch.forget(arrival.peer);
                self.links.insert(id, commands);
                let dialled = self.dialing.remove(&id);
                if let Some(addr) = dialled {
                    self.dial_errors.remove(&addr);
                }
                let peer = arrival.peer;
                self.maker
                    .connected(peer, dialled.or(Some(arrival.hello.listen)), now);
                self.count_handshake("ok");
                let arrived = self.peers.handle_up(arrival, now);
                if arrived == peers::Arrived::Adopted {
                    self.endpoints.retell(peer);
                }
                if arrived == peers::Arrived::OverCap {
                    self.count_handshake("connection_cap");
                } else if let Some(addr) = dialled {
                    // Tell it where it answered: behind 1:1 NAT that is an
                    // address it cannot learn by itself (issue 16).
                    self.endpoints.dialled(addr, peer);
                    self.send_to_peer(
                        peer,
                        ControlMessage::Observed {
                            dialled: Some(addr),
                            udp_from: None,
                        },
                    );
                }
            }
            ConnectionEvent::Rekeyed { id, keys } => self.peers.handle_rekeyed(id, keys, now),
            ConnectionEvent::Message {
                id,
                message: ControlMessage::Observed { dialled, udp_from },
            } => {
                let from = self.peers.iter().find(|p| p.connection == id).map(|p| p.id);
                if let Some(from) = from {
                    let owner = dialled.and_then(|a| self.other_router_at(a));
                    self.endpoints.handle_report(from, dialled, udp_from, owner);
                    self.drain_endpoint_events(now);
                }
            }
            ConnectionEvent::Message {
                id,
                message: ControlMessage::RelayTo { peer, bytes },
            } => self.handle_relay_to(id, peer, bytes, now),
            ConnectionEvent::Message {
                id,
                message: ControlMessage::RelayFrom { peer, bytes },
            } => self.handle_relay_from(id, peer, bytes),
            ConnectionEvent::Message {
                id,
                message: ControlMessage::PunchOffer { candidates },
            } => {
                let from = self.peers.iter().find(|p| p.connection == id).map(|p| p.id);
                if let Some(from) = from {
                    self.handle_punch_offer(from, &candidates, now);
                }
            }
            ConnectionEvent::RelayOut { id, bytes } => self.handle_relay_out(id, bytes),
            ConnectionEvent::Message { id, message } => {
                if let Some((from, channel, payload)) = self.peers.handle_message(id, message, now)
                {
                    self.handle_gossip(from, channel, payload, now);
                }
            }
            ConnectionEvent::HandshakeFailed {
                id,
                remote,
                outbound,
                reason,
            } => {
                self.admission.finished(id);
                self.relayed_ended(id);
                if reason == HandshakeFailure::SelfConnection {
                    self.self_addresses.insert(remote);
                }
                self.count_handshake(reason.as_str());
                if matches!(reason, HandshakeFailure::Refused) {
                    self.log_refusal(remote);
                } else if let HandshakeFailure::ClockSkew(why) = &reason {
                    self.log_clock_skew(remote, why);
                } else {
                    tracing::debug!(%remote, outbound, ?reason, "handshake failed");
                }
                if let Some(addr) = self.dialing.remove(&id) {
                    if reason == HandshakeFailure::SelfConnection {
                        self.maker.add_own(addr);
                    } else {
                        self.maker.dial_failed(addr, now);
                        self.dial_errors.insert(addr, format!("{reason:?}"));
                    }
                }
            }
            ConnectionEvent::PeerRotated {
                id,
                old,
                new,
                rotation,
            } => self.peer_switched(id, old, new, rotation, now),
            ConnectionEvent::IdentitySwitched { id } => {
                self.switching.remove(&id);
                if self.switching.is_empty() {
                    tracing::info!("identity rotation: every connection runs under the new key");
                }
            }
            ConnectionEvent::Down { id, reason } => {
                self.links.remove(&id);
                self.switching.remove(&id);
                self.relayed_ended(id);
                self.peers.handle_down(id, &reason);
            }
        }
    }

    /// Logs a refused handshake at most once a second (DESIGN.md invariant 4).
    fn log_refusal(&mut self, remote: SocketAddr) {
        let now = Instant::now();
        if self
            .last_refusal_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_refusal_log = Some(now);
            tracing::warn!(%remote, refused = self.handshakes.get("refused").copied().unwrap_or(0),
                "refused a handshake: the peer does not hold the cluster secret");
        }
    }

    /// A peer whose clock is off cannot connect until it is fixed: say so
    /// (at most once a second, like every refusal).
    fn log_clock_skew(&mut self, remote: SocketAddr, why: &str) {
        let now = Instant::now();
        if self
            .last_clock_skew_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_clock_skew_log = Some(now);
            tracing::warn!(%remote, "refused a handshake: {why}");
        }
    }
}

/// Splits a connection's arrival into what the registry keeps and the
/// command channel the driver keeps.
fn arrival_of(up: PeerUp) -> (Arrival, mpsc::UnboundedSender<ConnectionCommand>) {
    let arrival = Arrival {
        connection: up.id,
        peer: up.peer,
        public_key: up.public_key,
        hello: up.hello,
        remote: up.remote,
        outbound: up.outbound,
        keys: up.keys,
        relayed_via: up.relayed_via,
    };
    (arrival, up.commands)
}
