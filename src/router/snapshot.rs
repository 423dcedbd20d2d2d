//! The forwarding snapshot: everything a data-plane worker needs to move a
//! packet, immutable, built by the control task and swapped in whole
//! (`arc_swap`), so the hot path takes no lock and sees a consistent table.
//!
//! DESIGN.md "Who owns an address is who routes it": the sender looks the
//! destination up once (address → owner short ID) and relays forward by that
//! ID (short ID → next hop), never by their own view of the ranges.

use super::idmap::IdMap;
use super::packet::AddrKey;
use crate::crypto::data::DataKey;
use crate::id::ShortId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One range of the overlay owned by one router (inclusive bounds as
/// [`AddrKey`]s, so IPv4 and IPv6 ranges share one table; rebuilt from the
/// family-agnostic IPAM rings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnedRange {
    /// First address.
    pub start: AddrKey,
    /// Last address.
    pub end: AddrKey,
    /// The owner.
    pub owner: ShortId,
}

/// Keys to send to a direct neighbour.
#[derive(Clone, Debug)]
pub struct SendKeys {
    /// The session index the neighbour chose; goes into our headers.
    pub remote_index: u32,
    /// Our send key for that keyset.
    pub key: DataKey,
}

/// When we last heard an authenticated packet from a neighbour, shared
/// between the snapshot generations and the control task.
#[derive(Debug)]
pub struct Liveness {
    epoch: Instant,
    last_rx_ms: AtomicU64,
}

impl Liveness {
    /// A liveness cell counting milliseconds from `epoch`; never heard yet.
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            last_rx_ms: AtomicU64::new(0),
        }
    }

    /// Records an authenticated packet received at `now`.
    pub fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_rx_ms.fetch_max(ms.max(1), Ordering::Relaxed);
    }

    /// When the last authenticated packet arrived, if any.
    pub fn last_rx(&self) -> Option<Instant> {
        match self.last_rx_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.epoch + std::time::Duration::from_millis(ms)),
        }
    }
}

/// A direct neighbour.
#[derive(Clone, Debug)]
pub struct Link {
    /// Where its UDP packets go (learned from the handshake, then from
    /// authenticated packets: NAT-safe).
    pub endpoint: Option<SocketAddr>,
    /// Current send keys, if a session is up.
    pub send: Option<SendKeys>,
    /// Shared liveness cell.
    pub liveness: Arc<Liveness>,
}

/// A keyset we can receive under, found by the receiver index in the header.
#[derive(Clone, Debug)]
pub struct RecvSession {
    /// The neighbour that sends under it.
    pub peer: ShortId,
    /// The receive key.
    pub key: DataKey,
    /// True for a `next` keyset: the first packet under it confirms the switch.
    pub awaiting_confirmation: bool,
}

/// The whole table. Build with `SnapshotBuilder`.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// This router's short ID.
    pub me: ShortId,
    /// The overlay MTU: IPv4 inner packets larger than this are dropped.
    pub mtu: usize,
    /// The same for IPv6 inner packets: `mtu`, unless the cluster's is
    /// under IPv6's 1,280-byte minimum (`control::mtu`).
    pub mtu6: usize,
    owners: Vec<OwnedRange>,
    next_hops: IdMap<ShortId, ShortId>,
    links: IdMap<ShortId, Link>,
    sessions: IdMap<u32, RecvSession>,
    /// `(origin, neighbour)`: the neighbour lies on a shortest path from
    /// this router to the origin, so it may hand us the origin's packets.
    relays: IdMap<(ShortId, ShortId), ()>,
    /// Ranges their owner held until a few seconds ago (ring lag; see
    /// `control::attribution`). Read only when the current table says no.
    previous_owners: Vec<OwnedRange>,
}

impl Snapshot {
    /// A table for router `me` with nothing in it.
    pub fn new(me: ShortId, mtu: usize) -> Self {
        Self {
            me,
            mtu,
            mtu6: mtu,
            ..Self::default()
        }
    }

    /// The router that owns `addr`.
    pub fn owner_of(&self, addr: AddrKey) -> Option<ShortId> {
        let i = self.owners.partition_point(|r| r.start <= addr);
        let range = self.owners.get(i.checked_sub(1)?)?;
        (addr <= range.end).then_some(range.owner)
    }

    /// Whether `owner` may send from `addr`: it owns it now, or did until a
    /// few seconds ago. The inner-source check of every delivered packet.
    pub fn owned_by(&self, addr: AddrKey, owner: ShortId) -> bool {
        self.owner_of(addr) == Some(owner)
            || self
                .previous_owners
                .iter()
                .any(|r| r.owner == owner && r.start <= addr && addr <= r.end)
    }

