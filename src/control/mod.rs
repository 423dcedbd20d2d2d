//! The control task: the one tokio task that owns the router's changing
//! state — peers, their key schedules, dialling, heartbeats, the ownership
//! table — and publishes the forwarding snapshot the data plane reads.
//!
//! It waits on one `select!` over: connection events, data-plane worker
//! events, heartbeats on the control lane, API calls, new TCP connections
//! and a tick; after each input it republishes the snapshot if anything
//! changed (DESIGN.md "Where tokio lives").

pub mod connection;
pub mod ipam;
pub mod proto;

use crate::api::proto::{
    ConnectionStatus, DataplaneStatus, ErrorCode, LatencyHistogram, PeerStatus, Reply, Request,
    Status, TrafficCount,
};
use crate::api::server::ApiCall;
use crate::cidr::Ipv4Cidr;
use crate::crypto::data::TAG_LEN;
use crate::crypto::replay::ReplayWindow;
use crate::crypto::session::{KeySchedule, Keyset};
use crate::gossip::{Channel, ConnectionMaker, Frame, Gossip, GossipConfig, GossipEvent, PeerInfo};
use crate::id::{PeerId, ShortId};
use crate::ipam::Destination;
use crate::netlink::InterfacePlan;
use crate::router::Dataplane;
use crate::router::packet::{CONTROL_LANE, DataHeader, HEADER_LEN, PacketType};
use crate::router::snapshot::{Link, Liveness, OwnedRange, RecvSession, SendKeys, Snapshot};
use crate::router::worker::WorkerEvent;
use connection::{
    ConnectionCommand, ConnectionContext, ConnectionEvent, ConnectionId, HandshakeFailure, NewKeys,
    PeerUp,
};
use ipam::{IpamDriver, PeerDirectory};
use proto::{ControlMessage, Hello, Versions};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

/// How often heartbeats go to each peer.
/// How long a router that left keeps running, so the ring that hands its
/// ranges away reaches its peers (and they pass it on) before it goes.
const LEAVE_GRACE: Duration = Duration::from_secs(2);
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// A connection is established while an authenticated packet arrived
/// within this long (three heartbeats and a margin), so a broken link is
/// routed around in about two seconds.
const LIVENESS_TIMEOUT: Duration = Duration::from_millis(1600);
/// Every this many heartbeats, one is a full-size path-MTU probe.
const PROBE_EVERY: u64 = 4;
/// A connection stays established while a full-size probe was answered
/// within this long (probes go every `PROBE_EVERY` × 500 ms = 2 s).
const PMTU_TIMEOUT: Duration = Duration::from_millis(4500);
/// Heartbeat body kinds (first byte of the sealed body).
const HEARTBEAT_PING: u8 = 0;
const HEARTBEAT_PONG: u8 = 1;
const HEARTBEAT_PROBE: u8 = 2;

/// What a heartbeat is.
#[derive(Clone, Copy, Debug)]
enum Heartbeat {
    Ping { full: bool },
    Pong { full: bool },
}

/// Handshakes accepted per source address per second.
const HANDSHAKES_PER_SOURCE: u32 = 20;
/// Connections accepted whose handshake has not completed yet.
const MAX_HALF_OPEN: usize = 64;
/// Of those, from any one source address: one host alone cannot fill the
/// global cap and lock newcomers out (tests/hostile.rs).
const MAX_HALF_OPEN_PER_SOURCE: usize = 8;

/// What the control task needs from the command line.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// This router's name.
    pub name: String,
    /// Listen address (TCP control and UDP data).
    pub listen: SocketAddr,
    /// Seed addresses.
    pub seeds: Vec<SocketAddr>,
    /// The cluster range.
    pub range: Ipv4Cidr,
    /// Overlay MTU.
    pub mtu: u32,
    /// Rekey interval (120 s unless shortened for tests).
    pub rekey_after: Duration,
}

struct Peer {
    id: PeerId,
    public_key: [u8; 32],
    hello: Hello,
    short: ShortId,
    connection: ConnectionId,
    commands: mpsc::UnboundedSender<ConnectionCommand>,
    remote: SocketAddr,
    outbound: bool,
    endpoint: Option<SocketAddr>,
    keys: KeySchedule,
    liveness: Arc<Liveness>,
    established: bool,
    rtt: Option<Duration>,
    last_heartbeat: Option<Instant>,
    heartbeats_sent: u64,
    pmtu_ok_at: Option<Instant>,
    rekey_started: Option<Instant>,
}

/// The control task's state.
pub struct Control {
    config: ControlConfig,
    me: PeerId,
    short: ShortId,
    context: Arc<ConnectionContext>,
    dataplane: Dataplane,
    udp: UdpSocket,
    epoch: Instant,
    peers: HashMap<PeerId, Peer>,
    gossip: Gossip,
    maker: ConnectionMaker,
    dialing: HashMap<ConnectionId, SocketAddr>,
    dial_errors: HashMap<SocketAddr, String>,
    last_gossip_log: Option<Instant>,
    self_addresses: HashSet<SocketAddr>,
    half_open: HashMap<ConnectionId, SocketAddr>,
    rate: HashMap<IpAddr, (Instant, u32)>,
    next_connection: ConnectionId,
    handshakes: BTreeMap<String, u64>,
    heartbeat_counters: HashMap<u32, u64>,
    heartbeat_windows: HashMap<u32, ReplayWindow>,
    last_refusal_log: Option<Instant>,
    last_clock_skew_log: Option<Instant>,
    dirty: bool,
    ipam: IpamDriver,
    gossip_traffic: BTreeMap<String, TrafficCount>,
    api_latency: LatencyHistogram,
    /// After a successful `weft leave`: when to stop.
    leaving: Option<Instant>,
    /// What the kernel should look like (node address, owned ranges); a
    /// task in the daemon applies each new plan.
    kernel: watch::Sender<InterfacePlan>,
}

