//! Pumping the gossip and IPAM cores: their transmits go to the peers'
//! connections, their events to the other cores, the kernel plan and the
//! snapshot's dirty flag. Part of the control loop's drain order (mod.rs).

use super::Control;
use super::mtu::OverlayMtu;
use super::peers::Peer;
use super::proto::{ControlMessage, Versions};
use crate::gossip::{Channel, GossipEvent};
use crate::id::PeerId;
use crate::ipam::Destination;
use crate::ipam::message::RING_SIGNED_VERSION;
use std::time::{Duration, Instant};

impl Control {
    /// Sends what the allocators want sent on the `Ring` (and `Ring6`)
    /// channel and acts on their events (a new node address or ownership
    /// table goes to the kernel and the data plane).
    pub(super) fn drive_ipam(&mut self, now: Instant) {
        let transmits: Vec<_> = std::iter::from_fn(|| self.ipam.poll_transmit()).collect();
        self.send_ring(Channel::Ring, transmits);
        if let Some(ipam6) = self.ipam6.as_mut() {
            let transmits: Vec<_> = std::iter::from_fn(|| ipam6.poll_transmit()).collect();
            if ipam6.drain_events(now) {
                self.dirty = true;
                let own6 = match ipam6.node_ip() {
                    Some(std::net::IpAddr::V6(a)) => Some(a),
                    _ => None,
                };
                let owned6 = ipam6.owned6();
                self.kernel.send_if_modified(|plan| {
                    let changed = plan.own_address6 != own6 || plan.owned6 != owned6;
                    plan.own_address6 = own6;
                    plan.owned6 = owned6;
                    changed
                });
            }
            self.send_ring(Channel::Ring6, transmits);
        }
        if self.ipam.drain_events(now) {
            self.dirty = true;
            let own_address = self.ipam.node_address();
            let owned = self.ipam.owned();
            self.kernel.send_if_modified(|plan| {
                let changed = plan.own_address != own_address || plan.owned != owned;
                plan.own_address = own_address;
                plan.owned = owned;
                changed
            });
        }
    }

