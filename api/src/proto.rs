//! The local API's request and reply types, shared by the router, `weft
//! status` and the CNI plugin. One JSON object per line over the unix socket
//! (`/run/weft/weft.sock`, mode 0600): the client writes a request line, the
//! router answers with one reply line and closes. Documented in the README.
//!
//! Plain data only: the router fills these from its own state (e.g.
//! [`DataplaneTotals`] from the workers' counters in `router::stats`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The whole status object.
    Status,
    /// Add a seed address at run time.
    Connect {
        /// `HOST:PORT`.
        address: String,
        /// Other `HOST:PORT`s of the same router (`--peers-from-kube`: a
        /// Node's other addresses): candidates of the one seed, which
        /// stays one voter slot named `address`. Absent: the seed's
        /// candidates are left as they are; given: they are replaced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        also: Option<Vec<String>>,
    },
    /// Remove a seed address at run time.
    Forget {
        /// `HOST:PORT`.
        address: String,
    },
    /// Whether the router can serve CNI requests now (CNI STATUS):
    /// result [`Readiness`].
    Ready,
    /// An address for a pod interface (CNI ADD), idempotent by
    /// `(container_id, ifname)`: result [`Allocation`]. Answers `not_ready`
    /// at once (never blocks) while the ring is not known or a donation is
    /// on its way.
    Allocate {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
        /// The pod, when the runtime named it in `CNI_ARGS` (kubelet
        /// does): kept with the allocation and shown in `weft status ipam`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<PodRef>,
    },
    /// Frees a pod interface's address (CNI DEL): result [`Released`].
    /// Something never allocated answers `not_found`. `address` (and
    /// `address6`), when given, also frees an address the router found in
    /// use in the kernel at start without knowing its holder.
    Release {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
        /// The address the plugin put on the interface, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        /// The interface's IPv6 address, if it had one (a dual-stack pod):
        /// frees it in the IPv6 ring the same way. Older routers ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address6: Option<String>,
    },
    /// The address held by a pod interface (CNI CHECK): result
    /// [`Allocation`], or `not_found`.
    Lookup {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
    },
    /// Pod allocations, all of them or one container's: result
    /// [`AllocationList`].
    List {
        /// Only this container's interfaces.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container_id: Option<String>,
    },
    /// Releases every pod allocation whose container ID is not in `keep`
    /// (CNI GC with `cni.dev/valid-attachments`): result [`AllocationList`]
    /// of what was released.
    Gc {
        /// Container IDs still attached.
        keep: Vec<String>,
    },
    /// Takes over a dead router's address space (`weft rmpeer`): result
    /// [`Reclaimed`]. Refused while that router is reachable unless `force`.
    Rmpeer {
        /// The dead router's name (or hex ID).
        name: String,
        /// Reclaim even though it looks alive.
        #[serde(default)]
        force: bool,
    },
    /// Sent by the router's own `--peers-from-kube` task after it has handed
    /// over (as `connect`/`forget`) the seeds of a successful node listing:
    /// a router that waits for the node list before its first ring vote may
    /// go ahead. Result: `{}`.
    SeedsListed,
    /// Sent by the router's own `--peers-from-kube` Lease task: the
    /// routers whose Node was deleted and whose Lease expired (each call
    /// replaces the previous list). The router reclaims one of them when it
    /// is also unreachable and this router is the one to (lowest ID of the
    /// live owners, which are most of them). Result: `{}`.
    NodesGone {
        /// Router (and node) names.
        names: Vec<String>,
        /// The router ID (16 hex digits) each of those Leases names, when
        /// it names one: a router started after the topology forgot the
        /// dead router learns its name here.
        #[serde(default)]
        ids: Vec<(String, String)>,
    },
    /// The endpoints this router's Kubernetes Node gives it (its
    /// `ExternalIP`s and the `weft.dev/advertise` annotation, as
    /// `HOST:PORT`), advertised besides `--advertise`; each call replaces
    /// the previous list (`--peers-from-kube` sends it). Result: `{
    /// "advertised": [...] }`, what the router now advertises.
    Advertise {
        /// `HOST:PORT` each.
        addresses: Vec<String>,
    },
    /// Hands this router's ranges to live peers, then stops the router
    /// (`weft leave`, for a drained node): result [`Left`]. Refused while
    /// pods hold addresses here unless `force`.
    Leave {
        /// Leave even though pods still hold addresses here.
        #[serde(default)]
        force: bool,
    },
    /// Moves this router to a new static identity key without losing its
    /// name, ranges or pods' flows (`weft rotate-identity`, issue 20):
    /// the new key and its signed announcement are written, the ranges
    /// handed to the new ID, then the router restarts itself under the new
    /// key (the pods' traffic waits out the restart, as over an upgrade).
    /// Result: [`Rotated`].
    RotateIdentity,
}

