//! When titles are required of every member: the ring's latch (DESIGN.md
//! "Security model"; docs/ARCHITECTURE.md "Signed titles").
//!
//! A neighbour whose connection negotiated a ring version below titles
//! could be a build before them, whose hand-overs carry none; a secret
//! holder could also pose as one to give another router's range away. The
//! latch decides: once it is set, every member's jumps need titles,
//! whatever its connection negotiated; before, every jump is judged as
//! before titles, and counted. It is set at birth, when this build
//! initialises the ring (a new cluster has no older build to wait for), and
//! it travels with the ring, merged by OR: nothing clears it, so posing as
//! an older build cannot take it back, and setting it only makes every
//! router stricter.
//!
//! A ring a build before titles initialised is never latched: its history
//! has hand-overs without titles, and a router that missed one would refuse
//! it for good once titles are required (the upgrade simulation, with an
//! operator's latch tried at the end of the upgrade, wedged 3 seeds of 12).

use super::{Allocator, Destination, Event};
use crate::id::PeerId;
use crate::ipam::message::Message;
use crate::ipam::ring::Ring;
use crate::ipam::store::Store;
use std::collections::BTreeSet;

impl<S: Store> Allocator<S> {
    /// The initial ring, latched when this build requires titles.
    pub(super) fn genesis_ring(&self, mode: &str, owners: &BTreeSet<PeerId>) -> Ring {
        let mut ring = Ring::genesis(self.cfg.range, mode, owners);
        if self.latches() {
            ring.require_titles();
        }
        ring
    }

    /// True once this router requires titles of every member.
    pub fn titles_required_of_all(&self) -> bool {
        self.latches() && self.ring.as_ref().is_some_and(Ring::titles_required)
    }

    /// The range owners not seen speaking titles while the latch is not
    /// set: neither this router nor a neighbour whose connection
    /// negotiated them (a build before titles, one not connected here, or
    /// a member posing as either). Empty once the latch is set.
    pub fn titles_waiting_for(&self) -> BTreeSet<PeerId> {
        match &self.ring {
            Some(ring) if self.latches() && !ring.titles_required() => ring
                .owners()
                .into_iter()
                .filter(|p| *p != self.cfg.me && !self.titled_peers.contains(p))
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    /// Takes the latch from `from`'s ring of our genesis if ours lacks it
    /// (two voters of different builds initialised the same ring), saves
    /// it and says so.
    pub(super) fn latch_titles(&mut self, from: PeerId) {
        if !self.latches() || !self.ring.as_mut().is_some_and(Ring::require_titles) {
            return;
        }
        // A failed save leaves the latch set in memory (the stricter side);
        // the next save of the ring carries it, and every peer's ring sets
        // it again after a restart.
        let saved = self.persist_ring().is_ok();
        self.events.push_back(Event::TitlesRequired { from, saved });
        // Spread it now: digests do not cover the latch, so a neighbour
        // would otherwise learn it only with the next change of the ring or
        // at its next connection.
        if let Some(ring) = &self.ring {
            let bytes = Message::Ring(ring.clone()).encode();
            self.transmits.push_back((Destination::Broadcast, bytes));
        }
    }

    /// Whether this router takes part in the latch at all: it speaks and
    /// requires titles.
    fn latches(&self) -> bool {
        self.cfg.require_titles && self.speaks_titles()
    }
}
