//! The pure half of `--peers-from-kube`: a `v1.NodeList` in, seed
//! addresses out, and the changes between two listings. No I/O, so it is
//! tested against recorded API responses (tests/data/).
//!
//! NotReady nodes are kept: weft is the CNI, so a new node stays NotReady
//! until its router runs. Dropping them would be a bootstrapping deadlock.
//!
//! A node's endpoints beyond its InternalIP (DESIGN.md "Endpoints, NAT and
//! paths"; issue 16): its `ExternalIP` addresses and the annotation
//! [`ADVERTISE_ANNOTATION`] (`weft.dev/advertise`: comma-separated `IP` or
//! `IP:PORT`, for an address Kubernetes does not know, such as a 1:1 NAT's
//! public one). [`KubeNode::endpoints`] gives them with the router's port.
//!
//! Where others dial a node: every one of its addresses is a candidate
//! ([`KubeNode::candidates`]: the annotated ones, the InternalIPs, the
//! ExternalIPs), handed over as one seed named by the first, with the
//! others beside it. The router tries them most-alike first (a node of
//! its own site at its InternalIP, one in another site, whose InternalIP
//! it cannot reach, at its ExternalIP next) and counts the node as one
//! voter whichever answered. No annotation is needed for that.

use super::KubeError;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// One Node as far as seeding goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeNode {
    /// `metadata.name`.
    pub name: String,
    /// Whether the `Ready` condition is `True` (reported, not used to filter).
    pub ready: bool,
    /// `InternalIP` addresses, in the order listed.
    pub internal: Vec<IpAddr>,
    /// `ExternalIP` addresses, in the order listed.
    pub external: Vec<IpAddr>,
    /// The [`ADVERTISE_ANNOTATION`] entries that parse (`IP` or `IP:PORT`;
    /// no port: the router's own).
    pub advertise: Vec<(IpAddr, Option<u16>)>,
}

/// The Node annotation listing extra endpoints of the router on that node.
pub const ADVERTISE_ANNOTATION: &str = "weft.dev/advertise";

/// Most annotation entries read (a router advertises a handful of endpoints).
const MAX_ADVERTISED: usize = 8;

/// Parses the annotation's value: entries that are neither `IP` nor
/// `IP:PORT` (a name, a typo, port 0) are skipped.
fn parse_advertise(value: &str) -> Vec<(IpAddr, Option<u16>)> {
    value
        .split(',')
        .map(str::trim)
        .filter_map(|entry| {
            if let Ok(ip) = entry.parse::<IpAddr>() {
                return Some((ip, None));
            }
            let addr = entry.parse::<SocketAddr>().ok()?;
            (addr.port() != 0).then_some((addr.ip(), Some(addr.port())))
        })
        .take(MAX_ADVERTISED)
        .collect()
}

impl KubeNode {
    /// The addresses the router on this node may be dialled at, of the
    /// wanted family: the annotated endpoints (with their port, else
    /// `port`), then the InternalIPs, then the ExternalIPs (with `port`),
    /// each once. The first names the node's seed: the annotation's first
    /// entry when there is one (the operator says so), else its
    /// InternalIP. Empty when the node has none.
    pub fn candidates(&self, port: u16, ipv4: bool) -> Vec<SocketAddr> {
        let annotated = self
            .advertise
            .iter()
            .map(|(ip, p)| SocketAddr::new(*ip, p.unwrap_or(port)));
        let listed = self
            .internal
            .iter()
            .chain(&self.external)
            .map(|ip| SocketAddr::new(*ip, port));
        let mut out: Vec<SocketAddr> = Vec::new();
        for addr in annotated.chain(listed) {
            if addr.is_ipv4() == ipv4 && !out.contains(&addr) {
                out.push(addr);
            }
        }
        out
    }

    /// Where the router on this node can be reached besides its listen
    /// address, for it to advertise: the annotated endpoints, then the
    /// ExternalIPs, each of the wanted family, with `port` unless given.
    pub fn endpoints(&self, port: u16, ipv4: bool) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        let annotated = self
            .advertise
            .iter()
            .map(|(ip, p)| SocketAddr::new(*ip, p.unwrap_or(port)));
        let external = self.external.iter().map(|ip| SocketAddr::new(*ip, port));
        for addr in annotated.chain(external) {
            if addr.is_ipv4() == ipv4 && !out.contains(&addr) {
                out.push(addr);
            }
        }
        out
    }
}

/// One page of a node list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePage {
    /// The nodes on this page.
    pub nodes: Vec<KubeNode>,
    /// The `continue` token for the next page, if any.
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct RawList {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: RawListMeta,
    #[serde(default)]
    items: Option<Vec<RawNode>>,
}

#[derive(Deserialize, Default)]
struct RawListMeta {
    #[serde(default, rename = "continue")]
    next: Option<String>,
}

