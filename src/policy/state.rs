//! The router's view of the cluster for policy: the watchers' changes
//! applied to a [`Cluster`], objects that cannot be used counted and named,
//! and the table for this node's pods rendered on demand. Pure; the driver
//! owns the watchers, `nft` and the clock.
//!
//! A policy that cannot be compiled is skipped with its reason
//! ([`PolicyState::skipped`]); if an earlier version of it compiled, that
//! version stays in force rather than opening its pods (never fail open).
//! The local pods are those whose `spec.nodeName` is this node's name (the
//! name the router has from the downward API, the same the CNI allocations
//! carry).

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
}

impl PolicyState {
    /// An empty state for the node called `node`.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.into(),
            cluster: Cluster::new(),
            skipped: BTreeMap::new(),
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
            Resource::Pods => model::parse::<Pod>(&bytes)
                .map(|pod| self.cluster.upsert_pod(PodInfo::from_api(&pod))),
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

    /// The table for this node's pods.
    pub fn render(&self) -> Rendered {
        let mut cache = super::compile::PeerCache::default();
        let pods: Vec<LocalPod> = self
            .cluster
            .pods_on(&self.node)
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
        let text = s.render().text;
        assert!(text.contains("10.32.0.1 : jump pod_0_in"), "{text}");
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
        assert!(s.render().text.contains("default deny of x"));
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
            s.render().text.contains("default deny of x"),
            "never fail open"
        );
        s.apply(Resource::NetworkPolicies, Change::Delete(deny_all("deny")));
        assert!(!s.render().text.contains("default deny of x"));
        assert!(s.skipped().is_empty());
    }

    #[test]
    fn a_relist_forgets_what_is_gone() {
        let mut s = PolicyState::new("n1");
        s.apply(Resource::Pods, Change::Upsert(pod("a", "n1", "10.32.0.1")));
        s.apply(Resource::NetworkPolicies, Change::Upsert(deny_all("old")));
        s.apply(Resource::NetworkPolicies, Change::Reset(vec![]));
        assert!(!s.render().text.contains("default deny of x"));
        s.apply(Resource::Pods, Change::Reset(vec![]));
        assert!(s.cluster().pod("x/a").is_none());
    }

    /// Issue 18's scale point, measured (print with `--nocapture`): 1,000
    /// policies over 10,000 pods in 100 namespaces, this node's 100 pods
    /// compiled, flattened and rendered. Ignored (a measurement): 1.7 s
    /// (parse and store 0.07 s) on the shared 2-core machine with peer sets
    /// cached per rule for a render and namespace selectors evaluated once
    /// per namespace (33 s before); the 1 s goal is not met yet: each rule
    /// still scans every pod once (see docs/ARCHITECTURE.md "Not yet").
    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn a_thousand_policies_over_ten_thousand_pods_compile_for_a_node_in_bounded_time() {
        let pods: Vec<serde_json::Value> = (0..10_000u32)
            .map(|i| {
                json!({"metadata":{"name":format!("p{i}"),"namespace":format!("ns{}", i % 100),
                        "labels":{"app":format!("app{}", i % 10)}},
                       "spec":{"nodeName":format!("node-{}", i / 100)},
                       "status":{"phase":"Running","podIP":format!("10.32.{}.{}", i / 250, i % 250 + 1)}})
            })
            .collect();
        let namespaces: Vec<serde_json::Value> = (0..100)
            .map(|n| json!({"metadata":{"name":format!("ns{n}"),"labels":{"team":format!("t{}", n % 5)}}}))
            .collect();
        let policies: Vec<serde_json::Value> = (0..1_000)
            .map(|k| {
                json!({"metadata":{"name":format!("pol{k}"),"namespace":format!("ns{}", k % 100)},
                       "spec":{"podSelector":{"matchLabels":{"app":format!("app{}", k % 10)}},
                         "ingress":[{"from":[
                            {"namespaceSelector":{"matchLabels":{"team":format!("t{}", k % 5)}},
                             "podSelector":{"matchLabels":{"app":format!("app{}", (k + 1) % 10)}}},
                            {"ipBlock":{"cidr":"192.0.2.0/24","except":["192.0.2.128/25"]}}],
                           "ports":[{"port":80,"endPort":81},{"protocol":"UDP","port":53}]}]}})
            })
            .collect();
        let mut s = PolicyState::new("node-0");
        let start = std::time::Instant::now();
        s.apply(Resource::Namespaces, Change::Reset(namespaces));
        s.apply(Resource::Pods, Change::Reset(pods));
        s.apply(Resource::NetworkPolicies, Change::Reset(policies));
        let parsed = start.elapsed();
        let start = std::time::Instant::now();
        let rendered = s.render();
        let compiled = start.elapsed();
        eprintln!(
            "1000 policies, 10000 pods: parse+store {parsed:?}, compile+flatten+render for 100 local pods {compiled:?}, {} bytes of nft text",
            rendered.text.len()
        );
        assert!(s.skipped().is_empty());
        assert!(rendered.text.contains("jump pod_99_in"));
        assert!(
            compiled < std::time::Duration::from_secs(10),
            "{compiled:?}"
        );
    }
}
