//! The IPAM driver: the control task's thin wrapper around the sans-IO
//! [`Allocator`]. It resolves the initialisation mode into peer IDs (seed
//! names through the topology, seed addresses through the connections),
//! answers the local API's address requests (the CNI plugin's interface),
//! turns allocator events into log lines and kernel plans, and builds the
//! `ipam` status object. It owns no socket: the control task carries its
//! messages on the gossip `Ring` channel.

use crate::api::proto::{
    AddressHolder, Allocation, AllocationList, ErrorCode, IpamStatus, Left, OwnerRange,
    RangeStatus, Readiness, Reclaimed, Released, Reply, Request,
};
use crate::cidr::Ipv4Cidr;
use crate::config::IpallocInit;
use crate::id::PeerId;
use crate::ipam::{
    Alarm, AllocError, AllocKey, Allocator, Config, Destination, Event, FileStore, InUse, Init,
    IpamError, Phase,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

/// The link-local gateway every pod routes through (DESIGN.md "The picture").
pub const POD_GATEWAY: &str = "169.254.1.1";

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

/// The router's address management.
pub struct IpamDriver {
    alloc: Allocator<FileStore>,
    mode: IpallocInit,
    cidr: Ipv4Cidr,
    /// Why initialisation waits, for status (unresolved names or seeds).
    waiting_for: Option<String>,
    /// Names learned from the topology, kept after the router is forgotten
    /// so that `rmpeer NAME` works for a router that is long gone.
    names: BTreeMap<PeerId, String>,
    node_address: Option<Ipv4Addr>,
    /// Allocator errors (malformed or refused ring messages) by kind.
    refused: BTreeMap<&'static str, u64>,
    /// API requests by `op/result`.
    requests: BTreeMap<String, u64>,
    last_error_log: Option<Instant>,
    /// The voter set last given to the allocator (set once per change:
    /// `set_voters` restarts the count of agreeing voters).
    voters: Option<BTreeSet<PeerId>>,
    /// Why `consensus` may not pick its voters yet (see [`Self::hold`]).
    held: Option<String>,
}

impl IpamDriver {
    /// Opens the state in `state_dir` and starts the allocator, recording the
    /// addresses the kernel shows in use.
    pub fn open(
        state_dir: &Path,
        me: PeerId,
        cidr: Ipv4Cidr,
        mode: IpallocInit,
        in_use: &[(Ipv4Addr, bool)],
        now: Instant,
    ) -> anyhow::Result<Self> {
        let range =
            crate::ipam::AddrRange::new(IpAddr::V4(Ipv4Addr::from(cidr.first())), cidr.prefix())
                .map_err(|e| anyhow::anyhow!("--ipalloc-range {cidr}: {e}"))?;
        let init = match &mode {
            IpallocInit::Observer => Init::Observer,
            IpallocInit::Seed(_) => Init::Seed(BTreeSet::new()),
            IpallocInit::Consensus { .. } => Init::Voters(BTreeSet::new()),
        };
        let store = FileStore::open(state_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the IPAM state in {}: {e} (pass a writable --state-dir)",
                state_dir.display()
            )
        })?;
        let in_use: Vec<InUse> = in_use
            .iter()
            .map(|(addr, node)| InUse {
                addr: IpAddr::V4(*addr),
                key: node.then_some(AllocKey::Node),
            })
            .collect();
        let alloc = Allocator::new(Config::new(me, range, init), store, &in_use, now)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            alloc,
            mode,
            cidr,
            waiting_for: None,
            names: BTreeMap::new(),
            node_address: None,
            refused: BTreeMap::new(),
            requests: BTreeMap::new(),
            last_error_log: None,
            voters: None,
            held: None,
        })
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
    /// every name is held by a known router; `consensus` once the router at
    /// every seed address is known (the voters; this router is one when its
    /// address is a seed or when it names its peers).
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
                let missing: Vec<String> = seeds
                    .iter()
                    .filter(|s| **s != me_listen && directory.id_at(**s).is_none())
                    .map(ToString::to_string)
                    .collect();
                if !missing.is_empty() {
                    self.waiting_for =
                        Some(format!("voters not reached yet at {}", missing.join(", ")));
                    return;
                }
                let mut voters: BTreeSet<PeerId> =
                    seeds.iter().filter_map(|s| directory.id_at(*s)).collect();
                voters.insert(me);
                if let Some(n) = expected
                    && voters.len() != *n
                {
                    self.waiting_for = Some(format!(
                        "--ipalloc-init consensus={n} but the seed list names {} routers (this one included): make them agree",
                        voters.len()
                    ));
                    return;
                }
                if self.voters.as_ref() == Some(&voters) {
                    self.waiting_for = None;
                    return;
                }
                self.voters = Some(voters.clone());
                self.alloc.set_voters(voters, now)
            }
        };
        self.waiting_for = None;
        if let Err(e) = result {
            self.log_error("initialising the ring", &e, now);
        }
    }

    /// Remembers router names (for `rmpeer NAME` and status).
    pub fn learn_name(&mut self, id: PeerId, name: &str) {
        if self.names.get(&id).map(String::as_str) != Some(name) {
            self.names.insert(id, name.to_string());
        }
    }

    /// The routers reachable now (refuses `rmpeer` of a live router, picks donors).
    pub fn set_reachable(&mut self, peers: BTreeSet<PeerId>) {
        self.alloc.set_reachable(peers);
    }

    /// A new neighbour gets the full ring (or our proposal).
    pub fn handle_peer_up(&mut self, peer: PeerId, now: Instant) {
        self.alloc.handle_peer_up(peer, now);
    }

    /// One message from the `Ring` channel. Refusals are counted and logged
    /// at most once a second; nothing changes on a refusal.
    pub fn handle_message(&mut self, from: PeerId, bytes: &[u8], now: Instant) {
        if let Err(e) = self.alloc.handle_message(from, bytes, now) {
            let kind = match &e {
                IpamError::Malformed(_) => "malformed",
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
    }

    /// When [`Self::handle_timeout`] wants to run next (the allocator's
    /// anti-entropy or a donation timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.alloc.poll_timeout().map(|(t, _)| t)
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
                Event::Reclaimed { dead, addresses } => {
                    tracing::warn!(dead = %self.label(dead), addresses, "reclaimed a dead router's addresses");
                }
                Event::RingReplaced { old, new } => {
                    tracing::warn!(%old, %new, "this router held no pods and joined the ring initialised elsewhere");
                    self.node_address = None;
                }
                Event::Alarm(alarm) => self.log_alarm(alarm),
            }
        }
        if self.node_address.is_none() && self.alloc.is_ready() {
            match self.alloc.allocate_node(now) {
                Ok(IpAddr::V4(addr)) => {
                    tracing::info!(%addr, "node address allocated");
                    self.node_address = Some(addr);
                    changed = true;
                }
                Ok(IpAddr::V6(_)) => {}
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

    /// The node's own address, once allocated.
    pub fn node_address(&self) -> Option<Ipv4Addr> {
        self.node_address
    }

    /// Every owned range of the ring as inclusive IPv4 bounds with its owner,
    /// for the data plane's ownership table.
    pub fn owners(&self) -> Vec<(u32, u32, PeerId)> {
        let Some(ring) = self.alloc.ring() else {
            return Vec::new();
        };
        let base = self.cidr.first();
        let mut out = Vec::new();
        for owner in ring.owners() {
            for (lo, hi) in ring.ranges_of(owner) {
                let (Ok(lo), Ok(hi)) = (u32::try_from(lo), u32::try_from(hi)) else {
                    continue;
                };
                out.push((base.wrapping_add(lo), base.wrapping_add(hi), owner));
            }
        }
        out.sort_unstable();
        out
    }

    /// This router's ranges (the kernel gets an `unreachable` route for each).
    pub fn owned(&self) -> Vec<(u32, u32)> {
        let me = self.alloc.id();
        self.owners()
            .into_iter()
            .filter(|(_, _, owner)| *owner == me)
            .map(|(lo, hi, _)| (lo, hi))
            .collect()
    }

    /// Answers an address request of the local API; `None` for requests
    /// that are not about addresses.
    pub fn handle_api(
        &mut self,
        request: &Request,
        mtu: u32,
        resolve_name: impl Fn(&str) -> Option<PeerId>,
        now: Instant,
    ) -> Option<Reply> {
        let (op, reply) = match request {
            Request::SeedsListed => {
                self.held = None;
                return Some(Reply::ok(serde_json::json!({})));
            }
            Request::Ready => ("ready", self.ready(mtu)),
            Request::Allocate {
                container_id,
                ifname,
            } => (
                "allocate",
                match self.alloc.allocate(container_id, ifname, now) {
                    Ok(addr) => self.allocation_reply(container_id, ifname, addr, mtu),
                    Err(e) => alloc_error(&e),
                },
            ),
            Request::Release {
                container_id,
                ifname,
                address,
            } => (
                "release",
                self.release(container_id, ifname, address.as_deref(), now),
            ),
            Request::Lookup {
                container_id,
                ifname,
            } => (
                "lookup",
                match self.alloc.lookup(container_id, ifname) {
                    Some(addr) => self.allocation_reply(container_id, ifname, addr, mtu),
                    None => Reply::err(
                        ErrorCode::NotFound,
                        format!(
                            "no address allocated to container {container_id} interface {ifname}"
                        ),
                    ),
                },
            ),
            Request::List { container_id } => {
                let allocations = self.pod_allocations(mtu, |c| {
                    container_id.as_deref().is_none_or(|want| want == c)
                });
                ("list", to_reply(&AllocationList { allocations }))
            }
            Request::Gc { keep } => ("gc", self.gc(keep, mtu, now)),
            Request::Rmpeer { name, force } => {
                ("rmpeer", self.rmpeer(name, *force, &resolve_name, now))
            }
            Request::Leave { force } => ("leave", self.leave(*force, now)),
            Request::Status | Request::Connect { .. } | Request::Forget { .. } => return None,
        };
        let result = match &reply.error {
            None => "ok",
            Some(e) => match e.code {
                ErrorCode::NotReady => "try_again",
                ErrorCode::NotFound => "not_found",
                ErrorCode::BadRequest => "bad_request",
                ErrorCode::Refused => "refused",
                ErrorCode::Internal => "error",
            },
        };
        *self.requests.entry(format!("{op}/{result}")).or_default() += 1;
        Some(reply)
    }

    fn ready(&self, mtu: u32) -> Reply {
        let ready = self.alloc.is_ready();
        let reason = (!ready).then(|| self.detail().unwrap_or_else(|| "IPAM not ready".into()));
        to_reply(&Readiness { ready, reason, mtu })
    }

    fn allocation_reply(&self, container_id: &str, ifname: &str, addr: IpAddr, mtu: u32) -> Reply {
        to_reply(&self.allocation(container_id, ifname, addr, mtu))
    }

    fn allocation(&self, container_id: &str, ifname: &str, addr: IpAddr, mtu: u32) -> Allocation {
        Allocation {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            address: addr.to_string(),
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
            gateway: POD_GATEWAY.to_string(),
            mtu,
            range: self.cidr.to_string(),
        }
    }

    fn pod_allocations(&self, mtu: u32, want: impl Fn(&str) -> bool) -> Vec<Allocation> {
        self.alloc
            .allocations()
            .into_iter()
            .filter_map(|(key, addr)| match key {
                AllocKey::Pod {
                    container_id,
                    ifname,
                } if want(&container_id) => {
                    Some(self.allocation(&container_id, &ifname, addr, mtu))
                }
                _ => None,
            })
            .collect()
    }

    fn release(
        &mut self,
        container_id: &str,
        ifname: &str,
        address: Option<&str>,
        now: Instant,
    ) -> Reply {
        match self.alloc.release(container_id, ifname, now) {
            Ok(addr) => to_reply(&Released {
                address: addr.to_string(),
            }),
            Err(AllocError::NotFound { .. }) => {
                // An address found in the kernel at start, holder unknown.
                if let Some(addr) = address.and_then(|a| a.parse::<IpAddr>().ok())
                    && let Ok(addr) = self.alloc.release_held(addr)
                {
                    return to_reply(&Released {
                        address: addr.to_string(),
                    });
                }
                Reply::err(
                    ErrorCode::NotFound,
                    format!("no address allocated to container {container_id} interface {ifname}"),
                )
            }
            Err(e) => alloc_error(&e),
        }
    }

    fn gc(&mut self, keep: &[String], mtu: u32, now: Instant) -> Reply {
        let keep: BTreeSet<&str> = keep.iter().map(String::as_str).collect();
        let stale = self.pod_allocations(mtu, |c| !keep.contains(c));
        let mut released = Vec::new();
        for allocation in stale {
            match self
                .alloc
                .release(&allocation.container_id, &allocation.ifname, now)
            {
                Ok(_) => released.push(allocation),
                Err(e) => return alloc_error(&e),
            }
        }
        to_reply(&AllocationList {
            allocations: released,
        })
    }

    fn leave(&mut self, force: bool, now: Instant) -> Reply {
        match self.alloc.leave(force, now) {
            Ok(addresses) => to_reply(&Left {
                addresses: u64::try_from(addresses).unwrap_or(u64::MAX),
            }),
            Err(IpamError::NotReady) => {
                Reply::err(ErrorCode::NotReady, "the IPAM ring is not ready yet")
            }
            Err(
                e @ (IpamError::PodsRemain(_)
                | IpamError::Quarantined(_)
                | IpamError::NoHeir
                | IpamError::Tombstoned(_)),
            ) => Reply::err(ErrorCode::Refused, e.to_string()),
            Err(e) => Reply::err(ErrorCode::Internal, e.to_string()),
        }
    }

    fn rmpeer(
        &mut self,
        name: &str,
        force: bool,
        resolve_name: &impl Fn(&str) -> Option<PeerId>,
        now: Instant,
    ) -> Reply {
        let by_name = self
            .names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| *id);
        let id = resolve_name(name)
            .or(by_name)
            .or_else(|| u64::from_str_radix(name, 16).ok().map(PeerId));
        let Some(id) = id else {
            return Reply::err(
                ErrorCode::NotFound,
                format!(
                    "no router named {name:?} is known here: use the owner shown by `weft status ipam` (a name or a hex ID)"
                ),
            );
        };
        match self.alloc.rmpeer(id, force, now) {
            Ok(addresses) => to_reply(&Reclaimed {
                peer: name.to_string(),
                addresses: u64::try_from(addresses).unwrap_or(u64::MAX),
            }),
            Err(IpamError::NotReady) => {
                Reply::err(ErrorCode::NotReady, "the IPAM ring is not ready yet")
            }
            Err(
                e @ (IpamError::PeerReachable(_)
                | IpamError::ReclaimSelf
                | IpamError::Tombstoned(_)),
            ) => {
                let mut message = e.to_string();
                if matches!(e, IpamError::PeerReachable(_)) {
                    message.push_str(": pass --force to override");
                }
                Reply::err(ErrorCode::Refused, message)
            }
            Err(e) => Reply::err(ErrorCode::Internal, e.to_string()),
        }
    }

    /// One line on why the allocator is not ready (or the conflict's fix).
    fn detail(&self) -> Option<String> {
        match self.alloc.phase() {
            Phase::Ready => None,
            Phase::WaitingForVoters {
                agreed,
                quorum,
                mismatched,
            } => Some(if mismatched.is_empty() {
                format!("{agreed} of {quorum} voters needed agree on the first split")
            } else {
                format!(
                    "{agreed} of {quorum} voters needed agree; routers with another seed list or range: {}",
                    mismatched.join(", ")
                )
            }),
            Phase::WaitingForRing => Some(
                self.waiting_for
                    .clone()
                    .unwrap_or_else(|| "waiting to learn the ring from a peer".into()),
            ),
            Phase::Conflict { ours, theirs } => Some(format!(
                "ring {ours} (here) and ring {theirs} (a peer) were initialised separately: on the side with no pods run `weft reset --state` and restart it"
            )),
            Phase::Tombstoned { reclaimer } => Some(format!(
                "reclaimed by {reclaimer}: run `weft reset --state` and restart"
            )),
        }
        .or_else(|| self.waiting_for.clone())
    }

    /// The `ipam` object of `weft status --json`.
    pub fn status(&self, reachable: impl Fn(PeerId) -> bool, now: Instant) -> IpamStatus {
        let core = self.alloc.status(now);
        let state = match core.state {
            Phase::Ready => "ready",
            Phase::WaitingForVoters { .. } => "waiting_for_voters",
            Phase::WaitingForRing => "waiting_for_ring",
            Phase::Conflict { .. } => "conflict",
            Phase::Tombstoned { .. } => "tombstoned",
        };
        let me = self.alloc.id();
        let unreachable_ranges = self
            .owners()
            .into_iter()
            .filter(|(_, _, owner)| *owner != me && !reachable(*owner))
            .map(|(lo, hi, owner)| OwnerRange {
                owner: self.label(owner),
                start: Ipv4Addr::from(lo).to_string(),
                end: Ipv4Addr::from(hi).to_string(),
            })
            .collect();
        let mut allocations: Vec<AddressHolder> = self
            .alloc
            .allocations()
            .into_iter()
            .map(|(key, addr)| {
                let (kind, container_id, ifname) = match key {
                    AllocKey::Node => ("node", None, None),
                    AllocKey::Pod {
                        container_id,
                        ifname,
                    } => ("pod", Some(container_id), Some(ifname)),
                    AllocKey::Held(_) => ("held", None, None),
                };
                AddressHolder {
                    address: addr.to_string(),
                    kind: kind.into(),
                    container_id,
                    ifname,
                }
            })
            .collect();
        allocations.sort_by(|a, b| a.address.cmp(&b.address));
        let unreachable_share = self
            .owners()
            .iter()
            .filter(|(_, _, owner)| *owner != me && !reachable(*owner))
            .map(|(lo, hi, _)| f64::from(hi - lo) + 1.0)
            .sum::<f64>()
            / self.cidr.size() as f64;
        IpamStatus {
            range: core.range,
            mode: self.mode.label().into(),
            state: state.into(),
            detail: self.detail(),
            genesis: core.genesis,
            owned_ranges: core
                .owned_ranges
                .iter()
                .map(|r| RangeStatus {
                    start: r.start.to_string(),
                    end: r.end.to_string(),
                })
                .collect(),
            owned_addresses: u64::try_from(core.owned_addresses).unwrap_or(u64::MAX),
            allocated: core.allocated,
            free: u64::try_from(core.free).unwrap_or(u64::MAX),
            ring_peers: core.ring_peers,
            unreachable_share,
            unreachable_ranges,
            allocations,
        }
    }

    /// API requests by `op/result` and refused ring messages by kind, for metrics.
    pub fn counters(&self) -> (&BTreeMap<String, u64>, &BTreeMap<&'static str, u64>) {
        (&self.requests, &self.refused)
    }
}

fn to_reply<T: serde::Serialize>(value: &T) -> Reply {
    match serde_json::to_value(value) {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::err(ErrorCode::Internal, e.to_string()),
    }
}

/// An allocator refusal as an API error: "try again later" stays distinct
/// so that the CNI plugin can answer code 11.
fn alloc_error(error: &AllocError) -> Reply {
    let code = match error {
        AllocError::TryAgain(_) => ErrorCode::NotReady,
        AllocError::InvalidKey(_) => ErrorCode::BadRequest,
        AllocError::NotFound { .. } => ErrorCode::NotFound,
        AllocError::Tombstoned(_) => ErrorCode::Refused,
        AllocError::Persist(_) => ErrorCode::Internal,
    };
    Reply::err(code, error.to_string())
}
