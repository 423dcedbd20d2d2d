//! Persistence glue: the ring (with the ranges still quarantined) and the
//! allocation table as records for the [`Store`], whose saves are durable
//! before they return; the callers roll their change back on an error.

use super::Allocator;
use crate::ipam::store::{PersistedAllocations, PersistedRing, RING_FORMAT, STATE_FORMAT, Store};

impl<S: Store> Allocator<S> {
    /// Signs what this router wrote and has not signed yet, so that
    /// nothing of ours reaches the disk or a peer unsigned.
    pub(super) fn sign_own(&mut self) {
        if let Some(ring) = self.ring.as_mut() {
            ring.sign_own(self.cfg.me, &*self.cfg.crypto);
        }
    }

    pub(super) fn persist_ring(&mut self) -> std::io::Result<()> {
        self.sign_own();
        let Some(ring) = &self.ring else {
            return Ok(());
        };
        let record = PersistedRing {
            format: RING_FORMAT,
            me: self.cfg.me,
            ring: ring.to_wire(),
            quarantined: self.quarantine.iter().map(|q| (q.0, q.1)).collect(),
            titles: ring.titles_wire(),
            marks: ring.marks(),
        };
        self.store.save_ring(&record.encode())
    }

    pub(super) fn persist_allocations(&mut self) -> std::io::Result<()> {
        let record = PersistedAllocations {
            format: STATE_FORMAT,
            me: self.cfg.me,
            allocations: self.allocs.pairs().map(|(k, o)| (k.clone(), o)).collect(),
            pods: self
                .allocs
                .pod_names()
                .map(|(k, p)| (k.clone(), p.clone()))
                .collect(),
        };
        self.store.save_allocations(&record.encode())
    }
}
