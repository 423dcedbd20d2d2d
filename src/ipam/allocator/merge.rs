//! Ring exchange: a peer's ring is validated against what this router
//! knows of its own ranges, joined, and acted on (ranges gained or lost,
//! donations received, reclaims finished); a ring of another genesis is
//! either yielded to (this one holds no pods) or refused as a conflict.
//! Every send of the ring carries a fresh record (free space, pods).

use super::delta::SendBack;
use super::{Alarm, Allocator, Destination, Event, Init, subtract};
use crate::id::PeerId;
use crate::ipam::error::IpamError;
use crate::ipam::message::{Message, RING_TITLES_VERSION};
use crate::ipam::ring::{GenesisId, Ring};
use crate::ipam::store::Store;
use std::collections::BTreeMap;
use std::time::Instant;

impl<S: Store> Allocator<S> {
    /// True while this router's own history is not authoritative: after it
    /// learned the ring from a peer (restart without state), until the
    /// quarantine of that ring ends.
    pub(super) fn relearning(&self, now: Instant) -> bool {
        self.relearn_until.is_some_and(|until| now < until)
    }

    /// True when this allocator sends titles with its ring and, once the
    /// ring is latched, requires them (`ring/title.rs`, `titles_latch.rs`).
    pub(super) fn speaks_titles(&self) -> bool {
        self.cfg.ring_version >= RING_TITLES_VERSION
    }

    /// A peer's ring (whole, or rebuilt from a delta: `back` says how to
    /// send it what it lacks).
    pub(super) fn on_ring(
        &mut self,
        from: PeerId,
        theirs: Ring,
        back: SendBack,
        now: Instant,
    ) -> Result<(), IpamError> {
        if theirs.range() != self.cfg.range {
            return Err(IpamError::RangeMismatch {
                peer: from,
                ours: self.cfg.range,
                theirs: theirs.range(),
            });
        }
        self.check_signatures(from, &theirs, now)?;
        // A latch that comes with a ring of our genesis is ours too, before
        // judging: setting it only makes this router stricter.
        if theirs.titles_required()
            && self
                .ring
                .as_ref()
                .is_some_and(|r| r.genesis_id() == theirs.genesis_id())
        {
            self.latch_titles(from);
        }
        let Some(mine) = &self.ring else {
            // A ring learned from a peer quarantines our own ranges (a former
            // self may have given some away), unless it is the very genesis
            // this router would have built itself, untouched by any write of
            // ours: then learning it is no riskier than building it.
            let range = self.cfg.range;
            let own_genesis = match &self.cfg.init {
                Init::Voters(v) => {
                    self.may_vote && theirs.genesis_id() == GenesisId::derive(&range, "voters", v)
                }
                Init::Seed(o) => {
                    !o.is_empty()
                        && self.allocs.is_empty()
                        && theirs.genesis_id() == GenesisId::derive(&range, "seed", o)
                }
                Init::Observer => false,
            };
            let me = self.cfg.me;
            let untouched = theirs
                .entries()
                .values()
                .all(|e| e.writer != me || e.version == 1);
            return self.adopt(theirs, !(own_genesis && untouched), now);
        };
        if mine.genesis_id() != theirs.genesis_id() {
            return self.on_foreign_ring(from, theirs, now);
        }
        if !mine.would_change(&theirs) {
            // Nothing new here; if they lack something, send it back so the
            // exchange converges both ways (`anti_entropy.rs`).
            self.send_back(from, &theirs, &back, now);
            return Ok(());
        }
        let me = (!self.relearning(now)).then_some(self.cfg.me);
        // Titles are required once the ring's latch is set: from birth in a
        // ring this build initialised (`titles_latch.rs`). In a ring from a
        // build before them every jump is judged as before titles, whoever
        // sends it, and counted: a titled router relays entries an older
        // build wrote, which have none.
        let require_titles =
            self.cfg.require_titles && self.speaks_titles() && mine.titles_required();
        let judged = mine.judge_update(me, &self.reachable, &theirs, require_titles)?;
        if judged.untitled_jumps > 0 {
            self.events.push_back(Event::JumpsWithoutTitle {
                from,
                count: judged.untitled_jumps,
            });
        }
        let mut joined = mine.clone();
        joined.join(&theirs);
        self.apply_ring(from, joined, now)?;
        self.send_back(from, &theirs, &back, now);
        Ok(())
    }

    /// After merging `theirs` from `from`: sends what it lacks, whole or
    /// as the differing buckets (`delta.rs`).
    fn send_back(&mut self, from: PeerId, theirs: &Ring, back: &SendBack, now: Instant) {
        match back {
            SendBack::Ring => {
                let lack = self.ring.as_ref().is_some_and(|r| theirs.would_change(r));
                if self.speaks_digests() && lack {
                    self.send_ring(Destination::Peer(from), now);
                }
            }
            SendBack::Buckets(hashes) => self.send_differing(from, hashes, now),
        }
    }

