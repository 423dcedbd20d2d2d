//! The `networking.k8s.io/v1` NetworkPolicy, `v1` Pod and `v1` Namespace
//! fields the policy compiler reads, as our own serde types (DESIGN.md
//! "NetworkPolicy"; issue 18).
//!
//! Parsed from the JSON of real objects, which is hostile input: the text is
//! bounded before it is parsed, unknown fields are ignored, every list has a
//! ceiling ([`Limits`]), and nothing here panics. Owns only the shapes and
//! their bounds; what the fields mean is [`super::compile`]'s.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// The largest object accepted (etcd's own limit is about 1.5 MB).
pub const MAX_OBJECT_BYTES: usize = 1 << 20;

/// Ceilings on the lists inside one object, so that a policy cannot make
/// the compiler's work (or the nftables maps) unbounded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Labels on one object, entries in one `matchLabels`, expressions in
    /// one selector, values in one expression.
    pub labels: usize,
    /// Ingress plus egress rules of one policy.
    pub rules: usize,
    /// Peers or ports in one rule; `except` entries in one ipBlock.
    pub per_rule: usize,
    /// Containers times ports of one pod.
    pub container_ports: usize,
}

/// The ceilings used by the router.
pub const LIMITS: Limits = Limits {
    labels: 256,
    rules: 256,
    per_rule: 256,
    container_ports: 1024,
};

/// Why an object was not taken. Nothing is changed by a refused object:
/// the previous version of it (if any) stays as it was.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ObjectError {
    /// More bytes than [`MAX_OBJECT_BYTES`].
    #[error("object of {0} bytes is larger than the {MAX_OBJECT_BYTES} accepted")]
    TooLarge(usize),
    /// Not JSON of the expected kind.
    #[error("not a valid object: {0}")]
    Malformed(String),
    /// A list longer than its ceiling in [`Limits`].
    #[error("{what} has {count} entries, more than the {limit} accepted")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// How long it is.
        count: usize,
        /// Its ceiling.
        limit: usize,
    },
    /// A field whose value the compiler cannot use (the message names it).
    #[error("{0}")]
    Invalid(String),
}

/// `metadata`, the part of it we read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct Metadata {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (empty for a Namespace).
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `metadata.resourceVersion`, for the watch.
    pub resource_version: String,
}

/// A `LabelSelector`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct LabelSelector {
    /// All of these labels, with these values.
    pub match_labels: Labels,
    /// All of these requirements.
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values for `In` and `NotIn`.
    pub values: Vec<String>,
}

/// A `NetworkPolicy`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct NetworkPolicy {
    /// Name and namespace.
    pub metadata: Metadata,
    /// What it says.
    pub spec: PolicySpec,
}

/// `NetworkPolicy.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PolicySpec {
    /// The pods of the policy's namespace it selects (empty: all).
    pub pod_selector: LabelSelector,
    /// `Ingress`, `Egress`; absent means Ingress, plus Egress when there
    /// are egress rules.
    pub policy_types: Option<Vec<String>>,
    /// Allowed sources.
    pub ingress: Vec<PolicyRule>,
    /// Allowed destinations.
    pub egress: Vec<PolicyRule>,
}

/// An ingress or egress rule: `from`/`to` peers and ports (empty: all).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PolicyRule {
    /// `from` of an ingress rule.
    pub from: Vec<PolicyPeer>,
    /// `to` of an egress rule.
    pub to: Vec<PolicyPeer>,
    /// The ports.
    pub ports: Vec<PolicyPort>,
}

/// A `NetworkPolicyPeer`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PolicyPeer {
    /// Pods (of the policy's namespace unless `namespace_selector`).
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces.
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses.
    pub ip_block: Option<IpBlock>,
}

/// An `IPBlock`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct IpBlock {
    /// The block.
    pub cidr: String,
    /// Parts of it left out.
    pub except: Vec<String>,
}

/// A `NetworkPolicyPort`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PolicyPort {
    /// `TCP` (the default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
    /// A number or a container port's name; absent means every port.
    pub port: Option<IntOrString>,
    /// The last port of a range starting at the numeric `port`.
    pub end_port: Option<i64>,
}

/// Kubernetes' `IntOrString`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A name.
    Str(String),
}

/// A `Pod`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Pod {
    /// Name, namespace, labels.
    pub metadata: Metadata,
    /// Node and container ports.
    pub spec: PodSpec,
    /// Phase and addresses.
    pub status: PodStatus,
}

/// `Pod.spec`, the part we read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    /// Where it runs.
    pub node_name: String,
    /// A pod in the host's network namespace has the node's address, not
    /// an identity of its own.
    pub host_network: bool,
    /// Its containers (for named ports).
    pub containers: Vec<Container>,
}

/// A container, the part we read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Container {
    /// The ports it declares.
    pub ports: Vec<ContainerPort>,
}

/// A `ContainerPort`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerPort {
    /// The name a policy may use.
    pub name: String,
    /// The number.
    pub container_port: i64,
    /// `TCP` (the default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
}

/// `Pod.status`, the part we read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: String,
    /// The first address.
    #[serde(rename = "podIP")]
    pub pod_ip: String,
    /// Every address.
    #[serde(rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
}

/// One of `podIPs`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct PodIp {
    /// The address.
    pub ip: String,
}

/// A `Namespace`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Namespace {
    /// Name and labels.
    pub metadata: Metadata,
}

