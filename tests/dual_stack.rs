//! Dual-stack pods (issue 19), the first step: the IPv6 pod range on its own
//! ring. Three routers given `--ipalloc-range` for IPv6 split it among
//! themselves on a second ring (its own genesis, state files and gossip
//! channel), keep their shares across a restart, and IPv4 pods keep
//! working; a router without an IPv6 range meshes with dual-stack ones and
//! keeps IPv4; IPv6 forwarding is reported per router (off, with what to
//! set, where /proc/sys is read-only). IPv6 pod addresses through the CNI plugin and IPv6 in the
//! data plane are later steps (docs/ARCHITECTURE.md "Dual-stack pods").
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");
const RANGE6: &str = "fd00:32::/112";

fn ipam6(r: &Router) -> serde_json::Value {
    r.status().expect("status")["ipam6"].clone()
}

/// The router's IPv6 ranges as inclusive `u128` bounds.
fn owned6(r: &Router) -> Vec<(u128, u128)> {
    ipam6(r)["owned_ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let start: Ipv6Addr = x["start"].as_str().unwrap().parse().unwrap();
            let end: Ipv6Addr = x["end"].as_str().unwrap().parse().unwrap();
            (u128::from(start), u128::from(end))
        })
        .collect()
}

fn ping_matrix(cluster: &Cluster, rs: &[Router]) {
    for a in 0..cluster.pods.len() {
        for b in 0..cluster.pods.len() {
            if a != b {
                let (from, to) = (&cluster.pods[a], cluster.pods[b].addr);
                assert!(
                    from.wait_ping(to, Duration::from_secs(20)),
                    "IPv4: pod on n{a} cannot reach the pod on n{b}\n{}\n{}",
                    rs[a].log_tail(),
                    rs[b].log_tail()
                );
            }
        }
    }
}

#[test]
fn three_dual_stack_routers_split_the_ipv6_range_on_its_own_ring_and_keep_it_across_a_restart() {
    if !require_root("three_dual_stack_routers_split_the_ipv6_range") {
        return;
    }
    let mut cluster = Cluster::new(3);
    let mut rs = start_routers(
        Path::new(BIN),
        &mut cluster,
        3,
        |i| (0..3).filter(|j| *j != i).collect(),
        |_, r| r.args.extend(["--ipalloc-range".into(), RANGE6.into()]),
    );
    let ready = wait_until(Duration::from_secs(30), || {
        rs.iter().all(|r| ipam6(r)["state"] == "ready")
    });
    let states: Vec<serde_json::Value> = rs.iter().map(ipam6).collect();
    assert!(ready, "the IPv6 ring is not ready everywhere: {states:#?}");
    for (r, s) in rs.iter().zip(&states) {
        assert_eq!(s["range"], RANGE6, "{}", r.name);
        assert_eq!(s["ring_peers"], 3, "{}: {s:#}", r.name);
        let status = r.status().unwrap();
        assert_ne!(
            s["genesis"], status["ipam"]["genesis"],
            "{}: the IPv6 ring is a ring of its own",
            r.name
        );
        assert_eq!(status["ipam"]["range"], "10.32.0.0/12", "{}", r.name);
        assert!(r.dir.join("state/ipam6-ring").exists(), "{}", r.name);
    }
    let genesis: std::collections::BTreeSet<String> = states
        .iter()
        .map(|s| s["genesis"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(genesis.len(), 1, "one IPv6 ring: {genesis:?}");
    // The shares are disjoint and cover the range exactly.
    let mut all: Vec<(u128, u128)> = rs.iter().flat_map(owned6).collect();
    all.sort();
    let base = u128::from("fd00:32::".parse::<Ipv6Addr>().unwrap());
    assert_eq!(all.first().unwrap().0, base, "{all:x?}");
    assert_eq!(all.last().unwrap().1, base + 0xffff, "{all:x?}");
    for pair in all.windows(2) {
        assert_eq!(pair[0].1 + 1, pair[1].0, "gap or overlap: {all:x?}");
    }
    // Each router took its node address from its own share of each range.
    for r in &rs {
        let s = ipam6(r);
        assert_eq!(s["allocated"], 1, "{}: {s:#}", r.name);
        let node: Ipv6Addr = s["allocations"][0]["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            owned6(r)
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&u128::from(node))),
            "{}: node address {node} outside its shares",
            r.name
        );
    }
    ping_matrix(&cluster, &rs);
    // Persisted: a restarted router comes back with the same IPv6 shares.
    let before = owned6(&rs[1]);
    rs[1].terminate(Duration::from_secs(10));
    rs[1].start();
    let back = wait_until(Duration::from_secs(20), || {
        ipam6(&rs[1])["state"] == "ready"
    });
    assert!(back, "{:#}", ipam6(&rs[1]));
    assert_eq!(owned6(&rs[1]), before);
    ping_matrix(&cluster, &rs);
}

