//! The control task: the one tokio task that pumps bytes and timers between
//! the router's sockets and channels and its sans-IO cores (DESIGN.md
//! "Sans-IO cores", "Where tokio lives"). It holds no protocol rule.
//!
//! The cores it pumps: [`peers::Peers`] (registry, duplicate arbitration,
//! rekey policy), [`heartbeat::Heartbeats`] (UDP liveness, RTT, path MTU),
//! [`admission::Admission`] (half-open caps, handshake rate), the gossip
//! topology and connection maker (`crate::gossip`), and the IPAM driver
//! ([`ipam::IpamDriver`]); [`publish::snapshot`] turns their state into the
//! forwarding snapshot and [`status::report`] into `weft status`.
//! `drive.rs` pumps the gossip and IPAM cores, `requests.rs` answers API
//! calls; both are `impl Control` blocks of this driver.
//!
//! It waits on one `select!` over: connection events, data-plane worker
//! events, heartbeats on the control socket, API calls, new TCP connections
//! and the timer. After each input it calls [`Control::pump`], which drains
//! the cores in this order:
//! 1. timers that are due (gossip, IPAM, key schedules and rekey policy;
//!    heartbeats run in step 5, after their keys are synced);
//! 2. the peer registry's events (peer up/down → topology, IPAM, heartbeats,
//!    connection maker) and the heartbeat core's events (endpoint, key
//!    confirmation, established → topology);
//! 3. gossip transmits and events, IPAM transmits and events, dials;
//! 4. if anything changed: publish the snapshot to the data plane and sync
//!    the heartbeat core's keys;
//! 5. heartbeat timers, then the registry's commands to connections (a
//!    `KeyConfirm` only after the snapshot with its keys is out) and the
//!    heartbeat datagrams.
//!
//! Timers: there is no fixed tick. After each pass the loop sleeps until the
//! earliest `poll_timeout` of gossip, IPAM, the registry (key expiry, rekey
//! policy), the heartbeats, the connection maker and a pending leave
//! ([`timers::next_wake`], never sooner than 1 ms after a pass).

pub mod admission;
pub mod attribution;
pub mod connection;
mod directory;
mod drive;
pub mod endpoints;
pub mod heartbeat;
pub mod ipam;
pub mod link;
pub mod peers;
pub mod proto;
pub mod publish;
pub mod punch;
pub mod relay;
mod requests;
pub mod status;
pub mod timers;

use crate::api::proto::{LatencyHistogram, TrafficCount};
use crate::api::server::ApiCall;
use crate::cidr::Ipv4Cidr;
use crate::gossip::{Channel, ConnectionMaker, Frame, Gossip, GossipConfig, PeerInfo};
use crate::id::{PeerId, ShortId};
use crate::netlink::InterfacePlan;
use crate::router::Dataplane;
use crate::router::snapshot::Liveness;
use crate::router::worker::WorkerEvent;
use admission::Admission;
use connection::{
    ConnectionCommand, ConnectionContext, ConnectionEvent, ConnectionId, HandshakeFailure, PeerUp,
};
use directory::Directory;
use endpoints::{EndpointEvent, Endpoints};
use heartbeat::{HeartbeatEvent, Heartbeats, LinkKeys};
use ipam::IpamDriver;
use peers::{Arrival, PeerEvent, Peers};
use proto::ControlMessage;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

/// How long a router that left keeps running, so the ring that hands its
/// ranges away reaches its peers (and they pass it on) before it goes.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// What the control task needs from the command line.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// This router's name.
    pub name: String,
    /// Listen address (TCP control and UDP data).
    pub listen: SocketAddr,
    /// Seed addresses.
    pub seeds: Vec<SocketAddr>,
    /// Endpoints the operator gives besides `listen` (`--advertise`).
    pub advertise: Vec<SocketAddr>,
    /// The cluster range.
    pub range: Ipv4Cidr,
    /// Overlay MTU.
    pub mtu: u32,
    /// Rekey interval (120 s unless shortened for tests).
    pub rekey_after: Duration,
    /// The latest IPv4 forwarding pass (daemon.rs re-checks it).
    pub forwarding: watch::Receiver<crate::forwarding::Report>,
}

