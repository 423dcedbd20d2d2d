//! Issue 18's scale case as API objects: 1,000 policies over 10,000 pods in
//! 100 namespaces. Shared by the compile-time measurement
//! (`state::tests::a_thousand_policies…`) and the throughput bench
//! (tests/policy_bench.rs), so both load the same cluster.
//!
//! Pod `i` is `ns{i % 100}/p{i}` with `app: app{i % 10}`; namespace `n` has
//! `team: t{n % 5}`. Policy `k` (`ns{k % 100}/pol{k}`) selects `app{k % 10}`
//! and lets in, on TCP 80-81 and UDP 53, pods `app{(k + 1) % 10}` of the
//! namespaces of team `t{k % 5}` and 192.0.2.0/24 except its upper half.

use serde_json::{Value, json};
use std::net::Ipv4Addr;

/// Pods, namespaces, policies.
pub const PODS: u32 = 10_000;
/// Namespaces.
pub const NAMESPACES: u32 = 100;
/// Policies.
pub const POLICIES: u32 = 1_000;

/// The objects, as the API server lists them.
#[derive(Clone, Debug)]
pub struct ScaleCase {
    /// `NAMESPACES` namespaces.
    pub namespaces: Vec<Value>,
    /// `PODS` pods, pod `i` on `node(i)` at `ip(i)`.
    pub pods: Vec<Value>,
    /// `POLICIES` policies.
    pub policies: Vec<Value>,
}

/// The case, pod `i` at `ip(i)` on node `node(i)`.
pub fn scale_case(ip: impl Fn(u32) -> Ipv4Addr, node: impl Fn(u32) -> String) -> ScaleCase {
    ScaleCase {
        namespaces: (0..NAMESPACES).map(namespace).collect(),
        pods: (0..PODS)
            .map(|i| {
                pod(
                    &format!("ns{}", i % NAMESPACES),
                    &format!("p{i}"),
                    &format!("app{}", i % 10),
                    &node(i),
                    ip(i),
                )
            })
            .collect(),
        policies: (0..POLICIES).map(policy).collect(),
    }
}

/// Namespace `ns{n}`.
pub fn namespace(n: u32) -> Value {
    json!({"kind":"Namespace","metadata":{"name":format!("ns{n}"),"labels":{"team":format!("t{}", n % 5)}}})
}

/// A running pod with label `app`.
pub fn pod(namespace: &str, name: &str, app: &str, node: &str, ip: Ipv4Addr) -> Value {
    json!({"kind":"Pod","metadata":{"name":name,"namespace":namespace,"labels":{"app":app}},
           "spec":{"nodeName":node},
           "status":{"phase":"Running","podIP":ip.to_string()}})
}

/// Policy `pol{k}`.
pub fn policy(k: u32) -> Value {
    json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
           "metadata":{"name":format!("pol{k}"),"namespace":format!("ns{}", k % NAMESPACES)},
           "spec":{"podSelector":{"matchLabels":{"app":format!("app{}", k % 10)}},
             "ingress":[{"from":[
                {"namespaceSelector":{"matchLabels":{"team":format!("t{}", k % 5)}},
                 "podSelector":{"matchLabels":{"app":format!("app{}", (k + 1) % 10)}}},
                {"ipBlock":{"cidr":"192.0.2.0/24","except":["192.0.2.128/25"]}}],
               "ports":[{"port":80,"endPort":81},{"protocol":"UDP","port":53}]}]}})
}