#[derive(Deserialize)]
struct RawNode {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    status: RawStatus,
}

#[derive(Deserialize, Default)]
struct RawMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct RawStatus {
    #[serde(default)]
    addresses: Vec<RawAddress>,
    #[serde(default)]
    conditions: Vec<RawCondition>,
}

#[derive(Deserialize)]
struct RawAddress {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
struct RawCondition {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    status: String,
}

/// Parses the body of `GET /api/v1/nodes` (a `v1.NodeList`). Addresses that
/// are not IP literals (a `Hostname` entry, a typo) are skipped; a body that
/// is not a NodeList is an error.
pub fn parse_node_list(body: &[u8]) -> Result<NodePage, KubeError> {
    let raw: RawList =
        serde_json::from_slice(body).map_err(|e| KubeError::BadList(e.to_string()))?;
    if let Some(kind) = raw.kind.as_deref()
        && kind != "NodeList"
    {
        return Err(KubeError::BadList(format!("kind {kind:?}")));
    }
    let Some(items) = raw.items else {
        return Err(KubeError::BadList("no items".into()));
    };
    let nodes = items
        .into_iter()
        .map(|node| {
            let of_kind = |kind: &str| {
                node.status
                    .addresses
                    .iter()
                    .filter(|a| a.kind == kind)
                    .filter_map(|a| a.address.trim().parse::<IpAddr>().ok())
                    .collect::<Vec<_>>()
            };
            KubeNode {
                internal: of_kind("InternalIP"),
                external: of_kind("ExternalIP"),
                advertise: node
                    .metadata
                    .annotations
                    .get(ADVERTISE_ANNOTATION)
                    .map(|v| parse_advertise(v))
                    .unwrap_or_default(),
                ready: node
                    .status
                    .conditions
                    .iter()
                    .any(|c| c.kind == "Ready" && c.status == "True"),
                name: node.metadata.name,
            }
        })
        .collect();
    Ok(NodePage {
        nodes,
        next: raw.metadata.next.filter(|c| !c.is_empty()),
    })
}

/// Each node's [`KubeNode::candidates`], for the nodes that have some.
pub fn seeds_from_nodes(nodes: &[KubeNode], port: u16, ipv4: bool) -> Vec<Vec<SocketAddr>> {
    nodes
        .iter()
        .map(|n| n.candidates(port, ipv4))
        .filter(|c| !c.is_empty())
        .collect()
}

/// One node's seed: the address it is named by (its voter slot, what
/// `Forget` names) and the other addresses of its router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    /// The seed.
    pub address: SocketAddr,
    /// The other candidates (`Request::Connect`'s `also`).
    pub also: Vec<SocketAddr>,
}

/// What to tell the control task after a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedDiff {
    /// New seeds, and seeds whose other addresses changed
    /// (`Request::Connect`).
    pub add: Vec<Seed>,
    /// Seeds of nodes that are gone (`Request::Forget`).
    pub remove: Vec<SocketAddr>,
}

/// The seeds this task has given the control task, so that a listing turns
/// into the changes only. Static `--peer` seeds are never forgotten.
#[derive(Clone, Debug, Default)]
pub struct KubeSeeds {
    /// Seed → its other addresses.
    given: BTreeMap<SocketAddr, Vec<SocketAddr>>,
    fixed: BTreeSet<SocketAddr>,
    own: BTreeSet<SocketAddr>,
}

impl KubeSeeds {
    /// Starts with nothing given; `fixed` are the `--peer` seeds, `own`
    /// this router's addresses (a node listing one of them is this one,
    /// whatever its name).
    pub fn new(
        fixed: impl IntoIterator<Item = SocketAddr>,
        own: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        Self {
            given: BTreeMap::new(),
            fixed: fixed.into_iter().collect(),
            own: own.into_iter().collect(),
        }
    }

    /// The seeds given so far.
    pub fn given(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.given.keys().copied()
    }

