//! The status report of DESIGN.md "Operator contract", built from what each
//! core reports about itself: the peer registry's records, the heartbeat
//! core's [`LinkStatus`], the dials in flight, the topology's routes, IPAM's
//! and the data plane's own status.
//!
//! Owns the report's vocabulary (`established|handshaking|connecting|failed`,
//! `ok|blocked|unverified`, `pmtu too small`, the path kinds) and
//! nothing else: pure functions, no state.

use super::heartbeat::{LinkStatus, PmtuState, UdpState};
use super::peers::{Peer, Peers};
use crate::api::proto::{
    ConnectionStatus, DataplaneStatus, IpamStatus, LatencyHistogram, PeerStatus, Status,
    TrafficCount,
};
use crate::id::{PeerId, ShortId};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

/// Where a router is on the topology's shortest paths, with the path kinds
/// of DESIGN.md "Endpoints, NAT and paths".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// A direct neighbour (by route, or connected while no route exists):
    /// `public` when its packets reach us from another address than the
    /// one it listens on (through NAT).
    Direct {
        /// Through an address other than its listen address.
        public: bool,
    },
    /// Direct over a hole punched through both NATs (`super::punch`), its
    /// control still relayed end to end.
    Punched,
    /// Through the neighbour named, and why not direct.
    Via {
        /// The next hop's name.
        name: String,
        /// Why there is no direct path.
        reason: String,
    },
    /// No path.
    Unreachable,
}

impl Path {
    /// `direct (private)`, `direct (public)`, `punched`, `relayed via NAME
    /// (reason)` or `unreachable`.
    pub fn label(&self) -> String {
        match self {
            Self::Direct { public: false } => "direct (private)".into(),
            Self::Direct { public: true } => "direct (public)".into(),
            Self::Punched => "punched".into(),
            Self::Via { name, reason } => format!("relayed via {name} ({reason})"),
            Self::Unreachable => "unreachable".into(),
        }
    }

    /// The kind of a direct path to `peer`: private when its UDP (or, before
    /// any, its connection) comes from the address it listens on.
    pub fn direct_to(peer: &Peer) -> Self {
        let seen = peer.endpoint.unwrap_or(peer.remote);
        Self::Direct {
            public: seen.ip() != peer.hello.listen.ip(),
        }
    }
}

/// A dial this router made that has not (yet) become a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dial {
    /// Where to.
    pub address: SocketAddr,
    /// Still in progress.
    pub in_flight: bool,
    /// The last failure, if any.
    pub error: Option<String>,
}

/// A router the topology knows of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownRouter {
    /// Its name.
    pub name: String,
    /// Its ID.
    pub id: PeerId,
    /// Where it says it listens.
    pub addresses: Vec<SocketAddr>,
    /// Connections its entry lists.
    pub connections: usize,
    /// Whether a path of established connections (or a direct one) leads there.
    pub reachable: bool,
    /// Where it is.
    pub path: Path,
}

/// Everything the report is made of.
pub struct Parts<'a> {
    /// This router's name.
    pub name: &'a str,
    /// Its ID.
    pub id: PeerId,
    /// Its short ID.
    pub short: ShortId,
    /// Its advertised listen address.
    pub listen: SocketAddr,
    /// Every endpoint it advertises (`Endpoints::advertised`).
    pub advertised: &'a [SocketAddr],
    /// The peer registry.
    pub peers: &'a Peers,
    /// The heartbeat core's view of each peer's link.
    pub links: &'a dyn Fn(PeerId) -> Option<LinkStatus>,
    /// Where each peer is.
    pub path_to: &'a dyn Fn(PeerId) -> Path,
    /// Dials not (yet) turned into peers.
    pub dials: Vec<Dial>,
    /// Addresses that turned out to be this router.
    pub self_addresses: &'a HashSet<SocketAddr>,
    /// Routers the topology knows, this one excluded.
    pub known: Vec<KnownRouter>,
    /// IPAM's own status.
    pub ipam: IpamStatus,
    /// The IPv6 pod range's ring, when configured.
    pub ipam6: Option<IpamStatus>,
    /// The data plane's own status.
    pub dataplane: DataplaneStatus,
    /// Handshake outcomes by label.
    pub handshakes: BTreeMap<String, u64>,
    /// Gossip traffic by `channel/direction`.
    pub gossip: BTreeMap<String, TrafficCount>,
    /// Local API requests by `op/result`.
    pub api_requests: BTreeMap<String, u64>,
    /// Their latency.
    pub api_latency: LatencyHistogram,
}

