//! A bounded chaos soak (issue "Hostile input and faults"): five routers with
//! a pod each exchanging checksummed TCP transfers and pings, while a seeded
//! schedule kills routers with SIGKILL and restarts them, cuts and heals
//! underlay links, and drops a random share of a node's underlay packets
//! (nftables `numgen random`; netem is not in this kernel).
//!
//! At the end, with every fault lifted: one topology everywhere, every pod
//! reaches every other, no transfer was ever corrupted, and each router's
//! RSS stayed bounded. When the router answers IPAM requests on its API,
//! allocations are made and some of them released during the chaos too, and
//! at the end no address is held twice across routers, no answered
//! allocation is lost and no answered release is held again (DESIGN.md
//! invariants 1, 2, 3 and 5).
//!
//! `WEFT_SOAK_SECS` (default 60) sets the length, `WEFT_SOAK_SEED` replays a
//! printed seed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod support;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::attack::{router_pid, rss_kb};
use support::chaos::*;
use support::*;
use weft::api::proto::{Reply, Request};

const BIN: &str = env!("CARGO_BIN_EXE_weft");
const NODES: usize = 5;
const RSS_LIMIT_KB: u64 = 64 * 1024;

/// What the traffic threads counted.
#[derive(Default)]
struct Traffic {
    intact: AtomicU64,
    failed: AtomicU64,
    corrupted: AtomicU64,
    bytes: AtomicU64,
    pings_sent: AtomicU64,
    pings_ok: AtomicU64,
}

/// An answered allocation.
#[derive(Debug, Clone)]
struct Answered {
    router: usize,
    container: String,
    address: String,
}

fn api_call(r: &Router, request: &Request) -> Option<Reply> {
    weft::api::client::call(&r.api(), request, Duration::from_secs(3)).ok()
}

