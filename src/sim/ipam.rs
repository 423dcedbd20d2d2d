//! A seeded, sans-IO simulation of many IPAM cores (DESIGN.md "Sans-IO
//! cores", invariant 1): random joins, kills, restarts with and without
//! state, partitions, allocations, releases, donations and reclaims over a
//! network with delay and loss. After every step it checks that no address
//! is allocatable by two live routers (their own views, quarantine
//! excluded) and that no address is allocated twice to live pods; any
//! rejected honest message or alarm fails the run too. With a hostile member
//! (`hostile.rs`), one router also forges rings and floods donation
//! requests; every forgery must be refused and change nothing.
//!
//! Messages travel over the shared emulator ([`super::net::Network`]: 1..100 ms
//! of delay, 1 % loss); partitions, deaths and incarnations are checked
//! here on delivery, since they follow the routers, not the links.
//!
//! `WEFT_SIM_SEED=N` replays one seed; `WEFT_SIM_STEPS=N` changes the step count
//! (default 10,000). Debug builds run seed 1, release builds seeds 1 to 4.
//!
//! Operating conditions the simulator respects, as an operator must
//! (documented in DESIGN.md "Reclaim" terms): `rmpeer` only for a router
//! dead for a convergence bound, with the network whole for a bound; no
//! partition starts while a quarantine is running or a router is still
//! learning the ring; a restart without state only while the network is
//! whole. A killed process's in-flight messages die with its connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hostile;
mod ops;

