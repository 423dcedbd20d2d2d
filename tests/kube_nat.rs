//! `--peers-from-kube` across NAT sites (issue 16): the DaemonSet's
//! router, unchanged, on nodes in three sites whose Nodes list a private
//! InternalIP (unreachable from the other sites) and, behind 1:1 NAT, a
//! public ExternalIP; no annotation anywhere. The routers start with the
//! DaemonSet's arguments and environment (deploy/daemonset.yaml and
//! deploy/configmap.yaml, as the kubelet resolves them; default
//! `--ipalloc-init`), listening on the node's private address, and find
//! each other only through a fake API server on the "internet". The ring
//! starts, every pod reaches every other, every pair is direct (private
//! within a site, public across), each router holds one connection per
//! other router, and all agree on one ring.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use support::fake_api::{FakeApi, NODES};
use support::manifest::{container_env, pod_spec, strings};
use support::nat::{NatKind, World, nat_pods_reach_each_other};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// Where the fake API server listens: on the internet segment, reached by
/// every node through its gateway (the test's namespaces only).
const API: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 250);

/// A Node as the kubelet registers it: its private address as InternalIP,
/// its public one (if any) as ExternalIP.
fn node_object(name: &str, internal: Ipv4Addr, external: Option<Ipv4Addr>) -> String {
    let mut addresses =
        vec![serde_json::json!({"type": "InternalIP", "address": internal.to_string()})];
    if let Some(e) = external {
        addresses.push(serde_json::json!({"type": "ExternalIP", "address": e.to_string()}));
    }
    addresses.push(serde_json::json!({"type": "Hostname", "address": name}));
    serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "addresses": addresses,
            "conditions": [{"type": "Ready", "status": "False"}],
        },
    })
    .to_string()
}

/// The router of the DaemonSet's pod on `node`: the container's arguments
/// and environment from deploy/, with only the node's paths moved into the
/// test's directory and the API server's URL (which the kubelet gives a
/// pod as `KUBERNETES_SERVICE_*`, over https) given as `WEFT_KUBE_API`.
fn daemonset_router(node: &Node, dir: &Path) -> Router {
    let mut r = Router::new(Path::new(BIN), node, dir, &[], &[]);
    let mut args = vec!["router".to_string()];
    args.extend(strings(&pod_spec()["containers"][0]["args"]));
    r.args = args;
    let paths = [
        ("WEFT_SECRET_FILE", r.dir.join("secret")),
        ("WEFT_STATE_DIR", r.dir.join("state")),
        ("WEFT_API", r.api()),
    ];
    r.env = container_env(&node.name, &node.underlay.to_string())
        .into_iter()
        .map(|(k, v)| match paths.iter().find(|(p, _)| *p == k) {
            Some((_, path)) => (k, path.display().to_string()),
            None => (k, v),
        })
        .collect();
    r.env
        .push(("WEFT_KUBE_API".into(), format!("http://{API}:8080")));
    r
}

fn ring_genesis(r: &Router) -> Option<String> {
    r.status()?["ipam"]["genesis"].as_str().map(str::to_string)
}

/// How many connections `r` holds to each peer, by name (the lines of
/// dials that found no router, such as another site's InternalIP, name
/// none).
fn connections_by_peer(r: &Router) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in r
        .status()
        .and_then(|s| s["connections"].as_array().cloned())
        .unwrap_or_default()
    {
        let peer = c["peer"].as_str().unwrap_or("");
        if !peer.is_empty() {
            *out.entry(peer.to_string()).or_default() += 1;
        }
    }
    out
}

