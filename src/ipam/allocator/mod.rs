//! The IPAM core: one router's view of the ring, its allocations, the
//! initialisation vote, donations and reclaims. Sans-IO (DESIGN.md "Sans-IO
//! cores"): bytes and `now` in; messages, events and one timer out; durable
//! writes through a [`Store`] whose `save_*` returns once the data is synced.
//!
//! # Method kinds and drain order
//!
//! - Inputs: [`Allocator::handle_message`], [`Allocator::handle_timeout`],
//!   [`Allocator::handle_peer_up`], [`Allocator::set_reachable`].
//! - Commands: [`Allocator::allocate`], [`Allocator::allocate_node`],
//!   [`Allocator::release`], [`Allocator::rmpeer`].
//! - Outputs: after every input or command, drain [`Allocator::poll_transmit`]
//!   until `None`, then [`Allocator::poll_event`], then re-arm the timer from
//!   [`Allocator::poll_timeout`]. Everything queued for sending has already
//!   been persisted ("persist, then send"), and a successful `allocate` has
//!   already been persisted ("persist, then answer").
//!
//! # Rules (DESIGN.md "Identity, ownership and reclaim")
//!
//! - Initialisation: with [`Init::Voters`], a voter whose state is empty
//!   (no ring, nothing in use in the kernel) broadcasts a proposal naming its
//!   slot count and the voters it knows; once a majority of the slots
//!   proposed the identical ballot it locks it, and once a majority locked
//!   it, it builds the genesis ring, split evenly among the ballot's voters.
//!   Two quorums can never produce two rings (`init.rs`). Others wait and learn.
//! - A ring learned from a peer (first start, or a restart without state)
//!   quarantines this router's own ranges: its former self may have given
//!   some away. So does a reclaim. Quarantine lasts `2 × convergence_bound`.
//! - Anti-entropy (DESIGN.md "Wire rules"): every `gossip_interval` a
//!   digest of the ring goes to the neighbours that speak ring version 2,
//!   the full ring to the others; a receiver whose digest differs answers
//!   (`anti_entropy.rs`), and a router sent a ring lacking what it has sends
//!   its own back. With ring version 4 the answer is bucket hashes, and
//!   then only the buckets that differ travel (`delta.rs`). Changes of
//!   ownership are still pushed whole at once, and a new neighbour gets
//!   the full ring.
//! - A router that finds itself tombstoned stops allocating and raises
//!   [`Alarm::Tombstoned`]; one that loses a range holding allocations raises
//!   [`Alarm::OwnershipLost`].
//!
//! # Files, by concern
//!
//! This file holds the configuration, the state and the inputs and outputs;
//! the rest of the core is split by what it does, each an `impl` block of
//! [`Allocator`]: `alloc.rs` (allocate, release), `init.rs` (the vote, the
//! static split, a first ring), `merge.rs` (a peer's ring, conflicts),
//! `anti_entropy.rs` (digests), `delta.rs` (the bucket exchange), `donation.rs`, `reclaim.rs` (rmpeer, tombstones), `leave.rs`, `rotate.rs` (identity rotation's hand-over),
//! `persist.rs` (records for the store), `status.rs`; `events.rs` holds the
//! output types.
mod alloc;
mod anti_entropy;
mod delta;
mod donation;
mod events;
mod init;
mod keys;
mod leave;
mod merge;
mod persist;
mod reclaim;
mod rotate;
mod status;
mod titles_latch;

pub use events::{Alarm, Destination, DonationRefusal, Event, Timer};
pub use status::{OwnedRange, Phase, Status};

use super::error::IpamError;
use super::message::{Message, MessageError, RING_TITLES_VERSION};
use super::range::AddrRange;
use super::ring::{GenesisId, Ring};
use super::signed::{RingCrypto, Verifier};
use super::space::{AllocKey, Allocations};
use super::store::{PersistedAllocations, PersistedRing, Store};
use crate::id::PeerId;
use crate::wire::DecodeError;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How the ring is initialised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Init {
    /// A fixed voter set (DESIGN.md default: the routers at the seed
    /// addresses). All voters must hold the same set; a majority initialises.
    Voters(BTreeSet<PeerId>),
    /// `seed=NAME1,NAME2`: the routers so named, resolved to IDs by the
    /// driver; every router computes the same split at once, no vote.
    Seed(BTreeSet<PeerId>),
    /// Never initialises; learns the ring and asks for donations when needed.
    Observer,
}

