//! Identity key rotation's hand-over (issue 20, docs/ARCHITECTURE.md
//! "Identity key rotation", step 3): the router's ID hashes its key, so a
//! new key is a new ID, and every range the old ID owns is donated to the
//! new one. The donations are written and signed by the old key, an
//! owner's write that every release accepts, so the ring wire does not
//! change. Allocations are keyed by container, not by owner: they stay.

use super::{Allocator, Destination};
use crate::id::PeerId;
use crate::ipam::error::IpamError;
use crate::ipam::signed::RingCrypto;
use crate::ipam::store::Store;
use std::time::Instant;

impl<S: Store> Allocator<S> {
    /// Moves this allocator from its ID to `new`, which signs with
    /// `crypto` from now on: every ring entry owned by the old ID is
    /// donated to `new` (quarantined ranges stay quarantined here: the
    /// offsets do not move), the ring and the allocations are persisted
    /// under `new`, then the ring is broadcast. On a failed persist
    /// nothing changes (the old ID, its ring and its signer are kept).
    /// Returns the addresses handed over.
    pub fn rotate_to(
        &mut self,
        new: PeerId,
        crypto: Box<dyn RingCrypto>,
        now: Instant,
    ) -> Result<u128, IpamError> {
        if let Some(by) = self.tombstoned {
            return Err(IpamError::Tombstoned(by));
        }
        let old = self.cfg.me;
        let old_ring = self.ring.clone();
        let mut handed = 0;
        if let Some(ring) = self.ring.as_mut() {
            for (lo, hi) in owned_entries(ring, old) {
                if !ring.donate(old, lo, hi, new) {
                    self.ring = old_ring;
                    return Err(IpamError::NotReady);
                }
                handed += hi - lo + 1;
            }
        }
        // The donations are the old key's writes: sign them before the
        // signer changes.
        self.sign_own();
        let old_crypto = std::mem::replace(&mut self.cfg.crypto, crypto);
        self.cfg.me = new;
        self.refresh_mine();
        if let Err(e) = self
            .persist_ring()
            .and_then(|()| self.persist_allocations())
        {
            self.cfg.me = old;
            self.cfg.crypto = old_crypto;
            self.ring = old_ring;
            self.refresh_mine();
            let _ = self
                .persist_ring()
                .and_then(|()| self.persist_allocations());
            return Err(IpamError::Persist(e));
        }
        self.reachable.remove(&new);
        self.send_ring(Destination::Broadcast, now);
        Ok(handed)
    }
}

/// The `(start, end)` offsets of each ring entry owned by `me`, in order
/// (a range may span several entries; each is donated on its own).
pub(super) fn owned_entries(ring: &crate::ipam::ring::Ring, me: PeerId) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    for (start, end) in ring.ranges_of(me) {
        let mut lo = start;
        while lo <= end {
            let entry_end = ring
                .entries()
                .range(lo + 1..)
                .next()
                .map_or(end, |(t, _)| (t - 1).min(end));
            out.push((lo, entry_end));
            lo = entry_end + 1;
        }
    }
    out
}
