#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Egress and anti-spoofing through the router's nftables table (DESIGN.md
//! "The picture", "Egress and forwarding"): a pod reaches a host outside the
//! cluster range that has no route back to the range, because node0
//! masquerades it; with `--no-masq` the outside sees the pod's own address;
//! a pod that forges any other source (another pod's, the node's own
//! underlay address, one outside the range) is dropped at its node and
//! counted (DESIGN.md "Security model").

mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");
const NODE_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const PORT: u16 = 7001;

/// A host outside the cluster, joined to `node` by a veth on
/// 198.51.100.0/24 and with no route to the pod range.
fn outside_host(node: &Netns) -> Netns {
    support::egress_echo::outside_host(node, "ext0", (NODE_SIDE.into(), OUTSIDE.into()), 24)
}

/// The outside host's UDP socket at 198.51.100.2:7001.
fn outside_socket(outside: &Netns) -> UdpSocket {
    support::egress_echo::outside_socket(outside, (OUTSIDE, PORT).into())
}

/// Sends `payload` from `from` (an address on the pod's eth0) to the
/// outside socket: the sources the outside saw and the reply the pod got.
fn exchange(
    pod: &Pod,
    outside: &UdpSocket,
    from: Ipv4Addr,
    payload: &'static str,
) -> (Vec<SocketAddr>, Option<String>) {
    support::egress_echo::udp_echo_exchange(&pod.ns.name, from.into(), outside, payload)
}

/// The packets the `antispoof` rules have dropped on `node`.
fn antispoof_drops(node: &Netns) -> u64 {
    let text = node.ok(&["nft", "list", "table", "ip", "weft"]);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("fib saddr . iif oif missing"))
        .collect();
    assert!(!lines.is_empty(), "no antispoof rule in:\n{text}");
    lines
        .iter()
        .map(|line| nft_packets(line).unwrap_or_else(|| panic!("no counter in {line:?}")))
        .sum()
}

#[test]
fn pods_reach_the_outside_masqueraded_or_not_and_cannot_spoof() {
    if !require_root("egress") {
        return;
    }
    // The outside host is node0's uplink before its router starts, as on a
    // real node: the router turns forwarding on there (replies to
    // masqueraded pod traffic come in on ext0), nobody else does.
    let cluster = Cluster::new(2);
    let outside = outside_host(&cluster.nodes[0].ns);
    let mut pair = start_pair_on(cluster, Path::new(BIN), &[]);
    let socket = outside_socket(&outside);
    // A second pod on node0, whose address pod 0 will forge.
    let neighbour = Ipv4Addr::from(u32::from(pair.cluster.pods[0].addr) + 1);
    pair.cluster.add_pod(0, neighbour);
    let (pod, remote) = (&pair.cluster.pods[0], pair.cluster.pods[1].addr);
    let node0 = &pair.cluster.nodes[0].ns;

    // (a) Masqueraded: the round trip works although the outside has no
    // route to the range, and the outside sees node0's address.
    assert!(pod.ping(OUTSIDE, 2), "a pod cannot ping the outside host");
    assert_eq!(
        node0
            .ok(&["cat", "/proc/sys/net/ipv4/conf/ext0/forwarding"])
            .trim(),
        "1",
        "the router did not turn forwarding on on the uplink"
    );
    let (seen, reply) = exchange(pod, &socket, pod.addr, "masq");
    assert!(!seen.is_empty(), "the outside got nothing from the pod");
    assert!(
        seen.iter().all(|p| p.ip() == NODE_SIDE),
        "the outside saw {seen:?}, not node0's {NODE_SIDE}"
    );
    assert_eq!(reply.as_deref(), Some(NODE_SIDE.to_string().as_str()));

    // (c) Forged sources (a pod on the same node, a pod on the other node,
    // node0's own underlay address, an address outside the range) are
    // dropped at node0 and counted; the pod's own address still passes.
    let before = antispoof_drops(node0);
    let underlay = pair.cluster.nodes[0].underlay;
    let outside_range = Ipv4Addr::new(203, 0, 113, 77);
    let forgeries = [neighbour, remote, underlay, outside_range];
    for forged in forgeries {
        pod.ns
            .ip(&["addr", "add", &format!("{forged}/32"), "dev", "eth0"]);
        let (seen, _) = exchange(pod, &socket, forged, "forged");
        assert!(
            seen.is_empty(),
            "a packet forged from {forged} got out: {seen:?}"
        );
        pod.ns
            .ip(&["addr", "del", &format!("{forged}/32"), "dev", "eth0"]);
    }
    let after = antispoof_drops(node0);
    assert!(
        after >= before + forgeries.len() as u64,
        "the antispoof counter went from {before} to {after}"
    );
    let (seen, _) = exchange(pod, &socket, pod.addr, "honest");
    assert!(!seen.is_empty(), "the pod's own packets no longer pass");

    // (b) Restarted with --no-masq: the table is replaced, without NAT, and
    // the outside sees the pod's own address.
    let router = &mut pair.routers[0];
    router.kill9();
    router.env.push(("WEFT_NO_MASQ".into(), "1".into()));
    router.start();
    let table = node0.ok(&["nft", "list", "table", "ip", "weft"]);
    assert!(
        !table.contains("masquerade"),
        "still masquerading:\n{table}"
    );
    assert_eq!(table.matches("chain antispoof").count(), 1, "{table}");
    let (seen, _) = exchange(pod, &socket, pod.addr, "no-masq");
    assert!(
        !seen.is_empty() && seen.iter().all(|p| p.ip() == pod.addr),
        "with --no-masq the outside saw {seen:?}, not the pod's {}",
        pod.addr
    );
}

