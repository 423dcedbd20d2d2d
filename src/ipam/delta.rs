//! The differing part of a ring (ring version 4, issue 14): the complete
//! contents of some buckets of the sender's ring (`digest.rs`,
//! [`BucketDigest`](super::digest::BucketDigest)), so that a receiver whose
//! other buckets hash equal rebuilds the sender's whole ring from its own
//! ([`RingDelta::patch`]) and merges that exactly as it merges a full ring:
//! same signature checks, same ownership rules, same join.
//!
//! A bucket is sent whole, items absent included (an empty bucket is a
//! listed index with no item), so the rebuilt ring equals the sender's
//! wherever the bucket hashes were equal. Where the receiver's ring changed
//! in between, the rebuilt ring holds the receiver's newer items there: a
//! join of a subset of the sender's items, which the CRDT allows.
//!
//! The delta also carries all the sender's bucket hashes, so the receiver
//! answers with exactly the buckets in which its merged ring differs from
//! the sender's, not from its rebuilt guess (which holds the receiver's own
//! later changes): items that belong together (a reclaimed entry and its
//! tombstone) then always travel together or are already there.
//!
//! Ring version 6 (issue 15): the titles of the delta's entries follow its
//! body ([`RingDelta::titles`]), as a full ring's follow the ring; an older
//! decoder ignores them as trailing bytes, and a delta with nothing after
//! its body comes from a sender that sends none (the rebuilt ring is then
//! judged as untitled, as before). Without them an entry learned through
//! buckets lost its title, and a later gift whose chain ended at it could
//! not be proven (seen with titles required: WEFT_SIM_SEED=1 and 11).

use super::digest::{BucketDigest, entry_bucket, hashes_of, record_bucket, tombstone_bucket};
use super::ring::{Entry, GenesisId, MAX_TITLE_LINKS, MAX_VERSION, PeerRecord, Ring, RingError};
use super::ring::{Marks, RingWire, TitlesWire};
use super::signed::Signature;
use crate::id::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Some buckets of a ring, whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingDelta {
    /// The ring the buckets come from.
    pub genesis: GenesisId,
    /// The sender's hash of every bucket (their count is the bucket count,
    /// a valid one), when it cut the delta.
    pub hashes: Vec<[u8; 4]>,
    /// The buckets sent, strictly ascending, each below `buckets`.
    pub indices: Vec<u32>,
    /// Their entries, as in [`RingWire`]: strictly ascending by token.
    pub entries: Vec<(u128, Entry, Option<Signature>)>,
    /// Their tombstones, strictly ascending.
    pub tombstones: Vec<(PeerId, PeerId, Option<Signature>)>,
    /// Their free-space records, strictly ascending by peer.
    pub peers: Vec<(PeerId, PeerRecord, Option<Signature>)>,
    /// The titles of their entries (ring version 6), as [`TitlesWire`]:
    /// strictly ascending, each at a token of `entries`. Not part of the
    /// bincode body: encoded after it (`message.rs`), so that an older
    /// decoder ignores it; `None` from a sender that sends no titles.
    #[serde(skip)]
    pub titles: Option<TitlesWire>,
    /// The sender's ring's [`Marks`], encoded after the titles (absent
    /// with them, and from a build before marks: all false).
    #[serde(skip)]
    pub marks: Marks,
}

/// Why a delta was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// A bucket count that is not a power of two in range.
    #[error("ring delta has an invalid bucket count {0}")]
    BucketCount(u32),
    /// Indices not strictly ascending or out of range.
    #[error("ring delta lists bucket {0} out of order or out of range")]
    Index(u32),
    /// An item that belongs to a bucket the delta does not list.
    #[error("ring delta carries an item outside its buckets")]
    Stray,
    /// Items not strictly ascending.
    #[error("ring delta items are not sorted")]
    NotSorted,
    /// A title not at one of the delta's entries, out of order, empty,
    /// longer than [`MAX_TITLE_LINKS`] or with a version out of range.
    #[error("ring delta carries a malformed title at offset {0}")]
    Title(u128),
}

