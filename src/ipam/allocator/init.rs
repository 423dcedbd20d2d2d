//! Initialisation (DESIGN.md "Ring initialisation"): the vote of a fixed
//! set of voter slots, the static `seed=NAMES` split, and installing a first
//! ring, built here or learned, with the quarantine a learned one needs.
//!
//! The vote. The slots are the seed list every router shares; a ballot is
//! the slot count and the voters known by identity (a seed that is down at
//! the very first start is not). A voter proposes its ballot; once a
//! majority of the slots propose the identical ballot it *locks* it (never
//! proposes another) and says so; once a majority of the slots locked it,
//! it builds the genesis ring, split evenly among the ballot's voters.
//! Safety: any two majorities of the slots share a voter, and a voter locks
//! one ballot only, so two rings can never be built; a router alone is
//! never a majority of two or more slots. A voter that was not known
//! learns the ring like any late router and asks for a donation. Liveness:
//! ballots only grow while unlocked, so once the voters reach each other
//! they propose the same one; a lock split by a race between a majority
//! forming on a smaller ballot and one seed appearing is waited out by
//! status (`locked` below the quorum), which a router restart resolves.
//! The lock lives in memory only: a voter restarted during the vote starts
//! it afresh (a window of milliseconds, noted in docs/ARCHITECTURE.md).

use super::{Alarm, Allocator, Destination, Event, Init};
use crate::id::PeerId;
use crate::ipam::error::IpamError;
use crate::ipam::message::{Message, Proposal};
use crate::ipam::ring::Ring;
use crate::ipam::store::Store;
use std::collections::BTreeSet;
use std::time::Instant;

impl<S: Store> Allocator<S> {
    /// Replaces the voter set before initialisation, every voter known by
    /// identity (when routers name each other, the voters are learned
    /// through the handshake): a ballot of `voters.len()` slots.
    pub fn set_voters(&mut self, voters: BTreeSet<PeerId>, now: Instant) -> Result<(), IpamError> {
        let slots = voters.len();
        self.set_ballot(slots, voters, now)
    }

    /// Sets this router's ballot before initialisation: `slots` voter slots
    /// (the seed list every router shares) of which `known` are bound to
    /// identities so far (a seed that has not answered is not). A ballot
    /// naming fewer than a majority of the slots can never win. Once this
    /// router has locked a ballot it never proposes another, so this does
    /// nothing then; nor once the ring is known. Same ballot: no change.
    pub fn set_ballot(
        &mut self,
        slots: usize,
        known: BTreeSet<PeerId>,
        now: Instant,
    ) -> Result<(), IpamError> {
        if self.ring.is_some() || self.locked {
            return Ok(());
        }
        if self.slots == slots && matches!(&self.cfg.init, Init::Voters(v) if *v == known) {
            return Ok(());
        }
        self.may_vote = self.allocs.is_empty() && known.contains(&self.cfg.me);
        self.cfg.init = Init::Voters(known);
        self.slots = slots;
        self.agreed.clear();
        self.locked_by.clear();
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
        let ring = self.genesis_ring("seed", &owners);
        self.adopt(ring, false, now)?;
        self.send_ring(Destination::Broadcast, now);
        Ok(())
    }

    /// Voters of the ballot proposing it too, this router included.
    pub(super) fn agreed_count(&self) -> usize {
        self.count_with_me(&self.agreed, true)
    }

    /// Voters of the ballot that locked it, this router included once it has.
    pub(super) fn locked_count(&self) -> usize {
        self.count_with_me(&self.locked_by, self.locked)
    }

    fn count_with_me(&self, peers: &BTreeSet<PeerId>, me_counts: bool) -> usize {
        match &self.cfg.init {
            Init::Voters(v) => {
                let me = usize::from(me_counts && v.contains(&self.cfg.me));
                me + peers
                    .iter()
                    .filter(|p| v.contains(p) && **p != self.cfg.me)
                    .count()
            }
            _ => 0,
        }
    }

    /// A majority of the slots.
    pub(super) fn quorum(&self) -> usize {
        self.slots / 2 + 1
    }

    pub(super) fn proposal(&self) -> Message {
        let voters = match &self.cfg.init {
            Init::Voters(v) | Init::Seed(v) => v.iter().copied().collect(),
            Init::Observer => Vec::new(),
        };
        Message::Propose(Proposal {
            range: self.cfg.range,
            voters,
            slots: u32::try_from(self.slots).unwrap_or(u32::MAX),
            locked: self.locked,
        })
    }

    /// The vote's two steps: lock the ballot once a majority of the slots
    /// propose it (and say so at once), build the genesis ring once a
    /// majority locked it. A lock is never undone, so two majorities that
    /// locked share a voter that locked both: the same ballot, the same
    /// ring, whatever identities were still unknown.
    pub(super) fn try_initialise(&mut self, now: Instant) -> Result<(), IpamError> {
        if !self.may_vote || self.ring.is_some() {
            return Ok(());
        }
        let quorum = self.quorum();
        if !self.locked && self.agreed_count() >= quorum {
            self.locked = true;
            let bytes = self.proposal().encode();
            self.transmits.push_back((Destination::Broadcast, bytes));
        }
        if !self.locked || self.locked_count() < quorum {
            return Ok(());
        }
        let Init::Voters(voters) = &self.cfg.init else {
            return Ok(());
        };
        let ring = self.genesis_ring("voters", voters);
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
        let slots = usize::try_from(proposal.slots).unwrap_or(usize::MAX);
        if theirs != *voters || slots != self.slots {
            self.agreed.remove(&from);
            self.locked_by.remove(&from);
            // Two ballots of the same slots differ while identities are
            // still being learned (a seed not reached yet): not an alarm.
            // Another slot count, or a full ballot naming other routers, is
            // another configuration.
            let full = |set: &BTreeSet<PeerId>| set.len() == self.slots;
            let incompatible = slots != self.slots || (full(voters) && full(&theirs));
            if incompatible && self.mismatched.insert(from) {
                self.events
                    .push_back(Event::Alarm(Alarm::VoterSetMismatch { peer: from }));
            }
            return Ok(());
        }
        self.mismatched.remove(&from);
        if voters.contains(&from) {
            self.agreed.insert(from);
            if proposal.locked {
                self.locked_by.insert(from);
            }
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
