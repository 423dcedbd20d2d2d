#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The fast data path (TUN offload, segmentation, UDP GSO/GRO, coalescing)
//! and the plain fallback both carry every kind of pod traffic intact: TCP
//! with writes from 1 byte to 64 KB, UDP datagrams from 1 byte to 64 KB
//! (fragmented by the pod when larger than the MTU) and UDP GSO sends from
//! a pod, and ICMP at, just under and just over the overlay MTU.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");
/// The overlay MTU the routers use by default (1500 underlay).
const MTU: usize = 1420;

fn pair(env: &[(&str, &str)]) -> Pair {
    let p = start_pair(Path::new(BIN), env);
    let (a, b) = (&p.cluster.pods[0], &p.cluster.pods[1]);
    assert!(a.wait_ping(b.addr, Duration::from_secs(5)), "no ping");
    p
}

fn offload(r: &Router) -> String {
    r.status().unwrap()["dataplane"]["offload"]
        .as_str()
        .unwrap()
        .to_string()
}

/// (nice, scheduling policy) of each of the router's `weft-worker-*`
/// threads, found through /proc by the router's API socket path on its
/// command line.
fn worker_sched(r: &Router) -> Vec<(i32, u32)> {
    let api = r.api().display().to_string();
    let mut nice = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(" router ") || !cmdline.contains(&api) {
            continue;
        }
        for task in std::fs::read_dir(entry.path().join("task"))
            .unwrap()
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with("weft-worker") {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            // After "pid (comm) ", nice is the 17th field (stat(5) field 19)
            // and the policy the 39th (field 41; 1 is SCHED_FIFO).
            let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            nice.push((rest[16].parse().unwrap(), rest[38].parse().unwrap()));
        }
    }
    nice
}

/// This test process's nice value, which the routers it starts inherit
/// (a run under `nice` starts them above 0).
fn own_nice() -> i32 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    rest[16].parse().unwrap()
}

/// A deterministic byte stream.
fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 131 + seed * 7 + i / 253) % 251) as u8)
        .collect()
}

/// Write sizes from 1 byte to 64 KB, several times each, with Nagle off so
/// that small writes become small segments.
const WRITE_SIZES: &[usize] = &[
    1, 2, 7, 40, 100, 536, 1000, 1379, 1380, 1381, 1392, 1400, 2000, 2760, 4096, 9000, 16_384,
    32_768, 65_535, 65_536,
];

