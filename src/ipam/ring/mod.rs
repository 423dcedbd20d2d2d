//! The ring CRDT: which router owns every address of the cluster range
//! (DESIGN.md "Who owns an address is who routes it", "Identity, ownership
//! and reclaim"; after weaveworks/weave `ipam/ring/ring.go`).
//!
//! The range is cut at *tokens* (offsets); the entry at a token owns the
//! addresses from it up to the next token. Tokens are never removed. Each
//! entry is a last-writer-wins register ordered by [`Entry::rank`]
//! (version first, then a deterministic tie-break), tombstones are a
//! grow-only set, and the per-router free-space records are LWW registers
//! too, so [`Ring::join`] is commutative, associative and idempotent.
//!
//! Only an owner changes its own entries (a donation is written by the
//! donor; a reclaim is written by the reclaimer, together with a tombstone
//! for the dead ID). [`Ring::validate_update`] enforces that on data from
//! peers and returns an error, never panics; local changes assert the ring's
//! invariants before and after, as Weave's ring does.

use super::range::AddrRange;
use super::signed::{SignError, Signature};
use crate::id::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

mod sigs;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_title;
mod title;
mod validate;
mod wire;

pub use title::{Link, MAX_TITLE_LINKS, TitleError};
pub use validate::{Judged, MAX_VERSION_JUMP};
pub use wire::{Marks, RingWire, TitlesWire, decode_titles_and_marks};

/// Identifies one initialisation of the ring. Two rings with different
/// genesis IDs were initialised separately and never merge.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GenesisId(pub u64);

impl fmt::Debug for GenesisId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for GenesisId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl GenesisId {
    /// The genesis ID of a ring split among `owners` by `mode` ("voters" or
    /// "seed"): a hash of the range, the mode and the sorted owner set, so
    /// that every router computing the same initial ring gets the same ID.
    pub fn derive(range: &AddrRange, mode: &str, owners: &BTreeSet<PeerId>) -> Self {
        use blake2::{Blake2s256, Digest};
        let mut h = Blake2s256::new();
        h.update(b"weft ipam genesis");
        h.update(range.to_string().as_bytes());
        h.update([0]);
        h.update(mode.as_bytes());
        for id in owners {
            h.update(id.0.to_be_bytes());
        }
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self(u64::from_be_bytes(first))
    }
}

/// One ring entry: who owns the addresses from its token to the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The router that owns (routes and allocates from) this range.
    pub owner: PeerId,
    /// Bumped by every change; the higher version wins a merge.
    pub version: u64,
    /// The router that wrote this version (the previous owner for a
    /// donation, the reclaimer for a reclaim).
    pub writer: PeerId,
    /// Written by `rmpeer`: on equal versions a reclaim loses to a write by
    /// the previous owner, so a dead router's last donation survives.
    pub reclaim: bool,
}

impl Entry {
    /// The merge order: the greater rank wins. Every field takes part, so two
    /// entries of equal rank are equal and ties break deterministically.
    pub fn rank(&self) -> (u64, bool, PeerId, PeerId) {
        (self.version, !self.reclaim, self.owner, self.writer)
    }
}

/// A router's own advertisement of its free space and pod count, used to
/// choose a donor and to tell whether a ring "holds allocations".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Bumped by the router on each change.
    pub version: u64,
    /// Addresses it could hand out now.
    pub free: u128,
    /// Pod allocations it holds (its own node address excluded).
    pub pods: u64,
}

impl PeerRecord {
    fn rank(&self) -> (u64, u128, u64) {
        (self.version, self.free, self.pods)
    }
}