/// The control task's state: the cores, and the I/O handles they need.
pub struct Control {
    config: ControlConfig,
    me: PeerId,
    short: ShortId,
    context: Arc<ConnectionContext>,
    dataplane: Dataplane,
    udp: UdpSocket,
    peers: Peers,
    heartbeats: Heartbeats,
    admission: Admission,
    gossip: Gossip,
    maker: ConnectionMaker,
    ipam: IpamDriver,
    endpoints: Endpoints,
    /// Each connection task's command channel.
    links: HashMap<ConnectionId, mpsc::UnboundedSender<ConnectionCommand>>,
    /// Each peer's liveness cell, shared with the data plane.
    liveness: HashMap<PeerId, Arc<Liveness>>,
    epoch: Instant,
    dialing: HashMap<ConnectionId, SocketAddr>,
    dial_errors: HashMap<SocketAddr, String>,
    self_addresses: HashSet<SocketAddr>,
    next_connection: ConnectionId,
    handshakes: BTreeMap<String, u64>,
    last_gossip_log: Option<Instant>,
    /// Who may relay for whom, with grace for lag (issue 15, defect 7).
    attribution: attribution::Attribution,
    /// Peers the last snapshot left out for a short-ID clash.
    short_clashes: Vec<(PeerId, ShortId)>,
    last_refusal_log: Option<Instant>,
    last_clock_skew_log: Option<Instant>,
    last_admission_log: Option<Instant>,
    /// The snapshot must be rebuilt.
    dirty: bool,
    gossip_traffic: BTreeMap<String, TrafficCount>,
    api_latency: LatencyHistogram,
    /// After a successful `weft leave`: when to stop.
    leaving: Option<Instant>,
    /// What the kernel should look like (node address, owned ranges); a
    /// task in the daemon applies each new plan.
    kernel: watch::Sender<InterfacePlan>,
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

/// The short ID the data plane uses for `id`: mine, the gossiped one, else
/// what its hello said; never one that another router rightfully holds
/// (DESIGN.md: on a clash the lower ID keeps it), so a router that has not
/// yet moved off a clashing value is left out and no two links share a slot.
fn short_of(
    me: PeerId,
    my_short: ShortId,
    gossip: &Gossip,
    peers: &Peers,
    id: PeerId,
) -> Option<ShortId> {
    if id == me {
        return Some(my_short);
    }
    match gossip.entry(id) {
        Some(e) => gossip.holds_short_id(id).then_some(e.short_id),
        None => peers
            .get(id)
            .map(|p| p.short)
            .filter(|s| *s != my_short && gossip.peer_by_short(*s).is_none()),
    }
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
        let endpoints = Endpoints::new(config.listen, config.advertise.clone());
        let gossip = Gossip::new(
            PeerInfo {
                id: me,
                name: config.name.clone(),
                public_key: context.identity.public_key(),
                addresses: endpoints.advertised().to_vec(),
            },
            crate::crypto::SigningKey::from_identity(&context.identity),
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
            peers: Peers::new(me, config.rekey_after),
            heartbeats: Heartbeats::new(epoch, short, config.mtu),
            admission: Admission::new(),
            config,
            me,
            short,
            context,
            dataplane,
            udp,
            epoch,
            gossip,
            maker,
            links: HashMap::new(),
            liveness: HashMap::new(),
            dialing: HashMap::new(),
            dial_errors: HashMap::new(),
            last_gossip_log: None,
            attribution: attribution::Attribution::default(),
            short_clashes: Vec::new(),
            self_addresses,
            next_connection: 1,
            handshakes: BTreeMap::new(),
            last_refusal_log: None,
            last_clock_skew_log: None,
            last_admission_log: None,
            dirty: true,
            ipam,
            endpoints,
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
        let mut datagram = vec![0u8; 65_536];
        self.publish(Instant::now());
        self.pump(Instant::now());
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        loop {
            let now = Instant::now();
            if self.leaving.is_some_and(|at| now >= at) {
                break;
            }
            // Sleep until the earliest deadline of any core; an hour when
            // none has one (every input wakes the loop anyway).
            let wake = self
                .next_wake(now)
                .map_or(now + Duration::from_secs(3600), |(t, _)| t);
            timer.as_mut().reset(wake.into());
            tokio::select! {
                _ = &mut shutdown => break,
                () = &mut timer => {}
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
                        self.heartbeats.handle_datagram(Instant::now(), from, &mut datagram[..len]);
                    }
                }
            }
            self.pump(Instant::now());
        }
        self.peers.close_all("router shutting down");
        self.send_commands();
        self.dataplane.stop();
    }

    /// Drains every core in the order the module doc gives.
    fn pump(&mut self, now: Instant) {
        self.handle_timers(now);
        self.drain_peer_events(now);
        self.drain_heartbeat_events(now);
        self.drain_gossip(now);
        self.drive_ipam(now);
        self.drive_dials(now);
        if self.peers.take_changed() || self.dirty {
            self.publish(now);
        }
        self.observe_data();
        self.heartbeats.handle_timeout(now);
        self.drain_heartbeat_events(now);
        if self.peers.take_changed() || self.dirty {
            self.publish(now);
        }
        self.send_commands();
        self.send_heartbeats();
    }

    /// Runs the timers that are due of the cores other than the heartbeats
    /// (those run after their keys are synced, see [`Self::pump`]), and
    /// lets IPAM resolve its initial mode against what is known now.
    fn handle_timers(&mut self, now: Instant) {
        if self.gossip.poll_timeout().is_some_and(|(t, _)| t <= now) {
            self.gossip.handle_timeout(now);
        }
        if self.ipam.poll_timeout().is_some_and(|t| t <= now) {
            self.ipam.handle_timeout(now);
        }
        let directory = Directory {
            me: self.me,
            name: &self.config.name,
            self_addresses: &self.self_addresses,
            endpoints: &self.endpoints,
            peers: &self.peers,
            gossip: &self.gossip,
        };
        self.ipam
            .resolve(&directory, &self.config.seeds, self.config.listen, now);
        if self.peers.poll_timeout().is_some_and(|(t, _)| t <= now) {
            self.peers.handle_timeout(now);
        }
    }

    /// The earliest deadline of any core (DESIGN.md "Sans-IO cores": no
    /// fixed tick).
    fn next_wake(&self, now: Instant) -> Option<(Instant, timers::Wake)> {
        use timers::Wake;
        timers::next_wake(
            now,
            [
                (self.gossip.poll_timeout().map(|(t, _)| t), Wake::Gossip),
                (self.ipam.poll_timeout(), Wake::Ipam),
                (self.peers.poll_timeout().map(|(t, _)| t), Wake::Keys),
                (
                    self.heartbeats.poll_timeout().map(|(t, _)| t),
                    Wake::Heartbeat,
                ),
                (self.maker.poll_timeout(), Wake::Dial),
                (self.leaving, Wake::Leave),
            ],
        )
    }

    /// The data plane's receive times count as liveness.
    fn observe_data(&mut self) {
        for (peer, cell) in &self.liveness {
            self.heartbeats.observe_data(*peer, cell.last_rx());
        }
    }

    /// Sends the registry's commands to their connection tasks.
    fn send_commands(&mut self) {
        while let Some((connection, command)) = self.peers.poll_transmit() {
            if let Some(link) = self.links.get(&connection) {
                let _ = link.send(command);
            }
        }
    }

    /// Sends the heartbeat core's datagrams on the control socket.
    fn send_heartbeats(&mut self) {
        while let Some((to, datagram)) = self.heartbeats.poll_transmit() {
            if let Err(e) = self.udp.try_send_to(&datagram, to)
                && e.raw_os_error() == Some(libc::EMSGSIZE)
            {
                // The kernel knows the path is smaller than a probe.
                self.heartbeats.handle_too_big(to, Instant::now());
            }
        }
    }

    /// Sends `message` to `peer` over its connection.
    fn send_to_peer(&self, peer: PeerId, message: ControlMessage) {
        if let Some(link) = self
            .peers
            .get(peer)
            .and_then(|p| self.links.get(&p.connection))
        {
            let _ = link.send(ConnectionCommand::Send(message));
        }
    }

    fn handle_accept(&mut self, stream: tokio::net::TcpStream, remote: SocketAddr, now: Instant) {
        let id = self.next_id();
        if let Err(refusal) = self.admission.admit(id, remote.ip(), self.peers.len(), now) {
            self.count_handshake(refusal.as_str());
            if self
                .last_admission_log
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                self.last_admission_log = Some(now);
                let count = self.handshakes.get(refusal.as_str()).copied().unwrap_or(0);
                tracing::warn!(%remote, reason = refusal.as_str(), count, "refused an inbound connection before its handshake: {refusal}");
            }
            return;
        }
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

    fn handle_connection_event(&mut self, event: ConnectionEvent, now: Instant) {
        match event {
            ConnectionEvent::Up(up) => {
                let (arrival, commands) = arrival_of(up);
                let id = arrival.connection;
                self.admission.finished(id);
                self.links.insert(id, commands);
                let dialled = self.dialing.remove(&id);
                if let Some(addr) = dialled {
                    self.dial_errors.remove(&addr);
                }
                let peer = arrival.peer;
                self.maker
                    .connected(peer, dialled.or(Some(arrival.hello.listen)), now);
                self.count_handshake("ok");
                if self.peers.handle_up(arrival, now) == peers::Arrived::OverCap {
                    self.count_handshake("connection_cap");
                } else if let Some(addr) = dialled {
                    // Tell it where it answered: behind 1:1 NAT that is an
                    // address it cannot learn by itself (issue 16).
                    self.endpoints.dialled(addr, peer);
                    self.send_to_peer(
                        peer,
                        ControlMessage::Observed {
                            dialled: Some(addr),
                            udp_from: None,
                        },
                    );
                }
            }
            ConnectionEvent::Rekeyed { id, keys } => self.peers.handle_rekeyed(id, keys, now),
            ConnectionEvent::Message {
                id,
                message: ControlMessage::Observed { dialled, udp_from },
            } => {
                let from = self.peers.iter().find(|p| p.connection == id).map(|p| p.id);
                if let Some(from) = from {
                    self.endpoints.handle_report(from, dialled, udp_from);
                    self.drain_endpoint_events(now);
                }
            }
            ConnectionEvent::Message { id, message } => {
                if let Some((from, channel, payload)) = self.peers.handle_message(id, message, now)
                {
                    self.handle_gossip(from, channel, payload, now);
                }
            }
            ConnectionEvent::HandshakeFailed {
                id,
                remote,
                outbound,
                reason,
            } => {
                self.admission.finished(id);
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
                self.links.remove(&id);
                self.peers.handle_down(id, &reason);
            }
        }
    }

    /// Acts on the registry's events: a peer's arrival or departure reaches
    /// the topology, IPAM, the heartbeats and the connection maker.
    fn drain_peer_events(&mut self, now: Instant) {
        while let Some(event) = self.peers.poll_event() {
            self.dirty = true;
            match event {
                PeerEvent::Up { peer, outbound } => {
                    let Some(p) = self.peers.get(peer) else {
                        continue;
                    };
                    let info = PeerInfo {
                        id: peer,
                        name: p.hello.name.clone(),
                        public_key: p.public_key,
                        addresses: vec![p.hello.listen],
                    };
                    self.ipam.learn_name(peer, &info.name);
                    self.ipam.learn_key(peer, p.public_key);
                    drive::warn_if_unsigned(p);
                    self.gossip.connection_up(info, outbound, now);
                    self.ipam.handle_peer_up(peer, now);
                    self.liveness
                        .insert(peer, Arc::new(Liveness::new(self.epoch)));
                    self.heartbeats.add(peer, outbound, now);
                }
                PeerEvent::Down { peer } => {
                    self.endpoints.handle_peer_down(peer);
                    self.drain_endpoint_events(now);
                    self.liveness.remove(&peer);
                    self.heartbeats.remove(peer);
                    self.maker.disconnected(peer, now);
                    self.gossip.connection_down(peer, now);
                }
            }
        }
    }

    /// Acts on the endpoint core's events: an address of my own is never
    /// dialled and counts as me in the seed list; a changed endpoint list
    /// goes into my topology entry.
    fn drain_endpoint_events(&mut self, now: Instant) {
        while let Some(event) = self.endpoints.poll_event() {
            match event {
                EndpointEvent::MineLearned(addr) => {
                    self.self_addresses.insert(addr);
                    self.maker.add_own(addr);
                }
                EndpointEvent::AdvertisedChanged => {
                    let addresses = self.endpoints.advertised().to_vec();
                    tracing::info!(?addresses, "advertised endpoints changed");
                    self.gossip.set_addresses(addresses, now);
                    self.dirty = true;
                }
            }
        }
    }

    /// Acts on the heartbeat core's events.
    fn drain_heartbeat_events(&mut self, now: Instant) {
        while let Some(event) = self.heartbeats.poll_event() {
            match event {
                HeartbeatEvent::Authenticated {
                    peer,
                    local_index,
                    from,
                    newest,
                } => {
                    if newest {
                        self.peers.set_endpoint(peer, from);
                        if self.endpoints.observe_udp(peer, from) {
                            self.send_to_peer(
                                peer,
                                ControlMessage::Observed {
                                    dialled: None,
                                    udp_from: Some(from),
                                },
                            );
                        }
                    }
                    self.peers.confirm(Some(peer), local_index, now);
                }
                HeartbeatEvent::Established { peer, established } => {
                    if let Some(p) = self.peers.get(peer) {
                        tracing::info!(peer = %p.hello.name, established, "connection state changed");
                    }
                    self.gossip.set_established(peer, established, now);
                    self.dirty = true;
                }
            }
        }
    }

    /// A gossip payload from `from`: the ring's go to IPAM, the topology's
    /// to the gossip core.
    fn handle_gossip(&mut self, from: PeerId, channel: u8, payload: Vec<u8>, now: Instant) {
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

    fn handle_worker_event(&mut self, event: WorkerEvent, now: Instant) {
        match event {
            WorkerEvent::KeysetConfirmed { local_index } => {
                tracing::debug!(local_index, "keyset confirmed by a data packet");
                self.peers.confirm(None, local_index, now);
            }
            WorkerEvent::EndpointMoved { peer, address } => {
                if let Some(id) = self.peers.by_short(peer) {
                    self.peers.set_endpoint(id, address);
                }
            }
        }
    }

    /// Rebuilds the forwarding snapshot from the cores' state, publishes it,
    /// and brings the heartbeat core's keys up to date.
    fn publish(&mut self, now: Instant) {
        self.dirty = false;
        self.short = self.gossip.short_id();
        let (me, my_short) = (self.me, self.short);
        let ids: Vec<PeerId> = self.peers.iter().map(|p| p.id).collect();
        for id in ids {
            if let Some(s) = short_of(me, my_short, &self.gossip, &self.peers, id) {
                self.peers.set_short(id, s);
            }
        }
        let mtu = self.cluster_mtu();
        self.follow_cluster_mtu(mtu);
        self.heartbeats.set_mtu(mtu, now);
        let (gossip, peers) = (&self.gossip, &self.peers);
        let lookup = |id| short_of(me, my_short, gossip, peers, id);
        let owners = self.ipam.owners();
        let attributed = self.attribution.update(gossip, &owners, now);
        let published = publish::snapshot(&publish::Inputs {
            me: my_short,
            mtu,
            peers,
            liveness: &self.liveness,
            routes: gossip
                .routes()
                .iter()
                .map(|(d, r)| (d, r.next_hop))
                .collect(),
            owners,
            short_of: &lookup,
            attributed: &attributed,
        });
        if !published.refused_ranges.is_empty() {
            tracing::warn!(refused = ?published.refused_ranges, "overlapping ranges refused");
        }
        if published.refused_links != self.short_clashes {
            self.short_clashes = published.refused_links;
            if !self.short_clashes.is_empty() {
                self.count_handshake("short_id_clash");
                tracing::warn!(refused = ?self.short_clashes, "peers left out of the data plane: another router has their short ID");
            }
        }
        self.dataplane.publish(published.snapshot);
        for p in self.peers.iter() {
            self.heartbeats.set_link(
                p.id,
                my_short,
                LinkKeys {
                    short: p.short,
                    endpoint: p.endpoint,
                    current: p.keys.current(),
                    receive: p.keys.receive_keysets().collect(),
                },
                now,
            );
        }
        let reachable = self.reachable_peers();
        self.ipam.set_reachable(reachable);
    }

    /// Routers a path of established connections leads to, and direct peers.
    fn reachable_peers(&self) -> BTreeSet<PeerId> {
        let routes = self.gossip.routes();
        let mut reachable: BTreeSet<PeerId> = routes.iter().map(|(id, _)| id).collect();
        reachable.extend(self.peers.iter().map(|p| p.id));
        reachable
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
}

/// Splits a connection's arrival into what the registry keeps and the
/// command channel the driver keeps.
fn arrival_of(up: PeerUp) -> (Arrival, mpsc::UnboundedSender<ConnectionCommand>) {
    let arrival = Arrival {
        connection: up.id,
        peer: up.peer,
        public_key: up.public_key,
        hello: up.hello,
        remote: up.remote,
        outbound: up.outbound,
        keys: up.keys,
    };
    (arrival, up.commands)
}
