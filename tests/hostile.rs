//! A hostile host on the underlay (issue "Hostile input and faults", DESIGN.md
//! "Keys and sessions" → Handshake and invariant 4): two good routers with
//! pings flowing between their pods while a third namespace on the same
//! switch sends random and truncated and oversized input to TCP and UDP 6783,
//! holds idle and one-byte-a-second connections, floods handshake
//! initiations from many source ports and addresses, and replays captured
//! handshake messages. Each test asserts that the router stays up, its RSS
//! stays bounded, half-open connections stay capped and time out, the
//! counters of refused input move, and the good pair loses (almost) nothing.
//!
//! Every attack loop is bounded in count and in time; every address belongs
//! to the test's own namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod support;

use rand::{Rng, RngCore, SeedableRng};
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};
use support::attack::*;
use support::*;
use weft::crypto::{ClusterSecrets, Handshake, Identity, MSG1_LEN, prologue};

const BIN: &str = env!("CARGO_BIN_EXE_weft");
/// The router's cap on connections whose handshake has not completed
/// (src/control/mod.rs MAX_HALF_OPEN).
const MAX_HALF_OPEN: usize = 64;
/// The time a handshake may take (src/control/connection.rs).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Memory bounds: absolute, and relative to the router before the attack.
const RSS_LIMIT_KB: u64 = 64 * 1024;

/// Two good routers n0 and n1 with a pod each, established; node 2 is the
/// attacker.
struct Arena {
    cluster: Cluster,
    routers: Vec<Router>,
    pid: u32,
    rss_before: u64,
    seed: u64,
}

impl Arena {
    fn new(test: &str) -> Option<Self> {
        if !require_root(test) {
            return None;
        }
        let mut cluster = Cluster::new(3);
        let routers = start_routers(Path::new(BIN), &mut cluster, 2, |i| vec![1 - i], |_, _| {});
        let up = wait_until(Duration::from_secs(15), || {
            routers.iter().all(|r| r.established_peers() == 1)
        });
        assert!(
            up,
            "the good pair did not connect:\n{}",
            routers[0].log_tail()
        );
        let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
        assert!(
            a.wait_ping(b.addr, Duration::from_secs(10)),
            "no baseline ping"
        );
        let pid = router_pid(&cluster.nodes[0].ns.name).expect("router pid");
        let rss_before = rss_kb(pid);
        let seed = std::env::var("WEFT_HOSTILE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        eprintln!("{test}: router n0 pid {pid}, VmRSS {rss_before} KiB, seed {seed}");
        Some(Self {
            cluster,
            routers,
            pid,
            rss_before,
            seed,
        })
    }

    fn target(&self) -> SocketAddr {
        SocketAddr::from((self.cluster.nodes[0].underlay, 6783))
    }

    fn attacker(&self) -> &Netns {
        &self.cluster.nodes[2].ns
    }

    /// Pings from pod 0 to pod 1 in the background, 10 a second.
    fn ping_during(&self, secs: u32) -> BackgroundPing {
        BackgroundPing::start(
            &self.cluster.pods[0].ns,
            self.cluster.pods[1].addr,
            secs * 10,
            100,
        )
    }

    fn handshakes(&self, key: &str) -> u64 {
        self.routers[0]
            .status()
            .and_then(|s| s["handshakes"][key].as_u64())
            .unwrap_or(0)
    }

    /// The router is up, the same process, its memory bounded; the good pair
    /// is still established and never went down; pings lost at most `lost`.
    fn assert_unharmed(&self, ping: BackgroundPing, max_lost: u32) {
        let (sent, received) = ping.finish();
        let status = self.routers[0]
            .status()
            .expect("router n0 stopped answering");
        assert_eq!(
            router_pid(&self.cluster.nodes[0].ns.name),
            Some(self.pid),
            "router n0 restarted or died"
        );
        let rss = rss_kb(self.pid);
        eprintln!(
            "after the attack: VmRSS {rss} KiB (before {}), pings {received}/{sent}, handshakes {}, dropped {}",
            self.rss_before, status["handshakes"], status["dataplane"]["dropped"]
        );
        assert!(rss < RSS_LIMIT_KB, "VmRSS {rss} KiB over {RSS_LIMIT_KB}");
        assert!(
            rss < 2 * self.rss_before.max(8 * 1024),
            "VmRSS {rss} KiB more than doubled from {}",
            self.rss_before
        );
        assert!(sent > 0, "the background ping did not run");
        assert!(
            sent - received <= max_lost,
            "the good pair lost {} of {sent} pings during the attack",
            sent - received
        );
        for r in &self.routers {
            assert_eq!(r.established_peers(), 1, "{} lost its peer", r.name);
            let log = r.log_tail();
            assert!(
                !log.contains("connection down"),
                "{}'s good connection went down:\n{log}",
                r.name
            );
            assert!(
                !log.contains("rekey handshake timed out")
                    && !log.contains("rekey message 1 refused"),
                "{} failed a rekey:\n{log}",
                r.name
            );
        }
        let (a, b) = (&self.cluster.pods[0], &self.cluster.pods[1]);
        assert!(
            a.ping(b.addr, 3),
            "the good pair cannot ping after the attack"
        );
    }
}

/// Time since the Unix epoch, for message 1.
fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
}

