//! `weft rotate-identity` in the control loop (issue 20, steps 2, 3 and 6;
//! docs/ARCHITECTURE.md "Identity key rotation"): persist the new key and
//! its announcement, hand the ranges over, make the new key the identity,
//! then switch to it live: the topology entry moves to the new ID (with
//! the old ID's tombstone) and every connection rekeys under the new key
//! carrying the announcement, so no link drops. A peer too old to follow
//! gets its link closed and is re-dialled under the new key.
//!
//! The restart is the fallback: if the new key cannot be made the
//! identity on disk, the router restarts and the start that follows finds
//! `identity.next` with the hand-over written and completes the rotation
//! (`daemon::resume_rotation`).

use super::connection::ConnectionCommand;
use super::{Control, ROTATE_GRACE, keep_retired};
use crate::api::proto::{ErrorCode, Reply, Rotated};
use crate::crypto::SigningKey;
use crate::crypto::identity::Identity;
use crate::crypto::identity_next::{self, Pending};
use crate::crypto::rotation::MAX_TRACKED;
use crate::crypto::{carried_short, identity_age};
use crate::gossip::PeerInfo;
use std::sync::Arc;
use std::time::Instant;

impl Control {
    /// Rotates this router's identity key (see the module docs).
    pub(super) fn rotate_identity(&mut self, now: Instant) -> Reply {
        if self.rotating.is_some() || self.leaving.is_some() {
            return Reply::err(
                ErrorCode::Refused,
                "the router is already restarting (a rotation or a leave is under way)",
            );
        }
        if !self.switching.is_empty() {
            return Reply::err(
                ErrorCode::Refused,
                format!(
                    "the previous rotation is still switching {} connection(s) to its key",
                    self.switching.len()
                ),
            );
        }
        if self.ipam.owners().is_empty() {
            return Reply::err(
                ErrorCode::Refused,
                "the ring is not known yet: rotate once this router has joined it",
            );
        }
        if !self.gossip.has_room_for_retirement(now) {
            return Reply::err(
                ErrorCode::Refused,
                format!(
                    "the topology already tracks {MAX_TRACKED} retired keys whose windows are open: rotate once the oldest window ends"
                ),
            );
        }
        let old = self.context.identity.load_full();
        let issued = keep_retired::unix_now();
        let mut pending = Pending::generate(&old, issued, &mut rand::rngs::OsRng);
        // The short ID this key holds now (a clash may have moved it): the
        // new key carries it.
        pending.short = Some(self.gossip.short_id());
        let state_dir = self.config.state_dir.clone();
        if let Err(e) = pending.write(&state_dir) {
            return Reply::err(
                ErrorCode::Internal,
                format!(
                    "cannot write {} in {}: {e}",
                    identity_next::NEXT_FILE,
                    state_dir.display()
                ),
            );
        }
        if let Err(e) = self.ipam.rotate(&pending.identity, now) {
            // Nothing was handed over: the key stays.
            let _ = identity_next::discard(&state_dir);
            return Reply::err(ErrorCode::Internal, format!("{e:#}"));
        }
        let (old_id, new_id) = (old.id(), pending.identity.id());
        let ipam6_failed = self
            .ipam6
            .as_mut()
            .and_then(|ipam6| ipam6.rotate(&pending.identity, now).err());
        if let Some(e) = ipam6_failed {
            // The IPv4 ring went over already: the restart finishes the
            // IPv6 store's hand-over when it opens it.
            tracing::warn!(error = %format!("{e:#}"), "the IPv6 ring's hand-over failed; restarting to complete it");
            self.restart_to_rotate(now, old_id, new_id);
        } else if let Err(e) = pending.commit(&state_dir) {
            tracing::warn!(error = %e, "cannot make the new identity key current; restarting to complete the rotation");
            self.restart_to_rotate(now, old_id, new_id);
        } else if self.switch_live(&old, &pending, now) {
            // The new entry (and with it the new key) goes out before the
            // ring hand-over, on the same links: peers then take the ring
            // at once instead of refusing items from an unknown key.
            self.drain_gossip(now);
        } else {
            self.restart_to_rotate(now, old_id, new_id);
        }
        self.drive_ipam(now);
        match serde_json::to_value(Rotated {
            old: old_id.to_string(),
            new: new_id.to_string(),
        }) {
            Ok(value) => Reply::ok(value),
            Err(e) => Reply::err(ErrorCode::Internal, e.to_string()),
        }
    }

    /// The fallback: restart under the new key [`ROTATE_GRACE`] from now
    /// (time for the ring hand-over to go out).
    fn restart_to_rotate(&mut self, now: Instant, old: crate::id::PeerId, new: crate::id::PeerId) {
        tracing::info!(from = %old, to = %new, restart_in = ?ROTATE_GRACE,
            "identity rotation: new key written and ranges handed over; restarting under the new key");
        self.rotating = Some(now + ROTATE_GRACE);
    }

    /// The new key is the identity on disk: every part of the running
    /// router moves to it, then every connection rekeys under it. False
    /// (nothing moved) if the topology refuses our own switch, which
    /// `rotate_identity` checked it would not: the caller restarts instead.
    fn switch_live(&mut self, old: &Identity, pending: &Pending, now: Instant) -> bool {
        let new = Arc::new(pending.identity.clone());
        let rotation = pending.rotation;
        let me = new.id();
        let info = PeerInfo {
            id: me,
            name: self.config.name.clone(),
            public_key: new.public_key(),
            addresses: self.endpoints.advertised().to_vec(),
        };
        // First, so its update goes out on the links still under the old
        // key and each peer takes it from the ID it knows.
        if let Err(reason) = self.gossip.rotate(
            info,
            SigningKey::from_identity(&new),
            rotation,
            &SigningKey::from_identity(old),
            now,
        ) {
            tracing::warn!(
                ?reason,
                "the topology refused our own key switch; restarting under the new key instead"
            );
            return false;
        }
        // New connections from here on handshake under the new key.
        self.context.identity.store(new.clone());
        self.me = me;
        // The Lease names the key in use (the Lease task reads this).
        self.config.own_id.send_replace(me);
        self.peers.set_me(me);
        self.punch.set_me(me);
        self.relay_budget.set_me(me);
        let unix = keep_retired::unix_now();
        if let Err(e) = self.rotations.retire_own(&rotation, now, unix) {
            tracing::warn!(error = %e, "our own retired key is not tracked");
        }
        self.learn_retired_key(old.id(), rotation.old);
        for (id, link) in &self.links {
            let command = ConnectionCommand::SwitchIdentity {
                identity: new.clone(),
                rotation: Box::new(rotation),
            };
            if link.send(command).is_ok() {
                self.switching.insert(*id);
            }
        }
        let state_dir = &self.config.state_dir;
        if let Err(e) = identity_age::record(state_dir, unix) {
            tracing::warn!(error = %e, "cannot record the new key's age; it counts from the next start");
        }
        if let Err(e) = carried_short::save(state_dir, me, pending.carried_short()) {
            tracing::warn!(error = %e, "cannot save the carried short ID; a restart announces the preferred one");
        }
        self.dirty = true;
        tracing::info!(from = %old.id(), to = %me, links = self.links.len(),
            "identity rotation: new key current; switching every connection to it live");
        true
    }
}
