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
//! public one). [`KubeNode::endpoints`] gives them with the router's port;
//! the annotation's first entry is also where others dial the node
//! ([`KubeNode::seed_address`]): the operator says so.

use super::KubeError;
use serde::Deserialize;
use std::collections::BTreeSet;
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
    /// The address to dial: the first annotated endpoint of the wanted
    /// family, else the first InternalIP of it, else the first ExternalIP;
    /// `None` when the node has none. (The port of an annotated endpoint
    /// is not used here: seeds share the router's port.)
    pub fn seed_address(&self, ipv4: bool) -> Option<IpAddr> {
        let family = |a: &&IpAddr| a.is_ipv4() == ipv4;
        self.advertise
            .iter()
            .map(|(ip, _)| ip)
            .find(family)
            .or_else(|| self.internal.iter().find(family))
            .or_else(|| self.external.iter().find(family))
            .copied()
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

/// The seed addresses for `nodes`: each node's [`KubeNode::seed_address`]
/// with `port`. Nodes with no address of the family are left out.
pub fn seeds_from_nodes(nodes: &[KubeNode], port: u16, ipv4: bool) -> BTreeSet<SocketAddr> {
    nodes
        .iter()
        .filter_map(|n| n.seed_address(ipv4))
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// What to tell the control task after a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedDiff {
    /// New seeds (`Request::Connect`).
    pub add: Vec<SocketAddr>,
    /// Seeds of nodes that are gone (`Request::Forget`).
    pub remove: Vec<SocketAddr>,
}

/// The seeds this task has given the control task, so that a listing turns
/// into the changes only. Static `--peer` seeds are never forgotten.
#[derive(Clone, Debug, Default)]
pub struct KubeSeeds {
    given: BTreeSet<SocketAddr>,
    fixed: BTreeSet<SocketAddr>,
}

impl KubeSeeds {
    /// Starts with nothing given; `fixed` are the `--peer` seeds.
    pub fn new(fixed: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            given: BTreeSet::new(),
            fixed: fixed.into_iter().collect(),
        }
    }

    /// The seeds given so far.
    pub fn given(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.given.iter().copied()
    }

    /// Takes a full listing's seeds and returns what changed. An empty
    /// listing changes nothing: the node running this router is always in a
    /// real list, so an empty one is a glitch, not every node deleted.
    pub fn update(&mut self, listed: BTreeSet<SocketAddr>) -> SeedDiff {
        if listed.is_empty() {
            return SeedDiff::default();
        }
        let diff = SeedDiff {
            add: listed
                .difference(&self.given)
                .filter(|a| !self.fixed.contains(a))
                .copied()
                .collect(),
            remove: self
                .given
                .difference(&listed)
                .filter(|a| !self.fixed.contains(a))
                .copied()
                .collect(),
        };
        self.given = listed
            .into_iter()
            .filter(|a| !self.fixed.contains(a))
            .collect();
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
        assert_eq!(node.seed_address(true), "203.0.113.7".parse().ok());
        assert_eq!(node.seed_address(false), None);
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
        assert_eq!(node.seed_address(true), "192.0.2.5".parse().ok());
        assert_eq!(node.seed_address(false), "fd00::5".parse().ok());
    }

    #[test]
    fn a_nodes_external_ips_and_annotation_are_its_endpoints_and_the_annotation_is_dialled() {
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
        assert_eq!(node.seed_address(true), "203.0.113.20".parse().ok());
    }

    #[test]
    fn a_node_without_the_annotation_is_dialled_at_its_internal_ip_and_advertises_its_external_ones()
     {
        let body = br#"{"kind":"NodeList","items":[{"metadata":{"name":"n"},
            "status":{"addresses":[
                {"type":"InternalIP","address":"10.0.0.5"},
                {"type":"ExternalIP","address":"198.51.100.5"}]}}]}"#;
        let node = &parse_node_list(body).expect("a node list").nodes[0];
        assert_eq!(node.seed_address(true), "10.0.0.5".parse().ok());
        assert_eq!(node.endpoints(6783, true), vec![addr("198.51.100.5:6783")]);
    }

    #[test]
    fn a_listing_turns_into_connects_and_forgets_of_the_changes_only() {
        let mut seeds = KubeSeeds::new([addr("192.0.2.9:6783")]);
        let first = seeds.update([addr("192.0.2.1:6783"), addr("192.0.2.9:6783")].into());
        assert_eq!(first.add, vec![addr("192.0.2.1:6783")]);
        assert!(first.remove.is_empty());
        let same = seeds.update([addr("192.0.2.1:6783"), addr("192.0.2.9:6783")].into());
        assert_eq!(same, SeedDiff::default());
        let moved = seeds.update([addr("192.0.2.2:6783")].into());
        assert_eq!(moved.add, vec![addr("192.0.2.2:6783")]);
        // The --peer seed 192.0.2.9 is not forgotten when its node goes.
        assert_eq!(moved.remove, vec![addr("192.0.2.1:6783")]);
    }

    #[test]
    fn an_empty_listing_forgets_nothing() {
        let mut seeds = KubeSeeds::new([]);
        seeds.update([addr("192.0.2.1:6783")].into());
        assert_eq!(seeds.update(BTreeSet::new()), SeedDiff::default());
        assert_eq!(seeds.given().count(), 1);
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