use super::net::{NetConfig, Network};
use crate::id::PeerId;
use crate::ipam::digest::RingSummary;
use crate::ipam::message::{RING_DELTA_VERSION, RING_DIGEST_VERSION, RING_TITLES_VERSION};
use crate::ipam::signed::TestCrypto;
use crate::ipam::{AddrRange, Allocator, Config, Destination, Event, Init, MemStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(3);
const MAX_LIVE: usize = 12;

/// A message in flight: the sender's incarnation (a killed process's
/// messages die with it) and the bytes.
type InFlight = (u64, Vec<u8>);

/// A router's index on the emulated network.
fn index(id: PeerId) -> usize {
    id.0 as usize
}

struct SimNode {
    ipam: Allocator<MemStore>,
    incarnation: u64,
    pods: BTreeMap<String, IpAddr>,
    node_addr: Option<IpAddr>,
}

#[derive(Default, Debug)]
struct Stats {
    allocated: u64,
    try_again: u64,
    released: u64,
    joins: u64,
    kills: u64,
    restarts: u64,
    stateless: u64,
    partitions: u64,
    reclaims: u64,
    leaves: u64,
    donations: u64,
    messages: u64,
    /// Whole rings and ring deltas delivered (ring version 4 sends deltas).
    whole_rings: u64,
    deltas: u64,
    /// Forged rings refused, by forgery (`hostile.rs`).
    forged_refused: BTreeMap<String, u64>,
    /// Forged rings refused for their title, by counter (`title_*`).
    title_refused: BTreeMap<String, u64>,
    /// Donation requests refused by the drain limits.
    donation_refusals: u64,
}

struct Sim {
    seed: u64,
    step: u64,
    rng: StdRng,
    now: Instant,
    range: AddrRange,
    voters: BTreeSet<PeerId>,
    nodes: BTreeMap<PeerId, SimNode>,
    dead: BTreeMap<PeerId, Instant>,
    next_id: u64,
    net: Network<InFlight>,
    partition: Option<BTreeSet<PeerId>>,
    whole_since: Instant,
    pod_counter: u64,
    stats: Stats,
    /// Share of routers joining as pre-digest builds (ring version 1); a
    /// restart upgrades one half the time (a rolling upgrade).
    old_share: f64,
    ring_versions: BTreeMap<PeerId, u8>,
    /// The two older builds an old router is, half the time each: ring
    /// versions 1 and 2 by default (pre-digest, digest), 4 and 5 (buckets
    /// and keys, no titles) for a cluster upgrading to titles.
    old_builds: [u8; 2],
    /// The hostile member, if any (`hostile.rs`).
    hostile: Option<PeerId>,
}

impl Sim {
    fn new(seed: u64, old_share: f64, range: &str) -> Self {
        Self::with_old_builds(seed, old_share, range, [1, RING_DIGEST_VERSION])
    }

    /// [`Sim::new`], the older builds being ring versions `old_builds`.
    fn with_old_builds(seed: u64, old_share: f64, range: &str, old_builds: [u8; 2]) -> Self {
        let mut sim = Self {
            seed,
            step: 0,
            rng: StdRng::seed_from_u64(seed),
            now: Instant::now(),
            range: AddrRange::parse(range).unwrap(),
            voters: (1..=3).map(PeerId).collect(),
            nodes: BTreeMap::new(),
            dead: BTreeMap::new(),
            next_id: 1,
            net: Network::new(
                NetConfig {
                    min_delay: Duration::from_millis(1),
                    max_delay: Duration::from_millis(100),
                    loss: 0.01,
                    duplicate: 0.0,
                },
                seed,
            ),
            partition: None,
            whole_since: Instant::now(),
            pod_counter: 0,
            stats: Stats::default(),
            old_share,
            ring_versions: BTreeMap::new(),
            old_builds,
            hostile: None,
        };
        for _ in 0..3 {
            sim.join();
        }
        sim
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "ipam sim: seed={} step={}: {what}\n  replay with WEFT_SIM_SEED={}",
            self.seed, self.step, self.seed
        )
    }

    fn config(&self, id: PeerId) -> Config {
        let mut cfg = Config::new(
            id,
            self.range,
            Init::Voters(self.voters.clone()),
            TestCrypto::boxed(id),
        );
        cfg.gossip_interval = Duration::from_secs(1);
        cfg.gossip_max = BOUND;
        cfg.convergence_bound = BOUND;
        cfg.request_timeout = Duration::from_secs(1);
        // `WEFT_SIM_NO_DRAIN_LIMIT=1`: donations as before the drain limits
        // (an interval of zero never limits), to replay older seeds.
        cfg.donation_interval = if std::env::var_os("WEFT_SIM_NO_DRAIN_LIMIT").is_some() {
            Duration::ZERO
        } else {
            Duration::from_secs(2)
        };
        cfg.ring_version = self.ring_version(id);
        cfg
    }

    fn ring_version(&self, id: PeerId) -> u8 {
        self.ring_versions
            .get(&id)
            .copied()
            .unwrap_or(RING_TITLES_VERSION)
    }

    /// Picks a joining or restarting router's build: old with `old_share`
    /// (pre-digest or answering digests with its whole ring, one time in
    /// two), and an old one restarting is upgraded one time in two.
    fn pick_build(&mut self, id: PeerId) {
        // A mixed cluster is one being upgraded: its ring was initialised
        // by the older build. (A ring this build initialises requires
        // titles of every member from birth, `titles_latch.rs`: a build
        // before titles cannot share in it.)
        if self.old_share > 0.0
            && self.voters.contains(&id)
            && !self.ring_versions.contains_key(&id)
        {
            self.ring_versions.insert(id, self.old_builds[0]);
            return;
        }
        let old = if self.ring_version(id) < RING_TITLES_VERSION {
            !self.rng.gen_bool(0.5)
        } else {
            !self.ring_versions.contains_key(&id)
                && self.old_share > 0.0
                && self.rng.gen_bool(self.old_share)
        };
        let kept = self.ring_versions.get(&id).copied();
        let version = match old {
            // An old build restarting without an upgrade stays the same build.
            true if kept.is_some_and(|v| v < RING_TITLES_VERSION) => {
                kept.unwrap_or(self.old_builds[0])
            }
            true if self.rng.gen_bool(0.5) => self.old_builds[0],
            true => self.old_builds[1],
            false => RING_TITLES_VERSION,
        };
        self.ring_versions.insert(id, version);
    }

    fn connected(&self, a: PeerId, b: PeerId) -> bool {
        self.nodes.contains_key(&a)
            && self.nodes.contains_key(&b)
            && self
                .partition
                .as_ref()
                .is_none_or(|g| g.contains(&a) == g.contains(&b))
    }

    fn refresh_reachability(&mut self) {
        let ids: Vec<PeerId> = self.nodes.keys().copied().collect();
        for id in &ids {
            let reach: BTreeSet<PeerId> = ids
                .iter()
                .copied()
                .filter(|o| o != id && self.connected(*id, *o))
                .collect();
            if let Some(n) = self.nodes.get_mut(id) {
                n.ipam.set_reachable(reach);
            }
        }
    }

    /// Moves a node's outputs into the network and checks its events.
    fn drain(&mut self, id: PeerId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let inc = node.incarnation;
        let mut out = Vec::new();
        while let Some(t) = node.ipam.poll_transmit() {
            out.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = node.ipam.poll_event() {
            events.push(e);
        }
        for e in events {
            match e {
                Event::Alarm(a) => self.fail(format!("{id}: alarm {a:?}")),
                Event::RangeDonated { .. } => self.stats.donations += 1,
                Event::DonationRefused { .. } => self.stats.donation_refusals += 1,
                _ => {}
            }
        }
        let others: Vec<PeerId> = self.nodes.keys().copied().filter(|p| *p != id).collect();
        let mine = self.ring_version(id);
        for (to, bytes) in out {
            let targets = match to {
                Destination::Peer(p) => vec![p],
                Destination::Broadcast => others.clone(),
                // The negotiated version: the highest both speak (all speak 1).
                Destination::Neighbours { min, max } => others
                    .iter()
                    .copied()
                    .filter(|p| (min..=max).contains(&mine.min(self.ring_version(*p))))
                    .collect(),
                Destination::PeerSpeaking { peer, min } => {
                    let negotiated = mine.min(self.ring_version(peer));
                    if negotiated >= min {
                        vec![peer]
                    } else {
                        vec![]
                    }
                }
            };
            for t in targets {
                self.net
                    .send(self.now, index(id), index(t), (inc, bytes.clone()));
            }
        }
    }

    fn deliver(&mut self, from: PeerId, inc: u64, to: PeerId, bytes: &[u8]) {
        if !self.connected(from, to) || self.nodes.get(&from).is_none_or(|n| n.incarnation != inc) {
            return;
        }
        self.stats.messages += 1;
        match bytes.get(1) {
            Some(1) => self.stats.whole_rings += 1,
            Some(7) => self.stats.deltas += 1,
            _ => {}
        }
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&to) else {
            return;
        };
        if let Err(e) = node.ipam.handle_message(from, bytes, now) {
            self.fail(format!("{to} refused an honest message from {from}: {e}"));
        }
        self.drain(to);
    }

    /// Runs the network and timers for `dt` of virtual time.
    fn run_for(&mut self, dt: Duration) {
        let end = self.now + dt;
        loop {
            let msg_at = self.net.next_time();
            let timer_at = self
                .nodes
                .values()
                .filter_map(|n| n.ipam.poll_timeout())
                .map(|t| t.0)
                .min();
            let next = match (msg_at, timer_at) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(end),
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if msg_at == Some(next) {
                let d = self.net.pop().unwrap();
                let (inc, bytes) = d.msg;
                self.deliver(PeerId(d.from as u64), inc, PeerId(d.to as u64), &bytes);
            } else {
                let due: Vec<PeerId> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.ipam.poll_timeout().is_some_and(|t| t.0 <= self.now))
                    .map(|(id, _)| *id)
                    .collect();
                for id in due {
                    let now = self.now;
                    if let Err(e) = self.nodes.get_mut(&id).unwrap().ipam.handle_timeout(now) {
                        self.fail(format!("{id} timeout: {e}"));
                    }
                    self.drain(id);
                }
            }
        }
        self.now = end;
    }

    fn one_step(&mut self) {
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=39 => {
                let dt = Duration::from_millis(self.rng.gen_range(0..300));
                self.run_for(dt);
            }
            40..=61 => self.allocate(),
            62..=69 => self.release(false),
            70..=74 => self.release(true),
            75..=77 if self.nodes.len() < MAX_LIVE => self.join(),
            78 if self.nodes.len() > 3 => {
                let id = self.pick_live().unwrap();
                if Some(id) == self.hostile {
                    // The hostile member stays, so that it keeps trying.
                    return;
                }
                self.nodes.remove(&id);
                self.dead.insert(id, self.now);
                if let Some(g) = self.partition.as_mut() {
                    g.remove(&id);
                }
                self.refresh_reachability();
                self.stats.kills += 1;
            }
            79..=81 => {
                let id = self.pick_live().unwrap();
                self.restart(id, true);
                self.stats.restarts += 1;
            }
            82 if self.partition.is_none() => {
                let id = self.pick_live().unwrap();
                self.restart(id, false);
                self.stats.stateless += 1;
            }
            83 if self.partition.is_none()
                && !self.quarantine_or_learning()
                && self.nodes.len() > 1 =>
            {
                let ids: Vec<PeerId> = self.nodes.keys().copied().collect();
                let cut = self.rng.gen_range(1..ids.len());
                self.partition = Some(ids[..cut].iter().copied().collect());
                self.refresh_reachability();
                self.stats.partitions += 1;
            }
            84..=86 if self.partition.is_some() => {
                self.partition = None;
                self.whole_since = self.now;
                self.refresh_reachability();
                let ids: Vec<PeerId> = self.nodes.keys().copied().collect();
                let now = self.now;
                for a in &ids {
                    for b in &ids {
                        if a != b {
                            self.nodes.get_mut(a).unwrap().ipam.handle_peer_up(*b, now);
                        }
                    }
                    self.drain(*a);
                }
            }
            87..=89 => self.rmpeer(),
            90 => self.leave(),
            91..=96 if self.hostile.is_some() => self.hostile_step(),
            _ => self.run_for(Duration::from_millis(50)),
        }
    }

    /// Invariant 1, from every live router's own view.
    fn check(&self) {
        let mut owned: Vec<(u128, u128, PeerId)> = Vec::new();
        for (id, n) in &self.nodes {
            for (a, b) in n.ipam.allocatable_ranges(self.now) {
                let lo = self.range.offset(a).unwrap();
                let hi = self.range.offset(b).unwrap();
                owned.push((lo, hi, *id));
            }
        }
        owned.sort();
        for w in owned.windows(2) {
            if w[1].0 <= w[0].1 {
                self.fail(format!(
                    "offsets {}..={} of {} overlap {}..={} of {}",
                    w[0].0, w[0].1, w[0].2, w[1].0, w[1].1, w[1].2
                ));
            }
        }
        let mut seen: BTreeMap<IpAddr, PeerId> = BTreeMap::new();
        for (id, n) in &self.nodes {
            for (_, a) in n.ipam.allocations() {
                if let Some(other) = seen.insert(a, *id) {
                    self.fail(format!("{a} allocated by {other} and {id}"));
                }
            }
            for (cid, a) in &n.pods {
                if n.ipam.lookup(cid, "eth0") != Some(*a) {
                    self.fail(format!("{id} lost pod {cid} at {a}"));
                }
            }
        }
    }
}

