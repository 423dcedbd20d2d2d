//! Heartbeats and path-MTU probes on the control lane (DESIGN.md "MTU",
//! "Endpoints behind NAT"). A sans-IO core.
//!
//! Owns, per connected peer: the heartbeat send counter and the replay
//! windows of its receive keysets (pruned with the keysets: they are
//! re-synced from the key schedule whenever it changes, see
//! [`Heartbeats::set_link`]), when an authenticated packet last arrived, the
//! RTT, the path-MTU verdict, and whether the connection is established
//! (authenticated UDP arriving and a full-size probe answered). Does not own
//! the keys (the peer registry does) nor the data plane's traffic, which the
//! driver reports with [`Heartbeats::observe_data`].
//!
//! Inputs: [`Heartbeats::add`], [`Heartbeats::remove`],
//! [`Heartbeats::set_link`], [`Heartbeats::set_mtu`],
//! [`Heartbeats::observe_data`], [`Heartbeats::handle_datagram`],
//! [`Heartbeats::handle_timeout`]. Outputs, drained after every input:
//! [`Heartbeats::poll_event`] (endpoint and key confirmation first, then
//! establishment changes), [`Heartbeats::poll_transmit`] (datagrams for the
//! control socket), and [`Heartbeats::poll_timeout`].
//!
//! Wire (the body of a `Heartbeat` data packet on [`CONTROL_LANE`], sealed
//! like data): `[kind:8][stamp_ms:64][full:8]`, kind 0 ping, 1 pong
//! (echoing the ping's stamp, `full` = it was a probe), 2 a ping padded to
//! the overlay MTU (the path-MTU probe).

use crate::crypto::data::{DataKey, TAG_LEN};
use crate::crypto::replay::ReplayWindow;
use crate::crypto::session::Keyset;
use crate::id::{PeerId, ShortId};
use crate::router::packet::{CONTROL_LANE, DataHeader, HEADER_LEN, PacketType};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often a ping goes to each peer.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// A connection is established while an authenticated packet arrived
/// within this long (three heartbeats and a margin), so a broken link is
/// routed around in about two seconds.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_millis(1600);
/// Every this many pings, one is a full-size path-MTU probe.
const PROBE_EVERY: u64 = 4;
/// A connection stays established while a full-size probe was answered
/// within this long (probes go every `PROBE_EVERY` × 500 ms = 2 s).
pub const PMTU_TIMEOUT: Duration = Duration::from_millis(4500);
/// The side that did not dial waits this long before its first ping, so
/// the dialler's packet opens any NAT first (DESIGN.md "Endpoints behind NAT").
const INBOUND_FIRST_PING: Duration = Duration::from_millis(250);

const PING: u8 = 0;
const PONG: u8 = 1;
const PROBE: u8 = 2;
/// kind, stamp, full.
const SHORT_BODY: usize = 10;

/// What the driver learns from the heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// A heartbeat from `peer` authenticated under our keyset `local_index`,
    /// arriving from `from` (its endpoint; and the keyset is confirmed).
    Authenticated {
        /// Which peer.
        peer: PeerId,
        /// Our receive keyset it opened under.
        local_index: u32,
        /// Where it came from.
        from: SocketAddr,
    },
    /// The connection became established or stopped being so.
    Established {
        /// Which peer.
        peer: PeerId,
        /// The new state.
        established: bool,
    },
}

/// Why [`Heartbeats::poll_timeout`] wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatTimer {
    /// A ping is due.
    Ping,
    /// An established connection's liveness or path-MTU verdict expires.
    Expiry,
}

/// The UDP path's state in status (DESIGN.md "Operator contract").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpState {
    /// Authenticated packets arrive.
    Ok,
    /// They did, and stopped.
    Blocked,
    /// None yet.
    Unverified,
}

/// The path MTU's state in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmtuState {
    /// A full-size probe was answered recently.
    Ok,
    /// Small packets pass, full-size ones do not.
    TooSmall,
    /// Not known yet.
    Unverified,
}

/// One link's heartbeat state, for status.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkStatus {
    /// UDP works both ways and carries full-size packets.
    pub established: bool,
    /// The last heartbeat round trip.
    pub rtt: Option<Duration>,
    /// The UDP path.
    pub udp: UdpState,
    /// The path MTU.
    pub pmtu: PmtuState,
}