/// Looks routers up by address and name for the IPAM driver.
struct Directory<'a> {
    me: PeerId,
    name: &'a str,
    self_addresses: &'a HashSet<SocketAddr>,
    peers: &'a HashMap<PeerId, Peer>,
    gossip: &'a Gossip,
}

impl PeerDirectory for Directory<'_> {
    fn id_at(&self, addr: SocketAddr) -> Option<PeerId> {
        if self.self_addresses.contains(&addr) {
            return Some(self.me);
        }
        self.peers
            .values()
            .find(|p| p.hello.listen == addr || p.remote == addr)
            .map(|p| p.id)
            .or_else(|| {
                self.gossip
                    .peers()
                    .find(|e| e.addresses.contains(&addr))
                    .map(|e| e.id)
            })
    }

    fn id_named(&self, name: &str) -> Option<PeerId> {
        if name == self.name {
            return Some(self.me);
        }
        self.gossip.name_holder(name)
    }

    fn name_of(&self, id: PeerId) -> Option<String> {
        self.gossip.entry(id).map(|e| e.name.clone())
    }
}

/// The channels the control task reads.
pub struct ControlInputs {
    /// From connection tasks.
    pub connections: mpsc::UnboundedReceiver<ConnectionEvent>,
    /// From data-plane workers.
    pub workers: mpsc::UnboundedReceiver<WorkerEvent>,
    /// From the API server.
    pub api: mpsc::Receiver<ApiCall>,
}

impl Control {
    /// Builds the control state around a started data plane.
    pub fn new(
        config: ControlConfig,
        context: Arc<ConnectionContext>,
        dataplane: Dataplane,
        udp: UdpSocket,
        epoch: Instant,
        ipam: IpamDriver,
        kernel: watch::Sender<InterfacePlan>,
    ) -> Self {
        let me = context.identity.id();
        let mut self_addresses = HashSet::new();
        self_addresses.insert(config.listen);
        let now = Instant::now();
        let gossip = Gossip::new(
            PeerInfo {
                id: me,
                name: config.name.clone(),
                public_key: context.identity.public_key(),
                addresses: vec![config.listen],
            },
            GossipConfig {
                mtu: u16::try_from(config.mtu).unwrap_or(u16::MAX),
                ..GossipConfig::default()
            },
            rand::random(),
            now,
        );
        let short = gossip.short_id();
        let maker = ConnectionMaker::new(vec![config.listen], config.seeds.clone(), rand::random());
        Self {
            config,
            me,
            short,
            context,
            dataplane,
            udp,
            epoch,
            peers: HashMap::new(),
            gossip,
            maker,
            dialing: HashMap::new(),
            dial_errors: HashMap::new(),
            last_gossip_log: None,
            self_addresses,
            half_open: HashMap::new(),
            rate: HashMap::new(),
            next_connection: 1,
            handshakes: BTreeMap::new(),
            heartbeat_counters: HashMap::new(),
            heartbeat_windows: HashMap::new(),
            last_refusal_log: None,
            last_clock_skew_log: None,
            dirty: true,
            ipam,
            kernel,
            gossip_traffic: BTreeMap::new(),
            api_latency: LatencyHistogram::default(),
            leaving: None,
        }
    }

