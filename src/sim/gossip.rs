//! N routers, each a [`Gossip`] core plus a [`ConnectionMaker`], over the
//! emulated network. The harness plays the drivers: a dial that reaches a
//! live router on the same side of every partition becomes a connection on
//! both ends; `establish_delay` later (the UDP heartbeat) it is marked
//! established unless UDP is blocked on that pair. Crashes and partitions
//! take connections down on the surviving ends.
//!
//! After every step the invariants are checked for the router that stepped
//! (when `check_invariants`): no router holds a version of another router's
//! entry that the owner never produced, and honest frames always decode.

use super::net::{NetConfig, Network};
use crate::crypto::{Identity, SigningKey};
use crate::gossip::{
    ConnectionMaker, ConnectionMakerConfig, Gossip, GossipConfig, GossipEvent, PeerInfo,
};
use crate::id::PeerId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod faults;
mod rotation;

/// What a simulation looks like.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of routers.
    pub routers: usize,
    /// The first `seeds` routers' addresses are every router's seed list.
    pub seeds: usize,
    /// Link behaviour.
    pub net: NetConfig,
    /// Gossip knobs.
    pub gossip: GossipConfig,
    /// Dialling knobs.
    pub maker: ConnectionMakerConfig,
    /// From connection up to established (the UDP heartbeat).
    pub establish_delay: Duration,
    /// The share of dials that fail although the target is up (a SYN lost
    /// in a cold-start burst, issue 16).
    pub dial_failure: f64,
    /// Keep a [`DialRecord`] of every dial (cold-start tests).
    pub record_dials: bool,
    /// Count the entries sent, per owner ([`GossipSim::entries_sent`]).
    pub record_entries: bool,
    /// Check invariants after every step.
    pub check_invariants: bool,
    /// Give up (panic, printing the seed) after this many steps.
    pub max_steps: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            routers: 10,
            seeds: 3,
            net: NetConfig::default(),
            gossip: GossipConfig::default(),
            maker: ConnectionMakerConfig::default(),
            establish_delay: Duration::from_millis(100),
            dial_failure: 0.0,
            record_dials: false,
            record_entries: false,
            check_invariants: true,
            max_steps: 50_000_000,
        }
    }
}

/// Messages on the emulated network.
#[derive(Clone, Debug)]
pub enum Wire {
    /// A topology frame.
    Gossip(Vec<u8>),
    /// The outcome of a dial made by the receiver (harness event).
    Dial(SocketAddr),
    /// The heartbeat with the other end got through (harness event).
    Establish(usize),
    /// The sender's link moved to its new key (the rekey of an identity
    /// rotation reached the receiver).
    Rekeyed(Box<crate::crypto::rotation::Rotation>),
}

/// One dial, as its outcome reached the dialler (`record_dials`).
#[derive(Clone, Copy, Debug)]
pub struct DialRecord {
    /// When the outcome arrived (a simulated RTT after the dial).
    pub at: Instant,
    /// The dialling router.
    pub from: usize,
    /// The router at the dialled address, if any.
    pub to: Option<usize>,
    /// A connection came up (or already was, dialled from the other end).
    pub ok: bool,
}

/// Peer IDs are already hash outputs: the invariant check looks one up per
/// entry per step, so skip SipHash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One simulated router.
pub struct SimRouter {
    /// Its identity.
    pub info: PeerInfo,
    /// Its key (kept for restarts, which sign with the same identity).
    pub identity: Identity,
    /// `None` while crashed.
    pub gossip: Option<Gossip>,
    /// Its dialling plan.
    pub maker: ConnectionMaker,
    /// Entries it refused.
    pub refused: u64,
}

/// The whole simulation.
pub struct GossipSim {
    /// Virtual time.
    pub now: Instant,
    /// When the simulation started.
    pub start: Instant,
    /// The network.
    pub net: Network<Wire>,
    /// The routers, by index.
    pub routers: Vec<SimRouter>,
    /// Frame bytes sent per router.
    pub bytes_sent: Vec<u64>,
    /// Frames sent per router (each a control message on the wire).
    pub frames_sent: Vec<u64>,
    /// Steps taken.
    pub steps: u64,
    /// Frames that failed to decode at an honest receiver.
    pub decode_errors: u64,
    /// The seed (printed on failure).
    pub seed: u64,
    /// Every dial, when `record_dials`.
    pub dials: Vec<DialRecord>,
    /// Entries sent in updates, per ID, when `record_entries`.
    pub entries_sent: HashMap<PeerId, u64>,
    config: SimConfig,
    links: HashSet<(usize, usize)>,
    udp_blocked: HashSet<(usize, usize)>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    addr_of: HashMap<SocketAddr, usize>,
    idx_of: HashMap<PeerId, usize, BuildHasherDefault<IdHasher>>,
    /// `(to, from)` → the ID `to` still names `from` by (a rotation whose
    /// rekey has not reached `to` yet).
    known_as: HashMap<(usize, usize), PeerId>,
    max_version: Vec<u64>,
    maker_deadline: Vec<Option<Instant>>,
    seeds: Vec<SocketAddr>,
    rng: StdRng,
}

