//! One data-plane worker's per-packet protocol, without I/O (DESIGN.md
//! "Keys and sessions" → "Lanes", "The fast data path"): the worker owns
//! exactly one lane, and this is that lane's state and rules.
//!
//! Owns: the lane's send counters (one per send key), its replay windows
//! (one per receive key and sender lane this worker owns), and what it has
//! already told the control task (endpoints, confirmed keysets). Counters
//! and windows are keyed by the key's identity ([`KeyId`]), not by a
//! receiver index or short ID, and live exactly as long as the key does:
//! a republish, a short-ID clash or a reused receiver index can neither
//! restart a live key's counter (a nonce reused) nor reset its window (a
//! replay accepted) — issue 15, defect 2. Decides,
//! for every received datagram, the [`Verdict`]: deliver to our pods, relay
//! toward another router, hand to the control task, or discard for a
//! [`Discard`] reason; for every packet read from the TUN, its route
//! ([`route_from_tun`]); and, for every packet to send, the next hop, keys,
//! endpoint and counters ([`Lane::sealer`]). Does not own: sockets, the
//! TUN, buffers, batching, statistics or logs (the worker's loop), the
//! forwarding snapshot (read, never written, except for the shared
//! liveness cell), or the framing itself (`datagram`).
//!
//! Method kinds, in the shape of the other cores:
//! - input: [`Lane::handle_datagram`] (a datagram, its source and `now` →
//!   a verdict), [`Lane::handle_snapshot`] (a new snapshot generation);
//! - command: [`Lane::sealer`] (reserve counters toward a destination);
//! - output: [`Lane::poll_event`] — drain it after each receive batch;
//!   events are rare (once per keyset or endpoint change), never per packet.
//!
//! Nothing here allocates or locks per packet: the maps are keyed by small
//! integers (`idmap`), and a window is created once per keyset and lane,
//! when its first packet authenticated, and a counter once per send key.
//!
//! Lanes and workers (DESIGN.md "Lanes"): the receiver's reuseport program
//! steers sender lane `l` to worker `l % workers`, but all of a sender's
//! lanes share one 4-tuple, so UDP GRO may merge datagrams of several lanes
//! into one train, steered by its first. A segment of a lane this worker
//! does not own is dropped as [`Discard::ForeignLane`] before any lookup:
//! each (key, lane) window exists in exactly one worker, so a datagram
//! replayed to every socket is accepted at most once. Lanes with their own
//! source ports (so GRO never mixes them) are left for the multi-cloud
//! work, which owns how endpoints behind NAT are learned.

use super::datagram::{Datagram, OpenError, seal_datagram};
use super::idmap::IdMap;
use super::packet::{self, DataHeader, PacketType};
use super::snapshot::Snapshot;
use super::stats::DropReason;
use crate::crypto::data::{COUNTER_LIMIT, DataKey, KeyId, KeyLife};
use crate::crypto::replay::ReplayWindow;
use crate::id::ShortId;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Least time between two endpoint reports for one neighbour. A neighbour
/// that holds its keys can send from two ports of its own in turn; without
/// this every packet would be an event for the control task (issue 16:
/// no queue a peer can grow). A real move (a NAT rebinding) is reported
/// by the first packet from the new address once this has passed.
pub const ENDPOINT_REPORT_EVERY: Duration = Duration::from_millis(250);

/// What a worker tells the control task. Sent only on change, never per packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A packet authenticated under a `next` keyset: the peer holds it.
    KeysetConfirmed {
        /// Our receiver index of that keyset.
        local_index: u32,
    },
    /// An authenticated, newest-so-far packet came from a new address
    /// (DESIGN.md "Endpoints behind NAT").
    EndpointMoved {
        /// The neighbour.
        peer: ShortId,
        /// Its address as we see it.
        address: SocketAddr,
    },
}

