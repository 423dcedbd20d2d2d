//! The control task's answers to local API calls (`weft status`, `connect`,
//! `forget`, and the IPAM requests it hands to the IPAM driver): glue
//! between the API server's requests and the cores, no state of its own.

use super::mtu::OverlayMtu;
use super::{Control, LEAVE_GRACE, ipam, status};
use crate::api::proto::{
    DataplaneStatus, ErrorCode, Ipv6MtuFloor, PeerMtu, Reply, Request, Status,
};
use crate::id::PeerId;
use std::net::SocketAddr;
use std::time::Instant;

impl Control {
    /// Answers one API request.
    pub(super) fn handle_api(&mut self, request: Request) -> Reply {
        let now = Instant::now();
        // Pods get weft0's MTU: never under IPv6's minimum with an IPv6 range.
        let mtu = self.overlay_mtu().link;
        let gossip = &self.gossip;
        if let Some(mut reply) =
            self.ipam
                .handle_api(&request, mtu, |name| gossip.name_holder(name), now)
        {
            // A pod's requests go to both rings under one key and get one
            // answer (`ipam::dual`).
            if let Some(ipam6) = self.ipam6.as_mut()
                && ipam::dual::per_pod(&request)
                && let Some(v6) =
                    ipam6.handle_api(&request, mtu, |name| gossip.name_holder(name), now)
            {
                reply = ipam::dual::join(&request, reply, v6);
            }
            // The IPv6 ring follows the ring-wide requests (voters listed,
            // Nodes gone, rmpeer, leave) once the IPv4 ring took them, so a
            // refused leave leaves both rings as they were; the answer is
            // the IPv4 ring's.
            if let Some(ipam6) = self.ipam6.as_mut()
                && ring_wide(&request)
                && reply.error.is_none()
                && let Some(refused) =
                    ipam6.handle_api(&request, mtu, |name| gossip.name_holder(name), now)
                && let Some(error) = refused.error
            {
                tracing::warn!(error = %error.message, "the IPv6 ring refused a request the IPv4 ring took");
            }
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
            Request::Connect { address, also } => {
                let also: Option<Result<Vec<SocketAddr>, _>> =
                    also.map(|also| also.iter().map(|a| a.parse::<SocketAddr>()).collect());
                match (address.parse::<SocketAddr>(), also) {
                    (Ok(addr), None) => {
                        self.add_seed(addr, None, now);
                        Reply::ok(serde_json::json!({ "seeds": self.seed_strings() }))
                    }
                    (Ok(addr), Some(Ok(also))) => {
                        self.add_seed(addr, Some(also), now);
                        Reply::ok(serde_json::json!({ "seeds": self.seed_strings() }))
                    }
                    (Ok(_), Some(Err(_))) => Reply::err(
                        ErrorCode::BadRequest,
                        "the other addresses of a seed are not all HOST:PORT (e.g. 203.0.113.10:6783)",
                    ),
                    (Err(_), _) => Reply::err(
                        ErrorCode::BadRequest,
                        format!("{address:?} is not HOST:PORT (e.g. 192.0.2.10:6783)"),
                    ),
                }
            }
            Request::Forget { address } => match address.parse::<SocketAddr>() {
                Ok(addr) => {
                    self.config.seeds.retain(|s| *s != addr);
                    self.seed_also.remove(&addr);
                    self.maker.forget(addr);
                    Reply::ok(serde_json::json!({ "seeds": self.seed_strings() }))
                }
                Err(_) => Reply::err(
                    ErrorCode::BadRequest,
                    format!("{address:?} is not HOST:PORT (e.g. 192.0.2.10:6783)"),
                ),
            },
            Request::Advertise { addresses } => {
                let parsed: Result<Vec<SocketAddr>, _> =
                    addresses.iter().map(|a| a.parse::<SocketAddr>()).collect();
                match parsed {
                    Ok(parsed) => {
                        self.endpoints.set_from_kube(parsed);
                        self.drain_endpoint_events(now);
                        let advertised: Vec<String> = self
                            .endpoints
                            .advertised()
                            .iter()
                            .map(ToString::to_string)
                            .collect();
                        Reply::ok(serde_json::json!({ "advertised": advertised }))
                    }
                    Err(_) => Reply::err(
                        ErrorCode::BadRequest,
                        format!("{addresses:?} are not all HOST:PORT (e.g. 203.0.113.10:6783)"),
                    ),
                }
            }
            Request::RotateIdentity => self.rotate_identity(now),
            _ => Reply::err(ErrorCode::BadRequest, "unknown request"),
        }
    }

    /// Where `id` is on the topology's shortest paths, and why not direct.
    fn path_to(&self, id: PeerId, now: Instant) -> status::Path {
        let direct = || {
            self.peers.get(id).map(|p| match p.relayed_via {
                Some(_) => status::Path::Punched,
                None => status::Path::direct_to(p),
            })
        };
        match self.gossip.routes().route(id) {
            Some(route) if route.next_hop == id => {
                direct().unwrap_or(status::Path::Direct { public: false })
            }
            Some(route) => status::Path::Via {
                name: self
                    .gossip
                    .entry(route.next_hop)
                    .map_or_else(|| route.next_hop.to_string(), |e| e.name.clone()),
                reason: self.why_not_direct(id, now),
            },
            None => direct().unwrap_or(status::Path::Unreachable),
        }
    }

