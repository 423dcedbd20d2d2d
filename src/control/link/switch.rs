//! The live identity switch (issue 20; docs/ARCHITECTURE.md "Identity key
//! rotation"): the rotating side replaces its static key on a live link
//! and rekeys under the new one with the announcement in its rekey hello;
//! the peer accepts that rekey only when the announcement hands the link's
//! key over to the rekey's key, and then names the link's peer by the new
//! ID. Keysets, counters and the TCP stream carry on.
//!
//! **Who leads while IDs move.** The lower-ID rule decides which of two
//! simultaneous rekeys wins. Both ends keep the IDs they agreed on until
//! the rekey that carries the announcement completes on their side: the
//! rotating side leads by its old ID until then ([`Switch::old_me`]), the
//! peer names it by the old ID until it accepts that rekey. Neither side
//! starts a second rekey while one is in progress, and the TCP stream is
//! ordered, so no rekey can start on one side under the new IDs and meet
//! one under the old IDs on the other.

use super::{
    ControlLink, LinkError, LinkEvent, Phase, Records, Stop, SwitchOutcome, queue_records,
};
use crate::control::proto::ControlMessage;
use crate::crypto::identity::Identity;
use crate::crypto::rotation::Rotation;
use crate::id::PeerId;
use std::time::{Duration, Instant};

/// Our switch in progress.
#[derive(Debug)]
pub(super) struct Switch {
    /// The announcement every rekey hello carries until the switch ends.
    pub(super) rotation: Rotation,
    /// Our ID before the switch: the lower-ID rule's until it completes.
    pub(super) old_me: PeerId,
    /// The wall clock at the switch (`at`), for a rekey started later
    /// without one (after a rekey in progress under the old key ends).
    pub(super) wall_clock: Duration,
    pub(super) at: Instant,
}

/// The peer's move to a successor key, checked, not yet applied.
pub(super) struct Moved {
    old: PeerId,
    new: PeerId,
    rotation: Rotation,
}

impl ControlLink {
    /// Switches this link to `identity`, the successor `rotation` names
    /// for our current key (issue 20): handshakes from now on use it, and
    /// a rekey carrying the announcement starts at once (after the rekey
    /// in progress, if any; or as our answer to the peer's next). A peer
    /// whose build cannot follow is sent `Close` instead
    /// ([`SwitchOutcome::Closed`]). Refused, with no change, before the
    /// link is up, while an earlier switch is incomplete, or when
    /// `rotation` does not verify or move our key to `identity`.
    pub fn switch_identity(
        &mut self,
        now: Instant,
        wall_clock: Duration,
        identity: Identity,
        rotation: Rotation,
    ) -> Result<SwitchOutcome, LinkError> {
        if self.switch.is_some() {
            return Err(LinkError::SwitchRefused(
                "an earlier switch has not completed",
            ));
        }
        if rotation.old != self.config.identity.public_key()
            || rotation.new != identity.public_key()
            || rotation.verify().is_err()
        {
            return Err(LinkError::SwitchRefused(
                "the announcement does not move this link's key to the new one",
            ));
        }
        let Phase::Up(records) = &self.phase else {
            return Err(LinkError::NotEstablished);
        };
        if !records.live_rotation {
            tracing::info!(peer = %records.peer, "identity key rotated; the peer's build cannot follow a live switch: closing the link to be re-dialled");
            self.close("identity key rotated; re-dial under the new key");
            return Ok(SwitchOutcome::Closed);
        }
        self.with_records(|link, records| {
            link.switch = Some(Switch {
                rotation,
                old_me: link.me,
                wall_clock,
                at: now,
            });
            link.me = identity.id();
            link.config.identity = identity;
            link.start_rekey(records, now, wall_clock)
        })?;
        Ok(SwitchOutcome::Switching)
    }

    /// Whether our switch waits for its rekey to complete.
    pub fn is_switching(&self) -> bool {
        self.switch.is_some()
    }

    /// Our ID: the new one from the moment of a switch.
    pub fn me(&self) -> PeerId {
        self.me
    }

    /// The peer's ID once the link is up (it follows the peer's switch).
    pub fn peer(&self) -> Option<PeerId> {
        match &self.phase {
            Phase::Up(records) => Some(records.peer),
            _ => None,
        }
    }

    /// The lower-ID rule on this link (see the module docs).
    pub(super) fn leads(&self, peer: PeerId) -> bool {
        self.switch
            .as_ref()
            .map_or(self.me, |switch| switch.old_me)
            .leads(peer)
    }

    /// The announcement a rekey hello carries.
    pub(super) fn rotation_for(&self, switching: bool) -> Option<&Rotation> {
        self.switch
            .as_ref()
            .filter(|_| switching)
            .map(|switch| &switch.rotation)
    }

    /// Checks a rekey's static key `remote` against the link's peer: the
    /// same key, or the verified successor of the link's key (the peer's
    /// switch). Anything else is refused: another key without an
    /// announcement as before, one with a bad announcement with a `Close`.
    pub(super) fn check_rekey_key(
        &mut self,
        records: &mut Records,
        remote: Option<[u8; 32]>,
        rotation: Option<Rotation>,
    ) -> Result<Option<Moved>, Stop> {
        let Some(remote) = remote else {
            return Err(LinkError::RekeyUnderOtherKey.into());
        };
        if remote == records.peer_key {
            return Ok(None);
        }
        let Some(rotation) = rotation else {
            return Err(LinkError::RekeyUnderOtherKey.into());
        };
        let why = match rotation.verify() {
            Err(_) => "does not verify",
            Ok(_) if rotation.old != records.peer_key => "names another old key",
            Ok(_) if rotation.new != remote => "names another new key",
            Ok((old, new)) => return Ok(Some(Moved { old, new, rotation })),
        };
        tracing::warn!(peer = %records.peer, reason = why, "rekey under a new key refused; closing");
        let close = ControlMessage::Close {
            reason: format!("rekey refused: the identity announcement {why}"),
        };
        queue_records(&mut self.transmit, records, &close);
        Err(LinkError::BadRotation(why).into())
    }

    /// Applies a checked move: the link names the peer by its new ID.
    pub(super) fn apply_move(&mut self, records: &mut Records, moved: Moved) {
        tracing::info!(old = %moved.old, new = %moved.new, "peer switched its identity key on a live link");
        records.peer = moved.new;
        records.peer_key = moved.rotation.new;
        self.events.push_back(LinkEvent::PeerRotated {
            old: moved.old,
            new: moved.new,
            rotation: moved.rotation,
        });
    }

    /// A rekey completed under the new key: our switch is complete.
    pub(super) fn end_switch(&mut self) {
        self.switch = None;
        self.events.push_back(LinkEvent::IdentitySwitched);
    }

    /// A rekey under the old key completed while our switch waited for it:
    /// the switch's own rekey starts now.
    pub(super) fn start_waiting_switch(
        &mut self,
        records: &mut Records,
        now: Instant,
    ) -> Result<(), Stop> {
        let Some(switch) = &self.switch else {
            return Ok(());
        };
        let wall_clock = switch.wall_clock + now.saturating_duration_since(switch.at);
        self.start_rekey(records, now, wall_clock)
    }
}
