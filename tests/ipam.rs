//! The IPAM ring on real routers: one ring agreed by routers started
//! together from empty state, distinct addresses under load and across a
//! kill -9, donations when a router runs out, separately initialised
//! clusters refusing to merge, and bad requests refused with nothing changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::ipam::{api, ipam, listed, owned, routers, wait_ready};
use support::*;
use weft::api::client::call;
use weft::api::proto::{ErrorCode, Reply, Request};

const BIN: &str = env!("CARGO_BIN_EXE_weft");

fn allocate(r: &Router, container_id: &str) -> Reply {
    api(
        r,
        &Request::Allocate {
            container_id: container_id.into(),
            ifname: "eth0".into(),
            pod: None,
        },
    )
}

/// Allocates, retrying "try again later" (as a runtime retries CNI code 11)
/// for up to `patience`.
fn allocate_patiently(r: &Router, container_id: &str, patience: Duration) -> Option<Ipv4Addr> {
    let deadline = Instant::now() + patience;
    loop {
        let reply = allocate(r, container_id);
        if reply.ok {
            return reply.result.unwrap()["address"].as_str()?.parse().ok();
        }
        let code = reply.error.as_ref().map(|e| e.code);
        assert_eq!(
            code,
            Some(ErrorCode::NotReady),
            "allocation refused: {:?}",
            reply.error
        );
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_routers_started_together_agree_on_one_ring_and_hand_out_distinct_addresses_across_a_kill_9()
 {
    if !require_root("three_routers_agree") {
        return;
    }
    let cluster = Cluster::new(3);
    // DaemonSet style: every router gets the same seed list, itself included.
    let mut rs = routers(BIN, &cluster, 3, |_| vec![0, 1, 2], None, "10.32.0.0/12");
    for r in &mut rs {
        r.start();
    }
    wait_ready(&rs, Duration::from_secs(20));
    let genesis: BTreeSet<String> = rs
        .iter()
        .map(|r| ipam(r)["genesis"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(genesis.len(), 1, "one ring, one genesis: {genesis:?}");
    let mut all: Vec<(u32, u32)> = rs.iter().flat_map(owned).collect();
    all.sort();
    assert_eq!(
        all.first().unwrap().0,
        u32::from(Ipv4Addr::new(10, 32, 0, 0))
    );
    assert_eq!(
        all.last().unwrap().1,
        u32::from(Ipv4Addr::new(10, 47, 255, 255))
    );
    for pair in all.windows(2) {
        assert_eq!(pair[0].1 + 1, pair[1].0, "ranges tile the range: {all:?}");
    }

    // 1,000 allocations spread over the three, timed through the API.
    let mut answered: BTreeMap<String, (usize, Ipv4Addr)> = BTreeMap::new();
    let mut latencies = Vec::new();
    for i in 0..1000 {
        let at = i % 3;
        let id = format!("pod-{i}");
        let started = Instant::now();
        let addr = allocate_patiently(&rs[at], &id, Duration::from_secs(10)).unwrap();
        latencies.push(started.elapsed());
        answered.insert(id, (at, addr));
    }
    latencies.sort();
    println!(
        "allocation latency through the API: p50 {:?}, p99 {:?} (1,000 allocations, fsync each)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    let distinct: BTreeSet<Ipv4Addr> = answered.values().map(|(_, a)| *a).collect();
    assert_eq!(distinct.len(), 1000, "1,000 distinct addresses");
    // Idempotent: a retried ADD gets the same address.
    let (at, addr) = answered["pod-7"];
    assert_eq!(
        allocate_patiently(&rs[at], "pod-7", Duration::from_secs(1)),
        Some(addr)
    );

    // kill -9 router 1 while a thread is allocating on it.
    let api_path = rs[1].api();
    let during: Arc<Mutex<Vec<(String, Ipv4Addr)>>> = Arc::default();
    let recorder = during.clone();
    let hammer = std::thread::spawn(move || {
        for i in 0..100_000 {
            let id = format!("race-{i}");
            let request = Request::Allocate {
                container_id: id.clone(),
                ifname: "eth0".into(),
                pod: None,
            };
            match call(&api_path, &request, Duration::from_secs(2)) {
                Ok(reply) if reply.ok => {
                    let addr = reply.result.unwrap()["address"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    recorder.lock().unwrap().push((id, addr));
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    std::thread::sleep(Duration::from_millis(400));
    rs[1].kill9();
    hammer.join().unwrap();
    let during = during.lock().unwrap().clone();
    assert!(
        !during.is_empty(),
        "allocations were answered before the kill"
    );
    rs[1].start();
    wait_ready(&rs, Duration::from_secs(20));
    let after = listed(&rs[1]);
    for (id, addr) in &during {
        assert_eq!(after.get(id), Some(addr), "answered allocation {id} kept");
    }
    for (id, (at, addr)) in &answered {
        if *at == 1 {
            assert_eq!(
                after.get(id),
                Some(addr),
                "allocation {id} kept across kill -9"
            );
        }
    }
    let mut everywhere: Vec<Ipv4Addr> = rs.iter().flat_map(|r| listed(r).into_values()).collect();
    let total = everywhere.len();
    everywhere.sort();
    everywhere.dedup();
    assert_eq!(everywhere.len(), total, "no address allocated twice");
    println!(
        "kill -9 during allocation: {} answered on the victim before the kill, all kept; {} allocations in the cluster, all distinct",
        during.len(),
        total
    );
}

#[test]
fn a_router_that_runs_out_gets_a_donation_and_keeps_allocating() {
    if !require_root("donation") {
        return;
    }
    let cluster = Cluster::new(2);
    // A /26 split between two voters: 32 addresses each, minus the node
    // addresses and the range's network and broadcast addresses.
    let mut rs = routers(BIN, &cluster, 2, |_| vec![0, 1], None, "10.32.0.0/26");
    for r in &mut rs {
        r.start();
    }
    wait_ready(&rs, Duration::from_secs(20));
    let before = ipam(&rs[0])["owned_addresses"].as_u64().unwrap();
    let mut got = BTreeSet::new();
    let mut waits = Vec::new();
    for i in 0..45 {
        let started = Instant::now();
        let addr = allocate_patiently(&rs[0], &format!("p{i}"), Duration::from_secs(20))
            .unwrap_or_else(|| panic!("allocation {i} never succeeded: {:#?}", ipam(&rs[0])));
        if started.elapsed() > Duration::from_millis(20) {
            waits.push(started.elapsed());
        }
        assert!(got.insert(addr), "{addr} handed out twice");
    }
    let after = ipam(&rs[0])["owned_addresses"].as_u64().unwrap();
    assert!(after > before, "router 0 grew: {before} → {after}");
    let donor = owned(&rs[1]);
    for addr in &got {
        let a = u32::from(*addr);
        assert!(
            !donor.iter().any(|(lo, hi)| *lo <= a && a <= *hi),
            "{addr} is inside the donor's remaining ranges {donor:?}"
        );
    }
    println!(
        "donation: router 0 owned {before} addresses, then {after}; allocations that waited for a donation took {waits:?}"
    );
    assert!(
        !waits.is_empty(),
        "at least one allocation waited for a donation"
    );
}

#[test]
fn separately_initialised_clusters_refuse_to_merge_and_an_empty_ring_yields() {
    if !require_root("separate_rings") {
        return;
    }
    let cluster = Cluster::new(3);
    // Three routers, each alone: each initialises its own ring.
    let mut rs = routers(BIN, &cluster, 3, |_| Vec::new(), None, "10.32.0.0/12");
    for r in &mut rs {
        r.start();
    }
    wait_ready(&rs, Duration::from_secs(20));
    let genesis = |r: &Router| ipam(r)["genesis"].as_str().unwrap().to_string();
    let (g0, g1, g2) = (genesis(&rs[0]), genesis(&rs[1]), genesis(&rs[2]));
    assert!(g0 != g1 && g1 != g2 && g0 != g2);
    // Routers 0 and 1 hold pods; router 2 holds none.
    allocate_patiently(&rs[0], "a", Duration::from_secs(5)).unwrap();
    allocate_patiently(&rs[1], "b", Duration::from_secs(5)).unwrap();

    let connect = |r: &Router, to: usize| {
        let reply = api(
            r,
            &Request::Connect {
                address: format!("{}:6783", cluster.nodes[to].underlay),
                also: None,
            },
        );
        assert!(reply.ok);
    };
    connect(&rs[1], 0);
    let conflict = wait_until(Duration::from_secs(20), || {
        ipam(&rs[0])["state"] == "conflict" && ipam(&rs[1])["state"] == "conflict"
    });
    assert!(
        conflict,
        "both sides report the conflict: {:#?} {:#?}",
        ipam(&rs[0]),
        ipam(&rs[1])
    );
    let detail = ipam(&rs[1])["detail"].as_str().unwrap().to_string();
    assert!(detail.contains(&g0) && detail.contains(&g1), "{detail}");
    assert!(detail.contains("weft reset --state"), "{detail}");
    let log = rs[1].log_tail();
    assert!(
        log.contains("initialised separately") && log.contains(&g0) && log.contains(&g1),
        "the log names both rings and the fix:\n{log}"
    );
    // The connection stays for topology and data.
    assert!(wait_until(Duration::from_secs(10), || rs[1]
        .established_peers()
        == 1));
    // Each keeps its own ring and its pods.
    assert_eq!(genesis(&rs[0]), g0);
    assert_eq!(genesis(&rs[1]), g1);

    // A ring holding no pods yields on its own.
    connect(&rs[2], 0);
    let yielded = wait_until(Duration::from_secs(20), || genesis(&rs[2]) == g0);
    assert!(yielded, "the empty ring yields: {:#?}", ipam(&rs[2]));
    assert_eq!(genesis(&rs[0]), g0);
}

#[test]
fn bad_address_requests_are_refused_with_a_clear_error_and_change_nothing() {
    if !require_root("bad_ipam_requests") {
        return;
    }
    let cluster = Cluster::new(1);
    let mut rs = routers(BIN, &cluster, 1, |_| Vec::new(), None, "10.32.0.0/12");
    rs[0].start();
    wait_ready(&rs, Duration::from_secs(20));
    let before = ipam(&rs[0]);

    let reply = allocate(&rs[0], "not a container id!");
    let error = reply.error.unwrap();
    assert_eq!(error.code, ErrorCode::BadRequest);
    assert!(
        error.message.contains("invalid container ID"),
        "{}",
        error.message
    );

    let reply = api(
        &rs[0],
        &Request::Allocate {
            container_id: "ok".into(),
            ifname: "eth0/evil".into(),
            pod: None,
        },
    );
    assert_eq!(reply.error.unwrap().code, ErrorCode::BadRequest);

    let reply = api(
        &rs[0],
        &Request::Release {
            container_id: "never-allocated".into(),
            ifname: "eth0".into(),
            address: None,
            address6: None,
        },
    );
    let error = reply.error.unwrap();
    assert_eq!(error.code, ErrorCode::NotFound);
    assert!(
        error.message.contains("never-allocated"),
        "{}",
        error.message
    );

    let reply = api(
        &rs[0],
        &Request::Rmpeer {
            name: "no-such-router".into(),
            force: false,
        },
    );
    assert_eq!(reply.error.unwrap().code, ErrorCode::NotFound);

    let after = ipam(&rs[0]);
    assert_eq!(before["allocated"], after["allocated"]);
    assert_eq!(before["owned_ranges"], after["owned_ranges"]);
    assert_eq!(before["genesis"], after["genesis"]);

    // And the CLI: one line, non-zero exit.
    let out = std::process::Command::new(BIN)
        .args(["rmpeer", "no-such-router", "--api"])
        .arg(rs[0].api())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("weft status ipam"), "{stderr}");
}

#[test]
fn rmpeer_takes_over_a_dead_routers_space_and_is_refused_while_it_lives() {
    if !require_root("rmpeer") {
        return;
    }
    let cluster = Cluster::new(2);
    let mut rs = routers(BIN, &cluster, 2, |_| vec![0, 1], None, "10.32.0.0/12");
    for r in &mut rs {
        r.start();
    }
    wait_ready(&rs, Duration::from_secs(20));
    let reply = api(
        &rs[0],
        &Request::Rmpeer {
            name: "n1".into(),
            force: false,
        },
    );
    let error = reply.error.unwrap();
    assert_eq!(error.code, ErrorCode::Refused);
    assert!(error.message.contains("reachable"), "{}", error.message);

    rs[1].kill9();
    let unreachable = wait_until(Duration::from_secs(30), || {
        ipam(&rs[0])["unreachable_ranges"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    assert!(
        unreachable,
        "status shows the dead router's ranges: {:#?}",
        ipam(&rs[0])
    );
    let text = std::process::Command::new(BIN)
        .args(["status", "ipam", "--api"])
        .arg(rs[0].api())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("weft rmpeer n1"), "{text}");

    let out = std::process::Command::new(BIN)
        .args(["rmpeer", "n1", "--api"])
        .arg(rs[0].api())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = owned(&rs[0]);
    assert_eq!(all.len(), 1, "router 0 owns the whole range: {all:?}");
    assert_eq!(all[0].1 - all[0].0 + 1, 1 << 20);
}

#[test]
fn a_drained_router_leaves_its_ranges_to_the_others_and_stops() {
    if !require_root("leave") {
        return;
    }
    let cluster = Cluster::new(3);
    let mut rs = routers(BIN, &cluster, 3, |_| vec![0, 1, 2], None, "10.32.0.0/24");
    for r in &mut rs {
        r.start();
    }
    wait_ready(&rs, Duration::from_secs(20));
    let pod = allocate_patiently(&rs[2], "pod-on-n2", Duration::from_secs(10)).unwrap();
    let leave = |r: &Router| {
        std::process::Command::new(BIN)
            .args(["leave", "--api"])
            .arg(r.api())
            .output()
            .unwrap()
    };
    // Not while a pod holds an address there: one line that says what to do.
    let refused = leave(&rs[2]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "leave with a pod left: {stderr}");
    assert!(stderr.contains("drain"), "{stderr}");
    assert!(stderr.lines().count() <= 2, "{stderr}");
    let released = api(
        &rs[2],
        &Request::Release {
            container_id: "pod-on-n2".into(),
            ifname: "eth0".into(),
            address: None,
            address6: None,
        },
    );
    assert!(released.ok, "{:?}", released.error);

    // A router that learned the ring from a peer keeps its own ranges
    // quarantined for 2 × the convergence bound (60 s): leave says so and
    // works after it.
    let deadline = Instant::now() + Duration::from_secs(80);
    let out = loop {
        let out = leave(&rs[2]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        assert!(stderr.contains("quarantined"), "{stderr}");
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("handed"));
    let status = rs[2].wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the router stops after leaving: {status:?}"
    );
    // Both others see the whole range as theirs, with no gap and no overlap.
    let whole = wait_until(Duration::from_secs(10), || {
        let mut all: Vec<(u32, u32)> = owned(&rs[0]).into_iter().chain(owned(&rs[1])).collect();
        all.sort_unstable();
        let contiguous = all.windows(2).all(|w| w[0].1 + 1 == w[1].0);
        let size: u32 = all.iter().map(|(a, b)| b - a + 1).sum();
        contiguous && size == 256
    });
    assert!(
        whole,
        "the ranges of n2 went to n0 and n1: {:?} {:?}",
        owned(&rs[0]),
        owned(&rs[1])
    );
    // The heirs hand out all of the space, the leaver's pod address included.
    let mut got = BTreeSet::new();
    for i in 0..140 {
        let mut any = false;
        for r in &rs[..2] {
            if let Some(a) = allocate_patiently(r, &format!("after-{i}"), Duration::from_secs(3)) {
                assert!(got.insert(a), "{a} handed out twice");
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    // 256 less the network and broadcast addresses and n0's and n1's own.
    assert_eq!(got.len(), 252, "addresses handed out after the leave");
    assert!(got.contains(&pod), "{pod} is usable again after the leave");
}