/// Allocator configuration.
#[derive(Debug)]
pub struct Config {
    /// This router.
    pub me: PeerId,
    /// The cluster range.
    pub range: AddrRange,
    /// How the ring starts.
    pub init: Init,
    /// How often the ring (or a proposal) is re-broadcast (anti-entropy),
    /// and the round of housekeeping (quarantine, donation windows).
    pub gossip_interval: Duration,
    /// The longest wait between two digests while the ring does not change
    /// (each quiet round doubles the wait from `gossip_interval` up to this;
    /// `anti_entropy.rs`).
    pub gossip_max: Duration,
    /// Time within which every connected router has seen a change; the
    /// quarantine after a reclaim or a relearned ring is twice this.
    pub convergence_bound: Duration,
    /// How long to wait for a donation before asking someone else.
    pub request_timeout: Duration,
    /// The newest ring channel version this allocator speaks:
    /// [`RING_TITLES_VERSION`] (signed titles sent with a ring and required
    /// of a titled peer's jumps, `ring/title.rs`) by default;
    /// [`RING_KEYS_VERSION`](super::message::RING_KEYS_VERSION) (writers' keys asked of peers, `keys.rs`)
    /// sends no titles and judges jumps as before them; [`RING_DELTA_VERSION`](super::message::RING_DELTA_VERSION) behaves as a build that asked for no
    /// keys, with digests answered by bucket hashes and the differing
    /// buckets; 2 or 3 behaves as a build that
    /// answered digests with its whole ring, 1 as one built before digests
    /// (full ring every interval, digests refused), which the simulator
    /// uses for mixed-version clusters.
    pub ring_version: u8,
    /// Refuse a version jump over another router's range that comes
    /// without a title proving its writer's right (`ring/title.rs`), from
    /// every peer, once the ring's titles latch is set: at birth in a ring
    /// this build initialises (`titles_latch.rs`). In a ring a build before
    /// titles initialised, jumps are accepted and counted as
    /// `jump_without_title`, so that older routers interoperate (docs/ARCHITECTURE.md
    /// "Signed titles"). On by default; off, this router neither sets nor
    /// enforces the latch (every build before titles behaved so).
    pub require_titles: bool,
    /// The least time between two answered donation requests from one
    /// requester (`donation.rs`, drain limits).
    pub donation_interval: Duration,
    /// Signs this router's ring items and checks others' (the driver's is
    /// XEdDSA over the router's identity; `crate::ipam::signed`).
    pub crypto: Box<dyn RingCrypto>,
}

impl Config {
    /// Defaults: gossip every 5 s (digests backing off to 30 s while
    /// nothing changes), convergence bound 30 s (so 60 s of
    /// quarantine), donation request timeout 5 s, one answered donation
    /// request per requester per 10 s.
    pub fn new(me: PeerId, range: AddrRange, init: Init, crypto: Box<dyn RingCrypto>) -> Self {
        Self {
            me,
            range,
            init,
            gossip_interval: Duration::from_secs(5),
            gossip_max: Duration::from_secs(30),
            convergence_bound: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            ring_version: RING_TITLES_VERSION,
            require_titles: true,
            donation_interval: Duration::from_secs(10),
            crypto,
        }
    }
}

/// An address seen in use in the kernel at start (a weft-tagged /32 route,
/// a veth, the node address), with its holder when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InUse {
    /// The address.
    pub addr: IpAddr,
    /// Its holder, if the driver could tell.
    pub key: Option<AllocKey>,
}

