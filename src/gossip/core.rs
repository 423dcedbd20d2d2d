//! `Gossip`: the sans-IO topology core. It owns this router's entry, merges
//! the others' entries by version, runs anti-entropy, reaps routers that no
//! one is connected to any more, and computes routes.
//!
//! # Method kinds (quinn/str0m style)
//! - input: [`Gossip::handle_message`], [`Gossip::handle_timeout`];
//! - commands from the driver: [`Gossip::connection_up`],
//!   [`Gossip::set_established`], [`Gossip::connection_down`],
//!   [`Gossip::set_mtu`], [`Gossip::set_addresses`];
//! - output: [`Gossip::poll_transmit`], [`Gossip::poll_event`],
//!   [`Gossip::poll_timeout`];
//! - getters: [`Gossip::routes`], [`Gossip::peers`], …
//!
//! After every input or command, drain `poll_transmit` and `poll_event`, then
//! re-arm the timer from `poll_timeout` (its answer changes after any call
//! taking `&mut self`). `now` must never go backwards.
//!
//! # Protocol (DESIGN.md "Wire rules")
//! - A change of my own entry is pushed at once to every neighbour (at most
//!   once per `push_interval`, so a burst of connection changes is one push).
//! - An entry learned new is relayed to `relay_fanout` neighbours that the
//!   entry's owner is not connected to (the owner already pushed to its own
//!   neighbours), so a change crosses a partial mesh epidemically.
//! - Every `anti_entropy_interval`, a `Summary` (count + order-independent
//!   hash) goes to `anti_entropy_fanout` random neighbours; only on mismatch
//!   does the receiver answer with its `Digest` of `(id, version)`, and only
//!   the entries that differ travel. A new neighbour gets my digest at once
//!   and pulls what it lacks (for a fresh router that is the full state).
//! - An entry nobody reachable claims a connection to is dropped after
//!   `gc_timeout`, and a tombstone stops stale copies from coming back.

use super::message::{
    Digest, MAX_DIGEST_ITEMS, MAX_UPDATE_ENTRIES, Message, MessageError, Request, Summary,
    UPDATE_TARGET_BYTES, Update,
};
use super::routes::Routes;
use super::topology::{
    ConnectionInfo, MAX_CONNECTIONS, RefusedReason, Table, TopologyEntry, splitmix,
};
use crate::id::{PeerId, ShortId};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A router as the handshake reveals it (and as it describes itself).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Derived from `public_key`.
    pub id: PeerId,
    /// The router's name (a label).
    pub name: String,
    /// Static X25519 public key.
    pub public_key: [u8; 32],
    /// Where it accepts connections.
    pub addresses: Vec<SocketAddr>,
}

impl fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// Tuning knobs; the defaults are what the daemon uses.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// This router's overlay MTU (DESIGN.md "MTU": 1420 for a 1500 underlay).
    pub mtu: u16,
    /// Mean time between anti-entropy rounds (jittered ±25 %).
    pub anti_entropy_interval: Duration,
    /// Neighbours asked per anti-entropy round.
    pub anti_entropy_fanout: usize,
    /// Neighbours each newly learned entry is relayed to.
    pub relay_fanout: usize,
    /// Least time between two pushes of my own entry.
    pub push_interval: Duration,
    /// How often reachability is re-checked.
    pub reap_interval: Duration,
    /// How long an entry may be unreachable before it is dropped.
    pub gc_timeout: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            mtu: 1420,
            anti_entropy_interval: Duration::from_secs(1),
            anti_entropy_fanout: 3,
            relay_fanout: 2,
            push_interval: Duration::from_millis(500),
            reap_interval: Duration::from_secs(1),
            gc_timeout: Duration::from_secs(60),
        }
    }
}