/// The topology as one router sees it: (name, id, connection count), sorted.
fn topology(r: &Router) -> Option<Vec<(String, String, u64)>> {
    let status = r.status()?;
    let mut peers: Vec<(String, String, u64)> = status["peers"]
        .as_array()?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["id"].as_str().unwrap_or("").to_string(),
                p["connections"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    peers.sort();
    Some(peers)
}

#[test]
fn five_routers_under_kills_cuts_and_loss_converge_and_lose_nothing() {
    if !require_root("chaos_soak") {
        return;
    }
    let secs: u64 = std::env::var("WEFT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("WEFT_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos soak: {secs} s, seed {seed} (replay with WEFT_SOAK_SEED={seed})");
    let mut schedule = Schedule::new(seed);

    let mut cluster = Cluster::new(NODES);
    let mut routers = start_routers(
        Path::new(BIN),
        &mut cluster,
        NODES,
        |i| (0..NODES).filter(|j| *j != i).collect(),
        |_, _| {},
    );
    let formed = wait_until(Duration::from_secs(30), || {
        routers.iter().all(|r| r.established_peers() == NODES - 1)
    });
    assert!(
        formed,
        "the mesh of five did not form:\n{}",
        routers[0].log_tail()
    );

    // IPAM through the API: the ring must be ready within a deadline, or the
    // soak fails (it never skips the allocation checks).
    let ready = wait_until(Duration::from_secs(30), || {
        matches!(
            api_call(&routers[0], &Request::Ready),
            Some(Reply { ok: true, result: Some(ref r), .. }) if r["ready"] == true
        )
    });
    assert!(
        ready,
        "the router did not serve `allocate` within 30 s of the mesh forming:\n{}",
        routers[0].log_tail()
    );

    let pods: Vec<(String, Ipv4Addr)> = cluster
        .pods
        .iter()
        .map(|p| (p.ns.name.clone(), p.addr))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = Arc::new(Traffic::default());
    let mut workers = Vec::new();
    {
        // Transfers between random pod pairs, one at a time.
        let (stop, traffic, pods) = (stop.clone(), traffic.clone(), pods.clone());
        let mut rng = Schedule::new(seed ^ 0x7472_6166);
        workers.push(std::thread::spawn(move || {
            let mut port = 6000u16;
            while !stop.load(Ordering::Relaxed) {
                let a = rng.below(NODES as u64) as usize;
                let b = (a + 1 + rng.below(NODES as u64 - 1) as usize) % NODES;
                port = if port >= 6900 { 6000 } else { port + 1 };
                let outcome = tolerant_transfer(
                    &pods[a].0,
                    &pods[b].0,
                    pods[b].1,
                    port,
                    4 << 20,
                    Duration::from_secs(8),
                );
                match outcome {
                    TransferOutcome::Intact(n) => {
                        traffic.intact.fetch_add(1, Ordering::Relaxed);
                        traffic.bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    TransferOutcome::Failed => {
                        traffic.failed.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    TransferOutcome::Corrupted => {
                        eprintln!("CORRUPTED transfer pod{a} -> pod{b}");
                        traffic.corrupted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    {
        // Pings around the ring of pods, five at a time.
        let (stop, traffic, pods) = (stop.clone(), traffic.clone(), pods.clone());
        workers.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (a, b) = (i % NODES, (i + 1 + i / NODES % (NODES - 1)) % NODES);
                i += 1;
                let out = run_timeout(
                    std::process::Command::new("ip").args([
                        "netns",
                        "exec",
                        &pods[a].0,
                        "ping",
                        "-n",
                        "-q",
                        "-c",
                        "5",
                        "-i",
                        "0.1",
                        "-W",
                        "1",
                        &pods[b].1.to_string(),
                    ]),
                    10,
                );
                let text = out
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let received = text
                    .lines()
                    .find(|l| l.contains("packets transmitted"))
                    .and_then(|l| l.split(", ").nth(1))
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                traffic.pings_sent.fetch_add(5, Ordering::Relaxed);
                traffic.pings_ok.fetch_add(received, Ordering::Relaxed);
            }
        }));
    }

    let mut faults = Faults::new(NODES);
    let mut dead: BTreeMap<usize, Instant> = BTreeMap::new();
    let mut cut_until: BTreeMap<(usize, usize), Instant> = BTreeMap::new();
    let mut loss_until: BTreeMap<usize, Instant> = BTreeMap::new();
    let (mut kills, mut cuts, mut losses) = (0u32, 0u32, 0u32);
    let mut peak_rss = vec![0u64; NODES];
    let mut answered: Vec<Answered> = Vec::new();
    let mut allocate_failures = 0u32;
    let mut released: Vec<Answered> = Vec::new();
    let mut release_failures = 0u32;
    let mut next_container = 0u32;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut next_fault = start + Duration::from_secs(2);
    while Instant::now() < end {
        let now = Instant::now();
        // Undo what is due.
        for (i, at) in dead.clone() {
            if now >= at {
                routers[i].start();
                dead.remove(&i);
            }
        }
        for (pair, at) in cut_until.clone() {
            if now >= at {
                faults.cut(&cluster, pair.0, pair.1, false);
                cut_until.remove(&pair);
            }
        }
        for (i, at) in loss_until.clone() {
            if now >= at {
                faults.set_loss(&cluster, i, 0);
                loss_until.remove(&i);
            }
        }
        // A new fault every 2-5 s: at most two routers down, two links cut.
        if now >= next_fault {
            let wait = Duration::from_millis(1000 + schedule.below(4000));
            match schedule.below(3) {
                0 if dead.len() < 2 => {
                    let i = schedule.below(NODES as u64) as usize;
                    if let Entry::Vacant(slot) = dead.entry(i) {
                        routers[i].kill9();
                        slot.insert(now + wait);
                        kills += 1;
                        eprintln!(
                            "[{:>4}s] kill -9 n{i} for {wait:?}",
                            start.elapsed().as_secs()
                        );
                    }
                }
                1 if cut_until.len() < 2 => {
                    let a = schedule.below(NODES as u64) as usize;
                    let b = (a + 1 + schedule.below(NODES as u64 - 1) as usize) % NODES;
                    let pair = (a.min(b), a.max(b));
                    if let Entry::Vacant(slot) = cut_until.entry(pair) {
                        faults.cut(&cluster, a, b, true);
                        slot.insert(now + wait * 2);
                        cuts += 1;
                        eprintln!(
                            "[{:>4}s] cut n{a} - n{b} for {:?}",
                            start.elapsed().as_secs(),
                            wait * 2
                        );
                    }
                }
                _ => {
                    let i = schedule.below(NODES as u64) as usize;
                    let percent = 2 + schedule.below(14) as u8;
                    faults.set_loss(&cluster, i, percent);
                    loss_until.insert(i, now + wait * 2);
                    losses += 1;
                    eprintln!(
                        "[{:>4}s] {percent}% loss into n{i} for {:?}",
                        start.elapsed().as_secs(),
                        wait * 2
                    );
                }
            }
            next_fault = now + Duration::from_millis(2000 + schedule.below(3000));
        }
        // Allocations, and releases of some answered ones, through the API
        // during the chaos (one request per tick, as before).
        if !answered.is_empty() && schedule.below(4) == 0 {
            let k = schedule.below(answered.len() as u64) as usize;
            let i = answered[k].router;
            if !dead.contains_key(&i) {
                let a = answered.swap_remove(k);
                let request = Request::Release {
                    container_id: a.container.clone(),
                    ifname: "eth0".into(),
                    address: Some(a.address.clone()),
                    address6: None,
                };
                match api_call(&routers[i], &request) {
                    Some(Reply { ok: true, .. }) => released.push(a),
                    // Unknown outcome (killed mid-request, say): checked by
                    // neither side.
                    _ => release_failures += 1,
                }
            }
        } else {
            let i = schedule.below(NODES as u64) as usize;
            if !dead.contains_key(&i) {
                let container = format!("chaos-{next_container}");
                next_container += 1;
                let request = Request::Allocate {
                    container_id: container.clone(),
                    ifname: "eth0".into(),
                    pod: None,
                };
                match api_call(&routers[i], &request) {
                    Some(Reply {
                        ok: true,
                        result: Some(r),
                        ..
                    }) => answered.push(Answered {
                        router: i,
                        container,
                        address: r["address"].as_str().unwrap_or("").to_string(),
                    }),
                    _ => allocate_failures += 1,
                }
            }
        }
        for i in 0..NODES {
            if let Some(pid) = router_pid(&cluster.nodes[i].ns.name) {
                peak_rss[i] = peak_rss[i].max(rss_kb(pid));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    // Lift every fault and bring every router back.
    faults.heal_all(&cluster);
    for (i, _) in std::mem::take(&mut dead) {
        routers[i].start();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let t = &traffic;
    eprintln!(
        "chaos soak done: seed {seed}; {kills} kills, {cuts} cuts, {losses} loss periods; \
         transfers {} intact ({} MB), {} failed, {} corrupted; pings {}/{}; \
         allocations {} answered and held, {allocate_failures} refused, {} released, \
         {release_failures} releases unanswered; peak VmRSS KiB {peak_rss:?}",
        t.intact.load(Ordering::Relaxed),
        t.bytes.load(Ordering::Relaxed) >> 20,
        t.failed.load(Ordering::Relaxed),
        t.corrupted.load(Ordering::Relaxed),
        t.pings_ok.load(Ordering::Relaxed),
        t.pings_sent.load(Ordering::Relaxed),
        answered.len(),
        released.len(),
    );
    assert_eq!(
        t.corrupted.load(Ordering::Relaxed),
        0,
        "a transfer arrived corrupted"
    );
    assert!(
        t.intact.load(Ordering::Relaxed) > 0,
        "no transfer ever succeeded"
    );

    // One topology everywhere: a router lists every other router (not
    // itself), and every router's entries agree with every other's.
    let mut last = Vec::new();
    let converged = wait_until(Duration::from_secs(60), || {
        last = routers.iter().map(topology).collect();
        let mut global: BTreeMap<String, (String, u64)> = BTreeMap::new();
        let mut agree = true;
        for view in last.iter().flatten() {
            for (name, id, connections) in view {
                let entry = global
                    .entry(name.clone())
                    .or_insert((id.clone(), *connections));
                agree &= *entry == (id.clone(), *connections);
            }
        }
        agree
            && global.len() == NODES
            && last.iter().enumerate().all(|(i, view)| {
                view.as_ref().is_some_and(|v| {
                    v.len() == NODES - 1 && v.iter().all(|(name, _, _)| *name != format!("n{i}"))
                })
            })
            && routers.iter().all(|r| r.established_peers() == NODES - 1)
    });
    assert!(
        converged,
        "the topology did not converge (seed {seed}):\n{last:#?}\n{}",
        routers[0].log_tail()
    );
    // Every pod reaches every other.
    for a in 0..NODES {
        for b in 0..NODES {
            if a != b {
                assert!(
                    cluster.pods[a].wait_ping(cluster.pods[b].addr, Duration::from_secs(15)),
                    "pod{a} cannot reach pod{b} after the soak (seed {seed})"
                );
            }
        }
    }
    // Memory stayed bounded.
    for i in 0..NODES {
        if let Some(pid) = router_pid(&cluster.nodes[i].ns.name) {
            peak_rss[i] = peak_rss[i].max(rss_kb(pid));
        }
        assert!(
            peak_rss[i] < RSS_LIMIT_KB,
            "n{i} peaked at {} KiB (seed {seed})",
            peak_rss[i]
        );
    }
    // Data-plane volume since each router's last start, for the report.
    let (mut packets_in, mut packets_out, mut dropped) = (0u64, 0u64, 0u64);
    for r in &routers {
        if let Some(status) = r.status() {
            for (k, v) in counters(&status) {
                match k.as_str() {
                    "packets_in" => packets_in += v,
                    "packets_out" => packets_out += v,
                    _ if k.starts_with("dropped.") => dropped += v,
                    _ => {}
                }
            }
        }
    }
    eprintln!(
        "data plane since the last restarts: {packets_in} packets in, {packets_out} out, {dropped} dropped"
    );
    assert!(
        !answered.is_empty(),
        "no allocation was answered during the soak"
    );
    check_allocations(&routers, &answered, &released, seed);
}

/// No address held twice across routers; every answered allocation not
/// released since is still held, at the address that was answered; no
/// answered release is held again (DESIGN.md invariants 1 and 5; its
/// address may since have gone to another container).
fn check_allocations(routers: &[Router], answered: &[Answered], released: &[Answered], seed: u64) {
    let mut holders: BTreeMap<String, BTreeSet<(usize, String)>> = BTreeMap::new();
    let mut held: BTreeMap<(usize, String), String> = BTreeMap::new();
    for (i, r) in routers.iter().enumerate() {
        let reply = api_call(r, &Request::List { container_id: None })
            .unwrap_or_else(|| panic!("n{i} did not answer list"));
        assert!(reply.ok, "n{i} list failed: {:?}", reply.error);
        let result = reply.result.unwrap_or_default();
        for a in result["allocations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let container = a["container_id"].as_str().unwrap_or("").to_string();
            let address = a["address"].as_str().unwrap_or("").to_string();
            holders
                .entry(address.clone())
                .or_default()
                .insert((i, container.clone()));
            held.insert((i, container), address);
        }
    }
    for (address, who) in &holders {
        assert_eq!(
            who.len(),
            1,
            "{address} is allocated more than once: {who:?} (seed {seed})"
        );
    }
    for a in answered {
        let now = held.get(&(a.router, a.container.clone()));
        assert_eq!(
            now,
            Some(&a.address),
            "answered allocation {a:?} lost or moved (seed {seed})"
        );
    }
    for a in released {
        assert_eq!(
            held.get(&(a.router, a.container.clone())),
            None,
            "released allocation {a:?} is held again (seed {seed})"
        );
    }
    eprintln!(
        "allocations: {} answered and held, {} released and gone, {} held in all, none twice, none lost",
        answered.len(),
        released.len(),
        held.len()
    );
}
