#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]
//! Dual-stack pods across nodes (issue 19, third layer): three routers with
//! an IPv6 pod range, one pod each plugged by the real CNI plugin, which
//! gets an IPv4 and an IPv6 address; IPv6 and IPv4 ping matrices across
//! nodes; a checksummed TCPv6 transfer between pods on different nodes;
//! a pod forging IPv6 sources (a local pod's, a remote pod's, one outside
//! the range) is dropped at its node by `table ip6 weft`, its own address
//! passes; each node's owned IPv6 ranges are `unreachable` routes; CHECK
//! and DEL of both addresses.

mod support;

use std::net::{IpAddr, Ipv6Addr, UdpSocket};
use std::time::{Duration, Instant};
use support::cni::*;
use support::cni_mesh::*;
use support::dual_pods::*;
use support::*;

fn drops(r: &Router, label: &str) -> u64 {
    counters(&r.status().unwrap())
        .get(&format!("dropped.{label}"))
        .copied()
        .unwrap_or(0)
}

/// The packets the IPv6 anti-spoofing rules have dropped on `node`.
fn antispoof6_drops(node: &Netns) -> u64 {
    let text = node.ok(&["nft", "list", "table", "ip6", "weft"]);
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("fib saddr . iif oif missing"))
        .map(|line| nft_packets(line).unwrap_or_else(|| panic!("no counter in {line:?}")))
        .collect();
    assert_eq!(counts.len(), 2, "the antispoof rules of:\n{text}");
    counts.iter().sum()
}