    /// Takes a full listing (each node's candidates) and returns what
    /// changed. An address listed by more than one node (a masquerading
    /// gateway's given as every node's ExternalIP) names none of them and
    /// is left out. A node with one of this router's addresses is left
    /// out; a node with a `--peer` seed's address is that seed, which gets
    /// the node's other addresses (one node, one seed, one voter slot). An
    /// empty listing changes nothing: the node running this router is
    /// always in a real list, so an empty one is a glitch, not every node
    /// deleted.
    pub fn update(&mut self, listed: Vec<Vec<SocketAddr>>) -> SeedDiff {
        if listed.is_empty() {
            return SeedDiff::default();
        }
        let mut listings: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for a in listed.iter().flatten() {
            *listings.entry(*a).or_default() += 1;
        }
        let mut now: BTreeMap<SocketAddr, Vec<SocketAddr>> = BTreeMap::new();
        for mut candidates in listed {
            candidates.retain(|a| listings.get(a) == Some(&1));
            if candidates.iter().any(|a| self.own.contains(a)) {
                continue;
            }
            let Some(address) = candidates
                .iter()
                .find(|a| self.fixed.contains(a))
                .or(candidates.first())
                .copied()
            else {
                continue;
            };
            let also = candidates.into_iter().filter(|a| *a != address).collect();
            now.insert(address, also);
        }
        let diff = SeedDiff {
            add: now
                .iter()
                .filter(|(a, also)| self.given.get(*a) != Some(*also))
                // A `--peer` seed the control task has already.
                .filter(|(a, also)| {
                    !(self.fixed.contains(*a) && also.is_empty() && !self.given.contains_key(*a))
                })
                .map(|(a, also)| Seed {
                    address: *a,
                    also: also.clone(),
                })
                .collect(),
            remove: self
                .given
                .keys()
                .filter(|a| !now.contains_key(*a) && !self.fixed.contains(*a))
                .copied()
                .collect(),
        };
        self.given = now;
        diff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn a_node_without_an_internal_ip_is_dialled_at_its_external_ip() {
        let node = KubeNode {
            name: "edge".into(),
            ready: true,
            internal: vec![],
            external: vec!["203.0.113.7".parse().expect("ip")],
            advertise: vec![],
        };
        assert_eq!(node.candidates(6783, true), vec![addr("203.0.113.7:6783")]);
        assert!(node.candidates(6783, false).is_empty());
    }

    #[test]
    fn the_listen_family_picks_the_address_on_a_dual_stack_node() {
        let node = KubeNode {
            name: "dual".into(),
            ready: true,
            internal: vec![
                "fd00::5".parse().expect("ip"),
                "192.0.2.5".parse().expect("ip"),
            ],
            external: vec![],
            advertise: vec![],
        };
        assert_eq!(node.candidates(6783, true), vec![addr("192.0.2.5:6783")]);
        assert_eq!(node.candidates(6783, false), vec![addr("[fd00::5]:6783")]);
    }

    #[test]
    fn a_nodes_external_ips_and_annotation_are_its_endpoints_and_its_candidates_first() {
        let body = br#"{"kind":"NodeList","items":[{
            "metadata":{"name":"edge","annotations":{
                "weft.dev/advertise":"203.0.113.20:7000, not-an-ip, 203.0.113.21,2001:db8::1, 203.0.113.22:0"}},
            "status":{"addresses":[
                {"type":"InternalIP","address":"10.0.0.5"},
                {"type":"ExternalIP","address":"198.51.100.5"},
                {"type":"ExternalIP","address":"203.0.113.21"}]}}]}"#;
        let page = parse_node_list(body).expect("a node list");
        let node = &page.nodes[0];
        assert_eq!(
            node.endpoints(6783, true),
            vec![
                addr("203.0.113.20:7000"),
                addr("203.0.113.21:6783"),
                addr("198.51.100.5:6783"),
            ]
        );
        assert_eq!(
            node.endpoints(6783, false),
            vec![addr("[2001:db8::1]:6783")]
        );
        // Every address is a candidate, the annotated ones first (with
        // their port), the annotation's first naming the seed.
        assert_eq!(
            node.candidates(6783, true),
            vec![
                addr("203.0.113.20:7000"),
                addr("203.0.113.21:6783"),
                addr("10.0.0.5:6783"),
                addr("198.51.100.5:6783"),
            ]
        );
    }

    #[test]
    fn a_node_without_the_annotation_is_named_by_its_internal_ip_and_advertises_its_external_ones()
    {
        let body = br#"{"kind":"NodeList","items":[{"metadata":{"name":"n"},
            "status":{"addresses":[
                {"type":"InternalIP","address":"10.0.0.5"},
                {"type":"ExternalIP","address":"198.51.100.5"}]}}]}"#;
        let node = &parse_node_list(body).expect("a node list").nodes[0];
        assert_eq!(
            node.candidates(6783, true),
            vec![addr("10.0.0.5:6783"), addr("198.51.100.5:6783")]
        );
        assert_eq!(node.endpoints(6783, true), vec![addr("198.51.100.5:6783")]);
    }

    fn seed(address: &str, also: &[&str]) -> Seed {
        Seed {
            address: addr(address),
            also: also.iter().map(|a| addr(a)).collect(),
        }
    }

    fn one(a: &str) -> Vec<SocketAddr> {
        vec![addr(a)]
    }

    #[test]
    fn a_listing_turns_into_connects_and_forgets_of_the_changes_only() {
        let mut seeds = KubeSeeds::new([addr("192.0.2.9:6783")], []);
        let first = seeds.update(vec![one("192.0.2.1:6783"), one("192.0.2.9:6783")]);
        assert_eq!(first.add, vec![seed("192.0.2.1:6783", &[])]);
        assert!(first.remove.is_empty());
        let same = seeds.update(vec![one("192.0.2.1:6783"), one("192.0.2.9:6783")]);
        assert_eq!(same, SeedDiff::default());
        let moved = seeds.update(vec![one("192.0.2.2:6783")]);
        assert_eq!(moved.add, vec![seed("192.0.2.2:6783", &[])]);
        // The --peer seed 192.0.2.9 is not forgotten when its node goes.
        assert_eq!(moved.remove, vec![addr("192.0.2.1:6783")]);
    }

    #[test]
    fn an_empty_listing_forgets_nothing() {
        let mut seeds = KubeSeeds::new([], []);
        seeds.update(vec![one("192.0.2.1:6783")]);
        assert_eq!(seeds.update(Vec::new()), SeedDiff::default());
        assert_eq!(seeds.given().count(), 1);
    }

    /// Two sites behind NAT, no annotation: each node is one seed named by
    /// its InternalIP, with its ExternalIP beside it; this router's own
    /// node (found by address, whatever its name) is none.
    #[test]
    fn a_node_is_one_seed_with_its_other_addresses_beside_it() {
        let body = br#"{"kind":"NodeList","items":[
            {"metadata":{"name":"a0"},"status":{"addresses":[
                {"type":"InternalIP","address":"198.51.100.10"},
                {"type":"ExternalIP","address":"203.0.113.11"}]}},
            {"metadata":{"name":"b0"},"status":{"addresses":[
                {"type":"InternalIP","address":"198.51.100.74"},
                {"type":"Hostname","address":"b0"}]}},
            {"metadata":{"name":"c0"},"status":{"addresses":[
                {"type":"InternalIP","address":"198.51.100.138"},
                {"type":"ExternalIP","address":"203.0.113.31"}]}}]}"#;
        let nodes = parse_node_list(body).expect("a node list").nodes;
        let listed = seeds_from_nodes(&nodes, 6783, true);
        assert_eq!(listed.len(), 3);
        let mut seeds = KubeSeeds::new([], [addr("198.51.100.74:6783")]);
        let diff = seeds.update(listed.clone());
        assert_eq!(
            diff.add,
            vec![
                seed("198.51.100.10:6783", &["203.0.113.11:6783"]),
                seed("198.51.100.138:6783", &["203.0.113.31:6783"]),
            ]
        );
        assert_eq!(seeds.update(listed), SeedDiff::default());
        // c0 loses its ExternalIP: the seed is given again, without it.
        let diff = seeds.update(vec![
            vec![addr("198.51.100.10:6783"), addr("203.0.113.11:6783")],
            one("198.51.100.138:6783"),
        ]);
        assert_eq!(diff.add, vec![seed("198.51.100.138:6783", &[])]);
        assert!(diff.remove.is_empty());
    }

    /// A masquerade site whose Nodes all give the gateway's address as
    /// ExternalIP: that address is no one node's, so it is no candidate
    /// (it would tie two nodes, and two voter slots, to one router).
    #[test]
    fn an_address_listed_by_two_nodes_is_a_candidate_of_neither() {
        let gateway = addr("203.0.113.20:6783");
        let mut seeds = KubeSeeds::new([], []);
        let diff = seeds.update(vec![
            vec![addr("198.51.100.74:6783"), gateway],
            vec![addr("198.51.100.75:6783"), gateway],
            vec![gateway],
        ]);
        assert_eq!(
            diff.add,
            vec![
                seed("198.51.100.74:6783", &[]),
                seed("198.51.100.75:6783", &[])
            ]
        );
    }

    /// The operator seeds by public address (`--peer`) and lists Nodes
    /// too: the node at that address is that seed, not a second slot.
    #[test]
    fn a_node_at_a_peer_seeds_address_is_that_seed_with_its_other_addresses() {
        let public = addr("203.0.113.11:6783");
        let mut seeds = KubeSeeds::new([public], []);
        let diff = seeds.update(vec![vec![addr("198.51.100.10:6783"), public]]);
        assert_eq!(
            diff.add,
            vec![seed("203.0.113.11:6783", &["198.51.100.10:6783"])]
        );
        // Its node goes: the --peer seed stays.
        let diff = seeds.update(vec![one("198.51.100.74:6783")]);
        assert_eq!(diff.add, vec![seed("198.51.100.74:6783", &[])]);
        assert!(diff.remove.is_empty());
    }

    #[test]
    fn a_status_object_or_garbage_is_not_a_node_list() {
        let status = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":403}"#;
        assert!(matches!(
            parse_node_list(status),
            Err(KubeError::BadList(_))
        ));
        assert!(parse_node_list(b"\x00not json").is_err());
        assert!(parse_node_list(b"{}").is_err());
    }
}
