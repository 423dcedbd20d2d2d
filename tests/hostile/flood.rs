//! A secret holder connected to a real router as a peer floods it with the
//! path messages of issue 16 ("Bad input": "an observed-address claim from
//! a single peer, or for another router, changes nothing; a flood of punch
//! requests is rate-limited"): relay requests to its neighbour, to unknown
//! routers, to itself and oversized; observed-address claims naming a bogus
//! public address for the victim, thousands of others, and the honest
//! neighbour's own address; and punch offers on its direct connection
//! naming the neighbour and addresses of the test bridge. The victim's
//! counters, what it forwards, the UDP it sends, its memory, its advertised
//! endpoints and the honest pair's pings are checked against the limits.
//!
//! Bounded: about 8 s and at most ~65k records; every address is on the
//! test's own bridge (192.0.2.0/24) or a documentation range no route leads
//! to (203.0.113.0/24, only ever named inside records).

use super::*;
use rand::Rng;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use weft::control::proto::{ControlMessage, encode_records};
use weft::id::PeerId;

/// The relay budget per (from, to) pair (src/control/relay.rs
/// `RelayLimits::default`): records and bytes a second, one second of burst.
const RELAY_RECORDS: f64 = 50.0;
const RELAY_BYTES: f64 = 128.0 * 1024.0;
/// Most addresses a router takes for its own from one peer's claims
/// (src/control/endpoints.rs `MINE_PER_PEER`).
const MINE_PER_PEER: usize = 2;
/// The bogus public address the attacker claims for the victim.
const BOGUS: &str = "203.0.113.99:6783";
/// Addresses on the test bridge where no host answers, named as punch
/// candidates: the victim must send them nothing.
const PROBE_NET: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(192, 0, 2, 200), Ipv4Addr::new(192, 0, 2, 207));

/// What the attacker sent and how far it got.
#[derive(Debug, Default)]
struct Sent {
    relay_to_neighbour: u64,
    relay_bytes_to_neighbour: u64,
    relay_unknown: u64,
    relay_loop: u64,
    relay_large: u64,
    observed: u64,
    observed_other_router: u64,
    offers: u64,
    error: Option<String>,
}

/// The attacker's side of a direct control connection: seals and frames
/// control messages (fragmented as the router does when over one record),
/// in batches.
struct Records {
    stream: TcpStream,
    sealer: weft::crypto::FrameSealer,
    batch: Vec<u8>,
}

impl Records {
    fn push(&mut self, message: &ControlMessage) -> std::io::Result<()> {
        for plaintext in encode_records(message) {
            let record = self.sealer.seal(&plaintext);
            self.batch
                .extend_from_slice(&(record.len() as u32).to_be_bytes());
            self.batch.extend_from_slice(&record);
        }
        if self.batch.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.stream.write_all(&self.batch);
        self.batch.clear();
        result
    }
}

/// Reads and discards what the router sends the attacker (gossip, reports)
/// until `stop`, so that the router's writes never stall its reads.
pub(super) fn drain_in_background(mut stream: TcpStream, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
    });
}

