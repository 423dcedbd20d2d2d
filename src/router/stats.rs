//! Data-plane counters: packets and bytes each way and drops by reason. Each
//! worker owns one `WorkerStats` and bumps it with relaxed atomics (no
//! contention: one writer); status and metrics sum over workers ([`sum`]).

pub use crate::api::proto::DataplaneTotals;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why the data plane dropped a packet. `as_str` is the metric label and the
/// key in `weft status --json` `.dataplane.dropped`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Authentication tag did not verify.
    BadTag,
    /// The header was not ours (version, type) or too short.
    BadHeader,
    /// The destination address is owned by no known router.
    NoRoute,
    /// No usable keys for the next hop yet.
    NoSession,
    /// The inner packet was neither IPv4 nor IPv6.
    NotIp,
    /// The inner source address is not in the sending router's ranges.
    SpoofedSource,
    /// The counter was seen before or is older than the window.
    Replay,
    /// The receiver index names no keyset we hold.
    UnknownSession,
    /// Hop limit reached zero.
    HopLimit,
    /// The packet's destination is owned by this router but came from the TUN.
    OwnedLocally,
    /// The packet is too big for the overlay MTU.
    TooBig,
    /// A send or write failed (buffer full, host unreachable).
    IoError,
    /// A TUN read whose virtio header does not match the packet.
    BadSegment,
    /// A TCP packet dropped to drain a standing queue (`aqm`).
    Aqm,
    /// A datagram of a lane another worker owns (merged into this worker's
    /// GRO train): its replay window lives there, not here.
    ForeignLane,
    /// Relayed by a neighbour that is on no shortest path from the router
    /// it claims the packet came from.
    ImplausibleRelay,
}

impl DropReason {
    /// Every reason, in a fixed order (the index of the counter array).
    pub const ALL: [Self; 16] = [
        Self::BadTag,
        Self::BadHeader,
        Self::NoRoute,
        Self::NoSession,
        Self::NotIp,
        Self::SpoofedSource,
        Self::Replay,
        Self::UnknownSession,
        Self::HopLimit,
        Self::OwnedLocally,
        Self::TooBig,
        Self::IoError,
        Self::BadSegment,
        Self::Aqm,
        Self::ForeignLane,
        Self::ImplausibleRelay,
    ];

    /// The label used in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadTag => "bad_tag",
            Self::BadHeader => "bad_header",
            Self::NoRoute => "no_route",
            Self::NoSession => "no_session",
            Self::NotIp => "not_ip",
            Self::SpoofedSource => "spoofed_source",
            Self::Replay => "replay",
            Self::UnknownSession => "unknown_session",
            Self::HopLimit => "hop_limit",
            Self::OwnedLocally => "owned_locally",
            Self::TooBig => "too_big",
            Self::IoError => "io_error",
            Self::BadSegment => "bad_segment",
            Self::Aqm => "aqm",
            Self::ForeignLane => "foreign_lane",
            Self::ImplausibleRelay => "implausible_relay",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One worker's counters.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Packets received from peers and written to the TUN (or relayed).
    pub packets_in: AtomicU64,
    /// Packets read from the TUN and sent to peers (or relayed).
    pub packets_out: AtomicU64,
    /// Inner bytes of `packets_in`.
    pub bytes_in: AtomicU64,
    /// Inner bytes of `packets_out`.
    pub bytes_out: AtomicU64,
    /// The IPv6 share of `packets_in` (the rest is IPv4).
    pub packets_in6: AtomicU64,
    /// The IPv6 share of `packets_out`.
    pub packets_out6: AtomicU64,
    /// The IPv6 share of `bytes_in`.
    pub bytes_in6: AtomicU64,
    /// The IPv6 share of `bytes_out`.
    pub bytes_out6: AtomicU64,
    /// Packets relayed for other routers.
    pub forwarded: AtomicU64,
    /// ICMP "fragmentation needed" replies written to the TUN for packets
    /// over the overlay MTU (`icmp`).
    pub too_big_replies: AtomicU64,
    /// 1 while the worker runs in the real-time class (`priority`).
    pub realtime: AtomicU64,
    /// Times the worker left the real-time class after working for
    /// `priority::BUSY_LIMIT` without a break (a saturated data plane).
    pub busy_step_downs: AtomicU64,
    /// Reports for the control task dropped because its queue was full.
    pub events_dropped: AtomicU64,
    /// Inner TCP/IPv4 segments written to the TUN inside super-packets.
    pub coalesced_v4: AtomicU64,
    /// Inner TCP/IPv6 segments written to the TUN inside super-packets.
    pub coalesced_v6: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// The IPv4 and IPv6 shares of `dropped`, where the family is known.
    dropped_by_family: [[AtomicU64; DropReason::ALL.len()]; 2],
}

/// The inner packet's family, for the drops that can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family an IP packet's first byte names, if either.
    pub fn of(packet: &[u8]) -> Option<Self> {
        match packet.first()? >> 4 {
            4 => Some(Self::V4),
            6 => Some(Self::V6),
            _ => None,
        }
    }

    /// `ipv6` as the parsers report it.
    pub fn from_ipv6(ipv6: bool) -> Self {
        if ipv6 { Self::V6 } else { Self::V4 }
    }

    fn index(self) -> usize {
        match self {
            Self::V4 => 0,
            Self::V6 => 1,
        }
    }
}

