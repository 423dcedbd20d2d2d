#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]
//! Two routers carry pod traffic over the authenticated, encrypted UDP
//! tunnel: real `weft` processes in network namespaces, real packets.

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

fn offset(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n)
}

/// Two nodes, a router each, one pod each, the connection established.
fn pair(env: &[(&str, &str)]) -> Pair {
    start_pair(Path::new(BIN), env)
}

#[test]
fn pods_on_two_nodes_ping_and_move_100_mb_intact_with_no_plaintext_on_the_underlay() {
    if !require_root("two_node_tunnel") {
        return;
    }
    let p = pair(&[]);
    let (a, b) = (&p.cluster.pods[0], &p.cluster.pods[1]);
    assert!(
        a.wait_ping(b.addr, Duration::from_secs(5)),
        "pod a cannot reach pod b"
    );
    assert!(a.ping(b.addr, 3), "a → b ping lost packets");
    assert!(b.ping(a.addr, 3), "b → a ping lost packets");

    let capture = Capture::start(
        &p.cluster.nodes[0].ns,
        "eth0",
        "udp port 6783",
        p.cluster.dir.path.join("underlay.pcap"),
        20_000,
    );
    let t = transfer(a, b, 100 << 20, None);
    let payloads = capture.finish();
    assert_eq!(t.sent, 100 << 20);
    assert_eq!(t.received, t.sent, "bytes lost");
    assert_eq!(t.received_sum, t.sent_sum, "checksum mismatch");
    eprintln!(
        "100 MB in {:.2} s = {:.0} Mbit/s",
        t.elapsed.as_secs_f64(),
        (t.sent * 8) as f64 / t.elapsed.as_secs_f64() / 1e6
    );
    assert!(
        payloads.len() > 1000,
        "capture saw only {} datagrams",
        payloads.len()
    );
    let leaked = payloads
        .iter()
        .filter(|d| contains(d, PLAINTEXT_MARKER))
        .count();
    assert_eq!(
        leaked, 0,
        "{leaked} underlay datagrams contain the pods' plaintext"
    );
    let status = p.routers[1].status().expect("status");
    assert!(status["dataplane"]["bytes_in"].as_u64().unwrap() >= 100 << 20);
}

#[test]
fn a_router_with_another_secret_never_gets_a_session_and_is_counted() {
    if !require_root("wrong_secret") {
        return;
    }
    let mut cluster = Cluster::new(3);
    // The good pair split the range between them; the intruder never counts.
    let names = ["n0", "n1"];
    let dir = cluster.dir.path.clone();
    let mut good: Vec<Router> = (0..2)
        .map(|i| {
            Router::new(
                Path::new(BIN),
                &cluster.nodes[i],
                &dir,
                &[cluster.nodes[1 - i].underlay],
                &names,
            )
        })
        .collect();
    // The intruder gets its own secret before Router::new copies the shared one.
    std::fs::create_dir_all(dir.join("n2")).unwrap();
    write_secret(&dir.join("n2").join("secret"));
    let mut intruder = Router::new(
        Path::new(BIN),
        &cluster.nodes[2],
        &dir,
        &[cluster.nodes[0].underlay, cluster.nodes[1].underlay],
        &["n0", "n1", "n2"],
    );
    for r in &mut good {
        r.start();
    }
    intruder.start();
    let refused = wait_until(Duration::from_secs(10), || {
        good[0]
            .status()
            .is_some_and(|s| s["handshakes"]["refused"].as_u64().unwrap_or(0) >= 2)
    });
    assert!(refused, "no refusal counted:\n{}", good[0].log_tail());
    std::thread::sleep(Duration::from_secs(2));
    for r in &good {
        let status = r.status().unwrap();
        let peers: Vec<&str> = status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            peers,
            ["n0", "n1"]
                .iter()
                .copied()
                .filter(|n| *n != r.name)
                .collect::<Vec<_>>()
        );
    }
    assert!(
        intruder.status().unwrap()["peers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        good[0].log_tail().contains("refused a handshake"),
        "refusal not logged"
    );
    // The good pair still works.
    let start = good[1].range_start();
    cluster.add_pod(0, offset(good[0].range_start(), 10));
    cluster.add_pod(1, offset(start, 10));
    let target = cluster.pods[1].addr;
    assert!(cluster.pods[0].wait_ping(target, Duration::from_secs(5)));
}