/// The whole report.
pub fn report(parts: Parts<'_>) -> Status {
    let offload = parts.dataplane.offload.clone();
    let mut connections: Vec<ConnectionStatus> = parts
        .peers
        .iter()
        .map(|p| connection(p, (parts.links)(p.id), &(parts.path_to)(p.id), &offload))
        .collect();
    let mut dials = parts.dials;
    dials.sort_by_key(|d| d.address);
    dials.dedup_by(|later, first| {
        // One line per address: in flight wins over an old failure.
        if later.address == first.address {
            first.in_flight |= later.in_flight;
            first.error = first.error.take().or(later.error.take());
            true
        } else {
            false
        }
    });
    for dial in dials {
        let connected = parts.peers.at_address(dial.address).is_some();
        if connected || parts.self_addresses.contains(&dial.address) {
            continue;
        }
        connections.push(pending(&dial, &offload));
    }
    connections.sort_by(|a, b| (&a.peer, &a.address).cmp(&(&b.peer, &b.address)));
    let mut peers: Vec<PeerStatus> = parts
        .known
        .into_iter()
        .map(|k| PeerStatus {
            name: k.name,
            id: k.id.to_string(),
            addresses: k.addresses.iter().map(ToString::to_string).collect(),
            connections: k.connections,
            reachable: k.reachable,
            path: k.path.label(),
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    Status {
        name: parts.name.to_string(),
        id: parts.id.to_string(),
        short_id: parts.short.0,
        listen: parts.listen.to_string(),
        advertised: parts.advertised.iter().map(ToString::to_string).collect(),
        peers,
        connections,
        ipam: parts.ipam,
        ipam6: parts.ipam6,
        dataplane: parts.dataplane,
        handshakes: parts.handshakes,
        rekeys: parts.peers.rekeys(),
        gossip: parts.gossip,
        api_requests: parts.api_requests,
        api_latency: parts.api_latency,
        // Filled in by the daemon's host_firewall driver on the way out.
        firewall: Default::default(),
        // Filled in by the control task (`Control::path_counters`).
        paths: BTreeMap::new(),
    }
}

/// One connected peer's line.
pub fn connection(
    peer: &Peer,
    link: Option<LinkStatus>,
    path: &Path,
    offload: &str,
) -> ConnectionStatus {
    let established = link.is_some_and(|l| l.established);
    ConnectionStatus {
        peer: peer.hello.name.clone(),
        address: peer.remote.to_string(),
        state: if established {
            "established"
        } else {
            "handshaking"
        }
        .into(),
        established,
        direction: if peer.outbound { "outbound" } else { "inbound" }.into(),
        rtt_ms: link.and_then(|l| l.rtt).map(|d| d.as_secs_f64() * 1000.0),
        udp: match link.map_or(UdpState::Unverified, |l| l.udp) {
            UdpState::Ok => "ok",
            UdpState::Blocked => "blocked",
            UdpState::Unverified => "unverified",
        }
        .into(),
        path: path.label(),
        pmtu: match link.map_or(PmtuState::Unverified, |l| l.pmtu) {
            PmtuState::Ok => "ok",
            PmtuState::TooSmall => "pmtu too small",
            PmtuState::Unverified => "unverified",
        }
        .into(),
        offload: offload.into(),
        rekeys: peer.keys.rekeys(),
        error: None,
        control_via: peer.relayed_via.map(|v| v.to_string()),
        udp_endpoint: peer.endpoint.map(|e| e.to_string()),
        // Filled in by the control task (`FamilyChoice::describe`).
        family: None,
    }
}

/// A dial's line: `connecting`, or `failed` with its error once no attempt
/// is in flight.
pub fn pending(dial: &Dial, offload: &str) -> ConnectionStatus {
    ConnectionStatus {
        peer: String::new(),
        address: dial.address.to_string(),
        state: if dial.error.is_some() && !dial.in_flight {
            "failed"
        } else {
            "connecting"
        }
        .into(),
        established: false,
        direction: "outbound".into(),
        rtt_ms: None,
        udp: "unverified".into(),
        path: "unreachable".into(),
        pmtu: "unverified".into(),
        offload: offload.into(),
        rekeys: 0,
        error: dial.error.clone(),
        control_via: None,
        udp_endpoint: None,
        family: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::control::peers::tests_support::arrival;
    use std::time::{Duration, Instant};

    fn link(established: bool, udp: UdpState, pmtu: PmtuState) -> LinkStatus {
        LinkStatus {
            established,
            rtt: Some(Duration::from_micros(1500)),
            udp,
            pmtu,
        }
    }

    fn one_peer() -> Peers {
        let mut peers = Peers::new(PeerId(1), Duration::from_secs(120));
        peers.handle_up(arrival(PeerId(2), 1, true, 7), Instant::now());
        peers
    }

    #[test]
    fn an_established_link_reads_established_ok_ok() {
        let peers = one_peer();
        let c = connection(
            peers.get(PeerId(2)).unwrap(),
            Some(link(true, UdpState::Ok, PmtuState::Ok)),
            &Path::Direct { public: false },
            "gso",
        );
        assert_eq!(
            (c.state.as_str(), c.udp.as_str(), c.pmtu.as_str()),
            ("established", "ok", "ok")
        );
        assert_eq!(c.direction, "outbound");
        assert_eq!(c.path, "direct (private)");
        assert_eq!(c.rtt_ms, Some(1.5));
    }

    #[test]
    fn a_path_dropping_full_size_packets_reads_pmtu_too_small() {
        let peers = one_peer();
        let c = connection(
            peers.get(PeerId(2)).unwrap(),
            Some(link(false, UdpState::Ok, PmtuState::TooSmall)),
            &Path::Via {
                name: "n3".into(),
                reason: "pmtu too small".into(),
            },
            "gso",
        );
        assert_eq!(
            (
                c.state.as_str(),
                c.udp.as_str(),
                c.pmtu.as_str(),
                c.path.as_str()
            ),
            (
                "handshaking",
                "ok",
                "pmtu too small",
                "relayed via n3 (pmtu too small)"
            )
        );
    }

    #[test]
    fn a_failed_dial_reads_failed_with_its_error_and_an_active_one_connecting() {
        let addr = SocketAddr::from(([192, 0, 2, 9], 6783));
        let failed = pending(
            &Dial {
                address: addr,
                in_flight: false,
                error: Some("Unreachable".into()),
            },
            "gso",
        );
        assert_eq!(failed.state, "failed");
        assert_eq!(failed.error.as_deref(), Some("Unreachable"));
        let retrying = pending(
            &Dial {
                address: addr,
                in_flight: true,
                error: Some("Unreachable".into()),
            },
            "gso",
        );
        assert_eq!(retrying.state, "connecting");
    }

    #[test]
    fn path_labels_are_the_operator_contract_strings() {
        assert_eq!(Path::Direct { public: false }.label(), "direct (private)");
        assert_eq!(Path::Direct { public: true }.label(), "direct (public)");
        assert_eq!(Path::Punched.label(), "punched");
        let via = Path::Via {
            name: "n1".into(),
            reason: "no direct connection".into(),
        };
        assert_eq!(via.label(), "relayed via n1 (no direct connection)");
        assert_eq!(Path::Unreachable.label(), "unreachable");
    }
}
