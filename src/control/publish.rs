//! The forwarding snapshot as a pure function of the control state
//! (DESIGN.md "The picture": next hop from the topology, who owns an
//! address is who routes it; "Rekey": a `next` keyset decrypts at once and
//! its first packet confirms it).
//!
//! Owns nothing: [`snapshot`] reads the peer registry, the topology's
//! routes, the short IDs, the ownership table, who may relay for whom
//! (`attribution`) and the MTU, and returns the table the data plane swaps
//! in. The driver calls it whenever a core says something changed, and
//! publishes the result.
//!
//! Short IDs: two connected peers with one short ID (a clash gossip has not
//! resolved yet) are never merged into one link. The lower full ID keeps
//! the short ID (DESIGN.md "The data header"); the other gets no link and no
//! receive keyset in the table until the clash is resolved, and is
//! reported in [`Published::refused_links`] — its packets would otherwise
//! be attributed to the wrong router. The counters are safe either way:
//! they belong to the keys (`router::lane`).

use super::attribution::Attributed;
use super::peers::Peers;
use crate::id::{PeerId, ShortId};
use crate::router::packet::AddrKey;
use crate::router::snapshot::{Link, Liveness, OwnedRange, RecvSession, SendKeys, Snapshot};
use std::collections::HashMap;
use std::sync::Arc;

/// Everything the snapshot is built from.
pub struct Inputs<'a> {
    /// This router's short ID.
    pub me: ShortId,
    /// The cluster's overlay MTU: the largest IPv4 inner packet.
    pub mtu: u32,
    /// The largest IPv6 inner packet: `mtu`, or IPv6's minimum when that
    /// is lower and this router has an IPv6 range (`control::mtu`).
    pub mtu6: u32,
    /// The connected peers and their keys.
    pub peers: &'a Peers,
    /// Each peer's liveness cell, shared with the data plane.
    pub liveness: &'a HashMap<PeerId, Arc<Liveness>>,
    /// `(destination, next hop)` over established connections.
    pub routes: Vec<(PeerId, PeerId)>,
    /// `(first, last, owner)` address ranges of both families.
    pub owners: Vec<(AddrKey, AddrKey, PeerId)>,
    /// The short ID the data plane uses for a router (gossiped, else its hello).
    pub short_of: &'a dyn Fn(PeerId) -> Option<ShortId>,
    /// `(origin, neighbour)`: the neighbour may relay the origin's packets,
    /// and `(first, last, owner)` ranges the owner held until just now
    /// (`attribution`).
    pub attributed: &'a Attributed,
}

/// What [`snapshot`] built.
#[derive(Debug)]
pub struct Published {
    /// The table.
    pub snapshot: Snapshot,
    /// Owned ranges refused as overlapping.
    pub refused_ranges: Vec<OwnedRange>,
    /// Peers left out because another peer (with a lower full ID), or this
    /// router, has their short ID.
    pub refused_links: Vec<(PeerId, ShortId)>,
}

/// `(first, last, owner)` ranges with the owners' short IDs (ranges of
/// routers without one are left out).
fn ranges(
    ranges: &[(AddrKey, AddrKey, PeerId)],
    short_of: &dyn Fn(PeerId) -> Option<ShortId>,
) -> Vec<OwnedRange> {
    ranges
        .iter()
        .filter_map(|&(start, end, owner)| {
            Some(OwnedRange {
                start,
                end,
                owner: short_of(owner)?,
            })
        })
        .collect()
}

/// Builds the table.
pub fn snapshot(inputs: &Inputs<'_>) -> Published {
    let short_of = inputs.short_of;
    let mut snapshot = Snapshot::new(inputs.me, inputs.mtu as usize);
    snapshot.mtu6 = inputs.mtu6 as usize;
    for &(origin, via) in &inputs.attributed.relays {
        if let (Some(origin), Some(via)) = (short_of(origin), short_of(via)) {
            snapshot.allow_relay(origin, via);
        }
    }
    snapshot.set_previous_owners(ranges(&inputs.attributed.previous_owners, short_of));
    let owners = ranges(&inputs.owners, short_of);
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
    let mut peers: Vec<_> = inputs.peers.iter().collect();
    peers.sort_by_key(|p| p.id);
    let mut refused_links = Vec::new();
    for peer in peers {
        let (Some(short), Some(liveness)) = (short_of(peer.id), inputs.liveness.get(&peer.id))
        else {
            continue;
        };
        if short == inputs.me || snapshot.link(short).is_some() {
            refused_links.push((peer.id, short));
            continue;
        }
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
    Published {
        snapshot,
        refused_ranges: refused,
        refused_links,
    }
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
            mtu6: 1420,
            peers: &w.peers,
            liveness: &w.liveness,
            routes,
            owners: vec![(100, 199, PeerId(2)), (200, 299, PeerId(4))],
            short_of: &short,
            attributed: &NOTHING_ATTRIBUTED,
        }
    }

    static NOTHING_ATTRIBUTED: Attributed = Attributed {
        relays: Vec::new(),
        previous_owners: Vec::new(),
    };

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
        let published = snapshot(&inputs(&w, routes));
        assert!(published.refused_ranges.is_empty());
        let s = published.snapshot;
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
        let s = snapshot(&inputs(&w, vec![])).snapshot;
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
        let s = snapshot(&inputs(&w, vec![])).snapshot;
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

    #[test]
    fn two_peers_with_one_short_id_are_never_merged_into_one_link() {
        let t0 = Instant::now();
        let w = world(t0);
        // 2 and 3 both claim short ID 7; 1 (this router) is short 1.
        let clash = |id: PeerId| Some(ShortId(if id.0 == 1 { 1 } else { 7 }));
        let mut i = inputs(&w, vec![]);
        i.short_of = &clash;
        let published = snapshot(&i);
        assert_eq!(published.refused_links, vec![(PeerId(3), ShortId(7))]);
        let link = published.snapshot.link(ShortId(7)).unwrap();
        let two = w.peers.get(PeerId(2)).unwrap().keys.current().unwrap();
        assert_eq!(link.send.as_ref().unwrap().remote_index, two.remote_index);
        let three = w.peers.get(PeerId(3)).unwrap().keys.current().unwrap();
        assert!(
            published.snapshot.session(three.local_index).is_none(),
            "3's packets would be attributed to 2"
        );
        // A peer with this router's own short ID gets nothing either.
        let mine = |_: PeerId| Some(ShortId(1));
        i.short_of = &mine;
        assert_eq!(snapshot(&i).refused_links.len(), 2);
    }

    #[test]
    fn relay_pairs_and_previous_owners_reach_the_table() {
        let t0 = Instant::now();
        let w = world(t0);
        let attributed = Attributed {
            relays: vec![(PeerId(4), PeerId(2))],
            previous_owners: vec![(300, 399, PeerId(3))],
        };
        let mut i = inputs(&w, vec![]);
        i.attributed = &attributed;
        let s = snapshot(&i).snapshot;
        assert!(s.may_relay(ShortId(4), ShortId(2)));
        assert!(!s.may_relay(ShortId(4), ShortId(3)));
        assert!(
            s.may_relay(ShortId(3), ShortId(3)),
            "a router speaks for itself"
        );
        assert!(s.owned_by(350, ShortId(3)));
        assert!(!s.owned_by(350, ShortId(2)));
    }
}