/// One router's IPAM: see the module docs.
pub struct Allocator<S: Store> {
    cfg: Config,
    store: S,
    ring: Option<Ring>,
    allocs: Allocations,
    /// This router's ranges in the ring (quarantined ones included).
    mine: Vec<(u128, u128)>,
    /// `(start, end, until)`: owned but not to be allocated from yet.
    quarantine: Vec<(u128, u128, Instant)>,
    may_vote: bool,
    /// Voter slots of the ballot (`init.rs`): the seed list's length.
    slots: usize,
    /// This router locked its ballot: it proposes no other.
    locked: bool,
    /// Peers that locked the same ballot.
    locked_by: BTreeSet<PeerId>,
    relearn_until: Option<Instant>,
    agreed: BTreeSet<PeerId>,
    mismatched: BTreeSet<PeerId>,
    conflict: Option<(GenesisId, GenesisId)>,
    tombstoned: Option<PeerId>,
    reachable: BTreeSet<PeerId>,
    pending: Option<(PeerId, Instant)>,
    avoid: BTreeMap<PeerId, Instant>,
    /// What each recent requester was given (`donation.rs`, drain limits).
    donated_to: BTreeMap<PeerId, donation::Grant>,
    /// The writers' keys and the signatures already checked.
    verifier: Verifier,
    /// Key requests sent, per peer (`keys.rs`).
    keys_asked: BTreeMap<PeerId, keys::KeysAsked>,
    /// Connected peers whose negotiated ring version carries titles
    /// (`set_peer_ring_version`): status names the owners not among them
    /// while the titles latch is not set (`titles_latch.rs`).
    titled_peers: BTreeSet<PeerId>,
    next_gossip: Instant,
    /// Digest back-off (`anti_entropy.rs`).
    backoff: anti_entropy::Backoff,
    transmits: VecDeque<(Destination, Vec<u8>)>,
    events: VecDeque<Event>,
}

/// `a` minus `b`, for inclusive, ascending, disjoint interval lists.
pub(super) fn subtract(a: &[(u128, u128)], b: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    for &(lo, hi) in a {
        let mut pieces = vec![(lo, hi)];
        for &(blo, bhi) in b {
            let mut next = Vec::new();
            for (plo, phi) in pieces {
                if bhi < plo || blo > phi {
                    next.push((plo, phi));
                    continue;
                }
                if blo > plo {
                    next.push((plo, blo - 1));
                }
                if bhi < phi {
                    next.push((bhi + 1, phi));
                }
            }
            pieces = next;
        }
        out.extend(pieces);
    }
    out
}

/// How many offsets the inclusive ranges cover.
pub(super) fn span(ranges: &[(u128, u128)]) -> u128 {
    ranges.iter().map(|(lo, hi)| hi - lo + 1).sum()
}

