//! The ring's digest (DESIGN.md "Wire rules": anti-entropy exchanges
//! digests first, full state only on mismatch): a few dozen bytes standing
//! for the whole ring, sent every gossip interval instead of the ring.
//!
//! `weight` only grows as a ring learns (a join raises an entry's or a
//! record's version, or adds a tombstone), so a strictly larger weight
//! means "has something the other lacks", and the heavier side sends its
//! ring. Equal weights with different hashes are concurrent changes: the
//! receiver sends its ring and the sender answers with what it had more
//! (see `Allocator::on_digest`).

use super::ring::{GenesisId, Ring};
use crate::id::PeerId;
use serde::{Deserialize, Serialize};

/// Which ring, how much it has learned, and a hash of all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingSummary {
    /// The ring's genesis.
    pub genesis: GenesisId,
    /// Sum of entry and record versions plus the tombstone count (saturating).
    pub weight: u64,
    /// First 8 bytes of a Blake2s hash of entries, tombstones and records.
    pub hash: u64,
}

impl RingSummary {
    /// Summarises `ring`: one pass over it, nothing allocated.
    pub fn of(ring: &Ring) -> Self {
        use blake2::{Blake2s256, Digest};
        let mut weight: u64 = 0;
        let mut h = Blake2s256::new();
        h.update(b"weft ipam ring summary");
        for (token, e) in ring.entries() {
            weight = weight.saturating_add(e.version);
            h.update(token.to_be_bytes());
            h.update(e.owner.0.to_be_bytes());
            h.update(e.writer.0.to_be_bytes());
            h.update(e.version.to_be_bytes());
            h.update([u8::from(e.reclaim)]);
        }
        h.update([0xff]);
        for (dead, by) in ring.tombstones() {
            weight = weight.saturating_add(1);
            h.update(dead.0.to_be_bytes());
            h.update(by.0.to_be_bytes());
        }
        h.update([0xff]);
        for (peer, r) in ring.peer_records() {
            weight = weight.saturating_add(r.version);
            h.update(peer.0.to_be_bytes());
            h.update(r.version.to_be_bytes());
            h.update(r.free.to_be_bytes());
            h.update(r.pods.to_be_bytes());
        }
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self {
            genesis: ring.genesis_id(),
            weight,
            hash: u64::from_be_bytes(first),
        }
    }

    /// What a router without a ring answers a digest with: it has learned
    /// nothing of that ring, so the sender's full ring comes back.
    pub fn nothing(genesis: GenesisId) -> Self {
        Self {
            genesis,
            weight: 0,
            hash: 0,
        }
    }
}

/// The fewest and the most buckets a [`BucketDigest`] may carry.
pub const MIN_BUCKETS: usize = 8;
/// See [`MIN_BUCKETS`]: 4,096 buckets of 4 bytes, 16 KiB, for a ring far
/// beyond the 1,000-router design size.
pub const MAX_BUCKETS: usize = 4096;

/// The second level of the digest exchange (ring version 4,
/// `crate::ipam::delta`): the ring's items spread over a power-of-two
/// number of buckets by key, and a short hash of each bucket, so that the
/// two sides learn which buckets differ and send only those.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDigest {
    /// The sender's whole summary (equal to ours: nothing to do).
    pub summary: RingSummary,
    /// One 4-byte hash per bucket; the count is a power of two in
    /// [`MIN_BUCKETS`]`..=`[`MAX_BUCKETS`].
    pub hashes: Vec<[u8; 4]>,
}

impl BucketDigest {
    /// The digest of `ring` cut into `buckets` (a valid count).
    pub fn of(ring: &Ring, buckets: usize) -> Self {
        Self {
            summary: RingSummary::of(ring),
            hashes: hashes_of(ring, buckets),
        }
    }

    /// True if the bucket count is one both sides may use.
    pub fn valid_count(buckets: usize) -> bool {
        buckets.is_power_of_two() && (MIN_BUCKETS..=MAX_BUCKETS).contains(&buckets)
    }

    /// The buckets whose hash differs from `ring`'s, ascending.
    pub fn differing(&self, ring: &Ring) -> Vec<u32> {
        differing(ring, &self.hashes)
    }
}

/// The buckets in which `ring` differs from the bucket `hashes` of
/// another (their count is the bucket count), ascending.
pub fn differing(ring: &Ring, hashes: &[[u8; 4]]) -> Vec<u32> {
    let ours = bucket_hashes(ring, hashes.len());
    (0u32..)
        .zip(ours.iter().zip(hashes))
        .filter(|(_, (a, b))| a.to_be_bytes() != **b)
        .map(|(i, _)| i)
        .collect()
}

/// `ring`'s bucket hashes, cut into `buckets` (a valid count).
pub fn hashes_of(ring: &Ring, buckets: usize) -> Vec<[u8; 4]> {
    bucket_hashes(ring, buckets)
        .into_iter()
        .map(u32::to_be_bytes)
        .collect()
}