/// Why a packet was discarded. Never fatal: the worker counts it under
/// [`Discard::as_str`], the same label as [`DropReason`] (status
/// `dataplane.dropped`, metrics), and carries on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Discard {
    /// Not opened: malformed, an unknown receiver index (the caller may
    /// retry the same datagram with a newer snapshot), replayed, or a bad
    /// tag; see [`OpenError`] for what changed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Authenticated (window marked, liveness and events recorded), but the
    /// hop limit is spent: it was for another router.
    #[error("hop limit exhausted")]
    HopLimit,
    /// Authenticated (window marked), for us, but neither an IPv4 nor an
    /// IPv6 packet.
    #[error("inner packet is neither IPv4 nor IPv6")]
    NotIp,
    /// Authenticated (window marked), for us, but its inner source is not
    /// in the ranges of the router it is attributed to (DESIGN.md "The data
    /// header", "Security model").
    #[error("inner source outside the sending router's ranges")]
    SpoofedSource,
    /// Of a lane another worker owns (see the module doc). Nothing changed.
    #[error("datagram of another worker's lane")]
    ForeignLane,
    /// Authenticated (window marked), but attributed to an origin the
    /// neighbour that sent it could not be relaying for: it is on no
    /// shortest path toward that origin ([`Snapshot::may_relay`]).
    #[error("relayed by a neighbour on no path from its origin")]
    ImplausibleRelay,
    /// Sending: no router owns the destination address, or there is no
    /// next hop toward the one that does. Nothing changed.
    #[error("no route to the destination")]
    NoRoute,
    /// Sending: the destination address is this router's own, yet the
    /// packet came from the TUN (the host's `unreachable` route failed to
    /// catch it; DESIGN.md "No loops, no leaks"). Nothing changed.
    #[error("destination owned by this router")]
    OwnedLocally,
    /// Sending: the next hop has no send keys or endpoint yet, or the
    /// keyset's counters would pass the 48-bit limit. Nothing changed.
    #[error("no usable keys for the next hop")]
    NoSession,
}

impl Discard {
    /// Whether the datagram was authenticated and decrypted in place before
    /// it was discarded (its inner packet readable, as for delivery).
    pub fn opened(self) -> bool {
        matches!(
            self,
            Self::HopLimit | Self::NotIp | Self::SpoofedSource | Self::ImplausibleRelay
        )
    }

    /// The drop counter this discard goes to.
    pub fn reason(self) -> DropReason {
        match self {
            Self::Open(OpenError::Header(_)) => DropReason::BadHeader,
            Self::Open(OpenError::UnknownSession) => DropReason::UnknownSession,
            Self::Open(OpenError::Replay) => DropReason::Replay,
            Self::Open(OpenError::BadTag) => DropReason::BadTag,
            Self::HopLimit => DropReason::HopLimit,
            Self::NotIp => DropReason::NotIp,
            Self::SpoofedSource => DropReason::SpoofedSource,
            Self::ForeignLane => DropReason::ForeignLane,
            Self::ImplausibleRelay => DropReason::ImplausibleRelay,
            Self::NoRoute => DropReason::NoRoute,
            Self::OwnedLocally => DropReason::OwnedLocally,
            Self::NoSession => DropReason::NoSession,
        }
    }

    /// The metric label, exactly [`DropReason::as_str`].
    pub fn as_str(self) -> &'static str {
        self.reason().as_str()
    }
}

/// Where a packet goes and how far it may still travel: the fields of the
/// data header a sender chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The router that read the packet from its TUN.
    pub src: ShortId,
    /// The router that owns the destination address.
    pub dst: ShortId,
    /// Hops left.
    pub hop_limit: u8,
}

/// The route of a packet read from the TUN for inner destination `dst`:
/// looked up once here, in the ownership table, and stamped into the
/// header; relays forward by the owner's short ID, never by their own view
/// of the ranges (DESIGN.md "Who owns an address is who routes it").
pub fn route_from_tun(table: &Snapshot, dst: packet::AddrKey) -> Result<Route, Discard> {
    let owner = table.owner_of(dst).ok_or(Discard::NoRoute)?;
    if owner == table.me {
        return Err(Discard::OwnedLocally);
    }
    Ok(Route {
        src: table.me,
        dst: owner,
        hop_limit: packet::HOP_LIMIT,
    })
}

/// What to do with a received datagram, decided by [`Lane::handle_datagram`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An inner packet for this router's pods, its source checked against
    /// the sender's ranges: write `datagram[inner]` to the TUN. The 16
    /// bytes before `inner` (the opened header) are free for a virtio header.
    Deliver {
        /// Where the inner packet lies in the datagram.
        inner: Range<usize>,
    },
    /// An inner packet for another router: seal it again toward
    /// `route.dst` (hop-by-hop encryption), the hop limit already taken down
    /// by one.
    Relay {
        /// The header fields for the next hop.
        route: Route,
        /// Where the inner packet lies in the datagram.
        inner: Range<usize>,
    },
    /// A heartbeat: the control task's, not a data worker's (it arrives on
    /// the control lane at the control task's own socket). Nothing changed.
    Control,
    /// Dropped; see the reason for what changed.
    Discard(Discard),
}

/// A send key's next counter on this lane, kept while the key exists.
#[derive(Debug)]
struct SendCounter {
    next: u64,
    life: KeyLife,
}

/// A receive key's replay window for one sender lane, kept while the key
/// exists.
#[derive(Debug)]
struct LaneWindow {
    window: ReplayWindow,
    life: KeyLife,
}

