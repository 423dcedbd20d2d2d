//! The IPAM driver: the control task's thin wrapper around the sans-IO
//! [`Allocator`]. It resolves the initialisation mode into peer IDs (seed
//! names through the topology, seed addresses through the connections),
//! answers the local API's address requests (the CNI plugin's interface),
//! turns allocator events into log lines and kernel plans, and builds the
//! `ipam` status object. It owns no socket: the control task carries its
//! messages on the gossip `Ring` channel.

use crate::config::IpallocInit;
use crate::id::PeerId;
use crate::ipam::{
    AddrRange, Alarm, AllocKey, Allocator, Config, Destination, Event, FileStore, InUse, Init,
    IpamError,
};
use crate::router::packet::{AddrKey, addr_key, ipv4_key};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

mod api;
mod auto_reclaim;
mod ballot;
mod crypto;
pub mod dual;
mod node_reclaim;

pub use auto_reclaim::AutoReclaim;
pub use ballot::{Ballot, PARTIAL_GRACE, SeedSlots};
pub use node_reclaim::NodeReclaim;
mod status;

/// The link-local gateway every pod routes through (DESIGN.md "The picture").
pub const POD_GATEWAY: &str = "169.254.1.1";

/// The IPv6 pods' link-local gateway: their default route goes `via
/// fe80::1` with a permanent neighbour entry (the host end's MAC), as IPv4
/// uses [`POD_GATEWAY`]; no address on the host carries it.
pub const POD_GATEWAY6: &str = "fe80::1";

/// What the driver needs to know about the rest of the router to resolve
/// the initialisation mode: who is at an address, who holds a name.
pub trait PeerDirectory {
    /// The router listening at `addr`, if known (this one included).
    fn id_at(&self, addr: SocketAddr) -> Option<PeerId>;
    /// The router holding `name`, if known (this one included).
    fn id_named(&self, name: &str) -> Option<PeerId>;
    /// A router's name, if known.
    fn name_of(&self, id: PeerId) -> Option<String>;
}

/// The pod ranges' allocators: the IPv4 one and, with dual-stack pods
/// configured, the IPv6 one (issue 19), handed to the control task.
pub struct PodIpam {
    /// The IPv4 pod range's.
    pub ipam: IpamDriver,
    /// The IPv6 pod range's, if configured.
    pub ipam6: Option<IpamDriver>,
}

/// The router's address management.
pub struct IpamDriver {
    alloc: Allocator<FileStore>,
    mode: IpallocInit,
    range: AddrRange,
    /// Why initialisation waits, for status (unresolved names or seeds).
    waiting_for: Option<String>,
    /// Names learned from the topology, kept after the router is forgotten
    /// so that `rmpeer NAME` works for a router that is long gone.
    names: BTreeMap<PeerId, String>,
    /// The node's own address in this range (IPv4: weft0's source address).
    node_address: Option<IpAddr>,
    /// Allocator errors (malformed or refused ring messages) by kind.
    refused: BTreeMap<&'static str, u64>,
    /// API requests by `op/result`.
    requests: BTreeMap<String, u64>,
    last_error_log: Option<Instant>,
    /// `consensus`: the seed slots' bindings to identities (`ballot.rs`).
    slots: SeedSlots,
    /// Why `consensus` may not pick its voters yet (see [`Self::hold`]).
    held: Option<String>,
    /// `--reclaim-after`: owners unreachable that long are reclaimed.
    auto_reclaim: Option<AutoReclaim>,
    /// `--peers-from-kube`: routers whose Node was deleted and whose Lease
    /// expired are reclaimed once unreachable.
    node_reclaim: NodeReclaim,
    /// The routers reachable now (as last set).
    reachable: BTreeSet<PeerId>,
}

