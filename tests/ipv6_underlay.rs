#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Routers on an IPv6 underlay carrying IPv4 pods, and dual-stack pods
//! plugged by the plugin (issue 19):
//! they listen and dial on IPv6, their topology entries, endpoints and
//! hellos carry IPv6 socket addresses, the data plane sends and receives on
//! an IPv6 UDP socket, and the MTU comes from the IPv6 underlay interface
//! (80 bytes of encapsulation: the outer header is IPv6's 40). A mixed
//! cluster (one router IPv6-only, two dual-stack) uses, per pair, a family
//! both have.
//!
//! The underlay is 2001:db8::/32 (documentation prefix), only inside the
//! test's own namespaces; the addresses the test configures skip DAD
//! (`nodad`), nothing else of the host is prepared.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// Node `i`'s IPv6 underlay address.
fn v6(i: usize) -> String {
    format!("2001:db8::{}", 10 + i)
}

/// Gives node `i` its IPv6 underlay address; with `v4_too` false, takes
/// its IPv4 one away (an IPv6-only node).
fn ipv6_underlay(cluster: &Cluster, i: usize, v4_too: bool) {
    let ns = &cluster.nodes[i].ns;
    if !v4_too {
        ns.ip(&["-4", "addr", "flush", "dev", "eth0"]);
    }
    ns.ip(&[
        "addr",
        "add",
        &format!("{}/64", v6(i)),
        "dev",
        "eth0",
        "nodad",
    ]);
}

/// Points router `i` at IPv6: listens on `listen`, seeded with the other
/// nodes' IPv6 addresses (`count` nodes), advertising `extra` besides.
fn on_ipv6(r: &mut Router, i: usize, count: usize, listen: &str, extra: &[String]) {
    let at = r.args.iter().position(|a| a == "--listen").unwrap();
    r.args[at + 1] = listen.to_string();
    for j in (0..count).filter(|j| *j != i) {
        r.args.push("--peer".into());
        r.args.push(format!("[{}]:6783", v6(j)));
    }
    for a in extra {
        r.args.push("--advertise".into());
        r.args.push(a.clone());
    }
}

/// Every established connection of every router is over the IPv6 underlay.
fn every_link_over_ipv6(routers: &[Router]) {
    for r in routers {
        for (peer, address) in established(r) {
            assert!(
                address.starts_with("[2001:db8::"),
                "{} reaches {peer} at {address}, not over IPv6",
                r.name
            );
        }
    }
}

