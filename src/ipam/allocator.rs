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
//!   voter set; once a majority of the voters (itself included) proposed the
//!   identical set, it builds the genesis ring, split evenly among all
//!   voters. Every router doing so builds the same ring with the same genesis
//!   ID, so two quorums can never produce two rings. Others wait and learn.
//! - A ring learned from a peer (first start, or a restart without state)
//!   quarantines this router's own ranges: its former self may have given
//!   some away. So does a reclaim. Quarantine lasts `2 × convergence_bound`.
//! - A router that finds itself tombstoned stops allocating and raises
//!   [`Alarm::Tombstoned`]; one that loses a range holding allocations raises
//!   [`Alarm::OwnershipLost`].

use super::error::{AllocError, IpamError};
use super::message::{DonateRequest, Message, Proposal};
use super::range::AddrRange;
use super::ring::{GenesisId, Ring};
use super::space::{AllocKey, Allocations};
use super::store::{PersistedAllocations, PersistedRing, STATE_FORMAT, Store};
use crate::id::PeerId;
use serde::Serialize;
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
#[derive(Clone, Debug)]
pub struct Config {
    /// This router.
    pub me: PeerId,
    /// The cluster range.
    pub range: AddrRange,
    /// How the ring starts.
    pub init: Init,
    /// How often the ring (or a proposal) is re-broadcast (anti-entropy).
    pub gossip_interval: Duration,
    /// Time within which every connected router has seen a change; the
    /// quarantine after a reclaim or a relearned ring is twice this.
    pub convergence_bound: Duration,
    /// How long to wait for a donation before asking someone else.
    pub request_timeout: Duration,
}

impl Config {
    /// Defaults: gossip every 5 s, convergence bound 30 s (so 60 s of
    /// quarantine), donation request timeout 5 s.
    pub fn new(me: PeerId, range: AddrRange, init: Init) -> Self {
        Self {
            me,
            range,
            init,
            gossip_interval: Duration::from_secs(5),
            convergence_bound: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
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

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// One peer.
    Peer(PeerId),
    /// Everyone, over the gossip channel.
    Broadcast,
}

/// Why the timer is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Next anti-entropy broadcast (or proposal).
    Gossip,
    /// A donation request times out.
    Donation,
}

/// Something the operator or the driver should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The ring is known (initialised, learned or loaded).
    RingReady {
        /// Its genesis ID.
        genesis: GenesisId,
    },
    /// A donation arrived (and is persisted): pending CNI ADDs may retry.
    RangeReceived {
        /// The donor.
        from: PeerId,
        /// How many addresses.
        addresses: u128,
    },
    /// This router donated addresses.
    RangeDonated {
        /// The recipient.
        to: PeerId,
        /// How many.
        addresses: u128,
    },
    /// `rmpeer` (or a follow-up) took over a dead router's ranges.
    Reclaimed {
        /// The dead router.
        dead: PeerId,
        /// How many addresses.
        addresses: u128,
    },
    /// This router held no pods and yielded to a ring initialised
    /// elsewhere; its node address is gone and must be allocated again.
    RingReplaced {
        /// The abandoned ring.
        old: GenesisId,
        /// The ring joined.
        new: GenesisId,
    },
    /// Something the operator must look at.
    Alarm(Alarm),
}

/// Operator-visible problems (logged at error level by the driver).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Alarm {
    /// This router's ID was reclaimed: it stopped allocating.
    Tombstoned {
        /// Who reclaimed it.
        reclaimer: PeerId,
    },
    /// A range holding allocations now belongs to someone else.
    OwnershipLost {
        /// Allocations inside the lost range.
        addresses_in_use: u64,
    },
    /// A peer's ring was initialised separately.
    GenesisMismatch {
        /// Ours.
        ours: GenesisId,
        /// Theirs.
        theirs: GenesisId,
        /// The peer.
        peer: PeerId,
    },
    /// A peer names a different voter set (or range); no initialisation with it.
    VoterSetMismatch {
        /// The peer.
        peer: PeerId,
    },
}

/// Where the allocator stands (status `ipam.state`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// A voter waiting for a majority of voters with the same voter set.
    WaitingForVoters {
        /// Voters seen proposing the same set (this router included).
        agreed: usize,
        /// Majority needed.
        quorum: usize,
        /// Peers whose voter set or range differs.
        mismatched: Vec<String>,
    },
    /// Not a voter (or cannot vote): waiting to learn the ring.
    WaitingForRing,
    /// The ring is known; allocation works.
    Ready,
    /// A peer's ring has another genesis; see the log for the fix.
    Conflict {
        /// Our genesis.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// This router was reclaimed; it allocates nothing.
    Tombstoned {
        /// By whom.
        reclaimer: String,
    },
}

