#![allow(clippy::unwrap_used, clippy::expect_used)]
//! IPv6's 1,280-byte minimum link MTU (issue 19; docs/ARCHITECTURE.md
//! "IPv6's minimum MTU"): Linux turns IPv6 off on a link under it, so a
//! router with an IPv6 pod range refuses to start below it (`--mtu`, or an
//! underlay too small), and when a router announcing less joins, the
//! dual-stack routers keep weft0 and their pods at 1280: IPv6 pods keep
//! talking across nodes with 1,280-byte packets, IPv4 over the cluster
//! minimum gets frag-needed, and status, the log and a metric name the
//! small router.

mod support;

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;
use support::cni_mesh::{Mesh, weft_bin};
use support::dual_pods::*;
use support::*;

/// `weft router` on a fresh node (never in this host's namespace, should
/// the refusal ever regress) whose underlay interface has MTU `underlay`,
/// with its files in a temporary directory and `extra` flags; it must exit
/// on its own with an error: its stderr. No weft0 may be left behind.
fn refused(underlay: u32, extra: &[&str]) -> String {
    let cluster = Cluster::new(1);
    let node = &cluster.nodes[0];
    node.ns
        .ip(&["link", "set", "eth0", "mtu", &underlay.to_string()]);
    let dir = TempDir::new("v6mtu");
    let secret = dir.path.join("secret");
    write_secret(&secret);
    let path = |name: &str| dir.path.join(name).display().to_string();
    let listen = format!("{}:6783", node.underlay);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.ns.name])
        .arg(weft_bin())
        .args(["router", "--name", "n0", "--listen", &listen])
        .args(["--secret-file", &path("secret")])
        .args(["--state-dir", &path("state"), "--api", &path("weft.sock")])
        .args(extra)
        .env_remove("RUST_LOG");
    let out = run_timeout(&mut cmd, 20).expect("run weft router");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started with {extra:?}:\n{err}");
    let links = node.ns.ok(&["ip", "-o", "link", "show"]);
    assert!(!links.contains("weft0"), "{links}");
    err
}