fn run(seed: u64, steps: u64, old_share: f64) -> Stats {
    run_with(seed, steps, old_share, false)
}

/// `hostile`: the fourth router to join is a hostile member (`hostile.rs`).
fn run_with(seed: u64, steps: u64, old_share: f64, hostile: bool) -> Stats {
    run_in("10.32.0.0/22", seed, steps, old_share, hostile)
}

/// [`run_with`] on the cluster range `range` (of either family).
fn run_in(range: &str, seed: u64, steps: u64, old_share: f64, hostile: bool) -> Stats {
    let mut sim = Sim::new(seed, old_share, range);
    if hostile {
        sim.hostile = Some(PeerId(sim.next_id));
        sim.join();
    }
    sim.run(steps)
}

impl Sim {
    /// Runs `steps` random steps, checking the invariants after each.
    fn steps(&mut self, steps: u64) {
        for _ in 0..steps {
            self.one_step();
            self.check();
            self.step += 1;
        }
    }

    /// Runs `steps` random steps, heals, settles and checks convergence.
    fn run(mut self, steps: u64) -> Stats {
        self.steps(steps);
        // Heal and settle: everyone converges on one ring.
        self.partition = None;
        self.refresh_reachability();
        self.run_for(BOUND * 4);
        self.check();
        let rings: Vec<_> = self
            .nodes
            .values()
            .filter_map(|n| n.ipam.ring().map(|r| r.entries().clone()))
            .collect();
        if rings.windows(2).any(|w| w[0] != w[1]) {
            self.fail("rings did not converge after healing");
        }
        // Records and tombstones too: the whole ring, as its summary says.
        // A latch set anywhere reached everyone (`titles_latch.rs`).
        let latched = self
            .nodes
            .values()
            .filter(|n| n.ipam.titles_required_of_all())
            .count();
        if latched > 0 && latched < self.nodes.len() {
            self.fail(format!(
                "the titles latch reached {latched} of {} routers after healing",
                self.nodes.len()
            ));
        }
        let summaries: Vec<RingSummary> = self
            .nodes
            .values()
            .filter_map(|n| n.ipam.ring().map(RingSummary::of))
            .collect();
        if summaries.windows(2).any(|w| w[0] != w[1]) {
            self.fail(format!(
                "ring summaries differ after healing: {summaries:?}"
            ));
        }
        std::mem::take(&mut self.stats)
    }
}

