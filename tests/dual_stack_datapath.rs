#![allow(clippy::unwrap_used, clippy::expect_used)]
//! IPv6 pod traffic through the fast data path and through the plain
//! fallback (`WEFT_DISABLE_OFFLOAD=1`), issue 19's data-plane tests: three
//! routers with dual-stack pods plugged by the CNI plugin; a 100 MB
//! checksummed TCPv6 transfer between pods on different nodes (coalesced
//! into TCPv6 super-packets on the fast path, and counted so); ICMPv6 echo
//! of every packet size from 60 under to 20 over the overlay MTU, with
//! `-M do` (those that fit are answered, the rest refused at the pod naming
//! the MTU) and without (Linux fragments at the sender; all are answered);
//! UDPv6 datagrams of the same sizes arrive intact (fragmented by the
//! sending pod when too big); a packet over the overlay MTU that gets past
//! weft0 draws the router's Packet Too Big.

mod support;

use std::net::{IpAddr, Ipv6Addr, UdpSocket};
use std::time::{Duration, Instant};
use support::cni_mesh::Mesh;
use support::dual_pods::*;
use support::*;

/// Sizes of whole IPv6 packets around `mtu`: 60 under to 20 over.
fn sizes_around(mtu: usize) -> std::ops::RangeInclusive<usize> {
    mtu - 60..=mtu + 20
}

fn pod_mtu(pod: &DualPod) -> usize {
    pod.ns
        .ok(&["cat", "/sys/class/net/eth0/mtu"])
        .trim()
        .parse()
        .unwrap()
}

fn coalesced_v6(r: &Router) -> u64 {
    dataplane(r, "coalesced_v6")
}

/// A counter of `weft status`'s data plane (0 when absent).
fn dataplane(r: &Router, key: &str) -> u64 {
    r.status().unwrap()["dataplane"][key].as_u64().unwrap_or(0)
}

/// One ping of a `size`-byte IPv6 packet (40 IPv6 + 8 ICMPv6 + payload),
/// up to `tries` for an answer, each waiting `wait` seconds: whether one
/// came, and the output.
fn ping6_size(
    from: &DualPod,
    to: Ipv6Addr,
    size: usize,
    dont_fragment: bool,
    (tries, wait): (usize, &str),
) -> (bool, String) {
    let payload = (size - 48).to_string();
    let to = to.to_string();
    let mut args = vec!["ping", "-6", "-c", "1", "-W", wait, "-s", &payload];
    if dont_fragment {
        args.extend(["-M", "do"]);
    }
    args.push(&to);
    let mut text = String::new();
    for _ in 0..tries {
        let out = from.ns.exec(&args);
        text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            return (true, text);
        }
    }
    (false, text)
}

/// ICMPv6 echo of every size around the MTU from `from` to `to`.
fn icmp6_sweep(from: &DualPod, to: &DualPod, mtu: usize) {
    let start = Instant::now();
    // Three tries for what must be answered; one short one for what is
    // refused at once (ping lingers for its -W after a local error).
    let (answer, refusal) = ((3, "2"), (1, "0.2"));
    for size in sizes_around(mtu) {
        let expect = if size <= mtu { answer } else { refusal };
        let (answered, text) = ping6_size(from, to.v6, size, true, expect);
        if size <= mtu {
            assert!(answered, "-M do, {size} bytes, MTU {mtu}: {text}");
        } else {
            assert!(!answered, "-M do, {size} bytes over MTU {mtu} answered");
            assert!(
                text.contains(&mtu.to_string()),
                "-M do, {size} bytes: the refusal does not name MTU {mtu}: {text}"
            );
        }
        let (answered, text) = ping6_size(from, to.v6, size, false, answer);
        assert!(answered, "{size} bytes (fragmented over {mtu}): {text}");
    }
    println!(
        "ICMPv6 sweep {:?} bytes, MTU {mtu}: {:?}",
        sizes_around(mtu),
        start.elapsed()
    );
}