impl GossipSim {
    /// Builds `config.routers` routers with keys and names from `seed`; all
    /// start at once.
    pub fn new(config: SimConfig, seed: u64) -> Self {
        Self::with_identities(config, seed, Vec::new())
    }

    /// As [`Self::new`], but the first routers get `identities` (a test that
    /// needs particular keys, e.g. two with the same short ID) and the rest
    /// keys from `seed`.
    pub fn with_identities(config: SimConfig, seed: u64, identities: Vec<Identity>) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Instant::now();
        let mut given = identities.into_iter();
        let keyed: Vec<(PeerInfo, Identity)> = (0..config.routers)
            .map(|i| {
                let identity = given.next().unwrap_or_else(|| Identity::generate(&mut rng));
                let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 6783));
                let info = PeerInfo {
                    id: identity.id(),
                    name: format!("router-{i}"),
                    public_key: identity.public_key(),
                    addresses: vec![addr],
                };
                (info, identity)
            })
            .collect();
        let infos: Vec<PeerInfo> = keyed.iter().map(|(info, _)| info.clone()).collect();
        let seeds: Vec<SocketAddr> = infos
            .iter()
            .take(config.seeds)
            .map(|i| i.addresses[0])
            .collect();
        let mut sim = Self {
            now: start,
            start,
            net: Network::new(config.net.clone(), rng.r#gen()),
            routers: Vec::new(),
            bytes_sent: vec![0; config.routers],
            frames_sent: vec![0; config.routers],
            steps: 0,
            decode_errors: 0,
            seed,
            dials: Vec::new(),
            entries_sent: HashMap::new(),
            links: HashSet::new(),
            udp_blocked: HashSet::new(),
            timers: BinaryHeap::new(),
            addr_of: infos
                .iter()
                .enumerate()
                .map(|(i, p)| (p.addresses[0], i))
                .collect(),
            idx_of: infos.iter().enumerate().map(|(i, p)| (p.id, i)).collect(),
            known_as: HashMap::new(),
            max_version: vec![0; config.routers],
            maker_deadline: vec![None; config.routers],
            seeds,
            rng,
            config,
        };
        for (info, identity) in keyed {
            let maker = ConnectionMaker::with_config(
                info.addresses.clone(),
                sim.seeds.clone(),
                sim.rng.r#gen(),
                sim.config.maker.clone(),
            );
            let gossip = Gossip::new(
                info.clone(),
                SigningKey::from_identity(&identity),
                sim.config.gossip.clone(),
                sim.rng.r#gen(),
                start,
            );
            sim.routers.push(SimRouter {
                info,
                identity,
                gossip: Some(gossip),
                maker,
                refused: 0,
            });
        }
        for i in 0..sim.routers.len() {
            sim.drain(i, true);
        }
        sim
    }

    /// Takes one step: the earliest delivery or timer. `false` when idle.
    pub fn step(&mut self) -> bool {
        self.steps += 1;
        if self.steps > self.config.max_steps {
            panic!(
                "simulation exceeded {} steps (seed {})",
                self.config.max_steps, self.seed
            );
        }
        let net_t = self.net.next_time();
        let timer_t = self.timers.peek().map(|Reverse((t, _))| *t);
        match (net_t, timer_t) {
            (None, None) => false,
            (Some(n), t) if t.is_none_or(|t| n <= t) => {
                if let Some(d) = self.net.pop() {
                    self.now = self.now.max(d.at);
                    self.deliver(d.from, d.to, d.msg);
                }
                true
            }
            _ => {
                if let Some(Reverse((t, i))) = self.timers.pop() {
                    self.now = self.now.max(t);
                    self.fire(i, t);
                }
                true
            }
        }
    }

    /// Steps until `until` in virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.next_time().is_some_and(|t| t <= end) {
            self.step();
        }
        self.now = self.now.max(end);
    }

    /// Steps until [`Self::converged`] (checked every `check` of virtual
    /// time) or `limit` passes. Returns the time taken, or `None`.
    pub fn run_until_converged(&mut self, limit: Duration, check: Duration) -> Option<Duration> {
        let begin = self.now;
        while self.now < begin + limit {
            if self.converged() {
                return Some(self.now - begin);
            }
            self.run_for(check);
        }
        self.converged().then(|| self.now - begin)
    }

    /// Every live router holds exactly the live routers of its side of the
    /// partition, each at its owner's current version.
    pub fn converged(&self) -> bool {
        let mut expected: HashMap<u32, (u32, u64)> = HashMap::new();
        let group = |i: usize| -> u32 {
            (0..self.routers.len())
                .find(|j| self.net.can_talk(i, *j))
                .unwrap_or(0) as u32
        };
        let groups: Vec<u32> = (0..self.routers.len()).map(group).collect();
        for (i, r) in self.routers.iter().enumerate() {
            let Some(g) = &r.gossip else { continue };
            let e = g.my_entry();
            let slot = expected.entry(groups[i]).or_default();
            slot.0 += 1;
            slot.1 = slot
                .1
                .wrapping_add(crate::gossip::topology::pair_hash(e.id, e.version));
        }
        self.routers.iter().enumerate().all(|(i, r)| {
            r.gossip.as_ref().is_none_or(|g| {
                !g.has_pending_changes() && Some(&g.summary()) == expected.get(&groups[i])
            })
        })
    }

    fn next_time(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|Reverse((t, _))| *t);
        match (self.net.next_time(), t) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Wire) {
        if self.routers[to].gossip.is_none() {
            return;
        }
        match msg {
            Wire::Gossip(bytes) => {
                if !self.links.contains(&(from.min(to), from.max(to))) {
                    return;
                }
                let from_id = self.known_id(to, from);
                let now = self.now;
                if let Some(g) = self.routers[to].gossip.as_mut()
                    && g.handle_message(from_id, &bytes, now).is_err()
                {
                    self.decode_errors += 1;
                }
                self.drain(to, false);
            }
            Wire::Dial(addr) => self.dial_outcome(to, addr),
            Wire::Rekeyed(rotation) => self.rekeyed(from, to, &rotation),
            Wire::Establish(other) => {
                let key = (to.min(other), to.max(other));
                if self.links.contains(&key) && !self.udp_blocked.contains(&key) {
                    self.set_established(key.0, key.1, true);
                }
            }
        }
    }

    fn dial_outcome(&mut self, a: usize, addr: SocketAddr) {
        let now = self.now;
        let target = self.addr_of.get(&addr).copied();
        let lost = self.config.dial_failure > 0.0 && self.rng.gen_bool(self.config.dial_failure);
        let ok = target.filter(|_| !lost).filter(|b| {
            *b != a
                && self.routers[*b].gossip.is_some()
                && self.net.can_talk(a, *b)
                && self.routers[*b].maker.accepts_inbound()
        });
        if self.config.record_dials {
            self.dials.push(DialRecord {
                at: now,
                from: a,
                to: target,
                ok: ok.is_some(),
            });
        }
        let Some(b) = ok else {
            self.routers[a].maker.dial_failed(addr, now);
            self.drain(a, true);
            return;
        };
        let key = (a.min(b), a.max(b));
        let (ia, ib) = (self.routers[a].info.clone(), self.routers[b].info.clone());
        self.routers[a].maker.connected(ib.id, Some(addr), now);
        if self.links.insert(key) {
            self.routers[b].maker.connected(ia.id, None, now);
            if let Some(g) = self.routers[a].gossip.as_mut() {
                g.connection_up(ib, true, now);
            }
            if let Some(g) = self.routers[b].gossip.as_mut() {
                g.connection_up(ia, false, now);
            }
            let at = now + self.config.establish_delay;
            self.net.schedule(at, b, a, Wire::Establish(b));
            self.drain(b, true);
        }
        self.drain(a, true);
    }

    fn set_established(&mut self, a: usize, b: usize, established: bool) {
        let now = self.now;
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.known_id(x, y);
            if let Some(g) = self.routers[x].gossip.as_mut() {
                g.set_established(peer, established, now);
            }
            self.drain(x, false);
        }
    }

    fn link_down(&mut self, a: usize, b: usize) {
        self.links.remove(&(a.min(b), a.max(b)));
        let now = self.now;
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.known_id(x, y);
            self.known_as.remove(&(x, y));
            if let Some(g) = self.routers[x].gossip.as_mut() {
                g.connection_down(peer, now);
                self.routers[x].maker.disconnected(peer, now);
                self.drain(x, true);
            }
        }
    }

    fn fire(&mut self, i: usize, t: Instant) {
        // Lazily invalidated heap: skip entries later than nothing is due.
        if self.deadline(i).is_none_or(|d| d > t) {
            return;
        }
        let now = self.now;
        if let Some(g) = self.routers[i].gossip.as_mut() {
            g.handle_timeout(now);
        }
        self.drain(i, true);
    }

    fn deadline(&self, i: usize) -> Option<Instant> {
        let r = &self.routers[i];
        let g = r.gossip.as_ref()?.poll_timeout().map(|(t, _)| t);
        match (g, self.maker_deadline[i]) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drains router `i`'s outputs into the network, feeds its events to
    /// its connection maker, starts its dials and re-arms its timer.
    fn drain(&mut self, i: usize, maker_touched: bool) {
        let now = self.now;
        let Some(g) = self.routers[i].gossip.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = g.poll_transmit() {
            out.push(t);
        }
        let mut learned = Vec::new();
        let mut refused = 0;
        while let Some(e) = g.poll_event() {
            match e {
                GossipEvent::PeerAdded { id, .. } => {
                    let addrs = g.entry(id).map(|e| e.addresses.clone()).unwrap_or_default();
                    learned.push((id, Some(addrs)));
                }
                GossipEvent::PeerRemoved { id, .. } => learned.push((id, None)),
                GossipEvent::EntryRefused { .. } => refused += 1,
                GossipEvent::ShortIdChanged { .. }
                | GossipEvent::Rotated { .. }
                | GossipEvent::TopologyChanged => {}
            }
        }
        let version = g.my_entry().version;
        self.max_version[i] = self.max_version[i].max(version);
        let learned_any = !learned.is_empty();
        let r = &mut self.routers[i];
        r.refused += refused;
        for (id, addrs) in learned {
            match addrs {
                Some(a) => r.maker.learn(id, &a, now),
                None => r.maker.unlearn(id),
            }
        }
        let mut dials = Vec::new();
        // `poll_dial` and `poll_timeout` scan every target: only after
        // something the connection maker sees has changed.
        if maker_touched || learned_any {
            while let Some(addr) = r.maker.poll_dial(now) {
                dials.push(addr);
            }
            self.maker_deadline[i] = r.maker.poll_timeout();
        }
        for (peer, bytes) in out {
            let Some(&j) = self.idx_of.get(&peer) else {
                continue;
            };
            self.bytes_sent[i] += bytes.len() as u64;
            self.frames_sent[i] += 1;
            if self.config.record_entries {
                self.count_entries(&bytes);
            }
            self.net.send(now, i, j, Wire::Gossip(bytes));
        }
        for addr in dials {
            let at = now + 2 * self.net.delay();
            self.net.schedule(at, i, i, Wire::Dial(addr));
        }
        if let Some(t) = self.deadline(i) {
            // Progress is guaranteed: a deadline in the past fires next step.
            self.timers.push(Reverse((t.max(now), i)));
        }
        if self.config.check_invariants {
            self.check(i);
        }
    }

    fn count_entries(&mut self, frame: &[u8]) {
        if let Ok(crate::gossip::message::Message::Update(u)) =
            crate::gossip::message::Message::decode(frame)
        {
            for e in u.entries.iter().filter_map(|e| e.claim().ok()) {
                *self.entries_sent.entry(e.id).or_default() += 1;
            }
        }
    }

    /// Invariants for router `i` (DESIGN.md "Identity": a router only ever
    /// changes its own entry; an entry only moves to a newer version).
    fn check(&self, i: usize) {
        let Some(g) = &self.routers[i].gossip else {
            return;
        };
        for e in g.peers() {
            let Some(&owner) = self.idx_of.get(&e.id) else {
                panic!(
                    "router {i} holds an entry for unknown id {} (seed {})",
                    e.id, self.seed
                );
            };
            assert!(
                e.version <= self.max_version[owner],
                "router {i} holds {}@{} but its owner only reached {} (seed {})",
                e.id,
                e.version,
                self.max_version[owner],
                self.seed
            );
        }
        assert_eq!(
            self.decode_errors, 0,
            "an honest frame failed to decode (seed {})",
            self.seed
        );
    }
}

/// Two identities whose preferred short IDs collide, ground from seeded keys
/// (a birthday search: a few hundred keys; deterministic).
pub fn clashing_identities() -> (Identity, Identity) {
    let mut seen = HashMap::new();
    let mut seed = 0u64;
    loop {
        let identity = Identity::generate(&mut StdRng::seed_from_u64(seed));
        let short = crate::id::ShortId::preferred(identity.id());
        if let Some(other) = seen.insert(short, identity.clone()) {
            return (other, identity);
        }
        seed += 1;
    }
}