/// What the core tells the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipEvent {
    /// An entry from the network was refused; nothing changed. Rate-limit the log.
    EntryRefused {
        /// The neighbour that sent it.
        from: PeerId,
        /// The id the entry claims.
        id: PeerId,
        /// The name it claims (cut to 64 bytes for logging).
        name: String,
        /// Why.
        reason: RefusedReason,
    },
    /// A router became known.
    PeerAdded {
        /// Its id.
        id: PeerId,
        /// Its name.
        name: String,
    },
    /// A router was dropped after being unreachable for `gc_timeout`.
    PeerRemoved {
        /// Its id.
        id: PeerId,
        /// Its name.
        name: String,
    },
    /// This router moved to another short ID after a clash with a lower id.
    ShortIdChanged {
        /// The old value.
        old: ShortId,
        /// The new value.
        new: ShortId,
    },
    /// Entries or routes changed: rebuild forwarding snapshots from
    /// [`Gossip::routes`] and [`Gossip::peers`].
    TopologyChanged,
}

/// The core's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GossipTimer {
    /// Next anti-entropy round.
    AntiEntropy,
    /// A rate-limited push of my own entry is due.
    Push,
    /// Re-check reachability, drop long-unreachable entries, expire tombstones.
    Reap,
}

/// Why `handle_message` dropped a frame. In every case no state changed.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// Malformed, wrong channel or version, or over a cap.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The sender has no live connection here (a late frame after `connection_down`).
    #[error("frame from {0}, which has no connection")]
    NotConnected(PeerId),
}

/// Largest event backlog; refusals beyond it are counted, not queued, so a
/// hostile neighbour cannot grow memory.
const MAX_EVENTS: usize = 4096;

#[derive(Clone, Debug)]
struct Neighbour {
    established: bool,
    outbound: bool,
}

/// The topology core. See the module docs for the drain order.
pub struct Gossip {
    me: PeerId,
    config: GossipConfig,
    table: Table,
    names: HashMap<String, PeerId>,
    neighbours: BTreeMap<PeerId, Neighbour>,
    unreachable_since: HashMap<PeerId, Instant>,
    tombstones: HashMap<PeerId, (u64, Instant)>,
    routes: OnceCell<Routes>,
    neighbours_dirty: bool,
    reach_dirty: bool,
    topology_changed: bool,
    self_dirty: bool,
    rng: StdRng,
    transmits: VecDeque<(PeerId, Vec<u8>)>,
    events: VecDeque<GossipEvent>,
    events_dropped: u64,
    relays: Vec<(PeerId, PeerId)>,
    next_anti_entropy: Instant,
    next_reap: Instant,
    push_at: Option<Instant>,
    last_push: Option<Instant>,
}

impl Gossip {
    /// A core for router `me`, whose entry starts at version 1 (a restarted
    /// router that meets its older, higher-versioned entry jumps above it).
    pub fn new(me: PeerInfo, config: GossipConfig, seed: u64, now: Instant) -> Self {
        let entry = TopologyEntry {
            id: me.id,
            version: 1,
            name: me.name.clone(),
            public_key: me.public_key,
            addresses: me.addresses,
            short_id: ShortId::preferred(me.id),
            mtu: config.mtu,
            connections: Vec::new(),
        };
        let mut table = Table::default();
        table.insert(entry);
        let mut rng = StdRng::seed_from_u64(seed);
        let first_round = jitter(&mut rng, config.anti_entropy_interval);
        Self {
            me: me.id,
            names: HashMap::from([(me.name, me.id)]),
            table,
            neighbours: BTreeMap::new(),
            unreachable_since: HashMap::new(),
            tombstones: HashMap::new(),
            routes: OnceCell::new(),
            neighbours_dirty: false,
            reach_dirty: false,
            topology_changed: false,
            self_dirty: false,
            rng,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            events_dropped: 0,
            relays: Vec::new(),
            next_anti_entropy: now + first_round,
            next_reap: now + config.reap_interval,
            push_at: None,
            last_push: None,
            config,
        }
    }

    // ---- commands -------------------------------------------------------

