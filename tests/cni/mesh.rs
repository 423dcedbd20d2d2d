//! Pods plugged by the plugin on routers of a real mesh: reachability and
//! 200 ADD/DEL cycles.

use super::*;

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