#[test]
fn a_replayed_data_packet_is_dropped_and_counted_never_delivered() {
    if !require_root("replay") {
        return;
    }
    let p = pair(&[]);
    let (a, b) = (&p.cluster.pods[0], &p.cluster.pods[1]);
    assert!(a.wait_ping(b.addr, Duration::from_secs(5)));
    let capture = Capture::start(
        &p.cluster.nodes[1].ns,
        "eth0",
        "udp and src host 192.0.2.10 and dst port 6783",
        p.cluster.dir.path.join("replay.pcap"),
        200,
    );
    assert!(a.ping(b.addr, 5));
    let datagrams = capture.finish();
    // Data packets: version 1, type 0, lane below the control lane.
    let data: Vec<Vec<u8>> = datagrams
        .into_iter()
        .filter(|d| d.len() > 32 && d[0] == 0x10 && d[9] != 255)
        .collect();
    assert!(!data.is_empty(), "no data packets captured");
    let before = p.routers[1].status().unwrap();
    let delivered_before = before["dataplane"]["packets_in"].as_u64().unwrap();
    let replays_before = p.routers[1].dropped("replay");
    // Send the captured datagrams again from node a's underlay address.
    let to = std::net::SocketAddr::from((p.cluster.nodes[1].underlay, 6783));
    let copies = data.clone();
    in_netns(&p.cluster.nodes[0].ns.name, move || {
        let socket = std::net::UdpSocket::bind("192.0.2.10:0").unwrap();
        for d in &copies {
            socket.send_to(d, to).unwrap();
        }
    })
    .join()
    .unwrap();
    let counted = wait_until(Duration::from_secs(3), || {
        p.routers[1].dropped("replay") >= replays_before + data.len() as u64
    });
    assert!(
        counted,
        "replays not counted: {} of {}",
        p.routers[1].dropped("replay") - replays_before,
        data.len()
    );
    let after = p.routers[1].status().unwrap();
    let delivered_after = after["dataplane"]["packets_in"].as_u64().unwrap();
    assert_eq!(
        delivered_after, delivered_before,
        "a replayed packet was delivered"
    );
}

#[test]
fn traffic_keeps_flowing_across_rekeys_every_two_seconds_without_drops() {
    if !require_root("rekey") {
        return;
    }
    let p = pair(&[("WEFT_REKEY_INTERVAL_SECS", "2")]);
    let (a, b) = (&p.cluster.pods[0], &p.cluster.pods[1]);
    assert!(a.wait_ping(b.addr, Duration::from_secs(5)));
    let before: Vec<_> = p
        .routers
        .iter()
        .map(|r| counters(&r.status().unwrap()))
        .collect();
    let rekeys_before = p.routers[0].status().unwrap()["rekeys"].as_u64().unwrap();
    let t = transfer(a, b, u64::MAX, Some(Duration::from_secs(30)));
    assert!(t.sent > 10 << 20, "only {} bytes in 30 s", t.sent);
    assert_eq!(t.received, t.sent);
    assert_eq!(
        t.received_sum, t.sent_sum,
        "checksum mismatch across rekeys"
    );
    let rekeys = p.routers[0].status().unwrap()["rekeys"].as_u64().unwrap() - rekeys_before;
    assert!(
        rekeys >= 8,
        "only {rekeys} rekeys in 30 s at a 2 s interval"
    );
    for (r, before) in p.routers.iter().zip(before) {
        let after = counters(&r.status().unwrap());
        for reason in ["unknown_session", "no_session", "bad_tag", "replay"] {
            let key = format!("dropped.{reason}");
            let delta =
                after.get(&key).copied().unwrap_or(0) - before.get(&key).copied().unwrap_or(0);
            assert_eq!(
                delta, 0,
                "router {} dropped {delta} packets as {reason} across rekeys",
                r.name
            );
        }
    }
    eprintln!("{} MB across {rekeys} rekeys", t.sent >> 20);
}

