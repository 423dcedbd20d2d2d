//! Upgrades without lost flows (issue 20): a router restarted under a TCP
//! flow between pods, ten times in a row and once after a 20 s outage (an
//! image pull), must not reset the flow or lose a byte; while it is away
//! weft0 and its routes stay, so the pods see silence, never an ICMP
//! unreachable that would make a sender give up. SIGTERM is not `leave`:
//! the ring, the pods' addresses and the identity stay. A node that
//! reboots (its whole network namespace gone, its disk kept) comes back
//! with every pod address, and the runtime's CNI GC frees the lost ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::flow::Flow;
use support::ipam::{api, ipam, listed};
use support::*;
use weft::api::proto::Request;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// About 4 MB/s: enough to see every stall, light on 2 cores.
const RATE: u64 = 4 << 20;

#[test]
fn pod_flows_survive_ten_router_restarts_and_a_20_s_outage_with_no_reset_and_no_icmp() {
    if !require_root("pod_flows_survive_ten_router_restarts_and_a_20_s_outage") {
        return;
    }
    let mut p = start_pair(Path::new(BIN), &[]);
    let (a, b) = (&p.cluster.pods[0], &p.cluster.pods[1]);
    assert!(
        a.wait_ping(b.addr, Duration::from_secs(5)),
        "pods not connected"
    );
    let id_before = p.routers[1].status().unwrap()["id"].clone();
    let unreachable = Capture::start(
        &a.ns,
        "eth0",
        "icmp[icmptype] == icmp-unreach",
        p.cluster.dir.path.join("icmp.pcap"),
        100,
    );
    let flow = Flow::start(a, b, 5301, RATE, Duration::from_secs(120));
    assert!(
        wait_until(Duration::from_secs(5), || flow.received() > RATE / 2),
        "the flow did not start"
    );

    // Ten SIGTERM + start in a row on the receiving pod's node, with a
    // second of flow after each; the longest stall over all of it.
    let done = AtomicBool::new(false);
    let restart_stall = std::thread::scope(|s| {
        let watch = s.spawn(|| flow.longest_stall(&done));
        for _ in 0..10 {
            let status = p.routers[1].terminate(Duration::from_secs(10));
            assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}");
            p.routers[1].start();
            std::thread::sleep(Duration::from_secs(1));
        }
        done.store(true, Ordering::Relaxed);
        watch.join().unwrap()
    });

    // A 20 s outage of the sending pod's router (an image pull).
    let before_outage = flow.received();
    let outage_started = Instant::now();
    assert!(p.routers[0].terminate(Duration::from_secs(10)).is_some());
    std::thread::sleep(Duration::from_secs(20));
    p.routers[0].start();
    let resumed = wait_until(Duration::from_secs(40), || {
        flow.received() > before_outage + RATE
    });
    let outage_gap = outage_started.elapsed();
    assert!(
        resumed,
        "the flow did not resume within 40 s of the router's return:\n{}",
        p.routers[0].log_tail()
    );
    std::thread::sleep(Duration::from_secs(1));
    let end = flow.finish().expect("the flow survived every restart");
    // The capture's control: one datagram to a closed port of pod b must
    // come back as the one ICMP unreachable the capture holds, so a capture
    // that saw nothing cannot pass for one that saw no unreachable.
    let closed_port = std::net::SocketAddr::from((b.addr, 9));
    in_netns(&a.ns.name, move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.send_to(b"control", closed_port).unwrap();
    })
    .join()
    .unwrap();
    let icmp_path = unreachable.path.clone();
    let seen = wait_until(Duration::from_secs(3), || {
        !pcap_frames(&std::fs::read(&icmp_path).unwrap_or_default()).is_empty()
    });
    unreachable.finish();
    assert_eq!(end.received, end.sent, "bytes lost or corrupted");
    assert!(
        seen,
        "the capture did not see the control's ICMP unreachable"
    );
    let icmp_frames = pcap_frames(&std::fs::read(icmp_path).unwrap_or_default()).len();
    assert_eq!(
        icmp_frames, 1,
        "pod a was sent ICMP unreachable beyond the control's one"
    );
    assert_eq!(
        p.routers[1].status().unwrap()["id"],
        id_before,
        "identity changed across restarts"
    );
    eprintln!(
        "{} MB intact over 10 restarts (longest stall {:?}) and a 20 s outage \
         (flow moving again {:?} after SIGTERM)",
        end.sent.0 >> 20,
        restart_stall,
        outage_gap
    );
}

#[test]
fn a_rebooted_node_keeps_every_pod_address_and_cni_gc_frees_the_lost_ones() {
    if !require_root("a_rebooted_node_keeps_every_pod_address_and_cni_gc_frees_the_lost_ones") {
        return;
    }
    let mut p = start_pair(Path::new(BIN), &[]);
    for id in ["c-keep", "c-lost-1", "c-lost-2"] {
        let reply = api(
            &p.routers[1],
            &Request::Allocate {
                container_id: id.into(),
                ifname: "eth0".into(),
                pod: None,
            },
        );
        assert!(reply.ok, "{:?}", reply.error);
    }
    let before = listed(&p.routers[1]);
    let owned_before = ipam(&p.routers[1])["owned_ranges"].clone();

    // Power cut: the router dies with the node's network namespace (weft0,
    // routes, veths, pods); the disk (its state dir) survives.
    p.routers[1].kill9();
    p.cluster.reboot(1);
    p.routers[1].ns_name = p.cluster.nodes[1].ns.name.clone();
    p.routers[1].start();

    assert_eq!(
        listed(&p.routers[1]),
        before,
        "allocations lost in the reboot"
    );
    assert_eq!(ipam(&p.routers[1])["owned_ranges"], owned_before);
    // The runtime's CNI GC after the reboot: only c-keep is attached again.
    let reply = api(
        &p.routers[1],
        &Request::Gc {
            keep: vec!["c-keep".into()],
        },
    );
    assert!(reply.ok, "{:?}", reply.error);
    let after = listed(&p.routers[1]);
    assert_eq!(after.keys().collect::<Vec<_>>(), ["c-keep"]);
    // c-keep's pod comes back at its address and reaches the other node.
    let kept = after["c-keep"];
    let pod = p.cluster.add_pod(1, kept);
    let other = p.cluster.pods.iter().find(|q| q.node == 0).unwrap();
    assert!(
        p.cluster.pods[pod].wait_ping(other.addr, Duration::from_secs(10)),
        "the rebooted node's pod cannot reach the other node:\n{}",
        p.routers[1].log_tail()
    );
    assert!(other.ping(kept, 3), "the other node cannot reach the pod");
}
