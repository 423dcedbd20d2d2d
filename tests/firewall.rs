//! The router's rules in the host's firewall on the hosts users have
//! (issue 17): a host agent that flushes the ruleset (firewalld reload,
//! `nft flush ruleset`) has the router's table and FORWARD accept rules put
//! back within seconds, counted in status and metrics; a host whose FORWARD
//! drop comes from `iptables-legacy` gets the accept rules in that backend,
//! and status names it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

fn ours(ns: &Netns, command: &str) -> usize {
    ns.ok(&[command, "-w", "5", "-S", "FORWARD"])
        .matches("weft pod range")
        .count()
}

fn table_complete(ns: &Netns) -> bool {
    let out = ns.exec(&["nft", "list", "table", "ip", "weft"]);
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success()
        && text.contains("ip saddr 10.32.0.0/12 accept")
        && text.contains("fib saddr . iif oif missing")
        && text.contains("masquerade")
}

#[test]
fn a_flushed_ruleset_is_put_back_within_seconds_and_counted() {
    if !require_root("a_flushed_ruleset_is_put_back_within_seconds_and_counted") {
        return;
    }
    let pair = start_pair(Path::new(BIN), &[]);
    let (a, b) = (&pair.cluster.pods[0], pair.cluster.pods[1].addr);
    let node0 = &pair.cluster.nodes[0].ns;
    assert!(a.ping(b, 2), "pods do not reach each other to begin with");
    assert!(table_complete(node0));

    // The host's firewall sets FORWARD to DROP while the router runs: the
    // router notices the change and accepts its range there.
    node0.ok(&["iptables-nft", "-w", "5", "-P", "FORWARD", "DROP"]);
    let opened = wait_until(Duration::from_secs(5), || ours(node0, "iptables-nft") == 2);
    assert!(opened, "{}", pair.routers[0].log_tail());
    assert!(a.ping(b, 2), "pods lost each other behind the DROP policy");
    let before = pair.routers[0].status().unwrap()["firewall"]["reapplied"]
        .as_u64()
        .unwrap();

    // Under ping traffic, the ruleset is flushed and the host's firewall
    // puts its own DROP policy back, as a firewalld reload does.
    let mut pinging = Command::new("ip")
        .args([
            "netns", "exec", &a.ns.name, "ping", "-q", "-i", "0.2", "-c", "40",
        ])
        .arg(b.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    node0.ok(&["nft", "flush", "ruleset"]);
    node0.ok(&["iptables-nft", "-w", "5", "-P", "FORWARD", "DROP"]);
    assert!(!table_complete(node0));
    let back = wait_until(Duration::from_secs(5), || {
        table_complete(node0) && ours(node0, "iptables-nft") == 2
    });
    let _ = pinging.kill();
    let _ = pinging.wait();
    assert!(
        back,
        "the table or the FORWARD rules are not back after 5 s:\n{}\n{}",
        node0.ok(&["nft", "list", "ruleset"]),
        pair.routers[0].log_tail()
    );
    assert!(
        a.wait_ping(b, Duration::from_secs(5)),
        "pods lost each other"
    );
    assert!(a.ping(b, 3));

    let status = pair.routers[0].status().unwrap();
    let firewall = &status["firewall"];
    assert!(
        firewall["reapplied"].as_u64().unwrap() > before,
        "{firewall}"
    );
    assert_eq!(firewall["nftables"], "applied");
    assert_eq!(firewall["iptables"], "nft");
    assert_eq!(firewall["forward_accept"][0], "nft/FORWARD");
    let log = std::fs::read_to_string(pair.routers[0].log_path()).unwrap();
    assert!(log.contains("nftables table was removed"), "{log}");
    // Node1 was left alone: nothing to put back there.
    let other = pair.routers[1].status().unwrap();
    assert_eq!(other["firewall"]["reapplied"], 0, "{}", other["firewall"]);
}

#[test]
fn a_forward_drop_set_by_iptables_legacy_is_opened_and_named_in_status() {
    if !require_root("a_forward_drop_set_by_iptables_legacy_is_opened_and_named_in_status") {
        return;
    }
    let mut cluster = Cluster::new(2);
    // The image's `iptables` is the nft one: it sees ACCEPT here.
    for node in &cluster.nodes {
        node.ns
            .ok(&["iptables-legacy", "-w", "5", "-P", "FORWARD", "DROP"]);
        assert!(
            node.ns
                .ok(&["iptables-nft", "-w", "5", "-S", "FORWARD"])
                .contains("-P FORWARD ACCEPT")
        );
    }
    let routers = start_routers(Path::new(BIN), &mut cluster, 2, |i| vec![1 - i], |_, _| {});
    let up = wait_until(Duration::from_secs(10), || {
        routers.iter().all(|r| r.established_peers() == 1)
    });
    assert!(up, "{}", routers[0].log_tail());
    let b = cluster.pods[1].addr;
    assert!(
        cluster.pods[0].wait_ping(b, Duration::from_secs(5)),
        "pods do not reach each other through legacy FORWARD DROP:\n{}",
        routers[0].log_tail()
    );
    for (i, r) in routers.iter().enumerate() {
        let status = r.status().unwrap();
        assert_eq!(
            status["firewall"]["iptables"], "legacy",
            "{}",
            status["firewall"]
        );
        assert_eq!(
            status["firewall"]["forward_accept"],
            serde_json::json!(["legacy/FORWARD"])
        );
        assert_eq!(ours(&cluster.nodes[i].ns, "iptables-legacy"), 2);
        assert_eq!(ours(&cluster.nodes[i].ns, "iptables-nft"), 0);
    }
    // The legacy rules are checked periodically (no nftables notification
    // comes for them): deleted, they are back within seconds.
    let node1 = &cluster.nodes[1].ns;
    for _ in 0..2 {
        node1.ok(&["iptables-legacy", "-w", "5", "-D", "FORWARD", "1"]);
    }
    let back = wait_until(Duration::from_secs(10), || {
        ours(node1, "iptables-legacy") == 2
    });
    assert!(back, "{}", routers[1].log_tail());
    assert!(cluster.pods[0].ping(b, 2));
    // weft reset removes them from the legacy backend too.
    drop(routers);
    let out = node1.ok(&[BIN, "reset", "--iface", "weft0"]);
    assert!(out.contains("2 iptables FORWARD rules"), "{out}");
    assert_eq!(ours(node1, "iptables-legacy"), 0);
}

#[test]
fn a_router_restarted_without_an_ipv6_range_removes_the_ip6_table_it_left() {
    if !require_root("a_router_restarted_without_an_ipv6_range_removes_the_ip6_table_it_left") {
        return;
    }
    let cluster = Cluster::new(1);
    let node = &cluster.nodes[0];
    let mut router = Router::new(Path::new(BIN), node, &cluster.dir.path, &[], &["n0"]);
    let plain = router.args.clone();
    router
        .args
        .extend(["--ipalloc-range".into(), "fd00:32::/112".into()]);
    router.start();
    let ip6_table = || node.ns.exec(&["nft", "list", "table", "ip6", "weft"]);
    let applied = wait_until(Duration::from_secs(10), || {
        String::from_utf8_lossy(&ip6_table().stdout).contains("ip6 saddr fd00:32::/112 accept")
    });
    assert!(applied, "no table ip6 weft: {}", router.log_tail());
    assert!(router.terminate(Duration::from_secs(10)).is_some());
    // The table outlives the router (as the IPv4 one does).
    assert!(ip6_table().status.success());

    router.args = plain;
    router.start();
    let gone = wait_until(Duration::from_secs(10), || !ip6_table().status.success());
    assert!(
        gone,
        "table ip6 weft left:\n{}",
        String::from_utf8_lossy(&ip6_table().stdout)
    );
    assert!(table_complete(&node.ns), "the IPv4 table must stay");
    assert!(
        router
            .log_tail()
            .contains("removed the IPv6 table an earlier run left"),
        "{}",
        router.log_tail()
    );
    // A restart with nothing to remove says nothing about it.
    assert!(router.terminate(Duration::from_secs(10)).is_some());
    router.start();
    assert!(table_complete(&node.ns));
    let said = std::fs::read_to_string(router.log_path()).unwrap();
    assert_eq!(
        said.matches("removed the IPv6 table an earlier run left")
            .count(),
        1,
        "{said}"
    );
}
