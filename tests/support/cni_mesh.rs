//! Real routers on netns nodes, fully meshed and ready to allocate, for the
//! tests that plug pods with the CNI plugin or through a container runtime
//! (tests/cni.rs, tests/cri.rs).

use super::cni::{Call, invoke, net_conf, netns_path};
use super::{Cluster, Netns, Router, wait_until};
use std::net::Ipv4Addr;
use std::time::Duration;
use weft::api::client::call;
use weft::api::proto::{Allocation, AllocationList, Request};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// The router binary: this build's, or `WEFT_TEST_ROUTER_BIN` (a router
/// built from another tree, to try the plugin against it).
pub fn weft_bin() -> std::path::PathBuf {
    std::env::var_os("WEFT_TEST_ROUTER_BIN").map_or_else(|| WEFT.into(), Into::into)
}

/// Real routers, one per node, fully meshed and ready to allocate.
pub struct Mesh {
    // Runtimes and routers drop before the cluster's namespaces.
    pub routers: Vec<Router>,
    pub cluster: Cluster,
}

pub fn mesh(count: usize) -> Mesh {
    mesh_on(Cluster::new(count), |_| {})
}

/// [`mesh`] on nodes made beforehand, each router changed by `tweak`
/// before it starts (extra flags, environment).
pub fn mesh_on(mut cluster: Cluster, tweak: impl Fn(&mut Router)) -> Mesh {
    let count = cluster.nodes.len();
    let names: Vec<String> = (0..count).map(|i| format!("n{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut routers: Vec<Router> = (0..count)
        .map(|i| {
            let peers: Vec<Ipv4Addr> = (0..count)
                .filter(|j| *j != i)
                .map(|j| cluster.nodes[j].underlay)
                .collect();
            Router::new(
                &weft_bin(),
                &cluster.nodes[i],
                &cluster.dir.path,
                &peers,
                &name_refs,
            )
        })
        .collect();
    for r in &mut routers {
        tweak(r);
        r.start();
    }
    let up = wait_until(Duration::from_secs(15), || {
        routers.iter().all(|r| r.established_peers() == count - 1)
    });
    assert!(up, "routers did not establish:\n{}", routers[0].log_tail());
    // Ready = the plugin's STATUS succeeds (the router answers Ready).
    for (i, r) in routers.iter().enumerate() {
        let status = Call::new("STATUS", "", "");
        let conf = net_conf("1.1.0", &r.api());
        let ready = wait_until(Duration::from_secs(20), || {
            invoke(&cluster.nodes[i].ns, &status, &conf).code == 0
        });
        assert!(
            ready,
            "router {} never became ready: {:?}\n{}",
            r.name,
            invoke(&cluster.nodes[i].ns, &status, &conf),
            r.log_tail()
        );
    }
    // Keep the pod list empty: pods here are plugged by the plugin only.
    cluster.pods.clear();
    Mesh { routers, cluster }
}

pub fn allocations(r: &Router) -> Vec<Allocation> {
    let reply = call(
        &r.api(),
        &Request::List { container_id: None },
        Duration::from_secs(5),
    )
    .expect("list");
    assert!(reply.ok, "list failed: {reply:?}");
    let list: AllocationList = serde_json::from_value(reply.result.unwrap()).unwrap();
    list.allocations
}

/// CNI ADD of pod `name` (`namespace/pod`) in `netns` on `node`, with the
/// `K8S_POD_*` arguments kubelet passes: its address.
pub fn plug_k8s_pod(m: &Mesh, node: usize, name: &str, netns: &Netns) -> Ipv4Addr {
    address_of(&plug_k8s_pod_result(m, node, name, netns))
}

/// The IPv4 address of a CNI ADD result (its first `ips` entry).
pub fn address_of(result: &serde_json::Value) -> Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .parse()
        .unwrap()
}

/// [`plug_k8s_pod`]'s ADD, returning the plugin's whole result (a
/// dual-stack pod's has both addresses).
pub fn plug_k8s_pod_result(m: &Mesh, node: usize, name: &str, netns: &Netns) -> serde_json::Value {
    let (namespace, pod) = name.split_once('/').unwrap();
    let mut add = Call::new("ADD", &format!("cid-{namespace}-{pod}"), &netns_path(netns));
    add.extra_env.push((
        "CNI_ARGS".into(),
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}"),
    ));
    let conf = net_conf("1.0.0", &m.routers[node].api());
    invoke(&m.cluster.nodes[node].ns, &add, &conf).ok()
}