    /// Sends one allocator's messages on its channel: a ring message goes
    /// to the peers whose ring version fits its destination (the IPv6
    /// ring's also need `CONTROL_RING6_VERSION`, checked by `send_to_peer`).
    fn send_ring(&mut self, channel: Channel, transmits: Vec<(Destination, Vec<u8>)>) {
        for (destination, payload) in transmits {
            // Each peer's ring version is the highest both hellos contain; a
            // `Neighbours` message goes only to peers speaking one it names,
            // and nothing goes to a peer that cannot sign (ring version < 3).
            let targets: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|p| signs(p))
                .filter(|p| {
                    let speaks = |min, max| {
                        Versions::OURS
                            .ring
                            .common(p.hello.versions.ring)
                            .is_some_and(|v| (min..=max).contains(&v))
                    };
                    match destination {
                        Destination::Peer(id) => p.id == id,
                        Destination::Broadcast => true,
                        Destination::Neighbours { min, max } => speaks(min, max),
                        Destination::PeerSpeaking { peer, min } => {
                            p.id == peer && speaks(min, u8::MAX)
                        }
                    }
                })
                .map(|p| p.id)
                .collect();
            self.count_gossip(channel, "out", targets.len() as u64, payload.len());
            for id in targets {
                self.send_to_peer(
                    id,
                    ControlMessage::Gossip {
                        channel: channel.to_byte(),
                        payload: payload.clone(),
                    },
                );
            }
        }
    }

    /// The MTUs this router uses (DESIGN.md "MTU"; `mtu`): the smallest
    /// any router announces, ours included, so that a packet fits every
    /// path, with weft0 and pods kept at IPv6's minimum when this router
    /// has an IPv6 pod range.
    pub(super) fn overlay_mtu(&self) -> OverlayMtu {
        let me = self.me;
        OverlayMtu::decide(
            self.config.mtu,
            self.gossip
                .peers()
                .filter(|e| e.id != me)
                .map(|e| (e.name.as_str(), u32::from(e.mtu))),
            self.ipam6.is_some(),
        )
    }

    /// Makes weft0 follow the overlay MTU (the kernel then answers
    /// oversized forwarded packets itself; the data plane's `icmp` covers
    /// the moments in between), and says when it changes; a peer that
    /// would pull it under IPv6's minimum is named in a warning.
    pub(super) fn follow_overlay_mtu(&mut self, mtu: &OverlayMtu) {
        let route_mtu = mtu.ipv4_route_mtu();
        self.kernel.send_if_modified(|plan| {
            if plan.mtu == mtu.link && plan.ipv4_route_mtu == route_mtu {
                return false;
            }
            match mtu.floor_summary() {
                Some(floor) => tracing::warn!(
                    cluster = mtu.cluster,
                    weft0 = mtu.link,
                    "IPv6 MTU floor: {floor}"
                ),
                None => tracing::info!(
                    from = plan.mtu,
                    to = mtu.link,
                    "cluster MTU changed: the smallest MTU any router announces (pods created from now on get it)"
                ),
            }
            plan.mtu = mtu.link;
            plan.ipv4_route_mtu = route_mtu;
            true
        });
    }

    pub(super) fn count_gossip(
        &mut self,
        channel: Channel,
        direction: &str,
        messages: u64,
        len: usize,
    ) {
        let name = match channel {
            Channel::Topology => "topology",
            Channel::Ring => "ring",
            Channel::Ring6 => "ring6",
            Channel::Unknown(_) => "unknown",
        };
        let entry = self
            .gossip_traffic
            .entry(format!("{name}/{direction}"))
            .or_default();
        entry.messages += messages;
        entry.bytes += messages * len as u64;
    }

    /// Sends what the gossip core wants sent and acts on its events.
    pub(super) fn drain_gossip(&mut self, now: Instant) {
        while let Some((peer, frame)) = self.gossip.poll_transmit() {
            if self.peers.contains(peer) {
                let entry = self
                    .gossip_traffic
                    .entry("topology/out".into())
                    .or_default();
                entry.messages += 1;
                entry.bytes += frame.len() as u64;
                self.send_to_peer(
                    peer,
                    ControlMessage::Gossip {
                        channel: Channel::Topology.to_byte(),
                        payload: frame,
                    },
                );
            }
        }
        while let Some(event) = self.gossip.poll_event() {
            match event {
                GossipEvent::TopologyChanged => {
                    // An entry's endpoints may have changed (a router
                    // learned its public address): dial the new candidates.
                    let me = self.gossip.id();
                    for entry in self.gossip.peers().filter(|e| e.id != me) {
                        self.maker.learn(entry.id, &entry.addresses, now);
                    }
                    self.dirty = true;
                }
                GossipEvent::PeerAdded { id, name } => {
                    tracing::info!(peer = %name, %id, "learned a router");
                    self.ipam.learn_name(id, &name);
                    if let Some(ipam6) = self.ipam6.as_mut() {
                        ipam6.learn_name(id, &name);
                    }
                    if let Some(entry) = self.gossip.entry(id) {
                        self.ipam.learn_key(id, entry.public_key);
                        if let Some(ipam6) = self.ipam6.as_mut() {
                            ipam6.learn_key(id, entry.public_key);
                        }
                        let addresses = entry.addresses.clone();
                        self.maker.learn(id, &addresses, now);
                    }
                    self.dirty = true;
                }
                GossipEvent::PeerRemoved { id, name } => {
                    tracing::info!(peer = %name, %id, "forgot an unreachable router");
                    self.maker.unlearn(id);
                    self.dirty = true;
                }
                GossipEvent::Rotated { old, new, rotation } => {
                    self.learn_rotation(old, new, &rotation, now);
                }
                GossipEvent::ShortIdChanged { old, new } => {
                    tracing::info!(old = old.0, new = new.0, "short ID changed after a clash");
                    self.short = new;
                    self.dirty = true;
                }
                GossipEvent::EntryRefused {
                    from,
                    id,
                    name,
                    reason,
                } => {
                    self.count_handshake(&format!("gossip_refused_{}", reason.as_str()));
                    if self
                        .last_gossip_log
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        self.last_gossip_log = Some(now);
                        tracing::warn!(%from, %id, %name, ?reason, "refused a topology entry");
                    }
                }
            }
        }
    }
}

/// The ring version both hellos contain, if any.
pub(super) fn ring_version(peer: &Peer) -> Option<u8> {
    Versions::OURS.ring.common(peer.hello.versions.ring)
}

/// Whether `peer` speaks the signed ring (version 3): the IPAM channel is
/// open only with such peers (`crate::ipam::message::RING_SIGNED_VERSION`).
fn signs(peer: &Peer) -> bool {
    ring_version(peer).is_some_and(|v| v >= RING_SIGNED_VERSION)
}

/// Says, once per connection, that IPAM with a pre-signing peer is off.
pub(super) fn warn_if_unsigned(peer: &Peer) {
    if !signs(peer) {
        tracing::warn!(
            peer = %peer.hello.name,
            ring = ?peer.hello.versions.ring,
            "peer cannot sign ring entries (ring version < 3): no IPAM messages to or from it until it is upgraded; its pods keep their addresses, ring changes do not reach it"
        );
    }
}
