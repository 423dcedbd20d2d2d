//! The policy compiler (DESIGN.md "NetworkPolicy"; issue 18, "Semantics"):
//! checks each NetworkPolicy once ([`compile_policy`]), keeps the cluster's
//! pods, namespaces and policies ([`Cluster`]), and gives for one local pod
//! and each direction the rules nftables enforces ([`Cluster::rules_for`]).
//!
//! Semantics, as `networking.k8s.io/v1` defines them:
//! - a pod selected by no policy of a direction is open in that direction;
//!   once selected, only what some selecting policy allows passes (union;
//!   an empty rule list is a default deny);
//! - `policyTypes` absent means Ingress, plus Egress if there are egress
//!   rules;
//! - a peer is pods (podSelector in the policy's namespace, or
//!   namespaceSelector, or both ANDed) or an ipBlock minus its `except`;
//!   no peers means every address; no ports means every port and protocol;
//! - a named port is looked up in the containerPorts of the destination pod:
//!   for ingress the local pod, for egress each peer pod;
//! - pods in the host's network, finished pods and pods without an address
//!   are not peers (they have no identity of their own); a dual-stack pod is
//!   its addresses of both families, an ipBlock only addresses of its own
//!   family (`super::addrs`).
//!
//! Traffic from the node to its own pods (kubelet probes) never reaches the
//! forward hook that enforces these rules, so it passes, as Kubernetes
//! expects. Pure: no clock, no I/O.

use super::addrs::{Addr, AddrSet};
use super::flatten::{Direction, RawBox};
use super::model::{IntOrString, Labels, Namespace, NetworkPolicy, ObjectError};
pub use super::pod::PodInfo;
use super::selector::Selector;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The label the API server puts on every namespace (since 1.21); set here
/// too, so that a namespace not yet seen still matches selectors on it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A policy's namespace and name: how logs, counters and status name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The transport protocols a policy port names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    /// Every protocol, in order.
    pub const ALL: [Self; 3] = [Self::Tcp, Self::Udp, Self::Sctp];

    /// As nftables and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    /// Parses Kubernetes' `protocol` (absent: TCP).
    pub(super) fn from_api(protocol: Option<&str>) -> Result<Self, String> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            other => Err(format!("unknown protocol {other:?}")),
        }
    }
}