impl IpamDriver {
    /// Opens the state in `state_dir` and starts the allocator, recording the
    /// addresses the kernel shows in use. `store` names the state files
    /// (`ipam`, or `ipam6` for the IPv6 pod range's own ring: issue 19).
    /// `previous` is the key an interrupted identity rotation moves from
    /// (`crypto::identity_next`): state still owned by it is handed over
    /// to `identity` here, signed by `previous`, before anything is sent.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        state_dir: &Path,
        store: &'static str,
        identity: &crate::crypto::Identity,
        previous: Option<&crate::crypto::Identity>,
        range: AddrRange,
        mode: IpallocInit,
        in_use: &[(IpAddr, bool)],
        now: Instant,
    ) -> anyhow::Result<Self> {
        let files = store;
        let init = match &mode {
            IpallocInit::Observer => Init::Observer,
            IpallocInit::Seed(_) => Init::Seed(BTreeSet::new()),
            IpallocInit::Consensus { .. } => Init::Voters(BTreeSet::new()),
        };
        let store = FileStore::open_prefixed(state_dir, store).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the IPAM state in {}: {e} (pass a writable --state-dir)",
                state_dir.display()
            )
        })?;
        let in_use: Vec<InUse> = in_use
            .iter()
            .map(|(addr, node)| InUse {
                addr: *addr,
                key: node.then_some(AllocKey::Node),
            })
            .collect();
        let owner = {
            use crate::ipam::store::Store;
            store.clone().load().ok().and_then(|s| s.owner())
        };
        let signer = match previous {
            Some(p) if owner == Some(p.id()) => p,
            _ => identity,
        };
        let me = signer.id();
        let crypto = Box::new(crypto::IdentityCrypto::new(signer));
        let mut alloc = Allocator::new(Config::new(me, range, init, crypto), store, &in_use, now)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        alloc.learn_key(me, signer.public_key());
        let mut this = Self {
            alloc,
            mode,
            range,
            waiting_for: None,
            names: BTreeMap::new(),
            node_address: None,
            refused: BTreeMap::new(),
            requests: BTreeMap::new(),
            last_error_log: None,
            slots: SeedSlots::default(),
            held: None,
            auto_reclaim: None,
            node_reclaim: NodeReclaim::default(),
            reachable: BTreeSet::new(),
        };
        if me != identity.id() {
            let handed = this.rotate(identity, now)?;
            tracing::info!(
                store = files,
                from = %me,
                to = %identity.id(),
                addresses = handed,
                "finished an interrupted identity rotation: ranges handed to the new ID"
            );
        }
        Ok(this)
    }

    /// Identity key rotation (issue 20, step 3): every range of this
    /// router's old ID goes to `new`'s ID, written and signed by the old
    /// key, persisted, then broadcast; the allocator signs as `new` from
    /// then on. Returns the addresses handed over.
    pub fn rotate(&mut self, new: &crate::crypto::Identity, now: Instant) -> anyhow::Result<u128> {
        self.alloc.learn_key(new.id(), new.public_key());
        let crypto = Box::new(crypto::IdentityCrypto::new(new));
        self.alloc
            .rotate_to(new.id(), crypto, now)
            .map_err(|e| anyhow::anyhow!("identity rotation: cannot hand the ranges over: {e}"))
    }

    /// Keeps `consensus` from choosing its voters until [`Request::SeedsListed`]
    /// arrives: with seeds from the Kubernetes node list, a router that voted
    /// before the first listing would see no seeds, vote alone and build a
    /// ring of its own (DESIGN.md "Ring initialisation"). `reason` is what
    /// readiness and status say meanwhile.
    pub fn hold(&mut self, reason: &str) {
        if matches!(self.mode, IpallocInit::Consensus { .. }) {
            self.held = Some(reason.to_string());
        }
    }

    /// Until the ring is known, turns the mode into IDs: `seed=NAMES` once
    /// every name is held by a known router; `consensus` into a ballot of
    /// seed slots once a majority of them is known by identity
    /// (`ballot.rs`; this router is a voter when its address is a seed or
    /// when it names its peers).
    pub fn resolve(
        &mut self,
        directory: &impl PeerDirectory,
        seeds: &[SocketAddr],
        me_listen: SocketAddr,
        now: Instant,
    ) {
        if self.alloc.ring().is_some() {
            self.waiting_for = None;
            return;
        }
        let me = self.alloc.id();
        let result = match &self.mode {
            IpallocInit::Observer => {
                self.waiting_for = Some("an observer: waiting to learn the ring".into());
                return;
            }
            IpallocInit::Seed(names) => {
                let missing: Vec<&String> = names
                    .iter()
                    .filter(|n| directory.id_named(n).is_none())
                    .collect();
                if !missing.is_empty() {
                    self.waiting_for = Some(format!(
                        "seed routers not known yet: {}",
                        missing
                            .iter()
                            .map(|n| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    return;
                }
                let owners: BTreeSet<PeerId> =
                    names.iter().filter_map(|n| directory.id_named(n)).collect();
                self.alloc.set_seed_owners(owners, now)
            }
            IpallocInit::Consensus { .. } if self.held.is_some() => {
                self.waiting_for = self.held.clone();
                return;
            }
            IpallocInit::Consensus { expected } => {
                let (slots, known, note) =
                    match self.slots.ballot(directory, seeds, me, me_listen, now) {
                        Ballot::Wait(why) => {
                            self.waiting_for = Some(why);
                            return;
                        }
                        Ballot::Propose { slots, known, note } => (slots, known, note),
                    };
                if let Some(n) = expected
                    && slots != *n
                {
                    self.waiting_for = Some(format!(
                        "--ipalloc-init consensus={n} but the seed list names {slots} routers (this one included): make them agree"
                    ));
                    return;
                }
                let result = self.alloc.set_ballot(slots, known, now);
                self.waiting_for = note;
                if let Err(e) = result {
                    self.log_error("initialising the ring", &e, now);
                }
                return;
            }
        };
        self.waiting_for = None;
        if let Err(e) = result {
            self.log_error("initialising the ring", &e, now);
        }
    }

    /// Lends a router's X25519 public key (its topology entry's, checked
    /// there to hash to its ID, or its handshake's) for checking the ring
    /// items it signed.
    pub fn learn_key(&mut self, id: PeerId, public_key: [u8; 32]) {
        self.alloc.learn_key(id, public_key);
    }

    /// A name from a Lease (`Request::NodesGone`): believed only for an
    /// ID the topology never named (the topology is signed by the router).
    pub fn learn_name_if_unknown(&mut self, id: PeerId, name: &str) {
        self.names.entry(id).or_insert_with(|| name.to_string());
    }

    /// Remembers router names (for `rmpeer NAME` and status).
    pub fn learn_name(&mut self, id: PeerId, name: &str) {
        if self.names.get(&id).map(String::as_str) != Some(name) {
            self.names.insert(id, name.to_string());
        }
    }

    /// The routers reachable now (refuses `rmpeer` of a live router, picks
    /// donors, starts or stops `--reclaim-after`'s count).
    pub fn set_reachable(&mut self, peers: BTreeSet<PeerId>, now: Instant) {
        self.reachable = peers.clone();
        self.alloc.set_reachable(peers);
        self.reclaim_the_long_gone(now);
    }

    /// Turns on `--reclaim-after`.
    pub fn reclaim_after(&mut self, after: Duration) {
        self.auto_reclaim = Some(AutoReclaim::new(after));
    }

    /// The Lease task's routers whose Node is deleted and whose Lease
    /// expired (`Request::NodesGone`): reclaimed now if unreachable and
    /// this router is the one to.
    pub fn set_gone_nodes(&mut self, names: &[String], now: Instant) {
        self.node_reclaim.set_gone(names.iter().cloned());
        self.reclaim_the_long_gone(now);
    }

    /// `--peers-from-kube`: takes over the ranges of unreachable owners
    /// whose Node is deleted and whose Lease expired, when this router is
    /// the one to (see `node_reclaim`).
    fn reclaim_deleted_nodes(&mut self, now: Instant) {
        if self.node_reclaim.is_empty() {
            return;
        }
        let Some(ring) = self.alloc.ring() else {
            return;
        };
        let names = &self.names;
        let due = self
            .node_reclaim
            .due(self.alloc.id(), &ring.owners(), &self.reachable, |id| {
                names.get(&id).map(String::as_str)
            });
        for dead in due {
            let name = self.label(dead);
            match self.alloc.rmpeer(dead, false, now) {
                Ok(addresses) => tracing::warn!(
                    dead = %name,
                    addresses,
                    "Node deleted and its Lease expired: took over the ranges of its unreachable router"
                ),
                Err(e) => self.log_error("the reclaim of a deleted Node's router", &e, now),
            }
        }
    }

    /// `--reclaim-after` and the Lease-driven reclaim: takes over the
    /// ranges of owners unreachable for that long, when this router is the
    /// one to (see `auto_reclaim`).
    fn reclaim_the_long_gone(&mut self, now: Instant) {
        self.reclaim_deleted_nodes(now);
        let (Some(auto), Some(ring)) = (self.auto_reclaim.as_mut(), self.alloc.ring()) else {
            return;
        };
        let owners = ring.owners();
        let after = auto.after();
        for dead in auto.due(self.alloc.id(), &owners, &self.reachable, now) {
            let name = self.label(dead);
            match self.alloc.rmpeer(dead, false, now) {
                Ok(addresses) => tracing::warn!(
                    dead = %name,
                    addresses,
                    ?after,
                    "--reclaim-after: took over the ranges of a router unreachable that long"
                ),
                Err(e) => self.log_error("--reclaim-after", &e, now),
            }
        }
    }

    /// A new neighbour gets the full ring (or our proposal); `ring` is the
    /// ring version negotiated with it (titles required from it or not).
    pub fn handle_peer_up(&mut self, peer: PeerId, ring: Option<u8>, now: Instant) {
        self.alloc.set_peer_ring_version(peer, ring);
        self.alloc.handle_peer_up(peer, now);
    }

    /// A neighbour's connection ended (or it moved to a new ID).
    pub fn handle_peer_down(&mut self, peer: PeerId) {
        self.alloc.set_peer_ring_version(peer, None);
    }

    /// The ring version negotiated with `peer` (a neighbour that moved to
    /// a new ID keeps its connection's version).
    pub fn set_peer_ring_version(&mut self, peer: PeerId, ring: Option<u8>) {
        self.alloc.set_peer_ring_version(peer, ring);
    }

    /// One message from the `Ring` channel. Refusals are counted and logged
    /// at most once a second; nothing changes on a refusal.
    pub fn handle_message(&mut self, from: PeerId, bytes: &[u8], now: Instant) {
        if let Err(e) = self.alloc.handle_message(from, bytes, now) {
            use crate::ipam::message::MessageError;
            use crate::ipam::ring::RingError;
            use crate::ipam::signed::SignError;
            let kind = match &e {
                IpamError::Malformed(MessageError::PreSigning(_)) => "pre_signing",
                IpamError::Malformed(_) => "malformed",
                IpamError::Misbehaved(RingError::Signature(SignError::UnknownWriter(_))) => {
                    "unknown_writer"
                }
                IpamError::Misbehaved(RingError::Signature(_)) => "bad_signature",
                IpamError::Misbehaved(RingError::Jump { .. }) => "version_jump",
                IpamError::Misbehaved(RingError::Title { reason, .. }) => reason.counter(),
                IpamError::Misbehaved(RingError::TombstoneOfLive { .. }) => "tombstone_of_live",
                IpamError::Misbehaved(_) => "misbehaved",
                IpamError::GenesisMismatch { .. } => "genesis_mismatch",
                IpamError::RangeMismatch { .. } => "range_mismatch",
                _ => "other",
            };
            *self.refused.entry(kind).or_default() += 1;
            if !matches!(e, IpamError::GenesisMismatch { .. }) {
                self.log_error("a ring message", &e, now);
            }
        }
    }

    /// Periodic work: anti-entropy broadcasts, donation timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Err(e) = self.alloc.handle_timeout(now) {
            self.log_error("a timer", &e, now);
        }
        self.reclaim_the_long_gone(now);
    }

    /// When [`Self::handle_timeout`] wants to run next (the allocator's
    /// anti-entropy or a donation timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let reclaim = self
            .auto_reclaim
            .as_ref()
            .and_then(AutoReclaim::poll_timeout);
        let alloc = self.alloc.poll_timeout().map(|(t, _)| t);
        alloc.into_iter().chain(reclaim).min()
    }

    /// The next message to send on the `Ring` channel.
    pub fn poll_transmit(&mut self) -> Option<(Destination, Vec<u8>)> {
        self.alloc.poll_transmit()
    }

    /// Acts on the allocator's events: logs them and, once the ring is
    /// known, allocates the node's own address. Returns true when the
    /// ownership table or the node address may have changed.
    pub fn drain_events(&mut self, now: Instant) -> bool {
        let mut changed = false;
        while let Some(event) = self.alloc.poll_event() {
            changed = true;
            match event {
                Event::RingReady { genesis } => {
                    tracing::info!(%genesis, mode = self.mode.label(), "IPAM ring ready");
                }
                Event::RangeReceived { from, addresses } => {
                    tracing::info!(from = %self.label(from), addresses, "received a donation of addresses");
                }
                Event::RangeDonated { to, addresses } => {
                    tracing::info!(to = %self.label(to), addresses, "donated addresses");
                }
                Event::DonationRefused { requester, reason } => {
                    *self.refused.entry(reason.as_str()).or_default() += 1;
                    tracing::debug!(requester = %self.label(requester), reason = reason.as_str(), "donation request refused");
                }
                Event::JumpsWithoutTitle { from, count } => {
                    *self.refused.entry("jump_without_title").or_default() += count;
                    tracing::debug!(from = %self.label(from), count, "ring merged with version jumps that came without titles");
                }
                Event::TitlesRequired { from, saved } => {
                    tracing::info!(from = %self.label(from), saved, "the ring now requires titles of every member (a peer's copy of it did): a router posing as a build before them can no longer give another's range away");
                }
                Event::Reclaimed { dead, addresses } => {
                    tracing::warn!(dead = %self.label(dead), addresses, "reclaimed a dead router's addresses");
                }
                Event::RingReplaced { old, new } => {
                    tracing::warn!(%old, %new, "this router held no pods and joined the ring initialised elsewhere");
                    self.node_address = None;
                }
                // `changed` above: the routes and source checks follow.
                Event::OwnersChanged => {}
                Event::Alarm(alarm) => self.log_alarm(alarm),
            }
        }
        if self.node_address.is_none() && self.alloc.is_ready() {
            match self.alloc.allocate_node(now) {
                Ok(addr) => {
                    tracing::info!(%addr, "node address allocated");
                    self.node_address = Some(addr);
                    changed = true;
                }
                Err(e) => {
                    // Out of space (a donation is on its way) or not yet.
                    if self
                        .last_error_log
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                    {
                        self.last_error_log = Some(now);
                        tracing::info!(error = %e, "no node address yet");
                    }
                }
            }
        }
        changed
    }

    fn log_alarm(&self, alarm: Alarm) {
        match alarm {
            Alarm::Tombstoned { reclaimer } => tracing::error!(
                reclaimer = %self.label(reclaimer),
                "this router's address space was reclaimed (rmpeer) while it was away: it allocates nothing; run `weft reset --state` on this node and restart it"
            ),
            Alarm::OwnershipLost { addresses_in_use } => tracing::error!(
                addresses_in_use,
                "a range holding pod addresses now belongs to another router (a forced rmpeer of a live router?): those pods may clash; recreate them"
            ),
            Alarm::GenesisMismatch { ours, theirs, peer } => tracing::error!(
                peer = %self.label(peer),
                %ours,
                %theirs,
                "{}",
                IpamError::GenesisMismatch { ours, theirs, peer }
            ),
            Alarm::VoterSetMismatch { peer } => tracing::warn!(
                peer = %self.label(peer),
                "this peer names another voter set or range: give every router the same seed list and --ipalloc-range"
            ),
        }
    }

    fn log_error(&mut self, what: &str, error: &IpamError, now: Instant) {
        if self
            .last_error_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_error_log = Some(now);
            tracing::warn!(%error, "IPAM refused {what}");
        }
    }

    fn label(&self, id: PeerId) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    /// The node's own IPv4 address, once allocated (none in an IPv6 ring).
    pub fn node_address(&self) -> Option<Ipv4Addr> {
        match self.node_address {
            Some(IpAddr::V4(addr)) => Some(addr),
            _ => None,
        }
    }

    /// The node's own address in this ring's range, once allocated.
    pub fn node_ip(&self) -> Option<IpAddr> {
        self.node_address
    }

    /// The pod range this driver allocates from.
    pub fn range(&self) -> AddrRange {
        self.range
    }

    /// Every owned range of the ring as inclusive address keys (IPv4
    /// mapped, `router::packet::AddrKey`) with its owner, for the data
    /// plane's ownership table; either family.
    pub fn owners(&self) -> Vec<(AddrKey, AddrKey, PeerId)> {
        let base = addr_key(self.range.base());
        let mut out: Vec<_> = self
            .owner_offsets()
            .into_iter()
            .filter_map(|(lo, hi, owner)| {
                Some((base.checked_add(lo)?, base.checked_add(hi)?, owner))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Every owned range of the ring as inclusive offsets from the range's
    /// base with its owner, either family.
    fn owner_offsets(&self) -> Vec<(u128, u128, PeerId)> {
        let Some(ring) = self.alloc.ring() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for owner in ring.owners() {
            for (lo, hi) in ring.ranges_of(owner) {
                out.push((lo, hi, owner));
            }
        }
        out.sort_unstable();
        out
    }

    /// This router's IPv6 ranges (the kernel gets an `unreachable` route
    /// for each); empty for an IPv4 ring.
    pub fn owned6(&self) -> Vec<(u128, u128)> {
        let me = self.alloc.id();
        self.owners()
            .into_iter()
            .filter(|(lo, hi, owner)| {
                *owner == me
                    && !crate::router::packet::is_ipv4_key(*lo)
                    && !crate::router::packet::is_ipv4_key(*hi)
            })
            .map(|(lo, hi, _)| (lo, hi))
            .collect()
    }

    /// This router's IPv4 ranges (the kernel gets an `unreachable` route
    /// for each); empty for an IPv6 ring.
    pub fn owned(&self) -> Vec<(u32, u32)> {
        let me = self.alloc.id();
        let v4 = |key: AddrKey| {
            key.checked_sub(ipv4_key(0))
                .and_then(|a| u32::try_from(a).ok())
        };
        self.owners()
            .into_iter()
            .filter(|(_, _, owner)| *owner == me)
            .filter_map(|(lo, hi, _)| Some((v4(lo)?, v4(hi)?)))
            .collect()
    }
}