/// The per-lane protocol state one worker owns. See the module doc.
#[derive(Debug)]
pub struct Lane {
    lane: u8,
    /// How many workers share the sender lanes (`lane % workers`).
    workers: u8,
    /// Next counter per send key.
    counters: IdMap<KeyId, SendCounter>,
    /// Replay windows per (receive key, the sender's lane).
    windows: IdMap<(KeyId, u8), LaneWindow>,
    /// The address last reported per neighbour, and when.
    reported_endpoints: IdMap<ShortId, (SocketAddr, Instant)>,
    /// Receiver indices of `next` keysets already reported confirmed, with
    /// the key each named then.
    reported_confirmations: IdMap<u32, KeyId>,
    /// The snapshot `handle_snapshot` last saw (weak: pruning needs the old
    /// snapshot's keys to be free to die).
    last_table: Weak<Snapshot>,
    events: VecDeque<WorkerEvent>,
}

impl Lane {
    /// The state of lane `lane` of `workers` (the worker that owns sender
    /// lanes `l` with `l % workers == lane`), with nothing sent or received
    /// yet.
    pub fn new(lane: u8, workers: u8) -> Self {
        Self {
            lane,
            workers: workers.max(1),
            counters: IdMap::default(),
            windows: IdMap::default(),
            reported_endpoints: IdMap::default(),
            reported_confirmations: IdMap::default(),
            last_table: Weak::new(),
            events: VecDeque::with_capacity(4),
        }
    }

    /// This lane's number: part of every nonce it seals.
    pub fn lane(&self) -> u8 {
        self.lane
    }

    /// Forgets the counters and windows of keys that no longer exist
    /// anywhere (not merely absent from `table`: a key that comes back in a
    /// later snapshot must find its counter and window), once per snapshot
    /// generation (the `Arc`'s address); cheap to call before every batch.
    pub fn handle_snapshot(&mut self, table: &Arc<Snapshot>) {
        if std::ptr::eq(self.last_table.as_ptr(), Arc::as_ptr(table)) {
            return;
        }
        // A weak handle, not the address: it keeps the allocation, so a new
        // snapshot can never be mistaken for a freed one at the same address.
        self.last_table = Arc::downgrade(table);
        self.windows.retain(|_, w| w.life.is_alive());
        self.counters.retain(|_, c| c.life.is_alive());
        self.reported_confirmations.retain(|session, key| {
            table
                .session(*session)
                .is_some_and(|s| s.awaiting_confirmation && s.key.id() == *key)
        });
    }

    /// Whether a move of `peer` to `from` is news: not the address last
    /// reported, and not within [`ENDPOINT_REPORT_EVERY`] of that report.
    fn may_report(&self, peer: ShortId, from: SocketAddr, now: Instant) -> bool {
        match self.reported_endpoints.get(&peer) {
            None => true,
            Some(&(address, at)) => {
                address != from && now.saturating_duration_since(at) >= ENDPOINT_REPORT_EVERY
            }
        }
    }

    /// Whether this worker owns sender lane `lane` (the steering rule).
    fn owns(&self, lane: u8) -> bool {
        lane % self.workers == self.lane
    }