/// Sends 5 UDP datagrams carrying `tag` from `from` (an address on `pod`'s
/// eth0) to `to`:7102 and returns how many of them `receiver` (bound to
/// [::]:7102 in the destination pod) got within 2 s.
fn udp6_through(
    pod: &Netns,
    from: Ipv6Addr,
    to: Ipv6Addr,
    receiver: &UdpSocket,
    tag: &str,
) -> usize {
    let payload = tag.to_string();
    let sent = in_netns(&pod.name, move || {
        let socket = UdpSocket::bind((from, 0)).expect("bind in pod");
        for _ in 0..5 {
            let _ = socket.send_to(payload.as_bytes(), (to, 7102));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut got = 0;
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok((n, _)) = receiver.recv_from(&mut buf)
            && &buf[..n] == tag.as_bytes()
        {
            got += 1;
        }
    }
    sent.join().unwrap();
    got
}

#[test]
fn dual_stack_pods_plugged_by_the_plugin_talk_across_three_nodes() {
    if !require_root("dual_stack_pods_plugged_by_the_plugin_talk_across_three_nodes") {
        return;
    }
    let m = dual_stack_mesh(3, |_| {});
    let range6 = u128::from("fd00:32::".parse::<Ipv6Addr>().unwrap());
    let pods: Vec<DualPod> = (0..3)
        .map(|i| plug(&m, i, &format!("cid-dual-{i}")))
        .collect();
    for p in &pods {
        assert_eq!(
            u128::from(p.v6) >> 16,
            range6 >> 16,
            "{} not in {RANGE6}",
            p.v6
        );
        // The pod's IPv6 address is usable at once: no DAD.
        let shown = p.ns.ok(&["ip", "-6", "addr", "show", "dev", "eth0"]);
        let line = shown
            .lines()
            .find(|l| l.contains(&format!("{}/128", p.v6)))
            .unwrap_or_else(|| panic!("no {}/128: {shown}", p.v6));
        assert!(
            line.contains("nodad") && !line.contains("tentative"),
            "{shown}"
        );
    }
    // Each node makes its own IPv6 ranges `unreachable` (as the IPv4
    // ones), and no two nodes claim the same block.
    let unreachable6 = |i: usize| -> Vec<String> {
        m.cluster.nodes[i]
            .ns
            .ok(&[
                "ip",
                "-6",
                "route",
                "show",
                "type",
                "unreachable",
                "proto",
                "87",
            ])
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
            .collect()
    };
    let shown = wait_until(Duration::from_secs(10), || {
        (0..3).all(|i| !unreachable6(i).is_empty())
    });
    assert!(shown, "{:?}", (0..3).map(unreachable6).collect::<Vec<_>>());
    let mut all6 = Vec::new();
    for i in 0..3 {
        for block in unreachable6(i) {
            assert!(
                block.starts_with("fd00:32::"),
                "n{i}: {block} outside {RANGE6}"
            );
            all6.push(block);
        }
    }
    let count = all6.len();
    all6.sort();
    all6.dedup();
    assert_eq!(all6.len(), count, "a block on two nodes: {all6:?}");

    let start = Instant::now();
    for a in 0..3 {
        for b in 0..3 {
            if a == b {
                continue;
            }
            for to in [IpAddr::V6(pods[b].v6), IpAddr::V4(pods[b].v4)] {
                assert!(
                    ping(&pods[a].ns, to, Duration::from_secs(20)),
                    "pod on n{a} cannot reach {to} on n{b}\n{}\n{}",
                    m.routers[a].log_tail(),
                    m.routers[b].log_tail()
                );
            }
        }
    }
    println!(
        "ping matrix (IPv6 and IPv4, 3 nodes) in {:?}",
        start.elapsed()
    );

    packet_too_big_from_the_router(&m, &pods[0], &pods[1]);

    const BYTES: u64 = 20 * 1024 * 1024;
    let to = IpAddr::V6(pods[2].v6);
    checked_transfer(&pods[0], &pods[2], to, BYTES, "TCPv6 n0 -> n2");
    let to = IpAddr::V4(pods[0].v4);
    checked_transfer(&pods[1], &pods[0], to, BYTES, "TCPv4 alongside, n1 -> n0");
    for r in &m.routers {
        assert_eq!(drops(r, "not_ip"), 0, "{}", r.name);
        assert_eq!(drops(r, "spoofed_source"), 0, "{}", r.name);
    }

    // IPv6 anti-spoofing: pod 0 forges the source of a second pod on its
    // node (which the data plane cannot tell from its own: same router's
    // range), of the pod on n2, and one outside the range; all are dropped
    // at n0 and counted, the pod's own address passes.
    let neighbour = plug(&m, 0, "cid-dual-0b");
    let receiver = in_netns(&pods[1].ns.name, || {
        UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 7102)).expect("bind receiver")
    })
    .join()
    .unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let node0 = &m.cluster.nodes[0].ns;
    let before = antispoof6_drops(node0);
    let outside: Ipv6Addr = "2001:db8::77".parse().unwrap();
    let forgeries = [neighbour.v6, pods[2].v6, outside];
    for forged in forgeries {
        let addr = format!("{forged}/128");
        pods[0]
            .ns
            .ip(&["-6", "addr", "add", &addr, "dev", "eth0", "nodad"]);
        let got = udp6_through(&pods[0].ns, forged, pods[1].v6, &receiver, "forged");
        assert_eq!(got, 0, "datagrams forged from {forged} got through");
        pods[0].ns.ip(&["-6", "addr", "del", &addr, "dev", "eth0"]);
    }
    let after = antispoof6_drops(node0);
    assert!(
        after >= before + 5 * forgeries.len() as u64,
        "the IPv6 antispoof counters went from {before} to {after}"
    );
    let honest = udp6_through(&pods[0].ns, pods[0].v6, pods[1].v6, &receiver, "honest");
    assert!(honest >= 4, "{honest} of 5 honest datagrams got through");
    assert!(ping(
        &neighbour.ns,
        IpAddr::V6(pods[1].v6),
        Duration::from_secs(10)
    ));

    // CHECK with the ADD result, then DEL frees both addresses.
    let node = &m.cluster.nodes[1].ns;
    let mut conf = net_conf("1.0.0", &m.routers[1].api());
    conf["prevResult"] = pods[1].result.clone();
    invoke(
        node,
        &Call::new("CHECK", "cid-dual-1", &netns_path(&pods[1].ns)),
        &conf,
    )
    .ok();
    let held = allocations(&m.routers[1]);
    let mine = held
        .iter()
        .find(|a| a.container_id == "cid-dual-1")
        .unwrap();
    assert_eq!(
        mine.ipv6.as_ref().map(|s| s.address.clone()),
        Some(pods[1].v6.to_string())
    );
    let conf = net_conf("1.0.0", &m.routers[1].api());
    invoke(
        node,
        &Call::new("DEL", "cid-dual-1", &netns_path(&pods[1].ns)),
        &conf,
    )
    .ok();
    assert!(
        allocations(&m.routers[1])
            .iter()
            .all(|a| a.container_id != "cid-dual-1"),
        "DEL left an address behind"
    );
    // No host route to it left (the node's `unreachable` blocks stay: a
    // block may start at the pod's address, so match the route's own).
    let routes6 = node.ok(&["ip", "-6", "route", "show", "proto", "87"]);
    let v6 = pods[1].v6.to_string();
    assert!(
        !routes6
            .lines()
            .any(|l| l.split_whitespace().next() == Some(v6.as_str())),
        "{routes6}"
    );
    // A second ADD of the same attachment after DEL works again.
    let again = plug(&m, 1, "cid-dual-1b");
    assert!(ping(
        &pods[0].ns,
        IpAddr::V6(again.v6),
        Duration::from_secs(20)
    ));
}