/// Sends every write size (three rounds) over one TCP connection from pod
/// `from` to an echo-less sink in pod `to`, which returns what it received;
/// both sides compare byte for byte.
fn tcp_mix(from: &Pod, to: &Pod) {
    let listen = SocketAddr::from((to.addr, 5301));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(&to.ns.name, move || {
        let listener = TcpListener::bind(listen).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let client = in_netns(&from.ns.name, move || {
        let mut s = TcpStream::connect_timeout(&listen, Duration::from_secs(5)).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut sent = Vec::new();
        for round in 0..3 {
            for (i, &n) in WRITE_SIZES.iter().enumerate() {
                let chunk = pattern(n, round * 100 + i);
                s.write_all(&chunk).unwrap();
                sent.extend_from_slice(&chunk);
            }
        }
        sent
    });
    let sent = client.join().unwrap();
    let got = server.join().unwrap();
    assert_eq!(got.len(), sent.len(), "TCP bytes lost");
    assert!(got == sent, "TCP stream corrupted");
}

/// UDP datagrams of every size, each echoed back by pod `to`; the sizes
/// straddle the largest unfragmented payload (MTU - 28) and go up to the
/// largest UDP payload.
fn udp_mix(from: &Pod, to: &Pod) {
    let max = MTU - 28;
    let sizes = [
        1,
        100,
        1000,
        max - 1,
        max,
        max + 1,
        max + 2,
        2 * max,
        8000,
        30_000,
        65_507,
    ];
    let server_addr = SocketAddr::from((to.addr, 5302));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let count = sizes.len();
    let server = in_netns(&to.ns.name, move || {
        let s = UdpSocket::bind(server_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 65_536];
        let mut echoed = 0;
        // Retries from the client may arrive: echo until quiet.
        while let Ok((n, peer)) = s.recv_from(&mut buf) {
            s.send_to(&buf[..n], peer).unwrap();
            echoed += 1;
        }
        assert!(echoed >= count);
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let client = in_netns(&from.ns.name, move || {
        let s = UdpSocket::bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = vec![0u8; 65_536];
        for (i, &n) in sizes.iter().enumerate() {
            let payload = pattern(n, 1000 + i);
            let mut ok = false;
            for _attempt in 0..5 {
                s.send_to(&payload, server_addr).unwrap();
                if let Ok((got, _)) = s.recv_from(&mut buf) {
                    assert_eq!(
                        &buf[..got],
                        &payload[..],
                        "UDP datagram of {n} bytes corrupted"
                    );
                    ok = true;
                    break;
                }
            }
            assert!(ok, "no echo for a UDP datagram of {n} bytes");
        }
    });
    client.join().unwrap();
    server.join().unwrap();
}

/// A pod sending with UDP GSO (one send, many datagrams): the TUN hands the
/// router a USO super-packet that must be cut at the datagram boundary.
fn udp_gso_from_pod(from: &Pod, to: &Pod) {
    let server_addr = SocketAddr::from((to.addr, 5303));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(&to.ns.name, move || {
        let s = UdpSocket::bind(server_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 65_536];
        let mut got = Vec::new();
        while let Ok(n) = s.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let client = in_netns(&from.ns.name, move || {
        let s = UdpSocket::bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))).unwrap();
        s.connect(server_addr).unwrap();
        set_udp_segment(&s, 1000);
        // 10 datagrams of 1000 bytes and a last one of 345, in one send.
        let payload = pattern(10_345, 7);
        s.send(&payload).unwrap();
        payload
    });
    let payload = client.join().unwrap();
    let got = server.join().unwrap();
    let expected: Vec<Vec<u8>> = payload.chunks(1000).map(<[u8]>::to_vec).collect();
    assert_eq!(got, expected, "UDP GSO datagrams lost, merged or corrupted");
}

#[allow(unsafe_code)]
fn set_udp_segment(s: &UdpSocket, size: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a valid c_int for the call's duration.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            103, // UDP_SEGMENT
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
}

/// ICMP echo with payloads at, under and over the MTU (fragmented by the
/// pod), each answered.
fn icmp_mix(from: &Pod, to: &Pod) {
    let max = MTU - 28;
    for size in [0, 56, max - 1, max, max + 1, 1472, 4000, 20_000] {
        let out = from.ns.exec(&[
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            "-i",
            "0.2",
            "-M",
            "dont",
            "-s",
            &size.to_string(),
            &to.addr.to_string(),
        ]);
        assert!(
            out.status.success(),
            "ping with {size} bytes of payload failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn every_kind_of_traffic(p: &Pair) {
    let (a, b) = (&p.cluster.pods[0], &p.cluster.pods[1]);
    tcp_mix(a, b);
    tcp_mix(b, a);
    udp_mix(a, b);
    udp_gso_from_pod(a, b);
    icmp_mix(a, b);
    for r in &p.routers {
        for reason in ["bad_tag", "bad_segment", "too_big", "replay", "bad_header"] {
            assert_eq!(r.dropped(reason), 0, "{} dropped {reason}", r.name);
        }
    }
}

#[test]
fn every_size_of_tcp_udp_and_icmp_arrives_intact_over_the_offload_path() {
    if !require_root("datapath_offload") {
        return;
    }
    let p = pair(&[]);
    for r in &p.routers {
        let path = offload(r);
        assert!(
            path.starts_with("tso") && path.contains("gso") && path.contains("gro"),
            "{}: offload is {path:?}, expected the fast path",
            r.name
        );
        // The workers run in the real-time class that keeps ping under load
        // short (docs/DATAPATH.md "Queues and latency"), and say so.
        let sched = worker_sched(r);
        assert!(
            !sched.is_empty() && sched.iter().all(|&(_, policy)| policy == 1),
            "{}: worker (nice, policy) {sched:?}, expected SCHED_FIFO",
            r.name
        );
        assert!(
            r.log_tail().contains("real-time class (SCHED_FIFO 1)"),
            "{}: the log does not say the workers' priority",
            r.name
        );
        let realtime = &r.status().unwrap()["dataplane"]["realtime_workers"];
        assert_eq!(
            realtime.as_u64(),
            Some(sched.len() as u64),
            "{}: status realtime_workers",
            r.name
        );
    }
    every_kind_of_traffic(&p);
}

#[test]
fn the_plain_path_carries_the_same_traffic_when_offload_is_disabled_and_status_says_so() {
    if !require_root("datapath_plain") {
        return;
    }
    let p = pair(&[
        ("WEFT_DISABLE_OFFLOAD", "1"),
        ("WEFT_WORKER_PRIORITY", "off"),
    ]);
    for r in &p.routers {
        let path = offload(r);
        assert!(
            path.starts_with("none") && path.contains("WEFT_DISABLE_OFFLOAD"),
            "{}: offload is {path:?}",
            r.name
        );
        assert!(
            r.log_tail().contains("offload"),
            "{}: the log does not say which path is in use",
            r.name
        );
        // Off leaves the workers as started: the inherited nice, SCHED_OTHER.
        let (sched, inherited) = (worker_sched(r), own_nice());
        assert!(
            !sched.is_empty() && sched.iter().all(|&s| s == (inherited, 0)),
            "{}: WEFT_WORKER_PRIORITY=off left worker (nice, policy) {sched:?}, not ({inherited}, 0)",
            r.name
        );
    }
    every_kind_of_traffic(&p);
}
