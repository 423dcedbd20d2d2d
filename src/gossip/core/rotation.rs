//! Identity key rotation in the topology (issue 20, step 4;
//! docs/ARCHITECTURE.md "Identity key rotation"). A router that moved from
//! an old key to a new one shows up as two signed entries:
//! - the **successor**: the new ID's entry carrying the verified
//!   announcement ([`checked_rotation`]); it keeps the old ID's name (the
//!   announcement is the proof that it is the same router, so the name
//!   rule does not treat it as a clash) and the short ID the old key held
//!   (carried by the rotated router, [`Gossip::with_rotation`]);
//! - the **tombstone**: the old ID's entry, signed by the old key, carrying
//!   the same announcement (its key is the announcement's old key). It
//!   retires the old ID: its entry leaves the table, later copies of it are
//!   dropped, and it is handed to every new neighbour, so a router that
//!   restarts learns that the old key moved on.
//!
//! One old key has one successor: a second announcement naming another
//! key is refused ([`RefusedReason::RotationConflict`]). The retirements
//! held are bounded by [`MAX_TRACKED`].

use super::{Gossip, GossipEvent};
use crate::crypto::SigningKey;
use crate::crypto::rotation::{MAX_TRACKED, Rotation};
use crate::gossip::entry_rotation::checked_rotation;
use crate::gossip::topology::{RefusedReason, SignedEntry, TopologyEntry};
use crate::id::{PeerId, ShortId};
use std::time::Instant;

/// A retired ID: whom it moved to, and its tombstone once known.
#[derive(Clone, Debug)]
pub(super) struct Retirement {
    pub(super) successor: PeerId,
    pub(super) rotation: Rotation,
    pub(super) tombstone: Option<SignedEntry>,
    /// When this core learned it (the oldest ended one makes room at the
    /// bound).
    pub(super) learned: Instant,
}

/// The tombstone of `rotation`'s old key: an entry of the old ID with no
/// addresses and no connections, signed by the old key, carrying the
/// announcement. Its version is the announcement's second of issue, above
/// any version a router reaches by counting changes and within
/// `MAX_VERSION_JUMP` of zero, so older builds (which ignore the
/// announcement) also take it over the old ID's last entry and then reap
/// the unreachable ID.
pub fn tombstone(
    rotation: &Rotation,
    name: &str,
    mtu: u16,
    old_key: &SigningKey,
) -> (TopologyEntry, SignedEntry) {
    let id = PeerId::from_public_key(&rotation.old);
    let entry = TopologyEntry {
        id,
        version: rotation.issued.max(1),
        name: name.to_string(),
        public_key: rotation.old,
        addresses: Vec::new(),
        short_id: ShortId::preferred(id),
        mtu,
        connections: Vec::new(),
    };
    let signed = SignedEntry::sign_rotated(&entry, Some(rotation), old_key);
    (entry, signed)
}

impl Gossip {
    /// This router runs under the key `rotation` moved it to: my entry
    /// carries the announcement from now on and takes `short`, the short
    /// ID the old key held (not `ShortId::preferred(old)`: a clash may have
    /// moved the old key, and its preferred value is then another
    /// router's), and the old ID's tombstone (signed with `old_key`) is
    /// held and handed to every neighbour. Call right after
    /// [`Gossip::new`].
    pub fn with_rotation(
        mut self,
        rotation: Rotation,
        old_key: &SigningKey,
        short: ShortId,
    ) -> Self {
        let Ok((old, new)) = rotation.verify() else {
            return self;
        };
        if new != self.me {
            return self;
        }
        let mut entry = self.my_entry().clone();
        entry.short_id = short;
        self.my_rotation = Some(rotation);
        let (_, signed) = tombstone(&rotation, &entry.name, entry.mtu, old_key);
        self.retired.insert(
            old,
            Retirement {
                successor: new,
                rotation,
                tombstone: Some(signed),
                learned: self.clock,
            },
        );
        self.retirement_changes += 1;
        self.install_mine(entry);
        self
    }

    /// My entry announces `short` (the value a rotation carried to this
    /// key at an earlier start) instead of the preferred one; the clash
    /// rule still moves it if a lower ID holds it. Call right after
    /// [`Gossip::new`].
    pub fn with_short_id(mut self, short: ShortId) -> Self {
        let mut entry = self.my_entry().clone();
        if entry.short_id != short {
            entry.short_id = short;
            self.install_mine(entry);
        }
        self
    }

