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

use super::digest::{BucketDigest, entry_bucket, hashes_of, record_bucket, tombstone_bucket};
use super::ring::{Entry, GenesisId, PeerRecord, Ring, RingError, RingWire};
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
    /// The buckets `indices` (ascending, each below `buckets`) of `ring`.
    pub fn cut(ring: &Ring, buckets: usize, indices: &[u32]) -> Self {
        let wanted: BTreeSet<u32> = indices.iter().copied().collect();
        let wire = ring.to_wire();
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
        }
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
        Ok(())
    }

    /// The sender's ring as far as we can tell: `base` with the listed
    /// buckets replaced by the delta's. Checked as any ring from the wire
    /// (order, start, versions, founding); `base` must be of the delta's
    /// genesis (the caller checks).
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
        Ring::from_wire(wire)
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
    fn a_delta_that_drops_the_start_of_the_range_does_not_patch() {
        let r = ring();
        let n = bucket_count(&r);
        let mut delta = RingDelta::cut(&r, n, &[entry_bucket(0, n)]);
        delta.entries.retain(|e| e.0 != 0);
        assert!(delta.check().is_ok());
        assert_eq!(delta.patch(&r), Err(RingError::NoStart));
    }
}