/// A checked policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Its name.
    pub id: PolicyId,
    selects: Selector,
    /// `Some` when the policy applies to ingress (its pods are isolated).
    ingress: Option<Vec<Rule>>,
    /// `Some` when the policy applies to egress.
    egress: Option<Vec<Rule>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    /// `None`: every address.
    peers: Option<Vec<Peer>>,
    /// `None`: every port of every protocol.
    ports: Option<Vec<PortMatch>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Peer {
    Pods {
        /// `None`: the policy's own namespace.
        namespaces: Option<Selector>,
        pods: Selector,
    },
    Block(AddrSet),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PortMatch {
    proto: Proto,
    port: PortRef,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PortRef {
    Range(u16, u16),
    Named(String),
}

/// Checks a policy. `Err` says what cannot be compiled; the caller skips
/// the policy with one log line and a count (issue 18, "Failure").
pub fn compile_policy(policy: &NetworkPolicy) -> Result<Policy, ObjectError> {
    let invalid = ObjectError::Invalid;
    let meta = &policy.metadata;
    if meta.name.is_empty() || meta.namespace.is_empty() {
        return Err(invalid("a policy needs a name and a namespace".into()));
    }
    let spec = &policy.spec;
    let (ingress_on, egress_on) = match &spec.policy_types {
        None => (true, !spec.egress.is_empty()),
        Some(types) => {
            for t in types {
                if t != "Ingress" && t != "Egress" {
                    return Err(invalid(format!("unknown policyType {t:?}")));
                }
            }
            (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            )
        }
    };
    let rules = |list: &[super::model::PolicyRule], ingress: bool| -> Result<Vec<Rule>, String> {
        list.iter()
            .map(|rule| {
                let peers = if ingress { &rule.from } else { &rule.to };
                Ok(Rule {
                    peers: if peers.is_empty() {
                        None
                    } else {
                        Some(peers.iter().map(compile_peer).collect::<Result<_, _>>()?)
                    },
                    ports: if rule.ports.is_empty() {
                        None
                    } else {
                        Some(
                            rule.ports
                                .iter()
                                .map(compile_port)
                                .collect::<Result<_, _>>()?,
                        )
                    },
                })
            })
            .collect()
    };
    Ok(Policy {
        id: PolicyId {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        },
        selects: Selector::from_api(&spec.pod_selector).map_err(invalid)?,
        ingress: if ingress_on {
            Some(rules(&spec.ingress, true).map_err(invalid)?)
        } else {
            None
        },
        egress: if egress_on {
            Some(rules(&spec.egress, false).map_err(invalid)?)
        } else {
            None
        },
    })
}

fn compile_peer(peer: &super::model::PolicyPeer) -> Result<Peer, String> {
    match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
        (None, None, Some(block)) => {
            let Some(cidr) = AddrSet::parse_cidr(&block.cidr)? else {
                return Ok(Peer::Block(AddrSet::empty()));
            };
            let mut left = cidr.clone();
            for except in &block.except {
                match AddrSet::parse_cidr(except)? {
                    Some(e) if cidr.covers(&e) => left = left.subtract(&e),
                    Some(_) => {
                        return Err(format!("except {except:?} is not inside {:?}", block.cidr));
                    }
                    None => return Err(format!("except {except:?} is not a block")),
                }
            }
            Ok(Peer::Block(left))
        }
        (pods, namespaces, None) if pods.is_some() || namespaces.is_some() => Ok(Peer::Pods {
            namespaces: namespaces.as_ref().map(Selector::from_api).transpose()?,
            pods: pods
                .as_ref()
                .map(Selector::from_api)
                .transpose()?
                .unwrap_or_else(Selector::everything),
        }),
        _ => Err("a peer needs exactly one of podSelector/namespaceSelector or ipBlock".into()),
    }
}

fn compile_port(port: &super::model::PolicyPort) -> Result<PortMatch, String> {
    let proto = Proto::from_api(port.protocol.as_deref())?;
    let number = |n: i64| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("port {n} is not 1 to 65535"))
    };
    let port = match (&port.port, port.end_port) {
        (None, None) => PortRef::Range(0, u16::MAX),
        (Some(IntOrString::Int(n)), None) => {
            let n = number(*n)?;
            PortRef::Range(n, n)
        }
        (Some(IntOrString::Int(n)), Some(end)) => {
            let (n, end) = (number(*n)?, number(end)?);
            if end < n {
                return Err(format!("endPort {end} is below port {n}"));
            }
            PortRef::Range(n, end)
        }
        (Some(IntOrString::Str(name)), None) if !name.is_empty() => PortRef::Named(name.clone()),
        _ => return Err("endPort needs a numeric port".into()),
    };
    Ok(PortMatch { proto, port })
}

/// The cluster as the compiler sees it: every pod, namespace and checked
/// policy, keyed by `namespace/name` (so an update replaces).
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<String, PodInfo>,
    policies: BTreeMap<PolicyId, Policy>,
}

/// Peer sets by (policy, direction, rule), shared by the pods of one
/// render: a rule's peers are the same whichever local pod it applies to.
#[derive(Debug, Default)]
pub struct PeerCache(HashMap<(PolicyId, bool, usize), AddrSet>);

/// The compiled rules of one local pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRules {
    /// Who may send to it.
    pub ingress: Direction,
    /// Where it may send.
    pub egress: Direction,
}

impl Cluster {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a namespace.
    pub fn upsert_namespace(&mut self, namespace: &Namespace) {
        let mut labels = namespace.metadata.labels.clone();
        labels
            .entry(NAMESPACE_NAME_LABEL.into())
            .or_insert_with(|| namespace.metadata.name.clone());
        self.namespaces
            .insert(namespace.metadata.name.clone(), labels);
    }