/// Why a ring from a peer (or from disk) was refused. Never changes state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Malformed: no entries, or the first token is not the range start.
    #[error("ring does not start at the beginning of the range")]
    NoStart,
    /// Malformed: tokens, tombstones or records not strictly ascending.
    #[error("ring is not sorted at token {0}")]
    NotSorted(u128),
    /// Malformed: a token outside the range.
    #[error("ring token {0} is outside the range")]
    OutOfRange(u128),
    /// Malformed: a version of zero.
    #[error("ring entry at token {0} has version 0")]
    ZeroVersion(u128),
    /// Malformed: a version above [`MAX_VERSION`].
    #[error("ring version {0} is above the ceiling")]
    VersionTooHigh(u64),
    /// Malformed: a title that is empty, longer than
    /// [`MAX_TITLE_LINKS`], or with a link out of range.
    #[error("ring title at offset {0} is malformed")]
    BadTitle(u128),
    /// Malformed: the founding does not hash to the genesis ID.
    #[error("ring founding does not match its genesis ID")]
    BadFounding,
    /// Misbehaving: an item whose signature does not verify, or whose
    /// writer's key is not known yet (`crate::ipam::signed`).
    #[error("{0}")]
    Signature(#[from] SignError),
    /// Misbehaving: an entry jumps more than [`MAX_VERSION_JUMP`] versions
    /// over another router's range, or takes it for its writer with a jump.
    #[error(
        "ring entry at offset {token} jumps from version {from} to {to} without a title; refused"
    )]
    Jump {
        /// The token of the offending entry.
        token: u128,
        /// Our version there.
        from: u64,
        /// Theirs.
        to: u64,
    },
    /// Misbehaving: a version jump over another router's range that gives
    /// it away, from a peer that sends titles, without one that proves the
    /// writer held it (`title.rs`).
    #[error("ring entry at offset {token} jumps over another router's range: {reason}; refused")]
    Title {
        /// The token of the offending entry.
        token: u128,
        /// What is wrong with its title.
        reason: title::TitleError,
    },
    /// Misbehaving: a new tombstone of a router this router can reach (a
    /// reclaim of a live router; `rmpeer` is for dead ones).
    #[error("ring carries a new tombstone of {dead} by {by}, which is reachable; refused")]
    TombstoneOfLive {
        /// The router said to be dead.
        dead: PeerId,
        /// Its reclaimer.
        by: PeerId,
    },
    /// Malformed: the range itself is invalid.
    #[error("ring has an invalid range: {0}")]
    BadRange(#[from] super::range::RangeError),
    /// The peer runs a different cluster range.
    #[error("peer's ring covers {theirs}, ours covers {ours}")]
    RangeMismatch {
        /// Our range.
        ours: AddrRange,
        /// Theirs.
        theirs: AddrRange,
    },
    /// Misbehaving: an entry changes a range that its writer does not own.
    #[error(
        "ring entry at offset {token} written by {writer} changes a range owned by {owner}; refused"
    )]
    NotOwner {
        /// The token of the offending entry.
        token: u128,
        /// Who wrote it.
        writer: PeerId,
        /// Who owns that address in our view.
        owner: PeerId,
    },
}

/// How the genesis ring was split: its mode and owners, which
/// [`GenesisId::derive`] hashes, so any router can recompute the version-1
/// entries and check them without a signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Founding {
    /// "voters" or "seed".
    pub mode: String,
    /// The owners the range was split among, ascending.
    pub owners: Vec<PeerId>,
}

/// The writers' signatures of the ring's items (`crate::ipam::signed`).
/// An item without one is a genesis entry or one of our own not signed yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Sigs {
    entries: BTreeMap<u128, Signature>,
    tombstones: BTreeMap<(PeerId, PeerId), Signature>,
    records: BTreeMap<PeerId, Signature>,
}

/// The highest version an entry or record may carry (2^48): far above
/// anything honest (one bump per change) and far enough below `u64::MAX`
/// that no `+ 1` and no digest weight ever saturates.
pub const MAX_VERSION: u64 = 1 << 48;

