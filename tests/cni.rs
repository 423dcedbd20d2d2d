#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]
//! The CNI plugin (`weft-cni`, installed as `weft`): driven directly with the
//! CNI environment in network namespaces, then by real container runtimes
//! (podman with its CNI backend, containerd's `ctr`), against real `weft
//! router` processes. A few plumbing tests use a fake router API where they
//! must control its answers (not ready, down).

mod support;

use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use support::cni::*;
use support::cni_mesh::*;
use support::*;

/// A node namespace with a fake router API and an address to ping.
struct Bench {
    node: Netns,
    fake: FakeRouter,
    dir: TempDir,
}

fn bench() -> Bench {
    let dir = TempDir::new("cni");
    let node = Netns::new("node");
    // Something for pods to ping on the host side: the node's own address.
    node.ip(&["link", "add", "d0", "type", "bridge"]);
    node.ip(&["addr", "add", "192.0.2.1/32", "dev", "d0"]);
    node.ip(&["link", "set", "d0", "up"]);
    let fake = FakeRouter::start(&dir.path);
    Bench { node, fake, dir }
}

fn pod_ping(pod: &Netns, to: &str) -> bool {
    pod.exec(&["ping", "-c", "1", "-W", "2", to])
        .status
        .success()
}

#[test]
fn add_check_del_work_in_every_spec_version_and_repeat_safely() {
    if !require_root("cni_versions") {
        return;
    }
    let b = bench();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let pod = Netns::new(&format!("pod{i}"));
        let cid = format!("ctr-{i}");
        let conf = net_conf(version, &b.fake.socket);
        let add = Call::new("ADD", &cid, &netns_path(&pod));
        let result = invoke(&b.node, &add, &conf).ok();
        assert_eq!(result["cniVersion"], *version);
        let ip = &result["ips"][0];
        assert_eq!(ip["address"], format!("10.32.0.{}/32", 10 + i));
        assert_eq!(ip["gateway"], "169.254.1.1");
        assert_eq!(ip["interface"], 1);
        assert_eq!(ip.get("version").is_some(), version.starts_with('0'));
        assert_eq!(result["interfaces"][1]["name"], "eth0");
        assert_eq!(result["interfaces"][1]["sandbox"], netns_path(&pod));
        assert_eq!(
            result["interfaces"][1].get("mtu").is_some(),
            *version == "1.1.0"
        );
        assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");

        // The pod's side as DESIGN.md draws it.
        let addr = pod.ok(&["ip", "-o", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains(&format!("10.32.0.{}/32", 10 + i)), "{addr}");
        let routes = pod.ok(&["ip", "route"]);
        assert!(
            routes.contains("default via 169.254.1.1 dev eth0") && routes.contains("onlink"),
            "{routes}"
        );
        let neigh = pod.ok(&["ip", "neigh", "show", "169.254.1.1"]);
        let host_mac = result["interfaces"][0]["mac"].as_str().unwrap();
        assert!(
            neigh.contains(host_mac) && neigh.contains("PERMANENT"),
            "{neigh}"
        );
        let mtu = pod.ok(&["cat", "/sys/class/net/eth0/mtu"]);
        // ip netns exec remounts /sys for the pod, so this is the pod's eth0.
        assert_eq!(mtu.trim(), "1420");
        // The host's side: veth up with proxy ARP, a proto-87 /32 route.
        let host = result["interfaces"][0]["name"].as_str().unwrap();
        assert_eq!(weft_veths(&b.node), vec![host.to_string()]);
        let routes = pod_routes(&b.node);
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert!(routes[0].starts_with(&format!("10.32.0.{} dev {host}", 10 + i)));
        let proxy = b
            .node
            .ok(&["cat", &format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp")]);
        assert_eq!(proxy.trim(), "1");
        let forwarding = b
            .node
            .ok(&["cat", &format!("/proc/sys/net/ipv4/conf/{host}/forwarding")]);
        assert_eq!(forwarding.trim(), "1", "the plugin left forwarding off");
        assert!(pod_ping(&pod, "192.0.2.1"), "pod cannot reach its node");

        // A repeated ADD answers the same result and still works.
        let again = invoke(&b.node, &add, &conf).ok();
        assert_eq!(again, result, "repeated ADD changed the result");
        assert!(pod_ping(&pod, "192.0.2.1"));

        if *version >= "0.4.0" {
            let mut with_prev = conf.clone();
            with_prev["prevResult"] = result.clone();
            let check = Call::new("CHECK", &cid, &netns_path(&pod));
            invoke(&b.node, &check, &with_prev).ok();
            // CHECK notices a missing route.
            pod.ok(&["ip", "route", "del", "default"]);
            let e = invoke(&b.node, &check, &with_prev).err(104);
            assert!(e["msg"].as_str().unwrap().contains("default route"), "{e}");
        } else {
            let check = Call::new("CHECK", &cid, &netns_path(&pod));
            invoke(&b.node, &check, &conf).err(1);
        }

        let del = Call::new("DEL", &cid, &netns_path(&pod));
        invoke(&b.node, &del, &conf).ok();
        invoke(&b.node, &del, &conf).ok();
        assert!(weft_veths(&b.node).is_empty());
        assert!(pod_routes(&b.node).is_empty());
        let links = pod.ok(&["ip", "-o", "link"]);
        assert!(!links.contains("eth0"), "{links}");
        assert_eq!(b.fake.allocated(), 0);
    }
}

#[test]
fn version_status_and_errors_answer_in_cni_json_with_distinct_codes() {
    if !require_root("cni_errors") {
        return;
    }
    let b = bench();
    let pod = Netns::new("pod");
    let conf = net_conf("1.1.0", &b.fake.socket);

    let v = invoke(
        &b.node,
        &Call::new("VERSION", "", ""),
        &json!({"cniVersion": "0.4.0"}),
    )
    .ok();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    invoke(&b.node, &Call::new("STATUS", "", ""), &conf).ok();
    b.fake.state.lock().unwrap().ready = false;
    let e = invoke(&b.node, &Call::new("STATUS", "", ""), &conf).err(50);
    assert!(e["msg"].as_str().unwrap().contains("ring not known"), "{e}");
    // Not ready: ADD says try again later at once, and leaves nothing.
    let add = Call::new("ADD", "c1", &netns_path(&pod));
    invoke(&b.node, &add, &conf).err(11);
    assert!(weft_veths(&b.node).is_empty());
    b.fake.state.lock().unwrap().ready = true;

    // Router down: 11 for ADD, 50 for STATUS.
    let down = net_conf("1.0.0", &b.dir.path.join("nobody.sock"));
    let e = invoke(&b.node, &add, &down).err(11);
    assert!(e["msg"].as_str().unwrap().contains("weft router"), "{e}");
    invoke(
        &b.node,
        &Call::new("STATUS", "", ""),
        &net_conf("1.1.0", &b.dir.path.join("nobody.sock")),
    )
    .err(50);

    // Bad config, undecodable config, unsupported version, missing netns,
    // missing environment: distinct codes.
    let mut bad = conf.clone();
    bad["mtu"] = json!(12);
    let e = invoke(&b.node, &add, &bad).err(7);
    assert!(e["msg"].as_str().unwrap().contains("mtu"), "{e}");
    let mut bad = conf.clone();
    bad["cniVersion"] = json!("0.2.0");
    invoke(&b.node, &add, &bad).err(1);
    invoke(&b.node, &add, &json!("not a config")).err(6);
    let gone = Call::new("ADD", "c1", "/run/netns/weft-no-such-namespace");
    let e = invoke(&b.node, &gone, &conf).err(3);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("weft-no-such-namespace")
    );
    let mut no_id = add.clone();
    no_id.container_id.clear();
    invoke(&b.node, &no_id, &conf).err(4);
    assert_eq!(b.fake.allocated(), 0, "a refused ADD allocated");
    // STATUS and GC need 1.1.0.
    invoke(
        &b.node,
        &Call::new("STATUS", "", ""),
        &net_conf("1.0.0", &b.fake.socket),
    )
    .err(1);

    // DEL with an empty CNI_NETNS (containerd after the sandbox is gone),
    // and of something never added, succeeds.
    invoke(&b.node, &add, &conf).ok();
    invoke(&b.node, &Call::new("DEL", "c1", ""), &conf).ok();
    assert!(weft_veths(&b.node).is_empty());
    assert_eq!(b.fake.allocated(), 0);
    invoke(&b.node, &Call::new("DEL", "never", ""), &conf).ok();
}

#[test]
fn an_add_that_fails_halfway_leaves_no_veth_route_or_allocation() {
    if !require_root("cni_failed_add") {
        return;
    }
    let b = bench();
    let conf = net_conf("1.0.0", &b.fake.socket);
    // Fails after the veth exists (fault injected in the test-only build).
    let pod = Netns::new("pod");
    let mut add = Call::new("ADD", "c1", &netns_path(&pod));
    add.extra_env
        .push(("WEFT_CNI_FAULT".into(), "after-veth".into()));
    add.faulty = true;
    let e = invoke(&b.node, &add, &conf).err(103);
    assert!(e["msg"].as_str().unwrap().contains("injected"), "{e}");
    // Fails at the veth: the pod already has an eth0.
    let taken = Netns::new("taken");
    taken.ip(&["link", "add", "eth0", "type", "bridge"]);
    let add = Call::new("ADD", "c2", &netns_path(&taken));
    let e = invoke(&b.node, &add, &conf).err(103);
    assert!(e["msg"].as_str().unwrap().contains("veth"), "{e}");
    for ns in [&pod, &taken] {
        let links = ns.ok(&["ip", "-o", "link"]);
        assert!(
            !links.contains("@"),
            "a veth end is left in the pod: {links}"
        );
    }
    assert!(weft_veths(&b.node).is_empty(), "{:?}", weft_veths(&b.node));
    assert!(pod_routes(&b.node).is_empty());
    assert_eq!(b.fake.allocated(), 0, "the allocation was not released");
    let released = b
        .fake
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|r| r["op"] == "release")
        .count();
    assert_eq!(released, 2);

    // The shipped plugin has no fault injection: the same ADD succeeds.
    let shipped = Netns::new("shipped");
    let mut add = Call::new("ADD", "c3", &netns_path(&shipped));
    add.extra_env
        .push(("WEFT_CNI_FAULT".into(), "after-veth".into()));
    invoke(&b.node, &add, &conf).ok();
    invoke(
        &b.node,
        &Call::new("DEL", "c3", &netns_path(&shipped)),
        &conf,
    )
    .ok();
    assert!(weft_veths(&b.node).is_empty());
}

