//! Shortest-path routes over the established connections of the topology.
//!
//! DESIGN.md "Next hop from the topology": a direct, established peer is its
//! own next hop; otherwise the next hop is the first step of a shortest path
//! over established connections. An edge counts only when both ends claim it
//! established (one router's word is not enough: a stale entry of a dead
//! router still lists its old connections). The hop limit of 8 is enforced by
//! the data plane, not here.

use super::aliases::Aliases;
use super::topology::{ConnectionInfo, Table};
use crate::id::PeerId;
use std::collections::{HashMap, VecDeque};

/// Next hop and path length for every reachable destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    table: HashMap<PeerId, Route>,
}

/// How to reach one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The direct peer to hand the packet to.
    pub next_hop: PeerId,
    /// Number of hops on the path (1 = direct).
    pub hops: u32,
}

impl Routes {
    /// Breadth-first search from `me`, visiting neighbours in id order so that
    /// equal-length paths resolve the same way every time.
    /// `mine` is my live connection list (newer than my entry in `table`,
    /// whose next version waits for the rate-limited push).
    pub fn compute(me: PeerId, mine: &[ConnectionInfo], table: &Table) -> Self {
        Self::compute_aliased(me, mine, table, &Aliases::default())
    }

    /// As [`Self::compute`], with a rotated router's IDs as one node
    /// ([`Aliases`]): a connection to any of its IDs leads to the ID the
    /// table holds it under, and that is the destination; a direct peer's
    /// next hop stays the ID my connection list names (the link as the
    /// driver knows it).
    pub fn compute_aliased(
        me: PeerId,
        mine: &[ConnectionInfo],
        table: &Table,
        aliases: &Aliases,
    ) -> Self {
        let mut routes = HashMap::new();
        let mut queue = VecDeque::new();
        queue.push_back((me, None::<PeerId>, 0u32));
        let mut seen = std::collections::HashSet::new();
        seen.insert(me);
        while let Some((node, first_hop, hops)) = queue.pop_front() {
            let connections = if node == me {
                mine
            } else {
                match table.get(node) {
                    Some(entry) => &entry.connections[..],
                    None => continue,
                }
            };
            for c in connections.iter().filter(|c| c.established) {
                let peer = aliases.canonical(c.peer);
                if seen.contains(&peer) {
                    continue;
                }
                let back = if peer == me {
                    find(mine, node, aliases)
                } else {
                    table
                        .get(peer)
                        .and_then(|other| find(&other.connections, node, aliases))
                };
                let mutual = back.is_some_and(|back| back.established);
                if !mutual {
                    continue;
                }
                seen.insert(peer);
                let next_hop = first_hop.unwrap_or(c.peer);
                routes.insert(
                    peer,
                    Route {
                        next_hop,
                        hops: hops + 1,
                    },
                );
                queue.push_back((peer, Some(next_hop), hops + 1));
            }
        }
        Self { table: routes }
    }

    /// The direct peer to send to for `dst`, if `dst` is reachable.
    pub fn next_hop(&self, dst: PeerId) -> Option<PeerId> {
        self.table.get(&dst).map(|r| r.next_hop)
    }

    /// The whole route to `dst`.
    pub fn route(&self, dst: PeerId) -> Option<Route> {
        self.table.get(&dst).copied()
    }

    /// Every reachable destination with its route.
    pub fn iter(&self) -> impl Iterator<Item = (PeerId, Route)> + '_ {
        self.table.iter().map(|(id, r)| (*id, *r))
    }

    /// Number of reachable destinations.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no destination is reachable.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// The established connection to `node` (under any of its IDs) in `list`,
/// sorted by peer.
fn find<'a>(
    list: &'a [ConnectionInfo],
    node: PeerId,
    aliases: &Aliases,
) -> Option<&'a ConnectionInfo> {
    std::iter::once(node)
        .chain(aliases.aliases_of(node).iter().copied())
        .find_map(|id| {
            list.binary_search_by_key(&id, |c| c.peer)
                .ok()
                .and_then(|i| list.get(i))
                .filter(|c| c.established)
        })
}
