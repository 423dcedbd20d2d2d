//! `weft rotate-identity` in the control loop (issue 20, steps 2, 3 and 6;
//! docs/ARCHITECTURE.md "Identity key rotation"): persist the new key and
//! its announcement, hand the ranges over, then restart under the new key.
//! The start that follows finds `identity.next` with the hand-over written
//! and completes the rotation (`daemon::resume_rotation`): the new key
//! becomes `identity.key`, and the topology entry carries the announcement
//! and the old short ID while the old ID's tombstone retires it.

use super::{Control, ROTATE_GRACE};
use crate::api::proto::{ErrorCode, Reply, Rotated};
use crate::crypto::identity_next::{self, Pending};
use std::time::Instant;

impl Control {
    /// Starts a rotation; the router restarts [`ROTATE_GRACE`] later (time
    /// for the ring hand-over to reach the peers).
    pub(super) fn rotate_identity(&mut self, now: Instant) -> Reply {
        if self.rotating.is_some() || self.leaving.is_some() {
            return Reply::err(
                ErrorCode::Refused,
                "the router is already restarting (a rotation or a leave is under way)",
            );
        }
        let old = self.context.identity.load_full();
        let issued = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
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
        if let Some(ipam6) = self.ipam6.as_mut()
            && let Err(e) = ipam6.rotate(&pending.identity, now)
        {
            // The IPv4 ring went over already: the restart finishes the
            // IPv6 store's hand-over when it opens it.
            tracing::warn!(error = %format!("{e:#}"), "the IPv6 ring's hand-over failed; the restart completes it");
        }
        self.drive_ipam(now);
        let (old_id, new_id) = (old.id(), pending.identity.id());
        tracing::info!(from = %old_id, to = %new_id, restart_in = ?ROTATE_GRACE,
            "identity rotation: new key written and ranges handed over; restarting under the new key");
        self.rotating = Some(now + ROTATE_GRACE);
        match serde_json::to_value(Rotated {
            old: old_id.to_string(),
            new: new_id.to_string(),
        }) {
            Ok(value) => Reply::ok(value),
            Err(e) => Reply::err(ErrorCode::Internal, e.to_string()),
        }
    }
}
