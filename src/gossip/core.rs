//! `Gossip`: the sans-IO topology core. It owns this router's entry, merges
//! the others' entries by version, runs anti-entropy, reaps routers that no
//! one is connected to any more, and computes routes.
//!
//! # Method kinds (quinn/str0m style)
//! - input: [`Gossip::handle_message`], [`Gossip::handle_timeout`];
//! - commands from the driver: [`Gossip::connection_up`],
//!   [`Gossip::set_established`], [`Gossip::connection_down`],
//!   [`Gossip::set_mtu`], [`Gossip::set_addresses`], and for a live
//!   identity rotation [`Gossip::rotate`] (mine) and
//!   [`Gossip::neighbour_rotated`] (a neighbour's link moved);
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
//!   hash) goes to `anti_entropy_fanout` random neighbours; while nothing
//!   changes the wait doubles each round up to `anti_entropy_max` (an idle
//!   link costs almost nothing, issue 14), and any change of the table or a
//!   neighbour's differing summary brings it back to the base interval, so
//!   the routers near a change keep the epidemic going; only on mismatch
//!   does the receiver answer with its `Digest` of `(id, version)`, and only
//!   the entries that differ travel. A new neighbour gets my digest at once
//!   and pulls what it lacks (for a fresh router that is the full state).
//! - An entry nobody reachable claims a connection to is dropped after
//!   `gc_timeout`, and a tombstone stops stale copies from coming back.
//!
//! # Trust (DESIGN.md "Security model")
//! Entries travel as their owners signed them and are verified before anything
//! in them is believed ([`merge`]); relays forward the owner's bytes. Digests
//! and summaries are unsigned and only decide what to ask for: a digest
//! claiming my own entry is newer makes me request that copy, never jump.
//!
//! The core is split by concern: this file holds the state, commands, input
//! dispatch, output and pushes of my own entry; [`merge`] holds what an entry
//! from the network must pass, the version rules and short-ID clashes;
//! [`anti_entropy`] holds digests, requests, relays and reaping;
//! `getters.rs` what the driver and status read.

mod anti_entropy;
mod getters;
mod live_rotation;
mod merge;
mod rotation;

pub use self::rotation::tombstone;