/// An inclusive address range, as `weft status` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OwnedRange {
    /// First address.
    pub start: IpAddr,
    /// Last address.
    pub end: IpAddr,
}

/// The `ipam` object of `weft status --json` (DESIGN.md "Operator contract").
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// The cluster range.
    pub range: String,
    /// Where the allocator stands.
    pub state: Phase,
    /// Genesis ID of the ring, when known.
    pub genesis: Option<String>,
    /// Ranges this router owns.
    pub owned_ranges: Vec<OwnedRange>,
    /// Addresses in them.
    pub owned_addresses: u128,
    /// Addresses handed out (node address included).
    pub allocated: u64,
    /// Addresses that can be handed out now (quarantine and reserved excluded).
    pub free: u128,
    /// Routers owning part of the ring.
    pub ring_peers: usize,
    /// Share (0..=1) of the range owned by routers not in the reachability set.
    pub unreachable_share: f64,
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
    relearn_until: Option<Instant>,
    agreed: BTreeSet<PeerId>,
    mismatched: BTreeSet<PeerId>,
    conflict: Option<(GenesisId, GenesisId)>,
    tombstoned: Option<PeerId>,
    reachable: BTreeSet<PeerId>,
    pending: Option<(PeerId, Instant)>,
    avoid: BTreeMap<PeerId, Instant>,
    next_gossip: Instant,
    transmits: VecDeque<(Destination, Vec<u8>)>,
    events: VecDeque<Event>,
}

