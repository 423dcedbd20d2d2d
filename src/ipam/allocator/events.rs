//! What the allocator hands its driver besides replies: where a message
//! goes ([`Destination`]), why its one timer is armed ([`Timer`]), and
//! events and alarms for the log and the operator ([`Event`], [`Alarm`]).

use crate::id::PeerId;
use crate::ipam::ring::GenesisId;

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// One peer.
    Peer(PeerId),
    /// Everyone, over the gossip channel.
    Broadcast,
    /// Every neighbour whose negotiated ring version (the highest both
    /// handshakes' ring ranges contain) is in `min..=max`: the periodic
    /// digest goes to those that read it, the full ring to the others
    /// (DESIGN.md "Wire rules": a mixed-version cluster keeps working).
    Neighbours {
        /// Lowest negotiated version included.
        min: u8,
        /// Highest negotiated version included.
        max: u8,
    },
    /// One peer, if its negotiated ring version is at least `min` (a
    /// message type older peers do not read); else nobody.
    PeerSpeaking {
        /// The peer.
        peer: PeerId,
        /// Lowest negotiated version it must speak.
        min: u8,
    },
}

/// Why the timer is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Next anti-entropy broadcast (or proposal).
    Gossip,
    /// A donation request times out.
    Donation,
}

/// Something the operator or the driver should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The ring is known (initialised, learned or loaded).
    RingReady {
        /// Its genesis ID.
        genesis: GenesisId,
    },
    /// A donation arrived (and is persisted): pending CNI ADDs may retry.
    RangeReceived {
        /// The donor.
        from: PeerId,
        /// How many addresses.
        addresses: u128,
    },
    /// This router donated addresses.
    RangeDonated {
        /// The recipient.
        to: PeerId,
        /// How many.
        addresses: u128,
    },
    /// A peer's donation request was refused by the drain limits
    /// (`donation.rs`); nothing changed. The driver counts it by reason.
    DonationRefused {
        /// Who asked.
        requester: PeerId,
        /// Which limit.
        reason: DonationRefusal,
    },
    /// A peer's ring was merged with version jumps over other routers'
    /// ranges that came without a title proving their writer's right (the
    /// peer sends none, ring version below 6, or the title was lost on the
    /// way; `ring/title.rs`). The driver counts them as
    /// `jump_without_title`, so an operator sees when the last such peer
    /// is gone.
    JumpsWithoutTitle {
        /// The sender.
        from: PeerId,
        /// How many entries.
        count: u64,
    },
    /// This router now requires titles of every member's jumps, whatever
    /// version its connection negotiated: a peer's ring of our genesis
    /// carried the latch (`titles_latch.rs`).
    TitlesRequired {
        /// The peer.
        from: PeerId,
        /// The latch is on disk (else only in memory until the next save).
        saved: bool,
    },
    /// `rmpeer` (or a follow-up) took over a dead router's ranges.
    Reclaimed {
        /// The dead router.
        dead: PeerId,
        /// How many addresses.
        addresses: u128,
    },
    /// This router held no pods and yielded to a ring initialised
    /// elsewhere; its node address is gone and must be allocated again.
    RingReplaced {
        /// The abandoned ring.
        old: GenesisId,
        /// The ring joined.
        new: GenesisId,
    },
    /// Who owns which range changed in a merged ring, ours or anyone's (a
    /// donation between two other routers, say): the driver rebuilds its
    /// routes and its inner-source checks at once, not at the next
    /// unrelated change.
    OwnersChanged,
    /// Something the operator must look at.
    Alarm(Alarm),
}

/// Operator-visible problems (logged at error level by the driver).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Alarm {
    /// This router's ID was reclaimed: it stopped allocating.
    Tombstoned {
        /// Who reclaimed it.
        reclaimer: PeerId,
    },
    /// A range holding allocations now belongs to someone else.
    OwnershipLost {
        /// Allocations inside the lost range.
        addresses_in_use: u64,
    },
    /// A peer's ring was initialised separately.
    GenesisMismatch {
        /// Ours.
        ours: GenesisId,
        /// Theirs.
        theirs: GenesisId,
        /// The peer.
        peer: PeerId,
    },
    /// A peer names a different voter set (or range); no initialisation with it.
    VoterSetMismatch {
        /// The peer.
        peer: PeerId,
    },
}

/// Which donation limit refused a request (`donation.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DonationRefusal {
    /// A second request within the donation interval: not answered.
    RateLimited,
    /// The requester's budget for the window is spent: answered with the
    /// ring, nothing given.
    OverBudget,
}

impl DonationRefusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "donation_rate_limited",
            Self::OverBudget => "donation_over_budget",
        }
    }
}