/// The ring: a CRDT over ownership of the cluster range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    range: AddrRange,
    genesis: GenesisId,
    founding: Founding,
    entries: BTreeMap<u128, Entry>,
    tombstones: BTreeSet<(PeerId, PeerId)>,
    peers: BTreeMap<PeerId, PeerRecord>,
    sigs: Sigs,
    /// The titles of entries whose owner is not their writer (and of the
    /// part a donor keeps), by token (`title.rs`).
    titles: BTreeMap<u128, Vec<title::Link>>,
    /// Decoded from a sender that sends no titles (ring version below 6);
    /// sent on as such.
    untitled: bool,
    /// The titles latch: every member's jumps need titles, whatever ring
    /// version its connection negotiated (set at birth by this build).
    /// Merged by OR, so no member can clear it by posing as an older build
    /// (`allocator/titles_latch.rs`).
    titles_required: bool,
}

impl Ring {
    /// The initial ring: the range split evenly among `owners` (sorted by ID),
    /// every entry at version 1. Deterministic, so every router computing it
    /// from the same owner set gets the same ring and genesis ID.
    pub fn genesis(range: AddrRange, mode: &str, owners: &BTreeSet<PeerId>) -> Self {
        let genesis = GenesisId::derive(&range, mode, owners);
        let mut entries = BTreeMap::new();
        let count = owners.len().max(1) as u128;
        let chunk = (range.size() / count).max(1);
        for (i, owner) in owners.iter().enumerate() {
            let token = chunk * i as u128;
            if token >= range.size() {
                break;
            }
            let entry = Entry {
                owner: *owner,
                version: 1,
                writer: *owner,
                reclaim: false,
            };
            entries.insert(token, entry);
        }
        let ring = Self {
            range,
            genesis,
            founding: Founding {
                mode: mode.to_string(),
                owners: owners.iter().copied().collect(),
            },
            entries,
            tombstones: BTreeSet::new(),
            peers: BTreeMap::new(),
            sigs: Sigs::default(),
            titles: BTreeMap::new(),
            untitled: false,
            titles_required: false,
        };
        ring.assert_invariants();
        ring
    }

    /// The genesis ring this ring descends from, recomputed from its
    /// founding (checked against the genesis ID on decode).
    pub fn genesis_ring(&self) -> Self {
        let owners = self.founding.owners.iter().copied().collect();
        Self::genesis(self.range, &self.founding.mode, &owners)
    }

    /// How the genesis ring was split.
    pub fn founding(&self) -> &Founding {
        &self.founding
    }

    /// The cluster range.
    pub fn range(&self) -> AddrRange {
        self.range
    }

    /// The genesis ID.
    pub fn genesis_id(&self) -> GenesisId {
        self.genesis
    }

    /// All entries, by token.
    pub fn entries(&self) -> &BTreeMap<u128, Entry> {
        &self.entries
    }

    /// `(dead, reclaimer)` pairs.
    pub fn tombstones(&self) -> &BTreeSet<(PeerId, PeerId)> {
        &self.tombstones
    }

    /// Whether `peer` has been reclaimed, and by whom (the lowest reclaimer if several).
    pub fn tombstone_of(&self, peer: PeerId) -> Option<PeerId> {
        self.tombstones
            .range((peer, PeerId(0))..=(peer, PeerId(u64::MAX)))
            .next()
            .map(|t| t.1)
    }

    /// Free-space records.
    pub fn peer_records(&self) -> &BTreeMap<PeerId, PeerRecord> {
        &self.peers
    }

    /// The owner of the address at `offset`.
    pub fn owner_at(&self, offset: u128) -> Option<PeerId> {
        if offset >= self.range.size() {
            return None;
        }
        self.entries
            .range(..=offset)
            .next_back()
            .map(|(_, e)| e.owner)
    }

    /// The entry governing `offset` and its token.
    fn governing(&self, offset: u128) -> Option<(u128, &Entry)> {
        self.entries
            .range(..=offset)
            .next_back()
            .map(|(t, e)| (*t, e))
    }

    /// The end (inclusive) of the range starting at `token`.
    fn end_of(&self, token: u128) -> u128 {
        match self.entries.range(token + 1..).next() {
            Some((next, _)) => next - 1,
            None => self.range.size() - 1,
        }
    }

