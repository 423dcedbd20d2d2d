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
//! `drive.rs` pumps the gossip and IPAM cores, `connections.rs` handles
//! the connection tasks' lifecycle, `events.rs` acts on the cores' events,
//! `sync.rs` publishes the snapshot and syncs the heartbeat keys,
//! `requests.rs` answers API calls, `rotate.rs` runs `weft
//! rotate-identity`; all are `impl Control` blocks of this driver.
//! [`rotation::Rotations`] (sans-IO) says which peers' identity keys are
//! retired, and when their windows end.
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
//! policy), the heartbeats, the connection maker, a pending leave or
//! rotation restart and the end of a retired key's window
//! ([`timers::next_wake`], never sooner than 1 ms after a pass).

pub mod admission;
pub mod attribution;
pub mod backlog;
pub mod connection;
mod connections;
mod directory;
mod drive;
pub mod endpoints;
mod events;
pub mod family;
mod family_drive;
pub mod heartbeat;
pub mod ipam;
mod keep_retired;
pub mod link;
pub mod mtu;
pub mod peers;
pub mod proto;
pub mod publish;
pub mod punch;
mod punching;
pub mod relay;
pub mod relayed;
mod requests;
pub mod retired_keys;
mod rotate;
pub mod rotation;
pub mod status;
mod switched;
mod sync;
pub mod timers;

use crate::api::proto::{LatencyHistogram, TrafficCount};
use crate::api::server::ApiCall;
use crate::cidr::Ipv4Cidr;
use crate::crypto::identity::Identity;
use crate::gossip::{ConnectionMaker, Gossip, GossipConfig, PeerInfo};
use crate::id::{PeerId, ShortId};
use crate::netlink::InterfacePlan;
use crate::router::Dataplane;
use crate::router::snapshot::Liveness;
use crate::router::worker::WorkerEvent;
use admission::Admission;
use connection::{ConnectionCommand, ConnectionContext, ConnectionEvent, ConnectionId};
use directory::Directory;
use endpoints::Endpoints;
use heartbeat::Heartbeats;
use ipam::IpamDriver;
use peers::Peers;
use proto::ControlMessage;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

/// How long a router that left keeps running, so the ring that hands its
/// ranges away reaches its peers (and they pass it on) before it goes.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// How long after `weft rotate-identity` the router restarts under its new
/// key: time for the ring hand-over, signed by the old key, to go out.
const ROTATE_GRACE: Duration = Duration::from_millis(500);

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
    /// The underlay families the bound listen address serves.
    pub families: crate::underlay::Families,
    /// The cluster range.
    pub range: Ipv4Cidr,
    /// Overlay MTU.
    pub mtu: u32,
    /// Where `mtu` came from (`--mtu`, or the underlay interface).
    pub mtu_source: String,
    /// Rekey interval (120 s unless shortened for tests).
    pub rekey_after: Duration,
    /// The latest IPv4 forwarding pass (daemon.rs re-checks it).
    pub forwarding: watch::Receiver<crate::forwarding::Report>,
    /// How long a peer's retired identity key is still accepted after this
    /// router learns of its rotation (`crypto::rotation::DEFAULT_WINDOW`
    /// unless shortened for tests).
    pub rotation_window: Duration,
    /// Where the identity and `identity.next` live (`weft rotate-identity`).
    pub state_dir: std::path::PathBuf,
    /// This process runs under the key a rotation just moved it to: the
    /// announcement, the old key (to sign the old ID's tombstone) and the
    /// short ID the old key held.
    pub rotated_from: Option<(crate::crypto::rotation::Rotation, Arc<Identity>, ShortId)>,
    /// The short ID this key carried from a rotation at an earlier start
    /// (`crypto::carried_short`), announced instead of the preferred one.
    pub carried_short: Option<ShortId>,
    /// `--identity-max-age` found the key too old: rotate once the ring is
    /// known.
    pub rotate_at_start: bool,
    /// Where this router's current ID is published, for the tasks that
    /// name it outside the control task (the Lease): a live identity
    /// switch sends the new one.
    pub own_id: watch::Sender<PeerId>,
}