#[test]
fn a_docker_style_forward_drop_policy_is_opened_for_the_range_and_reset_closes_it() {
    if !require_root("egress_forward_policy") {
        return;
    }
    let mut pair = start_pair(Path::new(BIN), &[]);
    let (a, b) = (&pair.cluster.pods[0], pair.cluster.pods[1].addr);
    assert!(a.ping(b, 2), "pods do not reach each other to begin with");
    // What Docker does: FORWARD drops by policy; node0 also gets Docker's
    // DOCKER-USER chain, node1 only the policy.
    for r in pair.routers.iter_mut() {
        r.kill9();
    }
    for (i, node) in pair.cluster.nodes.iter().enumerate() {
        node.ns
            .ok(&["iptables", "-w", "5", "-P", "FORWARD", "DROP"]);
        if i == 0 {
            node.ns.ok(&["iptables", "-w", "5", "-N", "DOCKER-USER"]);
            node.ns
                .ok(&["iptables", "-w", "5", "-I", "FORWARD", "-j", "DOCKER-USER"]);
        }
    }
    for r in pair.routers.iter_mut() {
        r.start();
    }
    let up = wait_until(Duration::from_secs(10), || {
        pair.routers.iter().all(|r| r.established_peers() == 1)
    });
    assert!(up, "routers did not reconnect");
    assert!(
        pair.cluster.pods[0].ping(b, 3),
        "pods cannot reach each other through a FORWARD DROP policy"
    );
    let chain_of = |i: usize, chain: &str| {
        pair.cluster.nodes[i]
            .ns
            .ok(&["iptables", "-w", "5", "-S", chain])
    };
    assert_eq!(
        chain_of(0, "DOCKER-USER").matches("weft pod range").count(),
        2
    );
    assert_eq!(chain_of(0, "FORWARD").matches("weft pod range").count(), 0);
    assert_eq!(chain_of(1, "FORWARD").matches("weft pod range").count(), 2);
    // Someone deletes them (they are the first two rules of node1's
    // FORWARD): the router notices and puts them back by itself, counted.
    let node1 = &pair.cluster.nodes[1].ns;
    for _ in 0..2 {
        node1.ok(&["iptables", "-w", "5", "-D", "FORWARD", "1"]);
    }
    let back = wait_until(Duration::from_secs(5), || {
        chain_of(1, "FORWARD").matches("weft pod range").count() == 2
    });
    assert!(back, "{}", pair.routers[1].log_tail());
    assert!(
        pair.routers[1].status().unwrap()["firewall"]["reapplied"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(pair.cluster.pods[0].ping(b, 3), "pods lost each other");
    // A restart finds them in place and adds none.
    pair.routers[1].kill9();
    pair.routers[1].start();
    assert!(wait_until(Duration::from_secs(10), || pair.routers[1]
        .established_peers()
        == 1));
    assert_eq!(chain_of(1, "FORWARD").matches("weft pod range").count(), 2);
    assert!(pair.cluster.pods[0].ping(b, 3), "pods lost each other");
    // weft reset takes them out again.
    pair.routers[0].kill9();
    let node0 = &pair.cluster.nodes[0].ns;
    let out = node0.ok(&[BIN, "reset", "--iface", "weft0"]);
    assert!(out.contains("iptables FORWARD rules"), "{out}");
    assert_eq!(
        chain_of(0, "DOCKER-USER").matches("weft pod range").count(),
        0
    );
}