/// A number from the environment (`WEFT_SIM_SEED`, `WEFT_SIM_STEPS`).
fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

#[test]
fn random_joins_leaves_restarts_partitions_donations_and_reclaims_never_double_allocate() {
    let steps = env_u64("WEFT_SIM_STEPS").unwrap_or(10_000);
    let seeds: Vec<u64> = match env_u64("WEFT_SIM_SEED") {
        Some(seed) => vec![seed],
        // A debug build runs one seed (about two minutes); `cargo test --release` runs four.
        None if cfg!(debug_assertions) => vec![1],
        None => vec![1, 2, 3, 4],
    };
    for seed in seeds {
        eprintln!("ipam sim: seed={seed} steps={steps} (replay with WEFT_SIM_SEED={seed})");
        let stats = run(seed, steps, 0.0);
        eprintln!("ipam sim: seed={seed} ok: {stats:?}");
        assert!(
            stats.allocated > 100 && stats.donations > 0 && stats.reclaims > 0 && stats.leaves > 0,
            "{stats:?}"
        );
        // The bucket exchange carried differences (whole rings still carry
        // every change of ownership, and this cluster changes all the time).
        assert!(stats.deltas > 0, "{stats:?}");
    }
}

/// A rolling upgrade: routers join as pre-digest builds (full ring every
/// interval, digests refused) or digest builds, and old ones restarting are
/// upgraded; same invariants, and the rings still converge after healing.
#[test]
fn a_cluster_mixing_pre_digest_and_digest_routers_never_double_allocates_and_converges() {
    let steps = env_u64("WEFT_SIM_STEPS").unwrap_or(3_000);
    let seed = env_u64("WEFT_SIM_SEED").unwrap_or(5);
    eprintln!("ipam sim (mixed builds): seed={seed} steps={steps}");
    let stats = run(seed, steps, 0.5);
    eprintln!("ipam sim (mixed builds): seed={seed} ok: {stats:?}");
    assert!(stats.allocated > 50 && stats.joins > 3, "{stats:?}");
}

