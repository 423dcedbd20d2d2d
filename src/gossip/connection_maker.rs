//! `ConnectionMaker`: who to dial and when (sans-IO).
//!
//! Targets are the seeds (`--peer`, `weft connect`) and every router learned
//! from the topology (full mesh up to `max_connections`; multi-hop routes
//! cover the rest, DESIGN.md "Wire rules"). Each target keeps its own retry
//! interval, as in weaveworks/mesh `connection_maker.go`:
//!
//! - the first attempt at a learned router waits a random 0–`initial` so a
//!   whole cluster learning of a new router does not dial it in one instant;
//! - after a failure or a short-lived connection the interval doubles from
//!   `initial` (1 s) up to a cap of 30 s, for seeds and learned routers
//!   alike (issue 16: mesh's 6 min left a pair whose first dial lost a SYN
//!   relayed for minutes after a cold start); each wait is drawn from
//!   75–100 % of the interval, so the cap is a promise ("tried at least
//!   every 30 s") and a cluster-wide restart does not synchronise;
//! - a learned router's addresses are tried in order of how alike they
//!   look to mine (the longest common prefix first: the private address of
//!   a router in my own site before its public ones, DESIGN.md "Endpoints,
//!   NAT and paths"); a failure moves to the next one, and the one that
//!   worked is tried first next time;
//! - a connection that stayed up `healthy_after` (1 min) resets the interval;
//! - seeds are retried forever; a seed that is one of my own addresses is
//!   recognised and never dialled (also when it is learned later, through
//!   [`ConnectionMaker::add_own`]: my public address behind 1:1 NAT); a
//!   seed address listed in a learned router's entry belongs to it, so the
//!   seed is not dialled while that router is connected;
//! - a seed may come with other addresses of the same router
//!   ([`ConnectionMaker::add_seed_with`]; `--peers-from-kube`: a Node's
//!   InternalIP and ExternalIP): they are the candidates of one target,
//!   tried in the same most-alike-first order as a learned router's, so
//!   one router is dialled at one address at a time, whichever works.
//!
//! Use: feed `learn`/`unlearn` from gossip events, `connected`/`disconnected`
//! /`dial_failed` from the driver, then call `poll_dial(now)` until `None` and
//! sleep until `poll_timeout()`.

use crate::id::{FollowRotation, PeerId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Back-off and size knobs.
#[derive(Clone, Debug)]
pub struct ConnectionMakerConfig {
    /// First retry interval.
    pub initial: Duration,
    /// Retry interval cap for learned routers (issue 16: at most 30 s).
    pub max_interval: Duration,
    /// Retry interval cap for seeds.
    pub max_seed_interval: Duration,
    /// A connection up this long resets the interval.
    pub healthy_after: Duration,
    /// A dial not reported within this time counts as failed.
    pub dial_timeout: Duration,
    /// Most connections (up or being dialled) this router makes.
    pub max_connections: usize,
    /// The underlay families this router has: a learned router's
    /// addresses of another family are never dialled (issue 19: a pair
    /// uses a family both have).
    pub families: crate::underlay::Families,
}

impl Default for ConnectionMakerConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            max_seed_interval: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            dial_timeout: Duration::from_secs(15),
            max_connections: 200,
            families: crate::underlay::Families::BOTH,
        }
    }
}

/// What `connected`/`disconnected` refer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A router, known by id once the handshake is done.
    Peer(PeerId),
    /// An address that was dialled (or a seed).
    Addr(SocketAddr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// `None`: due at the first poll (seeds given before any `now`).
    Idle {
        next_try: Option<Instant>,
    },
    Dialling {
        since: Instant,
        addr: SocketAddr,
    },
    Connected {
        since: Instant,
    },
}

#[derive(Clone, Debug)]
struct Target {
    addresses: Vec<SocketAddr>,
    next_address: usize,
    seed: bool,
    interval: Duration,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    Seed(SocketAddr),
    Peer(PeerId),
}

/// The dialling plan. See the module docs.
pub struct ConnectionMaker {
    config: ConnectionMakerConfig,
    own: HashSet<SocketAddr>,
    targets: BTreeMap<Key, Target>,
    /// Which router answered at a seed address (so it is not dialled twice).
    seed_owner: HashMap<SocketAddr, PeerId>,
    /// The other addresses a seed was given with, to that seed.
    seed_also: HashMap<SocketAddr, SocketAddr>,
    connected: HashSet<PeerId>,
    rng: StdRng,
    now_hint: Option<Instant>,
}