/// What a link needs from the key schedule and the registry.
#[derive(Debug)]
pub struct LinkKeys<'a> {
    /// The peer's short ID (the header's `dst`).
    pub short: ShortId,
    /// Where its UDP goes.
    pub endpoint: Option<SocketAddr>,
    /// The keyset to send with.
    pub current: Option<&'a Keyset>,
    /// Every keyset that may still decrypt.
    pub receive: Vec<&'a Keyset>,
}

struct Sender {
    remote_index: u32,
    key: DataKey,
    counter: u64,
}

struct Receiver {
    key: DataKey,
    window: ReplayWindow,
}

struct Link {
    short: ShortId,
    endpoint: Option<SocketAddr>,
    sender: Option<Sender>,
    receivers: HashMap<u32, Receiver>,
    last_rx: Option<Instant>,
    established: bool,
    rtt: Option<Duration>,
    next_ping: Instant,
    pings_sent: u64,
    pmtu_ok_at: Option<Instant>,
}

impl Link {
    fn udp_ok(&self, now: Instant) -> bool {
        self.last_rx
            .is_some_and(|t| now.saturating_duration_since(t) < LIVENESS_TIMEOUT)
    }

    fn pmtu_ok(&self, now: Instant) -> bool {
        self.pmtu_ok_at
            .is_some_and(|t| now.saturating_duration_since(t) < PMTU_TIMEOUT)
    }
}

/// The heartbeat core for all peers.
pub struct Heartbeats {
    epoch: Instant,
    me: ShortId,
    mtu: usize,
    links: HashMap<PeerId, Link>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<HeartbeatEvent>,
}

