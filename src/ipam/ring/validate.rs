//! Checking a peer's ring against this router's view before a join
//! (DESIGN.md "Identity, ownership and reclaim": only an owner changes its
//! own entries). Changes nothing; the allocator joins only what passed.
//! Signatures were checked before (`sigs.rs`), so every writer here is the
//! router that signed the entry, and the rules below judge what that router
//! was allowed to write.
//!
//! # Version jumps (history we missed)
//!
//! A router that missed an intermediate write (A gave a range to B, B gave
//! it on to C, and the entry A wrote is gone) sees C's entry written by B
//! over A's range, with a version two or more above its own. That history
//! cannot be checked, so a jump is trusted only as far as this: at most
//! [`MAX_VERSION_JUMP`] versions; never over this router's own ranges (it
//! knows its history); and never for the writer's own benefit: the entry
//! gives the range to someone else (a donation or a leave), or it is a
//! reclaim by a router holding a tombstone. A hostile member can therefore
//! no longer take a range for itself, or push a version out of reach; what
//! remains (a bounded jump that gives another router's range to a third
//! one, refused by the owner itself) needs signed titles to close, and is
//! counted as a refusal wherever it is seen.
//!
//! # Tombstones
//!
//! A new tombstone of a router this router can reach is refused: `rmpeer`
//! is for routers dead for a convergence bound (DESIGN.md "Reclaim"), and a
//! hostile member must not reclaim a live one.

use super::{Entry, Ring, RingError, TitleError};
use crate::id::PeerId;
use std::collections::{BTreeMap, BTreeSet};

/// The largest version jump accepted over another router's range.
pub const MAX_VERSION_JUMP: u64 = 32;

/// What [`Ring::judge_update`] let through that an operator should see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    /// Jumps over another router's range accepted without a title (from a
    /// sender that sends none, or when titles are not required).
    pub untitled_jumps: u64,
    /// Jumps accepted on a title that proved the writer's right.
    pub titled_jumps: u64,
}

impl Ring {
    /// Refuses a peer's ring if joining it would let a router change a range
    /// it does not own (in our view, updated in token order by the entries
    /// already accepted from the same ring): each winning entry must be
    /// written by the owner of the address, or by a reclaimer of that owner,
    /// or be a dead router's write racing a reclaim of it, or a competing
    /// reclaim of the same dead router. Ranges of other routers also accept a
    /// bounded jump (see the module docs); our own ranges do not when `me`
    /// is given, since we know our own history (pass `None` while
    /// relearning after a restart without state). A new tombstone of a
    /// router in `live` is refused. Changes nothing. Titles are not
    /// required ([`Ring::judge_update`] says when they are).
    pub fn validate_update(
        &self,
        me: Option<PeerId>,
        live: &BTreeSet<PeerId>,
        other: &Self,
    ) -> Result<(), RingError> {
        self.judge_update(me, live, other, false).map(|_| ())
    }