impl ConnectionMaker {
    /// A plan with the default configuration.
    pub fn new(own_addresses: Vec<SocketAddr>, seeds: Vec<SocketAddr>, seed: u64) -> Self {
        Self::with_config(own_addresses, seeds, seed, ConnectionMakerConfig::default())
    }

    /// A plan with explicit knobs. Seeds are dialled at the first `poll_dial`.
    pub fn with_config(
        own_addresses: Vec<SocketAddr>,
        seeds: Vec<SocketAddr>,
        seed: u64,
        config: ConnectionMakerConfig,
    ) -> Self {
        let mut maker = Self {
            config,
            own: own_addresses.into_iter().collect(),
            targets: BTreeMap::new(),
            seed_owner: HashMap::new(),
            seed_also: HashMap::new(),
            connected: HashSet::new(),
            rng: StdRng::seed_from_u64(seed),
            now_hint: None,
        };
        for s in seeds {
            maker.add_seed_at(s, None, None);
        }
        maker
    }

    /// Adds a seed (`weft connect`), dialled at once. My own address is ignored.
    pub fn add_seed(&mut self, addr: SocketAddr, now: Instant) {
        self.add_seed_at(addr, None, Some(now));
    }

    /// Adds the seed `addr` (or changes it) with `also`, other addresses
    /// of the same router: one target whose candidates are tried
    /// most-alike first, one at a time. The seed keeps its name `addr`
    /// (`forget`, the voter slot). My own addresses are left out; a seed
    /// at my own address is ignored.
    pub fn add_seed_with(&mut self, addr: SocketAddr, also: &[SocketAddr], now: Instant) {
        self.add_seed_at(addr, Some(also), Some(now));
    }

    fn add_seed_at(&mut self, addr: SocketAddr, also: Option<&[SocketAddr]>, now: Option<Instant>) {
        if self.is_own(addr) {
            return;
        }
        let fresh = Target {
            addresses: vec![addr],
            next_address: 0,
            seed: true,
            interval: self.config.initial,
            state: State::Idle { next_try: now },
        };
        let Some(also) = also else {
            self.targets.entry(Key::Seed(addr)).or_insert(fresh);
            return;
        };
        let mut addresses = vec![addr];
        for a in also.iter().take(15) {
            if !addresses.contains(a) && !self.is_own(*a) && self.config.families.reach(*a) {
                addresses.push(*a);
            }
        }
        addresses.sort_by_key(|a| std::cmp::Reverse(self.likeness(*a)));
        self.seed_also.retain(|_, seed| *seed != addr);
        for a in addresses.iter().filter(|a| **a != addr) {
            self.seed_also.insert(*a, addr);
        }
        let target = self.targets.entry(Key::Seed(addr)).or_insert(fresh);
        // Given again: keep trying first the address that was next.
        let current = (target.addresses.len() > 1)
            .then(|| target.addresses.get(target.next_address).copied())
            .flatten();
        target.next_address = current
            .and_then(|c| addresses.iter().position(|a| *a == c))
            .unwrap_or(0);
        target.addresses = addresses;
    }

    /// Removes a seed (`weft forget`), with the other addresses it was
    /// given with. A router learned at that address from the topology is
    /// still dialled as a learned router.
    pub fn forget(&mut self, addr: SocketAddr) {
        self.targets.remove(&Key::Seed(addr));
        self.seed_owner.remove(&addr);
        self.seed_also.retain(|_, seed| *seed != addr);
    }

    /// The seeds (by name) that have `addr` among their candidates.
    fn seeds_at(&self, addr: SocketAddr) -> Vec<SocketAddr> {
        let named = self.targets.contains_key(&Key::Seed(addr)).then_some(addr);
        let beside = self.seed_also.get(&addr).copied().filter(|seed| {
            *seed != addr
                && self
                    .targets
                    .get(&Key::Seed(*seed))
                    .is_some_and(|t| t.addresses.contains(&addr))
        });
        named.into_iter().chain(beside).collect()
    }

    /// The current seeds.
    pub fn seeds(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.targets.keys().filter_map(|k| match k {
            Key::Seed(a) => Some(*a),
            Key::Peer(_) => None,
        })
    }

    /// One of my own addresses learned after the start (peers reached me
    /// at it: my public address behind 1:1 NAT). It is never dialled again,
    /// as a seed or as a learned router's candidate.
    pub fn add_own(&mut self, addr: SocketAddr) {
        if !self.own.insert(addr) {
            return;
        }
        self.forget(addr);
        self.seed_also.remove(&addr);
        for t in self.targets.values_mut() {
            if let Some(i) = t.addresses.iter().position(|a| *a == addr) {
                t.addresses.remove(i);
                if t.next_address > i {
                    t.next_address -= 1;
                }
            }
        }
        self.targets.retain(|_, t| !t.addresses.is_empty());
    }

