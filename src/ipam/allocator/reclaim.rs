//! Reclaim and tombstones (DESIGN.md "Identity, ownership and reclaim"):
//! `weft rmpeer` takes a dead router's ranges under a tombstone and
//! quarantines them; a router that finds its own tombstone stops
//! allocating and raises an alarm.

use super::{Alarm, Allocator, Destination, Event, span, subtract};
use crate::id::PeerId;
use crate::ipam::error::IpamError;
use crate::ipam::store::Store;
use std::time::Instant;

impl<S: Store> Allocator<S> {
    /// Takes over the ranges of a dead router: writes a tombstone for it,
    /// quarantines what it took for `2 × convergence_bound`, persists, then
    /// broadcasts. Refused while `dead` is reachable unless `force`.
    /// Returns the number of addresses taken.
    pub fn rmpeer(&mut self, dead: PeerId, force: bool, now: Instant) -> Result<u128, IpamError> {
        if dead == self.cfg.me {
            return Err(IpamError::ReclaimSelf);
        }
        if let Some(by) = self.tombstoned {
            return Err(IpamError::Tombstoned(by));
        }
        if self.reachable.contains(&dead) && !force {
            return Err(IpamError::PeerReachable(dead));
        }
        let me = self.cfg.me;
        let Some(ring) = self.ring.as_mut() else {
            return Err(IpamError::NotReady);
        };
        let old_ring = ring.clone();
        let old_quarantine = self.quarantine.clone();
        let before = self.mine.clone();
        ring.reclaim(me, dead);
        self.refresh_mine();
        let taken = subtract(&self.mine, &before);
        let until = now + self.cfg.convergence_bound * 2;
        self.quarantine
            .extend(taken.iter().map(|(a, b)| (*a, *b, until)));
        if let Err(e) = self.persist_ring() {
            self.ring = Some(old_ring);
            self.quarantine = old_quarantine;
            self.refresh_mine();
            return Err(IpamError::Persist(e));
        }
        let addresses = span(&taken);
        self.events.push_back(Event::Reclaimed { dead, addresses });
        self.send_ring(Destination::Broadcast, now);
        Ok(addresses)
    }

    pub(super) fn check_tombstone(&mut self) {
        if self.tombstoned.is_some() {
            return;
        }
        if let Some(reclaimer) = self.ring.as_ref().and_then(|r| r.tombstone_of(self.cfg.me)) {
            self.tombstoned = Some(reclaimer);
            self.events
                .push_back(Event::Alarm(Alarm::Tombstoned { reclaimer }));
        }
    }
}
