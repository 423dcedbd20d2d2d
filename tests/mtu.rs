#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One overlay MTU for the cluster, found automatically (DESIGN.md "MTU";
//! issue "fast data plane": "the largest overlay MTU the underlay allows,
//! found automatically"): each router derives its MTU from its underlay
//! interface, the cluster uses the smallest, weft0 follows it, and a
//! don't-fragment packet too big for it gets an ICMP "fragmentation needed"
//! naming that MTU — from the kernel at weft0, or, for one that got past
//! weft0, from the router itself — instead of vanishing.

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

fn link_mtu(ns: &Netns, dev: &str) -> u64 {
    let out = ns.ok(&["cat", &format!("/sys/class/net/{dev}/mtu")]);
    out.trim().parse().unwrap()
}

#[test]
fn the_cluster_uses_the_smallest_underlay_mtu_and_oversized_packets_get_frag_needed() {
    if !require_root("mtu") {
        return;
    }
    cleanup_leftovers();
    let mut cluster = Cluster::new(2);
    // Node 1's underlay carries only 1400 bytes: its router announces
    // 1400 - 80 = 1320; node 0's (1500) announces 1420.
    cluster.nodes[1]
        .ns
        .ip(&["link", "set", "eth0", "mtu", "1400"]);
    let routers = start_routers(Path::new(BIN), &mut cluster, 2, |i| vec![1 - i], |_, _| {});
    let agreed = wait_until(Duration::from_secs(15), || {
        routers.iter().all(|r| r.mtu() == Some(1320))
            && cluster
                .nodes
                .iter()
                .all(|n| link_mtu(&n.ns, "weft0") == 1320)
    });
    assert!(
        agreed,
        "the routers did not agree on MTU 1320: {:?} {:?}, weft0 {} {}\n{}",
        routers[0].mtu(),
        routers[1].mtu(),
        link_mtu(&cluster.nodes[0].ns, "weft0"),
        link_mtu(&cluster.nodes[1].ns, "weft0"),
        routers[0].log_tail()
    );
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(a.wait_ping(b.addr, Duration::from_secs(10)), "no ping");

    // The largest packet that fits: 1320 - 28 bytes of IP and ICMP header.
    assert!(
        a.ping_df(b.addr, 1292).contains(" 0% packet loss"),
        "a packet of exactly the cluster MTU did not arrive"
    );
    // One byte more (the pod's own MTU is 1420): the node's kernel answers
    // at weft0.
    let out = a.ping_df(b.addr, 1293);
    assert!(
        out.contains("mtu = 1320"),
        "no frag-needed at weft0:\n{out}"
    );

    // A packet that gets past weft0 (its MTU raised behind the router's
    // back, as in the moment before a new router's smaller MTU arrives):
    // the router answers it, rate-limited, instead of dropping it silently.
    cluster.nodes[0]
        .ns
        .ip(&["link", "set", "weft0", "mtu", "1420"]);
    // Forget the path MTU the pod learned above.
    a.ns.ip(&["route", "flush", "cache"]);
    let out = a.ping_df(b.addr, 1350);
    assert!(
        out.contains("mtu = 1320"),
        "the router did not answer an oversized packet with frag-needed:\n{out}"
    );
    let totals = &routers[0].status().unwrap()["dataplane"];
    assert!(
        totals["too_big_replies"].as_u64().unwrap_or(0) >= 1,
        "no too_big_replies counted: {totals}"
    );
    assert!(routers[0].dropped("too_big") >= 1);
    // A TCP transfer across the mixed-MTU path arrives intact.
    let t = transfer(a, b, 4 << 20, None);
    assert_eq!(
        t.received,
        4 << 20,
        "4 MB transfer across the 1320-byte path"
    );
    assert_eq!(t.received_sum, t.sent_sum, "checksum mismatch");
}

/// Runs `weft router --insecure --mtu VALUE` in a namespace of its own, its
/// files in a temporary directory; it must fail, and its stderr is returned.
fn router_with_mtu(value: &str) -> String {
    let dir = TempDir::new("badmtu");
    let out = confined_command(BIN)
        .args(["router", "--insecure", "--mtu", value])
        .arg("--state-dir")
        .arg(dir.path.join("state"))
        .arg("--api")
        .arg(dir.path.join("weft.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "--mtu {value} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_mtu_flag_is_one_clear_line() {
    let err = router_with_mtu("jumbo");
    assert!(
        err.contains("--mtu \"jumbo\" is not a number") && err.contains("auto"),
        "{err}"
    );
    let err = router_with_mtu("100");
    assert!(
        err.contains("out of range") && err.lines().count() == 1,
        "{err}"
    );
}