/// A Kubernetes pod as kubelet names it to a CNI plugin in `CNI_ARGS`
/// (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`). The router checks
/// it (Kubernetes' lengths; letters, digits, `-`, `.`, `_`) and answers
/// `bad_request` otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_UID`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// Result of [`Request::Ready`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// True when an `allocate` can succeed now (ring known, not tombstoned).
    pub ready: bool,
    /// Why not, when not ready (one line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The overlay MTU pods must use.
    pub mtu: u32,
}

/// Result of [`Request::Allocate`] and [`Request::Lookup`]: what the CNI
/// plugin configures (DESIGN.md "The picture").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The pod's address, e.g. `10.32.0.5`; it goes on the interface as a /32.
    pub address: String,
    /// Prefix length for the interface address (32 for IPv4, 128 for IPv6).
    pub prefix_len: u8,
    /// The link-local gateway of the pod's default route (`169.254.1.1`).
    pub gateway: String,
    /// The overlay MTU.
    pub mtu: u32,
    /// The cluster range, e.g. `10.32.0.0/12`.
    pub range: String,
    /// The pod interface's IPv6 address, from the IPv6 ring under the same
    /// `(container_id, ifname)`, when the router has an IPv6 pod range
    /// (issue 19). Absent otherwise, and from older routers, so an IPv4
    /// plugin or router is unaffected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<PodAddress>,
}

/// One more address of a pod interface, of another family than
/// [`Allocation::address`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAddress {
    /// The address, e.g. `fd12:3456:789a::5`.
    pub address: String,
    /// Its prefix length on the interface (128).
    pub prefix_len: u8,
    /// The link-local gateway of the family's default route (`fe80::1`).
    pub gateway: String,
    /// The cluster range of the family.
    pub range: String,
}

/// Result of [`Request::Release`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The address freed.
    pub address: String,
}

/// Result of [`Request::List`] and [`Request::Gc`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationList {
    /// The allocations (listed or released).
    pub allocations: Vec<Allocation>,
}

/// Result of [`Request::Rmpeer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaimed {
    /// The reclaimed router's name (or hex ID).
    pub peer: String,
    /// How many addresses this router took over.
    pub addresses: u64,
}

/// Result of [`Request::RotateIdentity`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotated {
    /// The ID (hex) the router leaves.
    pub old: String,
    /// The ID (hex) it runs under after its restart.
    pub new: String,
}

/// Result of [`Request::Leave`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    /// How many addresses went to other routers.
    pub addresses: u64,
}

/// A reply line: `{"ok": true, "result": ...}` or `{"ok": false, "error": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Reply {
    /// A successful reply.
    pub fn ok(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A failed reply.
    pub fn err(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(ApiError {
                code,
                message: message.into(),
            }),
        }
    }
}

/// A failure the client can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// One line for a human.
    pub message: String,
}

/// Error kinds. The CNI plugin maps `not_ready` to CNI code 11 (try again
/// later), `bad_request` to 4 (invalid environment: a malformed container ID
/// or interface name), and the rest to 100-range plugin codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed.
    BadRequest,
    /// The request is refused as it stands (e.g. `rmpeer` of a live router,
    /// a ring conflict); the message says what to do.
    Refused,
    /// Not found.
    NotFound,
    /// The router cannot answer yet; try again later.
    NotReady,
    /// Anything else.
    Internal,
}

