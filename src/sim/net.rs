//! A seeded, sans-IO network emulator, generic over the message type so that
//! the gossip harness and the IPAM harness (`sim/ipam.rs`) share it.
//!
//! Messages between node indices get a random delay in `[min_delay,
//! max_delay]`, may be lost or duplicated, and never cross a partition
//! (checked both when sent and when delivered). `schedule` queues a reliable
//! harness event (a dial outcome, a timer of the harness itself).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Link behaviour.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Shortest one-way delay.
    pub min_delay: Duration,
    /// Longest one-way delay.
    pub max_delay: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(50),
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// Counters kept by the emulator.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    /// Messages handed to `send`.
    pub sent: u64,
    /// Messages lost on purpose.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Messages dropped by a partition.
    pub partitioned: u64,
}

/// A message in flight.
#[derive(Clone, Debug)]
pub struct Delivery<M> {
    /// When it arrives.
    pub at: Instant,
    /// Sender index.
    pub from: usize,
    /// Receiver index.
    pub to: usize,
    /// The payload.
    pub msg: M,
}

/// The emulator. See the module docs.
pub struct Network<M> {
    config: NetConfig,
    rng: StdRng,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: HashMap<u64, (usize, usize, M, bool)>,
    seq: u64,
    group: HashMap<usize, u32>,
    /// Counters.
    pub stats: NetStats,
}

impl<M: Clone> Network<M> {
    /// An empty network.
    pub fn new(config: NetConfig, seed: u64) -> Self {
        Self {
            config,
            rng: StdRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            seq: 0,
            group: HashMap::new(),
            stats: NetStats::default(),
        }
    }

    /// Changes loss, delay and duplication from now on.
    pub fn set_config(&mut self, config: NetConfig) {
        self.config = config;
    }

    /// Sends `msg` subject to loss, duplication, delay and partitions.
    pub fn send(&mut self, now: Instant, from: usize, to: usize, msg: M) {
        self.stats.sent += 1;
        if !self.can_talk(from, to) {
            self.stats.partitioned += 1;
            return;
        }
        if self.rng.gen_bool(self.config.loss.clamp(0.0, 1.0)) {
            self.stats.lost += 1;
            return;
        }
        if self.rng.gen_bool(self.config.duplicate.clamp(0.0, 1.0)) {
            self.stats.duplicated += 1;
            let at = now + self.delay();
            self.push(at, from, to, msg.clone(), true);
        }
        let at = now + self.delay();
        self.push(at, from, to, msg, true);
    }

    /// Queues a reliable event for `to` at `at` (never lost or partitioned).
    pub fn schedule(&mut self, at: Instant, from: usize, to: usize, msg: M) {
        self.push(at, from, to, msg, false);
    }

    /// A random one-way delay.
    pub fn delay(&mut self) -> Duration {
        let (lo, hi) = (
            self.config.min_delay,
            self.config.max_delay.max(self.config.min_delay),
        );
        lo + (hi - lo).mul_f64(self.rng.gen_range(0.0..1.0))
    }

    /// When the next message arrives.
    pub fn next_time(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes the earliest message (dropping it instead if a partition now
    /// separates its ends; then returns the next one).
    pub fn pop(&mut self) -> Option<Delivery<M>> {
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            let Some((from, to, msg, lossy)) = self.in_flight.remove(&seq) else {
                continue;
            };
            if lossy && !self.can_talk(from, to) {
                self.stats.partitioned += 1;
                continue;
            }
            return Some(Delivery { at, from, to, msg });
        }
        None
    }

    /// Splits the nodes: nodes in different groups cannot talk. Nodes not
    /// named stay in group 0.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        self.group.clear();
        for (g, nodes) in groups.iter().enumerate() {
            for n in nodes {
                self.group.insert(*n, g as u32);
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.group.clear();
    }

    /// Whether `a` and `b` are on the same side of every partition.
    pub fn can_talk(&self, a: usize, b: usize) -> bool {
        self.group.get(&a).copied().unwrap_or(0) == self.group.get(&b).copied().unwrap_or(0)
    }

    /// Drops everything in flight to or from `node` (it crashed).
    pub fn drop_node(&mut self, node: usize) {
        self.in_flight
            .retain(|_, (from, to, _, lossy)| !*lossy || (*from != node && *to != node));
    }

    fn push(&mut self, at: Instant, from: usize, to: usize, msg: M, lossy: bool) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.in_flight.insert(self.seq, (from, to, msg, lossy));
    }
}
