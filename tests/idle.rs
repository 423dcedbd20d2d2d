//! What an idle mesh costs on the underlay: 12 routers in a full mesh, no
//! pod traffic; bytes and packets each router sends, per peer, over a
//! window, split into UDP (heartbeats) and TCP (gossip, ring, ACKs), counted
//! by nftables at L3 (IP header included) in each node's namespace.
//!
//! A measurement, not part of the suite: run it on purpose with
//! `cargo test --release --test idle -- --ignored --nocapture`
//! (`WEFT_IDLE_ROUTERS`, `WEFT_IDLE_SETTLE_S`, `WEFT_IDLE_WINDOW_S` adjust it,
//! `WEFT_IDLE_BIN` measures another `weft` binary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `(udp packets, udp bytes, tcp packets, tcp bytes)` sent so far.
fn sent(ns: &Netns) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (i, name) in ["udpout", "tcpout"].iter().enumerate() {
        let text = ns.ok(&["nft", "list", "counter", "inet", "weftidle", name]);
        let words: Vec<&str> = text.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|p| words.get(p + 1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out[i * 2] = after("packets");
        out[i * 2 + 1] = after("bytes");
    }
    out
}

fn ring_out_bytes(r: &Router) -> u64 {
    r.status()
        .and_then(|s| s["gossip"]["ring/out"]["bytes"].as_u64())
        .unwrap_or(0)
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn an_idle_full_mesh_costs_little_per_peer() {
    if !require_root("idle_cost") {
        return;
    }
    let count = env_or("WEFT_IDLE_ROUTERS", 12) as usize;
    let settle = Duration::from_secs(env_or("WEFT_IDLE_SETTLE_S", 60));
    let window = Duration::from_secs(env_or("WEFT_IDLE_WINDOW_S", 30));
    let mut cluster = Cluster::new(count);
    for node in &cluster.nodes {
        node.ns.ok(&[
            "nft",
            "table inet weftidle { counter udpout { }; counter tcpout { }; chain out { type filter hook output priority 0; oifname \"eth0\" meta l4proto udp counter name udpout; oifname \"eth0\" meta l4proto tcp counter name tcpout; }; }",
        ]);
    }
    // WEFT_IDLE_BIN measures another build (e.g. a copy of main's) the same way.
    let bin = std::env::var("WEFT_IDLE_BIN").unwrap_or_else(|_| BIN.to_string());
    let routers = start_routers(
        Path::new(&bin),
        &mut cluster,
        count,
        |i| (0..count).filter(|j| *j != i).collect(),
        |_, _| {},
    );
    let started = Instant::now();
    let up = wait_until(Duration::from_secs(60), || {
        routers.iter().all(|r| r.established_peers() == count - 1)
    });
    assert!(up, "the mesh did not form:\n{}", routers[0].log_tail());
    eprintln!("full mesh of {count} after {:?}", started.elapsed());
    std::thread::sleep(settle);
    let before: Vec<[u64; 4]> = cluster.nodes.iter().map(|n| sent(&n.ns)).collect();
    let ring_before: Vec<u64> = routers.iter().map(ring_out_bytes).collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let secs = t0.elapsed().as_secs_f64();
    let after: Vec<[u64; 4]> = cluster.nodes.iter().map(|n| sent(&n.ns)).collect();
    let ring_after: Vec<u64> = routers.iter().map(ring_out_bytes).collect();
    let peers = (count - 1) as f64;
    let mut total = [0f64; 5];
    for i in 0..count {
        let d: Vec<f64> = (0..4)
            .map(|k| (after[i][k] - before[i][k]) as f64 / secs)
            .collect();
        let ring = (ring_after[i] - ring_before[i]) as f64 / secs;
        eprintln!(
            "n{i}: udp {:.1} pkt/s {:.0} B/s, tcp {:.1} pkt/s {:.0} B/s, total {:.0} B/s = {:.0} B/s per peer (ring payload {:.0} B/s)",
            d[0],
            d[1],
            d[2],
            d[3],
            d[1] + d[3],
            (d[1] + d[3]) / peers,
            ring
        );
        for k in 0..4 {
            total[k] += d[k];
        }
        total[4] += ring;
    }
    let n = count as f64;
    eprintln!(
        "mean per router: udp {:.1} pkt/s {:.0} B/s, tcp {:.1} pkt/s {:.0} B/s; per peer: udp {:.1} B/s, tcp {:.1} B/s, all {:.1} B/s, {:.2} pkt/s; ring payload {:.1} B/s per peer",
        total[0] / n,
        total[1] / n,
        total[2] / n,
        total[3] / n,
        total[1] / n / peers,
        total[3] / n / peers,
        (total[1] + total[3]) / n / peers,
        (total[0] + total[2]) / n / peers,
        total[4] / n / peers,
    );
    assert!(routers.iter().all(|r| r.established_peers() == count - 1));
}