/// `(peer name, address)` of every established connection of `r`.
fn established(r: &Router) -> Vec<(String, String)> {
    let Some(s) = r.status() else {
        return Vec::new();
    };
    s["connections"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["established"] == true)
                .map(|c| {
                    (
                        c["peer"].as_str().unwrap_or("").to_string(),
                        c["address"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_full_mesh(routers: &[Router]) {
    let meshed = wait_until(Duration::from_secs(60), || {
        routers
            .iter()
            .all(|r| established(r).len() == routers.len() - 1)
    });
    assert!(
        meshed,
        "no full mesh in 60 s: {:?}\n{}",
        routers.iter().map(established).collect::<Vec<_>>(),
        routers[0].log_tail()
    );
}

fn ping_matrix(cluster: &Cluster) {
    for a in &cluster.pods {
        for b in &cluster.pods {
            if a.addr != b.addr {
                assert!(
                    a.wait_ping(b.addr, Duration::from_secs(30)),
                    "{} cannot reach {}",
                    a.addr,
                    b.addr
                );
                assert!(a.ping(b.addr, 3), "{} -> {} lost pings", a.addr, b.addr);
            }
        }
    }
}

#[test]
fn three_routers_on_an_ipv6_only_underlay_carry_ipv4_pods() {
    if !require_root("ipv6_underlay") {
        return;
    }
    cleanup_leftovers();
    let mut cluster = Cluster::new(3);
    for i in 0..3 {
        ipv6_underlay(&cluster, i, false);
    }
    // Node 2's underlay carries 1400 bytes: its router must find that on
    // its IPv6 interface and announce 1400 - 80; the cluster follows.
    cluster.nodes[2]
        .ns
        .ip(&["link", "set", "eth0", "mtu", "1400"]);
    let routers = start_routers(
        Path::new(BIN),
        &mut cluster,
        3,
        |_| Vec::new(),
        |i, r| on_ipv6(r, i, 3, &format!("[{}]:6783", v6(i)), &[]),
    );
    wait_full_mesh(&routers);
    every_link_over_ipv6(&routers);
    for r in &routers {
        let status = r.status().unwrap();
        let underlay = status["dataplane"]["underlay"].as_str().unwrap_or("");
        assert!(underlay.starts_with("ipv6, "), "{}: {underlay}", r.name);
    }
    let announced = routers[2].status().unwrap()["dataplane"]["underlay"].clone();
    assert!(
        announced
            .as_str()
            .unwrap_or("")
            .contains("announced mtu 1320 = underlay interface MTU 1400 - 80"),
        "n2 did not take its MTU from its IPv6 interface: {announced}"
    );
    let agreed = wait_until(Duration::from_secs(30), || {
        routers.iter().all(|r| r.mtu() == Some(1320))
    });
    assert!(agreed, "the cluster MTU is not 1320");

    ping_matrix(&cluster);

    // Around the MTU, both ways across the smallest link: 1320 - 28 bytes
    // of IP and ICMP header fit; one more gets frag-needed at weft0.
    let (a, c) = (&cluster.pods[0], &cluster.pods[2]);
    let sizes = [(1292, " 0% packet loss"), (1293, "mtu = 1320")];
    for ((from, to), (size, expected)) in [(a, c), (c, a)]
        .into_iter()
        .flat_map(|pair| sizes.map(|s| (pair, s)))
    {
        let out = from.ping_df(to.addr, size);
        assert!(
            out.contains(expected),
            "{} -> {}, {size} bytes don't-fragment: no \"{expected}\":\n{out}",
            from.addr,
            to.addr
        );
    }

    // Checksummed TCP, both ways across the small link and once between
    // the full-size ones (full-size IPv6 underlay packets: 1420 + 80 = 1500).
    let b = &cluster.pods[1];
    for (from, to) in [(a, c), (c, a), (a, b)] {
        let t = transfer(from, to, 16 << 20, None);
        assert_eq!(
            t.received,
            16 << 20,
            "{} -> {}: 16 MB transfer",
            from.addr,
            to.addr
        );
        assert_eq!(t.received_sum, t.sent_sum, "checksum mismatch");
    }
    for r in &routers {
        for reason in ["bad_tag", "replay", "io_error"] {
            assert_eq!(r.dropped(reason), 0, "{} dropped {reason}", r.name);
        }
    }
}

/// The addresses `r` knows `peer` advertises (its signed topology entry).
fn advertised_by(r: &Router, peer: &str) -> Vec<String> {
    r.status()
        .and_then(|s| {
            let p = s["peers"].as_array()?.iter().find(|p| p["name"] == peer)?;
            Some(
                p["addresses"]
                    .as_array()?
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect(),
            )
        })
        .unwrap_or_default()
}

#[test]
fn a_mixed_cluster_uses_per_pair_a_family_both_routers_have() {
    if !require_root("ipv6_underlay") {
        return;
    }
    cleanup_leftovers();
    let mut cluster = Cluster::new(3);
    // n0 is IPv6-only; n1 and n2 are dual-stack on `[::]`, advertising both.
    ipv6_underlay(&cluster, 0, false);
    ipv6_underlay(&cluster, 1, true);
    ipv6_underlay(&cluster, 2, true);
    let v4: Vec<Ipv4Addr> = cluster.nodes.iter().map(|n| n.underlay).collect();
    let routers = start_routers(
        Path::new(BIN),
        &mut cluster,
        3,
        // n1 and n2 find each other over IPv4; everyone finds n0 over IPv6.
        |i| match i {
            1 => vec![2],
            2 => vec![1],
            _ => Vec::new(),
        },
        |i, r| {
            if i == 0 {
                on_ipv6(r, 0, 3, &format!("[{}]:6783", v6(0)), &[]);
            } else {
                let both = [format!("{}:6783", v4[i]), format!("[{}]:6783", v6(i))];
                let at = r.args.iter().position(|a| a == "--listen").unwrap();
                r.args[at + 1] = "[::]:6783".into();
                r.args
                    .extend(["--peer".into(), format!("[{}]:6783", v6(0))]);
                for a in both {
                    r.args.extend(["--advertise".into(), a]);
                }
            }
        },
    );
    wait_full_mesh(&routers);
    // n0 reaches and is reached over IPv6 only; n1 and n2 over IPv4 (their
    // dual-stack sockets see each other v4-mapped: one spelling, IPv4).
    for (i, r) in routers.iter().enumerate() {
        for (peer, address) in established(r) {
            let over_v6 = address.starts_with("[2001:db8::");
            let want_v6 = i == 0 || peer == "n0";
            assert_eq!(over_v6, want_v6, "{} reaches {peer} at {address}", r.name);
            assert!(!address.contains("::ffff:"), "{address} is v4-mapped");
        }
    }
    let underlay = |r: &Router| {
        r.status().unwrap()["dataplane"]["underlay"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(underlay(&routers[0]).starts_with("ipv6, "));
    assert!(underlay(&routers[1]).starts_with("ipv4+ipv6, "));
    // Both families advertised, in n1's signed entry as n0 holds it.
    let listed = wait_until(Duration::from_secs(30), || {
        let a = advertised_by(&routers[0], "n1");
        a.contains(&format!("{}:6783", v4[1])) && a.contains(&format!("[{}]:6783", v6(1)))
    });
    assert!(
        listed,
        "n1 does not advertise both families: {:?}",
        advertised_by(&routers[0], "n1")
    );

    ping_matrix(&cluster);
    let (a, b, c) = (&cluster.pods[0], &cluster.pods[1], &cluster.pods[2]);
    for (from, to) in [(a, b), (b, c), (c, a)] {
        let t = transfer(from, to, 8 << 20, None);
        assert_eq!(t.received, 8 << 20, "{} -> {}", from.addr, to.addr);
        assert_eq!(t.received_sum, t.sent_sum, "checksum mismatch");
    }
    for r in &routers {
        for reason in ["bad_tag", "replay", "io_error"] {
            assert_eq!(r.dropped(reason), 0, "{} dropped {reason}", r.name);
        }
    }
}

/// The IPv6 fragments that came in on `ns`'s eth0, counted by a table of
/// the test's own (`v6host_frag`) ahead of any reassembly.
fn v6host_fragments_in(ns: &Netns) -> u64 {
    let text = ns.ok(&["nft", "list", "table", "netdev", "v6host_frag"]);
    nft_packets(&text).unwrap_or_else(|| panic!("no counter in:\n{text}"))
}

#[test]
fn data_over_an_ipv6_underlay_is_never_fragmented_when_the_path_shrinks() {
    if !require_root("ipv6_underlay_dont_fragment") {
        return;
    }
    let mut cluster = Cluster::new(2);
    for i in 0..2 {
        ipv6_underlay(&cluster, i, false);
    }
    let routers = start_routers(
        Path::new(BIN),
        &mut cluster,
        2,
        |_| Vec::new(),
        |i, r| on_ipv6(r, i, 2, &format!("[{}]:6783", v6(i)), &[]),
    );
    wait_full_mesh(&routers);
    let agreed = wait_until(Duration::from_secs(20), || {
        routers.iter().all(|r| r.mtu() == Some(1420))
    });
    assert!(agreed, "the cluster MTU is not 1420");
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(a.wait_ping(b.addr, Duration::from_secs(20)), "no ping");
    // Full size fits the 1500-byte underlay exactly: 1420 + 80.
    assert!(
        a.ping_df(b.addr, 1392).contains(" 0% packet loss"),
        "a packet of exactly the cluster MTU did not arrive"
    );
    // Let the path-MTU probes of the link's first seconds pass (answered
    // at 0, 2 and 6 s; the next is 16 s later), so the shrunken path is
    // met by data first.
    std::thread::sleep(Duration::from_secs(7));
    let node1 = &cluster.nodes[1].ns;
    node1.ok(&[
        "nft",
        "add table netdev v6host_frag { chain in { type filter hook ingress device eth0 priority -500; ip6 nexthdr 44 counter; }; }",
    ]);
    // The path to node 1 shrinks to 1400 bytes behind the routers' backs
    // (a tunnel or a smaller link on the way; the MTU stays 1420).
    cluster.nodes[0].ns.ip(&[
        "-6",
        "route",
        "replace",
        &format!("{}/128", v6(1)),
        "dev",
        "eth0",
        "mtu",
        "1400",
    ]);
    let too_big = routers[0].dropped("too_big");
    let out = a.ping_df(b.addr, 1392);
    let fragments = v6host_fragments_in(node1);
    // The link is still up (no probe met the small path yet): the test
    // saw data, not a dead link.
    assert!(
        a.ping_df(b.addr, 1000).contains(" 0% packet loss"),
        "the link went down meanwhile: {:?}",
        established(&routers[0])
    );
    assert_eq!(
        fragments, 0,
        "the outer datagram was fragmented on the wire ({fragments} fragments); ping: {out}"
    );
    assert!(
        !out.contains(" 0% packet loss"),
        "an oversized outer datagram arrived: {out}"
    );
    assert!(
        routers[0].dropped("too_big") > too_big,
        "the refused datagram is not counted: {:#}",
        routers[0].status().unwrap()["dataplane"]
    );
}

#[test]
fn three_routers_on_an_ipv6_only_underlay_carry_dual_stack_pods_plugged_by_the_plugin() {
    if !require_root("ipv6_underlay_dual_stack_pods") {
        return;
    }
    cleanup_leftovers();
    let cluster = Cluster::new(3);
    for i in 0..3 {
        ipv6_underlay(&cluster, i, false);
    }
    let m = cni_mesh::mesh_on(cluster, |r| {
        // The harness seeds by IPv4, which these nodes no longer have.
        while let Some(at) = r.args.iter().position(|a| a == "--peer") {
            r.args.drain(at..at + 2);
        }
        let i: usize = r.name[1..].parse().unwrap();
        on_ipv6(r, i, 3, &format!("[{}]:6783", v6(i)), &[]);
        r.args
            .extend(["--ipalloc-range".into(), dual_pods::RANGE6.into()]);
    });
    let ready = wait_until(Duration::from_secs(30), || {
        m.routers.iter().all(dual_pods::ipam6_ready)
    });
    assert!(
        ready,
        "the IPv6 ring is not ready: {}",
        m.routers[0].log_tail()
    );
    every_link_over_ipv6(&m.routers);
    let pods: Vec<_> = (0..3)
        .map(|i| dual_pods::plug(&m, i, &format!("v6only{i}")))
        .collect();
    for (a, from) in pods.iter().enumerate() {
        for (b, to) in pods.iter().enumerate().filter(|(b, _)| *b != a) {
            for addr in [IpAddr::V4(to.v4), IpAddr::V6(to.v6)] {
                assert!(
                    dual_pods::ping(&from.ns, addr, Duration::from_secs(20)),
                    "pod n{a} cannot reach pod n{b} at {addr} over the IPv6-only underlay\n{}",
                    m.routers[a].log_tail()
                );
            }
        }
    }
    dual_pods::checked_transfer(
        &pods[0],
        &pods[2],
        IpAddr::V6(pods[2].v6),
        20 << 20,
        "TCPv6 over an IPv6-only underlay, n0 -> n2",
    );
    dual_pods::checked_transfer(
        &pods[2],
        &pods[1],
        IpAddr::V4(pods[1].v4),
        20 << 20,
        "TCPv4 over an IPv6-only underlay, n2 -> n1",
    );
}
