//! Retired identity keys across restarts (issue 20): the driver side of
//! `retired_keys.rs`. At start, before any connection is accepted or
//! dialled, the saved retirements go back into the gossip core (tombstones
//! to hand out, old IDs' entries dropped) and into [`super::rotation`]
//! (each window where it was, an ended one still ended); after each pass,
//! a change in either is saved.

use super::Control;
use super::retired_keys::{self, Record};
use std::time::Instant;

/// Wall-clock seconds now (0 before 1970: every record then counts as
/// fresh, which at worst gives a window again, never more).
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Control {
    /// Loads the saved retirements into the cores. A file that cannot be
    /// read costs one log line and is not fatal: the peers hand the
    /// tombstones back over gossip.
    pub(super) fn restore_retired(&mut self, now: Instant) {
        let unix = unix_now();
        self.restore_saved(now, unix);
        // What was read needs no rewrite; my own rotation, new at this
        // start, does.
        self.retired_saved = Some((self.gossip.retirement_changes(), self.rotations.changes()));
        if let Some((rotation, _, _)) = self.config.rotated_from.clone() {
            match self.rotations.retire_own(&rotation, now, unix) {
                Ok((old, _)) => self.learn_retired_key(old, rotation.old),
                Err(e) => tracing::warn!("my own identity rotation not tracked: {e}"),
            }
        }
    }

    fn restore_saved(&mut self, now: Instant, unix: u64) {
        let state_dir = self.config.state_dir.clone();
        let records = match retired_keys::load(&state_dir, unix) {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(
                    path = %retired_keys::path(&state_dir).display(),
                    "cannot read the saved retired identity keys ({e}); starting without them (peers hand them back), the file is rewritten at the next change"
                );
                return;
            }
        };
        let (mut restored, mut refused) = (0, 0);
        for record in records {
            let old = crate::id::PeerId::from_public_key(&record.kept.rotation.old);
            if old == self.me {
                continue;
            }
            let gossip = self
                .gossip
                .restore_retirement(record.kept.rotation, record.tombstone);
            if gossip.is_ok() {
                self.learn_retired_key(old, record.kept.rotation.old);
            }
            let windows = self.rotations.restore(&record.kept, now, unix);
            match (gossip, windows) {
                (Ok(()), Ok(_)) => restored += 1,
                _ => refused += 1,
            }
        }
        if restored + refused > 0 {
            tracing::info!(
                restored,
                refused,
                "retired identity keys restored from the state dir"
            );
        }
    }

    /// The ring keeps items the old key signed (the hand-over to its
    /// successor, and what it wrote before): IPAM must still check them
    /// once the old ID's topology entry is gone, e.g. after a restart.
    pub(super) fn learn_retired_key(&mut self, old: crate::id::PeerId, key: [u8; 32]) {
        self.ipam.learn_key(old, key);
        if let Some(ipam6) = self.ipam6.as_mut() {
            ipam6.learn_key(old, key);
        }
    }

    /// Saves the retirements if the cores changed them since the last save.
    pub(super) fn save_retired(&mut self, now: Instant) {
        let changes = (self.gossip.retirement_changes(), self.rotations.changes());
        if self.retired_saved == Some(changes) {
            return;
        }
        self.retired_saved = Some(changes);
        let tombstones: std::collections::BTreeMap<_, _> = self
            .gossip
            .retirements()
            .filter_map(|(old, _, tombstone)| Some((old, tombstone?.clone())))
            .collect();
        let records = self
            .rotations
            .kept(now)
            .into_iter()
            .map(|(old, kept)| Record {
                kept,
                tombstone: tombstones.get(&old).cloned(),
            })
            .collect();
        let records = retired_keys::retained(records, unix_now());
        if let Err(e) = retired_keys::save(&self.config.state_dir, &records) {
            tracing::warn!(
                path = %retired_keys::path(&self.config.state_dir).display(),
                "cannot save the retired identity keys ({e}); a restart may forget them"
            );
        }
    }
}