impl Heartbeats {
    /// No links. Stamps count milliseconds from `epoch`; probes are padded
    /// to the overlay `mtu`.
    pub fn new(epoch: Instant, me: ShortId, mtu: u32) -> Self {
        Self {
            epoch,
            me,
            mtu: mtu as usize,
            links: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A new connection to `peer` (replacing any earlier link state). The
    /// side that dialled pings first.
    pub fn add(&mut self, peer: PeerId, outbound: bool, now: Instant) {
        let first = if outbound {
            now
        } else {
            now + INBOUND_FIRST_PING
        };
        self.links.insert(
            peer,
            Link {
                short: ShortId::default(),
                endpoint: None,
                sender: None,
                receivers: HashMap::new(),
                last_rx: None,
                established: false,
                rtt: None,
                next_ping: first,
                pings_sent: 0,
                pmtu_ok_at: None,
            },
        );
    }

    /// `peer`'s connection went: its counters and windows go with it.
    pub fn remove(&mut self, peer: PeerId) {
        self.links.remove(&peer);
    }

    /// Brings `peer`'s keys, short IDs and endpoint up to date: windows of
    /// keysets no longer held are dropped, a new send keyset starts its
    /// counter at zero.
    pub fn set_link(&mut self, peer: PeerId, me: ShortId, keys: LinkKeys<'_>) {
        self.me = me;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.short = keys.short;
        link.endpoint = keys.endpoint;
        link.sender = match (link.sender.take(), keys.current) {
            (Some(s), Some(k)) if s.remote_index == k.remote_index => Some(s),
            (_, Some(k)) => Some(Sender {
                remote_index: k.remote_index,
                key: k.send.clone(),
                counter: 0,
            }),
            (_, None) => None,
        };
        link.receivers
            .retain(|index, _| keys.receive.iter().any(|k| k.local_index == *index));
        for k in keys.receive {
            link.receivers
                .entry(k.local_index)
                .or_insert_with(|| Receiver {
                    key: k.recv.clone(),
                    window: ReplayWindow::new(),
                });
        }
    }

    /// The overlay MTU probes are padded to.
    pub fn set_mtu(&mut self, mtu: u32) {
        self.mtu = mtu as usize;
    }

    /// The data plane last received an authenticated packet from `peer` at
    /// `last_rx`: it counts as liveness like a heartbeat.
    pub fn observe_data(&mut self, peer: PeerId, last_rx: Option<Instant>) {
        if let Some(link) = self.links.get_mut(&peer) {
            link.last_rx = link.last_rx.max(last_rx);
        }
    }

    /// A datagram on the control socket. Anything that is not a heartbeat
    /// under a held keyset, replays, or fails its tag is dropped unseen.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        let Ok(header) = DataHeader::parse(datagram) else {
            return;
        };
        if header.kind != PacketType::Heartbeat || header.lane != CONTROL_LANE {
            return;
        }
        let Some((&peer, link)) = self
            .links
            .iter_mut()
            .find(|(_, l)| l.receivers.contains_key(&header.session))
        else {
            return;
        };
        let Some(receiver) = link.receivers.get_mut(&header.session) else {
            return;
        };
        if !receiver.window.would_accept(header.counter) {
            return;
        }
        let Some(body) = open(&receiver.key, &header, datagram) else {
            return;
        };
        if !receiver.window.mark(header.counter) {
            return;
        }
        link.last_rx = link.last_rx.max(Some(now));
        self.events.push_back(HeartbeatEvent::Authenticated {
            peer,
            local_index: header.session,
            from,
        });
        let Some(stamp) = body
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return;
        };
        match body[0] {
            PING => self.send(peer, PONG, stamp, false),
            PROBE => self.send(peer, PONG, stamp, true),
            PONG => {
                let full = body.get(9) == Some(&1);
                if let Some(link) = self.links.get_mut(&peer) {
                    let sent = self.epoch + Duration::from_millis(stamp);
                    link.rtt = Some(now.saturating_duration_since(sent));
                    if full {
                        link.pmtu_ok_at = Some(now);
                    }
                }
            }
            _ => {}
        }
    }

    /// Sends the pings that are due and updates establishment: a link is
    /// established while authenticated UDP arrives and a full-size probe
    /// was answered recently (DESIGN.md "MTU").
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (peer, link) in &mut self.links {
            let established = link.udp_ok(now) && link.pmtu_ok(now);
            if established != link.established {
                link.established = established;
                self.events.push_back(HeartbeatEvent::Established {
                    peer: *peer,
                    established,
                });
            }
            if now >= link.next_ping {
                link.next_ping = now + HEARTBEAT_INTERVAL;
                let full = link.pings_sent % PROBE_EVERY == 0;
                link.pings_sent += 1;
                due.push((*peer, full));
            }
        }
        let stamp = self.millis(now);
        for (peer, full) in due {
            let kind = if full { PROBE } else { PING };
            self.send(peer, kind, stamp, full);
        }
    }

    /// The next datagram for the control socket.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HeartbeatEvent> {
        self.events.pop_front()
    }

    /// The next ping, or the moment an established link's liveness or
    /// path-MTU verdict runs out.
    pub fn poll_timeout(&self) -> Option<(Instant, HeartbeatTimer)> {
        self.links
            .values()
            .flat_map(|l| {
                let ping = Some((l.next_ping, HeartbeatTimer::Ping));
                let expiry = l
                    .established
                    .then(|| {
                        let rx = l.last_rx? + LIVENESS_TIMEOUT;
                        let pmtu = l.pmtu_ok_at? + PMTU_TIMEOUT;
                        Some((rx.min(pmtu), HeartbeatTimer::Expiry))
                    })
                    .flatten();
                [ping, expiry]
            })
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    /// `peer`'s link state.
    pub fn status(&self, peer: PeerId, now: Instant) -> Option<LinkStatus> {
        let link = self.links.get(&peer)?;
        let udp_ok = link.udp_ok(now);
        Some(LinkStatus {
            established: link.established,
            rtt: link.rtt,
            udp: if udp_ok {
                UdpState::Ok
            } else if link.last_rx.is_some() {
                UdpState::Blocked
            } else {
                UdpState::Unverified
            },
            pmtu: if link.pmtu_ok(now) {
                PmtuState::Ok
            } else if udp_ok {
                PmtuState::TooSmall
            } else {
                PmtuState::Unverified
            },
        })
    }

    /// Receive keysets held over all links (replay windows in memory).
    pub fn windows(&self) -> usize {
        self.links.values().map(|l| l.receivers.len()).sum()
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Queues a heartbeat of `kind` to `peer`: a probe is padded to the
    /// overlay MTU; pings and pongs are short.
    fn send(&mut self, peer: PeerId, kind: u8, stamp: u64, full: bool) {
        let me = self.me;
        let mtu = self.mtu;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let (Some(sender), Some(endpoint)) = (link.sender.as_mut(), link.endpoint) else {
            return;
        };
        let header = DataHeader {
            kind: PacketType::Heartbeat,
            hop_limit: 1,
            src: me,
            dst: link.short,
            session: sender.remote_index,
            lane: CONTROL_LANE,
            counter: sender.counter,
        };
        sender.counter += 1;
        let mut body = vec![0u8; if kind == PROBE { mtu } else { SHORT_BODY }.max(SHORT_BODY)];
        body[0] = kind;
        body[1..9].copy_from_slice(&stamp.to_be_bytes());
        body[9] = u8::from(full);
        let datagram = seal(&sender.key, &header, body);
        self.transmits.push_back((endpoint, datagram));
    }
}

/// Seals `body` under `key` behind `header`: the one place heartbeats touch
/// the data-plane framing (16-byte header as associated data, body, 16-byte
/// tag). To move onto the shared datagram seal/open module once it lands.
fn seal(key: &DataKey, header: &DataHeader, body: Vec<u8>) -> Vec<u8> {
    let mut header_bytes = [0u8; HEADER_LEN];
    header.emit(&mut header_bytes);
    let mut datagram = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
    datagram.extend_from_slice(&header_bytes);
    datagram.extend_from_slice(&body);
    let tag = key.seal_in_place(
        CONTROL_LANE,
        header.counter,
        &header_bytes,
        &mut datagram[HEADER_LEN..],
    );
    datagram.extend_from_slice(&tag);
    datagram
}

/// Opens a datagram whose `header` parsed (so it holds a header and a tag)
/// in place; the body on success. The counterpart of [`seal`].
fn open<'a>(key: &DataKey, header: &DataHeader, datagram: &'a mut [u8]) -> Option<&'a [u8]> {
    let len = datagram.len();
    let tag: [u8; TAG_LEN] = datagram.get(len.checked_sub(TAG_LEN)?..)?.try_into().ok()?;
    let (head, rest) = datagram.split_at_mut(HEADER_LEN);
    let body = rest.get_mut(..len - HEADER_LEN - TAG_LEN)?;
    key.open_in_place(CONTROL_LANE, header.counter, head, body, &tag)
        .ok()?;
    Some(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn keyset(local: u32, remote: u32, send: u8, recv: u8, created: Instant) -> Keyset {
        Keyset {
            local_index: local,
            remote_index: remote,
            send: DataKey::from_bytes([send; 32]),
            recv: DataKey::from_bytes([recv; 32]),
            created,
        }
    }

    const A: PeerId = PeerId(1);
    const B: PeerId = PeerId(2);

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 6783))
    }

    /// Two cores wired to each other with one keyset each way.
    fn pair(t0: Instant) -> (Heartbeats, Heartbeats) {
        let mut a = Heartbeats::new(t0, ShortId(1), 1420);
        let mut b = Heartbeats::new(t0, ShortId(2), 1420);
        a.add(B, true, t0);
        b.add(A, false, t0);
        // a's keyset: local 10 (b sends to 10), remote 20 (a sends to 20).
        let ka = keyset(10, 20, 1, 2, t0);
        let kb = keyset(20, 10, 2, 1, t0);
        a.set_link(
            B,
            ShortId(1),
            LinkKeys {
                short: ShortId(2),
                endpoint: Some(addr(2)),
                current: Some(&ka),
                receive: vec![&ka],
            },
        );
        b.set_link(
            A,
            ShortId(2),
            LinkKeys {
                short: ShortId(1),
                endpoint: Some(addr(1)),
                current: Some(&kb),
                receive: vec![&kb],
            },
        );
        (a, b)
    }

    /// Delivers everything `from` queued to `to`, keeping datagrams that
    /// `drop` selects out. Returns how many were delivered.
    fn deliver(
        from: &mut Heartbeats,
        from_addr: SocketAddr,
        to: &mut Heartbeats,
        now: Instant,
        drop: impl Fn(&[u8]) -> bool,
    ) -> usize {
        let mut n = 0;
        while let Some((_, mut d)) = from.poll_transmit() {
            if !drop(&d) {
                to.handle_datagram(now, from_addr, &mut d);
                n += 1;
            }
        }
        n
    }

    fn run(
        a: &mut Heartbeats,
        b: &mut Heartbeats,
        from: Instant,
        until: Instant,
        drop: impl Fn(&[u8]) -> bool + Copy,
    ) {
        let mut now = from;
        for _ in 0..10_000 {
            if now > until {
                return;
            }
            a.handle_timeout(now);
            b.handle_timeout(now);
            for _ in 0..3 {
                deliver(a, addr(1), b, now, drop);
                deliver(b, addr(2), a, now, drop);
            }
            let next = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .map(|(t, _)| t)
                .min()
                .unwrap();
            assert!(
                next > now || next == now && now == from,
                "deadline not advancing"
            );
            now = next.max(now + Duration::from_millis(1));
        }
    }

    fn established(events: &mut Heartbeats) -> Option<bool> {
        let mut last = None;
        while let Some(e) = events.poll_event() {
            if let HeartbeatEvent::Established { established, .. } = e {
                last = Some(established);
            }
        }
        last
    }

    #[test]
    fn two_links_that_exchange_heartbeats_become_established() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        run(&mut a, &mut b, t0, t0 + Duration::from_secs(2), |_| false);
        assert_eq!(established(&mut a), Some(true));
        assert_eq!(established(&mut b), Some(true));
        let s = a.status(B, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!((s.udp, s.pmtu), (UdpState::Ok, PmtuState::Ok));
        assert!(s.rtt.is_some());
    }

    #[test]
    fn a_link_whose_heartbeats_stop_arriving_loses_liveness_within_two_seconds() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let up = t0 + Duration::from_secs(3);
        run(&mut a, &mut b, t0, up, |_| false);
        assert_eq!(established(&mut a), Some(true));
        run(&mut a, &mut b, up, up + Duration::from_secs(2), |_| true);
        assert_eq!(established(&mut a), Some(false));
        let s = a.status(B, up + Duration::from_secs(2)).unwrap();
        assert_eq!(s.udp, UdpState::Blocked);
    }

    #[test]
    fn a_path_that_drops_full_size_probes_is_udp_ok_but_pmtu_too_small() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let end = t0 + Duration::from_secs(6);
        run(&mut a, &mut b, t0, end, |d| d.len() > 1000);
        assert_ne!(established(&mut a), Some(true));
        let s = a.status(B, end).unwrap();
        assert_eq!((s.udp, s.pmtu), (UdpState::Ok, PmtuState::TooSmall));
    }

    #[test]
    fn data_traffic_counts_as_liveness() {
        let t0 = Instant::now();
        let (mut a, _b) = pair(t0);
        assert_eq!(a.status(B, t0).unwrap().udp, UdpState::Unverified);
        a.observe_data(B, Some(t0));
        assert_eq!(a.status(B, t0).unwrap().udp, UdpState::Ok);
    }

    #[test]
    fn a_replayed_or_forged_heartbeat_is_dropped_without_effect() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.handle_timeout(t0);
        let (_, d) = a.poll_transmit().unwrap();
        let mut first = d.clone();
        b.handle_datagram(t0, addr(1), &mut first);
        assert!(b.poll_event().is_some());
        let mut again = d.clone();
        b.handle_datagram(t0, addr(1), &mut again);
        assert!(b.poll_event().is_none(), "replay");
        let mut forged = d;
        let last = forged.len() - 1;
        forged[last] ^= 1;
        b.handle_datagram(t0, addr(1), &mut forged);
        assert!(b.poll_event().is_none(), "bad tag");
        b.handle_datagram(t0, addr(1), &mut [0u8; 3]);
        assert!(b.poll_event().is_none(), "truncated");
    }

    #[test]
    fn windows_go_with_their_keysets() {
        let t0 = Instant::now();
        let (mut a, _b) = pair(t0);
        let old = keyset(10, 20, 1, 2, t0);
        let new = keyset(11, 21, 3, 4, t0);
        let link = |receive| LinkKeys {
            short: ShortId(2),
            endpoint: Some(addr(2)),
            current: Some(&new),
            receive,
        };
        a.set_link(B, ShortId(1), link(vec![&new, &old]));
        assert_eq!(a.windows(), 2);
        a.set_link(B, ShortId(1), link(vec![&new]));
        assert_eq!(a.windows(), 1, "the old keyset's window is pruned");
        // Many rekeys: the windows never pile up.
        for i in 0..100u32 {
            let k = keyset(100 + i, 200 + i, 5, 6, t0);
            a.set_link(
                B,
                ShortId(1),
                LinkKeys {
                    short: ShortId(2),
                    endpoint: Some(addr(2)),
                    current: Some(&k),
                    receive: vec![&k],
                },
            );
        }
        assert_eq!(a.windows(), 1);
        a.remove(B);
        assert_eq!(a.windows(), 0);
    }
}
