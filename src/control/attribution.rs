//! Who may speak for whom on the data plane (DESIGN.md "Security model",
//! "The data header"; issue 15, defect 7): what the forwarding snapshot
//! needs so that a receiver attributes a packet to its origin only when
//! that is plausible, as lookups rather than work per packet.
//!
//! Two rules, both checked by the receiving lane after authentication:
//! - **Relays.** A packet whose header names an origin other than the
//!   neighbour that sent it (a relayed one) is accepted only from a
//!   neighbour on some shortest path from this router to that origin, over
//!   the mutual established connections of the topology — the same graph
//!   the routes come from. Paths are symmetric (an edge counts only when
//!   both ends report it), so that is exactly the set of neighbours through
//!   which the origin's shortest paths to us arrive. A direct neighbour
//!   cannot speak for a router we also reach directly, nor for us.
//! - **Inner sources.** The inner source must lie in a range the origin
//!   owns in our ring (the snapshot's ownership table).
//!
//! Lag: our topology or ring may trail the sender's by a gossip round. A
//! relay pair or an owned range stays acceptable for [`GRACE`] after it
//! left our view, so a detour that just moved or a range just taken back
//! does not drop traffic. A range just donated *to* the origin is new to
//! us only until its ring update arrives, and donations move free space
//! only: no pod can have an address there before the donation reached the
//! new owner, and its first packets follow the same gossip that carries the
//! ring update to us (a packet that still beats it is dropped and counted
//! as `spoofed_source`, never delivered).
//!
//! Owns: the last time each relay pair and each owned range was current.
//! Pure otherwise: [`plausible_relays`] is a function of the topology.

use crate::gossip::core::Gossip;
use crate::id::PeerId;
use crate::router::packet::AddrKey;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long a relay pair or an owned range stays acceptable after it left
/// this router's view (a few gossip rounds).
pub const GRACE: Duration = Duration::from_secs(10);

/// `(origin, neighbour)` pairs, neighbour ≠ origin: the neighbour is the
/// first hop of some shortest path from `me` to `origin`. `neighbours(u)`
/// lists the routers `u` reports established connections to (`me`'s own
/// live list for `me`); an edge counts only when both ends list it.
pub fn plausible_relays(
    me: PeerId,
    neighbours: impl Fn(PeerId) -> Vec<PeerId>,
) -> Vec<(PeerId, PeerId)> {
    let mut cache: HashMap<PeerId, Vec<PeerId>> = HashMap::new();
    let mut adjacent =
        |u: PeerId| -> Vec<PeerId> { cache.entry(u).or_insert_with(|| neighbours(u)).clone() };
    // Breadth first from `me`, level by level; each router carries the set
    // of first hops over all its shortest paths.
    let mut first_hops: HashMap<PeerId, BTreeSet<PeerId>> = HashMap::new();
    let mut seen: HashSet<PeerId> = HashSet::from([me]);
    let mut level: Vec<PeerId> = Vec::new();
    for n in adjacent(me) {
        if n != me && adjacent(n).contains(&me) && seen.insert(n) {
            first_hops.insert(n, BTreeSet::from([n]));
            level.push(n);
        }
    }
    while !level.is_empty() {
        let mut next: Vec<PeerId> = Vec::new();
        let mut reached: HashSet<PeerId> = HashSet::new();
        for &u in &level {
            let from_u = first_hops.get(&u).cloned().unwrap_or_default();
            for v in adjacent(u) {
                if !adjacent(v).contains(&u) {
                    continue;
                }
                if seen.insert(v) {
                    reached.insert(v);
                    next.push(v);
                } else if !reached.contains(&v) {
                    // Nearer: reached on an earlier level.
                    continue;
                }
                first_hops
                    .entry(v)
                    .or_default()
                    .extend(from_u.iter().copied());
            }
        }
        level = next;
    }
    let mut pairs: Vec<(PeerId, PeerId)> = first_hops
        .into_iter()
        .flat_map(|(origin, hops)| hops.into_iter().map(move |via| (origin, via)))
        .filter(|(origin, via)| origin != via)
        .collect();
    pairs.sort();
    pairs
}

/// Remembers when each item was last current, to keep accepting it for
/// [`GRACE`] after it left.
#[derive(Debug)]
struct Grace<T> {
    last_current: HashMap<T, Instant>,
}

impl<T> Default for Grace<T> {
    fn default() -> Self {
        Self {
            last_current: HashMap::new(),
        }
    }
}