/// A rolling upgrade to titles: the ring is initialised by builds that send
/// no titles (ring versions 4 and 5: buckets, keys), half the routers join
/// as such builds, old ones restarting are upgraded half the time. The
/// ring is not latched (`titles_latch.rs`), so every router judges jumps
/// as before titles, counted. Same invariants, no honest message refused,
/// convergence after healing.
#[test]
fn a_cluster_upgrading_to_titles_never_refuses_an_honest_ring_and_converges() {
    let steps = env_u64("WEFT_SIM_STEPS").unwrap_or(4_000);
    let seeds: Vec<u64> = match env_u64("WEFT_SIM_SEED") {
        Some(seed) => vec![seed],
        None => vec![1, 11],
    };
    for seed in seeds {
        let old_builds = [RING_DELTA_VERSION, crate::ipam::message::RING_KEYS_VERSION];
        let mut sim = Sim::with_old_builds(seed, 0.5, "10.32.0.0/22", old_builds);
        sim.steps(steps);
        let unlatched = sim
            .nodes
            .values()
            .all(|n| n.ipam.ring().is_none_or(|r| !r.titles_required()));
        assert!(
            unlatched,
            "a ring an older build initialised is never latched"
        );
        let stats = sim.run(0);
        eprintln!("ipam sim (upgrading to titles): seed={seed} ok: {stats:?}");
        assert!(stats.allocated > 50 && stats.joins > 3, "{stats:?}");
    }
}