    /// Each retired ID held, its announcement and its tombstone once
    /// known: what the state dir keeps across a restart
    /// (`control::retired_keys`).
    pub fn retirements(&self) -> impl Iterator<Item = (PeerId, &Rotation, Option<&SignedEntry>)> {
        self.retired
            .iter()
            .map(|(old, r)| (*old, &r.rotation, r.tombstone.as_ref()))
    }

    /// Changes whenever [`Self::retirements`] does: the driver saves then.
    pub fn retirement_changes(&self) -> u64 {
        self.retirement_changes
    }

    /// A retirement the state dir kept across a restart, checked as if it
    /// came from the network: the announcement verifies, and the tombstone,
    /// if any, is the old key's own entry carrying it. Back in the table of
    /// retirements without an event (the driver restores its windows
    /// itself); if it made my key, my entry carries it again.
    pub fn restore_retirement(
        &mut self,
        rotation: Rotation,
        tombstone: Option<SignedEntry>,
    ) -> Result<(), RefusedReason> {
        let (old, new) = rotation.verify().map_err(|_| RefusedReason::BadRotation)?;
        if old == self.me {
            // My own key retired: nothing to hand or to refuse here.
            return Err(RefusedReason::BadRotation);
        }
        if let Some(signed) = &tombstone {
            let claim = signed.claim()?;
            if claim.public_key != rotation.old || signed.rotation()? != Some(rotation) {
                return Err(RefusedReason::BadRotation);
            }
            signed.verify_with(&claim, &mut self.verifying_keys)?;
        }
        self.conflict(old, new)?;
        if !self.retired.contains_key(&old) {
            self.make_room_for_retirement()?;
        }
        let held = self.retired.entry(old).or_insert(Retirement {
            successor: new,
            rotation,
            tombstone: None,
            learned: self.clock,
        });
        if held.tombstone.is_none() {
            held.tombstone = tombstone;
        }
        self.retirement_changes += 1;
        if new == self.me && self.my_rotation.is_none() {
            self.my_rotation = Some(rotation);
            let entry = self.my_entry().clone();
            self.install_mine(entry);
        }
        Ok(())
    }

    /// At the bound, the retirement learned first goes if its window is
    /// over (`GossipConfig::retirement_window`); while every window is
    /// open, a new one is refused.
    pub(super) fn make_room_for_retirement(&mut self) -> Result<(), RefusedReason> {
        if let Some(oldest) = self.retirement_to_evict(self.clock)? {
            self.forget_retirement(oldest);
        }
        Ok(())
    }

    /// True if one more retirement can be recorded at `now`: our own key
    /// switch checks this before anything is written, so that it is
    /// refused whole rather than half done.
    pub fn has_room_for_retirement(&self, now: Instant) -> bool {
        self.retirement_to_evict(self.clock.max(now)).is_ok()
    }

    /// The retirement a new one would replace at `clock` (`None`: there
    /// is room), or [`RefusedReason::TooManyRotations`] if the table is
    /// full of open windows.
    fn retirement_to_evict(&self, clock: Instant) -> Result<Option<PeerId>, RefusedReason> {
        if self.retired.len() < MAX_TRACKED {
            return Ok(None);
        }
        let window = self.config.retirement_window;
        self.retired
            .iter()
            .filter(|(_, r)| r.learned + window <= clock)
            .min_by_key(|(old, r)| (r.learned, **old))
            .map(|(old, _)| Some(*old))
            .ok_or(RefusedReason::TooManyRotations)
    }

    /// Drops the retirement of `old` (the driver's run-time pruning past
    /// the retention, `control::rotation::Rotations::prune`): its
    /// tombstone is no longer handed out, and a copy of its entry is
    /// judged as any entry again.
    pub fn forget_retirement(&mut self, old: PeerId) {
        if self.retired.remove(&old).is_some() {
            self.retirement_changes += 1;
        }
    }

    /// The router `old` moved to, if this core knows `old` is retired.
    pub fn successor_of(&self, old: PeerId) -> Option<PeerId> {
        self.retired.get(&old).map(|r| r.successor)
    }

    /// The tombstones held, to hand a new neighbour (a restarted router
    /// learns every retirement from its first neighbour).
    pub(super) fn tombstones_to_hand(&self) -> Vec<SignedEntry> {
        self.retired
            .values()
            .filter_map(|r| r.tombstone.clone())
            .collect()
    }