fn ascending<K: Ord>(keys: impl Iterator<Item = K>) -> bool {
    let mut last: Option<K> = None;
    for k in keys {
        if last.as_ref().is_some_and(|l| *l >= k) {
            return false;
        }
        last = Some(k);
    }
    true
}

impl RingDelta {
    /// The buckets `indices` (ascending, each below `buckets`) of `ring`,
    /// with the titles of their entries unless `ring` is untitled.
    pub fn cut(ring: &Ring, buckets: usize, indices: &[u32]) -> Self {
        let wanted: BTreeSet<u32> = indices.iter().copied().collect();
        let wire = ring.to_wire();
        let titles = (!ring.untitled()).then(|| {
            ring.titles()
                .iter()
                .filter(|(t, _)| wanted.contains(&entry_bucket(**t, buckets)))
                .map(|(t, links)| (*t, links.clone()))
                .collect()
        });
        Self {
            genesis: ring.genesis_id(),
            hashes: hashes_of(ring, buckets),
            indices: wanted.iter().copied().collect(),
            entries: wire
                .entries
                .into_iter()
                .filter(|e| wanted.contains(&entry_bucket(e.0, buckets)))
                .collect(),
            tombstones: wire
                .tombstones
                .into_iter()
                .filter(|t| wanted.contains(&tombstone_bucket(t.0, t.1, buckets)))
                .collect(),
            peers: wire
                .peers
                .into_iter()
                .filter(|p| wanted.contains(&record_bucket(p.0, buckets)))
                .collect(),
            marks: titles.as_ref().map(|_| ring.marks()).unwrap_or_default(),
            titles,
        }
    }

    /// This delta as a sender below ring version 6 sends it: no titles.
    pub fn without_titles(mut self) -> Self {
        self.titles = None;
        self
    }

    /// How many buckets the sender's ring was cut into.
    pub fn buckets(&self) -> usize {
        self.hashes.len()
    }

    /// Checks what decoding cannot: the bucket count, the indices, the
    /// order of items and that each lies in a listed bucket. Allocates
    /// nothing beyond the indices' set.
    pub fn check(&self) -> Result<(), DeltaError> {
        let n = self.buckets();
        if !BucketDigest::valid_count(n) {
            return Err(DeltaError::BucketCount(
                u32::try_from(n).unwrap_or(u32::MAX),
            ));
        }
        if let Some(bad) = self
            .indices
            .windows(2)
            .find(|w| w[0] >= w[1])
            .map(|w| w[1])
            .or_else(|| self.indices.iter().copied().find(|i| *i as usize >= n))
        {
            return Err(DeltaError::Index(bad));
        }
        let listed = |b: u32| self.indices.binary_search(&b).is_ok();
        if !ascending(self.entries.iter().map(|e| e.0))
            || !ascending(self.tombstones.iter().map(|t| (t.0, t.1)))
            || !ascending(self.peers.iter().map(|p| p.0))
        {
            return Err(DeltaError::NotSorted);
        }
        let stray = self.entries.iter().any(|e| !listed(entry_bucket(e.0, n)))
            || self
                .tombstones
                .iter()
                .any(|t| !listed(tombstone_bucket(t.0, t.1, n)))
            || self.peers.iter().any(|p| !listed(record_bucket(p.0, n)));
        if stray {
            return Err(DeltaError::Stray);
        }
        self.check_titles()
    }

    /// The titles' shape: ascending, each at one of the delta's entries, 1
    /// to [`MAX_TITLE_LINKS`] links, versions 1 to [`MAX_VERSION`]. Link
    /// tokens are checked against the range when the ring is rebuilt
    /// ([`RingDelta::patch`], `Ring::with_titles`).
    fn check_titles(&self) -> Result<(), DeltaError> {
        let Some(titles) = &self.titles else {
            return Ok(());
        };
        if !ascending(titles.iter().map(|t| t.0)) {
            return Err(DeltaError::NotSorted);
        }
        for (token, links) in titles {
            let here = self.entries.binary_search_by_key(token, |e| e.0).is_ok();
            let versions_ok = links
                .iter()
                .all(|l| l.entry.version != 0 && l.entry.version <= MAX_VERSION);
            if !here || links.is_empty() || links.len() > MAX_TITLE_LINKS || !versions_ok {
                return Err(DeltaError::Title(*token));
            }
        }
        Ok(())
    }