    /// Installs a merged ring and acts on what changed for this router.
    pub(super) fn apply_ring(
        &mut self,
        from: PeerId,
        mut ring: Ring,
        now: Instant,
    ) -> Result<(), IpamError> {
        let me = self.cfg.me;
        let before = self.mine.clone();
        // Finish reclaims: anything still owned by a router we reclaimed
        // (its last writes raced our reclaim) is taken again.
        let mut reclaimed_again = Vec::new();
        let dead: Vec<PeerId> = ring
            .tombstones()
            .iter()
            .filter(|(_, by)| *by == me)
            .map(|(d, _)| *d)
            .collect();
        for d in dead {
            if ring.owners().contains(&d) {
                ring.reclaim(me, d);
                reclaimed_again.push(d);
            }
        }
        let owners_changed = self
            .ring
            .as_ref()
            .is_none_or(|old| !same_owners(old, &ring));
        let old_ring = self.ring.replace(ring);
        let old_quarantine = self.quarantine.clone();
        self.refresh_mine();
        let after = self.mine.clone();
        let gained = subtract(&after, &before);
        let lost = subtract(&before, &after);
        let until = now + self.cfg.convergence_bound * 2;
        let mut received: BTreeMap<PeerId, u128> = BTreeMap::new();
        if let Some(ring) = &self.ring {
            for &(lo, hi) in &gained {
                let first = ring
                    .entries()
                    .range(..=lo)
                    .next_back()
                    .map_or(lo, |(t, _)| *t);
                let mut pieces = ring.entries().range(first..=hi).peekable();
                while let Some((token, entry)) = pieces.next() {
                    let end = pieces.peek().map_or(hi, |(next, _)| (**next - 1).min(hi));
                    let start = (*token).max(lo);
                    if entry.owner != me || start > end {
                        continue;
                    }
                    if entry.writer == me || entry.reclaim {
                        // Written by a former self, or a reclaim: not trusted until converged.
                        self.quarantine.push((start, end, until));
                    } else {
                        *received.entry(entry.writer).or_default() += end - start + 1;
                    }
                }
            }
        }
        if (before != after || !reclaimed_again.is_empty())
            && let Err(e) = self.persist_ring()
        {
            self.ring = old_ring;
            self.quarantine = old_quarantine;
            self.refresh_mine();
            return Err(IpamError::Persist(e));
        }
        let in_use: u64 = lost
            .iter()
            .map(|(lo, hi)| self.allocs.count_in(*lo, *hi) as u64)
            .sum();
        if in_use > 0 {
            self.events.push_back(Event::Alarm(Alarm::OwnershipLost {
                addresses_in_use: in_use,
            }));
        }
        for (donor, addresses) in &received {
            // A donor answers one request per donation interval and ignores
            // the rest (`donation.rs`): ask it again only once that has passed,
            // rather than be ignored, time out and avoid it for longer.
            self.avoid.insert(*donor, now + self.cfg.donation_interval);
            self.events.push_back(Event::RangeReceived {
                from: *donor,
                addresses: *addresses,
            });
        }
        if !received.is_empty() || self.pending.is_some_and(|(p, _)| p == from) {
            if received.is_empty() {
                // The peer we asked answered without a donation: ask someone else next time.
                self.avoid.insert(from, now + self.cfg.request_timeout * 4);
            }
            self.pending = None;
        }
        if owners_changed {
            self.events.push_back(Event::OwnersChanged);
        }
        for d in reclaimed_again {
            self.events.push_back(Event::Reclaimed {
                dead: d,
                addresses: 0,
            });
        }
        self.check_tombstone();
        if before != after {
            self.send_ring(Destination::Broadcast, now);
        }
        Ok(())
    }

    pub(super) fn on_foreign_ring(
        &mut self,
        from: PeerId,
        theirs: Ring,
        now: Instant,
    ) -> Result<(), IpamError> {
        let Some(mine) = &self.ring else {
            return Ok(());
        };
        let ours = mine.genesis_id();
        let other = theirs.genesis_id();
        let we_hold = mine.holds_pods() || self.allocs.pods() > 0;
        let they_hold = theirs.holds_pods();
        if !we_hold && (they_hold || other > ours) {
            // DESIGN.md: "a ring holding no pod allocations yields to the other on its own".
            let old_allocs = self.allocs.clone();
            self.allocs.clear_all_but_holds();
            if let Err(e) = self.persist_allocations() {
                self.allocs = old_allocs;
                return Err(IpamError::Persist(e));
            }
            let old_ring = self.ring.take();
            let old_quarantine = std::mem::take(&mut self.quarantine);
            if let Err(e) = self.adopt(theirs, true, now) {
                self.ring = old_ring;
                self.quarantine = old_quarantine;
                self.refresh_mine();
                return Err(e);
            }
            self.conflict = None;
            self.pending = None;
            self.events.push_back(Event::RingReplaced {
                old: ours,
                new: other,
            });
            return Ok(());
        }
        if !we_hold && !they_hold {
            // They hold nothing either and their genesis is lower: they yield to us.
            return Ok(());
        }
        if self.conflict != Some((ours, other)) {
            self.conflict = Some((ours, other));
            self.events.push_back(Event::Alarm(Alarm::GenesisMismatch {
                ours,
                theirs: other,
                peer: from,
            }));
        }
        Err(IpamError::GenesisMismatch {
            ours,
            theirs: other,
            peer: from,
        })
    }

    pub(super) fn refresh_record(&mut self, now: Instant) {
        let free = self.free(now);
        let pods = self.allocs.pods();
        let me = self.cfg.me;
        if let Some(ring) = self.ring.as_mut() {
            ring.set_record(me, free, pods);
        }
    }

    pub(super) fn send_ring(&mut self, to: Destination, now: Instant) {
        self.refresh_record(now);
        self.sign_own();
        if let Some(ring) = &self.ring {
            let ring = match self.speaks_titles() {
                true => ring.clone(),
                false => ring.clone().without_titles(),
            };
            let bytes = Message::Ring(ring).encode();
            self.transmits.push_back((to, bytes));
        }
    }
}

/// Whether two rings give every range the same owner.
fn same_owners(a: &Ring, b: &Ring) -> bool {
    a.entries().len() == b.entries().len()
        && a.entries()
            .iter()
            .zip(b.entries())
            .all(|((ta, ea), (tb, eb))| ta == tb && ea.owner == eb.owner)
}