    /// A router known from the topology, with its advertised addresses
    /// (candidates, tried most-alike first). A seed address among them is
    /// that router's. Its first dial waits a random part of `initial`.
    pub fn learn(&mut self, peer: PeerId, addresses: &[SocketAddr], now: Instant) {
        self.now_hint = Some(now);
        let mut addresses: Vec<SocketAddr> = addresses
            .iter()
            .copied()
            .filter(|a| !self.is_own(*a) && self.config.families.reach(*a))
            .take(16)
            .collect();
        if addresses.is_empty() {
            self.targets.remove(&Key::Peer(peer));
            return;
        }
        for a in &addresses {
            for seed in self.seeds_at(*a) {
                self.seed_owner.insert(seed, peer);
            }
        }
        // Stable: equally alike addresses keep the entry's order.
        addresses.sort_by_key(|a| std::cmp::Reverse(self.likeness(*a)));
        if let Some(t) = self.targets.get_mut(&Key::Peer(peer)) {
            // Keep trying first the address that worked (or was next).
            let current = t.addresses.get(t.next_address).copied();
            t.next_address = current
                .and_then(|c| addresses.iter().position(|a| *a == c))
                .unwrap_or(0);
            t.addresses = addresses;
            return;
        }
        let delay = self.config.initial.mul_f64(self.rng.gen_range(0.0..1.0));
        let state = if self.connected.contains(&peer) {
            State::Connected { since: now }
        } else {
            State::Idle {
                next_try: Some(now + delay),
            }
        };
        let interval = self.config.initial;
        self.targets.insert(
            Key::Peer(peer),
            Target {
                addresses,
                next_address: 0,
                seed: false,
                interval,
                state,
            },
        );
    }

    /// A router left the topology: stop dialling it.
    pub fn unlearn(&mut self, peer: PeerId) {
        self.targets.remove(&Key::Peer(peer));
    }

    /// A connection came up. `Addr` for an outbound dial before the peer is
    /// known; call with `Peer` too once the handshake names it (and pass the
    /// dialled address in `dialled` so a seed maps to its router).
    pub fn connected(&mut self, peer: PeerId, dialled: Option<SocketAddr>, now: Instant) {
        self.connected.insert(peer);
        if let Some(addr) = dialled {
            // Any candidate of a seed: the router answered there.
            for seed in self.seeds_at(addr) {
                self.seed_owner.insert(seed, peer);
            }
        }
        for (addr, owner) in &self.seed_owner {
            if *owner == peer
                && let Some(t) = self.targets.get_mut(&Key::Seed(*addr))
            {
                t.state = State::Connected { since: now };
            }
        }
        if let Some(t) = self.targets.get_mut(&Key::Peer(peer)) {
            t.state = State::Connected { since: now };
        }
    }

    /// `old` moved to the identity key of `new` on a live link (issue 20):
    /// the connection stays, so the plan keeps it connected under the new
    /// ID and the seeds it answered at stay its.
    pub fn follow_rotation(&mut self, old: PeerId, new: PeerId) {
        self.connected.follow_rotation(old, new);
        for owner in self.seed_owner.values_mut() {
            if *owner == old {
                *owner = new;
            }
        }
        if let Some(target) = self.targets.remove(&Key::Peer(old)) {
            self.targets.entry(Key::Peer(new)).or_insert(target);
        }
    }

    /// The connection to `peer` went down: retry after the back-off (reset
    /// first if the connection had been healthy).
    pub fn disconnected(&mut self, peer: PeerId, now: Instant) {
        self.connected.remove(&peer);
        let mut keys = vec![Key::Peer(peer)];
        keys.extend(
            self.seed_owner
                .iter()
                .filter(|(_, o)| **o == peer)
                .map(|(a, _)| Key::Seed(*a)),
        );
        for key in keys {
            let Some(mut t) = self.targets.remove(&key) else {
                continue;
            };
            if let State::Connected { since } = t.state
                && now.saturating_duration_since(since) >= self.config.healthy_after
            {
                t.interval = self.config.initial;
            }
            self.schedule_retry(&mut t, now);
            self.targets.insert(key, t);
        }
    }

