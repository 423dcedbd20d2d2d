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
/// attacker. Fields drop in order: the routers (printing their logs on
/// failure) before the cluster, whose directory holds those logs.
struct Arena {
    routers: Vec<Router>,
    cluster: Cluster,
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

// The attacks, by kind: garbage and idle or slow clients; handshake floods
// and replays; a secret holder flooding path messages (issue 16).
#[path = "hostile/flood.rs"]
mod flood;
#[path = "hostile/garbage.rs"]
mod garbage;
#[path = "hostile/handshakes.rs"]
mod handshakes;
#[path = "hostile/punch_flood.rs"]
mod punch_flood;