    /// Removes a namespace.
    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Adds or replaces a pod.
    pub fn upsert_pod(&mut self, pod: PodInfo) {
        self.pods.insert(pod.key(), pod);
    }

    /// Gives a pod the API shows without an address (`awaiting_ip`) the
    /// addresses of its allocation on this node, or takes them back (`ips`
    /// empty). Returns whether anything changed.
    pub fn set_allocated_ips(&mut self, key: &str, ips: &[Addr]) -> bool {
        match self.pods.get_mut(key) {
            Some(pod) if pod.awaiting_ip && pod.ips != ips => {
                pod.ips = ips.to_vec();
                true
            }
            _ => false,
        }
    }

    /// Removes a pod.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        self.pods.remove(&format!("{namespace}/{name}"));
    }

    /// Adds or replaces a checked policy.
    pub fn upsert_policy(&mut self, policy: Policy) {
        self.policies.insert(policy.id.clone(), policy);
    }

    /// Removes a policy.
    pub fn remove_policy(&mut self, id: &PolicyId) {
        self.policies.remove(id);
    }

    /// Forgets every pod (before a relist).
    pub fn clear_pods(&mut self) {
        self.pods.clear();
    }

    /// Forgets every namespace (before a relist).
    pub fn clear_namespaces(&mut self) {
        self.namespaces.clear();
    }

    /// Keeps only the policies `keep` says yes to.
    pub fn retain_policies(&mut self, mut keep: impl FnMut(&PolicyId) -> bool) {
        self.policies.retain(|id, _| keep(id));
    }

    /// How many policies are in force.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Whether a policy of that name is in force.
    pub fn has_policy(&self, id: &PolicyId) -> bool {
        self.policies.contains_key(id)
    }

    /// The pods on `node`.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods.values().filter(move |p| p.node == node)
    }

    /// A pod by `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&PodInfo> {
        self.pods.get(key)
    }

    /// The pod holding `ip` (a scan: for the rate-limited drop log only).
    pub fn pod_with_ip(&self, ip: Addr) -> Option<&PodInfo> {
        self.pods.values().find(|p| p.ips.contains(&ip))
    }

    fn namespace_labels(&self, name: &str) -> std::borrow::Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(labels) => std::borrow::Cow::Borrowed(labels),
            None => std::borrow::Cow::Owned(Labels::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                name.to_string(),
            )])),
        }
    }

    /// The rules of `pod`, both directions.
    ///
    /// A pod whose labels are not known yet (`labels_known` false: a local
    /// pod between CNI ADD and the API showing it) gets the rules that are
    /// certainly no wider than its real ones: it is isolated in a direction
    /// if any policy of its namespace applies to that direction (any may
    /// select it), and allowed only what the policies selecting every pod
    /// of the namespace allow (those certainly select it). Its named ports
    /// are unknown, so rules on them allow nothing yet.
    pub fn rules_for(&self, pod: &PodInfo) -> PodRules {
        self.rules_for_cached(pod, &mut PeerCache::default())
    }

    /// [`Self::rules_for`] with peer sets shared between the pods of one
    /// render (`cache` must not outlive a change of the cluster).
    pub fn rules_for_cached(&self, pod: &PodInfo, cache: &mut PeerCache) -> PodRules {
        PodRules {
            ingress: self.direction(pod, true, cache),
            egress: self.direction(pod, false, cache),
        }
    }

    fn direction(&self, pod: &PodInfo, ingress: bool, cache: &mut PeerCache) -> Direction {
        let mut selected_by = Vec::new();
        let mut boxes = Vec::new();
        for policy in self.policies.values() {
            let rules = if ingress {
                &policy.ingress
            } else {
                &policy.egress
            };
            let Some(rules) = rules else { continue };
            if policy.id.namespace != pod.namespace
                || (pod.labels_known && !policy.selects.matches(&pod.labels))
            {
                continue;
            }
            let index = selected_by.len();
            selected_by.push(policy.id.clone());
            if !pod.labels_known && !policy.selects.is_everything() {
                continue;
            }
            for (r, rule) in rules.iter().enumerate() {
                let addrs = cache
                    .0
                    .entry((policy.id.clone(), ingress, r))
                    .or_insert_with(|| self.peer_addrs(policy, rule));
                self.rule_boxes(addrs, rule, pod, ingress, index, &mut boxes);
            }
        }
        Direction::flatten(selected_by, &boxes)
    }

    /// The addresses a rule's peers stand for.
    fn peer_addrs(&self, policy: &Policy, rule: &Rule) -> AddrSet {
        let Some(peers) = &rule.peers else {
            return AddrSet::all();
        };
        let mut addrs = AddrSet::empty();
        for peer in peers {
            let set = match peer {
                Peer::Block(set) => set.clone(),
                Peer::Pods { namespaces, pods } => {
                    let mut ips = Vec::new();
                    let mut take = |namespace: &str| {
                        ips.extend(
                            self.namespace_pods(namespace)
                                .filter(|p| pods.matches(&p.labels))
                                .flat_map(|p| p.ips.iter().copied()),
                        );
                    };
                    match namespaces {
                        None => take(&policy.id.namespace),
                        Some(s) => {
                            for namespace in self.pod_namespaces() {
                                if s.matches(&self.namespace_labels(namespace)) {
                                    take(namespace);
                                }
                            }
                        }
                    }
                    AddrSet::from_addrs(ips)
                }
            };
            addrs = addrs.union(&set);
        }
        addrs
    }

    /// The pods of one namespace: a range of the map, whose keys are
    /// `namespace/name` (a namespace has no `/`; the filter keeps a pod
    /// whose namespace would have one out of its neighbour's range).
    fn namespace_pods<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        // '0' follows '/' in ASCII: the range is every key with the prefix.
        self.pods
            .range(format!("{namespace}/")..format!("{namespace}0"))
            .map(|(_, p)| p)
            .filter(move |p| p.namespace == namespace)
    }

    /// The namespaces that have pods, each once, jumping over each
    /// namespace's range (a lookup per namespace, not a step per pod).
    fn pod_namespaces(&self) -> Vec<&str> {
        let mut namespaces = Vec::new();
        let mut next = self.pods.values().next();
        while let Some(pod) = next {
            namespaces.push(pod.namespace.as_str());
            next = self
                .pods
                .range(format!("{}0", pod.namespace)..)
                .map(|(_, p)| p)
                .next();
        }
        namespaces
    }

    fn rule_boxes(
        &self,
        addrs: &AddrSet,
        rule: &Rule,
        pod: &PodInfo,
        ingress: bool,
        index: usize,
        boxes: &mut Vec<RawBox>,
    ) {
        if addrs.is_empty() {
            return;
        }
        let Some(ports) = &rule.ports else {
            boxes.push(RawBox {
                addrs: addrs.clone(),
                ports: None,
                policy: index,
            });
            return;
        };
        for m in ports {
            match &m.port {
                PortRef::Range(lo, hi) => boxes.push(RawBox {
                    addrs: addrs.clone(),
                    ports: Some((m.proto, *lo, *hi)),
                    policy: index,
                }),
                // Ingress: the local pod is the destination.
                PortRef::Named(name) if ingress => {
                    if let Some(n) = pod.named_port(name, m.proto) {
                        boxes.push(RawBox {
                            addrs: addrs.clone(),
                            ports: Some((m.proto, n, n)),
                            policy: index,
                        });
                    }
                }
                // Egress: each destination pod has its own number for the name.
                PortRef::Named(name) => {
                    let mut by_number: BTreeMap<u16, Vec<Addr>> = BTreeMap::new();
                    for peer in self.pods.values() {
                        if let Some(n) = peer.named_port(name, m.proto) {
                            by_number
                                .entry(n)
                                .or_default()
                                .extend(peer.ips.iter().filter(|ip| addrs.contains(**ip)));
                        }
                    }
                    for (n, ips) in by_number {
                        let set = AddrSet::from_addrs(ips);
                        if !set.is_empty() {
                            boxes.push(RawBox {
                                addrs: set,
                                ports: Some((m.proto, n, n)),
                                policy: index,
                            });
                        }
                    }
                }
            }
        }
    }
}