/// A hostile member forges ring entries in other routers' names, takes
/// their ranges with and without version jumps, saturates a version,
/// tombstones a live router, rewrites a record and floods donation
/// requests: every forgery is refused and changes nothing, the drain is
/// limited, and the invariants (no address to two live pods, no range
/// allocatable by two routers) hold throughout.
#[test]
fn a_hostile_member_is_refused_every_forgery_and_the_invariants_hold() {
    let steps = env_u64("WEFT_SIM_STEPS").unwrap_or(3_000);
    let seed = env_u64("WEFT_SIM_SEED").unwrap_or(7);
    let stats = run_with(seed, steps, 0.0, true);
    eprintln!("ipam sim (hostile member): seed={seed} ok: {stats:?}");
    assert!(stats.forged_refused.len() >= 5, "{stats:?}");
    // The give-away, with and without a self-made title, refused by title
    // wherever it was sent (titles are required by default).
    for kind in ["GiveAway", "GiveAwayTitled"] {
        assert!(stats.forged_refused.get(kind) > Some(&0), "{stats:?}");
    }
    assert!(
        stats.title_refused.get("title_missing") > Some(&0),
        "{stats:?}"
    );
    assert!(
        stats.title_refused.get("title_unconnected") > Some(&0),
        "{stats:?}"
    );
    assert!(stats.donation_refusals > 0, "{stats:?}");
    assert!(stats.allocated > 50, "{stats:?}");
}

/// The ring is family-agnostic (offsets are u128, issue 19): the same
/// random joins, kills, restarts with and without state, partitions,
/// allocations, donations, `rmpeer` reclaims and leaves on IPv6 ranges, a
/// /118 as small as the IPv4 runs' /22 and a whole /64, with the same
/// invariants and convergence after healing.
#[test]
fn the_same_churn_on_ipv6_ranges_never_double_allocates_and_converges() {
    let steps = env_u64("WEFT_SIM_STEPS").unwrap_or(4_000);
    let seed = env_u64("WEFT_SIM_SEED").unwrap_or(11);
    for range in ["fd00:32::/118", "fd00:32::/64"] {
        let stats = run_in(range, seed, steps, 0.0, false);
        eprintln!("ipam sim ({range}): seed={seed} steps={steps} ok: {stats:?}");
        assert!(
            stats.allocated > 50
                && stats.donations > 0
                && stats.reclaims > 0
                && stats.leaves > 0
                && stats.restarts > 0,
            "{range}: {stats:?}"
        );
    }
}