use super::message::{Message, MessageError, Update};
use super::routes::Routes;
use super::topology::{
    ConnectionInfo, MAX_CONNECTIONS, RefusedReason, SignedEntry, Table, TopologyEntry,
};
use crate::crypto::{SigningKey, VerifyingKeys};
use crate::id::{PeerId, ShortId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
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
    /// Mean time between anti-entropy rounds (jittered ±25 %) after a change.
    pub anti_entropy_interval: Duration,
    /// The longest mean time between rounds while nothing changes (each
    /// quiet round doubles the wait up to this).
    pub anti_entropy_max: Duration,
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
    /// A retired ID's window (identity rotation): at the bound of the
    /// retirements held, only one learned longer ago than this may make
    /// room for a new one.
    pub retirement_window: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            mtu: 1420,
            anti_entropy_interval: Duration::from_secs(1),
            anti_entropy_max: Duration::from_secs(8),
            anti_entropy_fanout: 3,
            relay_fanout: 2,
            push_interval: Duration::from_millis(500),
            reap_interval: Duration::from_secs(1),
            gc_timeout: Duration::from_secs(60),
            retirement_window: crate::crypto::rotation::DEFAULT_WINDOW,
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
    /// A router moved from key `old` to key `new` (a verified
    /// announcement, learned the first time): `old`'s entry left the table
    /// and `new` holds its name. Feed it to `crypto::rotation::Successors`.
    Rotated {
        /// The retired ID.
        old: PeerId,
        /// Its successor.
        new: PeerId,
        /// The announcement.
        rotation: Box<crate::crypto::rotation::Rotation>,
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

/// A dropped entry's last version, kept so stale copies do not come back, and
/// its signed form, so its owner can be told how far it got after a restart.
#[derive(Clone, Debug)]
struct Tombstone {
    version: u64,
    expiry: Instant,
    signed: SignedEntry,
}

/// The topology core. See the module docs for the drain order.
pub struct Gossip {
    me: PeerId,
    signer: SigningKey,
    config: GossipConfig,
    table: Table,
    names: HashMap<String, PeerId>,
    neighbours: BTreeMap<PeerId, Neighbour>,
    unreachable_since: HashMap<PeerId, Instant>,
    tombstones: HashMap<PeerId, Tombstone>,
    /// Retired IDs (identity rotation, `rotation.rs`), kept for the life of
    /// the process, bounded; the driver saves them across restarts
    /// (`control::retired_keys`).
    retired: BTreeMap<PeerId, rotation::Retirement>,
    /// Bumped on every change of `retired` (the driver saves it).
    retirement_changes: u64,
    /// The announcement of the rotation that made my key, carried by every
    /// version of my entry.
    my_rotation: Option<crate::crypto::rotation::Rotation>,
    routes: OnceCell<Routes>,
    neighbours_dirty: bool,
    reach_dirty: bool,
    topology_changed: bool,
    self_dirty: bool,
    rng: StdRng,
    transmits: VecDeque<(PeerId, Vec<u8>)>,
    events: VecDeque<GossipEvent>,
    events_dropped: u64,
    refusals: BTreeMap<&'static str, u64>,
    /// Signers' keys, derived once (checking entries is the hot path).
    verifying_keys: VerifyingKeys,
    relays: Vec<(PeerId, PeerId)>,
    next_anti_entropy: Instant,
    /// The current mean wait between anti-entropy rounds (backs off while
    /// quiet, see the module docs).
    anti_entropy_wait: Duration,
    next_reap: Instant,
    push_at: Option<Instant>,
    last_push: Option<Instant>,
    /// The latest `now` an input brought (when a retirement is learned).
    clock: Instant,
}

impl Gossip {
    /// A core for router `me`, whose entry starts at version 1 (a restarted
    /// router that meets its older, higher-versioned entry jumps above it)
    /// and is signed with `signer`, the key of `me`'s identity.
    pub fn new(
        me: PeerInfo,
        signer: SigningKey,
        config: GossipConfig,
        seed: u64,
        now: Instant,
    ) -> Self {
        debug_assert_eq!(
            signer.verifying_key().x25519_public_key(),
            me.public_key,
            "the signing key is not this router's"
        );
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
        let signed = SignedEntry::sign(&entry, &signer);
        table.insert(entry, signed);
        let mut rng = StdRng::seed_from_u64(seed);
        let first_round = jitter(&mut rng, config.anti_entropy_interval);
        Self {
            me: me.id,
            signer,
            names: HashMap::from([(me.name, me.id)]),
            table,
            neighbours: BTreeMap::new(),
            unreachable_since: HashMap::new(),
            tombstones: HashMap::new(),
            retired: BTreeMap::new(),
            retirement_changes: 0,
            my_rotation: None,
            routes: OnceCell::new(),
            neighbours_dirty: false,
            reach_dirty: false,
            topology_changed: false,
            self_dirty: false,
            rng,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            events_dropped: 0,
            refusals: BTreeMap::new(),
            verifying_keys: VerifyingKeys::default(),
            relays: Vec::new(),
            next_anti_entropy: now + first_round,
            anti_entropy_wait: config.anti_entropy_interval,
            next_reap: now + config.reap_interval,
            push_at: None,
            last_push: None,
            clock: now,
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
        self.clock = self.clock.max(now);
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
        // A restarted router does not know how far its old entry got: send
        // it the copy it signed, which it adopts and re-signs above.
        if let Some(t) = self.tombstones.get(&peer.id) {
            let update = Update {
                entries: vec![t.signed.clone()],
            };
            self.transmits
                .push_back((peer.id, Message::Update(update).encode()));
        }
        // Retired keys: a restarted router learns them from its neighbours.
        let retired = self.tombstones_to_hand();
        if !retired.is_empty() {
            self.send_entries(peer.id, retired);
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
        self.clock = self.clock.max(now);
        if !self.neighbours.contains_key(&from) {
            return Err(GossipError::NotConnected(from));
        }
        match Message::decode(bytes)? {
            Message::Summary(s) => {
                if (s.count, s.hash) != self.table.summary() {
                    self.send_digest(from, PeerId(0), PeerId(u64::MAX));
                    self.hurry_anti_entropy(now);
                }
            }
            Message::Digest(d) => self.handle_digest(from, d),
            Message::Request(r) => {
                let entries: Vec<SignedEntry> = r
                    .ids
                    .iter()
                    .filter_map(|id| self.table.signed(*id))
                    .cloned()
                    .collect();
                self.send_entries(from, entries);
            }
            Message::Update(u) => {
                for entry in u.entries {
                    self.merge(from, entry);
                }
            }
        }
        self.after_input(now);
        Ok(())
    }

    /// Runs whatever timers are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        if self.push_at.is_some_and(|t| t <= now) {
            self.flush_push(now);
        }
        if self.next_anti_entropy <= now {
            self.anti_entropy();
            self.next_anti_entropy = now + jitter(&mut self.rng, self.anti_entropy_wait);
            self.anti_entropy_wait = (self.anti_entropy_wait * 2).min(self.config.anti_entropy_max);
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

    /// My connections as my entry lists them: at most `MAX_CONNECTIONS`.
    fn capped_connections(&self) -> Vec<ConnectionInfo> {
        let mut connections = self.my_connections();
        if connections.len() > MAX_CONNECTIONS {
            // Keep the established ones: they are the ones routes use.
            connections.sort_by_key(|c| (!c.established, c.peer));
            connections.truncate(MAX_CONNECTIONS);
            connections.sort_by_key(|c| c.peer);
        }
        connections
    }

    /// Rebuilds my connection list from the neighbours and bumps my version.
    fn update_my_entry(&mut self) {
        self.neighbours_dirty = false;
        let mut entry = self.my_entry().clone();
        entry.connections = self.capped_connections();
        entry.version += 1;
        self.install_mine(entry);
    }

    /// Signs and stores a new version of my entry, to be pushed.
    fn install_mine(&mut self, entry: TopologyEntry) {
        let signed = SignedEntry::sign_rotated(&entry, self.my_rotation.as_ref(), &self.signer);
        self.table.insert(entry, signed);
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
            self.hurry_anti_entropy(now);
            self.routes = OnceCell::new();
            self.emit(GossipEvent::TopologyChanged);
        }
    }

    /// Something changed or differs: anti-entropy back at its base interval
    /// (a round already due sooner stays).
    fn hurry_anti_entropy(&mut self, now: Instant) {
        let base = self.config.anti_entropy_interval;
        if self.anti_entropy_wait > base {
            self.anti_entropy_wait = base;
            let next = now + jitter(&mut self.rng, base);
            self.next_anti_entropy = self.next_anti_entropy.min(next);
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
        let Some(mine) = self.table.signed(self.me).cloned() else {
            return;
        };
        let frame = Message::Update(Update {
            entries: vec![mine],
        })
        .encode();
        for peer in self.neighbours.keys() {
            self.transmits.push_back((*peer, frame.clone()));
        }
    }
}

fn jitter(rng: &mut StdRng, base: Duration) -> Duration {
    base.mul_f64(rng.gen_range(0.75..1.25))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_rotation;

#[cfg(test)]
mod tests_live_rotation;
