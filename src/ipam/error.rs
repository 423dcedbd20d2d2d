//! IPAM errors, by cause (STYLE.md "Errors"): what the peer sent, what
//! policy refuses, what the operator or CNI asked for, and the disk. Each
//! variant says whether state changed: none of them does.

use super::message::MessageError;
use super::range::AddrRange;
use super::ring::{GenesisId, RingError};
use super::space::KeyError;
use super::store::StateError;
use crate::id::PeerId;

/// An input the allocator refused (a message, a timer-driven step, an
/// operator command). State is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Malformed bytes from a peer: dropped and counted by the driver.
    #[error(transparent)]
    Malformed(#[from] MessageError),
    /// Well-formed ring that breaks the ownership rules (peer misbehaving).
    #[error("peer's ring refused: {0}")]
    Misbehaved(#[from] RingError),
    /// The peer's ring was initialised separately (DESIGN.md "Ring initialisation").
    #[error(
        "IPAM ring {ours} (this router) and ring {theirs} (peer {peer}) were initialised separately and cannot merge; \
         on the side with no pod allocations run `weft reset --state` and restart its routers, \
         or remove the other side's routers from this cluster with `weft rmpeer NAME`"
    )]
    GenesisMismatch {
        /// Our ring's genesis ID.
        ours: GenesisId,
        /// The peer's.
        theirs: GenesisId,
        /// Who sent it.
        peer: PeerId,
    },
    /// The peer runs another cluster range.
    #[error(
        "peer {peer} uses range {theirs}, this router uses {ours}; every router needs the same --ipalloc-range"
    )]
    RangeMismatch {
        /// Sender.
        peer: PeerId,
        /// Our range.
        ours: AddrRange,
        /// Theirs.
        theirs: AddrRange,
    },
    /// The state dir holds a ring for another range.
    #[error(
        "saved IPAM state is for range {saved}, but --ipalloc-range is {configured}; run `weft reset --state` to change it"
    )]
    RangeChanged {
        /// In the state dir.
        saved: AddrRange,
        /// On the command line.
        configured: AddrRange,
    },
    /// A state record that cannot be used.
    #[error("IPAM state: {0}")]
    State(#[from] StateError),
    /// A write to the store failed; the change was rolled back and nothing was sent.
    #[error("could not persist IPAM state: {0}")]
    Persist(#[source] std::io::Error),
    /// `rmpeer` of a router that is reachable (use force to override).
    #[error(
        "router {0} is reachable; refusing to reclaim its ranges (force it only if it is really gone)"
    )]
    PeerReachable(PeerId),
    /// `rmpeer` of this router itself.
    #[error("a router cannot reclaim its own ranges")]
    ReclaimSelf,
    /// The ring is not initialised yet.
    #[error("IPAM ring not ready yet")]
    NotReady,
    /// `leave` while pods still hold addresses here.
    #[error(
        "{0} pods still hold addresses on this router: drain the node first (kubectl drain), or pass --force to leave anyway"
    )]
    PodsRemain(u64),
    /// `leave` with no reachable router to take the ranges.
    #[error("no other router is reachable to take this router's ranges; connect it first")]
    NoHeir,
    /// This router's ID has been reclaimed by another router.
    #[error(
        "this router was reclaimed by {0} (rmpeer); it no longer owns any range: run `weft reset --state`"
    )]
    Tombstoned(PeerId),
}

/// Why an allocation or release was refused. Nothing changed.
///
/// Allocation never waits: when a donation is needed the allocator asks for
/// one and answers [`AllocError::TryAgain`] at once; the CNI plugin maps it
/// to CNI error code 11 ("try again later") and the runtime retries.
/// [`super::Event::RangeReceived`] tells the driver when space arrived.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// Malformed container ID or interface name.
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    /// Release of something never allocated.
    #[error("no address allocated to container {container_id} interface {ifname}")]
    NotFound {
        /// The container ID asked for.
        container_id: String,
        /// The interface asked for.
        ifname: String,
    },
    /// Not ready or out of space for now (a donation may be on its way).
    #[error("no address available yet ({0}); try again later")]
    TryAgain(String),
    /// This router's ID was reclaimed; it must not allocate.
    #[error(
        "this router was reclaimed by {0} (rmpeer) and must not allocate: run `weft reset --state`"
    )]
    Tombstoned(PeerId),
    /// The allocation could not be made durable; nothing was allocated.
    #[error("could not persist the allocation: {0}")]
    Persist(#[source] std::io::Error),
}

impl AllocError {
    /// The CNI error code for this error: 11 (try again later), 4 (invalid
    /// environment: bad container ID or interface), or 100 (plugin-specific).
    pub fn cni_code(&self) -> u32 {
        match self {
            Self::TryAgain(_) => 11,
            Self::InvalidKey(_) => 4,
            _ => 100,
        }
    }
}