    /// An entry whose key is its announcement's old key: the old ID's
    /// tombstone. Believed only if the old key signed it and the
    /// announcement verifies; learned once.
    pub(super) fn merge_tombstone(
        &mut self,
        from: PeerId,
        claim: TopologyEntry,
        signed: SignedEntry,
        rotation: Rotation,
    ) {
        if claim.id == self.me
            || self
                .retired
                .get(&claim.id)
                .is_some_and(|r| r.tombstone.is_some())
        {
            // Known, or my own key retired by another holder of it: a
            // retired key has nothing to adopt.
            return;
        }
        if let Err(reason) = signed.verify_with(&claim, &mut self.verifying_keys) {
            return self.refuse(from, claim.id, &claim.name, reason);
        }
        let Ok((old, new)) = rotation.verify() else {
            return self.refuse(from, claim.id, &claim.name, RefusedReason::BadRotation);
        };
        if let Err(reason) = self.retire(old, new, rotation, Some(signed.clone())) {
            return self.refuse(from, claim.id, &claim.name, reason);
        }
        // Spread it once, as it was signed, with the successor's entry (so
        // no router holds the retirement without the router's new ID), to
        // every other neighbour the successor has not told itself.
        let successor = self.table.get(new);
        let to: Vec<PeerId> = self
            .neighbours
            .keys()
            .copied()
            .filter(|n| *n != from && successor.is_none_or(|e| e.connection(*n).is_none()))
            .collect();
        let mut entries: Vec<SignedEntry> = self.table.signed(new).cloned().into_iter().collect();
        entries.push(signed);
        for n in to {
            self.send_entries(n, entries.clone());
        }
    }

    /// The announcement a successor's entry carries, checked: `Ok(None)`
    /// for an entry that carries none, `Ok(Some(old))` for a verified one
    /// that does not contradict a known retirement.
    pub(super) fn check_successor(
        &self,
        claim: &TopologyEntry,
        rotation: Option<&Rotation>,
    ) -> Result<Option<PeerId>, RefusedReason> {
        let Some(rotation) = rotation else {
            return Ok(None);
        };
        let known = self.retired.values().find(|r| r.successor == claim.id);
        if let Some(known) = known
            && known.rotation == *rotation
        {
            // Verified when first learned: later versions of the entry
            // carry the same bytes.
            return Ok(Some(PeerId::from_public_key(&rotation.old)));
        }
        let old = checked_rotation(claim, rotation)?;
        self.conflict(old, claim.id)?;
        Ok(Some(old))
    }

    /// Whether `old` already moved to another key than `new`.
    fn conflict(&self, old: PeerId, new: PeerId) -> Result<(), RefusedReason> {
        match self.retired.get(&old) {
            Some(r) if r.successor != new => Err(RefusedReason::RotationConflict {
                successor: r.successor,
            }),
            _ => Ok(()),
        }
    }

    /// Retires `old` in favour of `new` (verified by the caller): its entry
    /// leaves the table once `new`'s is there, its name passes to `new`, and
    /// the driver hears of the rotation the first time.
    pub(super) fn retire(
        &mut self,
        old: PeerId,
        new: PeerId,
        rotation: Rotation,
        tombstone: Option<SignedEntry>,
    ) -> Result<(), RefusedReason> {
        self.conflict(old, new)?;
        let first = !self.retired.contains_key(&old);
        if first {
            self.make_room_for_retirement()?;
        }
        let held = self.retired.entry(old).or_insert(Retirement {
            successor: new,
            rotation,
            tombstone: None,
            learned: self.clock,
        });
        if held.tombstone.is_none() && tombstone.is_some() {
            held.tombstone = tombstone;
            self.retirement_changes += 1;
        }
        if first {
            self.retirement_changes += 1;
        }
        self.tombstones.remove(&old);
        // The old entry stays until the successor's is known: routes follow
        // the router under whichever ID the table holds (`aliases`), so it
        // is never without one.
        if old != self.me
            && self.table.get(new).is_some()
            && let Some((entry, _)) = self.table.remove(old)
        {
            self.unreachable_since.remove(&old);
            if self.names.get(&entry.name) == Some(&old) {
                self.names.remove(&entry.name);
            }
            self.changed();
        }
        if first {
            self.emit(GossipEvent::Rotated {
                old,
                new,
                rotation: Box::new(rotation),
            });
            self.changed();
        }
        Ok(())
    }
}