#[test]
fn a_router_without_an_ipv6_range_meshes_with_dual_stack_ones_and_keeps_ipv4() {
    if !require_root("a_router_without_an_ipv6_range_meshes_with_dual_stack_ones") {
        return;
    }
    let mut cluster = Cluster::new(3);
    let rs = start_routers(
        Path::new(BIN),
        &mut cluster,
        3,
        |i| (0..3).filter(|j| *j != i).collect(),
        |i, r| {
            if i < 2 {
                r.args.extend(["--ipalloc-range".into(), RANGE6.into()]);
            }
            if i == 1 {
                read_only_proc_sys(r);
            }
        },
    );
    let ready = wait_until(Duration::from_secs(30), || {
        rs[..2].iter().all(|r| ipam6(r)["state"] == "ready")
            && rs.iter().all(|r| r.established_peers() == 2)
    });
    assert!(
        ready,
        "{:#}\n{:#}\n{}",
        ipam6(&rs[0]),
        ipam6(&rs[1]),
        rs[2].log_tail()
    );
    // IPv6 forwarding: turned on where /proc/sys is writable, reported off
    // (with what to set) where it is read-only, as in the DaemonSet's pod;
    // not reported without IPv6 pods.
    let forwarding6 = |r: &Router| r.status().unwrap()["dataplane"]["forwarding6"].clone();
    assert_eq!(forwarding6(&rs[0]), "on");
    let off = forwarding6(&rs[1]);
    assert!(
        off.as_str()
            .is_some_and(|s| s.starts_with("off (") && s.contains("Read-only")),
        "{off}"
    );
    assert!(
        rs[1]
            .log_tail()
            .contains("set net.ipv6.conf.all.forwarding=1 on the node"),
        "{}",
        rs[1].log_tail()
    );
    assert!(forwarding6(&rs[2]).is_null());
    let status = rs[2].status().unwrap();
    assert!(status.get("ipam6").is_none(), "{status:#}");
    assert_eq!(status["ipam"]["state"], "ready");
    ping_matrix(&cluster, &rs);
    // The IPv4-only router ignores the IPv6 ring's messages without
    // counting them as bad gossip.
    assert_eq!(
        status["handshakes"]["gossip_refused"].as_u64().unwrap_or(0),
        0,
        "{status:#}"
    );
}

/// Runs `r` with /proc/sys read-only, as the container runtime mounts it in
/// the DaemonSet's pod: a private mount namespace, /proc/sys bound onto
/// itself read-only, then the router exec'd (same PID, stopped by it).
fn read_only_proc_sys(r: &mut Router) {
    r.wrapper = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$0\" \"$@\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
}

/// What weft made for IPv6 on `node`'s weft0: its IPv6 addresses and the
/// IPv6 routes tagged with weft's protocol, as `ip` prints them.
fn v6host_weft_ipv6(node: &Netns) -> (String, String) {
    (
        node.ok(&["ip", "-6", "-o", "addr", "show", "dev", "weft0"]),
        node.ok(&["ip", "-6", "route", "show", "proto", "87"]),
    )
}

#[test]
fn a_router_restarted_without_its_ipv6_range_removes_the_ipv6_routes_address_and_table() {
    if !require_root("a_router_restarted_without_its_ipv6_range_removes_its_ipv6") {
        return;
    }
    let mut cluster = Cluster::new(2);
    let mut rs = start_routers(
        Path::new(BIN),
        &mut cluster,
        2,
        |i| vec![1 - i],
        |_, r| r.args.extend(["--ipalloc-range".into(), RANGE6.into()]),
    );
    let ready = wait_until(Duration::from_secs(30), || {
        rs.iter().all(|r| ipam6(r)["state"] == "ready")
    });
    assert!(ready, "{:#}", ipam6(&rs[0]));
    let node = &cluster.nodes[0].ns;
    let made = |(addr, routes): &(String, String)| {
        addr.contains("inet6 fd00:32::")
            && routes.contains("unreachable fd00:32::")
            && routes
                .lines()
                .any(|l| l.starts_with("fd00:32::/112 dev weft0"))
    };
    let full = wait_until(Duration::from_secs(10), || made(&v6host_weft_ipv6(node)));
    assert!(full, "{:?}", v6host_weft_ipv6(node));
    let table = |ns: &Netns| {
        ns.exec(&["nft", "list", "table", "ip6", "weft"])
            .status
            .success()
    };
    assert!(table(node));
    // Stopped, the router leaves them (weft0 is persistent, as over any
    // restart): what the next start must clean.
    assert!(rs[0].terminate(Duration::from_secs(10)).is_some());
    assert!(
        made(&v6host_weft_ipv6(node)),
        "{:?}",
        v6host_weft_ipv6(node)
    );
    let at = rs[0].args.iter().position(|a| a == RANGE6).unwrap();
    rs[0].args.drain(at - 1..=at);
    rs[0].start();
    let back = wait_until(Duration::from_secs(20), || {
        rs[0]
            .status()
            .is_some_and(|s| s["ipam"]["state"] == "ready")
    });
    assert!(back, "{}", rs[0].log_tail());
    assert!(rs[0].status().unwrap().get("ipam6").is_none());
    let cleaned = wait_until(Duration::from_secs(10), || {
        let (addr, routes) = v6host_weft_ipv6(node);
        !addr.contains("fd00:32") && !routes.contains("fd00:32")
    });
    assert!(cleaned, "left over: {:?}", v6host_weft_ipv6(node));
    assert!(!table(node), "table ip6 weft left over");
    // IPv4 is untouched: the node's /32 and pods on both nodes.
    let addr4 = node.ok(&["ip", "-4", "-o", "addr", "show", "dev", "weft0"]);
    assert!(addr4.contains("inet 10."), "{addr4}");
    ping_matrix(&cluster, &rs);
}

