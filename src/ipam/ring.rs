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
use crate::id::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

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

/// The ring: a CRDT over ownership of the cluster range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    range: AddrRange,
    genesis: GenesisId,
    entries: BTreeMap<u128, Entry>,
    tombstones: BTreeSet<(PeerId, PeerId)>,
    peers: BTreeMap<PeerId, PeerRecord>,
}

/// The wire and disk form of a ring (bincode via `crate::wire`; append
/// fields only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RingWire {
    /// The cluster range.
    pub range: AddrRange,
    /// Which initialisation this ring descends from.
    pub genesis: GenesisId,
    /// `(token, entry)`, strictly ascending by token, starting at 0.
    pub entries: Vec<(u128, Entry)>,
    /// `(dead, reclaimer)`, strictly ascending.
    pub tombstones: Vec<(PeerId, PeerId)>,
    /// Free-space records, strictly ascending by peer.
    pub peers: Vec<(PeerId, PeerRecord)>,
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
            entries,
            tombstones: BTreeSet::new(),
            peers: BTreeMap::new(),
        };
        ring.assert_invariants();
        ring
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
        for (token, theirs) in &other.entries {
            match self.entries.get_mut(token) {
                Some(mine) if mine.rank() >= theirs.rank() => {}
                Some(mine) => *mine = *theirs,
                None => {
                    self.entries.insert(*token, *theirs);
                }
            }
        }
        self.tombstones.extend(other.tombstones.iter().copied());
        for (peer, theirs) in &other.peers {
            let mine = self.peers.entry(*peer).or_default();
            if theirs.rank() > mine.rank() {
                *mine = *theirs;
            }
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

    /// Refuses a peer's ring if joining it would let a router change a range
    /// it does not own (in our view, updated in token order by the entries
    /// already accepted from the same ring): each winning entry must be
    /// written by the owner of the address, or by a reclaimer of that owner,
    /// or be a dead router's write racing a reclaim of it, or a competing
    /// reclaim of the same dead router. Ranges of other routers also accept a
    /// jump of more than one version (history we missed); our own ranges do
    /// not when `me` is given, since we know our own history (pass `None`
    /// while relearning after a restart without state). Changes nothing.
    pub fn validate_update(&self, me: Option<PeerId>, other: &Self) -> Result<(), RingError> {
        if other.range != self.range {
            return Err(RingError::RangeMismatch {
                ours: self.range,
                theirs: other.range,
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
        let allowed_under = |gov: &Entry, theirs: &Entry| {
            let w = theirs.writer;
            w == gov.owner
                || tombstone(gov.owner, w)
                || (gov.reclaim && tombstone(w, gov.writer))
                || (gov.reclaim
                    && theirs.reclaim
                    && theirs.version == gov.version
                    && same_dead(gov.writer, w))
                || (Some(gov.owner) != me && theirs.version > gov.version.saturating_add(1))
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
                .is_some_and(|(_, prev)| allowed_under(prev, theirs));
            if !chained && !allowed_under(gov, theirs) {
                return Err(RingError::NotOwner {
                    token: *token,
                    writer: theirs.writer,
                    owner: gov.owner,
                });
            }
            accepted.insert(*token, *theirs);
        }
        Ok(())
    }

    /// Local change by `me`: gives the offsets `start..=end`, which must lie
    /// inside one range owned by `me`, to `to`. Returns false (and changes
    /// nothing) if they do not.
    pub fn donate(&mut self, me: PeerId, start: u128, end: u128, to: PeerId) -> bool {
        self.assert_invariants();
        let Some((token, gov)) = self.governing(start).map(|(t, e)| (t, *e)) else {
            return false;
        };
        if gov.owner != me || end < start || end > self.end_of(token) {
            return false;
        }
        let range_end = self.end_of(token);
        let version = gov.version + 1;
        let given = Entry {
            owner: to,
            version,
            writer: me,
            reclaim: false,
        };
        self.entries.insert(start, given);
        if end < range_end {
            let kept = Entry {
                owner: me,
                version,
                writer: me,
                reclaim: false,
            };
            self.entries.insert(end + 1, kept);
        }
        self.assert_invariants();
        true
    }

    /// Local change by `me`: takes over every entry owned by `dead` and adds
    /// the tombstone `(dead, me)`. Returns the tokens taken.
    pub fn reclaim(&mut self, me: PeerId, dead: PeerId) -> Vec<u128> {
        self.assert_invariants();
        let mut taken = Vec::new();
        for (token, entry) in self.entries.iter_mut() {
            if entry.owner == dead {
                *entry = Entry {
                    owner: me,
                    version: entry.version + 1,
                    writer: me,
                    reclaim: true,
                };
                taken.push(*token);
            }
        }
        self.tombstones.insert((dead, me));
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
        true
    }

    /// The wire form.
    pub fn to_wire(&self) -> RingWire {
        RingWire {
            range: self.range,
            genesis: self.genesis,
            entries: self.entries.iter().map(|(t, e)| (*t, *e)).collect(),
            tombstones: self.tombstones.iter().copied().collect(),
            peers: self.peers.iter().map(|(p, r)| (*p, *r)).collect(),
        }
    }

    /// Builds a ring from its wire form, checking order and invariants.
    pub fn from_wire(wire: RingWire) -> Result<Self, RingError> {
        fn ascending<K: Ord + Copy, V>(
            items: &[(K, V)],
            at: impl Fn(&K) -> u128,
        ) -> Result<(), RingError> {
            for pair in items.windows(2) {
                if pair[0].0 >= pair[1].0 {
                    return Err(RingError::NotSorted(at(&pair[1].0)));
                }
            }
            Ok(())
        }
        ascending(&wire.entries, |t| *t)?;
        ascending(&wire.peers, |p| u128::from(p.0))?;
        for pair in wire.tombstones.windows(2) {
            if pair[0] >= pair[1] {
                return Err(RingError::NotSorted(u128::from(pair[1].0.0)));
            }
        }
        let ring = Self {
            range: wire.range,
            genesis: wire.genesis,
            entries: wire.entries.into_iter().collect(),
            tombstones: wire.tombstones.into_iter().collect(),
            peers: wire.peers.into_iter().collect(),
        };
        ring.check_invariants()?;
        Ok(ring)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn range() -> AddrRange {
        AddrRange::parse("10.32.0.0/24").unwrap()
    }

    fn ids(n: u64) -> BTreeSet<PeerId> {
        (1..=n).map(PeerId).collect()
    }

    #[test]
    fn genesis_is_deterministic_and_covers_the_range() {
        let a = Ring::genesis(range(), "voters", &ids(3));
        let b = Ring::genesis(range(), "voters", &ids(3));
        assert_eq!(a, b);
        assert_eq!(a.ranges_of(PeerId(1)), vec![(0, 84)]);
        assert_eq!(a.ranges_of(PeerId(3)), vec![(170, 255)]);
        assert_ne!(
            a.genesis_id(),
            Ring::genesis(range(), "seed", &ids(3)).genesis_id()
        );
    }

    #[test]
    fn donation_splits_the_donor_range_and_keeps_the_rest() {
        let mut r = Ring::genesis(range(), "voters", &ids(2));
        assert!(r.donate(PeerId(1), 64, 100, PeerId(9)));
        assert_eq!(r.ranges_of(PeerId(1)), vec![(0, 63), (101, 127)]);
        assert_eq!(r.ranges_of(PeerId(9)), vec![(64, 100)]);
        assert!(
            !r.donate(PeerId(1), 120, 130, PeerId(9)),
            "crosses into another range"
        );
        assert!(!r.donate(PeerId(2), 0, 3, PeerId(9)), "not the owner");
    }

    #[test]
    fn a_peer_cannot_write_entries_about_ranges_it_does_not_own() {
        let mine = Ring::genesis(range(), "voters", &ids(3));
        let mut forged = mine.clone();
        // Peer 3 claims part of peer 1's range.
        forged.entries.insert(
            10,
            Entry {
                owner: PeerId(3),
                version: 2,
                writer: PeerId(3),
                reclaim: false,
            },
        );
        let err = mine.validate_update(Some(PeerId(2)), &forged).unwrap_err();
        assert!(
            matches!(err, RingError::NotOwner { token: 10, .. }),
            "{err}"
        );
        // And a forged tie on our own token is refused too.
        let mut tie = mine.clone();
        tie.entries.insert(
            0,
            Entry {
                owner: PeerId(3),
                version: 1,
                writer: PeerId(3),
                reclaim: false,
            },
        );
        assert!(mine.validate_update(Some(PeerId(1)), &tie).is_err());
        // Found by the ipam_allocator fuzz target: a peer sends our token
        // with the same version but another owner and *our* ID as writer
        // (winning the tie on owner), then chains a range after it.
        let mut impersonated = mine.clone();
        impersonated.entries.insert(
            0,
            Entry {
                owner: PeerId(5),
                version: 1,
                writer: PeerId(1),
                reclaim: false,
            },
        );
        impersonated.entries.insert(
            8,
            Entry {
                owner: PeerId(0),
                version: 12,
                writer: PeerId(12),
                reclaim: true,
            },
        );
        let err = mine
            .validate_update(Some(PeerId(1)), &impersonated)
            .unwrap_err();
        assert!(matches!(err, RingError::NotOwner { token: 0, .. }), "{err}");
        // The honest donation by the owner is accepted.
        let mut honest = mine.clone();
        assert!(honest.donate(PeerId(1), 40, 84, PeerId(3)));
        mine.validate_update(Some(PeerId(2)), &honest).unwrap();
        honest.validate_update(Some(PeerId(1)), &honest).unwrap();
        // Router 1 itself never accepts a write in its name that it does not
        // have; only while relearning after a loss of state (`None`).
        assert!(mine.validate_update(Some(PeerId(1)), &honest).is_err());
        mine.validate_update(None, &honest).unwrap();
    }

    #[test]
    fn concurrent_reclaims_of_one_router_resolve_to_the_same_winner() {
        let base = Ring::genesis(range(), "voters", &ids(3));
        let mut r1 = base.clone();
        r1.reclaim(PeerId(1), PeerId(3));
        let mut r2 = base.clone();
        r2.reclaim(PeerId(2), PeerId(3));
        r1.validate_update(Some(PeerId(1)), &r2).unwrap();
        r2.validate_update(Some(PeerId(2)), &r1).unwrap();
        let mut a = r1.clone();
        a.join(&r2);
        let mut b = r2.clone();
        b.join(&r1);
        assert_eq!(a, b);
        assert_eq!(a.owner_at(200), Some(PeerId(2)));
    }

    #[test]
    fn golden_bytes_of_the_ring_encoding() {
        let mut r = Ring::genesis(range(), "voters", &ids(2));
        r.donate(PeerId(1), 64, 127, PeerId(2));
        r.set_record(PeerId(2), 190, 1);
        let bytes = crate::wire::encode(&r.to_wire()).unwrap();
        let expected: Vec<u8> = vec![
            0, 10, 32, 0, 0, 24, // range: IpAddr::V4 10.32.0.0, prefix 24
            253, 85, 94, 201, 116, 123, 53, 184,
            210, // genesis (varint u64: 253 + 8 bytes LE)
            3,   // 3 entries
            0, 1, 1, 1, 0, // token 0: owner 1, version 1, writer 1, not reclaimed
            64, 2, 2, 1, 0, // token 64: owner 2, version 2, writer 1
            128, 2, 1, 2, 0, // token 128: owner 2, version 1, writer 2
            0, // no tombstones
            1, 2, 1, 190, 1, // record of peer 2: version 1, free 190, pods 1
        ];
        assert_eq!(bytes, expected, "ring wire format changed: {bytes:?}");
        let back = Ring::from_wire(crate::wire::decode(&bytes).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn unsorted_or_headless_rings_are_refused() {
        let r = Ring::genesis(range(), "voters", &ids(3));
        let mut w = r.to_wire();
        w.entries.swap(0, 1);
        assert!(matches!(Ring::from_wire(w), Err(RingError::NotSorted(_))));
        let mut w = r.to_wire();
        w.entries.remove(0);
        assert_eq!(Ring::from_wire(w), Err(RingError::NoStart));
        let mut w = r.to_wire();
        w.entries.push((256, w.entries[0].1));
        assert_eq!(Ring::from_wire(w), Err(RingError::OutOfRange(256)));
    }

    /// Random rings over one range and genesis: a random token set (always
    /// containing 0) with random entries, tombstones and records.
    pub(crate) fn arb_ring() -> impl Strategy<Value = Ring> {
        let entry = (1u64..5, 0u64..4, 1u64..4, 0u64..4, any::<bool>()).prop_map(
            |(owner, _, version, writer, reclaim)| Entry {
                owner: PeerId(owner),
                version,
                writer: PeerId(writer),
                reclaim,
            },
        );
        (
            prop::collection::btree_map(0u128..256, entry, 0..8),
            prop::collection::btree_set((1u64..5, 1u64..5), 0..3),
            prop::collection::btree_map(1u64..5, (1u64..4, 0u128..10, 0u64..3), 0..4),
        )
            .prop_map(|(mut entries, tombs, recs)| {
                let mut ring = Ring::genesis(range(), "voters", &ids(2));
                let first = entries.remove(&0).unwrap_or(ring.entries[&0]);
                ring.entries.insert(0, first);
                ring.entries.extend(entries);
                ring.tombstones = tombs
                    .into_iter()
                    .map(|(a, b)| (PeerId(a), PeerId(b)))
                    .collect();
                ring.peers = recs
                    .into_iter()
                    .map(|(p, (version, free, pods))| {
                        (
                            PeerId(p),
                            PeerRecord {
                                version,
                                free,
                                pods,
                            },
                        )
                    })
                    .collect();
                ring
            })
    }

    fn joined(a: &Ring, b: &Ring) -> Ring {
        let mut r = a.clone();
        r.join(b);
        r
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_ring(), b in arb_ring()) {
            prop_assert_eq!(joined(&a, &b), joined(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_ring(), b in arb_ring(), c in arb_ring()) {
            prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_ring(), b in arb_ring()) {
            prop_assert_eq!(joined(&a, &a), a.clone());
            let ab = joined(&a, &b);
            prop_assert_eq!(joined(&ab, &b), ab.clone());
        }

        #[test]
        fn wire_round_trip_is_exact(a in arb_ring()) {
            let bytes = crate::wire::encode(&a.to_wire()).unwrap();
            let back = Ring::from_wire(crate::wire::decode(&bytes).unwrap()).unwrap();
            prop_assert_eq!(back, a);
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(w) = crate::wire::decode::<RingWire>(&bytes) {
                let _ = Ring::from_wire(w);
            }
        }
    }
}