/// `a` minus `b`, for inclusive, ascending, disjoint interval lists.
fn subtract(a: &[(u128, u128)], b: &[(u128, u128)]) -> Vec<(u128, u128)> {
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

fn span(ranges: &[(u128, u128)]) -> u128 {
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
                Allocations::from_pairs(PersistedAllocations::decode(&bytes, cfg.me)?.allocations)
            }
            None => Allocations::default(),
        };
        let mut this = Self {
            next_gossip: now,
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
                let ring = Ring::genesis(this.cfg.range, "seed", owners);
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

    /// Replaces the voter set before initialisation (when routers name each
    /// other, the voters are learned through the handshake).
    pub fn set_voters(&mut self, voters: BTreeSet<PeerId>, now: Instant) -> Result<(), IpamError> {
        if self.ring.is_some() {
            return Ok(());
        }
        self.may_vote = self.allocs.is_empty() && voters.contains(&self.cfg.me);
        self.cfg.init = Init::Voters(voters);
        self.agreed.clear();
        self.mismatched.clear();
        if self.may_vote {
            // Propose at once rather than at the next anti-entropy round.
            let bytes = self.proposal().encode();
            self.transmits.push_back((Destination::Broadcast, bytes));
        }
        self.try_initialise(now)
    }

    /// Sets the owners of a static split (`seed=NAMES`) once the driver has
    /// resolved every name to an ID, and builds the ring from them unless a
    /// ring is already known or this router has addresses in use (then it
    /// learns the ring instead). Every router resolving the same names builds
    /// the same ring.
    pub fn set_seed_owners(
        &mut self,
        owners: BTreeSet<PeerId>,
        now: Instant,
    ) -> Result<(), IpamError> {
        if self.ring.is_some() || owners.is_empty() {
            return Ok(());
        }
        self.cfg.init = Init::Seed(owners.clone());
        if !self.allocs.is_empty() {
            return Ok(());
        }
        let ring = Ring::genesis(self.cfg.range, "seed", &owners);
        self.adopt(ring, false, now)?;
        self.send_ring(Destination::Broadcast, now);
        Ok(())
    }

    /// The routers currently reachable (from the gossip topology): used to
    /// refuse `rmpeer` of a live router, to choose donors and for status.
    pub fn set_reachable(&mut self, peers: BTreeSet<PeerId>) {
        self.reachable = peers;
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

    /// Handles one IPAM message from `from`. On error nothing changed; the
    /// driver counts it and logs at most once a second.
    pub fn handle_message(
        &mut self,
        from: PeerId,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), IpamError> {
        match Message::decode(bytes)? {
            Message::Ring(ring) => self.on_ring(from, ring, now),
            Message::Propose(proposal) => self.on_propose(from, proposal, now),
            Message::DonateRequest(request) => self.on_donate_request(from, request, now),
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
        if self.ring.is_some() {
            self.send_ring(Destination::Broadcast, now);
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

    /// Allocates an address for a pod interface, idempotently: a retry with
    /// the same `(container_id, ifname)` gets the same address. Persisted
    /// before it returns. See [`AllocError`] for "try again later".
    pub fn allocate(
        &mut self,
        container_id: &str,
        ifname: &str,
        now: Instant,
    ) -> Result<IpAddr, AllocError> {
        let key = AllocKey::pod(container_id, ifname)?;
        self.allocate_key(key, now)
    }

    /// The router's own address (the /32 on `weft0`), from the same ranges.
    pub fn allocate_node(&mut self, now: Instant) -> Result<IpAddr, AllocError> {
        self.allocate_key(AllocKey::Node, now)
    }

    /// Releases a pod's address (CNI DEL). Something never allocated is an
    /// error, [`AllocError::NotFound`]; whether DEL treats it as success is
    /// the caller's choice.
    pub fn release(
        &mut self,
        container_id: &str,
        ifname: &str,
        _now: Instant,
    ) -> Result<IpAddr, AllocError> {
        let key = AllocKey::pod(container_id, ifname)?;
        let Some(offset) = self.allocs.remove(&key) else {
            return Err(AllocError::NotFound {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            });
        };
        if let Err(e) = self.persist_allocations() {
            self.allocs.insert(key, offset);
            return Err(AllocError::Persist(e));
        }
        self.addr(offset)
            .ok_or_else(|| AllocError::TryAgain("address outside the range".into()))
    }

    /// Frees an address the router found in use in the kernel at start
    /// without knowing its holder ([`AllocKey::Held`]), when the CNI plugin
    /// deletes the pod that had it. Anything else is [`AllocError::NotFound`].
    pub fn release_held(&mut self, addr: IpAddr) -> Result<IpAddr, AllocError> {
        let not_found = || AllocError::NotFound {
            container_id: String::new(),
            ifname: addr.to_string(),
        };
        let offset = self.cfg.range.offset(addr).ok_or_else(not_found)?;
        let key = AllocKey::Held(offset);
        if self.allocs.holder(offset) != Some(&key) {
            return Err(not_found());
        }
        self.allocs.remove(&key);
        if let Err(e) = self.persist_allocations() {
            self.allocs.insert(key, offset);
            return Err(AllocError::Persist(e));
        }
        Ok(addr)
    }

    /// The address held by a pod interface.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Option<IpAddr> {
        let key = AllocKey::pod(container_id, ifname).ok()?;
        self.allocs.get(&key).and_then(|o| self.addr(o))
    }

    /// Every address this router has handed out, with its holder.
    pub fn allocations(&self) -> Vec<(AllocKey, IpAddr)> {
        self.allocs
            .pairs()
            .filter_map(|(k, o)| Some((k.clone(), self.addr(o)?)))
            .collect()
    }

    /// Takes over the ranges of a dead router: writes a tombstone for it,
    /// quarantines what it took for `2 × convergence_bound`, persists, then
    /// broadcasts. Refused while `dead` is reachable unless `force`.
    /// Returns the number of addresses taken.
    pub fn rmpeer(&mut self, dead: PeerId, force: bool, now: Instant) -> Result<u128, IpamError> {
        if dead == self.cfg.me {
            return Err(IpamError::ReclaimSelf);
        }
        if let Some(by) = self.tombstoned {
            return Err(IpamError::Tombstoned(by));
        }
        if self.reachable.contains(&dead) && !force {
            return Err(IpamError::PeerReachable(dead));
        }
        let me = self.cfg.me;
        let Some(ring) = self.ring.as_mut() else {
            return Err(IpamError::NotReady);
        };
        let old_ring = ring.clone();
        let old_quarantine = self.quarantine.clone();
        let before = self.mine.clone();
        ring.reclaim(me, dead);
        self.refresh_mine();
        let taken = subtract(&self.mine, &before);
        let until = now + self.cfg.convergence_bound * 2;
        self.quarantine
            .extend(taken.iter().map(|(a, b)| (*a, *b, until)));
        if let Err(e) = self.persist_ring() {
            self.ring = Some(old_ring);
            self.quarantine = old_quarantine;
            self.refresh_mine();
            return Err(IpamError::Persist(e));
        }
        let addresses = span(&taken);
        self.events.push_back(Event::Reclaimed { dead, addresses });
        self.send_ring(Destination::Broadcast, now);
        Ok(addresses)
    }

    /// Hands every range this router owns to live peers so that a drained
    /// node can go (`weft leave`, DESIGN.md "Leave"): the ranges go round the
    /// reachable routers in ID order, the ring is persisted, then broadcast.
    /// Refused while pods hold addresses here (unless `force`: their
    /// addresses may then be handed out again elsewhere), while a reclaimed
    /// range is still quarantined, or with no live peer to take them. The
    /// node's own address goes with its range. Returns the addresses handed.
    pub fn leave(&mut self, force: bool, now: Instant) -> Result<u128, IpamError> {
        if let Some(by) = self.tombstoned {
            return Err(IpamError::Tombstoned(by));
        }
        let pods = self.allocs.pods();
        if pods > 0 && !force {
            return Err(IpamError::PodsRemain(pods));
        }
        if let Some(until) = self.quarantined_until(now) {
            return Err(IpamError::Quarantined(until.saturating_duration_since(now)));
        }
        let me = self.cfg.me;
        let heirs: Vec<PeerId> = self
            .reachable
            .iter()
            .copied()
            .filter(|p| *p != me)
            .collect();
        if heirs.is_empty() {
            return Err(IpamError::NoHeir);
        }
        let Some(ring) = self.ring.as_mut() else {
            return Err(IpamError::NotReady);
        };
        let old_ring = ring.clone();
        let mine = ring.ranges_of(me);
        let mut given = Vec::new();
        for &(start, end) in &mine {
            // A range may span several of our entries; donate entry by entry.
            let mut lo = start;
            while lo <= end {
                let entry_end = ring
                    .entries()
                    .range(lo + 1..)
                    .next()
                    .map_or(end, |(t, _)| (t - 1).min(end));
                let heir = heirs[given.len() % heirs.len()];
                if !ring.donate(me, lo, entry_end, heir) {
                    self.ring = Some(old_ring);
                    return Err(IpamError::NotReady);
                }
                given.push((heir, entry_end - lo + 1));
                lo = entry_end + 1;
            }
        }
        let old_allocs = self.allocs.clone();
        self.allocs = Allocations::default();
        self.refresh_mine();
        if let Err(e) = self
            .persist_ring()
            .and_then(|()| self.persist_allocations())
        {
            self.ring = Some(old_ring);
            self.allocs = old_allocs;
            self.refresh_mine();
            let _ = self.persist_ring();
            return Err(IpamError::Persist(e));
        }
        for &(to, addresses) in &given {
            self.events.push_back(Event::RangeDonated { to, addresses });
        }
        self.send_ring(Destination::Broadcast, now);
        Ok(given.iter().map(|g| g.1).sum())
    }

    /// This router's ranges it may allocate from now (quarantine excluded).
    pub fn allocatable_ranges(&self, now: Instant) -> Vec<(IpAddr, IpAddr)> {
        self.allocatable(now)
            .into_iter()
            .filter_map(|(a, b)| Some((self.addr(a)?, self.addr(b)?)))
            .collect()
    }

    /// Where the allocator stands.
    pub fn phase(&self) -> Phase {
        if let Some(by) = self.tombstoned {
            return Phase::Tombstoned {
                reclaimer: by.to_string(),
            };
        }
        if let Some((ours, theirs)) = self.conflict {
            return Phase::Conflict {
                ours: ours.to_string(),
                theirs: theirs.to_string(),
            };
        }
        if self.ring.is_some() {
            return Phase::Ready;
        }
        let mismatched = self.mismatched.iter().map(ToString::to_string).collect();
        match &self.cfg.init {
            Init::Voters(v) if self.may_vote => Phase::WaitingForVoters {
                agreed: self.agreed_count(),
                quorum: v.len() / 2 + 1,
                mismatched,
            },
            _ => Phase::WaitingForRing,
        }
    }

    /// The status numbers (DESIGN.md `ipam` object).
    pub fn status(&self, now: Instant) -> Status {
        let owned_ranges = self
            .mine
            .iter()
            .filter_map(|(a, b)| {
                Some(OwnedRange {
                    start: self.addr(*a)?,
                    end: self.addr(*b)?,
                })
            })
            .collect();
        let (ring_peers, unreachable) = match &self.ring {
            Some(ring) => {
                let mut unreachable = 0u128;
                for owner in ring.owners() {
                    if owner != self.cfg.me && !self.reachable.contains(&owner) {
                        unreachable += span(&ring.ranges_of(owner));
                    }
                }
                (ring.owners().len(), unreachable)
            }
            None => (0, 0),
        };
        Status {
            range: self.cfg.range.to_string(),
            state: self.phase(),
            genesis: self.ring.as_ref().map(|r| r.genesis_id().to_string()),
            owned_ranges,
            owned_addresses: span(&self.mine),
            allocated: self.allocs.len() as u64,
            free: self.free(now),
            ring_peers,
            unreachable_share: unreachable as f64 / self.cfg.range.size() as f64,
        }
    }

    // ---- internals ----

    fn addr(&self, offset: u128) -> Option<IpAddr> {
        self.cfg.range.addr(offset)
    }

    /// True while this router's own history is not authoritative: after it
    /// learned the ring from a peer (restart without state), until the
    /// quarantine of that ring ends.
    fn relearning(&self, now: Instant) -> bool {
        self.relearn_until.is_some_and(|until| now < until)
    }

    /// When the last quarantine ends, if one is active (the simulator keeps
    /// partitions away until then, as an operator keeps `rmpeer` away from them).
    pub fn quarantined_until(&self, now: Instant) -> Option<Instant> {
        self.quarantine
            .iter()
            .map(|q| q.2)
            .filter(|until| *until > now)
            .max()
    }

    fn refresh_mine(&mut self) {
        self.mine = self
            .ring
            .as_ref()
            .map(|r| r.ranges_of(self.cfg.me))
            .unwrap_or_default();
    }

    fn allocatable(&self, now: Instant) -> Vec<(u128, u128)> {
        if self.tombstoned.is_some() {
            return Vec::new();
        }
        let mut holes: Vec<(u128, u128)> = self
            .quarantine
            .iter()
            .filter(|q| q.2 > now)
            .map(|q| (q.0, q.1))
            .collect();
        if holes.is_empty() {
            return self.mine.clone();
        }
        holes.sort_unstable();
        subtract(&self.mine, &holes)
    }

    fn free(&self, now: Instant) -> u128 {
        let range = self.cfg.range;
        self.allocatable(now)
            .iter()
            .map(|&(lo, hi)| {
                let reserved = [0, range.size() - 1]
                    .iter()
                    .filter(|o| **o >= lo && **o <= hi && range.is_reserved(**o))
                    .count() as u128;
                (hi - lo + 1).saturating_sub(reserved + self.allocs.count_in(lo, hi))
            })
            .sum()
    }

    fn agreed_count(&self) -> usize {
        match &self.cfg.init {
            Init::Voters(v) => {
                let me = usize::from(v.contains(&self.cfg.me));
                me + self
                    .agreed
                    .iter()
                    .filter(|p| v.contains(p) && **p != self.cfg.me)
                    .count()
            }
            _ => 0,
        }
    }

    fn proposal(&self) -> Message {
        let voters = match &self.cfg.init {
            Init::Voters(v) | Init::Seed(v) => v.iter().copied().collect(),
            Init::Observer => Vec::new(),
        };
        Message::Propose(Proposal {
            range: self.cfg.range,
            voters,
        })
    }

    fn try_initialise(&mut self, now: Instant) -> Result<(), IpamError> {
        let Init::Voters(voters) = &self.cfg.init else {
            return Ok(());
        };
        if !self.may_vote || self.ring.is_some() || self.agreed_count() * 2 <= voters.len() {
            return Ok(());
        }
        let ring = Ring::genesis(self.cfg.range, "voters", voters);
        self.adopt(ring, false, now)?;
        self.send_ring(Destination::Broadcast, now);
        Ok(())
    }

    /// Installs a first ring (built here or learned), persists it.
    fn adopt(&mut self, ring: Ring, quarantine_mine: bool, now: Instant) -> Result<(), IpamError> {
        let genesis = ring.genesis_id();
        self.ring = Some(ring);
        self.refresh_mine();
        let old_quarantine = self.quarantine.clone();
        if quarantine_mine {
            let until = now + self.cfg.convergence_bound * 2;
            self.relearn_until = Some(until);
            self.quarantine
                .extend(self.mine.iter().map(|(a, b)| (*a, *b, until)));
        }
        self.refresh_record(now);
        if let Err(e) = self.persist_ring() {
            self.ring = None;
            self.quarantine = old_quarantine;
            self.refresh_mine();
            return Err(IpamError::Persist(e));
        }
        self.may_vote = false;
        self.events.push_back(Event::RingReady { genesis });
        self.check_tombstone();
        Ok(())
    }

    fn check_tombstone(&mut self) {
        if self.tombstoned.is_some() {
            return;
        }
        if let Some(reclaimer) = self.ring.as_ref().and_then(|r| r.tombstone_of(self.cfg.me)) {
            self.tombstoned = Some(reclaimer);
            self.events
                .push_back(Event::Alarm(Alarm::Tombstoned { reclaimer }));
        }
    }

    fn refresh_record(&mut self, now: Instant) {
        let free = self.free(now);
        let pods = self.allocs.pods();
        let me = self.cfg.me;
        if let Some(ring) = self.ring.as_mut() {
            ring.set_record(me, free, pods);
        }
    }

    fn send_ring(&mut self, to: Destination, now: Instant) {
        self.refresh_record(now);
        if let Some(ring) = &self.ring {
            let bytes = Message::Ring(ring.clone()).encode();
            self.transmits.push_back((to, bytes));
        }
    }

    fn persist_ring(&mut self) -> std::io::Result<()> {
        let Some(ring) = &self.ring else {
            return Ok(());
        };
        let record = PersistedRing {
            format: STATE_FORMAT,
            me: self.cfg.me,
            ring: ring.to_wire(),
            quarantined: self.quarantine.iter().map(|q| (q.0, q.1)).collect(),
        };
        self.store.save_ring(&record.encode())
    }

    fn persist_allocations(&mut self) -> std::io::Result<()> {
        let record = PersistedAllocations {
            format: STATE_FORMAT,
            me: self.cfg.me,
            allocations: self.allocs.pairs().map(|(k, o)| (k.clone(), o)).collect(),
        };
        self.store.save_allocations(&record.encode())
    }

    fn allocate_key(&mut self, key: AllocKey, now: Instant) -> Result<IpAddr, AllocError> {
        if let Some(offset) = self.allocs.get(&key) {
            return self
                .addr(offset)
                .ok_or_else(|| AllocError::TryAgain("address outside the range".into()));
        }
        if let Some(by) = self.tombstoned {
            return Err(AllocError::Tombstoned(by));
        }
        if self.ring.is_none() {
            let why = match self.phase() {
                Phase::WaitingForVoters { agreed, quorum, .. } => {
                    format!("ring not initialised: {agreed} of {quorum} voters agree")
                }
                _ => "waiting to learn the ring from a peer".to_string(),
            };
            return Err(AllocError::TryAgain(why));
        }
        let ranges = self.allocatable(now);
        let range = self.cfg.range;
        match self.allocs.find_free(&ranges, |o| range.is_reserved(o)) {
            Some(offset) => {
                self.allocs.insert(key.clone(), offset);
                if let Err(e) = self.persist_allocations() {
                    self.allocs.remove(&key);
                    return Err(AllocError::Persist(e));
                }
                self.addr(offset)
                    .ok_or_else(|| AllocError::TryAgain("address outside the range".into()))
            }
            None => Err(AllocError::TryAgain(self.request_donation(now))),
        }
    }

    /// Asks the reachable router with the most advertised free space for a
    /// donation, unless a request is already out. Returns why we wait.
    fn request_donation(&mut self, now: Instant) -> String {
        if let Some((peer, _)) = self.pending {
            return format!("out of addresses; waiting for a donation from {peer}");
        }
        let Some(ring) = &self.ring else {
            return "ring not ready".into();
        };
        let genesis = ring.genesis_id();
        let me = self.cfg.me;
        let donor = ring
            .peer_records()
            .iter()
            .filter(|(p, r)| {
                **p != me
                    && r.free > 0
                    && ring.tombstone_of(**p).is_none()
                    && (self.reachable.is_empty() || self.reachable.contains(p))
                    && self.avoid.get(p).is_none_or(|until| now >= *until)
            })
            .max_by_key(|(p, r)| (r.free, std::cmp::Reverse(**p)))
            .map(|(p, _)| *p)
            .or_else(|| {
                // No record advertises free space yet (records travel with the
                // periodic ring broadcast): ask the reachable router owning
                // the most addresses rather than wait for the next round.
                ring.owners()
                    .into_iter()
                    .filter(|p| {
                        *p != me
                            && ring.tombstone_of(*p).is_none()
                            && !ring.peer_records().contains_key(p)
                            && self.reachable.contains(p)
                            && self.avoid.get(p).is_none_or(|until| now >= *until)
                    })
                    .max_by_key(|p| (span(&ring.ranges_of(*p)), std::cmp::Reverse(*p)))
            });
        let Some(donor) = donor else {
            return "out of addresses and no reachable router advertises free space".into();
        };
        let bytes = Message::DonateRequest(DonateRequest { genesis }).encode();
        self.transmits.push_back((Destination::Peer(donor), bytes));
        self.pending = Some((donor, now + self.cfg.request_timeout));
        format!("out of addresses; asked {donor} for a donation")
    }

    fn on_propose(
        &mut self,
        from: PeerId,
        proposal: Proposal,
        now: Instant,
    ) -> Result<(), IpamError> {
        if proposal.range != self.cfg.range {
            if self.mismatched.insert(from) {
                self.events
                    .push_back(Event::Alarm(Alarm::VoterSetMismatch { peer: from }));
            }
            return Err(IpamError::RangeMismatch {
                peer: from,
                ours: self.cfg.range,
                theirs: proposal.range,
            });
        }
        if self.ring.is_some() {
            // It is waiting for a ring: it can have ours.
            self.send_ring(Destination::Peer(from), now);
            return Ok(());
        }
        let Init::Voters(voters) = &self.cfg.init else {
            return Ok(());
        };
        let theirs: BTreeSet<PeerId> = proposal.voters.iter().copied().collect();
        if theirs != *voters {
            self.agreed.remove(&from);
            if self.mismatched.insert(from) {
                self.events
                    .push_back(Event::Alarm(Alarm::VoterSetMismatch { peer: from }));
            }
            return Ok(());
        }
        self.mismatched.remove(&from);
        if voters.contains(&from) {
            self.agreed.insert(from);
        }
        self.try_initialise(now)
    }

    fn on_ring(&mut self, from: PeerId, theirs: Ring, now: Instant) -> Result<(), IpamError> {
        if theirs.range() != self.cfg.range {
            return Err(IpamError::RangeMismatch {
                peer: from,
                ours: self.cfg.range,
                theirs: theirs.range(),
            });
        }
        let Some(mine) = &self.ring else {
            // A ring learned from a peer quarantines our own ranges (a former
            // self may have given some away), unless it is the very genesis
            // this router would have built itself, untouched by any write of
            // ours: then learning it is no riskier than building it.
            let range = self.cfg.range;
            let own_genesis = match &self.cfg.init {
                Init::Voters(v) => {
                    self.may_vote && theirs.genesis_id() == GenesisId::derive(&range, "voters", v)
                }
                Init::Seed(o) => {
                    !o.is_empty()
                        && self.allocs.is_empty()
                        && theirs.genesis_id() == GenesisId::derive(&range, "seed", o)
                }
                Init::Observer => false,
            };
            let me = self.cfg.me;
            let untouched = theirs
                .entries()
                .values()
                .all(|e| e.writer != me || e.version == 1);
            return self.adopt(theirs, !(own_genesis && untouched), now);
        };
        if mine.genesis_id() != theirs.genesis_id() {
            return self.on_foreign_ring(from, theirs, now);
        }
        if !mine.would_change(&theirs) {
            return Ok(());
        }
        let me = (!self.relearning(now)).then_some(self.cfg.me);
        mine.validate_update(me, &theirs)?;
        let mut joined = mine.clone();
        joined.join(&theirs);
        self.apply_ring(from, joined, now)
    }

    /// Installs a merged ring and acts on what changed for this router.
    fn apply_ring(&mut self, from: PeerId, mut ring: Ring, now: Instant) -> Result<(), IpamError> {
        let me = self.cfg.me;
        let before = self.mine.clone();
        // Finish reclaims: anything still owned by a router we reclaimed
        // (its last writes raced our reclaim) is taken again.
        let mut reclaimed_again = Vec::new();
        let dead: Vec<PeerId> = ring
            .tombstones()
            .iter()
            .filter(|(_, by)| *by == me)
            .map(|(d, _)| *d)
            .collect();
        for d in dead {
            if ring.owners().contains(&d) {
                ring.reclaim(me, d);
                reclaimed_again.push(d);
            }
        }
        let old_ring = self.ring.replace(ring);
        let old_quarantine = self.quarantine.clone();
        self.refresh_mine();
        let after = self.mine.clone();
        let gained = subtract(&after, &before);
        let lost = subtract(&before, &after);
        let until = now + self.cfg.convergence_bound * 2;
        let mut received: BTreeMap<PeerId, u128> = BTreeMap::new();
        if let Some(ring) = &self.ring {
            for &(lo, hi) in &gained {
                let first = ring
                    .entries()
                    .range(..=lo)
                    .next_back()
                    .map_or(lo, |(t, _)| *t);
                let mut pieces = ring.entries().range(first..=hi).peekable();
                while let Some((token, entry)) = pieces.next() {
                    let end = pieces.peek().map_or(hi, |(next, _)| (**next - 1).min(hi));
                    let start = (*token).max(lo);
                    if entry.owner != me || start > end {
                        continue;
                    }
                    if entry.writer == me || entry.reclaim {
                        // Written by a former self, or a reclaim: not trusted until converged.
                        self.quarantine.push((start, end, until));
                    } else {
                        *received.entry(entry.writer).or_default() += end - start + 1;
                    }
                }
            }
        }
        if (before != after || !reclaimed_again.is_empty())
            && let Err(e) = self.persist_ring()
        {
            self.ring = old_ring;
            self.quarantine = old_quarantine;
            self.refresh_mine();
            return Err(IpamError::Persist(e));
        }
        let in_use: u64 = lost
            .iter()
            .map(|(lo, hi)| self.allocs.count_in(*lo, *hi) as u64)
            .sum();
        if in_use > 0 {
            self.events.push_back(Event::Alarm(Alarm::OwnershipLost {
                addresses_in_use: in_use,
            }));
        }
        for (donor, addresses) in &received {
            self.events.push_back(Event::RangeReceived {
                from: *donor,
                addresses: *addresses,
            });
        }
        if !received.is_empty() || self.pending.is_some_and(|(p, _)| p == from) {
            if received.is_empty() {
                // The peer we asked answered without a donation: ask someone else next time.
                self.avoid.insert(from, now + self.cfg.request_timeout * 4);
            }
            self.pending = None;
        }
        for d in reclaimed_again {
            self.events.push_back(Event::Reclaimed {
                dead: d,
                addresses: 0,
            });
        }
        self.check_tombstone();
        if before != after {
            self.send_ring(Destination::Broadcast, now);
        }
        Ok(())
    }

    fn on_foreign_ring(
        &mut self,
        from: PeerId,
        theirs: Ring,
        now: Instant,
    ) -> Result<(), IpamError> {
        let Some(mine) = &self.ring else {
            return Ok(());
        };
        let ours = mine.genesis_id();
        let other = theirs.genesis_id();
        let we_hold = mine.holds_pods() || self.allocs.pods() > 0;
        let they_hold = theirs.holds_pods();
        if !we_hold && (they_hold || other > ours) {
            // DESIGN.md: "a ring holding no pod allocations yields to the other on its own".
            let old_allocs = self.allocs.clone();
            self.allocs.clear_all_but_holds();
            if let Err(e) = self.persist_allocations() {
                self.allocs = old_allocs;
                return Err(IpamError::Persist(e));
            }
            let old_ring = self.ring.take();
            let old_quarantine = std::mem::take(&mut self.quarantine);
            if let Err(e) = self.adopt(theirs, true, now) {
                self.ring = old_ring;
                self.quarantine = old_quarantine;
                self.refresh_mine();
                return Err(e);
            }
            self.conflict = None;
            self.pending = None;
            self.events.push_back(Event::RingReplaced {
                old: ours,
                new: other,
            });
            return Ok(());
        }
        if !we_hold && !they_hold {
            // They hold nothing either and their genesis is lower: they yield to us.
            return Ok(());
        }
        if self.conflict != Some((ours, other)) {
            self.conflict = Some((ours, other));
            self.events.push_back(Event::Alarm(Alarm::GenesisMismatch {
                ours,
                theirs: other,
                peer: from,
            }));
        }
        Err(IpamError::GenesisMismatch {
            ours,
            theirs: other,
            peer: from,
        })
    }

    fn on_donate_request(
        &mut self,
        from: PeerId,
        request: DonateRequest,
        now: Instant,
    ) -> Result<(), IpamError> {
        let me = self.cfg.me;
        let Some(ring) = &self.ring else {
            return Ok(());
        };
        if request.genesis != ring.genesis_id() {
            return Err(IpamError::GenesisMismatch {
                ours: ring.genesis_id(),
                theirs: request.genesis,
                peer: from,
            });
        }
        if self.tombstoned.is_some() || ring.tombstone_of(from).is_some() || from == me {
            return Ok(());
        }
        let range = self.cfg.range;
        let run = self
            .allocs
            .largest_free_run(&self.allocatable(now), |o| range.is_reserved(o));
        let Some((lo, hi)) = run else {
            // Nothing to give: our ring carries our (now zero) free count.
            self.send_ring(Destination::Peer(from), now);
            return Ok(());
        };
        // A reserved last address of the range (never allocated) goes with
        // the block, so the donor is not left owning a lone broadcast address.
        // Not from quarantine: a quarantined address may already be someone else's.
        let allocatable = self.allocatable(now);
        let hi = if range.is_reserved(hi + 1) && allocatable.iter().any(|r| r.0 <= hi && hi < r.1) {
            hi + 1
        } else {
            hi
        };
        let len = hi - lo + 1;
        let give = if len == 1 { 1 } else { len / 2 };
        let start_wanted = hi + 1 - give;
        // The run may span several of our entries; donate within the last one.
        let entry_start = ring
            .entries()
            .range(..=hi)
            .next_back()
            .map_or(lo, |(t, _)| *t);
        let start = start_wanted.max(entry_start);
        let old_ring = ring.clone();
        let donated = self
            .ring
            .as_mut()
            .is_some_and(|r| r.donate(me, start, hi, from));
        if !donated {
            return Ok(());
        }
        self.refresh_mine();
        if let Err(e) = self.persist_ring() {
            self.ring = Some(old_ring);
            self.refresh_mine();
            return Err(IpamError::Persist(e));
        }
        let addresses = hi - start + 1;
        self.events.push_back(Event::RangeDonated {
            to: from,
            addresses,
        });
        self.send_ring(Destination::Peer(from), now);
        self.send_ring(Destination::Broadcast, now);
        Ok(())
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