    /// A TCP connection finished its Noise handshake. Lists the connection
    /// (not yet established) in my entry and sends the peer my digest so it
    /// pulls what it lacks. A connection to myself is ignored.
    pub fn connection_up(&mut self, peer: PeerInfo, outbound: bool, now: Instant) {
        if peer.id == self.me {
            return;
        }
        self.neighbours.insert(
            peer.id,
            Neighbour {
                established: false,
                outbound,
            },
        );
        self.neighbours_changed();
        // One digest per new connection is enough for push-pull both ways;
        // the lower id sends it.
        if self.me < peer.id {
            self.send_digest(peer.id, PeerId(0), PeerId(u64::MAX));
        }
        // A restarted router does not know how far its old entry got; tell it.
        if let Some(&(version, _)) = self.tombstones.get(&peer.id) {
            let digest = Digest {
                first: peer.id,
                last: peer.id,
                items: vec![(peer.id, version)],
            };
            self.transmits
                .push_back((peer.id, Message::Digest(digest).encode()));
        }
        self.after_input(now);
    }

    /// UDP heartbeats pass both ways (or stopped passing): the connection's
    /// established flag changes in my entry. Unknown peers are ignored.
    pub fn set_established(&mut self, peer: PeerId, established: bool, now: Instant) {
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        if n.established == established {
            return;
        }
        n.established = established;
        self.neighbours_changed();
        self.after_input(now);
    }

    /// The TCP connection to `peer` closed.
    pub fn connection_down(&mut self, peer: PeerId, now: Instant) {
        if self.neighbours.remove(&peer).is_none() {
            return;
        }
        self.neighbours_changed();
        self.after_input(now);
    }

    /// Changes my overlay MTU (bumps my version).
    pub fn set_mtu(&mut self, mtu: u16, now: Instant) {
        self.modify_me(now, |e| e.mtu = mtu);
    }

    /// Changes my advertised addresses (bumps my version). At most
    /// `MAX_ADDRESSES` are kept.
    pub fn set_addresses(&mut self, mut addresses: Vec<SocketAddr>, now: Instant) {
        addresses.truncate(super::topology::MAX_ADDRESSES);
        self.modify_me(now, |e| e.addresses = addresses);
    }

    // ---- input ----------------------------------------------------------

    /// A topology-channel frame from neighbour `from`. A bad frame changes
    /// nothing and returns an error for the driver to count; a bad entry
    /// inside a good frame is refused alone (see [`GossipEvent::EntryRefused`]).
    pub fn handle_message(
        &mut self,
        from: PeerId,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), GossipError> {
        if !self.neighbours.contains_key(&from) {
            return Err(GossipError::NotConnected(from));
        }
        match Message::decode(bytes)? {
            Message::Summary(s) => {
                if (s.count, s.hash) != self.table.summary() {
                    self.send_digest(from, PeerId(0), PeerId(u64::MAX));
                }
            }
            Message::Digest(d) => self.handle_digest(from, d, now),
            Message::Request(r) => {
                let entries: Vec<TopologyEntry> = r
                    .ids
                    .iter()
                    .filter_map(|id| self.table.get(*id))
                    .cloned()
                    .collect();
                self.send_entries(from, entries);
            }
            Message::Update(u) => {
                for entry in u.entries {
                    self.merge(from, entry, now);
                }
            }
        }
        self.after_input(now);
        Ok(())
    }