#[test]
fn gc_releases_attachments_missing_from_valid_attachments() {
    if !require_root("cni_gc") {
        return;
    }
    let b = bench();
    let conf = net_conf("1.1.0", &b.fake.socket);
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("p{i}"))).collect();
    for (i, pod) in pods.iter().enumerate() {
        invoke(
            &b.node,
            &Call::new("ADD", &format!("c{i}"), &netns_path(pod)),
            &conf,
        )
        .ok();
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    invoke(&b.node, &Call::new("GC", "", ""), &gc).ok();
    assert_eq!(b.fake.allocated(), 1);
    assert_eq!(weft_veths(&b.node).len(), 1, "GC left the veths of c0, c2");
    assert!(pod_ping(&pods[1], "192.0.2.1"), "GC broke the kept pod");
    // Without the list GC refuses rather than releasing everything.
    invoke(&b.node, &Call::new("GC", "", ""), &conf).err(7);
    assert_eq!(b.fake.allocated(), 1);
}

fn address_of(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .parse()
        .unwrap()
}

/// An IPv4 devconf value in node `ns` (`ip_forward` or `conf/IFACE/KEY`).
fn ipv4_setting(ns: &Netns, key: &str) -> String {
    ns.ok(&["cat", &format!("/proc/sys/net/ipv4/{key}")])
        .trim()
        .to_string()
}

