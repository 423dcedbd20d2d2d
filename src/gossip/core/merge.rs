//! What an entry from the network must pass before it is believed, the
//! version rules, and short-ID clashes (DESIGN.md "Identity", "Security
//! model", "The data header").
//!
//! Order of checks for another router's entry: decode the claim; drop it
//! unverified if it is not newer than what I hold or than its tombstone (it
//! would change nothing, and verifying costs ~50 µs); verify the owner's
//! signature and the entry's own rules; bound the version jump; then the name
//! rule against the table. A refused entry changes nothing and is counted per
//! reason. For my own entry, only a copy I signed (a previous incarnation's)
//! that is ahead of mine moves me: I adopt its version and re-sign above it.

use super::{Gossip, GossipEvent, MAX_EVENTS};
use crate::gossip::topology::{
    MAX_VERSION_JUMP, RefusedReason, SignedEntry, TopologyEntry, splitmix,
};
use crate::id::{PeerId, ShortId};
use std::collections::HashSet;

impl Gossip {
    /// Merges one signed entry from neighbour `from` (DESIGN.md "Identity":
    /// only its owner changes an entry, and only a newer version replaces one).
    pub(super) fn merge(&mut self, from: PeerId, signed: SignedEntry) {
        let claim = match signed.claim() {
            Ok(claim) => claim,
            Err(reason) => return self.refuse(from, PeerId(0), "", reason),
        };
        let rotation = match signed.rotation() {
            Ok(rotation) => rotation,
            Err(reason) => return self.refuse(from, claim.id, &claim.name, reason),
        };
        if let Some(rotation) = rotation
            && rotation.old == claim.public_key
        {
            return self.merge_tombstone(from, claim, signed, rotation);
        }
        if self.retired.contains_key(&claim.id) && claim.id != self.me {
            // A retired key's entry: stale, or its holder after the move.
            return;
        }
        if claim.id == self.me {
            return self.merge_mine(from, claim, signed);
        }
        if let Some(t) = self.tombstones.get(&claim.id)
            && t.version >= claim.version
        {
            return;
        }
        let known = self.table.get(claim.id).map(|e| e.version);
        if known.is_some_and(|v| v >= claim.version) {
            return;
        }
        if let Err(reason) = signed.verify_with(&claim, &mut self.verifying_keys) {
            return self.refuse(from, claim.id, &claim.name, reason);
        }
        if let Some(known) = known
            && claim.version - known > MAX_VERSION_JUMP
        {
            let reason = RefusedReason::VersionJump {
                known,
                offered: claim.version,
            };
            return self.refuse(from, claim.id, &claim.name, reason);
        }
        let predecessor = match self.check_successor(&claim, rotation.as_ref()) {
            Ok(predecessor) => predecessor,
            Err(reason) => return self.refuse(from, claim.id, &claim.name, reason),
        };
        if let Some(&holder) = self.names.get(&claim.name)
            && holder != claim.id
            && Some(holder) != predecessor
        {
            let reason = RefusedReason::NameClash { holder };
            return self.refuse(from, claim.id, &claim.name, reason);
        }
        self.tombstones.remove(&claim.id);
        let (id, name, short) = (claim.id, claim.name.clone(), claim.short_id);
        self.names.insert(name.clone(), id);
        if let Some(old) = self.table.insert(claim, signed) {
            if old.name != name {
                self.names.remove(&old.name);
            }
        } else {
            self.emit(GossipEvent::PeerAdded { id, name });
        }
        self.changed();
        self.relays.push((id, from));
        if let (Some(old), Some(rotation)) = (predecessor, rotation)
            && let Err(reason) = self.retire(old, id, rotation, None)
        {
            // Checked above; only the table's bound can refuse it here.
            self.refuse(from, id, "", reason);
        }
        if short == self.short_id() && id < self.me {
            self.pick_short_id();
        }
    }

    /// A copy of my own entry came back. Ahead of mine (or different at the
    /// same version) and signed by me: a previous incarnation's, so adopt its
    /// version and re-sign above it. Not signed by me: a forgery, refused.
    fn merge_mine(&mut self, from: PeerId, claim: TopologyEntry, signed: SignedEntry) {
        let mine = self.my_entry();
        let ahead = claim.version > mine.version
            || (claim.version == mine.version && self.table.signed(self.me) != Some(&signed));
        if !ahead {
            return;
        }
        if let Err(reason) = signed.verify_with(&claim, &mut self.verifying_keys) {
            return self.refuse(from, claim.id, &claim.name, reason);
        }
        self.jump_above(claim.version, Some(claim.short_id));
    }

