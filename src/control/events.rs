//! Acting on the cores' events in the control loop (drain order step 2 in
//! mod.rs): the registry's peer up/down, the endpoint core's learned
//! addresses, the heartbeat core's authentication and establishment
//! changes, gossip payloads handed to their core, and the data-plane
//! workers' reports. An `impl Control` block: each event goes to the cores
//! that need it; no protocol rule lives here.

use super::Control;
use super::drive;
use super::endpoints::EndpointEvent;
use super::heartbeat::HeartbeatEvent;
use super::peers::PeerEvent;
use super::proto::ControlMessage;
use crate::gossip::{Channel, Frame, PeerInfo};
use crate::id::PeerId;
use crate::router::snapshot::Liveness;
use crate::router::worker::WorkerEvent;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Control {
    /// Acts on the registry's events: a peer's arrival or departure reaches
    /// the topology, IPAM, the heartbeats and the connection maker.
    pub(super) fn drain_peer_events(&mut self, now: Instant) {
        while let Some(event) = self.peers.poll_event() {
            self.dirty = true;
            match event {
                PeerEvent::Up { peer, outbound } => {
                    let Some(p) = self.peers.get(peer) else {
                        continue;
                    };
                    let info = PeerInfo {
                        id: peer,
                        name: p.hello.name.clone(),
                        public_key: p.public_key,
                        addresses: vec![p.hello.listen],
                    };
                    let ring = drive::ring_version(p);
                    self.ipam.learn_name(peer, &info.name);
                    self.ipam.learn_key(peer, p.public_key);
                    if let Some(ipam6) = self.ipam6.as_mut() {
                        ipam6.learn_name(peer, &info.name);
                        ipam6.learn_key(peer, p.public_key);
                        ipam6.handle_peer_up(peer, ring, now);
                    }
                    drive::warn_if_unsigned(p);
                    self.gossip.connection_up(info, outbound, now);
                    self.ipam.handle_peer_up(peer, ring, now);
                    self.liveness
                        .insert(peer, Arc::new(Liveness::new(self.epoch)));
                    self.heartbeats.add(peer, outbound, now);
                    self.start_punch(peer, now);
                }
                PeerEvent::Down { peer } => {
                    self.ipam.handle_peer_down(peer);
                    if let Some(ipam6) = self.ipam6.as_mut() {
                        ipam6.handle_peer_down(peer);
                    }
                    self.relay_gone(peer, now);
                    self.punch.forget(peer);
                    self.endpoints.handle_peer_down(peer);
                    self.drain_endpoint_events(now);
                    self.liveness.remove(&peer);
                    self.heartbeats.remove(peer);
                    self.maker.disconnected(peer, now);
                    self.gossip.connection_down(peer, now);
                }
            }
        }
    }

    /// Acts on the endpoint core's events: an address of my own is never
    /// dialled and counts as me in the seed list; a changed endpoint list
    /// goes into my topology entry.
    pub(super) fn drain_endpoint_events(&mut self, now: Instant) {
        while let Some(event) = self.endpoints.poll_event() {
            match event {
                EndpointEvent::MineLearned(addr) => {
                    self.self_addresses.insert(addr);
                    self.maker.add_own(addr);
                }
                EndpointEvent::AdvertisedChanged => {
                    let addresses = self.endpoints.advertised().to_vec();
                    tracing::info!(?addresses, "advertised endpoints changed");
                    self.gossip.set_addresses(addresses, now);
                    self.dirty = true;
                }
            }
        }
    }

    /// Acts on the heartbeat core's events.
    pub(super) fn drain_heartbeat_events(&mut self, now: Instant) {
        while let Some(event) = self.heartbeats.poll_event() {
            match event {
                HeartbeatEvent::Authenticated {
                    peer,
                    local_index,
                    from,
                    newest,
                } => {
                    if newest && self.on_data_family(peer, from) {
                        self.peers.set_endpoint(peer, from);
                        if self.endpoints.observe_udp(peer, from) {
                            self.send_to_peer(
                                peer,
                                ControlMessage::Observed {
                                    dialled: None,
                                    udp_from: Some(from),
                                },
                            );
                        }
                    }
                    self.peers.confirm(Some(peer), local_index, now);
                    self.punch_answer(peer, from, now);
                }
                HeartbeatEvent::Pong { peer, from, stamp } => {
                    self.family_choice.handle_pong(peer, from, stamp, now);
                }
                HeartbeatEvent::Established { peer, established } => {
                    if let Some(p) = self.peers.get(peer) {
                        tracing::info!(peer = %p.hello.name, established, "connection state changed");
                    }
                    if !established {
                        self.punch_path_down(peer, now);
                        self.family_choice.current_down(peer, now);
                    }
                    self.gossip.set_established(peer, established, now);
                    self.dirty = true;
                }
            }
        }
    }

    /// A gossip payload from `from`: the ring's go to IPAM, the topology's
    /// to the gossip core.
    pub(super) fn handle_gossip(
        &mut self,
        from: PeerId,
        channel: u8,
        payload: Vec<u8>,
        now: Instant,
    ) {
        self.count_gossip(Channel::from_byte(channel), "in", 1, payload.len());
        if channel == Channel::Ring.to_byte() {
            self.ipam.handle_message(from, &payload, now);
            return;
        }
        if channel == Channel::Ring6.to_byte() {
            // A router without an IPv6 range ignores the IPv6 ring.
            if let Some(ipam6) = self.ipam6.as_mut() {
                ipam6.handle_message(from, &payload, now);
            }
            return;
        }
        let channel = Frame::parse(&payload).map(|f| f.channel);
        if matches!(channel, Ok(Channel::Topology))
            && let Err(e) = self.gossip.handle_message(from, &payload, now)
        {
            self.count_handshake("gossip_refused");
            if self
                .last_gossip_log
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                self.last_gossip_log = Some(now);
                tracing::warn!(%from, error = %e, "dropped a gossip frame");
            }
        }
    }

    pub(super) fn handle_worker_event(&mut self, event: WorkerEvent, now: Instant) {
        match event {
            WorkerEvent::KeysetConfirmed { local_index } => {
                tracing::debug!(local_index, "keyset confirmed by a data packet");
                self.peers.confirm(None, local_index, now);
            }
            WorkerEvent::EndpointMoved { peer, address } => {
                if let Some(id) = self.peers.by_short(peer) {
                    if self.on_data_family(id, address) {
                        self.peers.set_endpoint(id, address);
                    } else {
                        self.family_choice.peer_data_elsewhere(id, now);
                    }
                }
            }
        }
    }
}