/// `weft status --json`: see DESIGN.md "Operator contract".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Router name.
    pub name: String,
    /// Router ID (hex).
    pub id: String,
    /// Short ID used in data headers.
    pub short_id: u16,
    /// Listen address.
    pub listen: String,
    /// Every endpoint this router advertises in its signed entry: the
    /// listen address, the operator's (`--advertise`, the Kubernetes
    /// Node's), and public ones its peers agree they see it from.
    #[serde(default)]
    pub advertised: Vec<String>,
    /// Known peers.
    pub peers: Vec<PeerStatus>,
    /// Control connections.
    pub connections: Vec<ConnectionStatus>,
    /// Address management.
    pub ipam: IpamStatus,
    /// The IPv6 pod range's address management, when dual-stack pods are
    /// configured (issue 19); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam6: Option<IpamStatus>,
    /// Data-plane counters.
    pub dataplane: DataplaneStatus,
    /// Handshake outcomes by result (`ok`, `refused`, `protocol`, ...).
    pub handshakes: BTreeMap<String, u64>,
    /// Completed rekeys over all peers.
    pub rekeys: u64,
    /// Gossip traffic by `channel/direction` (`topology/in`, `ring/out`, ...).
    #[serde(default)]
    pub gossip: BTreeMap<String, TrafficCount>,
    /// Address requests of the local API (the CNI plugin's) by `op/result`.
    #[serde(default)]
    pub api_requests: BTreeMap<String, u64>,
    /// How long those requests took inside the router (fsync included).
    #[serde(default)]
    pub api_latency: LatencyHistogram,
    /// The router's rules in the host's firewall (filled in by the daemon's
    /// `host_firewall` driver, not by the control task).
    #[serde(default)]
    pub firewall: FirewallStatus,
    /// Punching and relaying (issue 16): `punch_attempts`,
    /// `punch_successes`, `punch_failed/REASON`, `relay_forwarded`,
    /// the relay drop reasons `relay_*` (fixed sets).
    #[serde(default)]
    pub paths: BTreeMap<String, u64>,
}

/// The router's rules in the host's firewall (DESIGN.md "Egress and
/// forwarding"; issue 17).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallStatus {
    /// `applied`, or why `table ip weft` is not in place.
    pub nftables: String,
    /// How often the table or the FORWARD accept rules were found removed
    /// (a firewall reload, `nft flush ruleset`) and put back.
    pub reapplied: u64,
    /// The iptables backend the host uses: `nft`, `legacy` or `unknown`
    /// (empty when iptables is not installed).
    pub iptables: String,
    /// Where the pod range is accepted because FORWARD drops by policy, as
    /// `backend/chain` (e.g. `legacy/FORWARD`, `nft/DOCKER-USER`).
    #[serde(default)]
    pub forward_accept: Vec<String>,
}

/// Messages and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficCount {
    /// Messages.
    pub messages: u64,
    /// Bytes of payload.
    pub bytes: u64,
}