/// The IPv6 ring's allocations on `r` as `weft status` lists them:
/// (address, kind), kind `node`, `pod` or `held`.
fn ipam6_holders(r: &Router) -> Vec<(String, String)> {
    r.status().unwrap()["ipam6"]["allocations"]
        .as_array()
        .expect("ipam6.allocations")
        .iter()
        .map(|a| {
            (
                a["address"].as_str().unwrap().to_string(),
                a["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Stops router `i` (SIGTERM), runs `meanwhile`, starts it again and waits
/// until its IPv6 ring is ready and it is meshed again.
fn restart(m: &mut Mesh, i: usize, meanwhile: impl FnOnce(&Router)) {
    let peers = m.routers.len() - 1;
    let r = &mut m.routers[i];
    assert!(
        r.terminate(Duration::from_secs(10)).is_some(),
        "{}",
        r.log_tail()
    );
    meanwhile(r);
    r.start();
    let back = wait_until(Duration::from_secs(30), || {
        ipam6_ready(r) && r.established_peers() == peers
    });
    assert!(back, "{} did not come back:\n{}", r.name, r.log_tail());
}

#[test]
fn a_dual_stack_pod_keeps_its_ipv6_address_across_router_restarts_even_without_the_ipv6_state() {
    if !require_root("dual_stack_pod_survives_router_restarts") {
        return;
    }
    let mut m = dual_stack_mesh(2, |_| {});
    let survivor = plug(&m, 0, "cid-survivor");
    let peer = plug(&m, 1, "cid-peer");
    let reachable =
        |from: &DualPod, to: &DualPod| ping(&from.ns, IpAddr::V6(to.v6), Duration::from_secs(20));
    assert!(reachable(&survivor, &peer) && reachable(&peer, &survivor));

    // A plain restart: state kept, the pod's /128 route never taken down.
    restart(&mut m, 0, |_| {});
    assert!(reachable(&peer, &survivor), "after a restart");
    assert!(reachable(&survivor, &peer), "after a restart");
    assert!(
        ipam6_holders(&m.routers[0]).contains(&(survivor.v6.to_string(), "pod".into())),
        "{:?}",
        ipam6_holders(&m.routers[0])
    );

    // The IPv6 ring's state lost (its files deleted while the router is
    // down): the router finds the pod's /128 route in the kernel at start
    // and holds its address, so it is never handed out again.
    restart(&mut m, 0, |r| {
        let state = r.dir.join("state");
        let mut removed = 0;
        for entry in std::fs::read_dir(&state).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with("ipam6-") {
                std::fs::remove_file(entry.path()).unwrap();
                removed += 1;
            }
        }
        assert!(removed > 0, "no ipam6-* files in {}", state.display());
    });
    let holders = ipam6_holders(&m.routers[0]);
    assert!(
        holders.contains(&(survivor.v6.to_string(), "held".into())),
        "the pod's IPv6 address is not held after the state loss: {holders:?}"
    );
    assert!(reachable(&peer, &survivor), "after the state loss");
    assert!(reachable(&survivor, &peer), "after the state loss");

    // DEL frees both addresses (the IPv6 one by the address the plugin
    // read off the veth's /128 route), and leaves nothing behind.
    let node = &m.cluster.nodes[0].ns;
    let conf = net_conf("1.0.0", &m.routers[0].api());
    invoke(
        node,
        &Call::new("DEL", "cid-survivor", &netns_path(&survivor.ns)),
        &conf,
    )
    .ok();
    let holders = ipam6_holders(&m.routers[0]);
    assert!(
        holders.iter().all(|(_, kind)| kind == "node"),
        "left in the IPv6 ring: {holders:?}"
    );
    assert!(
        allocations(&m.routers[0]).is_empty(),
        "{:?}",
        allocations(&m.routers[0])
    );
    assert!(pod_routes(node).is_empty(), "{:?}", pod_routes(node));
    assert!(pod_routes6(node).is_empty(), "{:?}", pod_routes6(node));
    assert!(weft_veths(node).is_empty(), "{:?}", weft_veths(node));
}