    /// Counts a refusal and queues its event (bounded: a hostile neighbour
    /// cannot grow the backlog).
    pub(super) fn refuse(&mut self, from: PeerId, id: PeerId, name: &str, reason: RefusedReason) {
        *self.refusals.entry(reason.as_str()).or_default() += 1;
        if self.events.len() >= MAX_EVENTS {
            self.events_dropped += 1;
            return;
        }
        let mut cut = name.len().min(64);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        self.events.push_back(GossipEvent::EntryRefused {
            from,
            id,
            name: name[..cut].to_string(),
            reason,
        });
    }

    pub(super) fn emit(&mut self, event: GossipEvent) {
        // Only refusals can be caused in bulk by one neighbour; the rest are
        // bounded by the table, so they are always queued.
        self.events.push_back(event);
    }

    /// My entry got out ahead of me (I restarted): take the version above
    /// it, and keep its short ID if no lower id holds that one. `version` was
    /// verified (at most `MAX_VERSION`), so one above never overflows.
    fn jump_above(&mut self, version: u64, short: Option<ShortId>) {
        let mut entry = self.my_entry().clone();
        entry.version = version + 1;
        if let Some(short) = short.filter(|s| *s != entry.short_id) {
            let taken = self
                .table
                .iter()
                .any(|e| e.id < self.me && e.short_id == short);
            if !taken {
                self.emit(GossipEvent::ShortIdChanged {
                    old: entry.short_id,
                    new: short,
                });
                entry.short_id = short;
            }
        }
        self.install_mine(entry);
    }

    /// A lower id holds my short ID: move to the first value, in a sequence
    /// derived from my id and an attempt counter, that no other known router
    /// holds (deterministic: the same table gives the same choice), and
    /// announce it in my signed entry.
    fn pick_short_id(&mut self) {
        let used: HashSet<ShortId> = self
            .table
            .iter()
            .filter(|e| e.id != self.me)
            .map(|e| e.short_id)
            .collect();
        let old = self.short_id();
        let Some(new) = (1..=u64::from(u16::MAX) + 1)
            .map(|attempt| ShortId::candidate(self.me, attempt))
            .find(|s| !used.contains(s))
        else {
            return;
        };
        let mut entry = self.my_entry().clone();
        entry.short_id = new;
        entry.version += 1;
        self.install_mine(entry);
        self.emit(GossipEvent::ShortIdChanged { old, new });
    }

    /// The router a data header's short ID names. During a clash, before the
    /// higher id has moved, that is the lower id (DESIGN.md: the lower full
    /// ID keeps its value); the higher one is never returned for it.
    pub fn peer_by_short(&self, short: ShortId) -> Option<PeerId> {
        self.table
            .iter()
            .filter(|e| e.short_id == short)
            .map(|e| e.id)
            .min()
    }

    /// Whether `id` rightfully holds the short ID its entry announces (no
    /// lower id announces the same). The data plane must not publish a link
    /// under a short ID its peer does not hold: packets stamped with it would
    /// be attributed to the lower id, and two links would share one slot.
    pub fn holds_short_id(&self, id: PeerId) -> bool {
        self.table
            .get(id)
            .is_some_and(|e| self.peer_by_short(e.short_id) == Some(id))
    }

    /// Short IDs announced by more than one known router, each with the
    /// routers announcing it, lowest first (transient: the higher ones move).
    pub fn short_id_clashes(&self) -> Vec<(ShortId, Vec<PeerId>)> {
        let mut by_short: std::collections::BTreeMap<ShortId, Vec<PeerId>> = Default::default();
        for e in self.table.iter() {
            by_short.entry(e.short_id).or_default().push(e.id);
        }
        by_short
            .into_iter()
            .filter(|(_, ids)| ids.len() > 1)
            .collect()
    }
}

impl ShortId {
    /// The `attempt`-th candidate short ID for `id` after a clash (attempt
    /// 1, 2, …): a hash of the ID and the attempt, so every router computes
    /// the same sequence for the same router.
    pub fn candidate(id: PeerId, attempt: u64) -> Self {
        Self(splitmix(id.0 ^ attempt) as u16)
    }
}
