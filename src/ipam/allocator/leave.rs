//! `weft leave` (DESIGN.md "Leave"): a drained router hands every range it
//! owns round the live routers, persists, then broadcasts the ring.
//!
//! A range still quarantined here (taken by a reclaim, or relearned after
//! a restart without state: someone else may still hold addresses in it)
//! is handed on quarantined. The entry that gives it carries the `reclaim`
//! mark, and a router that gains a range through such an entry quarantines
//! it for twice the convergence bound from when it learns it
//! (`merge.rs`, `apply_ring`): never shorter than what was left here, so
//! the heir keeps the deadline or a later one. The mark already exists on
//! the ring wire and the rule in every release that signs rings, so old
//! heirs quarantine it too and the ring wire version does not move; a
//! separate message would race the ring's own gossip to the heir.

use super::{Allocator, Destination, Event};
use crate::id::PeerId;
use crate::ipam::error::IpamError;
use crate::ipam::space::Allocations;
use crate::ipam::store::Store;
use std::time::Instant;

impl<S: Store> Allocator<S> {
    /// Hands every range this router owns to live peers so that a drained
    /// node can go (`weft leave`, DESIGN.md "Leave"): the ranges go round the
    /// reachable routers in ID order, the ring is persisted, then broadcast.
    /// Refused while pods hold addresses here (unless `force`: their
    /// addresses may then be handed out again elsewhere) or with no live
    /// peer to take them. Quarantined ranges go on quarantined (see the
    /// module docs). The node's own address goes with its range. Returns
    /// the addresses handed.
    pub fn leave(&mut self, force: bool, now: Instant) -> Result<u128, IpamError> {
        if let Some(by) = self.tombstoned {
            return Err(IpamError::Tombstoned(by));
        }
        let pods = self.allocs.pods();
        if pods > 0 && !force {
            return Err(IpamError::PodsRemain(pods));
        }
        let me = self.cfg.me;
        let heirs: Vec<PeerId> = self
            .reachable
            .iter()
            .copied()
            .filter(|p| *p != me)
            .collect();
        if heirs.is_empty() {
            return Err(IpamError::NoHeir);
        }
        let Some(ring) = self.ring.as_mut() else {
            return Err(IpamError::NotReady);
        };
        let old_ring = ring.clone();
        let mut given = Vec::new();
        // A range may span several of our entries; donate entry by entry.
        for (lo, entry_end) in super::rotate::owned_entries(ring, me) {
            let heir = heirs[given.len() % heirs.len()];
            let quarantined = self
                .quarantine
                .iter()
                .any(|&(q_lo, q_hi, until)| until > now && q_lo <= entry_end && lo <= q_hi);
            if !ring.hand_over(me, lo, entry_end, heir, quarantined) {
                self.ring = Some(old_ring);
                return Err(IpamError::NotReady);
            }
            given.push((heir, entry_end - lo + 1));
        }
        let old_allocs = self.allocs.clone();
        self.allocs = Allocations::default();
        self.refresh_mine();
        if let Err(e) = self
            .persist_ring()
            .and_then(|()| self.persist_allocations())
        {
            self.ring = Some(old_ring);
            self.allocs = old_allocs;
            self.refresh_mine();
            let _ = self.persist_ring();
            return Err(IpamError::Persist(e));
        }
        for &(to, addresses) in &given {
            self.events.push_back(Event::RangeDonated { to, addresses });
        }
        self.send_ring(Destination::Broadcast, now);
        Ok(given.iter().map(|g| g.1).sum())
    }
}
