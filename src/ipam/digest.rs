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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::id::PeerId;
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
}