/// A latency histogram with fixed bounds, in seconds: `counts[i]` counts
/// observations in `(bounds[i-1], bounds[i]]`; the last count is above
/// every bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Upper bounds, ascending.
    pub bounds: Vec<f64>,
    /// Per-bucket counts (`bounds.len() + 1` of them).
    pub counts: Vec<u64>,
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        let bounds = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        Self {
            counts: vec![0; bounds.len() + 1],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&mut self, seconds: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(bucket) {
            *c += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// One peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Name.
    pub name: String,
    /// ID (hex).
    pub id: String,
    /// Advertised addresses.
    pub addresses: Vec<String>,
    /// Number of connections it has.
    pub connections: usize,
    /// Whether a path of established connections leads to it.
    pub reachable: bool,
    /// `direct`, `via NAME` or `unreachable`.
    pub path: String,
}

/// One connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// Peer name.
    pub peer: String,
    /// Peer address.
    pub address: String,
    /// `connecting|handshaking|established|failed`.
    pub state: String,
    /// TCP and UDP both work.
    pub established: bool,
    /// `outbound` or `inbound`.
    pub direction: String,
    /// Heartbeat round trip.
    pub rtt_ms: Option<f64>,
    /// `ok|blocked|unverified`.
    pub udp: String,
    /// `direct` or `via NAME`.
    pub path: String,
    /// Path MTU state.
    pub pmtu: String,
    /// Offload state of the data plane.
    pub offload: String,
    /// Rekeys completed on this connection.
    pub rekeys: u64,
    /// Last error, if `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The ID of the router a relayed control connection runs through
    /// (issue 16); absent for a direct one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_via: Option<String>,
    /// Where this peer's authenticated UDP last came from, which data to it
    /// goes to (followed when its NAT rebinds; issue 16); absent before any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_endpoint: Option<String>,
    /// For a dual-stack peer: the address family its data takes and why
    /// (`ipv6: rtt 0.4 ms vs ipv4 30.2 ms`); absent for a single-family one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

/// An inclusive address range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeStatus {
    /// First address.
    pub start: String,
    /// Last address.
    pub end: String,
}

/// Address management summary (DESIGN.md `ipam` object, plus what an
/// operator needs to act: the state, the conflict or wait, the ranges of
/// unreachable routers, and every address handed out here).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpamStatus {
    /// The cluster range.
    pub range: String,
    /// How the ring is initialised (`consensus`, `seed`, `observer`).
    pub mode: String,
    /// `ready`, `waiting_for_voters`, `waiting_for_ring`, `conflict` or `tombstoned`.
    pub state: String,
    /// What the state means here, in one line (who is awaited, the fix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The ring's genesis ID, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genesis: Option<String>,
    /// Ranges this router owns.
    pub owned_ranges: Vec<RangeStatus>,
    /// Addresses in them.
    pub owned_addresses: u64,
    /// Addresses handed out (the router's own included).
    pub allocated: u64,
    /// Addresses that can be handed out now (quarantined ones excluded).
    pub free: u64,
    /// Routers in the ring.
    pub ring_peers: usize,
    /// Share (0..=1) of the range owned by routers that are not reachable.
    #[serde(default)]
    pub unreachable_share: f64,
    /// Ranges owned by routers that are not reachable (`weft rmpeer` candidates).
    #[serde(default)]
    pub unreachable_ranges: Vec<OwnerRange>,
    /// Every address this router has handed out.
    #[serde(default)]
    pub allocations: Vec<AddressHolder>,
    /// Every member's version jumps over another router's range need a
    /// signed title, whatever ring version its connection negotiated (the
    /// ring's latch is set); false in a ring a build before titles
    /// initialised.
    #[serde(default)]
    pub titles_required: bool,
    /// While titles are not required: the range owners not seen speaking
    /// them (names, or hex IDs), neither this router nor a neighbour whose
    /// connection negotiated titles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub titles_waiting_for: Vec<String>,
}

/// A range and the router that owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRange {
    /// The owner's name, or its hex ID when the name is not known.
    pub owner: String,
    /// First address.
    pub start: String,
    /// Last address.
    pub end: String,
}

/// An address handed out and who holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressHolder {
    /// The address.
    pub address: String,
    /// `node` (the router's own), `pod`, or `held` (found in the kernel at
    /// start, holder unknown; freed by the pod's CNI DEL).
    pub kind: String,
    /// The pod's container ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The pod's interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// The pod, when the plugin named it (kubelet's `CNI_ARGS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