impl WorkerStats {
    /// Counts one drop.
    pub fn count_drop(&self, reason: DropReason) {
        self.dropped[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one drop of a packet of `family` (in the total too).
    pub fn count_drop_of(&self, reason: DropReason, family: Option<Family>) {
        self.count_drop(reason);
        if let Some(family) = family {
            self.dropped_by_family[family.index()][reason.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops so far for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].load(Ordering::Relaxed)
    }

    /// Drops so far for `reason` of packets of `family`.
    pub fn dropped_of(&self, reason: DropReason, family: Family) -> u64 {
        self.dropped_by_family[family.index()][reason.index()].load(Ordering::Relaxed)
    }

    /// Adds to a counter (one writer; relaxed is enough for statistics).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Sums the given workers' counters into the status type (the API crate
/// owns [`DataplaneTotals`]; this is the one place that fills it).
pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerStats>) -> DataplaneTotals {
    let mut totals = DataplaneTotals::default();
    for w in workers {
        totals.packets_in += w.packets_in.load(Ordering::Relaxed);
        totals.packets_out += w.packets_out.load(Ordering::Relaxed);
        totals.bytes_in += w.bytes_in.load(Ordering::Relaxed);
        totals.bytes_out += w.bytes_out.load(Ordering::Relaxed);
        totals.packets_in6 += w.packets_in6.load(Ordering::Relaxed);
        totals.packets_out6 += w.packets_out6.load(Ordering::Relaxed);
        totals.bytes_in6 += w.bytes_in6.load(Ordering::Relaxed);
        totals.bytes_out6 += w.bytes_out6.load(Ordering::Relaxed);
        totals.forwarded += w.forwarded.load(Ordering::Relaxed);
        totals.too_big_replies += w.too_big_replies.load(Ordering::Relaxed);
        totals.realtime_workers += w.realtime.load(Ordering::Relaxed);
        totals.busy_step_downs += w.busy_step_downs.load(Ordering::Relaxed);
        totals.events_dropped += w.events_dropped.load(Ordering::Relaxed);
        totals.coalesced_v4 += w.coalesced_v4.load(Ordering::Relaxed);
        totals.coalesced_v6 += w.coalesced_v6.load(Ordering::Relaxed);
        for reason in DropReason::ALL {
            let label = reason.as_str();
            for (map, n) in [
                (&mut totals.dropped, w.dropped(reason)),
                (&mut totals.dropped4, w.dropped_of(reason, Family::V4)),
                (&mut totals.dropped6, w.dropped_of(reason, Family::V6)),
            ] {
                if n > 0 {
                    *map.entry(label.to_string()).or_default() += n;
                }
            }
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_workers_and_omit_unseen_reasons() {
        let a = WorkerStats::default();
        let b = WorkerStats::default();
        a.count_drop(DropReason::Replay);
        b.count_drop(DropReason::Replay);
        b.count_drop(DropReason::BadTag);
        WorkerStats::add(&a.packets_in, 3);
        WorkerStats::add(&b.packets_in, 2);
        WorkerStats::add(&b.packets_in6, 2);
        let totals = sum([&a, &b]);
        assert_eq!(totals.packets_in, 5);
        assert_eq!(totals.packets_in6, 2);
        assert_eq!(totals.dropped.get("replay"), Some(&2));
        assert_eq!(totals.dropped.get("bad_tag"), Some(&1));
        assert!(!totals.dropped.contains_key("no_route"));
    }

    #[test]
    fn drops_of_a_known_family_count_in_the_total_and_in_that_familys_share() {
        let a = WorkerStats::default();
        let b = WorkerStats::default();
        a.count_drop_of(DropReason::SpoofedSource, Some(Family::V6));
        b.count_drop_of(DropReason::SpoofedSource, Some(Family::V6));
        b.count_drop_of(DropReason::SpoofedSource, Some(Family::V4));
        b.count_drop_of(DropReason::TooBig, Some(Family::V4));
        a.count_drop_of(DropReason::BadTag, None);
        let totals = sum([&a, &b]);
        assert_eq!(totals.dropped.get("spoofed_source"), Some(&3));
        assert_eq!(totals.dropped6.get("spoofed_source"), Some(&2));
        assert_eq!(totals.dropped4.get("spoofed_source"), Some(&1));
        assert_eq!(totals.dropped4.get("too_big"), Some(&1));
        assert!(!totals.dropped6.contains_key("too_big"));
        assert_eq!(totals.dropped.get("bad_tag"), Some(&1));
        assert!(!totals.dropped4.contains_key("bad_tag"));
        assert!(!totals.dropped6.contains_key("bad_tag"));
    }

    #[test]
    fn the_family_is_the_first_nibble() {
        assert_eq!(Family::of(&[0x45, 0]), Some(Family::V4));
        assert_eq!(Family::of(&[0x60]), Some(Family::V6));
        assert_eq!(Family::of(&[0x00]), None);
        assert_eq!(Family::of(&[]), None);
        assert_eq!(Family::from_ipv6(true), Family::V6);
    }

    #[test]
    fn every_reason_has_a_distinct_label_at_its_index() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }
}
