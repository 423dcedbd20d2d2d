//! The forwarding snapshot as a pure function of the control state
//! (DESIGN.md "The picture": next hop from the topology, who owns an
//! address is who routes it; "Rekey": a `next` keyset decrypts at once and
//! its first packet confirms it).
//!
//! Owns nothing: [`snapshot`] reads the peer registry, the topology's
//! routes, the short IDs, the ownership table and the MTU, and returns the
//! table the data plane swaps in. The driver calls it whenever a core says
//! something changed, and publishes the result.

use super::peers::Peers;
use crate::id::{PeerId, ShortId};
use crate::router::snapshot::{Link, Liveness, OwnedRange, RecvSession, SendKeys, Snapshot};
use std::collections::HashMap;
use std::sync::Arc;

/// Everything the snapshot is built from.
pub struct Inputs<'a> {
    /// This router's short ID.
    pub me: ShortId,
    /// The cluster's overlay MTU.
    pub mtu: u32,
    /// The connected peers and their keys.
    pub peers: &'a Peers,
    /// Each peer's liveness cell, shared with the data plane.
    pub liveness: &'a HashMap<PeerId, Arc<Liveness>>,
    /// `(destination, next hop)` over established connections.
    pub routes: Vec<(PeerId, PeerId)>,
    /// `(first, last, owner)` address ranges.
    pub owners: Vec<(u32, u32, PeerId)>,
    /// The short ID the data plane uses for a router (gossiped, else its hello).
    pub short_of: &'a dyn Fn(PeerId) -> Option<ShortId>,
}

/// The table, and the owned ranges it refused as overlapping.
pub fn snapshot(inputs: &Inputs<'_>) -> (Snapshot, Vec<OwnedRange>) {
    let short_of = inputs.short_of;
    let mut snapshot = Snapshot::new(inputs.me, inputs.mtu as usize);
    let owners: Vec<OwnedRange> = inputs
        .owners
        .iter()
        .filter_map(|&(start, end, owner)| {
            Some(OwnedRange {
                start,
                end,
                owner: short_of(owner)?,
            })
        })
        .collect();
    let refused = snapshot.set_owners(owners);
    // Multi-hop: shortest paths over established connections, through a
    // neighbour we hold keys for.
    for &(dst, next_hop) in &inputs.routes {
        if let (Some(dst_short), Some(via)) = (short_of(dst), short_of(next_hop))
            && inputs.peers.contains(next_hop)
        {
            snapshot.set_next_hop(dst_short, via);
        }
    }
    for peer in inputs.peers.iter() {
        let (Some(short), Some(liveness)) = (short_of(peer.id), inputs.liveness.get(&peer.id))
        else {
            continue;
        };
        // A connection not yet established (UDP unverified) is used
        // directly only while the topology offers no other path.
        if snapshot.next_hop(short).is_none() {
            snapshot.set_next_hop(short, short);
        }
        let current = peer.keys.current();
        snapshot.set_link(
            short,
            Link {
                endpoint: peer.endpoint,
                send: current.map(|k| SendKeys {
                    remote_index: k.remote_index,
                    key: k.send.clone(),
                }),
                liveness: liveness.clone(),
            },
        );
        for keyset in peer.keys.receive_keysets() {
            // A keyset newer than current (`next`): its first packet
            // confirms the switch.
            let awaiting = current.is_some_and(|c| {
                keyset.local_index != c.local_index && keyset.created >= c.created
            });
            snapshot.add_session(
                keyset.local_index,
                RecvSession {
                    peer: short,
                    key: keyset.recv.clone(),
                    awaiting_confirmation: awaiting,
                },
            );
        }
    }
    (snapshot, refused)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::control::peers::tests_support::{arrival, new_keys};
    use std::time::{Duration, Instant};

    fn short(id: PeerId) -> Option<ShortId> {
        Some(ShortId(id.0 as u16))
    }

    struct World {
        peers: Peers,
        liveness: HashMap<PeerId, Arc<Liveness>>,
    }

    /// Router 1 connected to 2 and 3.
    fn world(t0: Instant) -> World {
        let mut peers = Peers::new(PeerId(1), Duration::from_secs(120));
        let mut liveness = HashMap::new();
        for (id, c) in [(PeerId(2), 1), (PeerId(3), 2)] {
            peers.handle_up(arrival(id, c, true, 7), t0);
            liveness.insert(id, Arc::new(Liveness::new(t0)));
        }
        World { peers, liveness }
    }

    fn inputs<'a>(w: &'a World, routes: Vec<(PeerId, PeerId)>) -> Inputs<'a> {
        Inputs {
            me: ShortId(1),
            mtu: 1420,
            peers: &w.peers,
            liveness: &w.liveness,
            routes,
            owners: vec![(100, 199, PeerId(2)), (200, 299, PeerId(4))],
            short_of: &short,
        }
    }

    #[test]
    fn direct_peers_are_their_own_next_hop_unless_the_topology_says_otherwise() {
        let t0 = Instant::now();
        let w = world(t0);
        // 3 is reached via 2 (the direct link to 3 is not established);
        // 4 via 2 as well; 5 via 9, which we are not connected to.
        let routes = vec![
            (PeerId(3), PeerId(2)),
            (PeerId(4), PeerId(2)),
            (PeerId(5), PeerId(9)),
        ];
        let (s, refused) = snapshot(&inputs(&w, routes));
        assert!(refused.is_empty());
        assert_eq!(s.next_hop(ShortId(2)), Some(ShortId(2)));
        assert_eq!(s.next_hop(ShortId(3)), Some(ShortId(2)));
        assert_eq!(s.next_hop(ShortId(4)), Some(ShortId(2)));
        assert_eq!(s.next_hop(ShortId(5)), None, "no keys for the next hop");
        assert_eq!(s.owner_of(150), Some(ShortId(2)));
        assert_eq!(s.owner_of(250), Some(ShortId(4)));
        assert_eq!(s.mtu, 1420);
    }

    #[test]
    fn every_peer_gets_a_link_with_its_endpoint_and_current_send_keys() {
        let t0 = Instant::now();
        let w = world(t0);
        let (s, _) = snapshot(&inputs(&w, vec![]));
        let link = s.link(ShortId(2)).unwrap();
        let peer = w.peers.get(PeerId(2)).unwrap();
        assert_eq!(link.endpoint, peer.endpoint);
        assert_eq!(
            link.send.as_ref().unwrap().remote_index,
            peer.keys.current().unwrap().remote_index
        );
        assert!(s.link(ShortId(3)).is_some());
    }

    #[test]
    fn a_keyset_awaiting_confirmation_is_marked_and_current_is_not() {
        let t0 = Instant::now();
        let mut w = world(t0);
        w.peers
            .handle_rekeyed(1, new_keys(77), t0 + Duration::from_secs(1));
        let (s, _) = snapshot(&inputs(&w, vec![]));
        let current = w
            .peers
            .get(PeerId(2))
            .unwrap()
            .keys
            .current()
            .unwrap()
            .local_index;
        assert!(!s.session(current).unwrap().awaiting_confirmation);
        let next = s.session(77).unwrap();
        assert!(next.awaiting_confirmation);
        assert_eq!(next.peer, ShortId(2));
    }
}
