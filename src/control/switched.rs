//! A peer's live identity switch in the control loop (issue 20;
//! docs/ARCHITECTURE.md "Identity key rotation"): its connection accepted
//! a rekey under the successor key its verified announcement names
//! (`ConnectionEvent::PeerRotated`, before that rekey's `Rekeyed`), so
//! every table keyed by its ID follows it to the new ID, with no down and
//! up. An `impl Control` block; the rules live in the cores
//! (`Peers::rekey_in_place`, `Gossip::neighbour_rotated`, each table's
//! `follow_rotation`).

use super::Control;
use super::connection::{ConnectionCommand, ConnectionId};
use super::peers::InPlace;
use crate::crypto::rotation::Rotation;
use crate::id::{FollowRotation, PeerId};
use std::time::Instant;

impl Control {
    /// The peer on `connection` moved from `old` to `new` under
    /// `rotation`. Called before the rekey's keyset is installed
    /// (`Peers::handle_rekeyed` finds the moved record by connection).
    pub(super) fn peer_switched(
        &mut self,
        connection: ConnectionId,
        old: PeerId,
        new: PeerId,
        rotation: Rotation,
        now: Instant,
    ) {
        match self
            .peers
            .rekey_in_place(connection, old, new, rotation.new)
        {
            InPlace::Moved => {}
            InPlace::Superseded => {
                // The successor's own connection stays; the registry
                // closed this one and reported the old ID down.
                self.learn_rotation(old, new, &rotation, now);
                return;
            }
            InPlace::Unknown => {
                // A connection the registry does not hold (one over the
                // cap, or one being replaced): it ends, as at a restart.
                if let Some(link) = self.links.get(&connection) {
                    let _ = link.send(ConnectionCommand::Close(
                        "identity key switched on a connection not in use".into(),
                    ));
                }
                return;
            }
        }
        self.heartbeats.follow_rotation(old, new);
        self.endpoints.follow_rotation(old, new);
        self.family_choice.follow_rotation(old, new);
        self.punch.follow_rotation(old, new);
        self.relayed.follow_rotation(old, new);
        self.maker.follow_rotation(old, new);
        self.liveness.follow_rotation(old, new);
        self.relay_budget.forget(old);
        let known = self
            .peers
            .get(new)
            .map(|p| (p.hello.name.clone(), super::drive::ring_version(p)));
        for ipam in std::iter::once(&mut self.ipam).chain(self.ipam6.as_mut()) {
            ipam.handle_peer_down(old);
            if let Some((name, ring)) = &known {
                ipam.learn_name(new, name);
                ipam.learn_key(new, rotation.new);
                ipam.set_peer_ring_version(new, *ring);
            }
        }
        // The retired-keys record, the window and the old key for IPAM,
        // as when the topology brings the announcement.
        self.learn_rotation(old, new, &rotation, now);
        if let Err(reason) = self.gossip.neighbour_rotated(old, new, rotation, now) {
            tracing::warn!(%old, %new, ?reason, "the topology refused a neighbour's live key switch");
        }
        self.dirty = true;
    }
}
