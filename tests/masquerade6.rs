#![allow(clippy::unwrap_used, clippy::expect_used)]
//! IPv6 pod egress off the cluster (issue 19, "optional masquerade66 for
//! egress off ULA"): a dual-stack pod plugged by the CNI plugin on a node
//! whose uplink leads to a host with a global 2001:db8:: address and no
//! route back to the pods' unique local range. With `--masquerade6 auto`
//! (the default; on for a ULA range) the pod's ping and UDP reach that host
//! and are answered, and the host sees the node's address as the source;
//! the rule is put back when someone removes it. Restarted with
//! `--masquerade6 off`, the rule is gone, the host sees the pod's ULA
//! source and its answers cannot come back.

mod support;

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;
use support::cni_mesh::{Mesh, mesh_on};
use support::dual_pods::*;
use support::egress_echo::{outside_host, outside_socket, udp_echo_exchange};
use support::*;

const NODE_SIDE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x6, 0, 0, 0, 0, 1);
const OUTSIDE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x6, 0, 0, 0, 0, 2);
const PORT: u16 = 7006;

/// A host outside the cluster, joined to `node` by a veth on
/// 2001:db8:6::/64, with no route to the pod ranges.
fn v6host_outside(node: &Netns) -> Netns {
    outside_host(node, "ext6", (NODE_SIDE.into(), OUTSIDE.into()), 64)
}

/// Sends `payload` from the pod's IPv6 address to the outside host, which
/// echoes the source it saw: the sources seen and the reply the pod got.
fn v6host_exchange(
    pod: &DualPod,
    outside: &Netns,
    payload: &'static str,
) -> (Vec<SocketAddr>, Option<String>) {
    let socket = outside_socket(outside, (OUTSIDE, PORT).into());
    udp_echo_exchange(&pod.ns.name, pod.v6.into(), &socket, payload)
}

fn v6host_table(node: &Netns) -> String {
    node.ok(&["nft", "list", "table", "ip6", "weft"])
}

#[test]
fn ipv6_pod_egress_off_the_ula_range_is_masqueraded_by_default_and_not_when_off() {
    if !require_root("ipv6_pod_egress_off_the_ula_range_is_masqueraded") {
        return;
    }
    // The uplink is there before the router starts, as on a real node.
    let cluster = Cluster::new(1);
    let outside = v6host_outside(&cluster.nodes[0].ns);
    let mut m: Mesh = mesh_on(cluster, |r| {
        r.args.extend(["--ipalloc-range".into(), RANGE6.into()]);
    });
    let ready = wait_until(Duration::from_secs(30), || ipam6_ready(&m.routers[0]));
    assert!(ready, "{}", m.routers[0].log_tail());
    let pod = plug(&m, 0, "masq6");
    let node = &m.cluster.nodes[0].ns;

    // auto with a ULA range: masqueraded, answered.
    assert!(
        v6host_table(node).contains("masquerade"),
        "{}",
        v6host_table(node)
    );
    assert!(
        ping(&pod.ns, OUTSIDE.into(), Duration::from_secs(10)),
        "the pod cannot ping {OUTSIDE}\n{}",
        m.routers[0].log_tail()
    );
    let (seen, reply) = v6host_exchange(&pod, &outside, "masq6");
    assert!(!seen.is_empty(), "the outside got nothing from the pod");
    assert!(
        seen.iter().all(|p| p.ip() == NODE_SIDE),
        "the outside saw {seen:?}, not the node's {NODE_SIDE}"
    );
    assert_eq!(reply.as_deref(), Some(NODE_SIDE.to_string().as_str()));

    // Removed by someone else: put back by the repair check.
    node.ok(&["nft", "delete", "chain", "ip6", "weft", "postrouting"]);
    let repaired = wait_until(Duration::from_secs(15), || {
        v6host_table(node).contains("masquerade")
    });
    assert!(repaired, "{}", v6host_table(node));

    // Restarted with off: the rule is gone, the outside sees the pod's own
    // ULA address and cannot answer it.
    let r = &mut m.routers[0];
    assert!(r.terminate(Duration::from_secs(10)).is_some());
    r.args.extend(["--masquerade6".into(), "off".into()]);
    r.start();
    let back = wait_until(Duration::from_secs(30), || ipam6_ready(r));
    assert!(back, "{}", r.log_tail());
    let table = v6host_table(node);
    assert!(!table.contains("masquerade"), "{table}");
    assert!(table.contains("ip6 saddr fd00:32::/112"), "{table}");
    let (seen, reply) = v6host_exchange(&pod, &outside, "plain6");
    assert!(!seen.is_empty(), "the outside got nothing from the pod");
    assert!(
        seen.iter().all(|p| p.ip() == std::net::IpAddr::V6(pod.v6)),
        "the outside saw {seen:?}, not the pod's {}",
        pod.v6
    );
    assert_eq!(reply, None, "an answer came back to a ULA source");
    assert!(!ping(&pod.ns, OUTSIDE.into(), Duration::from_secs(2)));
}