    /// Inclusive `(start, end)` offset ranges owned by `peer`, ascending,
    /// adjacent ones coalesced.
    pub fn ranges_of(&self, peer: PeerId) -> Vec<(u128, u128)> {
        let mut out: Vec<(u128, u128)> = Vec::new();
        for (token, entry) in &self.entries {
            if entry.owner != peer {
                continue;
            }
            let end = self.end_of(*token);
            match out.last_mut() {
                Some(last) if last.1 + 1 == *token => last.1 = end,
                _ => out.push((*token, end)),
            }
        }
        out
    }

    /// Distinct owners in the ring.
    pub fn owners(&self) -> BTreeSet<PeerId> {
        self.entries.values().map(|e| e.owner).collect()
    }

    /// True if any router advertises pod allocations in this ring.
    pub fn holds_pods(&self) -> bool {
        self.peers.values().any(|r| r.pods > 0)
    }

    /// Checks the structural invariants; used on data from peers and disk.
    pub fn check_invariants(&self) -> Result<(), RingError> {
        self.range.validate()?;
        if self.entries.keys().next() != Some(&0) {
            return Err(RingError::NoStart);
        }
        for (token, entry) in &self.entries {
            if *token >= self.range.size() {
                return Err(RingError::OutOfRange(*token));
            }
            if entry.version == 0 {
                return Err(RingError::ZeroVersion(*token));
            }
            if entry.version > MAX_VERSION {
                return Err(RingError::VersionTooHigh(entry.version));
            }
        }
        if let Some(r) = self.peers.values().find(|r| r.version > MAX_VERSION) {
            return Err(RingError::VersionTooHigh(r.version));
        }
        Ok(())
    }

    /// Panics if our own ring is broken: that is a bug in this module
    /// (Weave's `assertInvariants`), never a consequence of peer input.
    fn assert_invariants(&self) {
        if let Err(e) = self.check_invariants() {
            panic!("ipam ring invariant broken (bug): {e}");
        }
    }

    /// Joins `other` into `self`: per token and per record the greater rank
    /// wins, tombstones are unioned. The pure CRDT merge; call
    /// [`Ring::validate_update`] first on anything from a peer. Both rings
    /// must have the same range and genesis (the caller checks).
    pub fn join(&mut self, other: &Self) {
        // A winner brings its signature; on a tie the signed copy is kept,
        // so the join stays commutative.
        fn take<K: Ord + Copy>(
            mine: &mut BTreeMap<K, Signature>,
            theirs: &BTreeMap<K, Signature>,
            key: K,
            won: bool,
        ) {
            match theirs.get(&key) {
                Some(sig) if won || !mine.contains_key(&key) => {
                    mine.insert(key, *sig);
                }
                None if won => {
                    mine.remove(&key);
                }
                _ => {}
            }
        }
        for (token, theirs) in &other.entries {
            let won = match self.entries.get_mut(token) {
                Some(mine) if mine.rank() > theirs.rank() => continue,
                Some(mine) if mine.rank() == theirs.rank() => false,
                Some(mine) => {
                    *mine = *theirs;
                    true
                }
                None => {
                    self.entries.insert(*token, *theirs);
                    true
                }
            };
            take(&mut self.sigs.entries, &other.sigs.entries, *token, won);
            match other.titles.get(token) {
                Some(title) if won || !self.titles.contains_key(token) => {
                    self.titles.insert(*token, title.clone());
                }
                None if won => {
                    self.titles.remove(token);
                }
                _ => {}
            }
        }
        self.titles_required |= other.titles_required;
        for t in &other.tombstones {
            let won = self.tombstones.insert(*t);
            take(&mut self.sigs.tombstones, &other.sigs.tombstones, *t, won);
        }
        for (peer, theirs) in &other.peers {
            let mine = self.peers.entry(*peer).or_default();
            let won = match theirs.rank().cmp(&mine.rank()) {
                std::cmp::Ordering::Greater => {
                    *mine = *theirs;
                    true
                }
                std::cmp::Ordering::Equal => false,
                std::cmp::Ordering::Less => continue,
            };
            take(&mut self.sigs.records, &other.sigs.records, *peer, won);
        }
    }