    /// Why a router reached through another has no direct path: its link
    /// is not established (UDP or path MTU), or no dial of its endpoints
    /// has worked (the last error), or none was tried.
    fn why_not_direct(&self, id: PeerId, now: Instant) -> String {
        if let Some(reason) = self.punch_failure(id) {
            return reason.into();
        }
        if self.peers.contains(id) {
            return match self.heartbeats.status(id, now) {
                Some(l) if l.udp == super::heartbeat::UdpState::Blocked => "udp blocked".into(),
                Some(l) if l.pmtu == super::heartbeat::PmtuState::TooSmall => {
                    "pmtu too small".into()
                }
                _ => "udp not verified yet".into(),
            };
        }
        let endpoints = self
            .gossip
            .entry(id)
            .map(|e| e.addresses.clone())
            .unwrap_or_default();
        if let Some(error) = endpoints.iter().find_map(|a| self.dial_errors.get(a)) {
            return format!("dial failed: {error}");
        }
        if endpoints
            .iter()
            .any(|a| self.dialing.values().any(|d| d == a))
        {
            return "dialling".into();
        }
        "no direct connection".into()
    }

    /// A seed from `weft connect` or the Node list: one voter slot named
    /// `addr`; `also`, when given, replaces the other addresses its router
    /// is dialled at and known by (`Directory::id_at`).
    fn add_seed(&mut self, addr: SocketAddr, also: Option<Vec<SocketAddr>>, now: Instant) {
        if !self.config.seeds.contains(&addr) {
            self.config.seeds.push(addr);
        }
        match also {
            None => self.maker.add_seed(addr, now),
            Some(also) => {
                self.maker.add_seed_with(addr, &also, now);
                if also.is_empty() {
                    self.seed_also.remove(&addr);
                } else {
                    self.seed_also.insert(addr, also);
                }
            }
        }
    }

    fn seed_strings(&self) -> Vec<String> {
        self.config.seeds.iter().map(ToString::to_string).collect()
    }

    /// The status object of DESIGN.md "Operator contract".
    pub fn status(&self, now: Instant) -> Status {
        let mut dials: Vec<status::Dial> = self
            .dialing
            .values()
            .map(|a| status::Dial {
                address: *a,
                in_flight: true,
                error: None,
            })
            .collect();
        dials.extend(self.dial_errors.iter().map(|(a, e)| status::Dial {
            address: *a,
            in_flight: false,
            error: Some(e.clone()),
        }));
        let routes = self.gossip.routes();
        let known = self
            .gossip
            .peers()
            .filter(|e| e.id != self.me)
            .map(|e| status::KnownRouter {
                name: e.name.clone(),
                id: e.id,
                addresses: e.addresses.clone(),
                connections: e.connections.len(),
                reachable: routes.route(e.id).is_some() || self.peers.contains(e.id),
                path: self.path_to(e.id, now),
            })
            .collect();
        let reachable = self.reachable_peers();
        let overlay_mtu = self.overlay_mtu();
        let links = |id| self.heartbeats.status(id, now);
        let path_to = |id| self.path_to(id, now);
        let mut report = status::report(status::Parts {
            name: &self.config.name,
            id: self.me,
            short: self.short,
            listen: self.config.listen,
            advertised: self.endpoints.advertised(),
            peers: &self.peers,
            links: &links,
            path_to: &path_to,
            dials,
            self_addresses: &self.self_addresses,
            known,
            ipam: self.ipam.status(|id| reachable.contains(&id), now),
            ipam6: self
                .ipam6
                .as_ref()
                .map(|ipam6| ipam6.status(|id| reachable.contains(&id), now)),
            dataplane: DataplaneStatus {
                mtu: overlay_mtu.cluster,
                ipv6_mtu_floor: ipv6_mtu_floor(&overlay_mtu),
                offload: self.dataplane.offload(),
                workers: self.dataplane.lanes(),
                totals: self.dataplane.totals(),
                forwarding: self.config.forwarding.borrow().summary(),
                forwarding6: self
                    .config
                    .forwarding
                    .borrow()
                    .ipv6_summary()
                    .unwrap_or_default(),
                underlay: format!(
                    "{}, announced mtu {} = {}",
                    self.config.families.label(),
                    self.config.mtu,
                    self.config.mtu_source
                ),
            },
            handshakes: self.handshakes.clone(),
            gossip: self.gossip_traffic.clone(),
            api_requests: self.ipam.counters().0.clone(),
            api_latency: self.api_latency.clone(),
        });
        report.paths = self.path_counters();
        for c in &mut report.connections {
            let peer = self.peers.iter().find(|p| p.hello.name == c.peer);
            c.family = peer.and_then(|p| self.family_choice.describe(p.id));
        }
        report
    }
}

/// `dataplane.ipv6_mtu_floor`: present while weft0 stays at IPv6's
/// minimum over routers announcing less.
fn ipv6_mtu_floor(mtu: &OverlayMtu) -> Option<Ipv6MtuFloor> {
    Some(Ipv6MtuFloor {
        mtu: mtu.link,
        peers: mtu
            .below_ipv6
            .iter()
            .map(|p| PeerMtu {
                name: p.name.clone(),
                mtu: p.mtu,
            })
            .collect(),
        summary: mtu.floor_summary()?,
    })
}

/// Requests about the whole ring rather than one pod's address.
fn ring_wide(request: &Request) -> bool {
    matches!(
        request,
        Request::SeedsListed
            | Request::NodesGone { .. }
            | Request::Rmpeer { .. }
            | Request::Leave { .. }
    )
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
            | Request::NodesGone { .. }
    )
}
