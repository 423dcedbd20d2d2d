//! Tools for the hostile-peer tests (issue "Hostile input and faults"): the
//! router's PID and resident memory, the TCP sockets on its port, a ping
//! running in the background whose losses are counted, a pcap TCP parser to
//! lift a real handshake message out of a capture, and a bounded stream of
//! attack connections from many source addresses.
//!
//! Every loop here is bounded in count and in time, and every address is one
//! of the test's own namespaces (192.0.2.0/24 on the test's bridge).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use super::{Cluster, Netns, Router, run_timeout, start_routers, wait_until};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use weft::control::proto::{Hello, Versions};
use weft::crypto::{ClusterSecrets, Handshake, Identity, MSG1_LEN, SessionKeys, prologue};

/// The PID of the `weft` process running in namespace `ns`.
pub fn router_pid(ns: &str) -> Option<u32> {
    let out = run_timeout(Command::new("ip").args(["netns", "pids", ns]), 10).ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "weft")
        })
}

/// VmRSS of `pid` in KiB (0 when it is gone).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The established TCP connections on local port `port` in namespace `ns`
/// (the ones the router holds open), as `ss` sees them.
pub fn tcp_connections(ns: &Netns, port: u16) -> usize {
    let filter = format!("( sport = :{port} )");
    let out = ns.exec(&["ss", "-Htn", "state", "established", &filter]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// A `ping` running in the background from a namespace.
pub struct BackgroundPing {
    child: Child,
    pub count: u32,
}

impl BackgroundPing {
    /// Sends `count` pings, one every `interval_ms`, from `ns` to `to`.
    pub fn start(ns: &Netns, to: Ipv4Addr, count: u32, interval_ms: u32) -> Self {
        let interval = format!("{:.2}", f64::from(interval_ms) / 1000.0);
        let budget = u64::from(count) * u64::from(interval_ms) / 1000 + 15;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "timeout", &budget.to_string()])
            .args(["ping", "-n", "-q", "-W", "1", "-i", &interval, "-c"])
            .arg(count.to_string())
            .arg(to.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        Self { child, count }
    }

    /// Waits for the end and returns (transmitted, received).
    pub fn finish(self) -> (u32, u32) {
        let out = self.child.wait_with_output().expect("ping output");
        let text = String::from_utf8_lossy(&out.stdout);
        // "200 packets transmitted, 199 received, 0.5% packet loss, ..."
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("");
        let mut numbers = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u32>().unwrap_or(0));
        let sent = numbers.next().unwrap_or(0);
        let received = numbers.next().unwrap_or(0);
        (sent, received)
    }
}

/// One TCP segment from a pcap (Ethernet, IPv4).
#[derive(Clone, Debug)]
pub struct TcpSegment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub syn: bool,
    pub payload: Vec<u8>,
}

/// Parses a pcap (link type Ethernet) into its IPv4 TCP segments.
pub fn tcp_segments(pcap: &[u8]) -> Vec<TcpSegment> {
    let mut out = Vec::new();
    for frame in super::pcap_frames(pcap) {
        if frame.len() < 14 + 20 + 20 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 6 {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        if total < ihl + 20 {
            continue;
        }
        let tcp = &ip[ihl..total];
        let offset = usize::from(tcp[12] >> 4) * 4;
        if tcp.len() < offset {
            continue;
        }
        let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
        out.push(TcpSegment {
            src: SocketAddr::from((addr(&ip[12..16]), port(&tcp[0..2]))),
            dst: SocketAddr::from((addr(&ip[16..20]), port(&tcp[2..4]))),
            syn: tcp[13] & 0x02 != 0,
            payload: tcp[offset..].to_vec(),
        });
    }
    out
}

/// The client→server byte stream of every TCP connection to `server_port`
/// that opened (SYN) inside the capture, in capture order (retransmissions
/// are rare on a veth and only make a replay more hostile).
pub fn client_streams(segments: &[TcpSegment], server_port: u16) -> Vec<Vec<u8>> {
    let mut streams: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for s in segments.iter().filter(|s| s.dst.port() == server_port) {
        if s.syn {
            streams.push((s.src, Vec::new()));
        }
        if let Some((_, bytes)) = streams.iter_mut().rev().find(|(c, _)| *c == s.src) {
            bytes.extend_from_slice(&s.payload);
        }
    }
    streams.into_iter().map(|(_, b)| b).collect()
}

/// Adds `count` extra underlay addresses 192.0.2.`first`.. to the attacker's
/// eth0, so that attacks can come from many sources; returns them.
pub fn add_sources(ns: &Netns, first: u8, count: u8) -> Vec<Ipv4Addr> {
    (0..count)
        .map(|i| {
            let addr = Ipv4Addr::new(192, 0, 2, first + i);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            addr
        })
        .collect()
}

/// A TCP connection from `source` (any port) to `to`, with a short timeout.
pub fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// Whether the peer closed `stream` (EOF or reset) within `timeout`; bytes
/// it sends meanwhile are read and counted into `answered`.
pub fn closed_within(
    stream: &mut std::net::TcpStream,
    timeout: Duration,
    answered: &mut usize,
) -> bool {
    use std::io::Read;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => *answered += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// A secret holder's real handshake with the router at `to`, under its own
/// `identity` (an intruder on the test bridge, 192.0.2.12): the stream, the
/// router's hello and the session keys. Panics on any step that fails.
pub fn intruder_handshake(
    to: SocketAddr,
    secret_file: &Path,
    identity: &Identity,
) -> (TcpStream, Hello, SessionKeys) {
    let secrets = ClusterSecrets::load(secret_file).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let (mut hs, msg1) =
        Handshake::initiator(identity, &secrets, &prologue("10.32.0.0/12"), now).unwrap();
    assert_eq!(msg1.len(), MSG1_LEN);
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(&msg1).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut msg2 = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg2).unwrap();
    let payload = hs.read_message(&msg2).unwrap();
    let theirs: Hello = weft::wire::decode(&payload).expect("the router's hello");
    stream
        .write_all(&intruder_msg3(&mut hs, "intruder", 7))
        .unwrap();
    (stream, theirs, hs.finish().unwrap())
}

/// The intruder's handshake message 3, length-prefixed as on the stream:
/// its hello as `name` with short ID `short_id` (also its incarnation and
/// session index), listening at 192.0.2.12:6783.
pub fn intruder_msg3(hs: &mut Handshake, name: &str, short_id: u16) -> Vec<u8> {
    let hello = Hello {
        versions: Versions::OURS,
        name: name.into(),
        short_id,
        listen: "192.0.2.12:6783".parse().unwrap(),
        mtu: 1420,
        incarnation: u64::from(short_id),
        session_index: 70 + u32::from(short_id),
        cluster_range: "10.32.0.0/12".into(),
    };
    let msg3 = hs
        .write_message(&weft::wire::encode(&hello).unwrap())
        .unwrap();
    let mut framed = (msg3.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&msg3);
    framed
}

/// Two routers meshed on nodes 0 and 1 of a three-node cluster, one pod
/// each; node 2 is left for an intruder that holds the secret. Returns with
/// the pair established (10 s at most, else it panics).
pub fn meshed_pair_and_an_intruder_node(bin: &Path) -> (Cluster, Vec<Router>) {
    let mut cluster = Cluster::new(3);
    let routers = start_routers(bin, &mut cluster, 2, |i| vec![1 - i], |_, _| {});
    assert!(
        wait_until(Duration::from_secs(10), || routers
            .iter()
            .all(|r| r.established_peers() == 1)),
        "the two routers did not mesh within 10 s"
    );
    (cluster, routers)
}