    /// True if joining `other` would change anything (cheap: no allocation).
    pub fn would_change(&self, other: &Self) -> bool {
        other
            .entries
            .iter()
            .any(|(t, e)| self.entries.get(t).is_none_or(|m| e.rank() > m.rank()))
            || other
                .tombstones
                .iter()
                .any(|t| !self.tombstones.contains(t))
            || other
                .peers
                .iter()
                .any(|(p, r)| self.peers.get(p).is_none_or(|m| r.rank() > m.rank()))
    }

    /// Local change by `me`: gives the offsets `start..=end`, which must lie
    /// inside one range owned by `me`, to `to`. Returns false (and changes
    /// nothing) if they do not.
    pub fn donate(&mut self, me: PeerId, start: u128, end: u128, to: PeerId) -> bool {
        self.hand_over(me, start, end, to, false)
    }

    /// [`Self::donate`], with the given entry marked `reclaim` when
    /// `untrusted`: `weft leave` hands a still-quarantined range on that
    /// way, and every receiver (this build's and older ones alike)
    /// quarantines a range it gains through a `reclaim` entry until the
    /// cluster has converged, so the quarantine passes to the heir with no
    /// new wire field (`allocator/leave.rs`).
    pub fn hand_over(
        &mut self,
        me: PeerId,
        start: u128,
        end: u128,
        to: PeerId,
        untrusted: bool,
    ) -> bool {
        self.assert_invariants();
        let Some((token, gov)) = self.governing(start).map(|(t, e)| (t, *e)) else {
            return false;
        };
        if gov.owner != me || end < start || end > self.end_of(token) {
            return false;
        }
        let range_end = self.end_of(token);
        let version = gov.version + 1;
        let title = self.title_from(token, &gov);
        let given = Entry {
            owner: to,
            version,
            writer: me,
            reclaim: untrusted,
        };
        self.entries.insert(start, given);
        self.sigs.entries.remove(&start);
        self.titles.insert(start, title.clone());
        if end < range_end {
            let kept = Entry {
                owner: me,
                version,
                writer: me,
                reclaim: false,
            };
            self.entries.insert(end + 1, kept);
            self.sigs.entries.remove(&(end + 1));
            self.titles.insert(end + 1, title);
        }
        self.assert_invariants();
        true
    }

    /// Local change by `me`: takes over every entry owned by `dead` and adds
    /// the tombstone `(dead, me)`. Returns the tokens taken.
    pub fn reclaim(&mut self, me: PeerId, dead: PeerId) -> Vec<u128> {
        self.assert_invariants();
        let dead_entries: Vec<(u128, Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.owner == dead)
            .map(|(t, e)| (*t, *e))
            .collect();
        let mut taken = Vec::new();
        for (token, old) in dead_entries {
            // The reclaim's title is the dead router's entry and its title
            // (`title.rs`: a reclaim link is entitled by the entry of the
            // router its writer holds a tombstone of), so that a later
            // gift's chain reaches back past the reclaim.
            let title = self.title_from(token, &old);
            self.entries.insert(
                token,
                Entry {
                    owner: me,
                    version: old.version + 1,
                    writer: me,
                    reclaim: true,
                },
            );
            taken.push(token);
            self.sigs.entries.remove(&token);
            self.titles.insert(token, title);
        }
        self.tombstones.insert((dead, me));
        self.sigs.tombstones.remove(&(dead, me));
        self.assert_invariants();
        taken
    }

    /// Local change by `me`: updates its own free-space record, bumping the
    /// version above any copy seen (also one written by a former self).
    pub fn set_record(&mut self, me: PeerId, free: u128, pods: u64) -> bool {
        let record = self.peers.entry(me).or_default();
        if record.free == free && record.pods == pods && record.version > 0 {
            return false;
        }
        *record = PeerRecord {
            version: record.version + 1,
            free,
            pods,
        };
        self.sigs.records.remove(&me);
        true
    }
}