    /// The neighbour to send to for destination router `dst`.
    pub fn next_hop(&self, dst: ShortId) -> Option<ShortId> {
        self.next_hops.get(&dst).copied()
    }

    /// A direct neighbour.
    pub fn link(&self, peer: ShortId) -> Option<&Link> {
        self.links.get(&peer)
    }

    /// The keyset named by a receiver index.
    pub fn session(&self, local_index: u32) -> Option<&RecvSession> {
        self.sessions.get(&local_index)
    }

    /// Whether neighbour `via` may relay packets that `origin` sent: a
    /// packet is attributed to its origin only when it comes from the
    /// origin itself or from a neighbour on a shortest path toward it
    /// (DESIGN.md "Security model"; the rule is in docs/ARCHITECTURE.md
    /// "Inner sources"). One hash lookup, no allocation.
    pub fn may_relay(&self, origin: ShortId, via: ShortId) -> bool {
        origin == via || self.relays.contains_key(&(origin, via))
    }

    /// Every direct neighbour.
    pub fn links_iter(&self) -> impl Iterator<Item = (&ShortId, &Link)> {
        self.links.iter()
    }

    /// The owned ranges, sorted.
    pub fn owners(&self) -> &[OwnedRange] {
        &self.owners
    }

    /// Replaces the ownership table (sorted and checked for overlap; an
    /// overlapping entry is dropped and reported).
    pub fn set_owners(&mut self, mut ranges: Vec<OwnedRange>) -> Vec<OwnedRange> {
        ranges.sort_by_key(|r| r.start);
        let mut kept: Vec<OwnedRange> = Vec::with_capacity(ranges.len());
        let mut refused = Vec::new();
        for r in ranges {
            let overlaps = kept.last().is_some_and(|last| r.start <= last.end);
            if r.start > r.end || overlaps {
                refused.push(r);
            } else {
                kept.push(r);
            }
        }
        self.owners = kept;
        refused
    }

    /// Ranges their owners held until just now: still accepted as inner
    /// sources from them ([`Snapshot::owned_by`]).
    pub fn set_previous_owners(&mut self, ranges: Vec<OwnedRange>) {
        self.previous_owners = ranges;
    }

    /// Sets the next hop toward `dst`.
    pub fn set_next_hop(&mut self, dst: ShortId, via: ShortId) {
        self.next_hops.insert(dst, via);
    }

    /// Adds or replaces a direct neighbour.
    pub fn set_link(&mut self, peer: ShortId, link: Link) {
        self.links.insert(peer, link);
    }

    /// Adds a receive keyset.
    pub fn add_session(&mut self, local_index: u32, session: RecvSession) {
        self.sessions.insert(local_index, session);
    }

    /// Lets neighbour `via` relay packets from `origin` (see
    /// [`Snapshot::may_relay`]).
    pub fn allow_relay(&mut self, origin: ShortId, via: ShortId) {
        self.relays.insert((origin, via), ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: AddrKey, end: AddrKey, owner: u16) -> OwnedRange {
        OwnedRange {
            start,
            end,
            owner: ShortId(owner),
        }
    }

    #[test]
    fn owner_lookup_respects_inclusive_bounds_and_gaps() {
        let mut snap = Snapshot::new(ShortId(1), 1420);
        let refused = snap.set_owners(vec![range(200, 299, 2), range(100, 149, 1)]);
        assert!(refused.is_empty());
        assert_eq!(snap.owner_of(99), None);
        assert_eq!(snap.owner_of(100), Some(ShortId(1)));
        assert_eq!(snap.owner_of(149), Some(ShortId(1)));
        assert_eq!(snap.owner_of(150), None);
        assert_eq!(snap.owner_of(299), Some(ShortId(2)));
        assert_eq!(snap.owner_of(300), None);
    }

    #[test]
    fn overlapping_ranges_are_refused_not_merged() {
        let mut snap = Snapshot::new(ShortId(1), 1420);
        let refused = snap.set_owners(vec![range(0, 10, 1), range(5, 20, 2), range(9, 3, 3)]);
        assert_eq!(refused.len(), 2);
        assert_eq!(snap.owner_of(7), Some(ShortId(1)));
    }

    #[test]
    fn liveness_records_the_latest_packet() {
        let epoch = Instant::now();
        let cell = Liveness::new(epoch);
        assert!(cell.last_rx().is_none());
        cell.touch(epoch + std::time::Duration::from_millis(500));
        cell.touch(epoch + std::time::Duration::from_millis(200));
        let seen = cell.last_rx().expect("touched");
        assert_eq!(seen.duration_since(epoch).as_millis(), 500);
    }
}