/// Data-plane summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataplaneStatus {
    /// Overlay MTU.
    pub mtu: u32,
    /// Offload path in use.
    pub offload: String,
    /// Worker threads (= lanes).
    pub workers: usize,
    /// IPv4 forwarding on the interfaces the data path needs: `on (weft0,
    /// eth0, N pod interfaces)`, or `off (IFACE: why)` (src/forwarding.rs).
    #[serde(default)]
    pub forwarding: String,
    /// The node's IPv6 forwarding when pods have IPv6 addresses: `on`, or
    /// `off (why)`; empty without an IPv6 pod range.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub forwarding6: String,
    /// Present while this router keeps weft0 and its pods at IPv6's
    /// minimum MTU although routers announce less (issue 19; the cluster
    /// minimum `mtu` then applies to IPv4 only); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_mtu_floor: Option<Ipv6MtuFloor>,
    /// The underlay families and where the MTU came from: `ipv6, mtu 1420 =
    /// underlay interface MTU 1500 - 80` (issue 19; the 80 counts the
    /// outer header as IPv6's 40 whatever the family, DESIGN.md "MTU").
    #[serde(default)]
    pub underlay: String,
    /// Counters.
    #[serde(flatten)]
    pub totals: DataplaneTotals,
}

/// Why weft0 and the pods stay above the cluster MTU (`dataplane.ipv6_mtu_floor`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6MtuFloor {
    /// weft0's MTU and the MTU new pods get (IPv6's minimum, 1280).
    pub mtu: u32,
    /// The routers announcing less, smallest MTU first.
    pub peers: Vec<PeerMtu>,
    /// One line saying what that means.
    pub summary: String,
}

/// A router's announced MTU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMtu {
    /// The router's name.
    pub name: String,
    /// The MTU it announces.
    pub mtu: u32,
}

/// The data-plane counters summed over all workers (and the control task's
/// own heartbeat socket) at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneTotals {
    /// Packets received from peers and written to the TUN (or relayed).
    pub packets_in: u64,
    /// Packets read from the TUN and sent to peers (or relayed).
    pub packets_out: u64,
    /// Inner bytes of `packets_in`.
    pub bytes_in: u64,
    /// Inner bytes of `packets_out`.
    pub bytes_out: u64,
    /// The IPv6 share of `packets_in` (IPv4 is the rest).
    #[serde(default)]
    pub packets_in6: u64,
    /// The IPv6 share of `packets_out`.
    #[serde(default)]
    pub packets_out6: u64,
    /// The IPv6 share of `bytes_in`.
    #[serde(default)]
    pub bytes_in6: u64,
    /// The IPv6 share of `bytes_out`.
    #[serde(default)]
    pub bytes_out6: u64,
    /// Packets relayed for other routers.
    pub forwarded: u64,
    /// ICMP "fragmentation needed" replies written to the TUN for packets
    /// over the overlay MTU.
    #[serde(default)]
    pub too_big_replies: u64,
    /// Workers now in the real-time class.
    #[serde(default)]
    pub realtime_workers: u64,
    /// Times a worker left the real-time class after working too long
    /// without a break (a saturated data plane).
    #[serde(default)]
    pub busy_step_downs: u64,
    /// Endpoint and keyset reports from the workers dropped because the
    /// control task's queue was full.
    #[serde(default)]
    pub events_dropped: u64,
    /// Inner TCP/IPv4 segments written to the TUN merged into
    /// super-packets (receive coalescing).
    #[serde(default)]
    pub coalesced_v4: u64,
    /// Inner TCP/IPv6 segments written to the TUN merged into
    /// super-packets.
    #[serde(default)]
    pub coalesced_v6: u64,
    /// Drops by reason label; reasons never seen are omitted.
    pub dropped: BTreeMap<String, u64>,
    /// The share of `dropped` whose inner packet was IPv4, by reason: drops
    /// of a packet the router read (from the TUN, or opened from a peer).
    /// What could not be read (a bad tag, a replay, a failed batch send)
    /// has no family and is only in `dropped`.
    #[serde(default)]
    pub dropped4: BTreeMap<String, u64>,
    /// The share of `dropped` whose inner packet was IPv6, by reason.
    #[serde(default)]
    pub dropped6: BTreeMap<String, u64>,
}
