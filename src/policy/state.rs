//! The router's view of the cluster for policy: the watchers' changes
//! applied to a [`Cluster`], objects that cannot be used counted and named,
//! and the table for this node's pods rendered on demand. Pure; the driver
//! owns the watchers, `nft` and the clock.
//!
//! A policy that cannot be compiled is skipped with its reason
//! ([`PolicyState::skipped`]); if an earlier version of it compiled, that
//! version stays in force rather than opening its pods (never fail open).
//! The local pods are those whose `spec.nodeName` is this node's name (the
//! name the router has from the downward API), and those this node's IPAM
//! gave an address to, named by kubelet's `K8S_POD_NAMESPACE`/`K8S_POD_NAME`
//! ([`PolicyState::add_allocation`]): a pod is enforced from the moment its
//! address exists, not from when the API shows it. Until the API shows the
//! pod its allocation's address stands in for `status.podIP`, and until the
//! API shows its labels it gets the narrow rules of
//! [`Cluster::rules_for`](super::compile::Cluster::rules_for).

use super::addrs::Addr;
use super::compile::{Cluster, PodInfo, PolicyId, compile_policy};
use super::model::{self, Namespace, NetworkPolicy, ObjectError, Pod};
use super::nft::{self, LocalPod, Rendered};
use super::watch::Change;
use std::collections::BTreeMap;

/// The three resources watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// `/api/v1/pods`.
    Pods,
    /// `/api/v1/namespaces`.
    Namespaces,
    /// `/apis/networking.k8s.io/v1/networkpolicies`.
    NetworkPolicies,
}

impl Resource {
    /// All three, in the order they are applied at start (namespaces and
    /// pods before the policies that select them).
    pub const ALL: [Self; 3] = [Self::Namespaces, Self::Pods, Self::NetworkPolicies];

    /// The object kind, as the API names it.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Pods => "Pod",
            Self::Namespaces => "Namespace",
            Self::NetworkPolicies => "NetworkPolicy",
        }
    }

    /// The collection's path on the API server.
    pub fn path(self) -> &'static str {
        match self {
            Self::Pods => "/api/v1/pods",
            Self::Namespaces => "/api/v1/namespaces",
            Self::NetworkPolicies => "/apis/networking.k8s.io/v1/networkpolicies",
        }
    }
}

/// Pods, namespaces and policies as last seen, and this node's name.
#[derive(Debug)]
pub struct PolicyState {
    node: String,
    cluster: Cluster,
    skipped: BTreeMap<String, String>,
    /// This node's pod allocations: `namespace/name` → addresses.
    allocated: BTreeMap<String, Vec<Addr>>,
}

