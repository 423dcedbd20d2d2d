//! The local API's request and reply types, shared by the router, `weft
//! status` and the CNI plugin. One JSON object per line over the unix socket
//! (`/run/weft/weft.sock`, mode 0600): the client writes a request line, the
//! router answers with one reply line and closes. Documented in the README.

use crate::router::stats::DataplaneTotals;
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
    },
    /// Remove a seed address at run time.
    Forget {
        /// `HOST:PORT`.
        address: String,
    },
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

/// Error kinds (the CNI plugin maps `NotReady` to CNI code 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed.
    BadRequest,
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
    /// Known peers.
    pub peers: Vec<PeerStatus>,
    /// Control connections.
    pub connections: Vec<ConnectionStatus>,
    /// Address management.
    pub ipam: IpamStatus,
    /// Data-plane counters.
    pub dataplane: DataplaneStatus,
    /// Handshake outcomes by result (`ok`, `refused`, `protocol`, ...).
    pub handshakes: BTreeMap<String, u64>,
    /// Completed rekeys over all peers.
    pub rekeys: u64,
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
}

/// An inclusive address range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeStatus {
    /// First address.
    pub start: String,
    /// Last address.
    pub end: String,
}

/// Address management summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpamStatus {
    /// The cluster range.
    pub range: String,
    /// Ranges this router owns.
    pub owned_ranges: Vec<RangeStatus>,
    /// Addresses in them.
    pub owned_addresses: u64,
    /// Addresses handed out (the router's own included).
    pub allocated: u64,
    /// Owned minus allocated.
    pub free: u64,
    /// Routers in the ring.
    pub ring_peers: usize,
    /// How the ring was initialised.
    pub mode: String,
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
    /// Counters.
    #[serde(flatten)]
    pub totals: DataplaneTotals,
}
