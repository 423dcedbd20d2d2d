//! `--reclaim-after DURATION`: the dead router's space comes back without
//! an operator (issue 20, "without Kubernetes"), as `weft rmpeer` would
//! take it, by exactly one router, and never on the minority side of a
//! partition. Sans-IO: the ring's owners, who is reachable and `now` come
//! in; the routers to reclaim now come out.
//!
//! The rule, for an owner of ring space unreachable for `after`:
//! - it is reclaimed only from a side that holds a strict majority of the
//!   ring's owners (the dead counted), so two sides of a partition never
//!   both reclaim, and a minority cut off from the rest keeps its hands off
//!   (a router that comes back after all finds its tombstone, stops
//!   allocating and says so: DESIGN.md "Reclaim");
//! - by the lowest-ID live owner only, so one router writes the tombstone
//!   (two reclaims of the same ID would still resolve deterministically in
//!   the ring, but one is cleaner);
//! - a router that was seen again in between starts its count afresh.
//!
//! Off by default: an operator who turns it on trades a manual step for the
//! risk that a router cut off for longer than `after` loses its space.

use crate::id::PeerId;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Whether `me` is the one router to reclaim unreachable owners now: the
/// live owners (`me` and the `reachable` ones) are a strict majority of the
/// ring's `owners`, and `me` is the lowest-ID of them. A router that owns
/// nothing yet (waiting for a donation) never is. Shared by
/// `--reclaim-after` and the Lease-driven reclaim (`node_reclaim.rs`).
pub(super) fn is_the_reclaimer(
    me: PeerId,
    owners: &BTreeSet<PeerId>,
    reachable: &BTreeSet<PeerId>,
) -> bool {
    let live = |id: &&PeerId| **id == me || reachable.contains(*id);
    let live_owners: Vec<&PeerId> = owners.iter().filter(live).collect();
    live_owners.len() * 2 > owners.len() && live_owners.first() == Some(&&me)
}

/// See the module docs.
#[derive(Debug)]
pub struct AutoReclaim {
    after: Duration,
    unreachable_since: BTreeMap<PeerId, Instant>,
    /// The last `now` seen: deadlines before it were judged then, and are
    /// judged again at the next change of reachability, not polled for.
    last_seen: Option<Instant>,
}

impl AutoReclaim {
    /// Reclaims owners unreachable for `after`.
    pub fn new(after: Duration) -> Self {
        Self {
            after,
            unreachable_since: BTreeMap::new(),
            last_seen: None,
        }
    }