/// The value of the sample `line_start` in a scrape, 0 when absent.
fn v6host_sample(scrape: &str, line_start: &str) -> u64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn spoofed_sources_are_dropped_by_the_receiving_router_and_counted_by_family() {
    if !require_root("spoofed_sources_are_counted_by_family") {
        return;
    }
    let mut cluster = Cluster::new(2);
    let underlay1 = cluster.nodes[1].underlay;
    let rs = start_routers(
        Path::new(BIN),
        &mut cluster,
        2,
        |i| vec![1 - i],
        |i, r| {
            r.args.extend(["--ipalloc-range".into(), RANGE6.into()]);
            if i == 1 {
                r.args
                    .extend(["--metrics-addr".into(), format!("{underlay1}:6782")]);
            }
        },
    );
    let ready = wait_until(Duration::from_secs(30), || {
        rs.iter().all(|r| ipam6(r)["state"] == "ready")
    });
    assert!(ready, "{:#}", ipam6(&rs[1]));
    ping_matrix(&cluster, &rs);
    // Node 0 sends into weft0 from addresses router 1 owns (its own
    // output, which the anti-spoofing table does not see): router 0 carries
    // them as its own, router 1 finds the sources outside router 0's ranges.
    let node0 = &cluster.nodes[0].ns;
    let stolen4 = std::net::Ipv4Addr::from(u32::from(rs[1].range_start()) + 100);
    let stolen6 = Ipv6Addr::from(owned6(&rs[1])[0].0 + 100);
    let target6: Ipv6Addr = ipam6(&rs[1])["allocations"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    node0.ip(&["addr", "add", &format!("{stolen4}/32"), "dev", "lo"]);
    node0.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{stolen6}/128"),
        "dev",
        "lo",
        "nodad",
    ]);
    let by_family = |family: &str| {
        rs[1].status().unwrap()["dataplane"][format!("dropped{family}")]["spoofed_source"]
            .as_u64()
            .unwrap_or(0)
    };
    let (before4, before6) = (by_family("4"), by_family("6"));
    let total_before = rs[1].dropped("spoofed_source");
    let ping = |from: String, to: String, count: &str| {
        node0.exec(&[
            "ping", "-c", count, "-i", "0.2", "-W", "1", "-I", &from, &to,
        ]);
    };
    ping(stolen6.to_string(), target6.to_string(), "5");
    let counted6 = wait_until(Duration::from_secs(5), || by_family("6") >= before6 + 5);
    assert!(counted6, "{:#}", rs[1].status().unwrap()["dataplane"]);
    assert_eq!(by_family("4"), before4, "IPv6 drops counted as IPv4");
    ping(stolen4.to_string(), cluster.pods[1].addr.to_string(), "3");
    let counted4 = wait_until(Duration::from_secs(5), || by_family("4") >= before4 + 3);
    assert!(counted4, "{:#}", rs[1].status().unwrap()["dataplane"]);
    let (after4, after6) = (by_family("4"), by_family("6"));
    // The total still counts every one of them.
    assert!(
        rs[1].dropped("spoofed_source") - total_before >= (after4 - before4) + (after6 - before6),
        "{:#}",
        rs[1].status().unwrap()["dataplane"]
    );
    let text = scrape_metrics(&cluster.nodes[1].ns.name, underlay1);
    let sample = |family: &str| {
        v6host_sample(
            &text,
            &format!(
                "weft_family_dropped_packets_total{{family=\"{family}\",reason=\"spoofed_source\"}}"
            ),
        )
    };
    assert!(sample("ipv6") >= after6, "{text}");
    assert!(sample("ipv4") >= after4, "{text}");
    assert!(
        v6host_sample(
            &text,
            "weft_dropped_packets_total{reason=\"spoofed_source\"}"
        ) >= sample("ipv4") + sample("ipv6"),
        "{text}"
    );
    let human =
        cluster.nodes[1]
            .ns
            .ok(&[BIN, "status", "--api", &rs[1].api().display().to_string()]);
    assert!(
        human.contains("dropped IPv6: ") && human.contains("spoofed_source="),
        "{human}"
    );
}