    /// Runs until `shutdown` resolves; then stops the data plane.
    pub async fn run(
        mut self,
        listener: TcpListener,
        mut inputs: ControlInputs,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut datagram = vec![0u8; 65_536];
        self.publish();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => self.handle_tick(Instant::now()),
                Some(event) = inputs.connections.recv() => self.handle_connection_event(event, Instant::now()),
                Some(event) = inputs.workers.recv() => self.handle_worker_event(event, Instant::now()),
                Some((request, reply)) = inputs.api.recv() => {
                    let _ = reply.send(self.handle_api(request));
                }
                accepted = listener.accept() => {
                    if let Ok((stream, remote)) = accepted {
                        self.handle_accept(stream, remote, Instant::now());
                    }
                }
                received = self.udp.recv_from(&mut datagram) => {
                    if let Ok((len, from)) = received {
                        let mut packet = std::mem::take(&mut datagram);
                        self.handle_heartbeat(&mut packet[..len], from, Instant::now());
                        datagram = packet;
                    }
                }
            }
            let now = Instant::now();
            self.drain_gossip(now);
            self.drive_ipam(now);
            self.drive_dials(now);
            if self.dirty {
                self.publish();
            }
            if self.leaving.is_some_and(|at| now >= at) {
                break;
            }
        }
        for peer in self.peers.values() {
            let _ = peer
                .commands
                .send(ConnectionCommand::Close("router shutting down".into()));
        }
        self.dataplane.stop();
    }

    fn handle_accept(&mut self, stream: tokio::net::TcpStream, remote: SocketAddr, now: Instant) {
        if self.half_open.len() >= MAX_HALF_OPEN {
            self.count_handshake("half_open_cap");
            return;
        }
        let from_source = self
            .half_open
            .values()
            .filter(|a| a.ip() == remote.ip())
            .count();
        if from_source >= MAX_HALF_OPEN_PER_SOURCE {
            self.count_handshake("half_open_source_cap");
            return;
        }
        let entry = self.rate.entry(remote.ip()).or_insert((now, 0));
        if now.duration_since(entry.0) > Duration::from_secs(1) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > HANDSHAKES_PER_SOURCE {
            self.count_handshake("rate_limited");
            return;
        }
        if self.rate.len() > 4096 {
            self.rate
                .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(1));
        }
        let id = self.next_id();
        self.half_open.insert(id, remote);
        tokio::spawn(connection::run_inbound(
            self.context.clone(),
            id,
            stream,
            remote,
        ));
    }

    fn next_id(&mut self) -> ConnectionId {
        let id = self.next_connection;
        self.next_connection += 1;
        id
    }

    fn count_handshake(&mut self, result: &str) {
        *self.handshakes.entry(result.to_string()).or_default() += 1;
    }

    fn handle_tick(&mut self, now: Instant) {
        self.gossip.handle_timeout(now);
        self.ipam.handle_timeout(now);
        let directory = Directory {
            me: self.me,
            name: &self.config.name,
            self_addresses: &self.self_addresses,
            peers: &self.peers,
            gossip: &self.gossip,
        };
        self.ipam
            .resolve(&directory, &self.config.seeds, self.config.listen, now);
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let before = peer.keys.receive_keysets().count();
            peer.keys.handle_timeout(now);
            if peer.keys.receive_keysets().count() != before {
                self.dirty = true;
            }
            // Established: authenticated UDP is arriving, and a full-size
            // probe sent with don't-fragment was answered recently (DESIGN.md
            // "MTU"), so the path carries full-size packets.
            let established = peer
                .liveness
                .last_rx()
                .is_some_and(|t| now.saturating_duration_since(t) < LIVENESS_TIMEOUT)
                && peer
                    .pmtu_ok_at
                    .is_some_and(|t| now.saturating_duration_since(t) < PMTU_TIMEOUT);
            if established != peer.established {
                peer.established = established;
                tracing::info!(peer = %peer.hello.name, established, "connection state changed");
                self.gossip.set_established(id, established, now);
                self.dirty = true;
            }
            // Only the lower ID starts timer rekeys; the higher ID asks only
            // when its keys are well past due (the lower side missed it), so
            // the two never race into back-to-back rekeys.
            let age = peer
                .keys
                .current()
                .map(|k| now.saturating_duration_since(k.created));
            let overdue = age.is_some_and(|a| a >= self.config.rekey_after * 3 / 2);
            let retry_ok = peer
                .rekey_started
                .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10));
            if peer.keys.rekey_due(now) && retry_ok && (self.me < id || overdue) {
                peer.rekey_started = Some(now);
                peer.keys.rekey_started(now);
                if self.me < id {
                    let _ = peer.commands.send(ConnectionCommand::Rekey);
                } else {
                    let _ = peer
                        .commands
                        .send(ConnectionCommand::Send(ControlMessage::RekeyRequest));
                }
            }
            if peer
                .last_heartbeat
                .is_none_or(|t| now.duration_since(t) >= HEARTBEAT_INTERVAL)
            {
                peer.last_heartbeat = Some(now);
                let full = peer.heartbeats_sent % PROBE_EVERY == 0;
                peer.heartbeats_sent += 1;
                self.send_heartbeat(id, Heartbeat::Ping { full }, self.millis(now));
            }
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Starts the dials the connection maker asks for.
    fn drive_dials(&mut self, now: Instant) {
        while let Some(addr) = self.maker.poll_dial(now) {
            if self.self_addresses.contains(&addr) {
                self.maker.forget(addr);
                continue;
            }
            let id = self.next_id();
            self.dialing.insert(id, addr);
            tokio::spawn(connection::run_outbound(self.context.clone(), id, addr));
        }
    }

    /// Sends what the allocator wants sent on the `Ring` channel and acts on
    /// its events (a new node address or ownership table goes to the kernel
    /// and the data plane).
    fn drive_ipam(&mut self, now: Instant) {
        while let Some((destination, payload)) = self.ipam.poll_transmit() {
            // Each peer's ring version: the highest both handshakes contain.
            let wanted = |peer: &Peer| match destination {
                Destination::Peer(id) => peer.id == id,
                Destination::Broadcast => true,
                Destination::Neighbours { min, max } => Versions::OURS
                    .ring
                    .common(peer.hello.versions.ring)
                    .is_some_and(|v| (min..=max).contains(&v)),
            };
            let targets: Vec<&Peer> = self.peers.values().filter(|p| wanted(p)).collect();
            let copies = targets.len() as u64;
            for peer in targets {
                let _ = peer
                    .commands
                    .send(ConnectionCommand::Send(ControlMessage::Gossip {
                        channel: Channel::Ring.to_byte(),
                        payload: payload.clone(),
                    }));
            }
            self.count_gossip(Channel::Ring, "out", copies, payload.len());
        }
        if self.ipam.drain_events(now) {
            self.dirty = true;
            let own_address = self.ipam.node_address();
            let owned = self.ipam.owned();
            self.kernel.send_if_modified(|plan| {
                let changed = plan.own_address != own_address || plan.owned != owned;
                plan.own_address = own_address;
                plan.owned = owned;
                changed
            });
        }
    }

    /// The overlay MTU of the whole cluster (DESIGN.md "MTU"): the smallest
    /// any router announces, ours included, so that a packet fits every path.
    fn cluster_mtu(&self) -> u32 {
        self.config.mtu.min(u32::from(self.gossip.cluster_mtu()))
    }

    /// Makes weft0 follow the cluster MTU (the kernel then answers
    /// oversized forwarded packets itself; the data plane's `icmp` covers
    /// the moments in between), and says when it changes.
    fn follow_cluster_mtu(&mut self, mtu: u32) {
        self.kernel.send_if_modified(|plan| {
            if plan.mtu == mtu {
                return false;
            }
            tracing::info!(
                from = plan.mtu,
                to = mtu,
                "cluster MTU changed: the smallest MTU any router announces (pods created from now on get it)"
            );
            plan.mtu = mtu;
            true
        });
    }

    fn count_gossip(&mut self, channel: Channel, direction: &str, messages: u64, len: usize) {
        let name = match channel {
            Channel::Topology => "topology",
            Channel::Ring => "ring",
            Channel::Unknown(_) => "unknown",
        };
        let entry = self
            .gossip_traffic
            .entry(format!("{name}/{direction}"))
            .or_default();
        entry.messages += messages;
        entry.bytes += messages * len as u64;
    }

    /// Sends what the gossip core wants sent and acts on its events.
    fn drain_gossip(&mut self, now: Instant) {
        while let Some((peer, frame)) = self.gossip.poll_transmit() {
            if let Some(p) = self.peers.get(&peer) {
                let entry = self
                    .gossip_traffic
                    .entry("topology/out".into())
                    .or_default();
                entry.messages += 1;
                entry.bytes += frame.len() as u64;
                let _ = p
                    .commands
                    .send(ConnectionCommand::Send(ControlMessage::Gossip {
                        channel: Channel::Topology.to_byte(),
                        payload: frame,
                    }));
            }
        }
        while let Some(event) = self.gossip.poll_event() {
            match event {
                GossipEvent::TopologyChanged => self.dirty = true,
                GossipEvent::PeerAdded { id, name } => {
                    tracing::info!(peer = %name, %id, "learned a router");
                    self.ipam.learn_name(id, &name);
                    if let Some(entry) = self.gossip.entry(id) {
                        let addresses = entry.addresses.clone();
                        self.maker.learn(id, &addresses, now);
                    }
                    self.dirty = true;
                }
                GossipEvent::PeerRemoved { id, name } => {
                    tracing::info!(peer = %name, %id, "forgot an unreachable router");
                    self.maker.unlearn(id);
                    self.dirty = true;
                }
                GossipEvent::ShortIdChanged { old, new } => {
                    tracing::info!(old = old.0, new = new.0, "short ID changed after a clash");
                    self.short = new;
                    self.dirty = true;
                }
                GossipEvent::EntryRefused {
                    from,
                    id,
                    name,
                    reason,
                } => {
                    self.count_handshake("gossip_refused");
                    if self
                        .last_gossip_log
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        self.last_gossip_log = Some(now);
                        tracing::warn!(%from, %id, %name, ?reason, "refused a topology entry");
                    }
                }
            }
        }
    }

    fn handle_connection_event(&mut self, event: ConnectionEvent, now: Instant) {
        match event {
            ConnectionEvent::Up(up) => {
                self.half_open.remove(&up.id);
                let dialled = self.dialing.remove(&up.id);
                if let Some(addr) = dialled {
                    self.dial_errors.remove(&addr);
                }
                self.maker
                    .connected(up.peer, dialled.or(Some(up.hello.listen)), now);
                self.count_handshake("ok");
                self.peer_up(up, now);
            }
            ConnectionEvent::Rekeyed { id, keys } => {
                let Some(peer) = self.peers.values_mut().find(|p| p.connection == id) else {
                    return;
                };
                let remote_index = keys.remote_index;
                tracing::debug!(peer = %peer.hello.name, local = keys.local_index, remote = keys.remote_index, initiator = keys.initiator, "rekeyed");
                peer.keys.install(keyset_of(keys, now), now);
                peer.rekey_started = None;
                // Publish first, then tell the peer it may send under the new keys.
                self.publish();
                if let Some(peer) = self.peers.values().find(|p| p.connection == id) {
                    let _ =
                        peer.commands
                            .send(ConnectionCommand::Send(ControlMessage::KeyConfirm {
                                session_index: remote_index,
                            }));
                }
            }
            ConnectionEvent::Message { id, message } => self.handle_message(id, message, now),
            ConnectionEvent::HandshakeFailed {
                id,
                remote,
                outbound,
                reason,
            } => {
                self.half_open.remove(&id);
                if reason == HandshakeFailure::SelfConnection {
                    self.self_addresses.insert(remote);
                }
                self.count_handshake(reason.as_str());
                if matches!(reason, HandshakeFailure::Refused) {
                    self.log_refusal(remote);
                } else if let HandshakeFailure::ClockSkew(why) = &reason {
                    self.log_clock_skew(remote, why);
                } else {
                    tracing::debug!(%remote, outbound, ?reason, "handshake failed");
                }
                if let Some(addr) = self.dialing.remove(&id) {
                    if reason == HandshakeFailure::SelfConnection {
                        self.maker.forget(addr);
                    } else {
                        self.maker.dial_failed(addr, now);
                        self.dial_errors.insert(addr, format!("{reason:?}"));
                    }
                }
            }
            ConnectionEvent::Down { id, reason } => {
                let Some(peer_id) = self
                    .peers
                    .values()
                    .find(|p| p.connection == id)
                    .map(|p| p.id)
                else {
                    return;
                };
                if let Some(peer) = self.peers.remove(&peer_id) {
                    tracing::info!(peer = %peer.hello.name, %reason, "connection down");
                    for keyset in peer.keys.receive_keysets() {
                        self.heartbeat_windows.remove(&keyset.local_index);
                    }
                }
                self.maker.disconnected(peer_id, now);
                self.gossip.connection_down(peer_id, now);
                self.dirty = true;
            }
        }
    }

    /// Logs a refused handshake at most once a second (DESIGN.md invariant 4).
    fn log_refusal(&mut self, remote: SocketAddr) {
        let now = Instant::now();
        if self
            .last_refusal_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_refusal_log = Some(now);
            tracing::warn!(%remote, refused = self.handshakes.get("refused").copied().unwrap_or(0),
                "refused a handshake: the peer does not hold the cluster secret");
        }
    }

    /// A peer whose clock is off cannot connect until it is fixed: say so
    /// (at most once a second, like every refusal).
    fn log_clock_skew(&mut self, remote: SocketAddr, why: &str) {
        let now = Instant::now();
        if self
            .last_clock_skew_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_clock_skew_log = Some(now);
            tracing::warn!(%remote, "refused a handshake: {why}");
        }
    }

    fn peer_up(&mut self, up: PeerUp, now: Instant) {
        let peer_id = up.peer;
        if let Some(existing) = self.peers.get(&peer_id) {
            if existing.public_key != up.public_key {
                let _ = up
                    .commands
                    .send(ConnectionCommand::Close("key mismatch".into()));
                return;
            }
            let same_process = existing.hello.incarnation == up.hello.incarnation;
            let dialler = |outbound: bool| if outbound { self.me } else { peer_id };
            if same_process && dialler(existing.outbound) <= dialler(up.outbound) {
                // A simultaneous dial: keep the connection the lower ID dialled.
                let _ = up
                    .commands
                    .send(ConnectionCommand::Close("duplicate connection".into()));
                return;
            }
            let _ = existing.commands.send(ConnectionCommand::Close(
                "replaced by a newer connection".into(),
            ));
            if same_process {
                // The same process dialled twice: move the peer onto the new
                // connection and treat its keys as a rekey, so packets still
                // in flight under the old keys are accepted (no drops).
                self.adopt_connection(up, now);
                return;
            }
        }
        let PeerUp {
            id,
            public_key,
            hello,
            remote,
            outbound,
            keys,
            commands,
            ..
        } = up;
        if let Some(clash) = self
            .peers
            .values()
            .find(|p| p.hello.name == hello.name && p.id != peer_id)
        {
            tracing::warn!(name = %hello.name, old = %clash.id, new = %peer_id, "a router with a known name but a new key connected");
        }
        tracing::info!(peer = %hello.name, id = %peer_id, %remote, outbound, local = keys.local_index, remote_index = keys.remote_index, "connection up");
        let mut schedule = KeySchedule::new(self.config.rekey_after);
        schedule.install(keyset_of(keys, now), now);
        let endpoint = if outbound {
            Some(remote)
        } else {
            Some(hello.listen)
        };
        let peer = Peer {
            id: peer_id,
            public_key,
            short: ShortId(hello.short_id),
            hello,
            connection: id,
            commands,
            remote,
            outbound,
            endpoint,
            keys: schedule,
            liveness: Arc::new(Liveness::new(self.epoch)),
            established: false,
            rtt: None,
            last_heartbeat: None,
            heartbeats_sent: 0,
            pmtu_ok_at: None,
            rekey_started: None,
        };
        let info = PeerInfo {
            id: peer_id,
            name: peer.hello.name.clone(),
            public_key,
            addresses: vec![peer.hello.listen],
        };
        self.ipam.learn_name(peer_id, &peer.hello.name);
        self.peers.insert(peer_id, peer);
        self.gossip.connection_up(info, outbound, now);
        self.ipam.handle_peer_up(peer_id, now);
        self.dirty = true;
        // The side that dialled sends the first UDP packet (NAT).
        if outbound {
            self.publish();
            self.send_heartbeat(peer_id, Heartbeat::Ping { full: true }, self.millis(now));
        }
    }

    fn adopt_connection(&mut self, up: PeerUp, now: Instant) {
        let PeerUp {
            id,
            peer: peer_id,
            remote,
            outbound,
            keys,
            commands,
            ..
        } = up;
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        tracing::debug!(peer = %peer.hello.name, %remote, outbound, "duplicate connection adopted");
        let remote_index = keys.remote_index;
        peer.connection = id;
        peer.commands = commands;
        peer.remote = remote;
        peer.outbound = outbound;
        peer.rekey_started = None;
        peer.keys.install(keyset_of(keys, now), now);
        self.publish();
        if let Some(peer) = self.peers.get(&peer_id) {
            let _ = peer
                .commands
                .send(ConnectionCommand::Send(ControlMessage::KeyConfirm {
                    session_index: remote_index,
                }));
        }
    }

    fn handle_message(&mut self, id: ConnectionId, message: ControlMessage, now: Instant) {
        let Some(peer) = self.peers.values_mut().find(|p| p.connection == id) else {
            return;
        };
        match message {
            ControlMessage::KeyConfirm { session_index } => {
                tracing::debug!(peer = %peer.hello.name, session_index, "key confirm received");
                if peer.keys.confirm(session_index, now) {
                    self.dirty = true;
                }
            }
            ControlMessage::RekeyRequest => {
                let fresh = peer.keys.current().is_some_and(|k| {
                    now.saturating_duration_since(k.created) < self.config.rekey_after / 2
                });
                if self.me < peer.id && !fresh && peer.keys.next().is_none() {
                    let _ = peer.commands.send(ConnectionCommand::Rekey);
                }
            }
            ControlMessage::Gossip { channel, payload } => {
                let from = peer.id;
                self.count_gossip(Channel::from_byte(channel), "in", 1, payload.len());
                if channel == Channel::Ring.to_byte() {
                    self.ipam.handle_message(from, &payload, now);
                    return;
                }
                let channel = Frame::parse(&payload).map(|f| f.channel);
                if matches!(channel, Ok(Channel::Topology))
                    && let Err(e) = self.gossip.handle_message(from, &payload, now)
                {
                    self.count_handshake("gossip_refused");
                    if self
                        .last_gossip_log
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        self.last_gossip_log = Some(now);
                        tracing::warn!(%from, error = %e, "dropped a gossip frame");
                    }
                }
            }
            ControlMessage::Rekey { .. }
            | ControlMessage::TcpKeySwitch
            | ControlMessage::Close { .. }
            | ControlMessage::Fragment { .. } => {}
        }
    }

    fn handle_worker_event(&mut self, event: WorkerEvent, now: Instant) {
        match event {
            WorkerEvent::KeysetConfirmed { local_index } => {
                tracing::debug!(local_index, "keyset confirmed by a data packet");
                for peer in self.peers.values_mut() {
                    if peer.keys.confirm(local_index, now) {
                        self.dirty = true;
                    }
                }
            }
            WorkerEvent::EndpointMoved { peer, address } => {
                if let Some(p) = self.peers.values_mut().find(|p| p.short == peer)
                    && p.endpoint != Some(address)
                {
                    tracing::info!(peer = %p.hello.name, %address, "peer endpoint moved");
                    p.endpoint = Some(address);
                    self.dirty = true;
                }
            }
        }
    }

    /// Seals and sends a heartbeat on the control lane: a ping (every
    /// `PROBE_EVERY`th padded to the full overlay MTU as a path-MTU probe) or
    /// a short pong echoing the ping's timestamp and whether it was full-size.
    fn send_heartbeat(&mut self, peer_id: PeerId, heartbeat: Heartbeat, stamp: u64) {
        let Some(peer) = self.peers.get(&peer_id) else {
            return;
        };
        let (Some(keyset), Some(endpoint)) = (peer.keys.current(), peer.endpoint) else {
            return;
        };
        let counter = self
            .heartbeat_counters
            .entry(keyset.remote_index)
            .or_insert(0);
        let header = DataHeader {
            kind: PacketType::Heartbeat,
            hop_limit: 1,
            src: self.short,
            dst: peer.short,
            session: keyset.remote_index,
            lane: CONTROL_LANE,
            counter: *counter,
        };
        *counter += 1;
        let (kind, full, body_len) = match heartbeat {
            Heartbeat::Ping { full: true } => (HEARTBEAT_PROBE, 1, self.cluster_mtu() as usize),
            Heartbeat::Ping { full: false } => (HEARTBEAT_PING, 0, 10),
            Heartbeat::Pong { full } => (HEARTBEAT_PONG, u8::from(full), 10),
        };
        let mut datagram = vec![0u8; HEADER_LEN + body_len + TAG_LEN];
        let mut header_bytes = [0u8; HEADER_LEN];
        header.emit(&mut header_bytes);
        datagram[..HEADER_LEN].copy_from_slice(&header_bytes);
        datagram[HEADER_LEN] = kind;
        datagram[HEADER_LEN + 9] = full;
        datagram[HEADER_LEN + 1..HEADER_LEN + 9].copy_from_slice(&stamp.to_be_bytes());
        let tag = keyset.send.seal_in_place(
            CONTROL_LANE,
            header.counter,
            &header_bytes,
            &mut datagram[HEADER_LEN..HEADER_LEN + body_len],
        );
        datagram[HEADER_LEN + body_len..].copy_from_slice(&tag);
        let _ = self.udp.try_send_to(&datagram, endpoint);
    }

    fn handle_heartbeat(&mut self, datagram: &mut [u8], from: SocketAddr, now: Instant) {
        let Ok(header) = DataHeader::parse(datagram) else {
            return;
        };
        if header.kind != PacketType::Heartbeat || header.lane != CONTROL_LANE {
            return;
        }
        let Some(peer_id) = self
            .peers
            .values()
            .find(|p| {
                p.keys
                    .receive_keysets()
                    .any(|k| k.local_index == header.session)
            })
            .map(|p| p.id)
        else {
            return;
        };
        let window = self.heartbeat_windows.entry(header.session).or_default();
        if !window.would_accept(header.counter) {
            return;
        }
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let Some(keyset) = peer
            .keys
            .receive_keysets()
            .find(|k| k.local_index == header.session)
        else {
            return;
        };
        let len = datagram.len();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&datagram[len - TAG_LEN..]);
        let (head, body) = datagram.split_at_mut(HEADER_LEN);
        let body = &mut body[..len - HEADER_LEN - TAG_LEN];
        if keyset
            .recv
            .open_in_place(CONTROL_LANE, header.counter, head, body, &tag)
            .is_err()
        {
            return;
        }
        if !window.mark(header.counter) {
            return;
        }
        peer.liveness.touch(now);
        if peer.endpoint != Some(from) {
            peer.endpoint = Some(from);
            self.dirty = true;
        }
        if peer.keys.confirm(header.session, now) {
            self.dirty = true;
        }
        let Some(stamp) = body
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return;
        };
        match body[0] {
            HEARTBEAT_PING => self.send_heartbeat(peer_id, Heartbeat::Pong { full: false }, stamp),
            HEARTBEAT_PROBE => self.send_heartbeat(peer_id, Heartbeat::Pong { full: true }, stamp),
            HEARTBEAT_PONG => {
                if let Some(peer) = self.peers.get_mut(&peer_id) {
                    let sent = self.epoch + Duration::from_millis(stamp);
                    peer.rtt = Some(now.saturating_duration_since(sent));
                    if body.get(9) == Some(&1) {
                        peer.pmtu_ok_at = Some(now);
                    }
                }
            }
            _ => {}
        }
    }

    /// Rebuilds the forwarding snapshot from the peers and publishes it.
    /// The short ID the data plane uses for `id`: the gossiped one (clashes
    /// resolved), else what its hello said.
    fn short_of(&self, id: PeerId) -> Option<ShortId> {
        if id == self.me {
            return Some(self.short);
        }
        self.gossip
            .entry(id)
            .map(|e| e.short_id)
            .or_else(|| self.peers.get(&id).map(|p| p.short))
    }

    /// Rebuilds the forwarding snapshot from the peers, the topology and the
    /// ownership table, and publishes it.
    fn publish(&mut self) {
        self.dirty = false;
        self.short = self.gossip.short_id();
        let shorts: Vec<(PeerId, ShortId)> = self
            .peers
            .keys()
            .filter_map(|id| self.short_of(*id).map(|s| (*id, s)))
            .collect();
        for (id, short) in shorts {
            if let Some(p) = self.peers.get_mut(&id) {
                p.short = short;
            }
        }
        let mtu = self.cluster_mtu();
        self.follow_cluster_mtu(mtu);
        let mut snapshot = Snapshot::new(self.short, mtu as usize);
        let owners: Vec<OwnedRange> = self
            .ipam
            .owners()
            .into_iter()
            .filter_map(|(start, end, owner)| {
                Some(OwnedRange {
                    start,
                    end,
                    owner: self.short_of(owner)?,
                })
            })
            .collect();
        let refused = snapshot.set_owners(owners);
        if !refused.is_empty() {
            tracing::warn!(?refused, "overlapping ranges refused");
        }
        // Multi-hop: shortest paths over established connections.
        for (dst, route) in self.gossip.routes().iter() {
            if let (Some(dst_short), Some(via)) =
                (self.short_of(dst), self.short_of(route.next_hop))
                && self.peers.contains_key(&route.next_hop)
            {
                snapshot.set_next_hop(dst_short, via);
            }
        }
        for peer in self.peers.values() {
            let Some(short) = self.short_of(peer.id) else {
                continue;
            };
            // A connection not yet established (UDP unverified) is used
            // directly only while the topology offers no other path.
            if snapshot.next_hop(short).is_none() {
                snapshot.set_next_hop(short, short);
            }
            let current = peer.keys.current();
            snapshot.set_link(
                short,
                Link {
                    endpoint: peer.endpoint,
                    send: current.map(|k| SendKeys {
                        remote_index: k.remote_index,
                        key: k.send.clone(),
                    }),
                    liveness: peer.liveness.clone(),
                },
            );
            for keyset in peer.keys.receive_keysets() {
                let awaiting = current.is_some_and(|c| {
                    keyset.local_index != c.local_index && keyset.created >= c.created
                });
                snapshot.add_session(
                    keyset.local_index,
                    RecvSession {
                        peer: short,
                        key: keyset.recv.clone(),
                        awaiting_confirmation: awaiting,
                    },
                );
            }
        }
        self.dataplane.publish(snapshot);
        let reachable = self.reachable_peers();
        self.ipam.set_reachable(reachable);
    }

    /// Routers a path of established connections leads to, and direct peers.
    fn reachable_peers(&self) -> BTreeSet<PeerId> {
        let routes = self.gossip.routes();
        let mut reachable: BTreeSet<PeerId> = routes.iter().map(|(id, _)| id).collect();
        reachable.extend(self.peers.keys().copied());
        reachable
    }

    fn handle_api(&mut self, request: Request) -> Reply {
        let now = Instant::now();
        let mtu = self.cluster_mtu();
        let gossip = &self.gossip;
        if let Some(reply) =
            self.ipam
                .handle_api(&request, mtu, |name| gossip.name_holder(name), now)
        {
            self.api_latency.observe(now.elapsed().as_secs_f64());
            if request_changes_ownership(&request) {
                self.drive_ipam(now);
            }
            if matches!(request, Request::Leave { .. }) && reply.error.is_none() {
                tracing::info!(
                    grace = ?LEAVE_GRACE,
                    "left the cluster: this router's ranges went to its peers; stopping once they have the ring"
                );
                self.leaving = Some(now + LEAVE_GRACE);
            }
            return reply;
        }
        match request {
            Request::Status => match serde_json::to_value(self.status(Instant::now())) {
                Ok(value) => Reply::ok(value),
                Err(e) => Reply::err(ErrorCode::Internal, e.to_string()),
            },
            Request::Connect { address } => match address.parse::<SocketAddr>() {
                Ok(addr) => {
                    if !self.config.seeds.contains(&addr) {
                        self.config.seeds.push(addr);
                    }
                    self.maker.add_seed(addr, Instant::now());
                    Reply::ok(serde_json::json!({ "seeds": self.seed_strings() }))
                }
                Err(_) => Reply::err(
                    ErrorCode::BadRequest,
                    format!("{address:?} is not HOST:PORT (e.g. 192.0.2.10:6783)"),
                ),
            },
            Request::Forget { address } => match address.parse::<SocketAddr>() {
                Ok(addr) => {
                    self.config.seeds.retain(|s| *s != addr);
                    self.maker.forget(addr);
                    Reply::ok(serde_json::json!({ "seeds": self.seed_strings() }))
                }
                Err(_) => Reply::err(
                    ErrorCode::BadRequest,
                    format!("{address:?} is not HOST:PORT (e.g. 192.0.2.10:6783)"),
                ),
            },
            _ => Reply::err(ErrorCode::BadRequest, "unknown request"),
        }
    }

    /// `direct`, `via NAME` or `unreachable`, from the topology's routes.
    fn path_to(&self, id: PeerId) -> String {
        match self.gossip.routes().route(id) {
            Some(route) if route.next_hop == id => "direct".into(),
            Some(route) => {
                let via = self
                    .gossip
                    .entry(route.next_hop)
                    .map_or_else(|| route.next_hop.to_string(), |e| e.name.clone());
                format!("via {via}")
            }
            None if self.peers.contains_key(&id) => "direct".into(),
            None => "unreachable".into(),
        }
    }

    fn seed_strings(&self) -> Vec<String> {
        self.config.seeds.iter().map(ToString::to_string).collect()
    }

    /// The status object of DESIGN.md "Operator contract".
    pub fn status(&self, now: Instant) -> Status {
        let offload = self.dataplane.offload();
        let offload = offload.as_str();
        let mut connections: Vec<ConnectionStatus> = self
            .peers
            .values()
            .map(|p| {
                let udp_ok = p
                    .liveness
                    .last_rx()
                    .is_some_and(|t| now.saturating_duration_since(t) < LIVENESS_TIMEOUT);
                ConnectionStatus {
                    peer: p.hello.name.clone(),
                    address: p.remote.to_string(),
                    state: if p.established {
                        "established"
                    } else {
                        "handshaking"
                    }
                    .into(),
                    established: p.established,
                    direction: if p.outbound { "outbound" } else { "inbound" }.into(),
                    rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    udp: if udp_ok {
                        "ok"
                    } else if p.liveness.last_rx().is_some() {
                        "blocked"
                    } else {
                        "unverified"
                    }
                    .into(),
                    path: self.path_to(p.id),
                    pmtu: if p
                        .pmtu_ok_at
                        .is_some_and(|t| now.saturating_duration_since(t) < PMTU_TIMEOUT)
                    {
                        "ok"
                    } else if udp_ok {
                        "pmtu too small"
                    } else {
                        "unverified"
                    }
                    .into(),
                    offload: offload.into(),
                    rekeys: p.keys.rekeys(),
                    error: None,
                }
            })
            .collect();
        let mut pending: Vec<(SocketAddr, bool)> =
            self.dialing.values().map(|a| (*a, false)).collect();
        pending.extend(self.dial_errors.keys().map(|a| (*a, true)));
        pending.sort();
        pending.dedup_by_key(|(a, _)| *a);
        for (addr, failed) in pending {
            let connected = self
                .peers
                .values()
                .any(|p| p.hello.listen == addr || p.remote == addr);
            if connected || self.self_addresses.contains(&addr) {
                continue;
            }
            let in_flight = self.dialing.values().any(|a| *a == addr);
            connections.push(ConnectionStatus {
                peer: String::new(),
                address: addr.to_string(),
                state: if failed && !in_flight {
                    "failed"
                } else {
                    "connecting"
                }
                .into(),
                established: false,
                direction: "outbound".into(),
                rtt_ms: None,
                udp: "unverified".into(),
                path: "direct".into(),
                pmtu: "unverified".into(),
                offload: offload.into(),
                rekeys: 0,
                error: self.dial_errors.get(&addr).cloned(),
            });
        }
        connections.sort_by(|a, b| (&a.peer, &a.address).cmp(&(&b.peer, &b.address)));
        let routes = self.gossip.routes();
        let mut peers: Vec<PeerStatus> = self
            .gossip
            .peers()
            .filter(|e| e.id != self.me)
            .map(|e| PeerStatus {
                name: e.name.clone(),
                id: e.id.to_string(),
                addresses: e.addresses.iter().map(ToString::to_string).collect(),
                connections: e.connections.len(),
                reachable: routes.route(e.id).is_some() || self.peers.contains_key(&e.id),
                path: self.path_to(e.id),
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let reachable = self.reachable_peers();
        let ipam = self.ipam.status(|id| reachable.contains(&id), now);
        Status {
            name: self.config.name.clone(),
            id: self.me.to_string(),
            short_id: self.short.0,
            listen: self.config.listen.to_string(),
            peers,
            connections,
            ipam,
            dataplane: DataplaneStatus {
                mtu: self.cluster_mtu(),
                offload: offload.into(),
                workers: self.dataplane.lanes(),
                totals: self.dataplane.totals(),
            },
            handshakes: self.handshakes.clone(),
            rekeys: self.peers.values().map(|p| p.keys.rekeys()).sum(),
            gossip: self.gossip_traffic.clone(),
            api_requests: self.ipam.counters().0.clone(),
            api_latency: self.api_latency.clone(),
        }
    }
}

fn keyset_of(keys: NewKeys, now: Instant) -> Keyset {
    Keyset {
        local_index: keys.local_index,
        remote_index: keys.remote_index,
        send: keys.send,
        recv: keys.recv,
        created: now,
    }
}

/// Requests after which the allocator may have something to send at once
/// (a donation request, a reclaimed ring).
fn request_changes_ownership(request: &Request) -> bool {
    matches!(
        request,
        Request::Allocate { .. }
            | Request::Rmpeer { .. }
            | Request::Release { .. }
            | Request::Leave { .. }
    )
}
