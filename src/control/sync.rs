//! Publishing the cores' state (drain order step 4 in mod.rs): the
//! forwarding snapshot to the data plane ([`super::publish::snapshot`],
//! a pure function) and each link's keys, short IDs and endpoint to the
//! heartbeat core. An `impl Control` block.

use super::Control;
use super::heartbeat::LinkKeys;
use super::ipam::IpamDriver;
use super::peers::Peers;
use super::publish;
use crate::gossip::Gossip;
use crate::id::{PeerId, ShortId};
use std::collections::BTreeSet;
use std::time::Instant;

/// The short ID the data plane uses for `id`: mine, the gossiped one, else
/// what its hello said; never one that another router rightfully holds
/// (DESIGN.md: on a clash the lower ID keeps it), so a router that has not
/// yet moved off a clashing value is left out and no two links share a slot.
fn short_of(
    me: PeerId,
    my_short: ShortId,
    gossip: &Gossip,
    peers: &Peers,
    id: PeerId,
) -> Option<ShortId> {
    if id == me {
        return Some(my_short);
    }
    match gossip.entry(id) {
        Some(e) => gossip.holds_short_id(id).then_some(e.short_id),
        None => peers
            .get(id)
            .map(|p| p.short)
            .filter(|s| *s != my_short && gossip.peer_by_short(*s).is_none()),
    }
}

impl Control {
    /// Rebuilds the forwarding snapshot from the cores' state, publishes it,
    /// and brings the heartbeat core's keys up to date.
    pub(super) fn publish(&mut self, now: Instant) {
        self.dirty = false;
        self.short = self.gossip.short_id();
        let (me, my_short) = (self.me, self.short);
        let ids: Vec<PeerId> = self.peers.iter().map(|p| p.id).collect();
        for id in ids {
            if let Some(s) = short_of(me, my_short, &self.gossip, &self.peers, id) {
                self.peers.set_short(id, s);
            }
        }
        let mtu = self.overlay_mtu();
        self.follow_overlay_mtu(&mtu);
        self.heartbeats.set_mtu(mtu.cluster, now);
        let (gossip, peers, rotations) = (&self.gossip, &self.peers, &self.rotations);
        // A rotated router's old ID (a ring not yet taken over to the new
        // one still names it) is the same router: its successor's slot.
        let lookup = |id| {
            short_of(me, my_short, gossip, peers, id).or_else(|| {
                let current = rotations.current(id);
                (current != id)
                    .then(|| short_of(me, my_short, gossip, peers, current))
                    .flatten()
            })
        };
        let mut owners = self.ipam.owners();
        owners.extend(self.ipam6.iter().flat_map(IpamDriver::owners));
        let attributed = self.attribution.update(gossip, &owners, now);
        let published = publish::snapshot(&publish::Inputs {
            me: my_short,
            mtu: mtu.cluster,
            mtu6: mtu.link,
            peers,
            liveness: &self.liveness,
            routes: gossip
                .routes()
                .iter()
                .map(|(d, r)| (d, r.next_hop))
                .collect(),
            owners,
            short_of: &lookup,
            attributed: &attributed,
        });
        if !published.refused_ranges.is_empty() {
            tracing::warn!(refused = ?published.refused_ranges, "overlapping ranges refused");
        }
        if published.refused_links != self.short_clashes {
            self.short_clashes = published.refused_links;
            if !self.short_clashes.is_empty() {
                self.count_handshake("short_id_clash");
                tracing::warn!(refused = ?self.short_clashes, "peers left out of the data plane: another router has their short ID");
            }
        }
        self.dataplane.publish(published.snapshot);
        for p in self.peers.iter() {
            self.heartbeats.set_link(
                p.id,
                my_short,
                LinkKeys {
                    short: p.short,
                    endpoint: p.endpoint,
                    current: p.keys.current(),
                    receive: p.keys.receive_keysets().collect(),
                },
                now,
            );
        }
        let reachable = self.reachable_peers();
        if let Some(ipam6) = self.ipam6.as_mut() {
            ipam6.set_reachable(reachable.clone(), now);
        }
        self.ipam.set_reachable(reachable, now);
    }

    /// Routers a path of established connections leads to, and direct peers.
    pub(super) fn reachable_peers(&self) -> BTreeSet<PeerId> {
        let routes = self.gossip.routes();
        let mut reachable: BTreeSet<PeerId> = routes.iter().map(|(id, _)| id).collect();
        reachable.extend(self.peers.iter().map(|p| p.id));
        reachable
    }
}