/// Why [`Control::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM/SIGINT, or `weft leave`.
    Shutdown,
    /// `weft rotate-identity` (or `--identity-max-age`) handed this
    /// router's ranges to its new key and wrote `identity.next`: the
    /// caller starts the router again, which completes the rotation.
    Rotated,
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
    /// The IPv6 pod range's allocator, a second instance on its own ring
    /// channel, when dual-stack pods are configured (issue 19).
    ipam6: Option<IpamDriver>,
    endpoints: Endpoints,
    /// Relayed control connections (issue 16).
    relayed: relayed::Sessions,
    /// What this router forwards for others.
    relay_budget: relay::RelayBudget,
    /// Hole punching for relayed peers.
    punch: punch::Punch,
    /// Which family each dual-stack peer's data takes (issue 19).
    family_choice: family::FamilyChoice,
    /// Each connection task's command channel.
    links: HashMap<ConnectionId, mpsc::UnboundedSender<ConnectionCommand>>,
    /// Each peer's liveness cell, shared with the data plane.
    liveness: HashMap<PeerId, Arc<Liveness>>,
    epoch: Instant,
    dialing: HashMap<ConnectionId, SocketAddr>,
    dial_errors: HashMap<SocketAddr, String>,
    self_addresses: HashSet<SocketAddr>,
    /// The other addresses of a seed's router (`Request::Connect`'s
    /// `also`; `--peers-from-kube`): by seed, for its voter slot.
    seed_also: HashMap<SocketAddr, Vec<SocketAddr>>,
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
    /// Verified identity rotations of peers and their windows.
    rotations: rotation::Rotations,
    /// The change counts of the retirements last saved to the state dir
    /// (`keep_retired.rs`).
    retired_saved: Option<(u64, u64)>,
    /// After a successful `weft rotate-identity`: when to restart under
    /// the new key.
    rotating: Option<Instant>,
    /// Connections whose live identity switch has not completed yet: a
    /// second rotation waits for them (a link mid-switch refuses another).
    switching: HashSet<ConnectionId>,
    /// What the kernel should look like (node address, owned ranges); a
    /// task in the daemon applies each new plan.
    kernel: watch::Sender<InterfacePlan>,
}