    /// [`Ring::validate_update`], with a bounded jump that gives another
    /// router's range away accepted only on a title that proves its
    /// writer's right (`title.rs`) when `require_titles` (the allocator
    /// speaks ring version 6 and `other` came with titles); otherwise such
    /// jumps are accepted as before and counted.
    pub fn judge_update(
        &self,
        me: Option<PeerId>,
        live: &BTreeSet<PeerId>,
        other: &Self,
        require_titles: bool,
    ) -> Result<Judged, RingError> {
        let mut judged = Judged::default();
        if other.range != self.range {
            return Err(RingError::RangeMismatch {
                ours: self.range,
                theirs: other.range,
            });
        }
        if let Some((dead, by)) = other
            .tombstones
            .iter()
            .find(|t| live.contains(&t.0) && !self.tombstones.contains(t))
        {
            return Err(RingError::TombstoneOfLive {
                dead: *dead,
                by: *by,
            });
        }
        let tombstone = |dead: PeerId, by: PeerId| {
            self.tombstones.contains(&(dead, by)) || other.tombstones.contains(&(dead, by))
        };
        // Both `a` and `b` reclaimed one same dead router.
        let same_dead = |a: PeerId, b: PeerId| {
            self.tombstones
                .iter()
                .chain(other.tombstones.iter())
                .any(|(dead, by)| *by == a && tombstone(*dead, b))
        };
        let reclaimer = |w: PeerId| {
            self.tombstones
                .iter()
                .chain(other.tombstones.iter())
                .any(|(_, by)| *by == w)
        };
        // A gift (owner not writer) needs its title when titles are
        // required; a reclaim carries its tombstone instead.
        let title = |token: u128, theirs: &Entry| -> Result<(), TitleError> {
            if !require_titles || theirs.owner == theirs.writer {
                return Ok(());
            }
            self.title_proves(token, theirs, other.title(token), &tombstone)
        };
        // A gift needs its title (when required); a reclaim by a tombstone
        // holder its tombstone; a write by the owner for itself (the part
        // a donor keeps) passes only on a title, when titles are sent.
        let jump_allowed = |gov: &Entry, token: u128, theirs: &Entry| {
            Some(gov.owner) != me
                && theirs.version > gov.version.saturating_add(1)
                && theirs.version - gov.version <= MAX_VERSION_JUMP
                && if theirs.owner != theirs.writer {
                    title(token, theirs).is_ok()
                } else if theirs.reclaim && reclaimer(theirs.writer) {
                    true
                } else {
                    require_titles
                        && self
                            .title_proves(token, theirs, other.title(token), &tombstone)
                            .is_ok()
                }
        };
        let allowed_under = |gov: &Entry, token: u128, theirs: &Entry| {
            let w = theirs.writer;
            w == gov.owner
                || tombstone(gov.owner, w)
                || (gov.reclaim && tombstone(w, gov.writer))
                || (gov.reclaim
                    && theirs.reclaim
                    && theirs.version == gov.version
                    && same_dead(gov.writer, w))
                // The next write of the winner of a competing reclaim of the
                // same dead router, when we hold the loser's reclaim: the
                // winner's entry (same version, higher owner) was overwritten
                // before it reached us (seen with digests: WEFT_SIM_SEED=4).
                || (gov.reclaim
                    && theirs.version == gov.version.saturating_add(1)
                    && w > gov.owner
                    && same_dead(gov.writer, w))
                || jump_allowed(gov, token, theirs)
        };
        // The part a donor keeps when it gives away the start of its range
        // (`Ring::donate`): written by the same router, at the same version,
        // right after the accepted entry of the part given. We judged that
        // writer entitled to the whole range when we accepted the gift, so
        // the remainder is its own (seen when the receiver missed the
        // donation that gave the donor the range: WEFT_SIM_SEED=1).
        let kept_by_same_split = |prev: &Entry, theirs: &Entry| {
            theirs.owner == theirs.writer
                && !theirs.reclaim
                && prev.writer == theirs.writer
                && prev.owner != prev.writer
                && prev.version == theirs.version
        };
        // Entries of this ring already accepted, so that a chain of changes
        // (A gave to B, B passed part on to C) is judged against B's entry.
        let mut accepted: BTreeMap<u128, Entry> = BTreeMap::new();
        for (token, theirs) in &other.entries {
            let wins = match self.entries.get(token) {
                Some(mine) => theirs.rank() > mine.rank(),
                None => true,
            };
            if !wins {
                continue;
            }
            // Only we write as ourselves, and we know everything we wrote
            // (it is on disk before it is sent): a winning entry signed
            // with our ID that we do not have is forged.
            if me.is_some_and(|me| theirs.writer == me) {
                return Err(RingError::NotOwner {
                    token: *token,
                    writer: theirs.writer,
                    owner: self.owner_at(*token).unwrap_or(theirs.writer),
                });
            }
            let Some((_, gov)) = self.governing(*token) else {
                continue;
            };
            let chained = accepted
                .range(..=*token)
                .next_back()
                .filter(|(t, _)| self.governing(*token).is_none_or(|(g, _)| **t >= g))
                .is_some_and(|(_, prev)| {
                    allowed_under(prev, *token, theirs) || kept_by_same_split(prev, theirs)
                });
            if !chained && !allowed_under(gov, *token, theirs) {
                let jump = theirs.version > gov.version.saturating_add(1);
                if jump
                    && theirs.version - gov.version <= MAX_VERSION_JUMP
                    && Some(gov.owner) != me
                    && let Err(reason) = title(*token, theirs)
                {
                    return Err(RingError::Title {
                        token: *token,
                        reason,
                    });
                }
                if jump {
                    return Err(RingError::Jump {
                        token: *token,
                        from: gov.version,
                        to: theirs.version,
                    });
                }
                return Err(RingError::NotOwner {
                    token: *token,
                    writer: theirs.writer,
                    owner: gov.owner,
                });
            }
            // A gift over a range another router owns in our view, more
            // than one version up: accepted on a title, or counted.
            if !chained
                && theirs.owner != theirs.writer
                && gov.owner != theirs.writer
                && theirs.version > gov.version.saturating_add(1)
            {
                let proved = require_titles
                    || self
                        .title_proves(*token, theirs, other.title(*token), &tombstone)
                        .is_ok();
                match proved {
                    true => judged.titled_jumps += 1,
                    false => judged.untitled_jumps += 1,
                }
            }
            accepted.insert(*token, *theirs);
        }
        Ok(judged)
    }
}
