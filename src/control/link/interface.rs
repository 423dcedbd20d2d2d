//! What the driver gives a [`ControlLink`](super::ControlLink) and gets
//! back from it: the config, the session-index source, the events and the timers.

use super::LinkError;
use crate::control::proto::{ControlMessage, Hello};
use crate::crypto::data::DataKey;
use crate::crypto::handshake::Msg1Stamp;
use crate::crypto::identity::Identity;
use crate::crypto::rotation::Rotation;
use crate::crypto::secret::ClusterSecrets;
use crate::id::PeerId;
use std::fmt;
use std::time::Duration;

/// Time allowed for a whole handshake (DESIGN.md: 10 s to finish).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a rekey handshake; after it the current keys stay.
pub const REKEY_TIMEOUT: Duration = HANDSHAKE_TIMEOUT;
/// What the driver reads at most per call once message 1 is through.
pub const READ_CHUNK: usize = 16 * 1024;

/// Hands out receiver indices: 24 bits, never 0, unique among the live
/// keysets of this router (shared by all its links, hence lent by the driver).
pub trait SessionIndices: Send {
    /// The next fresh index.
    fn next_index(&mut self) -> u32;
}

/// What a link needs to know about this router.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Our static identity.
    pub identity: Identity,
    /// The cluster secrets (the driver refreshes them with
    /// [`ControlLink::set_secrets`](super::ControlLink::set_secrets) when
    /// the file is reloaded).
    pub secrets: ClusterSecrets,
    /// The Noise prologue (binds the cluster range).
    pub prologue: Vec<u8>,
    /// Our hello; `session_index` is filled per handshake.
    pub hello: Hello,
    /// Draws the ephemeral keys from this seed instead of the OS RNG
    /// (simulator and tests only).
    pub seed: Option<u64>,
}

/// UDP keys from one handshake, with the indices that name them.
#[derive(Debug)]
pub struct NewKeys {
    /// Our receiver index for this keyset.
    pub local_index: u32,
    /// The peer's receiver index for it.
    pub remote_index: u32,
    /// Our UDP send key.
    pub send: DataKey,
    /// Our UDP receive key.
    pub recv: DataKey,
    /// Whether we were the handshake's initiator.
    pub initiator: bool,
}

/// The peer of a link whose first handshake completed.
#[derive(Debug)]
pub struct Established {
    /// The peer's ID (from its static key).
    pub peer: PeerId,
    /// The peer's static public key.
    pub public_key: [u8; 32],
    /// What the peer said about itself.
    pub hello: Hello,
    /// The UDP keys.
    pub keys: NewKeys,
}

/// Who closed a link in order, and the reason given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// We sent `Close` ([`ControlLink::close`](super::ControlLink::close)).
    ByUs(String),
    /// The peer sent `Close`.
    ByPeer(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ByUs(reason) => write!(f, "closed: {reason}"),
            Self::ByPeer(reason) => write!(f, "peer closed: {reason}"),
        }
    }
}

/// What the link reports, in order.
#[derive(Debug)]
pub enum LinkEvent {
    /// Responder only: message 1 authenticated. Check the stamp against the
    /// replay guard and answer with
    /// [`ControlLink::admit_msg1`](super::ControlLink::admit_msg1).
    Msg1Authenticated {
        /// Its time and ephemeral key.
        stamp: Msg1Stamp,
    },
    /// The first handshake completed.
    Up(Established),
    /// A rekey handshake completed: new UDP keys.
    Rekeyed(NewKeys),
    /// The peer switched its static key live (issue 20): a rekey under the
    /// key `rotation` names as the successor of the link's key, verified.
    /// The link now names the peer `new`; reported before the rekey's
    /// [`LinkEvent::Rekeyed`]. For the registry
    /// (`Peers::rekey_in_place`) and the table of retired keys.
    PeerRotated {
        /// The ID the link knew the peer by.
        old: PeerId,
        /// Its ID from now on.
        new: PeerId,
        /// The announcement it carried.
        rotation: Rotation,
    },
    /// Our own switch
    /// ([`ControlLink::switch_identity`](super::ControlLink::switch_identity))
    /// completed: a rekey under the new key finished, so the peer knows us
    /// by it (reported before that rekey's [`LinkEvent::Rekeyed`]).
    IdentitySwitched,
    /// A control message for the control task.
    Message(ControlMessage),
    /// The link ended in order (final).
    Closed(CloseReason),
    /// The link failed (final).
    Failed(LinkError),
}

/// Why the link wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The handshake's deadline.
    Handshake = 0,
    /// The rekey in progress's deadline.
    Rekey = 1,
    /// The oldest record key in use reaches [`REJECT_AFTER`](super::REJECT_AFTER).
    KeyExpiry = 2,
}

/// What [`ControlLink::switch_identity`](super::ControlLink::switch_identity) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchOutcome {
    /// The link runs under the new key: a rekey carrying the announcement
    /// started (or starts once the one in progress ends, or answers the
    /// peer's next); [`LinkEvent::IdentitySwitched`] follows.
    Switching,
    /// The peer's build cannot follow a live switch (control version below
    /// [`CONTROL_LIVE_ROTATION_VERSION`](crate::control::proto::CONTROL_LIVE_ROTATION_VERSION)):
    /// the link sent `Close` and ended, to be re-dialled under the new key.
    Closed,
}