    /// Runs whatever timers are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.push_at.is_some_and(|t| t <= now) {
            self.flush_push(now);
        }
        if self.next_anti_entropy <= now {
            self.anti_entropy();
            self.next_anti_entropy = now + jitter(&mut self.rng, self.config.anti_entropy_interval);
        }
        if self.next_reap <= now {
            self.reap(now);
            self.next_reap = now + self.config.reap_interval;
        }
        self.after_input(now);
    }

    // ---- output ---------------------------------------------------------

    /// The next frame to send: `(neighbour, topology frame)`.
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GossipEvent> {
        self.events.pop_front()
    }

    /// The earliest timer and which one it is.
    pub fn poll_timeout(&self) -> Option<(Instant, GossipTimer)> {
        let mut best = (self.next_anti_entropy, GossipTimer::AntiEntropy);
        if self.next_reap < best.0 {
            best = (self.next_reap, GossipTimer::Reap);
        }
        if let Some(t) = self.push_at.filter(|t| *t < best.0) {
            best = (t, GossipTimer::Push);
        }
        Some(best)
    }

    // ---- getters --------------------------------------------------------

    /// My id.
    pub fn id(&self) -> PeerId {
        self.me
    }

    /// Next hop per destination over established connections (computed
    /// lazily after each change).
    pub fn routes(&self) -> &Routes {
        self.routes
            .get_or_init(|| Routes::compute(self.me, &self.my_connections(), &self.table))
    }

    /// Every known entry, mine included, by id.
    pub fn peers(&self) -> impl Iterator<Item = &TopologyEntry> {
        self.table.iter()
    }

    /// The entry for `id`.
    pub fn entry(&self, id: PeerId) -> Option<&TopologyEntry> {
        self.table.get(id)
    }

    /// My own entry.
    pub fn my_entry(&self) -> &TopologyEntry {
        // The table always holds my entry: inserted in `new`, never removed
        // (reap skips me), only replaced.
        self.table
            .get(self.me)
            .unwrap_or_else(|| unreachable!("own entry missing"))
    }

    /// My current short ID.
    pub fn short_id(&self) -> ShortId {
        self.my_entry().short_id
    }

    /// The router a data header's short ID names: during a clash, the lower id.
    pub fn peer_by_short(&self, short: ShortId) -> Option<PeerId> {
        self.table
            .iter()
            .filter(|e| e.short_id == short)
            .map(|e| e.id)
            .min()
    }

    /// The router that holds `name`.
    pub fn name_holder(&self, name: &str) -> Option<PeerId> {
        self.names.get(name).copied()
    }

    /// The cluster's overlay MTU: the minimum over all known entries.
    pub fn cluster_mtu(&self) -> u16 {
        self.table
            .iter()
            .map(|e| e.mtu)
            .min()
            .unwrap_or(self.config.mtu)
    }

    /// My neighbours: `(peer, established, outbound)`.
    pub fn neighbours(&self) -> impl Iterator<Item = (PeerId, bool, bool)> + '_ {
        self.neighbours
            .iter()
            .map(|(id, n)| (*id, n.established, n.outbound))
    }

    /// `(count, hash)` of my table: equal summaries mean equal `(id, version)` sets.
    pub fn summary(&self) -> (u32, u64) {
        self.table.summary()
    }

    /// Whether a change of my own entry still waits for its rate-limited push.
    pub fn has_pending_changes(&self) -> bool {
        self.self_dirty || self.neighbours_dirty
    }

    /// Refusal events not queued because the backlog was full.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    // ---- internals ------------------------------------------------------

    fn modify_me(&mut self, now: Instant, f: impl FnOnce(&mut TopologyEntry)) {
        let mut entry = self.my_entry().clone();
        f(&mut entry);
        entry.version += 1;
        self.install_mine(entry);
        self.after_input(now);
    }

    /// Connection changes reach routes at once (they read the neighbour
    /// map for my own edges) but become a new version of my entry only when
    /// the rate-limited push runs: a burst of connection changes is one
    /// version, which keeps digests stable while a mesh forms.
    fn neighbours_changed(&mut self) {
        self.neighbours_dirty = true;
        self.routes = OnceCell::new();
        self.topology_changed = true;
        self.reach_dirty = true;
    }

    /// My connections as the neighbour map has them now.
    fn my_connections(&self) -> Vec<ConnectionInfo> {
        self.neighbours
            .iter()
            .map(|(peer, n)| ConnectionInfo {
                peer: *peer,
                established: n.established,
                outbound: n.outbound,
            })
            .collect()
    }

    /// Rebuilds my connection list from the neighbours and bumps my version.
    fn update_my_entry(&mut self) {
        self.neighbours_dirty = false;
        let mut connections = self.my_connections();
        if connections.len() > MAX_CONNECTIONS {
            // Keep the established ones: they are the ones routes use.
            connections.sort_by_key(|c| (!c.established, c.peer));
            connections.truncate(MAX_CONNECTIONS);
            connections.sort_by_key(|c| c.peer);
        }
        let mut entry = self.my_entry().clone();
        entry.connections = connections;
        entry.version += 1;
        self.install_mine(entry);
    }

    fn install_mine(&mut self, entry: TopologyEntry) {
        self.table.insert(entry);
        self.self_dirty = true;
        self.changed();
    }

    fn changed(&mut self) {
        self.topology_changed = true;
        self.reach_dirty = true;
    }

    fn after_input(&mut self, now: Instant) {
        if (self.self_dirty || self.neighbours_dirty) && self.push_at.is_none() {
            let earliest = self
                .last_push
                .map_or(now, |t| t + self.config.push_interval);
            self.push_at = Some(earliest.max(now));
        }
        if self.push_at.is_some_and(|t| t <= now) {
            self.flush_push(now);
        }
        self.flush_relays();
        if self.topology_changed {
            self.topology_changed = false;
            self.routes = OnceCell::new();
            self.emit(GossipEvent::TopologyChanged);
        }
    }

    /// Pushes my entry to every neighbour: encoded once, sent to all.
    fn flush_push(&mut self, now: Instant) {
        self.push_at = None;
        self.last_push = Some(now);
        if self.neighbours_dirty {
            self.update_my_entry();
        }
        if !self.self_dirty {
            return;
        }
        self.self_dirty = false;
        let frame = Message::Update(Update {
            entries: vec![self.my_entry().clone()],
        })
        .encode();
        for peer in self.neighbours.keys() {
            self.transmits.push_back((*peer, frame.clone()));
        }
    }

    /// Relays newly learned entries to neighbours their owner is not
    /// connected to (the owner pushed to its own neighbours already).
    fn flush_relays(&mut self) {
        if self.relays.is_empty() {
            return;
        }
        let relays = std::mem::take(&mut self.relays);
        let mut batches: BTreeMap<PeerId, Vec<TopologyEntry>> = BTreeMap::new();
        let neighbours: Vec<PeerId> = self.neighbours.keys().copied().collect();
        for (id, source) in relays {
            let Some(entry) = self.table.get(id) else {
                continue;
            };
            let mut candidates: Vec<PeerId> = neighbours
                .iter()
                .copied()
                .filter(|n| *n != source && *n != id && entry.connection(*n).is_none())
                .collect();
            candidates.shuffle(&mut self.rng);
            candidates.truncate(self.config.relay_fanout);
            for n in candidates {
                batches.entry(n).or_default().push(entry.clone());
            }
        }
        for (to, entries) in batches {
            self.send_entries(to, entries);
        }
    }

    fn anti_entropy(&mut self) {
        let mut neighbours: Vec<PeerId> = self.neighbours.keys().copied().collect();
        neighbours.shuffle(&mut self.rng);
        neighbours.truncate(self.config.anti_entropy_fanout);
        let (count, hash) = self.table.summary();
        let frame = Message::Summary(Summary { count, hash }).encode();
        for n in neighbours {
            self.transmits.push_back((n, frame.clone()));
        }
    }

    /// Sends `to` my `(id, version)` pairs in `[first, last]`, split into
    /// chunks that each name the id range they cover.
    fn send_digest(&mut self, to: PeerId, first: PeerId, last: PeerId) {
        let items: Vec<(PeerId, u64)> = self
            .table
            .range(first, last)
            .map(|e| (e.id, e.version))
            .collect();
        let mut start = first;
        let mut chunks = items.chunks(MAX_DIGEST_ITEMS).peekable();
        if chunks.peek().is_none() {
            let digest = Digest {
                first,
                last,
                items: Vec::new(),
            };
            self.transmits
                .push_back((to, Message::Digest(digest).encode()));
            return;
        }
        while let Some(chunk) = chunks.next() {
            let end = match (chunks.peek(), chunk.last()) {
                (Some(_), Some((id, _))) => *id,
                _ => last,
            };
            let digest = Digest {
                first: start,
                last: end,
                items: chunk.to_vec(),
            };
            self.transmits
                .push_back((to, Message::Digest(digest).encode()));
            start = PeerId(end.0.saturating_add(1));
        }
    }

    /// Push-pull against a neighbour's digest: send what it lacks or has
    /// older, request what I lack or have older.
    fn handle_digest(&mut self, from: PeerId, d: Digest, now: Instant) {
        if d.first > d.last {
            return;
        }
        let theirs: HashMap<PeerId, u64> = d
            .items
            .iter()
            .filter(|(id, _)| *id >= d.first && *id <= d.last)
            .copied()
            .collect();
        let mut wanted = Vec::new();
        let mut bump_to = None;
        for (&id, &version) in &theirs {
            if id == self.me {
                if version > self.my_entry().version {
                    bump_to = Some(version);
                }
                continue;
            }
            let mine = self.table.get(id).map(|e| e.version);
            let buried = self.tombstones.get(&id).is_some_and(|(v, _)| *v >= version);
            if mine.is_none_or(|m| m < version) && !buried {
                wanted.push(id);
            }
        }
        let to_send: Vec<TopologyEntry> = self
            .table
            .range(d.first, d.last)
            .filter(|e| theirs.get(&e.id).is_none_or(|v| *v < e.version))
            .cloned()
            .collect();
        if let Some(version) = bump_to {
            self.jump_above(version, None);
        }
        self.send_entries(from, to_send);
        wanted.sort();
        for chunk in wanted.chunks(MAX_DIGEST_ITEMS) {
            let request = Request {
                ids: chunk.to_vec(),
            };
            self.transmits
                .push_back((from, Message::Request(request).encode()));
        }
        let _ = now;
    }

    /// Sends whole entries, split so that each frame stays well under one
    /// 64 KiB Noise record.
    fn send_entries(&mut self, to: PeerId, entries: Vec<TopologyEntry>) {
        let mut batch = Vec::new();
        let mut size = 0;
        for e in entries {
            let estimate = 64 + e.name.len() + 20 * e.addresses.len() + 12 * e.connections.len();
            if !batch.is_empty()
                && (size + estimate > UPDATE_TARGET_BYTES || batch.len() >= MAX_UPDATE_ENTRIES)
            {
                let full = std::mem::take(&mut batch);
                self.transmits
                    .push_back((to, Message::Update(Update { entries: full }).encode()));
                size = 0;
            }
            size += estimate;
            batch.push(e);
        }
        if !batch.is_empty() {
            self.transmits
                .push_back((to, Message::Update(Update { entries: batch }).encode()));
        }
    }

    /// Merges one entry from the network (DESIGN.md "Identity": only its
    /// owner changes an entry, and only a newer version replaces one).
    fn merge(&mut self, from: PeerId, entry: TopologyEntry, _now: Instant) {
        if let Err(reason) = entry.validate() {
            return self.refuse(from, &entry, reason);
        }
        if entry.id == self.me {
            let mine = self.my_entry();
            let newer =
                entry.version > mine.version || (entry.version == mine.version && entry != *mine);
            if newer {
                self.jump_above(entry.version, Some(entry.short_id));
            }
            return;
        }
        if let Some(&(version, _)) = self.tombstones.get(&entry.id) {
            if version >= entry.version {
                return;
            }
            self.tombstones.remove(&entry.id);
        }
        let old_version = self.table.get(entry.id).map(|e| e.version);
        if old_version.is_some_and(|v| v >= entry.version) {
            return;
        }
        if let Some(&holder) = self.names.get(&entry.name)
            && holder != entry.id
        {
            return self.refuse(from, &entry, RefusedReason::NameClash { holder });
        }
        let (id, name, short) = (entry.id, entry.name.clone(), entry.short_id);
        self.names.insert(name.clone(), id);
        if let Some(old) = self.table.insert(entry) {
            if old.name != name {
                self.names.remove(&old.name);
            }
        } else {
            self.emit(GossipEvent::PeerAdded { id, name });
        }
        self.changed();
        self.relays.push((id, from));
        if short == self.short_id() && id < self.me {
            self.pick_short_id();
        }
    }

    fn refuse(&mut self, from: PeerId, entry: &TopologyEntry, reason: RefusedReason) {
        let mut name = entry.name.clone();
        if name.len() > 64 {
            let mut cut = 64;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            name.truncate(cut);
        }
        let event = GossipEvent::EntryRefused {
            from,
            id: entry.id,
            name,
            reason,
        };
        if self.events.len() >= MAX_EVENTS {
            self.events_dropped += 1;
        } else {
            self.events.push_back(event);
        }
    }

    fn emit(&mut self, event: GossipEvent) {
        // Only refusals can be caused in bulk by one neighbour; the rest are
        // bounded by the table, so they are always queued.
        self.events.push_back(event);
    }

    /// My entry got out ahead of me (I restarted): take a version above it,
    /// and keep its short ID if no lower id holds that one.
    fn jump_above(&mut self, version: u64, short: Option<ShortId>) {
        let mut entry = self.my_entry().clone();
        entry.version = version.saturating_add(1);
        if let Some(short) = short.filter(|s| *s != entry.short_id) {
            let taken = self
                .table
                .iter()
                .any(|e| e.id < self.me && e.short_id == short);
            if !taken {
                self.emit(GossipEvent::ShortIdChanged {
                    old: entry.short_id,
                    new: short,
                });
                entry.short_id = short;
            }
        }
        self.install_mine(entry);
    }

    /// A lower id holds my short ID: move to the first free value of a
    /// sequence derived from my id (deterministic, so a replay picks the same).
    fn pick_short_id(&mut self) {
        let used: HashSet<ShortId> = self
            .table
            .iter()
            .filter(|e| e.id != self.me)
            .map(|e| e.short_id)
            .collect();
        let old = self.short_id();
        let Some(new) = (1..=u64::from(u16::MAX) + 1)
            .map(|k| ShortId(splitmix(self.me.0 ^ k) as u16))
            .find(|s| !used.contains(s))
        else {
            return;
        };
        let mut entry = self.my_entry().clone();
        entry.short_id = new;
        entry.version += 1;
        self.install_mine(entry);
        self.emit(GossipEvent::ShortIdChanged { old, new });
    }

    /// Marks entries unreachable (nobody reachable claims a connection to
    /// them), drops those unreachable for `gc_timeout`, expires tombstones.
    fn reap(&mut self, now: Instant) {
        self.tombstones.retain(|_, (_, expiry)| *expiry > now);
        if self.reach_dirty {
            self.reach_dirty = false;
            let reachable = self.reachable();
            for e in self.table.iter() {
                if reachable.contains(&e.id) {
                    self.unreachable_since.remove(&e.id);
                } else {
                    self.unreachable_since.entry(e.id).or_insert(now);
                }
            }
        }
        let expired: Vec<PeerId> = self
            .unreachable_since
            .iter()
            .filter(|(_, since)| **since + self.config.gc_timeout <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.unreachable_since.remove(&id);
            let Some(old) = self.table.remove(id) else {
                continue;
            };
            self.names.remove(&old.name);
            self.tombstones
                .insert(id, (old.version, now + 3 * self.config.gc_timeout));
            self.emit(GossipEvent::PeerRemoved { id, name: old.name });
            self.changed();
        }
    }

    /// Routers reachable from me by following the connections that
    /// reachable routers claim. A dead router's own stale claims are never
    /// followed unless someone live claims it.
    fn reachable(&self) -> HashSet<PeerId> {
        let mut seen = HashSet::from([self.me]);
        let mut stack: Vec<PeerId> = self.neighbours.keys().copied().collect();
        seen.extend(stack.iter().copied());
        while let Some(id) = stack.pop() {
            let Some(entry) = self.table.get(id) else {
                continue;
            };
            for c in &entry.connections {
                if seen.insert(c.peer) {
                    stack.push(c.peer);
                }
            }
        }
        seen
    }
}

fn jitter(rng: &mut StdRng, base: Duration) -> Duration {
    base.mul_f64(rng.gen_range(0.75..1.25))
}