    /// The routers `me` should reclaim now, given the ring's `owners` and
    /// the routers `reachable` from here (`me` counts as reachable).
    pub fn due(
        &mut self,
        me: PeerId,
        owners: &BTreeSet<PeerId>,
        reachable: &BTreeSet<PeerId>,
        now: Instant,
    ) -> Vec<PeerId> {
        self.last_seen = Some(now);
        let live = |id: &PeerId| *id == me || reachable.contains(id);
        self.unreachable_since
            .retain(|id, _| owners.contains(id) && !live(id));
        for id in owners.iter().filter(|id| !live(id)) {
            self.unreachable_since.entry(*id).or_insert(now);
        }
        if !is_the_reclaimer(me, owners, reachable) {
            return Vec::new();
        }
        self.unreachable_since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= self.after)
            .map(|(id, _)| *id)
            .collect()
    }

    /// When the next owner's time runs out, if any is being counted and
    /// it has not run out already (a router that was not the one to
    /// reclaim then is not woken again and again: a change of
    /// reachability re-judges it).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.unreachable_since
            .values()
            .map(|t| *t + self.after)
            .filter(|at| self.last_seen.is_none_or(|seen| *at > seen))
            .min()
    }

    /// The configured wait, for status and logs.
    pub fn after(&self) -> Duration {
        self.after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(60);

    fn set(ids: &[u64]) -> BTreeSet<PeerId> {
        ids.iter().map(|i| PeerId(*i)).collect()
    }

    #[test]
    fn a_dead_owner_is_reclaimed_after_the_wait_by_the_lowest_live_owner_only() {
        let t0 = Instant::now();
        let owners = set(&[1, 2, 3]);
        let mut lowest = AutoReclaim::new(AFTER);
        let mut other = AutoReclaim::new(AFTER);
        // 3 is gone; 1 and 2 see each other.
        assert!(lowest.due(PeerId(1), &owners, &set(&[2]), t0).is_empty());
        assert!(other.due(PeerId(2), &owners, &set(&[1]), t0).is_empty());
        assert_eq!(lowest.poll_timeout(), Some(t0 + AFTER));
        let just_before = t0 + AFTER - Duration::from_millis(1);
        assert!(
            lowest
                .due(PeerId(1), &owners, &set(&[2]), just_before)
                .is_empty()
        );
        let at = t0 + AFTER;
        assert_eq!(
            lowest.due(PeerId(1), &owners, &set(&[2]), at),
            vec![PeerId(3)]
        );
        assert!(other.due(PeerId(2), &owners, &set(&[1]), at).is_empty());
        // Judged: neither is woken for 3 again (no busy loop).
        assert_eq!(other.poll_timeout(), None);
    }

    #[test]
    fn a_partition_without_a_majority_reclaims_nothing_on_either_side() {
        let t0 = Instant::now();
        let owners = set(&[1, 2, 3, 4]);
        let late = t0 + AFTER * 10;
        // {1, 2} | {3, 4}: two of four is no majority.
        for (me, sees) in [(1, 2), (2, 1), (3, 4), (4, 3)] {
            let mut a = AutoReclaim::new(AFTER);
            a.due(PeerId(me), &owners, &set(&[sees]), t0);
            assert!(a.due(PeerId(me), &owners, &set(&[sees]), late).is_empty());
        }
        // {1, 2, 3} | {4}: only the majority side reclaims, and only 4.
        let mut a = AutoReclaim::new(AFTER);
        a.due(PeerId(1), &owners, &set(&[2, 3]), t0);
        assert_eq!(
            a.due(PeerId(1), &owners, &set(&[2, 3]), late),
            vec![PeerId(4)]
        );
        let mut d = AutoReclaim::new(AFTER);
        d.due(PeerId(4), &owners, &set(&[]), t0);
        assert!(d.due(PeerId(4), &owners, &set(&[]), late).is_empty());
    }

    #[test]
    fn a_router_seen_again_starts_its_count_afresh() {
        let t0 = Instant::now();
        let owners = set(&[1, 2, 3]);
        let mut a = AutoReclaim::new(AFTER);
        a.due(PeerId(1), &owners, &set(&[2]), t0);
        // Back for a moment at t0 + 50 s, gone again.
        a.due(
            PeerId(1),
            &owners,
            &set(&[2, 3]),
            t0 + AFTER - Duration::from_secs(10),
        );
        let gone_again = t0 + AFTER - Duration::from_secs(9);
        a.due(PeerId(1), &owners, &set(&[2]), gone_again);
        assert!(a.due(PeerId(1), &owners, &set(&[2]), t0 + AFTER).is_empty());
        assert_eq!(
            a.due(PeerId(1), &owners, &set(&[2]), gone_again + AFTER),
            vec![PeerId(3)]
        );
    }

    #[test]
    fn a_router_owning_nothing_never_reclaims_and_a_reclaimed_owner_is_forgotten() {
        let t0 = Instant::now();
        let mut newcomer = AutoReclaim::new(AFTER);
        // 0 owns nothing yet (lowest ID, but not an owner).
        newcomer.due(PeerId(0), &set(&[1, 2, 3]), &set(&[1, 2]), t0);
        assert!(
            newcomer
                .due(PeerId(0), &set(&[1, 2, 3]), &set(&[1, 2]), t0 + AFTER)
                .is_empty()
        );
        let mut a = AutoReclaim::new(AFTER);
        a.due(PeerId(1), &set(&[1, 2, 3]), &set(&[2]), t0);
        // 3's tombstone is in the ring: it owns nothing any more.
        assert!(
            a.due(PeerId(1), &set(&[1, 2]), &set(&[2]), t0 + AFTER)
                .is_empty()
        );
        assert_eq!(a.poll_timeout(), None);
    }
}
