//! One data-plane worker's per-packet protocol, without I/O (DESIGN.md
//! "Keys and sessions" → "Lanes", "The fast data path"): the worker owns
//! exactly one lane, and this is that lane's state and rules.
//!
//! Owns: the lane's send counters (one per keyset we send under), its
//! replay windows (one per receive keyset and sender lane), and what it has
//! already told the control task (endpoints, confirmed keysets). Decides,
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
//! when its first packet authenticated.

use super::datagram::{Datagram, OpenError, seal_datagram};
use super::idmap::IdMap;
use super::packet::{self, DataHeader, PacketType};
use super::snapshot::Snapshot;
use super::stats::DropReason;
use crate::crypto::data::{COUNTER_LIMIT, DataKey};
use crate::crypto::replay::ReplayWindow;
use crate::id::ShortId;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

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
    /// Authenticated (window marked), for us, but not an IPv4 packet.
    #[error("inner packet is not IPv4")]
    NotIpv4,
    /// Authenticated (window marked), for us, but its inner source is not
    /// in the ranges of the router it is attributed to (DESIGN.md "The data
    /// header", "Security model").
    #[error("inner source outside the sending router's ranges")]
    SpoofedSource,
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
    /// The drop counter this discard goes to.
    pub fn reason(self) -> DropReason {
        match self {
            Self::Open(OpenError::Header(_)) => DropReason::BadHeader,
            Self::Open(OpenError::UnknownSession) => DropReason::UnknownSession,
            Self::Open(OpenError::Replay) => DropReason::Replay,
            Self::Open(OpenError::BadTag) => DropReason::BadTag,
            Self::HopLimit => DropReason::HopLimit,
            Self::NotIpv4 => DropReason::NotIpv4,
            Self::SpoofedSource => DropReason::SpoofedSource,
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
pub fn route_from_tun(table: &Snapshot, dst: u32) -> Result<Route, Discard> {
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

/// The per-lane protocol state one worker owns. See the module doc.
#[derive(Debug)]
pub struct Lane {
    lane: u8,
    /// Next counter per send keyset, by the receiver index the peer chose.
    counters: IdMap<u32, u64>,
    /// Replay windows per (our receiver index, the sender's lane).
    windows: IdMap<(u32, u8), ReplayWindow>,
    reported_endpoints: IdMap<ShortId, SocketAddr>,
    reported_confirmations: IdMap<u32, ()>,
    /// The snapshot generation `handle_snapshot` last saw.
    last_table: usize,
    events: VecDeque<WorkerEvent>,
}

impl Lane {
    /// The state of lane `lane`, with nothing sent or received yet.
    pub fn new(lane: u8) -> Self {
        Self {
            lane,
            counters: IdMap::default(),
            windows: IdMap::default(),
            reported_endpoints: IdMap::default(),
            reported_confirmations: IdMap::default(),
            last_table: 0,
            events: VecDeque::with_capacity(4),
        }
    }

    /// This lane's number: part of every nonce it seals.
    pub fn lane(&self) -> u8 {
        self.lane
    }

    /// Forgets the counters and windows of keysets `table` no longer has,
    /// once per snapshot generation (the `Arc`'s address); cheap to call
    /// before every batch.
    pub fn handle_snapshot(&mut self, table: &Arc<Snapshot>) {
        let generation = Arc::as_ptr(table) as usize;
        if generation == self.last_table {
            return;
        }
        self.last_table = generation;
        self.windows
            .retain(|(session, _), _| table.session(*session).is_some());
        self.reported_confirmations.retain(|session, _| {
            table
                .session(*session)
                .is_some_and(|s| s.awaiting_confirmation)
        });
        self.counters.retain(|index, _| {
            table
                .links_iter()
                .any(|(_, link)| link.send.as_ref().is_some_and(|k| k.remote_index == *index))
        });
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
        let Some(session) = table.session(header.session) else {
            return Verdict::Discard(OpenError::UnknownSession.into());
        };
        let slot = (header.session, header.lane);
        let mut first = None;
        let window = match self.windows.get_mut(&slot) {
            Some(window) => window,
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
            self.windows.insert(slot, window);
        }
        let peer = session.peer;
        if let Some(link) = table.link(peer) {
            // Any authenticated packet counts as liveness (DESIGN.md
            // "Endpoints behind NAT").
            link.liveness.touch(now);
            if newest
                && link.endpoint != Some(from)
                && self.reported_endpoints.get(&peer) != Some(&from)
            {
                self.reported_endpoints.insert(peer, from);
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
                .insert(header.session, ())
                .is_none()
        {
            self.events.push_back(WorkerEvent::KeysetConfirmed {
                local_index: header.session,
            });
        }
        if header.dst == table.me {
            let Some((src, _dst)) = packet::ipv4_addresses(&datagram[inner.clone()]) else {
                return Verdict::Discard(Discard::NotIpv4);
            };
            if table.owner_of(src) != Some(header.src) {
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
        let counter = self.counters.entry(keys.remote_index).or_insert(0);
        let first = *counter;
        let end = first.saturating_add(count as u64);
        if end > COUNTER_LIMIT + 1 {
            return Err(Discard::NoSession);
        }
        *counter = end;
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

    /// The highest counter marked in the window of (`session`, `lane`).
    #[cfg(test)]
    fn highest(&self, session: u32, lane: u8) -> Option<u64> {
        self.windows.get(&(session, lane))?.highest()
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
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::replay::WINDOW;
    use crate::router::datagram::OVERHEAD;
    use crate::router::packet::{CONTROL_LANE, HEADER_LEN, HOP_LIMIT, HeaderError};
    use crate::router::snapshot::{Link, Liveness, OwnedRange, RecvSession, SendKeys};

    const A: ShortId = ShortId(1);
    const B: ShortId = ShortId(2);
    const C: ShortId = ShortId(3);
    /// The receiver index B chose for A's keyset.
    const B_INDEX: u32 = 0x0000_0b0b;
    /// The receiver index C chose for B's keyset.
    const C_INDEX: u32 = 0x0000_0c0c;
    /// Pod ranges: A 10.32.0.0/24, B 10.32.1.0/24, C 10.32.2.0/24.
    const A_POD: u32 = 0x0a20_0005;
    const B_POD: u32 = 0x0a20_0105;
    const C_POD: u32 = 0x0a20_0205;

    fn from() -> SocketAddr {
        "192.0.2.1:6783".parse().unwrap()
    }

    fn key(n: u8) -> DataKey {
        DataKey::from_bytes([n; 32])
    }

    fn link(endpoint: &str, send: Option<SendKeys>, epoch: Instant) -> Link {
        Link {
            endpoint: Some(endpoint.parse().unwrap()),
            send,
            liveness: Arc::new(Liveness::new(epoch)),
        }
    }

    /// Keys to send under `remote_index` with key `key(n)`.
    fn send_keys(remote_index: u32, n: u8) -> Option<SendKeys> {
        Some(SendKeys {
            remote_index,
            key: key(n),
        })
    }

    fn owners(table: &mut Snapshot) {
        let range = |start: u32, owner| OwnedRange {
            start,
            end: start + 255,
            owner,
        };
        table.set_owners(vec![
            range(0x0a20_0000, A),
            range(0x0a20_0100, B),
            range(0x0a20_0200, C),
        ]);
    }

    /// A's table: B is a direct neighbour, C is reached through B.
    fn table_a(epoch: Instant) -> Snapshot {
        let mut t = Snapshot::new(A, 1420);
        owners(&mut t);
        t.set_link(B, link("192.0.2.2:6783", send_keys(B_INDEX, 0xab), epoch));
        t.set_next_hop(B, B);
        t.set_next_hop(C, B);
        t
    }

    /// B's table: receives from A under `B_INDEX`, sends to C.
    fn table_b(epoch: Instant, awaiting_confirmation: bool) -> Snapshot {
        let mut t = Snapshot::new(B, 1420);
        owners(&mut t);
        t.set_link(A, link("192.0.2.1:6783", None, epoch));
        t.set_link(C, link("192.0.2.3:6783", send_keys(C_INDEX, 0xbc), epoch));
        t.set_next_hop(A, A);
        t.set_next_hop(C, C);
        t.add_session(
            B_INDEX,
            RecvSession {
                peer: A,
                key: key(0xab),
                awaiting_confirmation,
            },
        );
        t
    }

    /// A 40-byte IPv4 packet from `src` to `dst`.
    fn ipv4(src: u32, dst: u32) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&src.to_be_bytes());
        p[16..20].copy_from_slice(&dst.to_be_bytes());
        p
    }

    /// Seals `inner` with an explicit header (any counter, any lane).
    fn sealed(header: DataHeader, key: &DataKey, inner: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; inner.len() + OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
        seal_datagram(&header, key, &mut buf, inner.len()).unwrap();
        buf
    }

    fn a_to_b(lane: u8, counter: u64, inner: &[u8]) -> Vec<u8> {
        let header = DataHeader {
            kind: PacketType::Data,
            hop_limit: HOP_LIMIT,
            src: A,
            dst: B,
            session: B_INDEX,
            lane,
            counter,
        };
        sealed(header, &key(0xab), inner)
    }

    /// Seals one packet on A's lane `lane` through the `Lane` API.
    fn send_from_a(lane: &mut Lane, table: &Snapshot, route: Route, inner: &[u8]) -> Vec<u8> {
        let mut sealer = lane.sealer(table, route, 1).unwrap();
        let mut buf = vec![0u8; 2048];
        buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
        let len = sealer.seal(&mut buf, inner.len()).unwrap();
        buf.truncate(len);
        buf
    }

    fn to_b() -> Route {
        Route {
            src: A,
            dst: B,
            hop_limit: HOP_LIMIT,
        }
    }

    #[test]
    fn every_data_lane_seals_and_opens_to_the_same_inner_packet() {
        let epoch = Instant::now();
        let (ta, tb) = (table_a(epoch), table_b(epoch, false));
        let mut receiver = Lane::new(0);
        let inner = ipv4(A_POD, B_POD);
        for n in 0..CONTROL_LANE {
            let mut sender = Lane::new(n);
            let mut datagram = send_from_a(&mut sender, &ta, to_b(), &inner);
            assert_eq!(datagram[packet::LANE_OFFSET as usize], n);
            let verdict = receiver.handle_datagram(&tb, &mut datagram, from(), epoch);
            let Verdict::Deliver { inner: range } = verdict else {
                panic!("lane {n}: {verdict:?}");
            };
            assert_eq!(range, HEADER_LEN..HEADER_LEN + inner.len());
            assert_eq!(datagram[range], inner[..], "lane {n}");
            assert_eq!(receiver.highest(B_INDEX, n), Some(0));
        }
    }

    #[test]
    fn a_tampered_header_body_or_tag_is_a_bad_tag_and_marks_nothing() {
        let epoch = Instant::now();
        let tb = table_b(epoch, false);
        let good = a_to_b(2, 7, &ipv4(A_POD, B_POD));
        // hop limit, src, dst, lane, counter; a body byte; a tag byte.
        for at in [1, 2, 3, 4, 5, 9, 10, 15, HEADER_LEN, good.len() - 1] {
            let mut lane = Lane::new(2);
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            let verdict = lane.handle_datagram(&tb, &mut bad, from(), epoch);
            assert_eq!(
                verdict,
                Verdict::Discard(Discard::Open(OpenError::BadTag)),
                "byte {at}"
            );
            assert!(
                (0..=u8::MAX).all(|l| lane.highest(B_INDEX, l).is_none()),
                "byte {at}: a window was marked"
            );
            assert_eq!(lane.poll_event(), None);
            // The genuine packet still opens: its counter was not marked.
            let mut genuine = good.clone();
            let verdict = lane.handle_datagram(&tb, &mut genuine, from(), epoch);
            assert!(matches!(verdict, Verdict::Deliver { .. }), "byte {at}");
        }
    }

    #[test]
    fn a_tampered_version_type_or_receiver_index_is_refused_before_any_window() {
        let epoch = Instant::now();
        let tb = table_b(epoch, false);
        let good = a_to_b(0, 1, &ipv4(A_POD, B_POD));
        let cases = [
            (
                0,
                0x30,
                Verdict::Discard(Discard::Open(OpenError::Header(HeaderError::Version))),
            ),
            (
                0,
                0x0f,
                Verdict::Discard(Discard::Open(OpenError::Header(HeaderError::Type))),
            ),
            (0, 0x01, Verdict::Control),
            (
                6,
                0x01,
                Verdict::Discard(Discard::Open(OpenError::UnknownSession)),
            ),
            (
                8,
                0x80,
                Verdict::Discard(Discard::Open(OpenError::UnknownSession)),
            ),
        ];
        for (at, flip, expect) in cases {
            let mut lane = Lane::new(0);
            let mut bad = good.clone();
            bad[at] ^= flip;
            assert_eq!(lane.handle_datagram(&tb, &mut bad, from(), epoch), expect);
            assert!(lane.windows.is_empty(), "byte {at}");
        }
    }

    #[test]
    fn a_forgery_under_a_known_receiver_index_allocates_no_window() {
        let epoch = Instant::now();
        let tb = table_b(epoch, false);
        let mut lane = Lane::new(0);
        for sender_lane in 0..=u8::MAX {
            let mut forged = a_to_b(sender_lane, 0, &ipv4(A_POD, B_POD));
            let last = forged.len() - 1;
            forged[last] ^= 1;
            let verdict = lane.handle_datagram(&tb, &mut forged, from(), epoch);
            assert_eq!(verdict, Verdict::Discard(Discard::Open(OpenError::BadTag)));
        }
        assert!(lane.windows.is_empty(), "{} windows", lane.windows.len());
        let mut genuine = a_to_b(9, 0, &ipv4(A_POD, B_POD));
        lane.handle_datagram(&tb, &mut genuine, from(), epoch);
        assert_eq!(lane.windows.len(), 1);
    }

    #[test]
    fn a_replayed_counter_is_dropped_after_the_first_copy() {
        let epoch = Instant::now();
        let tb = table_b(epoch, false);
        let mut lane = Lane::new(1);
        let good = a_to_b(1, 42, &ipv4(A_POD, B_POD));
        let mut first = good.clone();
        assert!(matches!(
            lane.handle_datagram(&tb, &mut first, from(), epoch),
            Verdict::Deliver { .. }
        ));
        for _ in 0..3 {
            let mut again = good.clone();
            let verdict = lane.handle_datagram(&tb, &mut again, from(), epoch);
            assert_eq!(verdict, Verdict::Discard(Discard::Open(OpenError::Replay)));
            assert_eq!(Discard::Open(OpenError::Replay).as_str(), "replay");
        }
    }

    #[test]
    fn a_counter_older_than_the_window_is_dropped_and_one_inside_it_is_not() {
        let epoch = Instant::now();
        let tb = table_b(epoch, false);
        let mut lane = Lane::new(0);
        let inner = ipv4(A_POD, B_POD);
        let high = 3 * WINDOW;
        let mut top = a_to_b(0, high, &inner);
        assert!(matches!(
            lane.handle_datagram(&tb, &mut top, from(), epoch),
            Verdict::Deliver { .. }
        ));
        let mut too_old = a_to_b(0, high - WINDOW - 1, &inner);
        let verdict = lane.handle_datagram(&tb, &mut too_old, from(), epoch);
        assert_eq!(verdict, Verdict::Discard(Discard::Open(OpenError::Replay)));
        let mut oldest_fresh = a_to_b(0, high - WINDOW, &inner);
        assert!(matches!(
            lane.handle_datagram(&tb, &mut oldest_fresh, from(), epoch),
            Verdict::Deliver { .. }
        ));
    }

    #[test]
    fn an_unknown_receiver_index_changes_nothing() {
        let epoch = Instant::now();
        let tb = table_b(epoch, true);
        let mut lane = Lane::new(0);
        let mut header = DataHeader::parse(&a_to_b(0, 0, &[0; 20])).unwrap();
        header.session = 0x00ff_fff0;
        let mut datagram = sealed(header, &key(0xab), &ipv4(A_POD, B_POD));
        let verdict = lane.handle_datagram(&tb, &mut datagram, from(), epoch);
        assert_eq!(
            verdict,
            Verdict::Discard(Discard::Open(OpenError::UnknownSession))
        );
        assert!(lane.windows.is_empty());
        assert_eq!(lane.poll_event(), None);
        assert!(tb.link(A).unwrap().liveness.last_rx().is_none());
    }

    #[test]
    fn truncated_datagrams_of_every_length_are_dropped_without_panic() {
        let epoch = Instant::now();
        let tb = table_b(epoch, false);
        let good = a_to_b(0, 0, &ipv4(A_POD, B_POD));
        let mut lane = Lane::new(0);
        for len in 0..OVERHEAD {
            let mut short = good[..len].to_vec();
            let verdict = lane.handle_datagram(&tb, &mut short, from(), epoch);
            assert_eq!(
                verdict,
                Verdict::Discard(Discard::Open(OpenError::Header(HeaderError::Truncated))),
                "{len} bytes"
            );
        }
        // Longer truncations parse but cannot authenticate.
        for len in OVERHEAD..good.len() {
            let mut short = good[..len].to_vec();
            let verdict = lane.handle_datagram(&tb, &mut short, from(), epoch);
            assert_eq!(
                verdict,
                Verdict::Discard(Discard::Open(OpenError::BadTag)),
                "{len} bytes"
            );
        }
        assert_eq!(lane.highest(B_INDEX, 0), None);
    }

    #[test]
    fn a_packet_for_another_router_is_relayed_with_one_hop_less() {
        let epoch = Instant::now();
        let (ta, tb) = (table_a(epoch), table_b(epoch, false));
        let inner = ipv4(A_POD, C_POD);
        let to_c = Route {
            src: A,
            dst: C,
            hop_limit: HOP_LIMIT,
        };
        let mut datagram = send_from_a(&mut Lane::new(0), &ta, to_c, &inner);
        let mut relay = Lane::new(0);
        let verdict = relay.handle_datagram(&tb, &mut datagram, from(), epoch);
        let Verdict::Relay {
            route,
            inner: range,
        } = verdict
        else {
            panic!("{verdict:?}");
        };
        assert_eq!(
            route,
            Route {
                src: A,
                dst: C,
                hop_limit: HOP_LIMIT - 1
            }
        );
        assert_eq!(datagram[range.clone()], inner[..]);
        // B seals it again for C under B's own keys and lane.
        let mut buf = vec![0u8; 2048];
        buf[HEADER_LEN..HEADER_LEN + range.len()].copy_from_slice(&datagram[range.clone()]);
        let mut sealer = relay.sealer(&tb, route, 1).unwrap();
        assert_eq!(sealer.endpoint(), "192.0.2.3:6783".parse().unwrap());
        let len = sealer.seal(&mut buf, range.len()).unwrap();
        let header = DataHeader::parse(&buf[..len]).unwrap();
        assert_eq!((header.hop_limit, header.session), (HOP_LIMIT - 1, C_INDEX));
        assert_eq!((header.src, header.dst), (A, C));
    }

    #[test]
    fn a_spent_hop_limit_is_dropped_after_authentication() {
        let epoch = Instant::now();
        let (ta, tb) = (table_a(epoch), table_b(epoch, false));
        for hop_limit in [0, 1] {
            let to_c = Route {
                src: A,
                dst: C,
                hop_limit,
            };
            let mut datagram = send_from_a(&mut Lane::new(0), &ta, to_c, &ipv4(A_POD, C_POD));
            let mut relay = Lane::new(0);
            let verdict = relay.handle_datagram(&tb, &mut datagram, from(), epoch);
            assert_eq!(verdict, Verdict::Discard(Discard::HopLimit));
            assert_eq!(
                relay.highest(B_INDEX, 0),
                Some(0),
                "marked: it authenticated"
            );
        }
        let mut two = send_from_a(
            &mut Lane::new(0),
            &ta,
            Route {
                src: A,
                dst: C,
                hop_limit: 2,
            },
            &ipv4(A_POD, C_POD),
        );
        let verdict = Lane::new(0).handle_datagram(&tb, &mut two, from(), epoch);
        assert!(matches!(verdict, Verdict::Relay { route, .. } if route.hop_limit == 1));
    }

    #[test]
    fn heartbeats_go_to_the_control_task_untouched() {
        let epoch = Instant::now();
        let tb = table_b(epoch, true);
        let mut lane = Lane::new(0);
        let header = DataHeader {
            kind: PacketType::Heartbeat,
            hop_limit: 1,
            src: A,
            dst: B,
            session: B_INDEX,
            lane: CONTROL_LANE,
            counter: 0,
        };
        let mut datagram = sealed(header, &key(0xab), &[1; 10]);
        let before = datagram.clone();
        assert_eq!(
            lane.handle_datagram(&tb, &mut datagram, from(), epoch),
            Verdict::Control
        );
        assert_eq!(datagram, before, "not decrypted");
        assert!(lane.windows.is_empty());
        assert_eq!(lane.poll_event(), None);
    }

    #[test]
    fn the_first_packet_under_a_next_keyset_confirms_it_once() {
        let epoch = Instant::now();
        let tb = Arc::new(table_b(epoch, true));
        let mut lane = Lane::new(0);
        for counter in 0..3 {
            let mut d = a_to_b(0, counter, &ipv4(A_POD, B_POD));
            lane.handle_datagram(&tb, &mut d, from(), epoch);
        }
        assert_eq!(
            lane.poll_event(),
            Some(WorkerEvent::KeysetConfirmed {
                local_index: B_INDEX
            })
        );
        assert_eq!(lane.poll_event(), None);
        // A new snapshot where the keyset is current: nothing more to report.
        lane.handle_snapshot(&Arc::new(table_b(epoch, false)));
        assert!(lane.reported_confirmations.is_empty());
    }

    #[test]
    fn only_a_newest_packet_from_a_new_address_moves_the_endpoint_once() {
        let epoch = Instant::now();
        let tb = table_b(epoch, false);
        let mut lane = Lane::new(0);
        let inner = ipv4(A_POD, B_POD);
        let known: SocketAddr = "192.0.2.1:6783".parse().unwrap();
        let moved: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let stale: SocketAddr = "203.0.113.9:1".parse().unwrap();
        let later = epoch + std::time::Duration::from_millis(300);
        lane.handle_datagram(&tb, &mut a_to_b(0, 5, &inner), known, epoch);
        assert_eq!(lane.poll_event(), None, "same address as the link");
        lane.handle_datagram(&tb, &mut a_to_b(0, 6, &inner), moved, later);
        lane.handle_datagram(&tb, &mut a_to_b(0, 7, &inner), moved, later);
        assert_eq!(
            lane.poll_event(),
            Some(WorkerEvent::EndpointMoved {
                peer: A,
                address: moved
            })
        );
        assert_eq!(lane.poll_event(), None, "reported once");
        lane.handle_datagram(&tb, &mut a_to_b(0, 3, &inner), stale, later);
        assert_eq!(lane.poll_event(), None, "an older packet moves nothing");
        let seen = tb.link(A).unwrap().liveness.last_rx().unwrap();
        assert_eq!(seen.duration_since(epoch).as_millis(), 300);
    }

    #[test]
    fn an_inner_source_outside_the_senders_ranges_is_spoofed() {
        let epoch = Instant::now();
        let tb = table_b(epoch, false);
        let mut lane = Lane::new(0);
        let mut spoofed = a_to_b(0, 0, &ipv4(C_POD, B_POD));
        let verdict = lane.handle_datagram(&tb, &mut spoofed, from(), epoch);
        assert_eq!(verdict, Verdict::Discard(Discard::SpoofedSource));
        let mut ipv6 = a_to_b(0, 1, &[0x60; 40]);
        let verdict = lane.handle_datagram(&tb, &mut ipv6, from(), epoch);
        assert_eq!(verdict, Verdict::Discard(Discard::NotIpv4));
        assert_eq!(lane.highest(B_INDEX, 0), Some(1), "both authenticated");
    }

    #[test]
    fn sealing_needs_a_route_keys_and_counters() {
        let epoch = Instant::now();
        let ta = table_a(epoch);
        let mut lane = Lane::new(3);
        let nowhere = Route {
            src: A,
            dst: ShortId(99),
            hop_limit: HOP_LIMIT,
        };
        assert_eq!(lane.sealer(&ta, nowhere, 1).unwrap_err(), Discard::NoRoute);
        let mut keyless = ta.clone();
        keyless.set_link(B, link("192.0.2.2:6783", None, epoch));
        assert_eq!(
            lane.sealer(&keyless, to_b(), 1).unwrap_err(),
            Discard::NoSession
        );
        lane.counters.insert(B_INDEX, COUNTER_LIMIT - 1);
        assert!(lane.sealer(&ta, to_b(), 2).is_ok());
        assert_eq!(lane.sealer(&ta, to_b(), 1).unwrap_err(), Discard::NoSession);
        assert_eq!(
            lane.counters[&B_INDEX],
            COUNTER_LIMIT + 1,
            "nothing reserved"
        );
    }

    #[test]
    fn a_sealer_uses_each_reserved_counter_once_and_no_more() {
        let epoch = Instant::now();
        let ta = table_a(epoch);
        let mut lane = Lane::new(4);
        let mut buf = vec![0u8; 256];
        let mut counters = Vec::new();
        for count in [3, 2] {
            let mut sealer = lane.sealer(&ta, to_b(), count).unwrap();
            while let Some(len) = sealer.seal(&mut buf, 20) {
                let header = DataHeader::parse(&buf[..len]).unwrap();
                assert_eq!((header.lane, header.session), (4, B_INDEX));
                counters.push(header.counter);
            }
        }
        assert_eq!(counters, [0, 1, 2, 3, 4]);
        let mut sealer = lane.sealer(&ta, to_b(), 1).unwrap();
        assert_eq!(sealer.seal(&mut buf[..20 + OVERHEAD - 1], 20), None);
        assert_eq!(
            sealer.seal(&mut buf, 20).map(|_| ()),
            Some(()),
            "counter kept"
        );
    }

    #[test]
    fn a_new_snapshot_forgets_state_of_keysets_it_no_longer_has() {
        let epoch = Instant::now();
        let ta = Arc::new(table_a(epoch));
        let tb = Arc::new(table_b(epoch, false));
        let mut lane = Lane::new(0);
        lane.handle_datagram(&tb, &mut a_to_b(0, 0, &ipv4(A_POD, B_POD)), from(), epoch);
        lane.sealer(&ta, to_b(), 1).unwrap();
        lane.handle_snapshot(&tb);
        assert_eq!(lane.windows.len(), 1);
        assert!(
            lane.counters.is_empty(),
            "B's table sends under C_INDEX only"
        );
        let mut empty = Snapshot::new(B, 1420);
        owners(&mut empty);
        lane.sealer(
            &tb,
            Route {
                src: B,
                dst: C,
                hop_limit: 8,
            },
            1,
        )
        .unwrap();
        lane.handle_snapshot(&Arc::new(empty));
        assert!(lane.windows.is_empty() && lane.counters.is_empty());
    }

    #[test]
    fn a_tun_packet_is_routed_to_the_owner_of_its_destination() {
        let ta = table_a(Instant::now());
        assert_eq!(
            route_from_tun(&ta, C_POD),
            Ok(Route {
                src: A,
                dst: C,
                hop_limit: HOP_LIMIT
            })
        );
        assert_eq!(route_from_tun(&ta, A_POD), Err(Discard::OwnedLocally));
        assert_eq!(route_from_tun(&ta, 0x0a30_0000), Err(Discard::NoRoute));
    }

    #[test]
    fn discard_labels_are_todays_drop_reason_labels() {
        let all = [
            (
                Discard::Open(OpenError::Header(HeaderError::Truncated)),
                "bad_header",
            ),
            (Discard::Open(OpenError::UnknownSession), "unknown_session"),
            (Discard::Open(OpenError::Replay), "replay"),
            (Discard::Open(OpenError::BadTag), "bad_tag"),
            (Discard::HopLimit, "hop_limit"),
            (Discard::NotIpv4, "not_ipv4"),
            (Discard::SpoofedSource, "spoofed_source"),
            (Discard::NoRoute, "no_route"),
            (Discard::NoSession, "no_session"),
            (Discard::OwnedLocally, "owned_locally"),
        ];
        for (discard, label) in all {
            assert_eq!(discard.as_str(), label);
        }
    }
}