/// Parses one object from JSON, bounded and checked against [`LIMITS`].
pub fn parse<T: for<'de> Deserialize<'de> + Bounded>(json: &[u8]) -> Result<T, ObjectError> {
    if json.len() > MAX_OBJECT_BYTES {
        return Err(ObjectError::TooLarge(json.len()));
    }
    let object: T =
        serde_json::from_slice(json).map_err(|e| ObjectError::Malformed(e.to_string()))?;
    object.check(&LIMITS)?;
    Ok(object)
}

/// An object whose lists have ceilings.
pub trait Bounded {
    /// `Err` naming the first list over its ceiling.
    fn check(&self, limits: &Limits) -> Result<(), ObjectError>;
}

fn at_most(what: &'static str, count: usize, limit: usize) -> Result<(), ObjectError> {
    if count > limit {
        return Err(ObjectError::TooMany { what, count, limit });
    }
    Ok(())
}

impl LabelSelector {
    fn check(&self, limits: &Limits) -> Result<(), ObjectError> {
        at_most("matchLabels", self.match_labels.len(), limits.labels)?;
        at_most(
            "matchExpressions",
            self.match_expressions.len(),
            limits.labels,
        )?;
        for expression in &self.match_expressions {
            at_most(
                "an expression's values",
                expression.values.len(),
                limits.labels,
            )?;
        }
        Ok(())
    }
}

impl Bounded for NetworkPolicy {
    fn check(&self, limits: &Limits) -> Result<(), ObjectError> {
        let spec = &self.spec;
        spec.pod_selector.check(limits)?;
        at_most(
            "rules",
            spec.ingress.len() + spec.egress.len(),
            limits.rules,
        )?;
        for rule in spec.ingress.iter().chain(&spec.egress) {
            at_most("peers", rule.from.len() + rule.to.len(), limits.per_rule)?;
            at_most("ports", rule.ports.len(), limits.per_rule)?;
            for peer in rule.from.iter().chain(&rule.to) {
                for selector in [&peer.pod_selector, &peer.namespace_selector]
                    .into_iter()
                    .flatten()
                {
                    selector.check(limits)?;
                }
                if let Some(block) = &peer.ip_block {
                    at_most("except", block.except.len(), limits.per_rule)?;
                }
            }
        }
        Ok(())
    }
}

impl Bounded for Pod {
    fn check(&self, limits: &Limits) -> Result<(), ObjectError> {
        at_most("labels", self.metadata.labels.len(), limits.labels)?;
        let ports: usize = self.spec.containers.iter().map(|c| c.ports.len()).sum();
        at_most("container ports", ports, limits.container_ports)?;
        at_most("podIPs", self.status.pod_ips.len(), 8)
    }
}

impl Bounded for Namespace {
    fn check(&self, limits: &Limits) -> Result<(), ObjectError> {
        at_most("labels", self.metadata.labels.len(), limits.labels)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_real_policy_parses_and_unknown_fields_are_ignored() {
        let json = br#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
          "metadata":{"name":"allow-y","namespace":"x","uid":"u","managedFields":[{"x":1}]},
          "spec":{"podSelector":{"matchLabels":{"pod":"a"}},"policyTypes":["Ingress"],
            "ingress":[{"from":[{"namespaceSelector":{"matchExpressions":[
              {"key":"ns","operator":"In","values":["y"]}]}},
              {"ipBlock":{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}}],
              "ports":[{"port":"serve-80-tcp"},{"protocol":"UDP","port":80,"endPort":81}]}],
            "somethingNew":true}}"#;
        let policy: NetworkPolicy = parse(json).unwrap();
        assert_eq!(policy.metadata.name, "allow-y");
        let rule = &policy.spec.ingress[0];
        assert_eq!(rule.from.len(), 2);
        assert_eq!(
            rule.ports[0].port,
            Some(IntOrString::Str("serve-80-tcp".into()))
        );
        assert_eq!(rule.ports[1].port, Some(IntOrString::Int(80)));
        assert_eq!(rule.ports[1].end_port, Some(81));
    }

    #[test]
    fn a_real_pod_parses_with_its_addresses_and_named_ports() {
        let json = br#"{"kind":"Pod","metadata":{"name":"a","namespace":"x","labels":{"pod":"a"}},
          "spec":{"nodeName":"n1","containers":[{"name":"c","image":"i",
            "ports":[{"name":"serve-80-tcp","containerPort":80,"protocol":"TCP"}]}]},
          "status":{"phase":"Running","podIP":"10.32.0.5","podIPs":[{"ip":"10.32.0.5"}]}}"#;
        let pod: Pod = parse(json).unwrap();
        assert_eq!(pod.spec.node_name, "n1");
        assert_eq!(pod.spec.containers[0].ports[0].container_port, 80);
        assert_eq!(pod.status.pod_ips[0].ip, "10.32.0.5");
    }

    #[test]
    fn an_oversized_or_broken_object_is_refused_without_panicking() {
        let big = vec![b' '; MAX_OBJECT_BYTES + 1];
        assert!(matches!(parse::<Pod>(&big), Err(ObjectError::TooLarge(_))));
        for bad in [&b"{"[..], b"7", b"{\"spec\":{\"ingress\":7}}", b"\xff"] {
            assert!(matches!(
                parse::<NetworkPolicy>(bad),
                Err(ObjectError::Malformed(_))
            ));
        }
    }

    #[test]
    fn a_policy_with_too_many_rules_is_refused() {
        let rules: Vec<String> = (0..300).map(|_| "{}".to_string()).collect();
        let json = format!(
            r#"{{"metadata":{{"name":"p","namespace":"x"}},"spec":{{"ingress":[{}]}}}}"#,
            rules.join(",")
        );
        assert!(matches!(
            parse::<NetworkPolicy>(json.as_bytes()),
            Err(ObjectError::TooMany { what: "rules", .. })
        ));
    }
}