/// The channels the control task reads.
pub struct ControlInputs {
    /// From connection tasks.
    pub connections: mpsc::UnboundedReceiver<ConnectionEvent>,
    /// From data-plane workers.
    pub workers: mpsc::Receiver<WorkerEvent>,
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
        ipams: ipam::PodIpam,
        kernel: watch::Sender<InterfacePlan>,
    ) -> Self {
        let ipam::PodIpam { ipam, ipam6 } = ipams;
        let identity = context.identity.load_full();
        let me = identity.id();
        let mut self_addresses = HashSet::new();
        self_addresses.insert(config.listen);
        let now = Instant::now();
        let endpoints = Endpoints::new(config.listen, config.advertise.clone());
        let gossip = Gossip::new(
            PeerInfo {
                id: me,
                name: config.name.clone(),
                public_key: identity.public_key(),
                addresses: endpoints.advertised().to_vec(),
            },
            crate::crypto::SigningKey::from_identity(&identity),
            GossipConfig {
                mtu: u16::try_from(config.mtu).unwrap_or(u16::MAX),
                retirement_window: config.rotation_window,
                ..GossipConfig::default()
            },
            rand::random(),
            now,
        );
        let gossip = match &config.rotated_from {
            Some((rotation, old, short)) => gossip.with_rotation(
                *rotation,
                &crate::crypto::SigningKey::from_identity(old),
                *short,
            ),
            None => match config.carried_short {
                Some(short) => gossip.with_short_id(short),
                None => gossip,
            },
        };
        let short = gossip.short_id();
        let maker = ConnectionMaker::with_config(
            vec![config.listen],
            config.seeds.clone(),
            rand::random(),
            crate::gossip::connection_maker::ConnectionMakerConfig {
                families: config.families,
                ..Default::default()
            },
        );
        let config_window = config.rotation_window;
        let mut control = Self {
            peers: Peers::new(me, config.rekey_after),
            heartbeats: Heartbeats::new(epoch, short, config.mtu),
            admission: Admission::new(),
            relayed: relayed::Sessions::default(),
            relay_budget: relay::RelayBudget::new(me, relay::RelayLimits::default()),
            punch: punch::Punch::new(me, rand::random()),
            family_choice: family::FamilyChoice::default(),
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
            seed_also: HashMap::new(),
            next_connection: 1,
            handshakes: BTreeMap::new(),
            last_refusal_log: None,
            last_clock_skew_log: None,
            last_admission_log: None,
            dirty: true,
            ipam,
            ipam6,
            endpoints,
            kernel,
            gossip_traffic: BTreeMap::new(),
            api_latency: LatencyHistogram::default(),
            leaving: None,
            rotations: rotation::Rotations::new(config_window),
            retired_saved: None,
            rotating: None,
            switching: HashSet::new(),
        };
        // Before any connection: a retired key must not get in between.
        control.restore_retired(now);
        control
    }

    /// Runs until `shutdown` resolves (or `weft leave` or `weft
    /// rotate-identity` ends it); then stops the data plane. Says why.
    pub async fn run(
        mut self,
        listener: TcpListener,
        mut inputs: ControlInputs,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Stopped {
        tokio::pin!(shutdown);
        let mut stopped = Stopped::Shutdown;
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
            if self.rotating.is_some_and(|at| now >= at) {
                stopped = Stopped::Rotated;
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
                Some(event) = inputs.connections.recv() => {
                    if let ConnectionEvent::Message { message, .. } = &event {
                        self.context.backlog.done(message);
                    }
                    self.handle_connection_event(event, Instant::now());
                }
                Some(event) = inputs.workers.recv() => self.handle_worker_event(event, Instant::now()),
                Some((request, reply)) = inputs.api.recv() => {
                    let _ = reply.send(self.handle_api(request));
                }
                accepted = listener.accept() => {
                    if let Ok((stream, remote)) = accepted {
                        let remote = crate::underlay::canonical(remote);
                        self.handle_accept(stream, remote, Instant::now());
                    }
                }
                received = self.udp.recv_from(&mut datagram) => {
                    if let Ok((len, from)) = received {
                        let from = crate::underlay::canonical(from);
                        self.heartbeats.handle_datagram(Instant::now(), from, &mut datagram[..len]);
                    }
                }
            }
            self.pump(Instant::now());
        }
        let reason = match stopped {
            Stopped::Shutdown => "router shutting down",
            Stopped::Rotated => "router restarting under a new identity key",
        };
        self.peers.close_all(reason);
        self.send_commands();
        self.dataplane.stop();
        stopped
    }

    /// Drains every core in the order the module doc gives.
    fn pump(&mut self, now: Instant) {
        self.handle_timers(now);
        self.drain_peer_events(now);
        self.drain_heartbeat_events(now);
        self.drain_gossip(now);
        self.drive_ipam(now);
        self.drive_dials(now);
        self.drive_relayed(now);
        self.drive_punch(now);
        self.drive_family(now);
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
        self.save_retired(now);
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
        if let Some(ipam6) = self.ipam6.as_mut()
            && ipam6.poll_timeout().is_some_and(|t| t <= now)
        {
            ipam6.handle_timeout(now);
        }
        let directory = Directory {
            me: self.me,
            name: &self.config.name,
            self_addresses: &self.self_addresses,
            seed_also: &self.seed_also,
            endpoints: &self.endpoints,
            peers: &self.peers,
            gossip: &self.gossip,
        };
        self.ipam
            .resolve(&directory, &self.config.seeds, self.config.listen, now);
        if let Some(ipam6) = self.ipam6.as_mut() {
            ipam6.resolve(&directory, &self.config.seeds, self.config.listen, now);
        }
        if self.peers.poll_timeout().is_some_and(|(t, _)| t <= now) {
            self.peers.handle_timeout(now);
        }
        for old in self.rotations.handle_timeout(now) {
            self.close_retired(old);
        }
        for old in self.rotations.prune(now, keep_retired::unix_now()) {
            self.gossip.forget_retirement(old);
        }
        if self.config.rotate_at_start && !self.ipam.owners().is_empty() {
            self.config.rotate_at_start = false;
            let reply = self.rotate_identity(now);
            if let Some(error) = reply.error {
                tracing::warn!(error = %error.message, "--identity-max-age: the rotation failed; the key stays until the next start");
            }
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
                (
                    self.ipam
                        .poll_timeout()
                        .into_iter()
                        .chain(self.ipam6.as_ref().and_then(IpamDriver::poll_timeout))
                        .min(),
                    Wake::Ipam,
                ),
                (self.peers.poll_timeout().map(|(t, _)| t), Wake::Keys),
                (
                    self.heartbeats.poll_timeout().map(|(t, _)| t),
                    Wake::Heartbeat,
                ),
                (self.maker.poll_timeout(), Wake::Dial),
                (self.relayed.poll_timeout(), Wake::Relay),
                (self.punch.poll_timeout().map(|(t, _)| t), Wake::Punch),
                (self.family_choice.poll_timeout(), Wake::Family),
                (self.leaving.or(self.rotating), Wake::Leave),
                (self.rotations.poll_timeout(now), Wake::Keys),
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

    /// A verified rotation the topology learned: its old key is accepted
    /// for the window, then refused.
    fn learn_rotation(
        &mut self,
        old: PeerId,
        new: PeerId,
        rotation: &crate::crypto::rotation::Rotation,
        now: Instant,
    ) {
        match self
            .rotations
            .learn(rotation, now, keep_retired::unix_now())
        {
            Ok(_) => tracing::info!(
                %old, %new, window = ?self.config.rotation_window,
                "a router moved to a new identity key; its old key is accepted until the window ends"
            ),
            Err(e) => tracing::warn!(%old, %new, "identity rotation not tracked: {e}"),
        }
        self.learn_retired_key(old, rotation.old);
        self.maker.unlearn(old);
        self.dirty = true;
    }

    /// A retired key's window ended: its link, if any is left, closes.
    fn close_retired(&mut self, old: PeerId) {
        if let Some(peer) = self.peers.get(old) {
            tracing::warn!(peer = %peer.hello.name, id = %old, "closing a link still on a retired identity key (its window ended)");
            let connection = peer.connection;
            if let Some(link) = self.links.get(&connection) {
                let _ = link.send(ConnectionCommand::Close(
                    "the identity key was retired".into(),
                ));
            }
        }
    }

    /// Sends `message` to `peer` over its connection, unless the peer's
    /// build is too old to know it (a mixed-version cluster mid-upgrade:
    /// the feature is off for that link, the link stays up).
    fn send_to_peer(&self, peer: PeerId, message: ControlMessage) {
        let Some(p) = self.peers.get(peer) else {
            return;
        };
        if p.hello.versions.control.max < message.needs_version() {
            tracing::debug!(peer = %p.hello.name, "not sent: the peer's build predates this control message");
            return;
        }
        if let Some(link) = self.links.get(&p.connection) {
            let _ = link.send(ConnectionCommand::Send(message));
        }
    }
}