impl<T: Copy + Eq + Hash + Ord> Grace<T> {
    /// The current items, and returns the ones that left less than
    /// [`GRACE`] ago (sorted); older ones are forgotten.
    fn update(&mut self, current: &[T], now: Instant) -> Vec<T> {
        for &item in current {
            self.last_current.insert(item, now);
        }
        self.last_current
            .retain(|_, seen| now.saturating_duration_since(*seen) < GRACE);
        let current: HashSet<&T> = current.iter().collect();
        let mut recent: Vec<T> = self
            .last_current
            .keys()
            .filter(|item| !current.contains(item))
            .copied()
            .collect();
        recent.sort();
        recent
    }
}

/// What the snapshot needs to attribute packets, with grace for lag.
#[derive(Debug, Default)]
pub struct Attribution {
    relays: Grace<(PeerId, PeerId)>,
    owners: Grace<(AddrKey, AddrKey, PeerId)>,
}

/// The output of [`Attribution::update`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Attributed {
    /// `(origin, neighbour)` pairs a neighbour may relay for: current ones
    /// and those that left less than [`GRACE`] ago.
    pub relays: Vec<(PeerId, PeerId)>,
    /// `(first, last, owner)` ranges the owner no longer holds in our ring
    /// but did less than [`GRACE`] ago.
    pub previous_owners: Vec<(AddrKey, AddrKey, PeerId)>,
}

impl Attribution {
    /// Recomputes the relay pairs from `gossip`'s topology and takes note
    /// of the current `owners`.
    pub fn update(
        &mut self,
        gossip: &Gossip,
        owners: &[(AddrKey, AddrKey, PeerId)],
        now: Instant,
    ) -> Attributed {
        let me = gossip.id();
        let mine: Vec<PeerId> = gossip
            .neighbours()
            .filter(|(_, established, _)| *established)
            .map(|(id, _, _)| id)
            .collect();
        let current = plausible_relays(me, |u| {
            if u == me {
                return mine.clone();
            }
            gossip.entry(u).map_or_else(Vec::new, |e| {
                e.connections
                    .iter()
                    .filter(|c| c.established)
                    .map(|c| c.peer)
                    .collect()
            })
        });
        let mut relays = self.relays.update(&current, now);
        relays.extend(current);
        relays.sort();
        let previous_owners = self.owners.update(owners, now);
        Attributed {
            relays,
            previous_owners,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(u64, u64)]) -> impl Fn(PeerId) -> Vec<PeerId> + '_ {
        move |u| {
            edges
                .iter()
                .filter_map(|&(a, b)| {
                    if PeerId(a) == u {
                        Some(PeerId(b))
                    } else if PeerId(b) == u {
                        Some(PeerId(a))
                    } else {
                        None
                    }
                })
                .collect()
        }
    }

    fn pairs(list: &[(u64, u64)]) -> Vec<(PeerId, PeerId)> {
        list.iter().map(|&(o, v)| (PeerId(o), PeerId(v))).collect()
    }

    #[test]
    fn in_a_full_mesh_nobody_relays_for_anybody() {
        let edges = [(1, 2), (1, 3), (2, 3), (1, 4), (2, 4), (3, 4)];
        assert!(plausible_relays(PeerId(1), graph(&edges)).is_empty());
    }

    #[test]
    fn every_first_hop_of_an_equal_length_path_may_relay() {
        // 1 – 2 – 4 – 5 and 1 – 3 – 4: 4 and 5 come through 2 or 3.
        let edges = [(1, 2), (1, 3), (2, 4), (3, 4), (4, 5)];
        assert_eq!(
            plausible_relays(PeerId(1), graph(&edges)),
            pairs(&[(4, 2), (4, 3), (5, 2), (5, 3)])
        );
    }

    #[test]
    fn a_longer_path_and_a_one_sided_edge_give_no_relay() {
        // 1 – 2 – 3 and 1 – 4 – 5 – 3: only 2 relays for 3. 6 claims an
        // edge to 1 that 1 does not confirm.
        let edges = [(1, 2), (2, 3), (1, 4), (4, 5), (5, 3)];
        let one_sided = |u: PeerId| {
            let mut n = graph(&edges)(u);
            if u == PeerId(6) {
                n.push(PeerId(1));
            }
            n
        };
        assert_eq!(
            plausible_relays(PeerId(1), one_sided),
            pairs(&[(3, 2), (5, 4)])
        );
    }

    #[test]
    fn a_pair_or_range_that_left_stays_acceptable_for_the_grace_period() {
        let t0 = Instant::now();
        let mut grace = Grace::default();
        assert!(grace.update(&[1u32, 2], t0).is_empty());
        assert_eq!(grace.update(&[2], t0 + Duration::from_secs(1)), vec![1]);
        assert_eq!(
            grace.update(&[2], t0 + GRACE - Duration::from_millis(1)),
            vec![1]
        );
        assert!(grace.update(&[2], t0 + GRACE).is_empty());
    }
}
