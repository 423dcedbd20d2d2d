//! What the driver and the status report read from the core: routes, the
//! table, my entry, neighbours, counters. Nothing here changes state.

use super::Gossip;
use crate::gossip::routes::Routes;
use crate::gossip::topology::{SignedEntry, TopologyEntry};
use crate::id::{PeerId, ShortId};

impl Gossip {
    /// My id.
    pub fn id(&self) -> PeerId {
        self.me
    }

    /// Next hop per destination over established connections (computed
    /// lazily after each change).
    pub fn routes(&self) -> &Routes {
        self.routes.get_or_init(|| {
            Routes::compute_aliased(
                self.me,
                &self.my_connections(),
                &self.table,
                &self.aliases(),
            )
        })
    }

    /// Every known entry, mine included, by id.
    pub fn peers(&self) -> impl Iterator<Item = &TopologyEntry> {
        self.table.iter()
    }

    /// The entry for `id`.
    pub fn entry(&self, id: PeerId) -> Option<&TopologyEntry> {
        self.table.get(id)
    }

    /// The entry for `id` as its owner signed it.
    pub fn signed_entry(&self, id: PeerId) -> Option<&SignedEntry> {
        self.table.signed(id)
    }

    /// My own entry.
    pub fn my_entry(&self) -> &TopologyEntry {
        // The table always holds my entry: inserted in `new`, never removed
        // (reap skips me), only replaced.
        self.table
            .get(self.me)
            .unwrap_or_else(|| unreachable!("own entry missing"))
    }

    /// My current short ID.
    pub fn short_id(&self) -> ShortId {
        self.my_entry().short_id
    }

    /// The router that holds `name`.
    pub fn name_holder(&self, name: &str) -> Option<PeerId> {
        self.names.get(name).copied()
    }

    /// The cluster's overlay MTU: the minimum over all known entries.
    pub fn cluster_mtu(&self) -> u16 {
        self.table
            .iter()
            .map(|e| e.mtu)
            .min()
            .unwrap_or(self.config.mtu)
    }

    /// My neighbours: `(peer, established, outbound)`.
    pub fn neighbours(&self) -> impl Iterator<Item = (PeerId, bool, bool)> + '_ {
        self.neighbours
            .iter()
            .map(|(id, n)| (*id, n.established, n.outbound))
    }

    /// `(count, hash)` of my table: equal summaries mean equal `(id, version)` sets.
    pub fn summary(&self) -> (u32, u64) {
        self.table.summary()
    }

    /// Whether a change of my own entry still waits for its rate-limited push.
    pub fn has_pending_changes(&self) -> bool {
        self.self_dirty || self.neighbours_dirty
    }

    /// Refusal events not queued because the backlog was full.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Entries refused so far, per [`RefusedReason::as_str`](crate::gossip::topology::RefusedReason::as_str) label (counted
    /// even when the event backlog is full).
    pub fn refused_counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.refusals.iter().map(|(k, v)| (*k, *v))
    }
}