/// Nodes start as fresh hosts, with IPv4 forwarding off everywhere
/// (support::Cluster): the routers and the plugin turn on exactly what the
/// data path needs, per interface, and `ip_forward` stays 0.
#[test]
fn pods_plugged_by_the_plugin_on_two_nodes_reach_each_other_through_the_mesh() {
    if !require_root("cni_mesh") {
        return;
    }
    let m = mesh(2);
    for node in &m.cluster.nodes {
        assert_eq!(ipv4_setting(&node.ns, "ip_forward"), "0");
        assert_eq!(ipv4_setting(&node.ns, "conf/default/forwarding"), "0");
    }
    let mut pods = Vec::new();
    for i in 0..2 {
        let ns = Netns::new(&format!("pod{i}"));
        let add = Call::new("ADD", &format!("pod-{i}"), &netns_path(&ns));
        let conf = net_conf("1.0.0", &m.routers[i].api());
        let result = invoke(&m.cluster.nodes[i].ns, &add, &conf).ok();
        let addr = address_of(&result);
        assert_eq!(result["interfaces"][1]["name"], "eth0");
        // The router knows it, and the repeated ADD agrees.
        let again = invoke(&m.cluster.nodes[i].ns, &add, &conf).ok();
        assert_eq!(again, result);
        let held = allocations(&m.routers[i]);
        assert!(
            held.iter()
                .any(|a| a.container_id == format!("pod-{i}") && a.address == addr.to_string()),
            "{held:?}"
        );
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = result;
        invoke(
            &m.cluster.nodes[i].ns,
            &Call::new("CHECK", &format!("pod-{i}"), &netns_path(&ns)),
            &with_prev,
        )
        .ok();
        pods.push(Pod { ns, addr, node: i });
    }
    assert_ne!(pods[0].addr, pods[1].addr);
    assert!(
        pods[0].wait_ping(pods[1].addr, Duration::from_secs(10)),
        "pod on n0 cannot reach the pod on n1:\n{}",
        m.routers[0].log_tail()
    );
    assert!(pods[1].ping(pods[0].addr, 3), "n1 → n0 lost packets");
    assert!(pods[0].ping(pods[1].addr, 3), "n0 → n1 lost packets");
    let t = transfer(&pods[0], &pods[1], 10 << 20, None);
    assert_eq!(t.received_sum, t.sent_sum);
    for (i, node) in m.cluster.nodes.iter().enumerate() {
        let veths = weft_veths(&node.ns);
        assert_eq!(veths.len(), 1, "{veths:?}");
        for iface in ["weft0", "eth0", veths[0].as_str()] {
            assert_eq!(
                ipv4_setting(&node.ns, &format!("conf/{iface}/forwarding")),
                "1",
                "forwarding off on {iface} of n{i}"
            );
        }
        assert_eq!(ipv4_setting(&node.ns, "ip_forward"), "0", "n{i}");
        assert_eq!(ipv4_setting(&node.ns, "conf/lo/forwarding"), "0", "n{i}");
        let status = m.routers[i].status().unwrap();
        let forwarding = status["dataplane"]["forwarding"].as_str().unwrap();
        assert!(
            forwarding.starts_with("on (weft0, eth0"),
            "n{i}: {forwarding}"
        );
        // No IPv6 link-local address (nor its chatter) on the TUN.
        let v6 = node.ns.ok(&["ip", "-6", "addr", "show", "dev", "weft0"]);
        assert!(v6.trim().is_empty(), "n{i}: {v6}");
    }
    // Something turns forwarding off (a sysctl reload): the router turns it
    // back on within its 10 s re-check, and pods reach each other again.
    let node0 = &m.cluster.nodes[0].ns;
    node0.sysctl("net.ipv4.conf.weft0.forwarding", "0");
    node0.sysctl("net.ipv4.conf.eth0.forwarding", "0");
    assert!(
        !pods[1].ping(pods[0].addr, 1),
        "forwarded with forwarding off"
    );
    assert!(
        wait_until(Duration::from_secs(15), || {
            ipv4_setting(node0, "conf/weft0/forwarding") == "1"
                && ipv4_setting(node0, "conf/eth0/forwarding") == "1"
        }),
        "the router did not turn forwarding back on:\n{}",
        m.routers[0].log_tail()
    );
    assert!(pods[1].ping(pods[0].addr, 3), "n1 → n0 after the re-check");

    for (i, pod) in pods.iter().enumerate() {
        let conf = net_conf("1.0.0", &m.routers[i].api());
        let del = Call::new("DEL", &format!("pod-{i}"), &netns_path(&pod.ns));
        invoke(&m.cluster.nodes[i].ns, &del, &conf).ok();
        invoke(&m.cluster.nodes[i].ns, &del, &conf).ok();
        assert!(allocations(&m.routers[i]).is_empty());
        assert!(weft_veths(&m.cluster.nodes[i].ns).is_empty());
        assert!(pod_routes(&m.cluster.nodes[i].ns).is_empty());
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn two_hundred_add_del_cycles_leave_no_veth_route_or_allocation() {
    if !require_root("cni_cycles") {
        return;
    }
    let m = mesh(1);
    let node = &m.cluster.nodes[0].ns;
    let conf = net_conf("1.0.0", &m.routers[0].api());
    let pod = Netns::new("pod");
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let id = format!("cycle-{i}");
        let start = Instant::now();
        invoke(node, &Call::new("ADD", &id, &netns_path(&pod)), &conf).ok();
        adds.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        invoke(node, &Call::new("DEL", &id, &netns_path(&pod)), &conf).ok();
        dels.push(start.elapsed().as_secs_f64() * 1e3);
    }
    assert!(weft_veths(node).is_empty(), "{:?}", weft_veths(node));
    assert!(pod_routes(node).is_empty(), "{:?}", pod_routes(node));
    assert!(allocations(&m.routers[0]).is_empty());
    let links = pod.ok(&["ip", "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "the pod keeps only lo: {links}");
    let status = m.routers[0].status().unwrap();
    assert_eq!(
        status["ipam"]["allocated"].as_u64(),
        Some(1),
        "only the router's own address"
    );
    for v in [&mut adds, &mut dels] {
        v.sort_by(f64::total_cmp);
    }
    eprintln!(
        "200 cycles: ADD p50 {:.1} ms p99 {:.1} ms, DEL p50 {:.1} ms p99 {:.1} ms",
        percentile(&adds, 0.5),
        percentile(&adds, 0.99),
        percentile(&dels, 0.5),
        percentile(&dels, 0.99)
    );
}

#[test]
fn podman_containers_on_two_nodes_get_weft_addresses_reach_each_other_and_release_them() {
    if !require_root("cni_podman") || !require_tools("cni_podman", &["podman", "runc", "nsenter"]) {
        return;
    }
    let m = mesh(2);
    let dir = TempDir::new("podman");
    let rootfs = busybox_rootfs_tar(&dir.path);
    let podmans: Vec<Podman> = (0..2)
        .map(|i| {
            Podman::new(
                &dir.path.join(format!("n{i}")),
                &m.cluster.nodes[i].ns,
                &m.routers[i].api(),
                &rootfs,
            )
        })
        .collect();
    let mut addrs = Vec::new();
    for (i, p) in podmans.iter().enumerate() {
        p.ok(&[
            "run",
            "-d",
            "--name",
            &format!("c{i}"),
            "--network",
            "weft",
            "--cap-add",
            "NET_RAW",
            "weft-busybox",
            "sleep",
            "300",
        ]);
        let addr = p.address(&format!("c{i}"));
        let held = allocations(&m.routers[i]);
        assert!(
            held.iter().any(|a| a.address == addr.to_string()),
            "container c{i} has {addr}, the router holds {held:?}"
        );
        addrs.push(addr);
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let target = addrs[to].to_string();
        let ok = wait_until(Duration::from_secs(10), || {
            podmans[from]
                .run(&[
                    "exec",
                    &format!("c{from}"),
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    &target,
                ])
                .status
                .success()
        });
        assert!(ok, "c{from} cannot reach c{to} at {target}");
        podmans[from].ok(&[
            "exec",
            &format!("c{from}"),
            "ping",
            "-c",
            "3",
            "-W",
            "2",
            &target,
        ]);
    }
    // A short-lived --rm container works too, and leaves nothing.
    let out = podmans[1].ok(&[
        "run",
        "--rm",
        "--network",
        "weft",
        "--cap-add",
        "NET_RAW",
        "weft-busybox",
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        &addrs[0].to_string(),
    ]);
    assert!(out.contains("2 packets received"), "{out}");
    for (i, p) in podmans.iter().enumerate() {
        p.ok(&["rm", "--force", "--time", "0", &format!("c{i}")]);
        assert!(
            allocations(&m.routers[i]).is_empty(),
            "{:?}",
            allocations(&m.routers[i])
        );
        assert!(weft_veths(&m.cluster.nodes[i].ns).is_empty());
        assert!(pod_routes(&m.cluster.nodes[i].ns).is_empty());
    }
}

#[test]
fn containerd_ctr_run_with_cni_gets_weft_addresses_on_two_nodes_and_releases_them() {
    if !require_root("cni_ctr")
        || !require_tools(
            "cni_ctr",
            &["containerd", "ctr", "podman", "runc", "unshare"],
        )
    {
        return;
    }
    let m = mesh(2);
    let dir = TempDir::new("ctr");
    let archive = busybox_oci_archive(&dir.path, &m.cluster.nodes[0].ns, &m.routers[0].api());
    let image = "localhost/weft-busybox:latest";
    let ctrds: Vec<Containerd> = (0..2)
        .map(|i| {
            Containerd::start(
                &dir.path.join(format!("ctrd{i}")),
                &m.cluster.nodes[i].ns,
                &m.routers[i].api(),
                &archive,
            )
        })
        .collect();
    // A long-running container per node, each in the background.
    let runners: Vec<_> = (0..2)
        .map(|i| {
            let (d, ns) = (ctrds[i].dir.clone(), ctrds[i].node_ns.clone());
            std::thread::spawn(move || {
                ctr_run_cni(&d, &ns, image, &format!("k{i}"), &["sleep", "60"])
            })
        })
        .collect();
    let mut addrs = Vec::new();
    for i in 0..2 {
        let mut found = None;
        let ok = wait_until(Duration::from_secs(20), || {
            found = allocations(&m.routers[i])
                .into_iter()
                .find(|a| a.container_id.ends_with(&format!("k{i}")));
            found.is_some()
        });
        assert!(ok, "ctr container k{i} got no address");
        addrs.push(found.unwrap().address);
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let ok = wait_until(Duration::from_secs(10), || {
            ctrds[from]
                .ctr(&[
                    "task",
                    "exec",
                    "--exec-id",
                    &format!("p{to}"),
                    &format!("k{from}"),
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    &addrs[to],
                ])
                .status
                .success()
        });
        assert!(ok, "k{from} cannot reach k{to} at {}", addrs[to]);
    }
    for (i, c) in ctrds.iter().enumerate() {
        let _ = c.ctr(&["task", "kill", "-s", "KILL", &format!("k{i}")]);
    }
    for r in runners {
        let _ = r.join();
    }
    for i in 0..2 {
        let released = wait_until(Duration::from_secs(10), || {
            allocations(&m.routers[i]).is_empty()
        });
        assert!(released, "ctr --rm left {:?}", allocations(&m.routers[i]));
        assert!(weft_veths(&m.cluster.nodes[i].ns).is_empty());
        assert!(pod_routes(&m.cluster.nodes[i].ns).is_empty());
    }
}