    /// A dial of `addr` failed (refused, timed out, handshake failed).
    pub fn dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        let keys: Vec<Key> = self
            .targets
            .iter()
            .filter(|(_, t)| matches!(t.state, State::Dialling { addr: a, .. } if a == addr))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(mut t) = self.targets.remove(&key) else {
                continue;
            };
            t.next_address = (t.next_address + 1) % t.addresses.len().max(1);
            self.schedule_retry(&mut t, now);
            self.targets.insert(key, t);
        }
    }

    /// The next address to dial now, if any; the target is then "dialling"
    /// until `connected` or `dial_failed` (or `dial_timeout`).
    pub fn poll_dial(&mut self, now: Instant) -> Option<SocketAddr> {
        self.now_hint = Some(now);
        self.expire_dials(now);
        let busy = self
            .targets
            .values()
            .filter(|t| matches!(t.state, State::Dialling { .. }))
            .count()
            + self.connected.len();
        // The most overdue target first: learned routers get a random first
        // delay, so a cluster does not all dial the same lowest ids.
        let (_, key, addr) = self
            .targets
            .iter()
            .filter_map(|(k, t)| {
                let State::Idle { next_try } = t.state else {
                    return None;
                };
                if next_try.is_some_and(|t| t > now) || self.blocked(k, busy) {
                    return None;
                }
                let addr = *t.addresses.get(t.next_address % t.addresses.len().max(1))?;
                Some((next_try, *k, addr))
            })
            .min_by_key(|(next_try, k, _)| (*next_try, *k))?;
        if let Some(t) = self.targets.get_mut(&key) {
            t.state = State::Dialling { since: now, addr };
        }
        Some(addr)
    }

    /// When `poll_dial` may next return something (a dial timeout counts).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let busy = self
            .targets
            .values()
            .filter(|t| matches!(t.state, State::Dialling { .. }))
            .count()
            + self.connected.len();
        self.targets
            .iter()
            .filter_map(|(k, t)| match t.state {
                State::Idle { next_try } if !self.blocked(k, busy) => {
                    Some(next_try.unwrap_or(self.now_hint?))
                }
                State::Dialling { since, .. } => Some(since + self.config.dial_timeout),
                _ => None,
            })
            .min()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.connected.len()
    }

    /// Whether an inbound connection should be accepted. The cap bounds
    /// only the dials this router makes: refusing inbound would lock a new
    /// router out of a cluster whose seeds are full, so inbound is limited
    /// only by what one topology entry can list.
    pub fn accepts_inbound(&self) -> bool {
        self.connected.len() < super::topology::MAX_CONNECTIONS
    }

    fn blocked(&self, key: &Key, busy: usize) -> bool {
        match key {
            // A seed whose router we already reach some other way is not dialled.
            Key::Seed(addr) => self
                .seed_owner
                .get(addr)
                .is_some_and(|p| self.connected.contains(p)),
            Key::Peer(p) => self.connected.contains(p) || busy >= self.config.max_connections,
        }
    }

    fn expire_dials(&mut self, now: Instant) {
        let stale: Vec<SocketAddr> = self
            .targets
            .values()
            .filter_map(|t| match t.state {
                State::Dialling { since, addr } if since + self.config.dial_timeout <= now => {
                    Some(addr)
                }
                _ => None,
            })
            .collect();
        for addr in stale {
            self.dial_failed(addr, now);
        }
    }

    fn schedule_retry(&mut self, t: &mut Target, now: Instant) {
        // 75–100 %: jitter that never exceeds the interval (and so the cap).
        let factor = self.rng.gen_range(0.75..=1.0);
        t.state = State::Idle {
            next_try: Some(now + t.interval.mul_f64(factor)),
        };
        let cap = if t.seed {
            self.config.max_seed_interval
        } else {
            self.config.max_interval
        };
        t.interval = (t.interval * 2).min(cap);
    }

    fn is_own(&self, addr: SocketAddr) -> bool {
        self.own.contains(&addr)
    }

    /// How alike `addr` looks to my own addresses: the longest common
    /// prefix, in bits, with any of them of the same family (a router in
    /// my site shares my private subnet).
    fn likeness(&self, addr: SocketAddr) -> u32 {
        self.own
            .iter()
            .filter_map(|own| common_prefix(own.ip(), addr.ip()))
            .max()
            .unwrap_or(0)
    }
}

/// The number of leading bits `a` and `b` share, or `None` across families.
pub(crate) fn common_prefix(a: IpAddr, b: IpAddr) -> Option<u32> {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => Some((a.to_bits() ^ b.to_bits()).leading_zeros()),
        (IpAddr::V6(a), IpAddr::V6(b)) => Some((a.to_bits() ^ b.to_bits()).leading_zeros()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