fn sum_dropped(router: &Router, reasons: &[&str]) -> u64 {
    reasons.iter().map(|r| router.dropped(r)).sum()
}

#[test]
fn random_truncated_and_oversized_input_on_tcp_and_udp_is_dropped_and_counted_while_the_pair_keeps_talking()
 {
    let Some(arena) = Arena::new("hostile_garbage") else {
        return;
    };
    let target = arena.target();
    let ping = arena.ping_during(12);
    let udp_before = sum_dropped(
        &arena.routers[0],
        &["bad_header", "unknown_session", "bad_tag"],
    );
    let refused_before = arena.handshakes("refused") + arena.handshakes("protocol");
    let sources = add_sources(arena.attacker(), 100, 4);
    let seed = arena.seed;
    let (udp_sent, tcp_tries, answered) = in_netns(&arena.attacker().name, move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // UDP: random sizes (empty, shorter than a header, header-sized,
        // typical, maximal), random content, and datagrams that carry our
        // header's version nibble with random indices and counters.
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut sent = 0u64;
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut buf = vec![0u8; 65_507];
        for i in 0..6000u32 {
            if Instant::now() > deadline {
                break;
            }
            let len = match i % 6 {
                0 => rng.gen_range(0..16),
                1 => 16,
                2 => rng.gen_range(17..200),
                3 => rng.gen_range(200..1500),
                4 => 65_507,
                _ => rng.gen_range(32..1452),
            };
            rng.fill_bytes(&mut buf[..len]);
            if i % 2 == 0 && len >= 16 {
                buf[0] = 0x10 | (buf[0] & 0x0f); // version 1, any type
                buf[1] = 8;
            }
            if socket.send_to(&buf[..len], target).is_ok() {
                sent += 1;
            }
            if i % 200 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // TCP: garbage of every interesting length before any handshake:
        // one byte, one short of message 1, exactly message 1, a bit more,
        // and 256 KiB; each connection must be closed without an answer.
        let lengths = [1usize, MSG1_LEN - 1, MSG1_LEN, MSG1_LEN + 7, 256 * 1024];
        let mut tries = 0;
        let mut answered = 0usize;
        let mut open = Vec::new();
        for round in 0..8 {
            for (k, len) in lengths.iter().enumerate() {
                let source = sources[(round + k) % sources.len()];
                let Ok(mut stream) = connect_from(source, target) else {
                    continue;
                };
                tries += 1;
                let mut junk = vec![0u8; *len];
                rng.fill_bytes(&mut junk);
                stream
                    .set_write_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let _ = stream.write_all(&junk);
                if *len < MSG1_LEN {
                    // Truncated: hang up halfway.
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                }
                open.push(stream);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let mut still_open = 0;
        for stream in &mut open {
            if !closed_within(
                stream,
                HANDSHAKE_TIMEOUT + Duration::from_secs(3),
                &mut answered,
            ) {
                still_open += 1;
            }
        }
        assert_eq!(still_open, 0, "connections with garbage were left open");
        (sent, tries, answered)
    })
    .join()
    .unwrap();
    assert_eq!(
        answered, 0,
        "the router answered garbage with {answered} bytes"
    );
    assert!(
        tcp_tries >= 30,
        "only {tcp_tries} garbage connections got through"
    );
    let udp_dropped = sum_dropped(
        &arena.routers[0],
        &["bad_header", "unknown_session", "bad_tag"],
    ) - udp_before;
    eprintln!("udp: {udp_sent} sent, {udp_dropped} counted as dropped");
    // A few may be lost in socket buffers; most must be seen and counted.
    assert!(
        udp_dropped * 2 >= udp_sent,
        "only {udp_dropped} of {udp_sent} garbage datagrams were counted"
    );
    let refused = arena.handshakes("refused") + arena.handshakes("protocol") - refused_before;
    assert!(
        refused as usize * 2 >= tcp_tries,
        "only {refused} of {tcp_tries} garbage connections were counted"
    );
    let log = arena.routers[0].log_tail();
    let refusals = log.matches("refused a handshake").count();
    assert!(
        refusals <= 20,
        "{refusals} refusal lines for a ~15 s attack: not rate-limited"
    );
    arena.assert_unharmed(ping, 2);
}

#[test]
fn idle_and_one_byte_a_second_clients_stay_under_the_half_open_cap_and_time_out() {
    let Some(arena) = Arena::new("hostile_slowloris") else {
        return;
    };
    let target = arena.target();
    let ping = arena.ping_during(20);
    let sources = add_sources(arena.attacker(), 100, 12);
    let node0 = &arena.cluster.nodes[0].ns;
    let attacker = arena.attacker().name.clone();
    // 12 sources × 15 connections = 180 > the cap, each source under the
    // per-source rate limit (20 a second); half send nothing, half one byte
    // a second, never finishing message 1.
    let opener = in_netns(&attacker, move || {
        let mut held = Vec::new();
        let mut refused_at_once = 0usize;
        for round in 0..15 {
            for source in &sources {
                let Ok(stream) = connect_from(*source, target) else {
                    continue;
                };
                held.push((stream, round % 2 == 1));
            }
            std::thread::sleep(Duration::from_millis(60));
        }
        let opened = Instant::now();
        // Drip one byte a second on the slow half for 14 s (more than the
        // handshake timeout), noticing when the router hangs up.
        let mut closed_at: Vec<Option<Duration>> = vec![None; held.len()];
        let mut junk = [0u8; 1];
        for _second in 0..14 {
            for (i, (stream, slow)) in held.iter_mut().enumerate() {
                if closed_at[i].is_some() {
                    continue;
                }
                stream.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 64];
                let gone = match std::io::Read::read(stream, &mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                let gone = gone || (*slow && stream.write(&junk).is_err());
                if gone {
                    closed_at[i] = Some(opened.elapsed());
                    if opened.elapsed() < Duration::from_secs(2) {
                        refused_at_once += 1;
                    }
                }
            }
            junk[0] = junk[0].wrapping_add(1);
            std::thread::sleep(Duration::from_secs(1));
        }
        let never_closed = closed_at.iter().filter(|c| c.is_none()).count();
        (held.len(), refused_at_once, never_closed)
    });
    // While the attack holds its connections: the router's connections on
    // 6783 stay within the cap plus the good peer's.
    std::thread::sleep(Duration::from_secs(3));
    let mut peak = 0;
    for _ in 0..5 {
        peak = peak.max(tcp_connections(node0, 6783));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (held, refused_at_once, never_closed) = opener.join().unwrap();
    eprintln!(
        "{held} attack connections, {refused_at_once} closed at once, peak {peak} sockets on 6783, {never_closed} never closed"
    );
    assert!(
        held > MAX_HALF_OPEN,
        "the attack opened only {held} connections"
    );
    assert!(
        peak <= MAX_HALF_OPEN + 2,
        "{peak} connections on port 6783 with a cap of {MAX_HALF_OPEN}"
    );
    assert!(
        refused_at_once >= held - MAX_HALF_OPEN - 2,
        "only {refused_at_once} of {held} connections were refused at the cap"
    );
    assert_eq!(
        never_closed, 0,
        "half-open connections outlived the handshake timeout"
    );
    assert!(
        arena.handshakes("half_open_cap") > 0,
        "the cap was never counted"
    );
    // The cap frees up: a legitimate router that restarts gets back in.
    let timed_out = wait_until(Duration::from_secs(5), || {
        tcp_connections(&arena.cluster.nodes[0].ns, 6783) <= 2
    });
    assert!(timed_out, "half-open connections did not drain");
    arena.assert_unharmed(ping, 2);
}

#[test]
fn a_flood_of_handshake_initiations_from_many_ports_is_rate_limited_and_costs_bounded_memory() {
    let Some(arena) = Arena::new("hostile_flood") else {
        return;
    };
    let target = arena.target();
    let secrets = ClusterSecrets::load(&arena.cluster.dir.path.join("secret")).unwrap();
    // The real secret's ID, so that each message 1 gets as far as the
    // responder's DH and tag check (the expensive path).
    let identity = Identity::generate(&mut rand::thread_rng());
    let (_, real) =
        Handshake::initiator(&identity, &secrets, &prologue("10.32.0.0/12"), wall_clock()).unwrap();
    let secret_id: [u8; 4] = real[..4].try_into().unwrap();
    let ping = arena.ping_during(15);
    let before = (
        arena.handshakes("rate_limited"),
        arena.handshakes("refused"),
    );
    let sources = add_sources(arena.attacker(), 100, 8);
    let seed = arena.seed;
    let pid = arena.pid;
    let (attempts, peak_rss) = in_netns(&arena.attacker().name, move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut attempts = 0usize;
        let mut peak_rss = 0;
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut live: Vec<TcpStream> = Vec::new();
        // One source sends as fast as it can (rate-limited per source); the
        // others each stay just under the limit.
        for i in 0..3000usize {
            if Instant::now() > deadline {
                break;
            }
            let source = if i % 2 == 0 {
                sources[0]
            } else {
                sources[1 + (i / 2) % (sources.len() - 1)]
            };
            let Ok(mut stream) = connect_from(source, target) else {
                continue;
            };
            attempts += 1;
            let mut msg1 = [0u8; MSG1_LEN];
            rng.fill_bytes(&mut msg1);
            msg1[..4].copy_from_slice(&secret_id);
            let _ = stream.write_all(&msg1);
            live.push(stream);
            // Hold a bounded number of sockets open; drop the oldest.
            if live.len() > 200 {
                live.remove(0);
            }
            if i % 50 == 0 {
                peak_rss = peak_rss.max(rss_kb(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        drop(live);
        (attempts, peak_rss)
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let rate_limited = arena.handshakes("rate_limited") - before.0;
    let refused = arena.handshakes("refused") - before.1;
    eprintln!(
        "{attempts} initiations: {rate_limited} rate-limited, {refused} refused, peak VmRSS {peak_rss} KiB"
    );
    assert!(
        attempts >= 300,
        "the flood made only {attempts} connections"
    );
    assert!(rate_limited > 0, "no initiation was rate-limited");
    assert!(refused > 0, "no initiation reached the tag check");
    assert!(
        refused as usize <= attempts,
        "more refusals than attempts: double counting"
    );
    assert!(peak_rss < RSS_LIMIT_KB, "VmRSS peaked at {peak_rss} KiB");
    arena.assert_unharmed(ping, 2);
}

#[test]
fn replayed_handshake_messages_never_yield_a_session_and_time_out() {
    let Some(arena) = Arena::new("hostile_replay") else {
        return;
    };
    let target = arena.target();
    // Capture a real handshake: n1 restarts and dials n0 again.
    let pcap = arena.cluster.dir.path.join("handshake.pcap");
    let capture = Capture::start(
        &arena.cluster.nodes[0].ns,
        "eth0",
        "tcp port 6783",
        pcap.clone(),
        400,
    );
    let mut routers = arena.routers;
    routers[1].kill9();
    routers[1].start();
    assert!(
        wait_until(Duration::from_secs(15), || routers
            .iter()
            .all(|r| r.established_peers() == 1)),
        "the pair did not reconnect"
    );
    std::thread::sleep(Duration::from_secs(1));
    let _ = capture.finish();
    let segments = tcp_segments(&std::fs::read(&pcap).unwrap());
    // Whoever dialled: a message 1 is bound to the secret and the range,
    // not to the responder, so any router of the cluster would take it.
    let streams = client_streams(&segments, 6783);
    let dialled = streams
        .iter()
        .find(|s| s.len() >= MSG1_LEN)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no client stream to n0 in the capture: {} segments",
                segments.len()
            )
        });
    let arena = Arena { routers, ..arena };
    // A fresh router process: compare against its RSS now.
    let arena = Arena {
        rss_before: rss_kb(arena.pid).max(arena.rss_before),
        ..arena
    };
    let peers_before = arena.routers[0].status().unwrap()["peers"].clone();
    let ping = arena.ping_during(16);
    let before = arena.handshakes("protocol") + arena.handshakes("refused");
    let replayed_before = arena.handshakes("replayed");
    let sources = add_sources(arena.attacker(), 100, 4);
    let stale_source = sources[0];
    let (replays, answered_msg1, closed) = in_netns(&arena.attacker().name, move || {
        let msg1 = dialled[..MSG1_LEN].to_vec();
        let mut streams = Vec::new();
        // Message 1 alone (the router answers at most the first copy, if the
        // capture is of its own dial and it never saw that message 1, and can
        // never get a valid message 3), and the whole recorded client side
        // (message 1, message 3 and records) in one go, several times each.
        for i in 0..12 {
            let source = sources[i % sources.len()];
            let Ok(mut stream) = connect_from(source, target) else {
                continue;
            };
            let bytes = if i % 2 == 0 { &msg1 } else { &dialled };
            let _ = stream.write_all(bytes);
            streams.push(stream);
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut answered = 0;
        let mut closed = 0;
        for stream in &mut streams {
            let mut got = 0;
            if closed_within(stream, HANDSHAKE_TIMEOUT + Duration::from_secs(3), &mut got) {
                closed += 1;
            }
            if got > 0 {
                answered += 1;
            }
        }
        (streams.len(), answered, closed)
    })
    .join()
    .unwrap();
    eprintln!("{replays} replays: {answered_msg1} got a message 2, {closed} closed");
    assert!(replays >= 10, "only {replays} replays connected");
    assert_eq!(
        closed, replays,
        "a replayed handshake stayed open past the timeout"
    );
    let replayed = arena.handshakes("replayed") - replayed_before;
    let failed = arena.handshakes("protocol") + arena.handshakes("refused") - before + replayed;
    assert!(
        failed as usize >= replays,
        "only {failed} of {replays} replays were counted as failed handshakes"
    );
    // The replay guard: no copy of a message 1 it admitted before gets a
    // message 2 (no DH work); only a first sighting could.
    assert!(
        answered_msg1 <= 1,
        "{answered_msg1} replays of one message 1 got a message 2"
    );
    assert!(
        replayed as usize >= replays - 1,
        "only {replayed} of {replays} replays were refused as replayed"
    );
    // A message 1 that authenticates but is timestamped 400 s ago (an old
    // replay, or a node whose clock is off): refused before any DH work, and
    // the log says what to fix.
    let secrets = ClusterSecrets::load(&arena.cluster.dir.path.join("secret")).unwrap();
    let identity = Identity::generate(&mut rand::thread_rng());
    let stale = wall_clock() - Duration::from_secs(400);
    let (_, msg1) =
        Handshake::initiator(&identity, &secrets, &prologue("10.32.0.0/12"), stale).unwrap();
    let skew_before = arena.handshakes("clock_skew");
    let source = stale_source;
    let stale_answered = in_netns(&arena.attacker().name, move || {
        let mut stream = connect_from(source, target).unwrap();
        stream.write_all(&msg1).unwrap();
        let mut got = 0;
        assert!(closed_within(&mut stream, Duration::from_secs(5), &mut got));
        got
    })
    .join()
    .unwrap();
    assert_eq!(stale_answered, 0, "a stale message 1 got an answer");
    assert!(
        wait_until(Duration::from_secs(5), || arena.handshakes("clock_skew")
            > skew_before),
        "the stale message 1 was not counted as clock_skew"
    );
    let log = arena.routers[0].log_tail();
    assert!(
        log.contains("behind our clock") && log.contains("NTP"),
        "no clock-skew line in the log:\n{log}"
    );
    let peers_after = arena.routers[0].status().unwrap()["peers"].clone();
    assert_eq!(
        peers_before.as_array().map(Vec::len),
        peers_after.as_array().map(Vec::len),
        "a replay changed the peer list"
    );
    arena.assert_unharmed_after_restart(ping);
}

impl Arena {
    /// As `assert_unharmed`, for the replay test whose n1 restarted on
    /// purpose (one "connection down" of the old n1 is expected).
    fn assert_unharmed_after_restart(&self, ping: BackgroundPing) {
        let (sent, received) = ping.finish();
        assert!(
            self.routers[0].status().is_some(),
            "router n0 stopped answering"
        );
        assert_eq!(router_pid(&self.cluster.nodes[0].ns.name), Some(self.pid));
        let rss = rss_kb(self.pid);
        eprintln!("after the replays: VmRSS {rss} KiB, pings {received}/{sent}");
        assert!(rss < RSS_LIMIT_KB, "VmRSS {rss} KiB");
        assert!(
            sent > 0 && sent - received <= 2,
            "lost {} of {sent} pings",
            sent - received
        );
        for r in &self.routers {
            assert_eq!(r.established_peers(), 1, "{} lost its peer", r.name);
        }
        let downs = self.routers[0]
            .log_tail()
            .matches("connection down")
            .count();
        assert!(downs <= 1, "n0 saw {downs} connections go down");
    }
}

#[test]
fn one_source_holding_idle_connections_cannot_lock_a_newcomer_out() {
    let Some(arena) = Arena::new("hostile_lockout") else {
        return;
    };
    let target = arena.target();
    let ping = arena.ping_during(12);
    let sources = add_sources(arena.attacker(), 100, 2);
    let (hog, newcomer) = (sources[0], sources[1]);
    let secrets = ClusterSecrets::load(&arena.cluster.dir.path.join("secret")).unwrap();
    let (held, answered) = in_netns(&arena.attacker().name, move || {
        // One host opens idle connections just under the per-source rate
        // limit for 5 s: more than the global cap if nothing else stops it.
        let mut held = Vec::new();
        for _ in 0..95 {
            if let Ok(stream) = connect_from(hog, target) {
                held.push(stream);
            }
            std::thread::sleep(Duration::from_millis(55));
        }
        // A newcomer holding the secret starts a real handshake from
        // another address: it must get message 2 back.
        let identity = Identity::generate(&mut rand::thread_rng());
        let (_, msg1) =
            Handshake::initiator(&identity, &secrets, &prologue("10.32.0.0/12"), wall_clock()).unwrap();
        let mut answered = 0;
        if let Ok(mut stream) = connect_from(newcomer, target) {
            stream.write_all(&msg1).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut len = [0u8; 2];
            if std::io::Read::read_exact(&mut stream, &mut len).is_ok() {
                answered = usize::from(u16::from_be_bytes(len));
            }
        }
        let mut still_held = 0;
        for stream in &held {
            stream.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            let mut reader: &TcpStream = stream;
            if matches!(std::io::Read::read(&mut reader, &mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            {
                still_held += 1;
            }
        }
        (still_held, answered)
    })
    .join()
    .unwrap();
    eprintln!(
        "one source holds {held} half-open connections; the newcomer got a {answered}-byte message 2"
    );
    assert!(
        held <= 8 + 1,
        "one source holds {held} half-open connections"
    );
    assert!(
        answered > 0,
        "a newcomer was locked out by one host's idle connections"
    );
    arena.assert_unharmed(ping, 2);
}