    /// The sender's ring as far as we can tell: `base` with the listed
    /// buckets replaced by the delta's, titles included (`base`'s outside
    /// them, the delta's inside; none at all, an untitled ring, if the
    /// delta came without titles). Checked as any ring from the wire
    /// (order, start, versions, founding, titles' shape); `base` must be
    /// of the delta's genesis (the caller checks).
    pub fn patch(&self, base: &Ring) -> Result<Ring, RingError> {
        let n = self.buckets();
        let listed = |b: u32| self.indices.binary_search(&b).is_ok();
        let mut wire: RingWire = base.to_wire();
        wire.entries.retain(|e| !listed(entry_bucket(e.0, n)));
        wire.entries.extend(self.entries.iter().copied());
        wire.entries.sort_by_key(|e| e.0);
        wire.tombstones
            .retain(|t| !listed(tombstone_bucket(t.0, t.1, n)));
        wire.tombstones.extend(self.tombstones.iter().copied());
        wire.tombstones.sort_by_key(|t| (t.0, t.1));
        wire.peers.retain(|p| !listed(record_bucket(p.0, n)));
        wire.peers.extend(self.peers.iter().copied());
        wire.peers.sort_by_key(|p| p.0);
        let ring = Ring::from_wire(wire)?;
        let Some(sent) = &self.titles else {
            return Ok(ring.without_titles());
        };
        let ring = ring.with_marks(self.marks);
        let mut titles: TitlesWire = base
            .titles()
            .iter()
            .filter(|(t, _)| !listed(entry_bucket(**t, n)))
            .map(|(t, links)| (*t, links.clone()))
            .collect();
        titles.extend(sent.iter().cloned());
        titles.sort_by_key(|t| t.0);
        ring.with_titles(Some(titles))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ipam::digest::{RingSummary, bucket_count};
    use crate::ipam::range::AddrRange;

    fn ring() -> Ring {
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        let owners = (1..=30).map(PeerId).collect();
        let mut r = Ring::genesis(range, "voters", &owners);
        for p in 1..=30 {
            r.set_record(PeerId(p), 1000, 0);
        }
        r
    }

    #[test]
    fn the_differing_buckets_rebuild_the_senders_ring_from_the_receivers() {
        let old = ring();
        let mut new = old.clone();
        new.set_record(PeerId(3), 999, 1);
        assert!(new.donate(PeerId(1), 100, 109, PeerId(9)));
        let n = bucket_count(&old);
        let differing = BucketDigest::of(&old, n).differing(&new);
        assert!(!differing.is_empty() && differing.len() < n / 2);
        let delta = RingDelta::cut(&new, n, &differing);
        delta.check().unwrap();
        let rebuilt = delta.patch(&old).unwrap();
        assert_eq!(RingSummary::of(&rebuilt), RingSummary::of(&new));
        assert_eq!(rebuilt.entries(), new.entries());
        assert_eq!(rebuilt.peer_records(), new.peer_records());
    }

    #[test]
    fn an_empty_listed_bucket_removes_what_the_receiver_had_there() {
        let mut theirs = ring();
        let mut mine = theirs.clone();
        mine.set_record(PeerId(77), 5, 0);
        theirs.set_record(PeerId(1), 1, 1);
        let n = bucket_count(&mine);
        let differing = BucketDigest::of(&mine, n).differing(&theirs);
        let rebuilt = RingDelta::cut(&theirs, n, &differing).patch(&mine).unwrap();
        assert_eq!(RingSummary::of(&rebuilt), RingSummary::of(&theirs));
    }

    #[test]
    fn malformed_deltas_are_refused() {
        let r = ring();
        let n = bucket_count(&r);
        let good = RingDelta::cut(&r, n, &[0, 1, 2]);
        good.check().unwrap();
        let mut bad = good.clone();
        bad.hashes.truncate(12);
        assert_eq!(bad.check(), Err(DeltaError::BucketCount(12)));
        let mut bad = good.clone();
        bad.indices = vec![2, 1];
        assert_eq!(bad.check(), Err(DeltaError::Index(1)));
        let mut bad = good.clone();
        bad.indices = vec![n as u32];
        assert_eq!(bad.check(), Err(DeltaError::Index(n as u32)));
        let mut bad = RingDelta::cut(&r, n, &(0..n as u32).collect::<Vec<_>>());
        bad.indices = vec![0];
        assert!(matches!(
            bad.check(),
            Err(DeltaError::Stray | DeltaError::NotSorted)
        ));
        let mut bad = RingDelta::cut(&r, n, &(0..n as u32).collect::<Vec<_>>());
        bad.peers.reverse();
        assert_eq!(bad.check(), Err(DeltaError::NotSorted));
    }

    #[test]
    fn a_delta_carries_its_entries_titles_and_an_untitled_one_rebuilds_an_untitled_ring() {
        let old = ring();
        let mut new = old.clone();
        assert!(new.donate(PeerId(1), 100, 109, PeerId(9)));
        assert!(new.title(100).is_some() && new.title(110).is_some());
        let n = bucket_count(&old);
        let differing = BucketDigest::of(&old, n).differing(&new);
        let delta = RingDelta::cut(&new, n, &differing);
        delta.check().unwrap();
        let sent: Vec<u128> = delta.titles.iter().flatten().map(|t| t.0).collect();
        assert_eq!(sent, [100, 110]);
        assert_eq!(delta.patch(&old).unwrap(), new);
        // A sender below version 6: the rebuilt ring is judged as untitled.
        let untitled = delta.without_titles().patch(&old).unwrap();
        assert!(untitled.untitled() && untitled.titles().is_empty());
        // The receiver's own titles outside the listed buckets stay.
        let mut newer = new.clone();
        newer.set_record(PeerId(5), 1, 1);
        let differing = BucketDigest::of(&new, n).differing(&newer);
        let rebuilt = RingDelta::cut(&newer, n, &differing).patch(&new).unwrap();
        assert_eq!(rebuilt.titles(), new.titles());
    }

    #[test]
    fn malformed_delta_titles_are_refused() {
        let old = ring();
        let mut new = old.clone();
        assert!(new.donate(PeerId(1), 100, 109, PeerId(9)));
        let n = bucket_count(&old);
        let good = RingDelta::cut(&new, n, &BucketDigest::of(&old, n).differing(&new));
        let titles = good.titles.clone().unwrap();
        let with = |t: TitlesWire| RingDelta {
            titles: Some(t),
            ..good.clone()
        };
        let mut stray = titles.clone();
        stray[0].0 = 101;
        assert_eq!(with(stray).check(), Err(DeltaError::Title(101)));
        let mut empty = titles.clone();
        empty[0].1.clear();
        assert_eq!(with(empty).check(), Err(DeltaError::Title(100)));
        let mut long = titles.clone();
        long[0].1 = vec![long[0].1[0]; MAX_TITLE_LINKS + 1];
        assert_eq!(with(long).check(), Err(DeltaError::Title(100)));
        let mut zero = titles.clone();
        zero[0].1[0].entry.version = 0;
        assert_eq!(with(zero).check(), Err(DeltaError::Title(100)));
        let mut high = titles.clone();
        high[0].1[0].entry.version = MAX_VERSION + 1;
        assert_eq!(with(high).check(), Err(DeltaError::Title(100)));
        let mut unsorted = titles.clone();
        unsorted.reverse();
        assert_eq!(with(unsorted).check(), Err(DeltaError::NotSorted));
        // A link outside the range passes the shape check and fails the patch.
        let mut outside = titles;
        outside[0].1[0].token = old.range().size();
        let outside = with(outside);
        outside.check().unwrap();
        assert_eq!(outside.patch(&old), Err(RingError::BadTitle(100)));
    }

    #[test]
    fn a_delta_that_drops_the_start_of_the_range_does_not_patch() {
        let r = ring();
        let n = bucket_count(&r);
        let mut delta = RingDelta::cut(&r, n, &[entry_bucket(0, n)]);
        delta.entries.retain(|e| e.0 != 0);
        assert!(delta.check().is_ok());
        assert_eq!(delta.patch(&r), Err(RingError::NoStart));
    }
}