#[test]
fn the_daemonset_meshes_nodes_in_three_nat_sites_from_the_node_list_alone() {
    if !require_root("the_daemonset_meshes_nodes_in_three_nat_sites_from_the_node_list_alone") {
        return;
    }
    // Two sites of cloud VMs with public addresses (1:1 NAT), one behind
    // a masquerading gateway (no public address: no ExternalIP).
    let world = World::new(&[
        (NatKind::OneToOne, 2),
        (NatKind::Masquerade, 2),
        (NatKind::OneToOne, 1),
    ]);
    world
        .internet()
        .ip(&["addr", "add", &format!("{API}/24"), "dev", "br0"]);
    let api = FakeApi::start(&world.internet().name, SocketAddr::from((API, 8080)));
    let site_of: Vec<usize> = world
        .sites
        .iter()
        .enumerate()
        .flat_map(|(k, s)| std::iter::repeat_n(k, s.nodes.len()))
        .collect();
    for site in &world.sites {
        for (i, node) in site.nodes.iter().enumerate() {
            api.put(
                NODES,
                &node_object(&node.name, node.underlay, site.public.get(i).copied()),
            );
        }
    }

    let dir = TempDir::new("kubenat");
    let mut routers: Vec<Router> = world
        .nodes()
        .map(|n| daemonset_router(n, &dir.path))
        .collect();
    let started = Instant::now();
    for r in &mut routers {
        r.start();
    }
    let names: Vec<String> = routers.iter().map(|r| r.name.clone()).collect();

    // The ring starts: the voters are the listed Nodes, one each, whatever
    // address reached them; every router holds the same genesis.
    let ring = wait_until(Duration::from_secs(30), || {
        routers.iter().all(|r| ring_genesis(r).is_some())
    });
    assert!(
        ring,
        "the ring did not start within 30 s: {:#?}\n{}",
        routers
            .iter()
            .map(|r| (r.name.clone(), r.status().map(|s| s["ipam"].clone())))
            .collect::<Vec<_>>(),
        routers[2].log_tail()
    );
    eprintln!("ring ready after {:?}", started.elapsed());
    let genesis: Vec<Option<String>> = routers.iter().map(ring_genesis).collect();
    assert!(
        genesis.iter().all(|g| *g == genesis[0]),
        "more than one ring: {genesis:?}"
    );

    // Every pod reaches every other.
    let pods = world.pods(&routers);
    nat_pods_reach_each_other(&routers, &pods, Duration::from_secs(20));
    eprintln!("full reachability after {:?}", started.elapsed());

    // Every pair is direct: each router of a site at its private address,
    // the others at their public ones (a 1:1 node dialled at its
    // ExternalIP, the masquerade site's routers dialling out). And one
    // connection per peer: a node's two addresses never make two.
    let n = routers.len();
    let expected = |a: usize, b: usize| {
        if site_of[a] == site_of[b] {
            "direct (private)"
        } else {
            "direct (public)"
        }
    };
    let table = || -> Vec<(String, String, String)> {
        (0..n)
            .flat_map(|a| (0..n).filter(move |b| *b != a).map(move |b| (a, b)))
            .map(|(a, b)| {
                (
                    names[a].clone(),
                    names[b].clone(),
                    path_to(&routers[a], &names[b]),
                )
            })
            .collect()
    };
    let one_each = |r: &Router| {
        let c = connections_by_peer(r);
        c.len() == n - 1 && c.values().all(|k| *k == 1)
    };
    let settled = wait_until(Duration::from_secs(30), || {
        let t = table();
        (0..n)
            .flat_map(|a| (0..n).filter(move |b| *b != a).map(move |b| (a, b)))
            .zip(&t)
            .all(|((a, b), (_, _, path))| path == expected(a, b))
            && routers.iter().all(one_each)
    });
    let shown: Vec<String> = table()
        .iter()
        .map(|(a, b, p)| format!("{a} -> {b}: {p}"))
        .collect();
    eprintln!("{}", shown.join("\n"));
    assert!(
        settled,
        "paths or connections not as expected after 30 s:\n{}\n{:#?}",
        shown.join("\n"),
        routers
            .iter()
            .map(|r| (r.name.clone(), connections_by_peer(r)))
            .collect::<Vec<_>>()
    );
    eprintln!("all direct after {:?}", started.elapsed());

    // No annotation was needed: the seeds came from the Nodes' addresses,
    // a 1:1 node's ExternalIP beside its InternalIP.
    let log = std::fs::read_to_string(routers[2].log_path()).unwrap();
    let public = world.sites[0].public[0];
    let internal = world.sites[0].nodes[0].underlay;
    assert!(
        log.contains(&format!("{internal}:6783 also at [{public}:6783]")),
        "{log}"
    );
}