impl PolicyState {
    /// An empty state for the node called `node`.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.into(),
            cluster: Cluster::new(),
            skipped: BTreeMap::new(),
            allocated: BTreeMap::new(),
        }
    }

    /// Replaces what is known of this node's pod allocations (at start,
    /// from `weft status`): `namespace/name` → addresses.
    pub fn set_allocations(&mut self, all: BTreeMap<String, Vec<Addr>>) {
        for key in self.allocated.keys() {
            if !all.contains_key(key) {
                self.cluster.set_allocated_ips(key, &[]);
            }
        }
        for (key, ips) in &all {
            self.cluster.set_allocated_ips(key, ips);
        }
        self.allocated = all;
    }

    /// A pod of this node got `ip` (CNI ADD). An address belongs to one pod
    /// at a time: whoever had it before loses it.
    pub fn add_allocation(&mut self, pod: &str, ip: Addr) {
        self.release_allocation(ip);
        let ips = self.allocated.entry(pod.to_string()).or_default();
        ips.push(ip);
        ips.sort_unstable();
        ips.dedup();
        let ips = ips.clone();
        self.cluster.set_allocated_ips(pod, &ips);
    }

    /// `ip` was freed (CNI DEL, GC).
    pub fn release_allocation(&mut self, ip: Addr) {
        let mut emptied = Vec::new();
        for (key, ips) in &mut self.allocated {
            if ips.contains(&ip) {
                ips.retain(|i| *i != ip);
                self.cluster.set_allocated_ips(key, ips);
                if ips.is_empty() {
                    emptied.push(key.clone());
                }
            }
        }
        for key in emptied {
            self.allocated.remove(&key);
        }
    }

    /// Objects not taken, `kind namespace/name` → why (for status and
    /// the `weft_policy_skipped` count).
    pub fn skipped(&self) -> &BTreeMap<String, String> {
        &self.skipped
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The cluster as compiled.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Applies one change of `resource`. Returns the objects not taken,
    /// named, with why (the rest of a `Reset` is still applied).
    pub fn apply(&mut self, resource: Resource, change: Change) -> Vec<(String, ObjectError)> {
        let mut refused = Vec::new();
        match change {
            Change::Reset(items) => {
                let prefix = format!("{} ", resource.kind());
                self.skipped.retain(|name, _| !name.starts_with(&prefix));
                match resource {
                    Resource::Pods => self.cluster.clear_pods(),
                    Resource::Namespaces => self.cluster.clear_namespaces(),
                    Resource::NetworkPolicies => {}
                }
                let mut kept = Vec::new();
                for item in items {
                    let (policy, error) = self.upsert(resource, &item);
                    kept.extend(policy);
                    refused.extend(error);
                }
                if resource == Resource::NetworkPolicies {
                    self.cluster.retain_policies(|id| kept.contains(id));
                }
            }
            Change::Upsert(item) => refused.extend(self.upsert(resource, &item).1),
            Change::Delete(item) => self.delete(resource, &item),
        }
        for (name, error) in &refused {
            self.skipped.insert(name.clone(), error.to_string());
        }
        refused
    }

    /// Takes one object. Returns the policy's ID when a policy is in
    /// force after it (taken, or an earlier version kept), and the object's
    /// name with the reason when it was refused.
    fn upsert(
        &mut self,
        resource: Resource,
        item: &serde_json::Value,
    ) -> (Option<PolicyId>, Option<(String, ObjectError)>) {
        let bytes = serde_json::to_vec(item).unwrap_or_default();
        let name = describe(resource, item);
        let result = match resource {
            Resource::Pods => model::parse::<Pod>(&bytes).map(|pod| {
                let mut info = PodInfo::from_api(&pod);
                if let Some(ips) = self.allocated.get(&info.key()).filter(|_| info.awaiting_ip) {
                    info.ips.clone_from(ips);
                }
                self.cluster.upsert_pod(info);
            }),
            Resource::Namespaces => {
                model::parse::<Namespace>(&bytes).map(|ns| self.cluster.upsert_namespace(&ns))
            }
            Resource::NetworkPolicies => {
                let parsed = match model::parse::<NetworkPolicy>(&bytes) {
                    Ok(parsed) => parsed,
                    Err(e) => return (None, Some((name, e))),
                };
                let id = PolicyId {
                    namespace: parsed.metadata.namespace.clone(),
                    name: parsed.metadata.name.clone(),
                };
                match compile_policy(&parsed) {
                    Ok(policy) => {
                        self.cluster.upsert_policy(policy);
                        self.skipped.remove(&name);
                        return (Some(id), None);
                    }
                    // The previous version, if any, stays in force.
                    Err(e) => {
                        let kept = self.cluster.has_policy(&id).then_some(id);
                        return (kept, Some((name, e)));
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                self.skipped.remove(&name);
                (None, None)
            }
            Err(e) => (None, Some((name, e))),
        }
    }

    fn delete(&mut self, resource: Resource, item: &serde_json::Value) {
        let meta = |field: &str| {
            item.pointer(&format!("/metadata/{field}"))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (namespace, name) = (meta("namespace"), meta("name"));
        match resource {
            Resource::Pods => self.cluster.remove_pod(&namespace, &name),
            Resource::Namespaces => self.cluster.remove_namespace(&name),
            Resource::NetworkPolicies => self.cluster.remove_policy(&PolicyId { namespace, name }),
        }
        self.skipped.remove(&describe(resource, item));
    }

    /// This node's pods: those the API places here, then those allocated
    /// here that the API does not show here (yet), with their allocation's
    /// addresses and labels unknown. An address is one pod's: the pod this
    /// node's IPAM gave it, else the first in key order. The API can show
    /// two (a deleted pod still terminating while its address went to a new
    /// one, or a stale object); a table with the address twice is refused
    /// whole by nft, which would leave every pod's policy unapplied.
    pub fn local_pods(&self) -> Vec<PodInfo> {
        let mut pods: Vec<PodInfo> = self.cluster.pods_on(&self.node).cloned().collect();
        let here: std::collections::BTreeSet<String> = pods.iter().map(PodInfo::key).collect();
        for (key, ips) in &self.allocated {
            if here.contains(key) {
                continue;
            }
            let (namespace, name) = key.split_once('/').unwrap_or(("", key));
            pods.push(PodInfo::allocated(namespace, name, ips.clone(), &self.node));
        }
        let mut holder: std::collections::BTreeMap<Addr, String> = self
            .allocated
            .iter()
            .flat_map(|(key, ips)| ips.iter().map(move |ip| (*ip, key.clone())))
            .collect();
        pods.sort_by_key(PodInfo::key);
        for pod in &mut pods {
            let key = pod.key();
            pod.ips
                .retain(|ip| holder.entry(*ip).or_insert_with(|| key.clone()) == &key);
        }
        pods
    }

    /// Who holds `ip`: a pod the API shows with it, or a local pod
    /// allocated it (`namespace/name`).
    pub fn pod_with_ip(&self, ip: Addr) -> Option<String> {
        if let Some(pod) = self.cluster.pod_with_ip(ip) {
            return Some(pod.key());
        }
        self.allocated
            .iter()
            .find(|(_, ips)| ips.contains(&ip))
            .map(|(key, _)| key.clone())
    }

    /// The table for this node's pods.
    pub fn render(&self) -> Rendered {
        let mut cache = super::compile::PeerCache::default();
        let pods: Vec<LocalPod> = self
            .local_pods()
            .iter()
            .map(|pod| {
                let rules = self.cluster.rules_for_cached(pod, &mut cache);
                LocalPod {
                    key: pod.key(),
                    namespace: pod.namespace.clone(),
                    ips: pod.ips.clone(),
                    ingress: rules.ingress,
                    egress: rules.egress,
                }
            })
            .collect();
        nft::render(&pods)
    }
}

/// `Pod x/a` for logs and the skipped list.
fn describe(resource: Resource, item: &serde_json::Value) -> String {
    let field = |f: &str| {
        item.pointer(&format!("/metadata/{f}"))
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .chars()
            .take(253)
            .collect::<String>()
    };
    let kind = resource.kind();
    match resource {
        Resource::Namespaces => format!("{kind} {}", field("name")),
        _ => format!("{kind} {}/{}", field("namespace"), field("name")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::compile::Proto;
    use crate::policy::flatten::Decision;
    use serde_json::json;

    fn pod(name: &str, node: &str, ip: &str) -> serde_json::Value {
        json!({"metadata":{"name":name,"namespace":"x","labels":{"pod":name}},
               "spec":{"nodeName":node},"status":{"phase":"Running","podIP":ip}})
    }

    fn deny_all(name: &str) -> serde_json::Value {
        json!({"metadata":{"name":name,"namespace":"x"},"spec":{"podSelector":{}}})
    }

    #[test]
    fn only_this_nodes_pods_are_rendered() {
        let mut s = PolicyState::new("n1");
        s.apply(
            Resource::Pods,
            Change::Reset(vec![
                pod("a", "n1", "10.32.0.1"),
                pod("b", "n2", "10.32.0.2"),
            ]),
        );
        s.apply(Resource::NetworkPolicies, Change::Upsert(deny_all("deny")));
        let text = s.render().text();
        assert!(text.contains("10.32.0.1 : jump pod_"), "{text}");
        assert!(!text.contains("10.32.0.2 :"), "{text}");
    }

    #[test]
    fn a_policy_that_cannot_compile_is_skipped_named_and_the_rest_applies() {
        let mut s = PolicyState::new("n1");
        s.apply(Resource::Pods, Change::Upsert(pod("a", "n1", "10.32.0.1")));
        let bad = json!({"metadata":{"name":"bad","namespace":"x"},
            "spec":{"podSelector":{"matchExpressions":[{"key":"k","operator":"Gt"}]}}});
        let refused = s.apply(
            Resource::NetworkPolicies,
            Change::Reset(vec![bad, deny_all("deny")]),
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "NetworkPolicy x/bad");
        assert!(s.skipped().contains_key("NetworkPolicy x/bad"));
        assert!(s.render().text().contains("default deny of x"));
    }

    #[test]
    fn a_broken_update_keeps_the_previous_version_in_force() {
        let mut s = PolicyState::new("n1");
        s.apply(Resource::Pods, Change::Upsert(pod("a", "n1", "10.32.0.1")));
        s.apply(Resource::NetworkPolicies, Change::Upsert(deny_all("deny")));
        let broken = json!({"metadata":{"name":"deny","namespace":"x"},
            "spec":{"podSelector":{},"ingress":[{"ports":[{"port":0}]}]}});
        s.apply(Resource::NetworkPolicies, Change::Upsert(broken));
        assert!(s.skipped().contains_key("NetworkPolicy x/deny"));
        assert!(
            s.render().text().contains("default deny of x"),
            "never fail open"
        );
        s.apply(Resource::NetworkPolicies, Change::Delete(deny_all("deny")));
        assert!(!s.render().text().contains("default deny of x"));
        assert!(s.skipped().is_empty());
    }

    fn ip(s: &str) -> Addr {
        crate::policy::addrs::addr(s.parse().unwrap())
    }

    /// Ingress of the local pod `key` from `peer` on TCP `port`.
    fn ingress(s: &PolicyState, key: &str, peer: &str, port: u16) -> Decision {
        let pod = s.local_pods().into_iter().find(|p| p.key() == key).unwrap();
        s.cluster()
            .rules_for(&pod)
            .ingress
            .decide(ip(peer), Some((Proto::Tcp, port)))
    }

    fn allow_from(name: &str, selector: serde_json::Value, from: &str) -> serde_json::Value {
        json!({"metadata":{"name":name,"namespace":"x"},
               "spec":{"podSelector":selector,"ingress":[{"from":[{"ipBlock":{"cidr":from}}]}]}})
    }

    #[test]
    fn a_pod_allocated_here_but_unknown_to_the_api_is_isolated_from_its_address_on() {
        let mut s = PolicyState::new("n1");
        s.apply(Resource::Pods, Change::Reset(vec![]));
        s.add_allocation("x/new", ip("10.32.0.9"));
        // No policy in its namespace: open, as it will be once known.
        assert_eq!(ingress(&s, "x/new", "10.32.1.1", 80), Decision::Open);
        s.apply(Resource::NetworkPolicies, Change::Upsert(deny_all("deny")));
        assert_eq!(ingress(&s, "x/new", "10.32.1.1", 80), Decision::Denied);
        assert!(s.render().text().contains("10.32.0.9 : jump pod_"));
        // A policy selecting every pod certainly selects it: its allows apply.
        s.apply(
            Resource::NetworkPolicies,
            Change::Upsert(allow_from("all", json!({}), "10.32.1.0/24")),
        );
        assert_eq!(ingress(&s, "x/new", "10.32.1.1", 80), Decision::Allowed(0));
        // One selecting by label may not: it isolates, and allows nothing yet.
        s.apply(
            Resource::NetworkPolicies,
            Change::Upsert(allow_from(
                "web",
                json!({"matchLabels":{"app":"web"}}),
                "10.32.2.0/24",
            )),
        );
        assert_eq!(ingress(&s, "x/new", "10.32.2.1", 80), Decision::Denied);
        let pending = s.local_pods().into_iter().find(|p| p.key() == "x/new");
        assert!(!pending.unwrap().labels_known);
        // Once the API shows it with its labels (no podIP yet), the full rules.
        let mut shown = pod("new", "n1", "");
        shown["metadata"]["labels"] = json!({"app":"web"});
        s.apply(Resource::Pods, Change::Upsert(shown));
        assert_eq!(ingress(&s, "x/new", "10.32.2.1", 80), Decision::Allowed(2));
        assert_eq!(s.cluster().pod("x/new").unwrap().ips, vec![ip("10.32.0.9")]);
        // Freed (CNI DEL before the API ever showed the address): gone.
        s.release_allocation(ip("10.32.0.9"));
        assert!(s.cluster().pod("x/new").unwrap().ips.is_empty());
        assert!(!s.render().text().contains("10.32.0.9"));
    }

    #[test]
    fn an_address_reused_by_another_pod_moves_with_it() {
        let mut s = PolicyState::new("n1");
        s.add_allocation("x/old", ip("10.32.0.9"));
        s.add_allocation("x/new", ip("10.32.0.9"));
        let keys: Vec<String> = s.local_pods().iter().map(PodInfo::key).collect();
        assert_eq!(keys, ["x/new"]);
        s.set_allocations(BTreeMap::from([("x/b".to_string(), vec![ip("10.32.0.3")])]));
        let keys: Vec<String> = s.local_pods().iter().map(PodInfo::key).collect();
        assert_eq!(keys, ["x/b"]);
    }

    #[test]
    fn peers_are_found_by_namespace_even_where_names_share_a_prefix() {
        let mut s = PolicyState::new("n1");
        let in_ns = |ns: &str, ip: &str| {
            json!({"metadata":{"name":"p","namespace":ns,"labels":{"app":"a"}},
                   "spec":{"nodeName":"n2"},"status":{"phase":"Running","podIP":ip}})
        };
        s.apply(
            Resource::Pods,
            Change::Reset(vec![
                pod("a", "n1", "10.32.0.1"),
                in_ns("x", "10.32.1.1"),
                in_ns("x-1", "10.32.1.2"),
                in_ns("x0", "10.32.1.3"),
                in_ns("w", "10.32.1.4"),
            ]),
        );
        let from = |peer: serde_json::Value| {
            json!({"metadata":{"name":"p","namespace":"x"},
                   "spec":{"podSelector":{},"ingress":[{"from":[peer]}]}})
        };
        let own = from(json!({"podSelector":{"matchLabels":{"app":"a"}}}));
        s.apply(Resource::NetworkPolicies, Change::Upsert(own));
        let allowed: Vec<bool> = ["10.32.1.1", "10.32.1.2", "10.32.1.3", "10.32.1.4"]
            .iter()
            .map(|peer| ingress(&s, "x/a", peer, 80) != Decision::Denied)
            .collect();
        assert_eq!(allowed, [true, false, false, false]);
        let not_x = json!({"namespaceSelector":{"matchExpressions":[
            {"key":"kubernetes.io/metadata.name","operator":"NotIn","values":["x"]}]},
            "podSelector":{"matchLabels":{"app":"a"}}});
        s.apply(Resource::NetworkPolicies, Change::Upsert(from(not_x)));
        let allowed: Vec<bool> = ["10.32.1.1", "10.32.1.2", "10.32.1.3", "10.32.1.4"]
            .iter()
            .map(|peer| ingress(&s, "x/a", peer, 80) != Decision::Denied)
            .collect();
        assert_eq!(allowed, [false, true, true, true]);
    }

    #[test]
    fn a_relist_forgets_what_is_gone() {
        let mut s = PolicyState::new("n1");
        s.apply(Resource::Pods, Change::Upsert(pod("a", "n1", "10.32.0.1")));
        s.apply(Resource::NetworkPolicies, Change::Upsert(deny_all("old")));
        s.apply(Resource::NetworkPolicies, Change::Reset(vec![]));
        assert!(!s.render().text().contains("default deny of x"));
        s.apply(Resource::Pods, Change::Reset(vec![]));
        assert!(s.cluster().pod("x/a").is_none());
    }

    #[test]
    fn an_address_two_pods_claim_goes_to_the_one_this_node_allocated_it_to() {
        // x/old is still in the API with 10.32.0.3 (terminating), which the
        // IPAM has given to x/new; x/stale claims 10.32.0.9 along with x/a,
        // neither allocated here: the first in key order keeps it. Before,
        // both got a map element each and nft refused the whole table.
        let mut s = PolicyState::new("n1");
        s.apply(
            Resource::Pods,
            Change::Reset(vec![
                pod("old", "n1", "10.32.0.3"),
                pod("new", "n1", "10.32.0.3"),
                pod("stale", "n1", "10.32.0.9"),
                pod("a", "n1", "10.32.0.9"),
            ]),
        );
        s.add_allocation("x/new", ip("10.32.0.3"));
        s.apply(Resource::NetworkPolicies, Change::Upsert(deny_all("deny")));
        let ips = |key: &str| {
            s.local_pods()
                .into_iter()
                .find(|p| p.key() == key)
                .map(|p| p.ips)
                .unwrap()
        };
        assert_eq!(ips("x/new"), vec![ip("10.32.0.3")]);
        assert!(ips("x/old").is_empty());
        assert_eq!(ips("x/a"), vec![ip("10.32.0.9")]);
        assert!(ips("x/stale").is_empty());
        let text = s.render().text();
        for addr in ["10.32.0.3", "10.32.0.9"] {
            assert_eq!(text.matches(&format!("{addr} : jump")).count(), 1, "{text}");
        }
    }

    /// Issue 18's scale point, measured (print with `--nocapture`): 1,000
    /// policies over 10,000 pods in 100 namespaces, this node's 100 pods
    /// compiled, flattened and rendered. Ignored (a measurement): 0.26 s
    /// (parse and store 0.1 s) on the shared, loaded 2-core machine, with
    /// peer sets cached per rule for a render and a rule's pods read
    /// namespace by namespace (1.7 s when each rule scanned every pod, 33 s
    /// before the cache); the goal is 1 s.
    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn a_thousand_policies_over_ten_thousand_pods_compile_for_a_node_in_bounded_time() {
        let case = crate::policy::scale::scale_case(
            |i| std::net::Ipv4Addr::new(10, 32, (i / 250) as u8, (i % 250 + 1) as u8),
            |i| format!("node-{}", i / 100),
        );
        let (namespaces, pods, policies) = (case.namespaces, case.pods, case.policies);
        let mut s = PolicyState::new("node-0");
        let start = std::time::Instant::now();
        s.apply(Resource::Namespaces, Change::Reset(namespaces));
        s.apply(Resource::Pods, Change::Reset(pods));
        s.apply(Resource::NetworkPolicies, Change::Reset(policies));
        let parsed = start.elapsed();
        let start = std::time::Instant::now();
        let text = s.render().text();
        let compiled = start.elapsed();
        eprintln!(
            "1000 policies, 10000 pods: parse+store {parsed:?}, compile+flatten+render for 100 local pods {compiled:?}, {} bytes of nft text",
            text.len()
        );
        assert!(s.skipped().is_empty());
        // Every local pod is isolated for ingress (the policies have no
        // egress rules).
        assert_eq!(text.matches(" : jump pod_").count(), 100);
        assert!(compiled < std::time::Duration::from_secs(1), "{compiled:?}");
    }
}
