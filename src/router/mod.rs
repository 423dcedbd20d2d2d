//! The data plane: TUN and UDP I/O on worker threads, the data header, the
//! forwarding snapshot and the counters. The control task owns everything
//! that changes; the data plane only reads the snapshot it publishes.
//!
//! The fast path (DESIGN.md "The fast data path", docs/DATAPATH.md): TUN
//! offloads hand a worker 64 KB super-packets (`vnet`), `segment` cuts them
//! at the kernel's segment size, each segment is sealed in place and the
//! lot leaves in one `sendmmsg` with UDP GSO (`batch`); on receive,
//! `recvmmsg` with UDP GRO, open each segment, and `coalesce` merges a
//! flow's segments back into one TUN write. `WEFT_DISABLE_OFFLOAD=1`, or a
//! kernel that refuses a flag, selects the plain path (one packet per TUN
//! read and write, still batched on the UDP side), said once in the log and
//! always in status (`offload`).
//!
//! The per-packet protocol has no I/O and its own tests: `datagram` is the
//! one implementation of the header + AEAD framing (also for the control
//! lane's heartbeats), `lane` a worker's lane state and the verdict for
//! each datagram (deliver, relay, control, discard); `worker` is the loop.

pub mod aqm;
pub mod batch;
pub mod checksum;
pub mod coalesce;
pub mod datagram;
pub mod icmp;
pub mod idmap;
pub mod lane;
pub mod offload;
pub mod packet;
pub mod priority;
pub mod segment;
pub mod snapshot;
pub mod stats;
pub mod tun;
pub mod udp;
pub mod vnet;
pub mod worker;

mod sys;

use arc_swap::ArcSwap;
use offload::OffloadState;
use snapshot::Snapshot;
use stats::{DataplaneTotals, WorkerStats};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use tokio::sync::mpsc::Sender;
use worker::{Worker, WorkerEvent};

/// Room in the queue of worker reports for the control task. Reports are
/// rare (a keyset confirmed, an endpoint moved, at most one per neighbour
/// per `lane::ENDPOINT_REPORT_EVERY`), so a full queue means the control
/// task is stuck; reports beyond it are dropped and counted.
pub const WORKER_EVENTS: usize = 4096;

/// How to start the data plane.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// TUN device name (`--iface`).
    pub iface: String,
    /// UDP listen address (the same port as the TCP control listener).
    pub listen: SocketAddr,
    /// Number of workers, which is also the number of lanes.
    pub workers: usize,
    /// Ask for the TUN and UDP offloads (off: `WEFT_DISABLE_OFFLOAD`).
    pub offload: bool,
    /// The workers' scheduling class (`WEFT_WORKER_PRIORITY`).
    pub priority: priority::Priority,
    /// The TUN queue length on the offload path (`WEFT_TUN_TXQUEUELEN`;
    /// `None`: the measured default).
    pub tun_txqueuelen: Option<i32>,
}

/// The running data plane.
pub struct Dataplane {
    table: Arc<ArcSwap<Snapshot>>,
    stats: Vec<Arc<WorkerStats>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    multi_queue: bool,
    lanes: usize,
    offload: Arc<OffloadState>,
}

impl Dataplane {
    /// Opens the TUN queues and the UDP group and starts the workers.
    /// Returns the data plane and the control task's own UDP socket (the
    /// last member of the reuseport group, which receives the control lane).
    pub fn start(
        config: &DataplaneConfig,
        initial: Snapshot,
        events: Sender<WorkerEvent>,
    ) -> io::Result<(Self, UdpSocket)> {
        let workers = config.workers.clamp(1, 64);
        let want = config.offload;
        let queues = tun::open(&config.iface, workers, want, config.tun_txqueuelen)?;
        let lanes = queues.queues.len();
        let (sockets, control, udp_offload) = udp::bind_group(config.listen, lanes, want)?;
        let offload = Arc::new(OffloadState::new(&queues, &udp_offload));
        offload.log_once();
        let table = Arc::new(ArcSwap::from_pointee(initial));
        let stop = Arc::new(AtomicBool::new(false));
        let mut stats = Vec::with_capacity(lanes);
        let mut threads = Vec::with_capacity(lanes);
        let vnet = queues.vnet;
        let priority = config.priority;
        for (lane, (queue, socket)) in queues.queues.into_iter().zip(sockets).enumerate() {
            let worker_stats = Arc::new(WorkerStats::default());
            stats.push(worker_stats.clone());
            let worker = Worker::new(
                lane as u8,
                lanes as u8,
                queue,
                socket,
                table.clone(),
                worker_stats,
                events.clone(),
                stop.clone(),
            )
            .with_offload(offload.clone(), vnet)
            .with_priority(priority);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("weft-worker-{lane}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok((
            Self {
                table,
                stats,
                stop,
                threads,
                multi_queue: queues.multi_queue,
                lanes,
                offload,
            },
            control,
        ))
    }

    /// Publishes a new forwarding snapshot; workers pick it up on their next
    /// batch.
    pub fn publish(&self, snapshot: Snapshot) {
        self.table.store(Arc::new(snapshot));
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.table.load_full()
    }

    /// Sums the workers' counters.
    pub fn totals(&self) -> DataplaneTotals {
        stats::sum(self.stats.iter().map(|s| s.as_ref()))
    }

    /// The number of lanes (workers).
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// Which fast path is active, for status and metrics: e.g.
    /// `tso+gso+gro`, or `none (disabled by WEFT_DISABLE_OFFLOAD)`; a part
    /// the kernel refused is named with the reason. Changes at run time if
    /// a send fails with EIO and GSO is turned off.
    pub fn offload(&self) -> String {
        self.offload.describe()
    }

    /// Whether the TUN is multi-queue.
    pub fn multi_queue(&self) -> bool {
        self.multi_queue
    }

    /// Stops the workers and waits for them (at most one poll interval).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