/// How many buckets to cut `ring` into: about four items a bucket, so that
/// a bucket costs 4 bytes of hash against a few hundred of items.
pub fn bucket_count(ring: &Ring) -> usize {
    let items = ring.entries().len() + ring.tombstones().len() + ring.peer_records().len();
    (items / 4)
        .next_power_of_two()
        .clamp(MIN_BUCKETS, MAX_BUCKETS)
}

/// A 64-bit mix (splitmix64's finaliser): spreads keys over buckets and
/// items over hashes. Not cryptographic: a missed difference (two bucket
/// contents of equal hash) leaves the summaries unequal, and a bucket
/// exchange that finds no differing bucket sends the whole ring.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Folds `words` into one hash, seeded by the item kind.
fn fold(kind: u64, words: &[u64]) -> u64 {
    words
        .iter()
        .fold(mix(kind), |h, w| mix(h ^ mix(*w).rotate_left(17)))
}

fn split(x: u128) -> [u64; 2] {
    [(x >> 64) as u64, x as u64]
}

/// The bucket of an entry at `token` among `buckets` (a power of two).
pub fn entry_bucket(token: u128, buckets: usize) -> u32 {
    index(fold(1, &split(token)), buckets)
}

/// The bucket of the tombstone `(dead, by)`.
pub fn tombstone_bucket(dead: PeerId, by: PeerId, buckets: usize) -> u32 {
    index(fold(2, &[dead.0, by.0]), buckets)
}

/// The bucket of `peer`'s free-space record.
pub fn record_bucket(peer: PeerId, buckets: usize) -> u32 {
    index(fold(3, &[peer.0]), buckets)
}

fn index(h: u64, buckets: usize) -> u32 {
    // A power of two at most MAX_BUCKETS: the mask fits in u32.
    (h & (buckets as u64 - 1)) as u32
}

/// Each bucket's hash: the wrapping sum of its items' hashes (so the order
/// of items does not matter), folded to 32 bits. Signatures are left out,
/// as in [`RingSummary`]: two copies of one item are the same item.
fn bucket_hashes(ring: &Ring, buckets: usize) -> Vec<u32> {
    let mut sums = vec![0u64; buckets];
    let mut add = |bucket: u32, h: u64| {
        if let Some(s) = sums.get_mut(bucket as usize) {
            *s = s.wrapping_add(h);
        }
    };
    for (token, e) in ring.entries() {
        let [hi, lo] = split(*token);
        let words = [
            hi,
            lo,
            e.owner.0,
            e.writer.0,
            e.version,
            u64::from(e.reclaim),
        ];
        add(entry_bucket(*token, buckets), fold(1, &words));
    }
    for (dead, by) in ring.tombstones() {
        add(
            tombstone_bucket(*dead, *by, buckets),
            fold(2, &[dead.0, by.0, 1]),
        );
    }
    for (peer, r) in ring.peer_records() {
        let [free_hi, free_lo] = split(r.free);
        let words = [peer.0, r.version, free_hi, free_lo, r.pods];
        add(record_bucket(*peer, buckets), fold(3, &words));
    }
    sums.into_iter().map(|s| ((s >> 32) ^ s) as u32).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ipam::range::AddrRange;

    fn ring() -> Ring {
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        Ring::genesis(range, "voters", &[PeerId(1), PeerId(2)].into())
    }

    #[test]
    fn equal_rings_have_equal_summaries() {
        assert_eq!(RingSummary::of(&ring()), RingSummary::of(&ring()));
    }

    #[test]
    fn a_ring_that_learned_something_weighs_more() {
        let before = ring();
        let mut after = before.clone();
        after.set_record(PeerId(1), 10, 0);
        let (a, b) = (RingSummary::of(&before), RingSummary::of(&after));
        assert!(b.weight > a.weight);
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.genesis, b.genesis);
    }

    #[test]
    fn bucket_digests_find_exactly_the_buckets_that_changed() {
        let mut before = ring();
        for p in 1..=40 {
            before.set_record(PeerId(p), 100, 0);
        }
        let n = bucket_count(&before);
        assert!(BucketDigest::valid_count(n));
        assert_eq!(
            BucketDigest::of(&before, n).differing(&before),
            Vec::<u32>::new()
        );
        let mut after = before.clone();
        after.set_record(PeerId(7), 99, 1);
        let differing = BucketDigest::of(&before, n).differing(&after);
        assert_eq!(differing, [record_bucket(PeerId(7), n)]);
    }

    #[test]
    fn the_bucket_count_grows_with_the_ring_within_its_bounds() {
        let mut r = ring();
        assert_eq!(bucket_count(&r), MIN_BUCKETS);
        for p in 1..=2000 {
            r.set_record(PeerId(p), 1, 0);
        }
        assert_eq!(bucket_count(&r), 512);
        assert!(!BucketDigest::valid_count(3));
        assert!(!BucketDigest::valid_count(MAX_BUCKETS * 2));
    }
}