impl<S: Store> Allocator<S> {
    /// Starts the allocator from whatever `store` holds, then records
    /// `in_use` (addresses the kernel shows in use, DESIGN.md: "Before an
    /// empty-state router claims anything, it rebuilds its in-use set from
    /// the kernel") so they are never handed out again. A router with
    /// anything in use never votes for a new ring: it was part of one.
    pub fn new(
        cfg: Config,
        mut store: S,
        in_use: &[InUse],
        now: Instant,
    ) -> Result<Self, IpamError> {
        let stored = store.load().map_err(IpamError::Persist)?;
        let bound2 = cfg.convergence_bound * 2;
        let mut ring = None;
        let mut quarantine = Vec::new();
        if let Some(bytes) = stored.ring {
            let record = PersistedRing::decode(&bytes, cfg.me)?;
            let loaded = Ring::from_wire(record.ring)
                .and_then(|r| r.with_titles(Some(record.titles)))
                .map(|r| r.with_marks(record.marks))
                .map_err(|e| super::store::StateError::Corrupt(e.to_string()))?;
            if loaded.range() != cfg.range {
                return Err(IpamError::RangeChanged {
                    saved: loaded.range(),
                    configured: cfg.range,
                });
            }
            quarantine = record
                .quarantined
                .into_iter()
                .map(|(a, b)| (a, b, now + bound2))
                .collect();
            ring = Some(loaded);
        }
        let allocs = match stored.allocations {
            Some(bytes) => {
                let record = PersistedAllocations::decode(&bytes, cfg.me)?;
                let mut table = Allocations::from_pairs(record.allocations);
                for (key, pod) in record.pods {
                    table.name_pod(&key, pod);
                }
                table
            }
            None => Allocations::default(),
        };
        let slots = match &cfg.init {
            Init::Voters(v) => v.len(),
            _ => 0,
        };
        let mut this = Self {
            slots,
            locked: false,
            locked_by: BTreeSet::new(),
            next_gossip: now,
            backoff: anti_entropy::Backoff::new(cfg.gossip_interval, now),
            cfg,
            store,
            ring,
            allocs,
            mine: Vec::new(),
            quarantine,
            may_vote: false,
            relearn_until: None,
            agreed: BTreeSet::new(),
            mismatched: BTreeSet::new(),
            conflict: None,
            tombstoned: None,
            reachable: BTreeSet::new(),
            pending: None,
            avoid: BTreeMap::new(),
            donated_to: BTreeMap::new(),
            verifier: Verifier::default(),
            keys_asked: BTreeMap::new(),
            titled_peers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        let mut added = false;
        for item in in_use {
            let Some(offset) = this.cfg.range.offset(item.addr) else {
                continue;
            };
            if this.allocs.holder(offset).is_some() {
                continue;
            }
            let key = item
                .key
                .clone()
                .filter(|k| this.allocs.get(k).is_none())
                .unwrap_or(AllocKey::Held(offset));
            added |= this.allocs.insert(key, offset);
        }
        if added {
            this.persist_allocations().map_err(IpamError::Persist)?;
        }
        let me = this.cfg.me;
        this.may_vote = this.ring.is_none()
            && this.allocs.is_empty()
            && matches!(&this.cfg.init, Init::Voters(v) if v.contains(&me));
        if this.ring.is_some() {
            this.refresh_mine();
            this.check_tombstone();
            let genesis = this.ring.as_ref().map(Ring::genesis_id);
            if let Some(genesis) = genesis {
                this.events.push_back(Event::RingReady { genesis });
            }
        } else if let Init::Seed(owners) = &this.cfg.init {
            // Static split: no vote. Not after a stateless restart with
            // addresses still in use: the cluster has moved on; learn it.
            // An empty set means the driver has not resolved the names yet.
            if this.allocs.is_empty() && !owners.is_empty() {
                let ring = this.genesis_ring("seed", owners);
                this.adopt(ring, false, now)?;
            }
        } else {
            this.try_initialise(now)?;
        }
        Ok(this)
    }

    /// The store (e.g. to restart a simulated router with its state).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably (tests inject failures through it).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// This router's ID.
    pub fn id(&self) -> PeerId {
        self.cfg.me
    }

    /// The ring, once known (the data plane snapshots it for lookups).
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    /// Who owns (and routes) `addr`, per this router's ring.
    pub fn owner_of(&self, addr: IpAddr) -> Option<PeerId> {
        let offset = self.cfg.range.offset(addr)?;
        self.ring.as_ref()?.owner_at(offset)
    }

    /// True once the ring is known and this router is not tombstoned.
    pub fn is_ready(&self) -> bool {
        self.ring.is_some() && self.tombstoned.is_none()
    }

    /// The routers currently reachable (from the gossip topology): used to
    /// refuse `rmpeer` of a live router, to choose donors and for status.
    pub fn set_reachable(&mut self, peers: BTreeSet<PeerId>) {
        self.reachable = peers;
    }

    /// Lends `id`'s X25519 public key (from its topology entry or its
    /// handshake) for checking the ring items it signed; an item by a
    /// writer whose key was never lent is refused (`signed.rs`).
    pub fn learn_key(&mut self, id: PeerId, public_key: [u8; 32]) {
        self.verifier.learn_key(id, public_key);
    }

    /// Lends the keys of routers `0..=last` under the test scheme
    /// ([`crate::ipam::signed::TestCrypto`]): tests and the simulator.
    #[cfg(any(test, feature = "sim"))]
    pub fn learn_test_keys(&mut self, last: u64) {
        for id in (0..=last).map(PeerId) {
            self.learn_key(id, crate::ipam::signed::TestCrypto::public_key(id));
        }
    }

    /// Signatures checked so far (cache misses), for metrics and tests.
    pub fn signature_checks(&self) -> u64 {
        self.verifier.checks
    }

    /// A new neighbour: send it the full ring (or our proposal).
    pub fn handle_peer_up(&mut self, peer: PeerId, now: Instant) {
        if self.ring.is_some() {
            self.send_ring(Destination::Peer(peer), now);
        } else if self.may_vote {
            let bytes = self.proposal().encode();
            self.transmits.push_back((Destination::Peer(peer), bytes));
        }
    }

    /// The ring version negotiated with `peer` on its connection (`None`:
    /// it went down), for [`Allocator::titles_waiting_for`]. It does not
    /// decide whether titles are required of the peer: the ring's latch
    /// does, for every peer alike (`titles_latch.rs`).
    pub fn set_peer_ring_version(&mut self, peer: PeerId, version: Option<u8>) {
        if version.is_some_and(|v| v >= RING_TITLES_VERSION) {
            self.titled_peers.insert(peer);
        } else {
            self.titled_peers.remove(&peer);
        }
    }

    /// Handles one IPAM message from `from`. On error nothing changed; the
    /// driver counts it and logs at most once a second.
    pub fn handle_message(
        &mut self,
        from: PeerId,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), IpamError> {
        match Message::decode(bytes)? {
            Message::Ring(ring) => self.on_ring(from, ring, delta::SendBack::Ring, now),
            Message::Propose(proposal) => self.on_propose(from, proposal, now),
            Message::DonateRequest(request) => self.on_donate_request(from, request, now),
            Message::Digest(summary) => self.on_digest(from, summary, now),
            Message::DeltaDigest(summary) => self.on_delta_digest(from, summary, now),
            Message::Buckets(buckets) => self.on_buckets(from, buckets, now),
            Message::Delta(delta) => self.on_delta(from, delta, now),
            Message::WantKeys(ids) if self.speaks_keys() => {
                self.on_want_keys(from, &ids);
                Ok(())
            }
            Message::Keys(keys) if self.speaks_keys() => {
                self.on_keys(from, &keys, now);
                Ok(())
            }
            // As a build before version 5 did: an unknown type.
            Message::WantKeys(_) | Message::Keys(_) => {
                Err(MessageError::from(DecodeError::UnknownType(bytes[1])).into())
            }
        }
    }

    /// Fires whatever is due: the periodic broadcast of the ring (or of a
    /// proposal while not initialised), and donation request timeouts.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), IpamError> {
        if let Some((peer, deadline)) = self.pending
            && now >= deadline
        {
            self.pending = None;
            self.avoid.insert(peer, now + self.cfg.request_timeout * 4);
        }
        if now < self.next_gossip {
            return Ok(());
        }
        self.next_gossip = now + self.cfg.gossip_interval;
        self.quarantine.retain(|q| q.2 > now);
        self.avoid.retain(|_, until| *until > now);
        self.keys_asked.retain(|_, asked| !asked.expired(now));
        let interval = self.cfg.donation_interval;
        self.donated_to.retain(|_, g| g.live(now, interval));
        if self.ring.is_some() {
            self.send_anti_entropy(now);
        } else if self.may_vote {
            let bytes = self.proposal().encode();
            self.transmits.push_back((Destination::Broadcast, bytes));
            self.try_initialise(now)?;
        }
        Ok(())
    }

    /// When `handle_timeout` wants to run next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let gossip = (self.next_gossip, Timer::Gossip);
        match self.pending {
            Some((_, deadline)) if deadline < self.next_gossip => Some((deadline, Timer::Donation)),
            _ => Some(gossip),
        }
    }

    /// The next message to send (already persisted where that matters).
    pub fn poll_transmit(&mut self) -> Option<(Destination, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn addr(&self, offset: u128) -> Option<IpAddr> {
        self.cfg.range.addr(offset)
    }

    fn refresh_mine(&mut self) {
        self.mine = self
            .ring
            .as_ref()
            .map(|r| r.ranges_of(self.cfg.me))
            .unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_cuts_holes_out_of_ranges() {
        assert_eq!(
            subtract(&[(0, 10), (20, 30)], &[(5, 6), (25, 40)]),
            vec![(0, 4), (7, 10), (20, 24)]
        );
        assert_eq!(subtract(&[(0, 10)], &[(0, 10)]), vec![]);
    }
}
