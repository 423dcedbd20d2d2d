//! Where the allocator stands, as `weft status` shows it (DESIGN.md
//! "Operator contract", the `ipam` object): the phase, the owned and
//! allocatable ranges, the free and unreachable shares. Read-only.

use super::{Allocator, Init, span};
use crate::ipam::store::Store;
use serde::Serialize;
use std::net::IpAddr;
use std::time::Instant;

/// Where the allocator stands (status `ipam.state`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// A voter waiting for a majority of voters with the same voter set.
    WaitingForVoters {
        /// Voters seen proposing the same ballot (this router included).
        agreed: usize,
        /// Voters seen locking it (this router included once it has).
        locked: usize,
        /// Voter slots (the seed list); the quorum is a majority of them.
        slots: usize,
        /// Majority needed.
        quorum: usize,
        /// Peers whose voter set or range differs.
        mismatched: Vec<String>,
    },
    /// Not a voter (or cannot vote): waiting to learn the ring.
    WaitingForRing,
    /// The ring is known; allocation works.
    Ready,
    /// A peer's ring has another genesis; see the log for the fix.
    Conflict {
        /// Our genesis.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// This router was reclaimed; it allocates nothing.
    Tombstoned {
        /// By whom.
        reclaimer: String,
    },
}

/// An inclusive address range, as `weft status` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OwnedRange {
    /// First address.
    pub start: IpAddr,
    /// Last address.
    pub end: IpAddr,
}

/// The `ipam` object of `weft status --json` (DESIGN.md "Operator contract").
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// The cluster range.
    pub range: String,
    /// Where the allocator stands.
    pub state: Phase,
    /// Genesis ID of the ring, when known.
    pub genesis: Option<String>,
    /// Ranges this router owns.
    pub owned_ranges: Vec<OwnedRange>,
    /// Addresses in them.
    pub owned_addresses: u128,
    /// Addresses handed out (node address included).
    pub allocated: u64,
    /// Addresses that can be handed out now (quarantine and reserved excluded).
    pub free: u128,
    /// Routers owning part of the ring.
    pub ring_peers: usize,
    /// Share (0..=1) of the range owned by routers not in the reachability set.
    pub unreachable_share: f64,
}

impl<S: Store> Allocator<S> {
    /// This router's ranges it may allocate from now (quarantine excluded).
    pub fn allocatable_ranges(&self, now: Instant) -> Vec<(IpAddr, IpAddr)> {
        self.allocatable(now)
            .into_iter()
            .filter_map(|(a, b)| Some((self.addr(a)?, self.addr(b)?)))
            .collect()
    }

    /// Where the allocator stands.
    pub fn phase(&self) -> Phase {
        if let Some(by) = self.tombstoned {
            return Phase::Tombstoned {
                reclaimer: by.to_string(),
            };
        }
        if let Some((ours, theirs)) = self.conflict {
            return Phase::Conflict {
                ours: ours.to_string(),
                theirs: theirs.to_string(),
            };
        }
        if self.ring.is_some() {
            return Phase::Ready;
        }
        let mismatched = self.mismatched.iter().map(ToString::to_string).collect();
        match &self.cfg.init {
            Init::Voters(_) if self.may_vote => Phase::WaitingForVoters {
                agreed: self.agreed_count(),
                locked: self.locked_count(),
                slots: self.slots,
                quorum: self.quorum(),
                mismatched,
            },
            _ => Phase::WaitingForRing,
        }
    }

    /// The status numbers (DESIGN.md `ipam` object).
    pub fn status(&self, now: Instant) -> Status {
        let owned_ranges = self
            .mine
            .iter()
            .filter_map(|(a, b)| {
                Some(OwnedRange {
                    start: self.addr(*a)?,
                    end: self.addr(*b)?,
                })
            })
            .collect();
        let (ring_peers, unreachable) = match &self.ring {
            Some(ring) => {
                let mut unreachable = 0u128;
                for owner in ring.owners() {
                    if owner != self.cfg.me && !self.reachable.contains(&owner) {
                        unreachable += span(&ring.ranges_of(owner));
                    }
                }
                (ring.owners().len(), unreachable)
            }
            None => (0, 0),
        };
        Status {
            range: self.cfg.range.to_string(),
            state: self.phase(),
            genesis: self.ring.as_ref().map(|r| r.genesis_id().to_string()),
            owned_ranges,
            owned_addresses: span(&self.mine),
            allocated: self.allocs.len() as u64,
            free: self.free(now),
            ring_peers,
            unreachable_share: unreachable as f64 / self.cfg.range.size() as f64,
        }
    }

    /// When the last quarantine ends, if one is active (the simulator keeps
    /// partitions away until then, as an operator keeps `rmpeer` away from them).
    pub fn quarantined_until(&self, now: Instant) -> Option<Instant> {
        self.quarantine
            .iter()
            .map(|q| q.2)
            .filter(|until| *until > now)
            .max()
    }
}