    /// One received datagram (a whole UDP payload or one segment of a GRO
    /// train) from `from`: parse the header through the checked view, find
    /// the receive keyset by receiver index, check the lane's window, open
    /// in place, mark; then record liveness, report a moved endpoint or a
    /// confirmed keyset (see [`Lane::poll_event`]), and decide.
    pub fn handle_datagram(
        &mut self,
        table: &Snapshot,
        datagram: &mut [u8],
        from: SocketAddr,
        now: Instant,
    ) -> Verdict {
        let view = match Datagram::parse(datagram) {
            Ok(view) => view,
            Err(e) => return Verdict::Discard(OpenError::Header(e).into()),
        };
        let header = *view.header();
        if header.kind != PacketType::Data {
            return Verdict::Control;
        }
        if !self.owns(header.lane) {
            return Verdict::Discard(Discard::ForeignLane);
        }
        let Some(session) = table.session(header.session) else {
            return Verdict::Discard(OpenError::UnknownSession.into());
        };
        let slot = (session.key.id(), header.lane);
        let mut first = None;
        let window = match self.windows.get_mut(&slot) {
            Some(slot) => &mut slot.window,
            // The keyset's first packet on this lane: check it against a
            // fresh window, kept only once the tag verified, so that
            // forgeries allocate nothing (invariant 4: no state change).
            None => first.insert(ReplayWindow::new()),
        };
        let opened = match view.open(&session.key, window) {
            Ok(opened) => opened,
            Err(e) => return Verdict::Discard(e.into()),
        };
        let newest = opened.is_newest();
        let inner = opened.body_range();
        if let Some(window) = first {
            let life = session.key.life();
            self.windows.insert(slot, LaneWindow { window, life });
        }
        let peer = session.peer;
        if let Some(link) = table.link(peer) {
            // Any authenticated packet counts as liveness (DESIGN.md
            // "Endpoints behind NAT").
            link.liveness.touch(now);
            if newest && link.endpoint != Some(from) && self.may_report(peer, from, now) {
                self.reported_endpoints.insert(peer, (from, now));
                self.events.push_back(WorkerEvent::EndpointMoved {
                    peer,
                    address: from,
                });
            }
        }
        // The first packet under a `next` keyset confirms the peer holds it
        // (DESIGN.md "Rekey").
        if session.awaiting_confirmation
            && self
                .reported_confirmations
                .insert(header.session, session.key.id())
                != Some(session.key.id())
        {
            self.events.push_back(WorkerEvent::KeysetConfirmed {
                local_index: header.session,
            });
        }
        // The origin is who the header names only if the neighbour could
        // be relaying for it (DESIGN.md "Security model").
        if !table.may_relay(header.src, peer) {
            return Verdict::Discard(Discard::ImplausibleRelay);
        }
        if header.dst == table.me {
            let Some(addresses) = packet::inner_addresses(&datagram[inner.clone()]) else {
                return Verdict::Discard(Discard::NotIp);
            };
            // An IPv6 source in the IPv4-mapped block would match an IPv4
            // range's keys: it is nobody's IPv6 address.
            let mapped = addresses.ipv6 && packet::is_ipv4_key(addresses.src);
            if mapped || !table.owned_by(addresses.src, header.src) {
                return Verdict::Discard(Discard::SpoofedSource);
            }
            Verdict::Deliver { inner }
        } else if header.hop_limit <= 1 {
            Verdict::Discard(Discard::HopLimit)
        } else {
            Verdict::Relay {
                route: Route {
                    src: header.src,
                    dst: header.dst,
                    hop_limit: header.hop_limit - 1,
                },
                inner,
            }
        }
    }

    /// Prepares to seal `count` datagrams along `route`: finds the next hop
    /// toward `route.dst`, its send keys and endpoint, and reserves `count`
    /// counters of this lane under that keyset. Counters reserved and not
    /// used are skipped, never reused.
    pub fn sealer<'t>(
        &mut self,
        table: &'t Snapshot,
        route: Route,
        count: usize,
    ) -> Result<Sealer<'t>, Discard> {
        let link = table
            .next_hop(route.dst)
            .and_then(|next| table.link(next))
            .ok_or(Discard::NoRoute)?;
        let (Some(keys), Some(endpoint)) = (link.send.as_ref(), link.endpoint) else {
            return Err(Discard::NoSession);
        };
        let counter = self
            .counters
            .entry(keys.key.id())
            .or_insert_with(|| SendCounter {
                next: 0,
                life: keys.key.life(),
            });
        let first = counter.next;
        let end = first.saturating_add(count as u64);
        if end > COUNTER_LIMIT + 1 {
            return Err(Discard::NoSession);
        }
        counter.next = end;
        Ok(Sealer {
            key: &keys.key,
            endpoint,
            header: DataHeader {
                kind: PacketType::Data,
                hop_limit: route.hop_limit,
                src: route.src,
                dst: route.dst,
                session: keys.remote_index,
                lane: self.lane,
                counter: first,
            },
            end,
        })
    }

    /// The next event for the control task, oldest first.
    pub fn poll_event(&mut self) -> Option<WorkerEvent> {
        self.events.pop_front()
    }

    /// The highest counter marked in the window of (`key`, `lane`).
    #[cfg(test)]
    fn highest(&self, key: KeyId, lane: u8) -> Option<u64> {
        self.windows.get(&(key, lane))?.window.highest()
    }
}

/// Seals datagrams for one next hop with counters reserved by
/// [`Lane::sealer`]: each call takes the next one.
#[derive(Debug)]
pub struct Sealer<'t> {
    key: &'t DataKey,
    endpoint: SocketAddr,
    header: DataHeader,
    end: u64,
}

impl Sealer<'_> {
    /// Where the sealed datagrams go (the next hop's UDP endpoint).
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    /// Seals the body at `buf[HEADER_LEN..HEADER_LEN + body_len]` in place
    /// (see [`seal_datagram`]) with the next reserved counter and returns
    /// the datagram's length. `None` once the reserved counters are used
    /// up (a nonce is never reused) or if `buf` is too short; nothing is
    /// written then.
    pub fn seal(&mut self, buf: &mut [u8], body_len: usize) -> Option<usize> {
        if self.header.counter >= self.end {
            return None;
        }
        let len = seal_datagram(&self.header, self.key, buf, body_len).ok()?;
        self.header.counter += 1;
        Some(len)
    }
}

#[cfg(test)]
mod nonce_props;
#[cfg(test)]
mod tests;
