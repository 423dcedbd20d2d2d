//! Initialisation (DESIGN.md "Ring initialisation"): the vote of a fixed
//! voter set (a majority proposing the identical set builds the identical
//! genesis ring), the static `seed=NAMES` split, and installing a first
//! ring, built here or learned, with the quarantine a learned one needs.

use super::{Alarm, Allocator, Destination, Event, Init};
use crate::id::PeerId;
use crate::ipam::error::IpamError;
use crate::ipam::message::{Message, Proposal};
use crate::ipam::ring::Ring;
use crate::ipam::store::Store;
use std::collections::BTreeSet;
use std::time::Instant;

impl<S: Store> Allocator<S> {
    /// Replaces the voter set before initialisation (when routers name each
    /// other, the voters are learned through the handshake).
    pub fn set_voters(&mut self, voters: BTreeSet<PeerId>, now: Instant) -> Result<(), IpamError> {
        if self.ring.is_some() {
            return Ok(());
        }
        self.may_vote = self.allocs.is_empty() && voters.contains(&self.cfg.me);
        self.cfg.init = Init::Voters(voters);
        self.agreed.clear();
        self.mismatched.clear();
        if self.may_vote {
            // Propose at once rather than at the next anti-entropy round.
            let bytes = self.proposal().encode();
            self.transmits.push_back((Destination::Broadcast, bytes));
        }
        self.try_initialise(now)
    }

    /// Sets the owners of a static split (`seed=NAMES`) once the driver has
    /// resolved every name to an ID, and builds the ring from them unless a
    /// ring is already known or this router has addresses in use (then it
    /// learns the ring instead). Every router resolving the same names builds
    /// the same ring.
    pub fn set_seed_owners(
        &mut self,
        owners: BTreeSet<PeerId>,
        now: Instant,
    ) -> Result<(), IpamError> {
        if self.ring.is_some() || owners.is_empty() {
            return Ok(());
        }
        self.cfg.init = Init::Seed(owners.clone());
        if !self.allocs.is_empty() {
            return Ok(());
        }
        let ring = Ring::genesis(self.cfg.range, "seed", &owners);
        self.adopt(ring, false, now)?;
        self.send_ring(Destination::Broadcast, now);
        Ok(())
    }

    pub(super) fn agreed_count(&self) -> usize {
        match &self.cfg.init {
            Init::Voters(v) => {
                let me = usize::from(v.contains(&self.cfg.me));
                me + self
                    .agreed
                    .iter()
                    .filter(|p| v.contains(p) && **p != self.cfg.me)
                    .count()
            }
            _ => 0,
        }
    }

    pub(super) fn proposal(&self) -> Message {
        let voters = match &self.cfg.init {
            Init::Voters(v) | Init::Seed(v) => v.iter().copied().collect(),
            Init::Observer => Vec::new(),
        };
        Message::Propose(Proposal {
            range: self.cfg.range,
            voters,
        })
    }

    pub(super) fn try_initialise(&mut self, now: Instant) -> Result<(), IpamError> {
        let Init::Voters(voters) = &self.cfg.init else {
            return Ok(());
        };
        if !self.may_vote || self.ring.is_some() || self.agreed_count() * 2 <= voters.len() {
            return Ok(());
        }
        let ring = Ring::genesis(self.cfg.range, "voters", voters);
        self.adopt(ring, false, now)?;
        self.send_ring(Destination::Broadcast, now);
        Ok(())
    }

    pub(super) fn on_propose(
        &mut self,
        from: PeerId,
        proposal: Proposal,
        now: Instant,
    ) -> Result<(), IpamError> {
        if proposal.range != self.cfg.range {
            if self.mismatched.insert(from) {
                self.events
                    .push_back(Event::Alarm(Alarm::VoterSetMismatch { peer: from }));
            }
            return Err(IpamError::RangeMismatch {
                peer: from,
                ours: self.cfg.range,
                theirs: proposal.range,
            });
        }
        if self.ring.is_some() {
            // It is waiting for a ring: it can have ours.
            self.send_ring(Destination::Peer(from), now);
            return Ok(());
        }
        let Init::Voters(voters) = &self.cfg.init else {
            return Ok(());
        };
        let theirs: BTreeSet<PeerId> = proposal.voters.iter().copied().collect();
        if theirs != *voters {
            self.agreed.remove(&from);
            if self.mismatched.insert(from) {
                self.events
                    .push_back(Event::Alarm(Alarm::VoterSetMismatch { peer: from }));
            }
            return Ok(());
        }
        self.mismatched.remove(&from);
        if voters.contains(&from) {
            self.agreed.insert(from);
        }
        self.try_initialise(now)
    }

    /// Installs a first ring (built here or learned), persists it.
    pub(super) fn adopt(
        &mut self,
        ring: Ring,
        quarantine_mine: bool,
        now: Instant,
    ) -> Result<(), IpamError> {
        let genesis = ring.genesis_id();
        self.ring = Some(ring);
        self.refresh_mine();
        let old_quarantine = self.quarantine.clone();
        if quarantine_mine {
            let until = now + self.cfg.convergence_bound * 2;
            self.relearn_until = Some(until);
            self.quarantine
                .extend(self.mine.iter().map(|(a, b)| (*a, *b, until)));
        }
        self.refresh_record(now);
        if let Err(e) = self.persist_ring() {
            self.ring = None;
            self.quarantine = old_quarantine;
            self.refresh_mine();
            return Err(IpamError::Persist(e));
        }
        self.may_vote = false;
        self.events.push_back(Event::RingReady { genesis });
        self.check_tombstone();
        Ok(())
    }
}
