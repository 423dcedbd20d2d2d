//! One data-plane worker thread: owns one TUN queue, one UDP socket of the
//! reuseport group and one lane. Run to completion per packet: read, route
//! once, seal in place, send; or receive, check the window, open in place,
//! mark, then write to the TUN or relay.
//!
//! The worker reads the forwarding table from an immutable snapshot and
//! keeps its own lane's send counters and replay windows, so nothing on the
//! per-packet path locks or allocates (DESIGN.md "The fast data path").

use super::packet::{self, DataHeader, HEADER_LEN, HOP_LIMIT, PacketType};
use super::snapshot::Snapshot;
use super::stats::{DropReason, WorkerStats};
use super::sys;
use crate::crypto::data::{COUNTER_LIMIT, TAG_LEN};
use crate::crypto::replay::ReplayWindow;
use crate::id::ShortId;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

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

/// Most packets handled per readiness before checking the other descriptor,
/// so one busy direction cannot starve the other.
const BATCH: usize = 64;
/// Largest datagram we read: a full inner packet plus header and tag.
const BUFFER_LEN: usize = 65_535 + HEADER_LEN + TAG_LEN;

/// A replay window plus the highest counter accepted in it.
struct LaneWindow {
    window: ReplayWindow,
    highest: Option<u64>,
}

/// The worker's state; `run` consumes it on its own thread.
pub struct Worker {
    lane: u8,
    tun: File,
    udp: UdpSocket,
    table: Arc<ArcSwap<Snapshot>>,
    stats: Arc<WorkerStats>,
    events: UnboundedSender<WorkerEvent>,
    stop: Arc<AtomicBool>,
    counters: HashMap<u32, u64>,
    windows: HashMap<(u32, u8), LaneWindow>,
    reported_endpoints: HashMap<ShortId, SocketAddr>,
    reported_confirmations: HashMap<u32, ()>,
    last_table: usize,
    log_limit: LogLimit,
}

/// Lets one log line through per second (DESIGN.md invariant 4: logged at
/// most once a second).
#[derive(Default)]
struct LogLimit {
    last: Option<Instant>,
}

impl LogLimit {
    fn allow(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1))
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