/// UDPv6 datagrams whose IPv6 packets are every size around the MTU (and
/// one of three MTUs) from `from` to `to`; each must arrive intact, up to
/// three sends each.
fn udp6_sweep(from: &DualPod, to: &DualPod, mtu: usize) {
    let start = Instant::now();
    let receiver = in_netns(&to.ns.name, || {
        UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 7203)).expect("bind receiver")
    })
    .join()
    .unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let source = from.v6;
    let sender = in_netns(&from.ns.name, move || {
        UdpSocket::bind((source, 0)).expect("bind sender")
    })
    .join()
    .unwrap();
    let mut buf = vec![0u8; 65_536];
    for size in sizes_around(mtu).chain([3 * mtu]) {
        let payload: Vec<u8> = (0..size - 48)
            .map(|i| (i.wrapping_mul(7) ^ size) as u8)
            .collect();
        let mut arrived = false;
        for _ in 0..3 {
            sender.send_to(&payload, (to.v6, 7203)).expect("send");
            let deadline = Instant::now() + Duration::from_secs(1);
            while !arrived && Instant::now() < deadline {
                match receiver.recv_from(&mut buf) {
                    Ok((n, _)) => arrived = buf[..n] == payload[..],
                    Err(_) => break,
                }
            }
            if arrived {
                break;
            }
        }
        assert!(
            arrived,
            "a UDPv6 datagram in a {size}-byte packet (MTU {mtu}) did not arrive intact"
        );
    }
    println!(
        "UDPv6 sweep {:?} and {} bytes, MTU {mtu}: {:?}",
        sizes_around(mtu),
        3 * mtu,
        start.elapsed()
    );
}

/// Three nodes, dual-stack pods, every check of this file; `fast` says
/// whether the routers may use the offloads.
fn ipv6_pod_traffic(fast: bool) {
    let m: Mesh = dual_stack_mesh(3, |r| {
        if !fast {
            r.env.push(("WEFT_DISABLE_OFFLOAD".into(), "1".into()));
        }
    });
    let offload = m.routers[2].status().unwrap()["dataplane"]["offload"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(!offload.starts_with("none"), fast, "offload: {offload}");
    let pods: Vec<DualPod> = (0..3)
        .map(|i| plug(&m, i, &format!("cid-v6dp-{i}")))
        .collect();
    for (a, b) in [(0, 2), (1, 0)] {
        assert!(
            ping(&pods[a].ns, IpAddr::V6(pods[b].v6), Duration::from_secs(20)),
            "n{a} cannot reach n{b}: {}",
            m.routers[a].log_tail()
        );
    }

    const BYTES: u64 = 100 * 1000 * 1000;
    let before = coalesced_v6(&m.routers[2]);
    let sent6 = dataplane(&m.routers[0], "bytes_out6");
    let (got6, got) = (
        dataplane(&m.routers[2], "bytes_in6"),
        dataplane(&m.routers[2], "bytes_in"),
    );
    let path = if fast { "offload" } else { "fallback" };
    let to = IpAddr::V6(pods[2].v6);
    checked_transfer(
        &pods[0],
        &pods[2],
        to,
        BYTES,
        &format!("TCPv6 n0 -> n2, {path}"),
    );
    // Status splits the data plane's counters per family: the transfer is
    // in the IPv6 share on both ends, and in the totals.
    let sent6 = dataplane(&m.routers[0], "bytes_out6") - sent6;
    let (got6, got) = (
        dataplane(&m.routers[2], "bytes_in6") - got6,
        dataplane(&m.routers[2], "bytes_in") - got,
    );
    assert!(
        sent6 >= BYTES && got6 >= BYTES && got >= got6,
        "IPv6 bytes: {sent6} out of n0, {got6} into n2 (of {got} in all)"
    );
    let merged = coalesced_v6(&m.routers[2]) - before;
    println!("{merged} TCPv6 segments coalesced at n2");
    let mtu = pod_mtu(&pods[1]);
    if fast {
        // At least a tenth of the transfer's segments (60 bytes of IPv6 and
        // TCP headers, 12 of timestamps) must have reached the TUN merged.
        let segments = BYTES / (mtu as u64 - 72);
        assert!(
            merged > segments / 10,
            "only {merged} of ~{segments} TCPv6 segments coalesced"
        );
    } else {
        assert_eq!(merged, 0, "the fallback path has no coalescer");
    }

    assert_eq!(
        m.routers[1].mtu(),
        Some(mtu as u64),
        "pod eth0 MTU vs overlay MTU"
    );
    icmp6_sweep(&pods[1], &pods[0], mtu);
    udp6_sweep(&pods[1], &pods[0], mtu);
    packet_too_big_from_the_router(&m, &pods[0], &pods[1]);
    for r in &m.routers {
        assert_eq!(r.dropped("bad_segment"), 0, "{}", r.name);
        assert_eq!(r.dropped("not_ip"), 0, "{}", r.name);
    }
}

#[test]
fn ipv6_pod_traffic_of_every_kind_and_size_on_the_fast_path() {
    if !require_root("ipv6_pod_traffic_of_every_kind_and_size_on_the_fast_path") {
        return;
    }
    ipv6_pod_traffic(true);
}

#[test]
fn ipv6_pod_traffic_of_every_kind_and_size_on_the_fallback_path() {
    if !require_root("ipv6_pod_traffic_of_every_kind_and_size_on_the_fallback_path") {
        return;
    }
    ipv6_pod_traffic(false);
}
