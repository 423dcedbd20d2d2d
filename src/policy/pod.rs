//! What the policy compiler knows of one pod ([`PodInfo`]): from the API
//! server's Pod object, or, for a local pod the API does not show yet, from
//! its address allocation (see `super::state`).

use super::addrs::{Addr, addr};
use super::compile::Proto;
use super::model::{Labels, Pod};
use std::net::IpAddr;

/// What the compiler knows of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its addresses of both families (`super::addrs`; none: not a peer).
    pub ips: Vec<Addr>,
    /// Its named container ports.
    pub ports: Vec<(String, Proto, u16)>,
    /// The node it runs on.
    pub node: String,
    /// False for a local pod known only from its allocation (CNI ADD), not
    /// yet from the API: see [`Cluster::rules_for`].
    pub labels_known: bool,
    /// The API shows no address yet for a pod that will have one (not
    /// host-network, not finished): its allocation's address may stand in.
    pub awaiting_ip: bool,
}

impl PodInfo {
    /// What a Pod object says. Host-network and finished pods get no
    /// addresses: theirs are not theirs (the node's, or reused).
    pub fn from_api(pod: &Pod) -> Self {
        let finished = matches!(pod.status.phase.as_str(), "Succeeded" | "Failed");
        let mut ips: Vec<Addr> = if pod.spec.host_network || finished {
            Vec::new()
        } else {
            std::iter::once(&pod.status.pod_ip)
                .chain(pod.status.pod_ips.iter().map(|p| &p.ip))
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(addr)
                .collect()
        };
        ips.sort_unstable();
        ips.dedup();
        let ports = pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter(|p| !p.name.is_empty())
            .filter_map(|p| {
                Some((
                    p.name.clone(),
                    Proto::from_api(p.protocol.as_deref()).ok()?,
                    u16::try_from(p.container_port).ok()?,
                ))
            })
            .collect();
        Self {
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            labels: pod.metadata.labels.clone(),
            awaiting_ip: ips.is_empty() && !pod.spec.host_network && !finished,
            ips,
            ports,
            node: pod.spec.node_name.clone(),
            labels_known: true,
        }
    }

    /// A pod of `node` known only from its address allocation (kubelet's
    /// `K8S_POD_NAMESPACE`/`K8S_POD_NAME`): no labels, no ports yet.
    pub fn allocated(namespace: &str, name: &str, ips: Vec<Addr>, node: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            labels: Labels::new(),
            ips,
            ports: Vec::new(),
            node: node.into(),
            labels_known: false,
            awaiting_ip: false,
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub(super) fn named_port(&self, name: &str, proto: Proto) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| n == name && *p == proto)
            .map(|(_, _, port)| *port)
    }
}
