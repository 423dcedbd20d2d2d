//! Fault injection for the chaos soak (issue "Hostile input and faults"):
//! underlay links cut and healed and random underlay loss, both as one
//! nftables table per node namespace (`inet weftchaos`, rewritten whole on
//! every change, so that faults compose), a transfer that reports failure
//! instead of panicking, and a seeded schedule.
//!
//! netem is not available in this kernel, so loss is `numgen random mod 100
//! < N drop` on the node's underlay interface.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use super::Cluster;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The faults in force: cut node pairs (a < b) and loss percent per node.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    pub cuts: BTreeSet<(usize, usize)>,
    pub loss: Vec<u8>,
}

impl Faults {
    pub fn new(nodes: usize) -> Self {
        Self {
            cuts: BTreeSet::new(),
            loss: vec![0; nodes],
        }
    }

    /// Cuts (or heals) the underlay between `a` and `b`, both directions,
    /// every protocol.
    pub fn cut(&mut self, cluster: &Cluster, a: usize, b: usize, cut: bool) {
        let pair = (a.min(b), a.max(b));
        if cut {
            self.cuts.insert(pair);
        } else {
            self.cuts.remove(&pair);
        }
        self.apply(cluster, pair.0);
        self.apply(cluster, pair.1);
    }

    /// Drops `percent` of node `i`'s inbound underlay packets at random.
    pub fn set_loss(&mut self, cluster: &Cluster, i: usize, percent: u8) {
        self.loss[i] = percent;
        self.apply(cluster, i);
    }

    /// Lifts every fault.
    pub fn heal_all(&mut self, cluster: &Cluster) {
        self.cuts.clear();
        self.loss.iter_mut().for_each(|l| *l = 0);
        for i in 0..self.loss.len() {
            self.apply(cluster, i);
        }
    }

    /// Rewrites node `i`'s table from the faults that touch it.
    fn apply(&self, cluster: &Cluster, i: usize) {
        let ns = &cluster.nodes[i].ns;
        let _ = ns.exec(&["nft", "delete", "table", "inet", "weftchaos"]);
        let peers: Vec<String> = self
            .cuts
            .iter()
            .filter_map(|&(a, b)| match i {
                _ if a == i => Some(b),
                _ if b == i => Some(a),
                _ => None,
            })
            .map(|p| cluster.nodes[p].underlay.to_string())
            .collect();
        let mut input = String::new();
        let mut output = String::new();
        if !peers.is_empty() {
            let set = peers.join(", ");
            input.push_str(&format!("ip saddr {{ {set} }} drop; "));
            output.push_str(&format!("ip daddr {{ {set} }} drop; "));
        }
        if self.loss[i] > 0 {
            input.push_str(&format!(
                "iifname \"eth0\" numgen random mod 100 < {} drop; ",
                self.loss[i]
            ));
        }
        if input.is_empty() {
            return;
        }
        let rules = format!(
            "table inet weftchaos {{ chain in {{ type filter hook input priority -10; {input}}}; chain out {{ type filter hook output priority -10; {output}}}; }}"
        );
        ns.ok(&["nft", &rules]);
    }
}

/// What a tolerant transfer saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Every byte arrived and the checksums agree.
    Intact(u64),
    /// The connection failed or timed out (expected under chaos).
    Failed,
    /// Both ends finished cleanly with the same length but different
    /// checksums: corruption, never acceptable.
    Corrupted,
}

/// Sends `bytes` of a seeded stream from namespace `from` to `to:port` in
/// namespace `to_ns`, hashing both ends; gives up after `timeout`.
pub fn tolerant_transfer(
    from_ns: &str,
    to_ns: &str,
    to: Ipv4Addr,
    port: u16,
    bytes: u64,
    timeout: Duration,
) -> TransferOutcome {
    use blake2::{Blake2s256, Digest};
    let listen = SocketAddr::from((to, port));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = super::in_netns(to_ns, move || {
        let listener = TcpListener::bind(listen).ok()?;
        listener.set_nonblocking(true).ok()?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + timeout;
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => return None,
            }
        };
        stream.set_nonblocking(false).ok()?;
        stream.set_read_timeout(Some(timeout)).ok()?;
        let mut hasher = Blake2s256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            if Instant::now() > deadline {
                return None;
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    total += n as u64;
                }
                Err(_) => return None,
            }
        }
        Some((total, <[u8; 32]>::from(hasher.finalize())))
    });
    if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
        let _ = server.join();
        return TransferOutcome::Failed;
    }
    let from = from_ns.to_string();
    let client = super::in_netns(&from, move || {
        let mut stream = TcpStream::connect_timeout(&listen, Duration::from_secs(3)).ok()?;
        stream.set_write_timeout(Some(timeout)).ok()?;
        let mut hasher = Blake2s256::new();
        let mut block = vec![0u8; 64 * 1024];
        let mut x = u64::from(port) | 1;
        let mut sent = 0u64;
        let deadline = Instant::now() + timeout;
        while sent < bytes {
            if Instant::now() > deadline {
                return None;
            }
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            let n = block.len().min((bytes - sent) as usize);
            stream.write_all(&block[..n]).ok()?;
            hasher.update(&block[..n]);
            sent += n as u64;
        }
        stream.shutdown(std::net::Shutdown::Write).ok()?;
        Some((sent, <[u8; 32]>::from(hasher.finalize())))
    });
    let sent = client.join().ok().flatten();
    let received = server.join().ok().flatten();
    match (sent, received) {
        (Some((s, a)), Some((r, b))) if s == r && a == b => TransferOutcome::Intact(s),
        (Some((s, _)), Some((r, _))) if s == r => TransferOutcome::Corrupted,
        _ => TransferOutcome::Failed,
    }
}

/// A tiny seeded generator (xorshift64*), so that a printed seed replays the
/// same schedule of faults.
#[derive(Debug, Clone)]
pub struct Schedule(u64);

impl Schedule {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
