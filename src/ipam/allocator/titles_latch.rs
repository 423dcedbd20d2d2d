//! When titles are required of every member: the ring's latch (DESIGN.md
//! "Security model"; docs/ARCHITECTURE.md "Signed titles").
//!
//! During a rolling upgrade a neighbour whose connection negotiated a ring
//! version below titles is judged as a build before them: its bounded
//! jumps over other routers' ranges are accepted and counted. A secret
//! holder could pose as such a build to give another router's range away.
//! The latch ends that: once it is set, every member's jumps need titles,
//! whatever its connection negotiated. It is set
//! - at birth, when this build initialises the ring: a new cluster has no
//!   older build to wait for, so a new install is closed from the start;
//! - by the operator (`--require-titles`) in a cluster whose ring a build
//!   before titles initialised, once the upgrade is over. Not on its own:
//!   a router cannot tell the last older build is gone (one that owns no
//!   range yet, or sits behind a partition, is invisible to it), and after
//!   the latch an older build's honest hand-overs that a router missed are
//!   refused for good. Status lists the owners not yet seen speaking
//!   titles, to say when the flag is safe;
//! - by a peer's ring that carries it: it is merged by OR and nothing
//!   clears it, so posing as an older build cannot take it back, and
//!   setting it only makes every router stricter.

use super::{Allocator, Destination, Event};
use crate::id::PeerId;
use crate::ipam::message::Message;
use crate::ipam::ring::Ring;
use crate::ipam::store::Store;
use std::collections::BTreeSet;

/// Why this router's ring started requiring titles of every member after
/// its birth (a ring this build initialises is born with the latch set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TitlesLatch {
    /// `--require-titles`.
    Operator,
    /// A peer's ring carried the latch.
    Peer(PeerId),
}

impl<S: Store> Allocator<S> {
    /// The initial ring, latched when this build requires titles.
    pub(super) fn genesis_ring(&self, mode: &str, owners: &BTreeSet<PeerId>) -> Ring {
        let mut ring = Ring::genesis(self.cfg.range, mode, owners);
        if self.latches() {
            ring.require_titles();
        }
        ring
    }

    /// `--require-titles`: latch now (or as soon as the ring is known).
    pub fn require_titles_of_all(&mut self) {
        self.cfg.require_titles_of_all = true;
        self.latch_titles_if_asked();
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

    /// Sets the latch if the operator asked for it and the ring is known.
    pub(super) fn latch_titles_if_asked(&mut self) {
        if self.cfg.require_titles_of_all && self.ring.is_some() {
            self.latch_titles(TitlesLatch::Operator);
        }
    }

    /// Sets the latch for `why` if it is not set yet, saves it and says so.
    pub(super) fn latch_titles(&mut self, why: TitlesLatch) {
        if !self.latches() || !self.ring.as_mut().is_some_and(Ring::require_titles) {
            return;
        }
        // A failed save leaves the latch set in memory (the stricter side);
        // the next save of the ring carries it, and after a restart the
        // rules above and every peer's ring set it again.
        let saved = self.persist_ring().is_ok();
        self.events.push_back(Event::TitlesRequired { why, saved });
        // Spread it now: digests do not cover the latch, so a neighbour
        // that does not set it itself would otherwise learn it only with
        // the next change of the ring or at its next connection.
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