#[test]
fn a_router_with_an_ipv6_range_refuses_an_mtu_under_1280_in_one_line() {
    if !require_root("a_router_with_an_ipv6_range_refuses_an_mtu_under_1280_in_one_line") {
        return;
    }
    let err = refused(1500, &["--mtu", "1200", "--ipalloc-range", RANGE6]);
    assert!(
        err.contains("--mtu 1200 is below 1280")
            && err.contains("pass --mtu 1280 or more, or drop the IPv6 range")
            && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_router_with_an_ipv6_range_refuses_an_underlay_too_small_for_1280() {
    if !require_root("a_router_with_an_ipv6_range_refuses_an_underlay_too_small_for_1280") {
        return;
    }
    // 1300 - 80 bytes of encapsulation = 1220.
    let err = refused(1300, &["--ipalloc-range", RANGE6]);
    let line = err
        .lines()
        .find(|l| l.contains("below 1280"))
        .unwrap_or_else(|| panic!("no refusal:\n{err}"));
    assert!(
        line.contains("overlay MTU 1220 (underlay interface MTU 1300 - 80)")
            && line.contains("raise the underlay interface's MTU to 1360 or more"),
        "{err}"
    );
}

/// Whether five pings from `from` to `to` (`size` bytes of payload,
/// don't-fragment) all come back.
fn all_pings_pass(from: &Netns, to: IpAddr, size: usize) -> bool {
    mtu_ping_df(from, to, size, 5).contains(" 0% packet loss")
}

fn link_mtu(ns: &Netns, dev: &str) -> u64 {
    ns.ok(&["cat", &format!("/sys/class/net/{dev}/mtu")])
        .trim()
        .parse()
        .unwrap()
}

/// Two dual-stack routers (n0, n1: the IPv6 range, seeds of the IPv4 ring)
/// on a cluster of three nodes, with a dual-stack pod each; n2 is left
/// for the router that joins.
fn two_dual_stack_routers_of_three() -> (Mesh, Vec<DualPod>) {
    let cluster = Cluster::new(3);
    let mut routers: Vec<Router> = (0..2)
        .map(|i| {
            let peer = cluster.nodes[1 - i].underlay;
            let mut r = Router::new(
                &weft_bin(),
                &cluster.nodes[i],
                &cluster.dir.path,
                &[peer],
                &["n0", "n1"],
            );
            r.args.extend(["--ipalloc-range".into(), RANGE6.into()]);
            let metrics = format!("{}:6782", cluster.nodes[i].underlay);
            r.args.extend(["--metrics-addr".into(), metrics]);
            r
        })
        .collect();
    for r in &mut routers {
        r.start();
    }
    let ready = wait_until(Duration::from_secs(30), || {
        routers
            .iter()
            .all(|r| r.established_peers() == 1 && ipam6_ready(r))
    });
    assert!(ready, "not ready:\n{}", routers[0].log_tail());
    let mesh = Mesh { routers, cluster };
    let pods: Vec<DualPod> = (0..2)
        .map(|i| plug(&mesh, i, &format!("cid-v6mtu-{i}")))
        .collect();
    (mesh, pods)
}

#[test]
fn a_peer_with_a_small_mtu_joining_keeps_ipv6_pods_working_at_1280() {
    if !require_root("a_peer_with_a_small_mtu_joining_keeps_ipv6_pods_working_at_1280") {
        return;
    }
    let (m, pods) = two_dual_stack_routers_of_three();
    for (a, b) in [(0, 1), (1, 0)] {
        assert!(
            ping(&pods[a].ns, IpAddr::V6(pods[b].v6), Duration::from_secs(20)),
            "no IPv6 before the small router joins"
        );
    }
    // n2: IPv4 only (it could not start with an IPv6 range), --mtu 1200.
    let mut small = Router::new(
        &weft_bin(),
        &m.cluster.nodes[2],
        &m.cluster.dir.path,
        &[m.cluster.nodes[0].underlay, m.cluster.nodes[1].underlay],
        &["n2"],
    );
    let init = small
        .args
        .iter()
        .position(|a| a == "--ipalloc-init")
        .unwrap();
    small.args[init + 1] = "observer".into();
    small.args.extend(["--mtu".into(), "1200".into()]);
    small.start();
    let lowered = wait_until(Duration::from_secs(30), || {
        m.routers.iter().all(|r| r.mtu() == Some(1200))
            && (0..2).all(|i| link_mtu(&m.cluster.nodes[i].ns, "weft0") != 1420)
    });
    assert!(
        lowered,
        "the cluster MTU did not follow n2's 1200: {:?}\n{}",
        m.routers.iter().map(Router::mtu).collect::<Vec<_>>(),
        small.log_tail()
    );
    // Let a plan that would turn IPv6 off on weft0 reach the kernel.
    std::thread::sleep(Duration::from_secs(2));

    // The existing IPv6 pods keep talking across nodes, with packets of
    // IPv6's full 1280 bytes (1232 + 8 ICMPv6 + 40 IPv6).
    for (a, b) in [(0, 1), (1, 0)] {
        let to = IpAddr::V6(pods[b].v6);
        assert!(
            all_pings_pass(&pods[a].ns, to, 56) && all_pings_pass(&pods[a].ns, to, 1232),
            "IPv6 from n{a} to n{b} broke when n2 joined with MTU 1200: weft0 {}, {}\n{}",
            link_mtu(&m.cluster.nodes[a].ns, "weft0"),
            m.cluster.nodes[a]
                .ns
                .ok(&["ip", "-6", "addr", "show", "dev", "weft0"]),
            m.routers[a].log_tail()
        );
    }
    for i in 0..2 {
        assert_eq!(link_mtu(&m.cluster.nodes[i].ns, "weft0"), 1280, "n{i}");
    }
    // IPv4 still fits the cluster minimum: 1200 bytes pass, 1201 get
    // frag-needed naming 1200 from the node's kernel (the IPv4 range
    // route's MTU), instead of vanishing into n2's smaller path.
    let v4 = |i: usize| IpAddr::V4(pods[i].v4);
    assert!(all_pings_pass(&pods[0].ns, v4(1), 1172), "IPv4 at 1200");
    let text = mtu_ping_df(&pods[0].ns, v4(1), 1173, 1);
    assert!(text.contains("mtu = 1200"), "no frag-needed: {text}");
    let route = m.cluster.nodes[0]
        .ns
        .ok(&["ip", "route", "show", "10.32.0.0/12"]);
    assert!(route.contains("mtu 1200"), "{route}");

    // Status says why, naming the router and its MTU.
    for r in &m.routers {
        let status = r.status().unwrap();
        let floor = &status["dataplane"]["ipv6_mtu_floor"];
        assert_eq!(floor["mtu"], 1280, "{status:#}");
        assert_eq!(
            floor["peers"],
            serde_json::json!([{"name": "n2", "mtu": 1200}]),
            "{status:#}"
        );
        let text = status_text(r);
        assert!(
            text.contains("ipv6 mtu floor: n2 announces 1200, below IPv6's minimum 1280"),
            "{text}"
        );
        let logged = wait_until(Duration::from_secs(5), || {
            r.log_tail()
                .lines()
                .any(|l| l.contains("IPv6 MTU floor") && l.contains("n2 announces 1200"))
        });
        assert!(logged, "no log line naming n2:\n{}", r.log_tail());
    }

    for i in 0..2 {
        let node = &m.cluster.nodes[i];
        let metrics = scrape_metrics(&node.ns.name, node.underlay);
        assert!(
            metrics.lines().any(|l| l == "weft_ipv6_mtu_floor_peers 1"),
            "n{i}: {}",
            metrics
                .lines()
                .filter(|l| l.contains("mtu"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // A pod plugged now gets 1280, and its IPv6 works.
    let late = plug(&m, 1, "cid-v6mtu-late");
    assert_eq!(link_mtu(&late.ns, "eth0"), 1280);
    assert!(
        all_pings_pass(&late.ns, IpAddr::V6(pods[0].v6), 1232),
        "a pod plugged after n2 joined cannot reach n0 over IPv6"
    );
    // A checksummed TCPv6 transfer across nodes at the floor.
    checked_transfer(
        &pods[0],
        &late,
        IpAddr::V6(late.v6),
        4 << 20,
        "TCPv6 at 1280",
    );
}

/// `weft status` as an operator reads it.
fn status_text(r: &Router) -> String {
    let out = run_timeout(
        Command::new(&r.bin).args(["status", "--api"]).arg(r.api()),
        10,
    )
    .expect("weft status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
