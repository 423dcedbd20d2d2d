//! Drives the family choice (`family.rs`, issue 19): which dual-stack
//! peers it tracks, its probes through the heartbeat core, and its moves
//! of a peer's endpoint. Part of the control loop's drain order (mod.rs).

use super::Control;
use super::family::{Family, FamilyEvent};
use super::proto::CONTROL_FAMILY_VERSION;
use crate::id::PeerId;
use crate::underlay::Families;
use std::net::SocketAddr;
use std::time::Instant;

impl Control {
    /// Tracks every direct peer that advertises both families and knows
    /// the family probes (when this router serves both), runs the core's timers, sends its probes and
    /// moves endpoints as it decides.
    pub(super) fn drive_family(&mut self, now: Instant) {
        let both = self.config.families == Families::BOTH;
        for p in self.peers.iter() {
            let advertised = self.gossip.entry(p.id).map(|e| e.addresses.as_slice());
            let knows = p.hello.versions.control.max >= CONTROL_FAMILY_VERSION;
            match (both && knows, p.relayed_via, p.endpoint, advertised) {
                (true, None, Some(endpoint), Some(advertised)) => {
                    self.family_choice.track(p.id, endpoint, advertised, now);
                }
                _ => self.family_choice.untrack(p.id),
            }
        }
        let peers = &self.peers;
        self.family_choice.retain(|id| peers.contains(id));
        if self.family_choice.poll_timeout().is_some_and(|t| t <= now) {
            self.family_choice.handle_timeout(now);
        }
        while let Some(event) = self.family_choice.poll_event() {
            match event {
                FamilyEvent::Probe { peer, addr } => {
                    let stamp = self.heartbeats.probe(peer, addr, now);
                    self.family_choice.probe_sent(peer, addr, stamp, now);
                }
                FamilyEvent::Switch { peer, to, reason } => {
                    let name = self.peers.get(peer).map(|p| p.hello.name.clone());
                    tracing::info!(
                        peer = name.as_deref().unwrap_or("?"),
                        %to,
                        %reason,
                        "data path moved to the other address family"
                    );
                    self.peers.set_endpoint(peer, to);
                }
            }
        }
    }

    /// Whether an authenticated packet of `peer` from `from` may move its
    /// endpoint: for a tracked dual-stack peer only within the family its
    /// data takes (the other family's packets are probes), for any other
    /// peer always, as before.
    pub(super) fn on_data_family(&self, peer: PeerId, from: SocketAddr) -> bool {
        if !self.family_choice.tracks(peer) {
            return true;
        }
        self.peers
            .get(peer)
            .and_then(|p| p.endpoint)
            .is_none_or(|e| Family::of(e) == Family::of(from))
    }
}
