//! Lease-driven reclaim (issue 20; DESIGN.md "Reclaim": "the deletion of a
//! Node object triggers the reclaim of its router, done once by one router
//! holding a Lease"). Sans-IO: the Lease task (`kube::lease_task`) names
//! the routers whose Node was deleted and whose Lease expired; this core
//! adds what only the mesh knows and picks what `me` reclaims now:
//! - an owner of ring space with one of those names that the mesh cannot
//!   reach (a deleted Node whose router still answers is left alone: it is
//!   being drained, or the API is wrong);
//! - only when `me` is the one reclaimer, the same rule as
//!   `--reclaim-after` (`auto_reclaim::is_the_reclaimer`: lowest-ID live
//!   owner on a side holding most of the owners), so one router writes
//!   the tombstone and a minority side never does;
//! - once: the tombstone takes the router out of the owners.

use super::auto_reclaim::is_the_reclaimer;
use crate::id::PeerId;
use std::collections::BTreeSet;

/// See the module docs.
#[derive(Debug, Default)]
pub struct NodeReclaim {
    /// Names of routers whose Node is deleted and whose Lease expired.
    gone: BTreeSet<String>,
}

impl NodeReclaim {
    /// The Lease task's latest list (it replaces the previous one).
    pub fn set_gone(&mut self, names: impl IntoIterator<Item = String>) {
        self.gone = names.into_iter().collect();
    }

    /// Whether any name is listed (nothing to judge otherwise).
    pub fn is_empty(&self) -> bool {
        self.gone.is_empty()
    }

    /// The owners `me` should reclaim now, given the ring's `owners`, the
    /// routers `reachable` from here and each router's name.
    pub fn due<'a>(
        &self,
        me: PeerId,
        owners: &BTreeSet<PeerId>,
        reachable: &BTreeSet<PeerId>,
        name_of: impl Fn(PeerId) -> Option<&'a str>,
    ) -> Vec<PeerId> {
        if self.gone.is_empty() || !is_the_reclaimer(me, owners, reachable) {
            return Vec::new();
        }
        owners
            .iter()
            .copied()
            .filter(|id| *id != me && !reachable.contains(id))
            .filter(|id| name_of(*id).is_some_and(|name| self.gone.contains(name)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<PeerId> {
        ids.iter().map(|i| PeerId(*i)).collect()
    }

    fn name(id: PeerId) -> Option<&'static str> {
        ["n0", "n1", "n2", "n3", "n4"]
            .get(usize::try_from(id.0).ok()?)
            .copied()
    }

    fn gone(names: &[&str]) -> NodeReclaim {
        let mut r = NodeReclaim::default();
        r.set_gone(names.iter().map(|s| (*s).to_string()));
        r
    }

    #[test]
    fn a_gone_unreachable_owner_is_reclaimed_by_the_lowest_live_owner_only() {
        let r = gone(&["n3"]);
        let owners = set(&[1, 2, 3]);
        assert_eq!(r.due(PeerId(1), &owners, &set(&[2]), name), vec![PeerId(3)]);
        assert!(r.due(PeerId(2), &owners, &set(&[1]), name).is_empty());
        // Once tombstoned it owns nothing: never twice.
        assert!(r.due(PeerId(1), &set(&[1, 2]), &set(&[2]), name).is_empty());
    }

    #[test]
    fn a_reachable_router_or_one_whose_node_is_not_gone_is_never_reclaimed() {
        let owners = set(&[1, 2, 3]);
        // Node deleted, Lease expired, but the mesh still reaches it.
        assert!(
            gone(&["n3"])
                .due(PeerId(1), &owners, &set(&[2, 3]), name)
                .is_empty()
        );
        // Unreachable, but its Node is there or its Lease is renewed.
        assert!(
            gone(&["n4"])
                .due(PeerId(1), &owners, &set(&[2]), name)
                .is_empty()
        );
        assert!(
            gone(&[])
                .due(PeerId(1), &owners, &set(&[2]), name)
                .is_empty()
        );
        // A router this one cannot name is not reclaimed by name.
        assert!(
            gone(&["n3"])
                .due(PeerId(1), &owners, &set(&[2]), |_| None)
                .is_empty()
        );
    }

    #[test]
    fn a_minority_side_never_reclaims_and_me_is_never_a_candidate() {
        let owners = set(&[1, 2, 3, 4]);
        // {1, 2} | {3, 4}, both Nodes of the other side "gone": no majority.
        let r = gone(&["n1", "n2", "n3", "n4"]);
        assert!(r.due(PeerId(1), &owners, &set(&[2]), name).is_empty());
        assert!(r.due(PeerId(3), &owners, &set(&[4]), name).is_empty());
        // A majority side of one of three: never, even naming itself.
        let r = gone(&["n1"]);
        assert!(
            r.due(PeerId(1), &set(&[1, 2, 3]), &set(&[]), name)
                .is_empty()
        );
        assert!(
            r.due(PeerId(1), &set(&[1, 2, 3]), &set(&[2, 3]), name)
                .is_empty()
        );
    }
}