/// The flood itself, phase by phase, each bounded in time and count.
fn flood(
    records: &mut Records,
    me: PeerId,
    n0: PeerId,
    n1: PeerId,
    n1_addr: SocketAddr,
    seed: u64,
) -> Sent {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sent = Sent::default();
    let mut run = |records: &mut Records, sent: &mut Sent| -> std::io::Result<()> {
        let bytes = |rng: &mut rand::rngs::StdRng, n: usize| -> Vec<u8> {
            (0..n).map(|_| rng.r#gen()).collect()
        };
        // 1. Relay requests, 3 s: mostly small ones to the neighbour (over
        // the record budget), unknown targets, loops, and now and then one
        // over the largest record a relay forwards.
        // Paced at about 5,000 a second, so that the flood spans the
        // budget's refills rather than one burst.
        let until = Instant::now() + Duration::from_secs(3);
        for i in 0..15_000u32 {
            if Instant::now() > until {
                break;
            }
            if i % 50 == 49 {
                records.flush()?;
                std::thread::sleep(Duration::from_millis(10));
            }
            let (peer, len) = match i % 10 {
                0..=5 => (n1, 256),
                6 if i % 100 == 6 => (n1, 70 * 1024),
                6 | 7 => (PeerId(rng.r#gen()), 256),
                8 => (n0, 256),
                _ => (me, 256),
            };
            records.push(&ControlMessage::RelayTo {
                peer,
                bytes: bytes(&mut rng, len),
            })?;
            match (i % 10, len) {
                (_, l) if l > 64 * 1024 => sent.relay_large += 1,
                (0..=5, _) => {
                    sent.relay_to_neighbour += 1;
                    sent.relay_bytes_to_neighbour += len as u64;
                }
                (6 | 7, _) => sent.relay_unknown += 1,
                _ => sent.relay_loop += 1,
            }
        }
        // 2. Large relay requests to the neighbour, after a pause that
        // refills the record budget, 1.5 s at about 200 a second: over the
        // byte budget long before the record budget.
        records.flush()?;
        std::thread::sleep(Duration::from_millis(1100));
        let until = Instant::now() + Duration::from_millis(1500);
        let big = bytes(&mut rng, 60 * 1024);
        for i in 0..300u32 {
            if Instant::now() > until {
                break;
            }
            if i % 10 == 9 {
                records.flush()?;
                std::thread::sleep(Duration::from_millis(50));
            }
            records.push(&ControlMessage::RelayTo {
                peer: n1,
                bytes: big.clone(),
            })?;
            sent.relay_to_neighbour += 1;
            sent.relay_bytes_to_neighbour += big.len() as u64;
        }
        // 3. Observed-address claims, 1.5 s: the one bogus address for the
        // victim again and again, thousands of others, and the honest
        // neighbour's address as the victim's own.
        let bogus: SocketAddr = BOGUS.parse().unwrap();
        let until = Instant::now() + Duration::from_millis(1500);
        for i in 0..20_000u32 {
            if Instant::now() > until {
                break;
            }
            let claim = match i % 50 {
                0 => bogus,
                1 => {
                    sent.observed_other_router += 1;
                    n1_addr
                }
                _ => SocketAddr::from((
                    Ipv4Addr::new(203, 0, 113, (i % 200) as u8 + 1),
                    1000 + (i / 200) as u16,
                )),
            };
            records.push(&ControlMessage::Observed {
                dialled: Some(claim),
                udp_from: Some(claim),
            })?;
            sent.observed += 1;
        }
        // 4. Punch offers on the direct connection, 1.5 s, naming the
        // neighbour and addresses of the bridge where nobody listens.
        let mut candidates = vec![SocketAddr::from(([192, 0, 2, 12], 6783)), n1_addr];
        candidates.extend((200..=205).map(|h| SocketAddr::from(([192, 0, 2, h], 6783))));
        let until = Instant::now() + Duration::from_millis(1500);
        for _ in 0..20_000u32 {
            if Instant::now() > until {
                break;
            }
            records.push(&ControlMessage::PunchOffer {
                candidates: candidates.clone(),
            })?;
            sent.offers += 1;
        }
        records.flush()
    };
    if let Err(e) = run(records, &mut sent) {
        sent.error = Some(e.to_string());
    }
    sent
}

/// A counting rule (no verdict) in `ns` for UDP it sends to `PROBE_NET`.
pub(super) fn count_probes(ns: &Netns) {
    let range = format!("{}-{}", PROBE_NET.0, PROBE_NET.1);
    for cmd in [
        vec!["nft", "add", "table", "ip", "flood_count"],
        vec![
            "nft",
            "add chain ip flood_count out { type filter hook output priority 0 ; }",
        ],
        vec![
            "nft",
            "add",
            "rule",
            "ip",
            "flood_count",
            "out",
            "ip",
            "daddr",
            &range,
            "meta",
            "l4proto",
            "udp",
            "counter",
        ],
    ] {
        let out = ns.exec(&cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub(super) fn probes_sent(ns: &Netns) -> u64 {
    let out = ns.exec(&["nft", "list", "chain", "ip", "flood_count", "out"]);
    let text = String::from_utf8_lossy(&out.stdout);
    nft_packets(&text).expect("the probe counter")
}

/// The victim's relay counters at one moment (read between `asked` and
/// `answered`).
struct Sample {
    asked: Instant,
    answered: Instant,
    records: u64,
    bytes: u64,
}

/// The largest share of the relay budget used over any stretch between two
/// samples: what was forwarded over what a token bucket can admit in that
/// stretch at most (a full bucket at its start, the rate after). Above 1.0
/// the budget was exceeded.
fn budget_used(samples: &[Sample], pick: impl Fn(&Sample) -> u64, per_second: f64) -> f64 {
    let mut worst: f64 = 0.0;
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            let stretch = b.answered.duration_since(a.asked).as_secs_f64();
            let admitted = (pick(b) - pick(a)) as f64;
            worst = worst.max(admitted / (per_second * (1.0 + stretch)));
        }
    }
    worst
}

pub(super) fn paths(router: &Router) -> serde_json::Value {
    router.status().expect("status")["paths"].clone()
}

pub(super) fn counter(paths: &serde_json::Value, key: &str) -> u64 {
    paths[key].as_u64().unwrap_or(0)
}

#[test]
fn a_peer_flooding_relay_requests_address_claims_and_punch_offers_is_held_to_the_limits() {
    let Some(arena) = Arena::new("hostile_paths_flood") else {
        return;
    };
    let dir = arena.cluster.dir.path.clone();
    let id_of = |name: &str| {
        Identity::load_or_create(&dir.join(name).join("state"))
            .unwrap()
            .0
            .id()
    };
    let (n0, n1) = (id_of("n0"), id_of("n1"));
    let n1_addr = SocketAddr::from((arena.cluster.nodes[1].underlay, 6783));
    // An attacker that leads n1, so that n1 opens a relayed session for
    // every forwarded piece of garbage (the most work it can cause there).
    let evil = loop {
        let id = Identity::generate(&mut rand::thread_rng());
        if id.id().leads(n1) {
            break id;
        }
    };
    let me = evil.id();
    let victim = &arena.cluster.nodes[0].ns;
    count_probes(victim);
    let n1_pid = router_pid(&arena.cluster.nodes[1].ns.name).expect("n1's pid");
    let n1_rss_before = rss_kb(n1_pid);
    let before = paths(&arena.routers[0]);
    let ping = arena.ping_during(14);
    let (target, secret, seed) = (arena.target(), dir.join("secret"), arena.seed);
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reader = stop.clone();
    let started = Instant::now();
    let attacker = in_netns(&arena.attacker().name, move || {
        let (stream, _, keys) = intruder_handshake(target, &secret, &evil);
        drain_in_background(stream.try_clone().unwrap(), stop_reader);
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut records = Records {
            stream,
            sealer: keys.tcp_send,
            batch: Vec::new(),
        };
        let sent = flood(&mut records, me, n0, n1, n1_addr, seed);
        // The connection stays open until the checks are done.
        (sent, records.stream)
    });
    // Sample the victim's relay counters and memory while the flood runs.
    let mut peak_rss = 0;
    let mut samples: Vec<Sample> = Vec::new();
    while !attacker.is_finished() && started.elapsed() < Duration::from_secs(30) {
        peak_rss = peak_rss.max(rss_kb(arena.pid));
        let asked = Instant::now();
        let p = paths(&arena.routers[0]);
        samples.push(Sample {
            asked,
            answered: Instant::now(),
            records: counter(&p, "relay_forwarded"),
            bytes: counter(&p, "relay_forwarded_bytes"),
        });
        std::thread::sleep(Duration::from_millis(150));
    }
    let (sent, stream) = attacker.join().unwrap();
    let flooded = started.elapsed();
    eprintln!("flood over after {flooded:?}: {sent:?}, peak VmRSS {peak_rss} KiB");
    assert!(
        sent.error.is_none(),
        "the router broke the attacker's connection: {sent:?}"
    );
    // Everything sent has been read once the last offer is counted.
    let offers = |p: &serde_json::Value| counter(p, "punch_offer_unexpected");
    let mut after = before.clone();
    wait_until(Duration::from_secs(15), || {
        after = paths(&arena.routers[0]);
        offers(&after) - offers(&before) >= sent.offers
    });
    let window = started.elapsed().as_secs_f64();
    let delta = |key: &str| counter(&after, key) - counter(&before, key);
    eprintln!("over {window:.1} s: paths {after}");

    // Relay: what was forwarded stays within one pair's budget over the
    // whole window (plus the burst), every kind of refusal is counted.
    let (forwarded, forwarded_bytes) = (delta("relay_forwarded"), delta("relay_forwarded_bytes"));
    // The token bucket's own bound (a burst of one second, then the rate)
    // over the whole window, and over every stretch between two samples;
    // 2 % for rounding.
    let record_limit = RELAY_RECORDS * (1.0 + window) * 1.02;
    let byte_limit = RELAY_BYTES * (1.0 + window) * 1.02;
    let records_used = budget_used(&samples, |s| s.records, RELAY_RECORDS);
    let bytes_used = budget_used(&samples, |s| s.bytes, RELAY_BYTES);
    eprintln!(
        "{} samples: at most {:.0} % of the record budget and {:.0} % of the byte budget used over any stretch",
        samples.len(),
        records_used * 100.0,
        bytes_used * 100.0
    );
    assert!(samples.len() >= 10, "too few samples: {}", samples.len());
    assert!(
        records_used <= 1.02,
        "record budget exceeded: {records_used:.2}"
    );
    assert!(bytes_used <= 1.02, "byte budget exceeded: {bytes_used:.2}");
    eprintln!(
        "relay: {} records ({} bytes) asked for the neighbour, {forwarded} forwarded (limit {record_limit:.0}), {forwarded_bytes} bytes (limit {byte_limit:.0})",
        sent.relay_to_neighbour, sent.relay_bytes_to_neighbour
    );
    assert!(
        sent.relay_to_neighbour as f64 > 3.0 * record_limit,
        "the flood did not exceed the budget: {sent:?}"
    );
    assert!(
        forwarded > 0,
        "nothing was relayed: the budget admits a pair's share"
    );
    assert!(
        (forwarded as f64) <= record_limit,
        "forwarded {forwarded} records in {window:.1} s, budget {record_limit:.0}"
    );
    assert!(
        (forwarded_bytes as f64) <= byte_limit,
        "forwarded {forwarded_bytes} bytes in {window:.1} s, budget {byte_limit:.0}"
    );
    for reason in [
        "relay_record_rate",
        "relay_byte_rate",
        "relay_unknown_target",
        "relay_loop",
        "relay_too_large",
    ] {
        assert!(delta(reason) > 0, "{reason} did not move: {after}");
    }
    assert_eq!(delta("relay_unknown_target"), sent.relay_unknown);
    assert_eq!(delta("relay_loop"), sent.relay_loop);
    assert_eq!(delta("relay_too_large"), sent.relay_large);
    assert_eq!(
        forwarded + delta("relay_record_rate") + delta("relay_byte_rate"),
        sent.relay_to_neighbour,
        "every relay request for the neighbour is forwarded or counted"
    );

    // Claims: refused and counted; nothing advertised; the neighbour's
    // address stays the neighbour's.
    let status = arena.routers[0].status().unwrap();
    let advertised: Vec<String> = serde_json::from_value(status["advertised"].clone()).unwrap();
    assert_eq!(
        advertised,
        vec![target.to_string()],
        "one peer's claims changed what the victim advertises"
    );
    let seen_by_n1 = arena.routers[1].status().unwrap()["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "n0")
        .map(|p| p["addresses"].clone())
        .expect("n1 knows n0");
    assert_eq!(
        seen_by_n1,
        serde_json::json!([target.to_string()]),
        "n0's signed entry carries a claimed address"
    );
    let log = arena.routers[0].log_tail();
    let full_log = std::fs::read_to_string(arena.routers[0].log_path()).unwrap_or_default();
    let learned = full_log
        .lines()
        .filter(|l| l.contains("at an address of its own"))
        .count();
    eprintln!("{learned} addresses taken for the victim's own (cap {MINE_PER_PEER} per peer)");
    assert!(
        learned <= MINE_PER_PEER,
        "{learned} addresses taken for the victim's own from one peer"
    );
    assert!(
        !full_log
            .lines()
            .any(|l| l.contains("at an address of its own") && l.contains(&n1_addr.to_string())),
        "the victim took n1's address for its own:\n{log}"
    );

    assert!(delta("observed_refused/other_router") >= sent.observed_other_router);
    assert!(delta("observed_refused/per_peer") > 0, "{after}");

    // Punch offers on a direct connection: counted, nothing probed.
    assert_eq!(
        offers(&after) - offers(&before),
        sent.offers,
        "every offer is counted once"
    );
    assert_eq!(
        delta("punch_attempts"),
        0,
        "an offer on a direct connection started punching"
    );
    let probes = probes_sent(victim);
    eprintln!(
        "{} offers, {probes} UDP packets to the named candidates",
        sent.offers
    );
    assert_eq!(
        probes, 0,
        "the victim probed candidates a direct peer named"
    );

    // n1 received at most the forwarded garbage and kept its memory.
    let n1_rss = rss_kb(n1_pid);
    eprintln!("n1: VmRSS {n1_rss} KiB (before {n1_rss_before})");
    assert!(n1_rss < RSS_LIMIT_KB && n1_rss < 2 * n1_rss_before.max(8 * 1024));
    assert!(peak_rss < RSS_LIMIT_KB, "peak VmRSS {peak_rss} KiB");
    arena.assert_unharmed(ping, 2);
    stop.store(true, Ordering::Relaxed);
    drop(stream);
}
