//! One data-plane worker thread: owns one TUN queue, one UDP socket of the
//! reuseport group and one lane. Run to completion per batch (DESIGN.md
//! "The fast data path"):
//!
//! - send: read a (super-)packet from the TUN, route once, cut it at the
//!   virtio `gso_size` straight into the send arena, seal each segment in
//!   place with its own counter, and after the read batch send the arena
//!   with one `sendmmsg` (UDP GSO messages);
//! - receive: `recvmmsg` (UDP GRO trains), split at the segment size, check
//!   the window, open in place, mark, then coalesce per inner TCP flow and
//!   write to the TUN with a virtio header, or relay.
//!
//! The worker reads the forwarding table from an immutable snapshot and
//! keeps its own lane's send counters and replay windows; its buffers are
//! allocated once, so nothing on the per-packet path locks or allocates.

use super::aqm::StandingQueue;
use super::batch::SendBatch;
use super::coalesce::{Coalescer, Push};
use super::icmp::{self, ReplyLimit};
use super::idmap::IdMap;
use super::offload::OffloadState;
use super::packet::{self, DataHeader, HEADER_LEN, HOP_LIMIT, PacketType};
use super::priority::{self, BusyGuard, Priority, Step};
use super::segment::Segmenter;
use super::snapshot::{SendKeys, Snapshot};
use super::stats::{DropReason, WorkerStats};
use super::sys::{self, RecvMeta};
use super::vnet::{VNET_HDR_LEN, VnetHdr};
use crate::crypto::data::{COUNTER_LIMIT, TAG_LEN};
use crate::crypto::replay::ReplayWindow;
use crate::id::ShortId;
use arc_swap::ArcSwap;
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

/// TUN reads per readiness before turning to the socket: bounds the batch,
/// and so the latency one direction adds to the other.
const TUN_BATCH: usize = 16;
/// Inner bytes read from the TUN per readiness: at ~3 Gbit/s, 192 KB is
/// half a millisecond of work before the other direction gets its turn.
const TUN_BATCH_BYTES: usize = 192 * 1024;
/// `recvmmsg` calls per readiness.
const RX_ROUNDS: usize = 2;
/// Slots per `recvmmsg`; each holds a whole GRO train.
const RX_SLOTS: usize = 8;
/// A GRO train is at most 64 KB.
const RX_SLOT_LEN: usize = 65_536;
/// Largest TUN read: the virtio header and a 64 KB packet.
const TUN_BUF_LEN: usize = VNET_HDR_LEN + 65_535;
/// Inner TCP flows the coalescer keeps pending at once.
const COALESCE_FLOWS: usize = 8;

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
    counters: IdMap<u32, u64>,
    windows: IdMap<(u32, u8), LaneWindow>,
    reported_endpoints: IdMap<ShortId, SocketAddr>,
    reported_confirmations: IdMap<u32, ()>,
    last_table: usize,
    log_limit: LogLimit,
    offload: Arc<OffloadState>,
    vnet: bool,
    tun_buf: Vec<u8>,
    rx_bufs: Vec<Box<[u8]>>,
    rx_meta: [RecvMeta; RX_SLOTS],
    send: SendBatch,
    coalescer: Option<Coalescer>,
    standing: StandingQueue,
    too_big_replies: ReplyLimit,
    now: Instant,
    priority: Priority,
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

/// One TUN write; a short or failed write is a counted drop.
fn tun_write(tun: &File, stats: &WorkerStats, bytes: &[u8]) {
    let mut tun = tun;
    match tun.write(bytes) {
        Ok(n) if n == bytes.len() => {}
        Ok(_) | Err(_) => stats.count_drop(DropReason::IoError),
    }
}