#[test]
fn a_killed_router_restarts_with_the_same_identity_and_traffic_resumes_within_5_s() {
    if !require_root("kill9") {
        return;
    }
    let mut p = pair(&[]);
    assert!(p.cluster.pods[0].wait_ping(p.cluster.pods[1].addr, Duration::from_secs(5)));
    let id_before = p.routers[1].status().unwrap()["id"].clone();
    p.routers[1].kill9();
    p.routers[1].start();
    let restarted = Instant::now();
    let (a, b) = (&p.cluster.pods[0], &p.cluster.pods[1]);
    assert!(
        a.wait_ping(b.addr, Duration::from_secs(5)),
        "no traffic within 5 s of the restart"
    );
    eprintln!(
        "traffic resumed {:?} after the restart",
        restarted.elapsed()
    );
    assert!(restarted.elapsed() < Duration::from_secs(6));
    assert!(b.ping(a.addr, 3), "reverse direction broken after restart");
    assert_eq!(
        p.routers[1].status().unwrap()["id"],
        id_before,
        "identity changed across restart"
    );
}

#[test]
fn the_cluster_secret_rotates_without_a_restart_and_the_old_one_stops_working() {
    if !require_root("secret_rotation") {
        return;
    }
    let mut p = pair(&[("WEFT_REKEY_INTERVAL_SECS", "2")]);
    let old = std::fs::read_to_string(p.routers[0].dir.join("secret")).unwrap();
    let new = "a-brand-new-cluster-secret-of-more-than-32-bytes";
    let write_all = |p: &Pair, text: &str| {
        for r in &p.routers {
            std::fs::write(r.dir.join("secret"), text).unwrap();
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    // Add the new secret second, make it first, remove the old.
    write_all(&p, &format!("{}\n{new}\n", old.trim()));
    write_all(&p, &format!("{new}\n{}\n", old.trim()));
    write_all(&p, &format!("{new}\n"));
    let (a, b) = (&p.cluster.pods[0], &p.cluster.pods[1]);
    assert!(a.ping(b.addr, 3), "traffic broke during the rotation");
    assert!(p.routers[0].log_tail().contains("cluster secrets reloaded"));
    // A restarted router that knows only the new secret gets back in.
    p.routers[1].kill9();
    p.routers[1].start();
    let (a, b) = (&p.cluster.pods[0], &p.cluster.pods[1]);
    assert!(
        a.wait_ping(b.addr, Duration::from_secs(5)),
        "the new secret does not connect"
    );
    // A router that still has only the old secret is refused.
    std::fs::write(p.routers[1].dir.join("secret"), &old).unwrap();
    let refused_before = p.routers[0].status().unwrap()["handshakes"]["refused"]
        .as_u64()
        .unwrap_or(0);
    p.routers[1].kill9();
    p.routers[1].start();
    let refused = wait_until(Duration::from_secs(8), || {
        p.routers[0].status().unwrap()["handshakes"]["refused"]
            .as_u64()
            .unwrap_or(0)
            > refused_before
    });
    assert!(refused, "the old secret was still accepted");
    assert_eq!(p.routers[0].established_peers(), 0);
}

#[test]
fn weft0_outlives_the_router_and_weft_reset_removes_it_and_its_routes() {
    if !require_root("reset") {
        return;
    }
    let mut p = pair(&[]);
    let ns = p.cluster.nodes[0].ns.name.clone();
    p.routers[0].kill9();
    // Persistent device: pod routes through it survive a router restart.
    assert!(sh(&["ip", "-n", &ns, "link", "show", "weft0"]).contains("weft0"));
    assert!(
        !sh(&["ip", "-n", &ns, "route", "show", "proto", "87"])
            .trim()
            .is_empty()
    );
    let state = p.routers[0].dir.join("state");
    assert!(state.join("identity.key").exists());
    let out = p.cluster.nodes[0].ns.exec(&[
        BIN,
        "reset",
        "--state",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed interface weft0"));
    let links = sh(&["ip", "-n", &ns, "link", "show"]);
    // Pod host veths are named weft + 11 hex digits: look for the device.
    assert!(
        !links.contains(" weft0:") && !links.contains(" weft0@"),
        "weft0 still there:\n{links}"
    );
    assert!(
        sh(&["ip", "-n", &ns, "route", "show", "proto", "87"])
            .trim()
            .is_empty()
    );
    assert!(!state.exists(), "state dir not removed");
    // Idempotent.
    let again = p.cluster.nodes[0].ns.exec(&[BIN, "reset"]);
    assert!(again.status.success());
}