impl Worker {
    /// A worker for `lane` over one TUN queue and one UDP socket (both
    /// non-blocking).
    pub fn new(
        lane: u8,
        tun: File,
        udp: UdpSocket,
        table: Arc<ArcSwap<Snapshot>>,
        stats: Arc<WorkerStats>,
        events: UnboundedSender<WorkerEvent>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            lane,
            tun,
            udp,
            table,
            stats,
            events,
            stop,
            counters: HashMap::new(),
            windows: HashMap::new(),
            reported_endpoints: HashMap::new(),
            reported_confirmations: HashMap::new(),
            last_table: 0,
            log_limit: LogLimit::default(),
        }
    }

    /// Runs until `stop` is set. Errors on individual packets are counted,
    /// never returned.
    pub fn run(mut self) {
        let mut buffer = vec![0u8; BUFFER_LEN];
        while !self.stop.load(Ordering::Relaxed) {
            let ready = match sys::poll2(self.tun.as_fd(), self.udp.as_fd(), 200) {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!(lane = self.lane, error = %e, "poll failed; worker stops");
                    return;
                }
            };
            let table = self.table.load_full();
            self.forget_stale_state(&table);
            if ready.first {
                for _ in 0..BATCH {
                    match self.tun.read(&mut buffer[HEADER_LEN..BUFFER_LEN - TAG_LEN]) {
                        Ok(0) => break,
                        Ok(n) => self.handle_tun_packet(&table, &mut buffer, n),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => {
                            self.stats.count_drop(DropReason::IoError);
                            break;
                        }
                    }
                }
            }
            if ready.second {
                for _ in 0..BATCH {
                    match self.udp.recv_from(&mut buffer) {
                        Ok((n, from)) => self.handle_datagram(&table, &mut buffer, n, from),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => {
                            // ICMP errors surface here as ECONNREFUSED etc.
                            self.stats.count_drop(DropReason::IoError);
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Drops counters and windows of keysets the table no longer has, once
    /// per table generation.
    fn forget_stale_state(&mut self, table: &Arc<Snapshot>) {
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
        let live_remote: Vec<u32> = table
            .links_iter()
            .filter_map(|(_, link)| link.send.as_ref().map(|k| k.remote_index))
            .collect();
        self.counters.retain(|index, _| live_remote.contains(index));
    }

    /// An inner packet read from the TUN into `buffer[HEADER_LEN..HEADER_LEN + len]`.
    fn handle_tun_packet(&mut self, table: &Snapshot, buffer: &mut [u8], len: usize) {
        let Some((_src, dst)) = packet::ipv4_addresses(&buffer[HEADER_LEN..HEADER_LEN + len])
        else {
            self.stats.count_drop(DropReason::NotIpv4);
            return;
        };
        if len > table.mtu {
            self.stats.count_drop(DropReason::TooBig);
            return;
        }
        let Some(owner) = table.owner_of(dst) else {
            self.stats.count_drop(DropReason::NoRoute);
            return;
        };
        if owner == table.me {
            self.stats.count_drop(DropReason::OwnedLocally);
            return;
        }
        if self.send_toward(table, owner, table.me, HOP_LIMIT, buffer, len) {
            WorkerStats::add(&self.stats.packets_out, 1);
            WorkerStats::add(&self.stats.bytes_out, len as u64);
        }
    }

    /// Seals `buffer[HEADER_LEN..HEADER_LEN + len]` for the next hop toward
    /// `dst` and sends it. Returns whether it was sent.
    fn send_toward(
        &mut self,
        table: &Snapshot,
        dst: ShortId,
        src: ShortId,
        hop_limit: u8,
        buffer: &mut [u8],
        len: usize,
    ) -> bool {
        let Some(next) = table.next_hop(dst) else {
            self.stats.count_drop(DropReason::NoRoute);
            return false;
        };
        let Some(link) = table.link(next) else {
            self.stats.count_drop(DropReason::NoRoute);
            return false;
        };
        let (Some(keys), Some(endpoint)) = (link.send.as_ref(), link.endpoint) else {
            self.stats.count_drop(DropReason::NoSession);
            return false;
        };
        let counter = self.counters.entry(keys.remote_index).or_insert(0);
        if *counter > COUNTER_LIMIT {
            self.stats.count_drop(DropReason::NoSession);
            return false;
        }
        let header = DataHeader {
            kind: PacketType::Data,
            hop_limit,
            src,
            dst,
            session: keys.remote_index,
            lane: self.lane,
            counter: *counter,
        };
        *counter += 1;
        let mut header_bytes = [0u8; HEADER_LEN];
        header.emit(&mut header_bytes);
        buffer[..HEADER_LEN].copy_from_slice(&header_bytes);
        let tag = keys.key.seal_in_place(
            self.lane,
            header.counter,
            &header_bytes,
            &mut buffer[HEADER_LEN..HEADER_LEN + len],
        );
        let end = HEADER_LEN + len + TAG_LEN;
        buffer[HEADER_LEN + len..end].copy_from_slice(&tag);
        match self.udp.send_to(&buffer[..end], endpoint) {
            Ok(_) => true,
            Err(_) => {
                self.stats.count_drop(DropReason::IoError);
                false
            }
        }
    }

    /// A datagram of `len` bytes from `from`, at the start of `buffer`.
    fn handle_datagram(
        &mut self,
        table: &Snapshot,
        buffer: &mut [u8],
        len: usize,
        from: SocketAddr,
    ) {
        let Ok(header) = DataHeader::parse(&buffer[..len]) else {
            self.stats.count_drop(DropReason::BadHeader);
            return;
        };
        if header.kind != PacketType::Data {
            // Heartbeats travel on the control lane to the control task.
            self.stats.count_drop(DropReason::BadHeader);
            return;
        }
        let fresh;
        let mut table = table;
        if table.session(header.session).is_none() {
            // The control task may have installed this keyset since the
            // batch began: look once more at the latest table.
            fresh = self.table.load_full();
            table = &fresh;
        }
        let Some(session) = table.session(header.session) else {
            self.stats.count_drop(DropReason::UnknownSession);
            if self.log_limit.allow(Instant::now()) {
                tracing::debug!(lane = self.lane, session = header.session, %from, "dropped a packet for an unknown session");
            }
            return;
        };
        let window = self
            .windows
            .entry((header.session, header.lane))
            .or_insert_with(|| LaneWindow {
                window: ReplayWindow::new(),
                highest: None,
            });
        if !window.window.would_accept(header.counter) {
            self.stats.count_drop(DropReason::Replay);
            return;
        }
        let body_end = len - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&buffer[body_end..len]);
        let (head, rest) = buffer.split_at_mut(HEADER_LEN);
        if session
            .key
            .open_in_place(
                header.lane,
                header.counter,
                head,
                &mut rest[..body_end - HEADER_LEN],
                &tag,
            )
            .is_err()
        {
            self.stats.count_drop(DropReason::BadTag);
            return;
        }
        if !window.window.mark(header.counter) {
            self.stats.count_drop(DropReason::Replay);
            return;
        }
        let newest = window.highest.is_none_or(|h| header.counter > h);
        if newest {
            window.highest = Some(header.counter);
        }
        let peer = session.peer;
        let now = Instant::now();
        if let Some(link) = table.link(peer) {
            link.liveness.touch(now);
            if newest
                && link.endpoint != Some(from)
                && self.reported_endpoints.get(&peer) != Some(&from)
            {
                self.reported_endpoints.insert(peer, from);
                let _ = self.events.send(WorkerEvent::EndpointMoved {
                    peer,
                    address: from,
                });
            }
        }
        if session.awaiting_confirmation
            && self
                .reported_confirmations
                .insert(header.session, ())
                .is_none()
        {
            let _ = self.events.send(WorkerEvent::KeysetConfirmed {
                local_index: header.session,
            });
        }
        let inner_len = body_end - HEADER_LEN;
        if header.dst == table.me {
            self.deliver(table, header.src, &buffer[HEADER_LEN..body_end], inner_len);
        } else if header.hop_limit <= 1 {
            self.stats.count_drop(DropReason::HopLimit);
        } else if self.send_toward(
            table,
            header.dst,
            header.src,
            header.hop_limit - 1,
            buffer,
            inner_len,
        ) {
            WorkerStats::add(&self.stats.forwarded, 1);
        }
    }

    /// Writes an inner packet addressed to this router's pods into the TUN,
    /// after checking that its source lies in the sender's ranges.
    fn deliver(&mut self, table: &Snapshot, sender: ShortId, inner: &[u8], len: usize) {
        let Some((src, _dst)) = packet::ipv4_addresses(inner) else {
            self.stats.count_drop(DropReason::NotIpv4);
            return;
        };
        if table.owner_of(src) != Some(sender) {
            self.stats.count_drop(DropReason::SpoofedSource);
            return;
        }
        match self.tun.write(inner) {
            Ok(written) if written == inner.len() => {
                WorkerStats::add(&self.stats.packets_in, 1);
                WorkerStats::add(&self.stats.bytes_in, len as u64);
            }
            Ok(_) | Err(_) => self.stats.count_drop(DropReason::IoError),
        }
    }
}