impl Worker {
    /// A worker for `lane` over one TUN queue and one UDP socket (both
    /// non-blocking), on the plain path until [`Worker::with_offload`].
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
            counters: IdMap::default(),
            windows: IdMap::default(),
            reported_endpoints: IdMap::default(),
            reported_confirmations: IdMap::default(),
            last_table: 0,
            log_limit: LogLimit::default(),
            offload: Arc::new(OffloadState::none("not configured")),
            vnet: false,
            tun_buf: vec![0u8; TUN_BUF_LEN],
            rx_bufs: (0..RX_SLOTS)
                .map(|_| vec![0u8; RX_SLOT_LEN].into_boxed_slice())
                .collect(),
            rx_meta: [RecvMeta::default(); RX_SLOTS],
            send: SendBatch::new(),
            coalescer: None,
            standing: StandingQueue::default(),
            too_big_replies: ReplyLimit::default(),
            now: Instant::now(),
            priority: Priority::Unchanged,
        }
    }

    /// Sets the offload state shared with the other workers, and whether
    /// this worker's TUN queue carries virtio headers (then writes are
    /// coalesced).
    pub fn with_offload(mut self, offload: Arc<OffloadState>, vnet: bool) -> Self {
        self.offload = offload;
        self.vnet = vnet;
        self.coalescer = vnet.then(|| Coalescer::new(COALESCE_FLOWS));
        self
    }

    /// Sets the scheduling the worker thread asks for when it starts; see
    /// `priority`.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Applies `self.priority` to this thread; returns the guard that steps
    /// a real-time worker down when it saturates. Lane 0 speaks for all: the
    /// others get the same answer.
    fn take_priority(&self) -> Option<BusyGuard> {
        let speak = self.lane == 0;
        let nice = match self.priority {
            Priority::Unchanged => return None,
            Priority::Nice(nice) => nice,
            Priority::Realtime => match priority::enter_realtime() {
                Ok(()) => {
                    WorkerStats::add(&self.stats.realtime, 1);
                    if speak {
                        tracing::info!(
                            "data-plane workers run in the real-time class (SCHED_FIFO 1) like softirq, stepping down to nice {} after {:?} of unbroken work",
                            priority::FALLBACK_NICE,
                            priority::BUSY_LIMIT
                        );
                    }
                    return Some(BusyGuard::default());
                }
                Err(e) => {
                    if speak {
                        tracing::warn!(error = %e, "the real-time class was refused (needs CAP_SYS_NICE and a real-time budget in the cgroup); data-plane workers run at nice {} instead", priority::FALLBACK_NICE);
                    }
                    priority::FALLBACK_NICE
                }
            },
        };
        match priority::set_nice(nice) {
            Ok(()) if speak => {
                tracing::info!(nice, "data-plane workers run at a raised CPU priority");
            }
            Err(e) if speak => {
                tracing::warn!(nice, error = %e, "cannot raise the data-plane workers' CPU priority (needs CAP_SYS_NICE); expect more latency under load on a busy node");
            }
            _ => {}
        }
        None
    }

    /// Moves a real-time worker out of or back into its class after a turn.
    fn pace(&self, guard: &mut BusyGuard, idle: bool) {
        let now = if idle { self.now } else { Instant::now() };
        match guard.on_turn(idle, now) {
            Step::Stay => {}
            Step::StepDown => {
                if priority::leave_realtime(priority::FALLBACK_NICE).is_ok() {
                    WorkerStats::add(&self.stats.busy_step_downs, 1);
                    self.stats.realtime.store(0, Ordering::Relaxed);
                }
            }
            Step::StepUp => {
                if priority::enter_realtime().is_ok() {
                    self.stats.realtime.store(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Runs until `stop` is set. Errors on individual packets are counted,
    /// never returned.
    pub fn run(mut self) {
        let mut guard = self.take_priority();
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
            let tun_empty = !ready.first || self.drain_tun(&table);
            let udp_empty = !ready.second || self.drain_udp(&table);
            if let Some(guard) = &mut guard {
                self.pace(guard, tun_empty && udp_empty);
            }
        }
    }

    /// Reads up to `TUN_BATCH` packets from the TUN, queues their sealed
    /// segments, and sends them. Returns whether it found the TUN empty.
    fn drain_tun(&mut self, table: &Snapshot) -> bool {
        let mut buf = std::mem::take(&mut self.tun_buf);
        let mut bytes = 0;
        let mut drained = false;
        self.now = Instant::now();
        for _ in 0..TUN_BATCH {
            if bytes >= TUN_BATCH_BYTES {
                break;
            }
            match (&self.tun).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    bytes += n;
                    self.handle_tun_packet(table, &buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.stats.count_drop(DropReason::IoError);
                    break;
                }
            }
        }
        self.tun_buf = buf;
        if self.vnet {
            self.standing.on_batch_end(bytes, drained, self.now);
        }
        self.flush_send();
        drained
    }

    /// Receives up to `RX_ROUNDS` batches of datagrams, handles every
    /// segment, and after each batch writes the coalesced packets and sends
    /// what is being relayed. Returns whether it found the socket empty.
    fn drain_udp(&mut self, table: &Arc<Snapshot>) -> bool {
        let mut drained = false;
        let mut bufs = std::mem::take(&mut self.rx_bufs);
        let now = Instant::now();
        for _ in 0..RX_ROUNDS {
            let mut meta = self.rx_meta;
            let n = match sys::recv_mmsg(self.udp.as_fd(), &mut bufs, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    // ICMP errors surface here as ECONNREFUSED etc.
                    self.stats.count_drop(DropReason::IoError);
                    break;
                }
            };
            for (buf, m) in bufs.iter_mut().zip(&meta).take(n) {
                let Some(from) = m.addr else {
                    continue;
                };
                let len = m.len.min(buf.len());
                let step = if m.segment > 0 { m.segment } else { len.max(1) };
                let mut start = 0;
                while start < len {
                    let end = (start + step).min(len);
                    self.handle_datagram(table, &mut buf[start..end], from, now);
                    start = end;
                }
            }
            self.flush_tun();
            self.flush_send();
            if n < RX_SLOTS {
                drained = true;
                break;
            }
        }
        self.rx_bufs = bufs;
        drained
    }

    fn flush_send(&mut self) {
        if !self.send.is_empty() {
            self.send
                .flush(self.udp.as_fd(), &self.stats, &self.offload);
        }
    }

    fn flush_tun(&mut self) {
        if let Some(c) = &mut self.coalescer {
            let (tun, stats) = (&self.tun, &self.stats);
            c.flush(&mut |b: &[u8]| tun_write(tun, stats, b));
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

    /// One read from the TUN: a virtio header (on the fast path) and an
    /// inner packet, possibly a super-packet.
    fn handle_tun_packet(&mut self, table: &Snapshot, read: &[u8]) {
        let (hdr, inner) = if self.vnet {
            let Some(hdr) = VnetHdr::parse(read) else {
                self.stats.count_drop(DropReason::BadSegment);
                return;
            };
            (hdr, &read[VNET_HDR_LEN..])
        } else {
            (VnetHdr::default(), read)
        };
        let Some((_src, dst)) = packet::ipv4_addresses(inner) else {
            self.stats.count_drop(DropReason::NotIpv4);
            return;
        };
        let Ok(mut segments) = Segmenter::new(&hdr, inner) else {
            self.stats.count_drop(DropReason::BadSegment);
            return;
        };
        if segments.max_segment_len() > table.mtu {
            self.stats.count_drop(DropReason::TooBig);
            self.reply_too_big(inner, table.mtu);
            return;
        }
        // Only TCP data is dropped to fight a standing queue (DESIGN.md
        // "The fast data path": RTT under load); see `aqm`.
        let tcp_data = inner.len() > 576 && inner[9] == 6;
        if tcp_data && self.vnet && self.standing.should_drop(self.now) {
            self.stats.count_drop(DropReason::Aqm);
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
        if let Some((n, bytes)) =
            self.send_segments(table, owner, table.me, HOP_LIMIT, &mut segments)
        {
            WorkerStats::add(&self.stats.packets_out, n as u64);
            WorkerStats::add(&self.stats.bytes_out, bytes as u64);
        }
    }

    /// Tells the sender of an oversized don't-fragment packet the overlay MTU
    /// (`icmp`), rate-limited, so that its path MTU drops instead of the
    /// connection stalling.
    fn reply_too_big(&mut self, inner: &[u8], mtu: usize) {
        let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
        let Some(reply) = icmp::frag_needed(inner, mtu) else {
            return;
        };
        if !self.too_big_replies.allow(self.now) {
            return;
        }
        if self.vnet {
            // A virtio header saying "no offload" goes first.
            let mut framed = vec![0u8; VNET_HDR_LEN + reply.len()];
            framed[VNET_HDR_LEN..].copy_from_slice(&reply);
            tun_write(&self.tun, &self.stats, &framed);
        } else {
            tun_write(&self.tun, &self.stats, &reply);
        }
        WorkerStats::add(&self.stats.too_big_replies, 1);
    }

    /// The send keys and endpoint of the next hop toward `dst`.
    fn route<'t>(&self, table: &'t Snapshot, dst: ShortId) -> Option<(&'t SendKeys, SocketAddr)> {
        let Some(link) = table.next_hop(dst).and_then(|next| table.link(next)) else {
            self.stats.count_drop(DropReason::NoRoute);
            return None;
        };
        let (Some(keys), Some(endpoint)) = (link.send.as_ref(), link.endpoint) else {
            self.stats.count_drop(DropReason::NoSession);
            return None;
        };
        Some((keys, endpoint))
    }

    /// Cuts every segment of `segments` into the send batch, sealed for the
    /// next hop toward `dst`, each with its own counter. Returns the number
    /// of segments and inner bytes queued.
    fn send_segments(
        &mut self,
        table: &Snapshot,
        dst: ShortId,
        src: ShortId,
        hop_limit: u8,
        segments: &mut Segmenter<'_>,
    ) -> Option<(usize, usize)> {
        let (keys, endpoint) = self.route(table, dst)?;
        let count = segments.remaining() as u64;
        let counter = self.counters.entry(keys.remote_index).or_insert(0);
        if *counter + count > COUNTER_LIMIT + 1 {
            self.stats.count_drop(DropReason::NoSession);
            return None;
        }
        let mut next = *counter;
        *counter += count;
        let gso = self.offload.gso();
        let need = HEADER_LEN + segments.max_segment_len() + TAG_LEN;
        let (mut n, mut bytes) = (0, 0);
        loop {
            if !self.send.has_room(need) {
                self.flush_send();
            }
            let tail = self.send.tail();
            let Some(len) = segments.next_into(&mut tail[HEADER_LEN..]) else {
                break;
            };
            let header = DataHeader {
                kind: PacketType::Data,
                hop_limit,
                src,
                dst,
                session: keys.remote_index,
                lane: self.lane,
                counter: next,
            };
            next += 1;
            let mut header_bytes = [0u8; HEADER_LEN];
            header.emit(&mut header_bytes);
            tail[..HEADER_LEN].copy_from_slice(&header_bytes);
            let tag = keys.key.seal_in_place(
                self.lane,
                header.counter,
                &header_bytes,
                &mut tail[HEADER_LEN..HEADER_LEN + len],
            );
            tail[HEADER_LEN + len..HEADER_LEN + len + TAG_LEN].copy_from_slice(&tag);
            self.send.commit(endpoint, HEADER_LEN + len + TAG_LEN, gso);
            n += 1;
            bytes += len;
        }
        Some((n, bytes))
    }

    /// One datagram from `from` (a whole `buffer`, possibly one segment of a
    /// GRO train).
    fn handle_datagram(
        &mut self,
        table: &Arc<Snapshot>,
        buffer: &mut [u8],
        from: SocketAddr,
        now: Instant,
    ) {
        let len = buffer.len();
        let Ok(header) = DataHeader::parse(buffer) else {
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
            if self.log_limit.allow(now) {
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
            self.deliver(table, header.src, buffer, inner_len);
        } else if header.hop_limit <= 1 {
            self.stats.count_drop(DropReason::HopLimit);
        } else {
            let inner = &buffer[HEADER_LEN..body_end];
            let Ok(mut one) = Segmenter::new(&VnetHdr::default(), inner) else {
                return;
            };
            if self
                .send_segments(
                    table,
                    header.dst,
                    header.src,
                    header.hop_limit - 1,
                    &mut one,
                )
                .is_some()
            {
                WorkerStats::add(&self.stats.forwarded, 1);
            }
        }
    }

    /// Writes an inner packet addressed to this router's pods into the TUN
    /// (through the coalescer on the fast path), after checking that its
    /// source lies in the sender's ranges. The inner packet is
    /// `datagram[HEADER_LEN..HEADER_LEN + len]`; the opened header before it
    /// is free to hold a virtio header.
    fn deliver(&mut self, table: &Snapshot, sender: ShortId, datagram: &mut [u8], len: usize) {
        let inner = &datagram[HEADER_LEN..HEADER_LEN + len];
        let Some((src, _dst)) = packet::ipv4_addresses(inner) else {
            self.stats.count_drop(DropReason::NotIpv4);
            return;
        };
        if table.owner_of(src) != Some(sender) {
            self.stats.count_drop(DropReason::SpoofedSource);
            return;
        }
        WorkerStats::add(&self.stats.packets_in, 1);
        WorkerStats::add(&self.stats.bytes_in, len as u64);
        let (tun, stats) = (&self.tun, &self.stats);
        let Some(coalescer) = &mut self.coalescer else {
            tun_write(tun, stats, inner);
            return;
        };
        if coalescer.push(inner, &mut |b: &[u8]| tun_write(tun, stats, b)) == Push::Held {
            return;
        }
        let at = HEADER_LEN - VNET_HDR_LEN;
        datagram[at..HEADER_LEN].fill(0);
        tun_write(tun, stats, &datagram[at..HEADER_LEN + len]);
    }
}
