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
//! The worker is the loop: sockets, buffers, batching, flushing, stats,
//! priority. The per-packet protocol — sealing, opening, lane and replay
//! checks, relay or deliver — is its lane's (`lane::Lane`, over the framing
//! in `datagram`), which also keeps the lane's send counters and replay
//! windows. The worker reads the forwarding table from an immutable
//! snapshot; its buffers are allocated once, so nothing on the per-packet
//! path locks or allocates.

use super::aqm::StandingQueue;
use super::batch::SendBatch;
use super::coalesce::{Coalescer, Push};
use super::datagram::{OVERHEAD, OpenError};
use super::icmp::{self, ReplyLimit};
use super::lane::{self, Discard, Lane, Route, Verdict};
use super::offload::OffloadState;
use super::packet::{self, DataHeader, HEADER_LEN};
use super::priority::{self, BusyGuard, Priority, Step};
use super::segment::Segmenter;
use super::snapshot::Snapshot;
use super::stats::{DropReason, Family, WorkerStats};
use super::sys::{self, RecvMeta};
use super::vnet::{VNET_HDR_LEN, VnetHdr};
use arc_swap::ArcSwap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc::{Sender, error::TrySendError};

pub use super::lane::WorkerEvent;

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

/// The worker's state; `run` consumes it on its own thread.
pub struct Worker {
    /// The lane's protocol state: counters, replay windows, reports.
    lane: Lane,
    tun: File,
    udp: UdpSocket,
    table: Arc<ArcSwap<Snapshot>>,
    stats: Arc<WorkerStats>,
    events: Sender<WorkerEvent>,
    stop: Arc<AtomicBool>,
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
    /// A worker for `lane` of `workers` over one TUN queue and one UDP
    /// socket (both non-blocking), on the plain path until
    /// [`Worker::with_offload`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lane: u8,
        workers: u8,
        tun: File,
        udp: UdpSocket,
        table: Arc<ArcSwap<Snapshot>>,
        stats: Arc<WorkerStats>,
        events: Sender<WorkerEvent>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            lane: Lane::new(lane, workers),
            tun,
            udp,
            table,
            stats,
            events,
            stop,
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
        let speak = self.lane.lane() == 0;
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
                    tracing::error!(lane = self.lane.lane(), error = %e, "poll failed; worker stops");
                    return;
                }
            };
            let table = self.table.load_full();
            self.lane.handle_snapshot(&table);
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
            while let Some(event) = self.lane.poll_event() {
                // Full: the control task is far behind; the event is dropped
                // and counted (a later packet reports a move again).
                if let Err(TrySendError::Full(_)) = self.events.try_send(event) {
                    WorkerStats::add(&self.stats.events_dropped, 1);
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
            let merged = c.take_merged();
            WorkerStats::add(&stats.coalesced_v4, merged.v4);
            WorkerStats::add(&stats.coalesced_v6, merged.v6);
        }
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
        let Some(addresses) = packet::inner_addresses(inner) else {
            self.stats.count_drop(DropReason::NotIp);
            return;
        };
        let family = Some(Family::from_ipv6(addresses.ipv6));
        let Ok(mut segments) = Segmenter::new(&hdr, inner) else {
            self.stats.count_drop_of(DropReason::BadSegment, family);
            return;
        };
        let mtu = if addresses.ipv6 {
            table.mtu6
        } else {
            table.mtu
        };
        if segments.max_segment_len() > mtu {
            self.stats.count_drop_of(DropReason::TooBig, family);
            self.reply_too_big(inner, mtu);
            return;
        }
        // Only TCP data is dropped to fight a standing queue (DESIGN.md
        // "The fast data path": RTT under load); see `aqm`.
        let next_header = if addresses.ipv6 { inner[6] } else { inner[9] };
        let tcp_data = inner.len() > 576 && next_header == 6;
        if tcp_data && self.vnet && self.standing.should_drop(self.now) {
            self.stats.count_drop_of(DropReason::Aqm, family);
            return;
        }
        let route = match lane::route_from_tun(table, addresses.dst) {
            Ok(route) => route,
            Err(discard) => {
                self.stats.count_drop_of(discard.reason(), family);
                return;
            }
        };
        if let Some((n, bytes)) = self.send_segments(table, route, &mut segments, family) {
            WorkerStats::add(&self.stats.packets_out, n as u64);
            WorkerStats::add(&self.stats.bytes_out, bytes as u64);
            if addresses.ipv6 {
                WorkerStats::add(&self.stats.packets_out6, n as u64);
                WorkerStats::add(&self.stats.bytes_out6, bytes as u64);
            }
        }
    }

    /// Tells the sender of an oversized don't-fragment packet the overlay MTU
    /// (`icmp`), rate-limited, so that its path MTU drops instead of the
    /// connection stalling.
    fn reply_too_big(&mut self, inner: &[u8], mtu: usize) {
        let Some(reply) = icmp::too_big(inner, mtu) else {
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

    /// Cuts every segment of `segments` into the send batch, sealed for the
    /// next hop along `route`, each with its own counter (drops counted
    /// for `family`). Returns the number of segments and inner bytes queued.
    fn send_segments(
        &mut self,
        table: &Snapshot,
        route: Route,
        segments: &mut Segmenter<'_>,
        family: Option<Family>,
    ) -> Option<(usize, usize)> {
        let mut sealer = match self.lane.sealer(table, route, segments.remaining()) {
            Ok(sealer) => sealer,
            Err(discard) => {
                self.stats.count_drop_of(discard.reason(), family);
                return None;
            }
        };
        let endpoint = sealer.endpoint();
        let gso = self.offload.gso();
        let need = segments.max_segment_len() + OVERHEAD;
        let (mut n, mut bytes) = (0, 0);
        loop {
            if !self.send.has_room(need) {
                self.flush_send();
            }
            let tail = self.send.tail();
            let Some(len) = segments.next_into(&mut tail[HEADER_LEN..]) else {
                break;
            };
            let Some(sealed) = sealer.seal(tail, len) else {
                // More segments than `remaining` said: never reuse a counter.
                self.stats.count_drop_of(DropReason::NoSession, family);
                break;
            };
            self.send.commit(endpoint, sealed, gso);
            n += 1;
            bytes += len;
        }
        Some((n, bytes))
    }

    /// One datagram from `from` (a whole `buffer`, possibly one segment of a
    /// GRO train): the lane decides, the worker counts and moves bytes.
    fn handle_datagram(
        &mut self,
        table: &Arc<Snapshot>,
        buffer: &mut [u8],
        from: SocketAddr,
        now: Instant,
    ) {
        let fresh;
        let mut table = table;
        let mut verdict = self.lane.handle_datagram(table, buffer, from, now);
        if verdict == Verdict::Discard(Discard::Open(OpenError::UnknownSession)) {
            // The control task may have installed this keyset since the
            // batch began: look once more at the latest table (an unknown
            // session changed nothing, so the datagram is as it came).
            fresh = self.table.load_full();
            table = &fresh;
            verdict = self.lane.handle_datagram(table, buffer, from, now);
        }
        match verdict {
            Verdict::Deliver { inner } => self.deliver(buffer, inner),
            Verdict::Relay { route, inner } => {
                let family = Family::of(&buffer[inner.clone()]);
                let Ok(mut one) = Segmenter::new(&VnetHdr::default(), &buffer[inner]) else {
                    return;
                };
                if self.send_segments(table, route, &mut one, family).is_some() {
                    WorkerStats::add(&self.stats.forwarded, 1);
                }
            }
            // Heartbeats travel on the control lane to the control task.
            Verdict::Control => self.stats.count_drop(DropReason::BadHeader),
            Verdict::Discard(discard) => {
                // Opened in place: the inner packet follows the header.
                let family = discard
                    .opened()
                    .then(|| Family::of(buffer.get(HEADER_LEN..).unwrap_or_default()))
                    .flatten();
                self.stats.count_drop_of(discard.reason(), family);
                if discard == Discard::Open(OpenError::UnknownSession) && self.log_limit.allow(now)
                {
                    let session = DataHeader::parse(buffer).map(|h| h.session).ok();
                    tracing::debug!(lane = self.lane.lane(), ?session, %from, "dropped a packet for an unknown session");
                }
            }
        }
    }

    /// Writes an inner packet addressed to this router's pods, its source
    /// already checked by the lane, into the TUN (through the coalescer on
    /// the fast path). The inner packet is `datagram[inner]`; the opened
    /// header before it is free to hold a virtio header.
    fn deliver(&mut self, datagram: &mut [u8], inner: Range<usize>) {
        WorkerStats::add(&self.stats.packets_in, 1);
        WorkerStats::add(&self.stats.bytes_in, inner.len() as u64);
        if datagram.get(inner.start).is_some_and(|b| b >> 4 == 6) {
            WorkerStats::add(&self.stats.packets_in6, 1);
            WorkerStats::add(&self.stats.bytes_in6, inner.len() as u64);
        }
        let (tun, stats) = (&self.tun, &self.stats);
        let Some(coalescer) = &mut self.coalescer else {
            tun_write(tun, stats, &datagram[inner]);
            return;
        };
        if coalescer.push(&datagram[inner.clone()], &mut |b: &[u8]| {
            tun_write(tun, stats, b)
        }) == Push::Held
        {
            return;
        }
        let Some(at) = inner.start.checked_sub(VNET_HDR_LEN) else {
            return;
        };
        datagram[at..inner.start].fill(0);
        tun_write(tun, stats, &datagram[at..inner.end]);
    }
}
