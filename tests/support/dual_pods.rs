//! Dual-stack pods plugged by the real CNI plugin on a [`Mesh`] whose
//! routers have an IPv6 pod range (issue 19), for tests/dual_stack_pods.rs
//! and tests/dual_stack_datapath.rs.

use super::cni::{Call, invoke, net_conf, netns_path};
use super::cni_mesh::Mesh;
use super::{Netns, Router};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The IPv6 pod range the routers are given (next to the default IPv4 one).
pub const RANGE6: &str = "fd00:32::/112";

/// A pod plugged by the plugin: its namespace and both addresses.
pub struct DualPod {
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub result: Value,
}

/// `count` routers with [`RANGE6`] besides the IPv4 range, each changed by
/// `tweak` before it starts, once their IPv6 ring is ready.
pub fn dual_stack_mesh(count: usize, tweak: impl Fn(&mut Router)) -> Mesh {
    let m = super::cni_mesh::mesh_on(super::Cluster::new(count), |r| {
        r.args.extend(["--ipalloc-range".into(), RANGE6.into()]);
        tweak(r);
    });
    let ready = super::wait_until(Duration::from_secs(30), || {
        m.routers.iter().all(ipam6_ready)
    });
    assert!(
        ready,
        "the IPv6 ring is not ready: {}",
        m.routers[0].log_tail()
    );
    m
}

/// Plugs a pod on `node` with the plugin (container ID `cid`) and checks
/// that the result holds both families with their gateways and routes.
pub fn plug(m: &Mesh, node: usize, cid: &str) -> DualPod {
    let ns = Netns::new("pod6");
    let add = Call::new("ADD", cid, &netns_path(&ns));
    let conf = net_conf("1.0.0", &m.routers[node].api());
    let result = invoke(&m.cluster.nodes[node].ns, &add, &conf).ok();
    let ips = result["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "a dual-stack result: {result:#}");
    let address = |i: usize| ips[i]["address"].as_str().unwrap().to_string();
    let (v4, len4) = address(0)
        .split_once('/')
        .map(|(a, l)| (a.to_string(), l.to_string()))
        .unwrap();
    let (v6, len6) = address(1)
        .split_once('/')
        .map(|(a, l)| (a.to_string(), l.to_string()))
        .unwrap();
    assert_eq!((len4.as_str(), len6.as_str()), ("32", "128"));
    assert_eq!(ips[1]["gateway"], "fe80::1");
    assert!(
        result["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "::/0")
    );
    DualPod {
        ns,
        v4: v4.parse().unwrap(),
        v6: v6.parse().unwrap(),
        result,
    }
}

/// Sends `bytes` over TCP from pod `from` to `to_addr` in pod `to`, checks
/// that all arrived with the same checksum, and prints the rate under
/// `label`; returns how long it took.
pub fn checked_transfer(
    from: &DualPod,
    to: &DualPod,
    to_addr: IpAddr,
    bytes: u64,
    label: &str,
) -> Duration {
    let t = super::traffic::transfer_between(&from.ns, &to.ns, to_addr, bytes, None);
    assert_eq!(t.received, bytes, "{label}: {t:?}");
    assert_eq!(t.sent_sum, t.received_sum, "{label}: payload corrupted");
    println!(
        "{label}: {bytes} bytes in {:?} ({:.0} Mbit/s)",
        t.elapsed,
        bytes as f64 * 8.0 / t.elapsed.as_secs_f64() / 1e6
    );
    t.elapsed
}

/// Whether `from` gets one ping answer from `to` within `timeout`.
pub fn ping(from: &Netns, to: IpAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if from
            .exec(&["ping", "-c", "1", "-W", "1", &to.to_string()])
            .status
            .success()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Whether the router's IPv6 ring is ready to allocate.
pub fn ipam6_ready(r: &Router) -> bool {
    r.status().is_some_and(|s| s["ipam6"]["state"] == "ready")
}

/// An IPv6 packet that gets past weft0 too big for the overlay (weft0's
/// MTU raised behind the router's back, as in the moment before a smaller
/// cluster MTU reaches it) gets an ICMPv6 Packet Too Big from the router
/// naming the overlay MTU, instead of vanishing. MTUs are put back after.
pub fn packet_too_big_from_the_router(m: &Mesh, from: &DualPod, to: &DualPod) {
    let node = &m.cluster.nodes[0].ns;
    let mtu: usize = node
        .ok(&["cat", "/sys/class/net/weft0/mtu"])
        .trim()
        .parse()
        .unwrap();
    let host_veth = from.result["interfaces"][0]["name"]
        .as_str()
        .expect("the host side's name")
        .to_string();
    let set = |ns: &Netns, dev: &str, value: usize| {
        ns.ip(&["link", "set", dev, "mtu", &value.to_string()]);
    };
    set(node, "weft0", mtu + 80);
    set(node, &host_veth, mtu + 80);
    set(&from.ns, "eth0", mtu + 80);
    let before = m.routers[0].status().unwrap()["dataplane"]["too_big_replies"]
        .as_u64()
        .unwrap_or(0);
    let too_big6 = || {
        m.routers[0].status().unwrap()["dataplane"]["dropped6"]["too_big"]
            .as_u64()
            .unwrap_or(0)
    };
    let dropped_before = too_big6();
    // 40 bytes of IPv6 and 8 of ICMPv6 header: 40 bytes over the MTU.
    let size = (mtu + 40 - 48).to_string();
    let out = from.ns.exec(&[
        "ping",
        "-6",
        "-M",
        "do",
        "-c",
        "1",
        "-W",
        "2",
        "-s",
        &size,
        &to.v6.to_string(),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let after = m.routers[0].status().unwrap()["dataplane"]["too_big_replies"]
        .as_u64()
        .unwrap_or(0);
    set(&from.ns, "eth0", mtu);
    set(node, &host_veth, mtu);
    set(node, "weft0", mtu);
    from.ns.ip(&["-6", "route", "flush", "cache"]);
    assert!(
        text.contains(&format!("mtu={mtu}")) || text.contains(&format!("mtu = {mtu}")),
        "no Packet Too Big naming {mtu}:\n{text}"
    );
    assert!(
        after > before,
        "the router did not answer: {before} -> {after}"
    );
    // The oversized packet is dropped as IPv6.
    assert!(
        too_big6() > dropped_before,
        "not counted as an IPv6 drop: {:#}",
        m.routers[0].status().unwrap()["dataplane"]
    );
    println!(
        "ICMPv6 Packet Too Big from the router: {}",
        text.lines().find(|l| l.contains("mtu")).unwrap_or("")
    );
}
