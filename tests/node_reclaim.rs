//! Lease-driven reclaim (issue 20): three routers with `--peers-from-kube`
//! against a fake API server speaking the real Node and Lease APIs. Each
//! holds a Lease it renews (and recovers from a 409); a killed router
//! whose Node is still there, or whose Node is deleted while its Lease is
//! still renewed (a router cut off from the mesh but not from the API), is
//! not reclaimed; once its Node is deleted and its Lease expires, exactly
//! one survivor takes its ranges; when it comes back with its state it
//! finds its tombstone and yields. Survivors that restart after the Node
//! was deleted (they never listed it) find it by its Lease. A live identity
//! switch renames the Lease without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use support::fake_api::{FakeApi, LEASES, NODES};
use support::ipam::{ipam, owned, routers, wait_ready};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// The Lease renewal period given to the routers (their Lease lasts four).
const RENEW_SECS: u64 = 1;
const LEASE: Duration = Duration::from_secs(RENEW_SECS * 4);
/// The namespace the routers put their Leases in (no service-account dir).
const NS: &str = "kube-system";
const TOOK_OVER: &str = "Node deleted and its Lease expired: took over";

fn log_of(r: &Router) -> String {
    std::fs::read_to_string(r.log_path()).unwrap_or_default()
}

fn size(ranges: &[(u32, u32)]) -> u64 {
    ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum()
}

fn node_object(name: &str, ip: Ipv4Addr) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
    .to_string()
}

/// A renewal of `name`'s Lease written by the test (the router cut off
/// from the mesh that still reaches the API).
fn lease_object(name: &str, renew: &str) -> String {
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE.as_secs(), "renewTime": renew},
    })
    .to_string()
}

fn renew_time(api: &FakeApi, name: &str) -> Option<String> {
    let lease = api.get(LEASES, &format!("{NS}/{name}"))?;
    assert_eq!(lease["spec"]["holderIdentity"], name);
    lease["spec"]["renewTime"].as_str().map(str::to_string)
}

fn reclaimers(rs: &[Router]) -> Vec<String> {
    rs.iter()
        .filter(|r| log_of(r).contains(TOOK_OVER))
        .map(|r| r.name.clone())
        .collect()
}

/// The fake API server with Nodes n0..n2 and three routers using it,
/// ready; the whole range is 2^16 addresses.
fn mesh(cluster: &Cluster) -> (FakeApi, Vec<Router>) {
    let api_addr = SocketAddr::from((cluster.nodes[0].underlay, 8080));
    let api = FakeApi::start(&cluster.nodes[0].ns.name, api_addr);
    for (i, node) in cluster.nodes.iter().enumerate() {
        api.put(NODES, &node_object(&format!("n{i}"), node.underlay));
    }
    let mut rs = routers(BIN, cluster, 3, |_| vec![0, 1, 2], None, "10.32.0.0/16");
    for r in &mut rs {
        r.args.extend([
            "--peers-from-kube".into(),
            "--kube-api".into(),
            format!("http://{api_addr}"),
        ]);
        r.env
            .push(("WEFT_KUBE_LEASE_SECS".into(), RENEW_SECS.to_string()));
        r.env.push(("WEFT_KUBE_RESYNC_SECS".into(), "1".into()));
        r.start();
    }
    wait_ready(&rs, Duration::from_secs(30));
    (api, rs)
}

const WHOLE: u64 = 1 << 16;

/// Waits until the survivors `rs` own the whole range, gives a second
/// reclaimer every chance (three more rounds), then checks that exactly
/// one of them reclaimed, once. Returns when the ranges were whole and who.
fn reclaimed_once(rs: &[Router]) -> (Instant, String) {
    let reclaimed = wait_until(Duration::from_secs(60), || {
        rs.iter().map(|r| size(&owned(r))).sum::<u64>() == WHOLE
    });
    let taken_at = Instant::now();
    assert!(
        reclaimed,
        "n2's ranges were not reclaimed: {:#?}\n{:#?}\n{}",
        ipam(&rs[0]),
        ipam(&rs[1]),
        rs[0].log_tail()
    );
    std::thread::sleep(Duration::from_secs(RENEW_SECS * 3));
    let by = reclaimers(rs);
    assert_eq!(by.len(), 1, "reclaimed by {by:?}");
    let lines = log_of(rs.iter().find(|r| r.name == by[0]).unwrap())
        .matches(TOOK_OVER)
        .count();
    assert_eq!(lines, 1, "{} reclaimed {lines} times", by[0]);
    (taken_at, by[0].clone())
}

#[test]
fn a_deleted_nodes_router_is_reclaimed_once_after_its_lease_expires_and_never_before() {
    if !require_root(
        "a_deleted_nodes_router_is_reclaimed_once_after_its_lease_expires_and_never_before",
    ) {
        return;
    }
    let cluster = Cluster::new(3);
    let (api, mut rs) = mesh(&cluster);

    // Every router creates its Lease and keeps renewing it.
    let first: Vec<Option<String>> = ["n0", "n1", "n2"]
        .iter()
        .map(|n| {
            assert!(
                wait_until(Duration::from_secs(30), || renew_time(&api, n).is_some()),
                "{n} holds no Lease: {}",
                rs[0].log_tail()
            );
            renew_time(&api, n)
        })
        .collect();
    for (i, n) in ["n0", "n1", "n2"].iter().enumerate() {
        assert!(
            wait_until(Duration::from_secs(30), || renew_time(&api, n) != first[i]),
            "{n} does not renew its Lease"
        );
    }
    // Someone else writes n0's Lease: n0's next PUT is stale (409), it
    // reads the Lease again and renews over it.
    let injected = "2000-01-01T00:00:00.000000Z";
    api.put(LEASES, &lease_object("n0", injected));
    assert!(
        wait_until(Duration::from_secs(30), || renew_time(&api, "n0")
            .is_some_and(|t| t != injected)),
        "n0 did not renew over a conflicting write: {}",
        rs[0].log_tail()
    );

    // n2 dies, its Node stays: however long its Lease is expired, nothing
    // is reclaimed (a dead kubelet is not a deleted node).
    rs[2].kill9();
    let noticed = wait_until(Duration::from_secs(30), || {
        rs[..2].iter().all(|r| {
            ipam(r)["unreachable_ranges"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
    });
    assert!(noticed, "{:#?}", ipam(&rs[0]));
    std::thread::sleep(LEASE * 2 + Duration::from_secs(2));
    assert!(
        reclaimers(&rs[..2]).is_empty(),
        "reclaimed with its Node present"
    );

    // Its Node is deleted while its Lease is still renewed (the router is
    // cut off from the mesh, not from the API): not reclaimed.
    let mut renewals = 0u32;
    let mut renew_n2 = || {
        renewals += 1;
        api.put(
            LEASES,
            &lease_object(
                "n2",
                &format!("2026-01-01T00:00:{:02}.000000Z", renewals % 60),
            ),
        );
    };
    renew_n2();
    let deleted = Instant::now();
    api.delete(NODES, "/n2");
    let until = Instant::now() + LEASE * 2 + Duration::from_secs(2);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(RENEW_SECS));
        renew_n2();
    }
    assert!(
        reclaimers(&rs[..2]).is_empty(),
        "reclaimed while its Lease was renewed"
    );
    assert!(size(&owned(&rs[0])) + size(&owned(&rs[1])) < WHOLE);

    // Nobody renews it any more: one survivor takes n2's ranges once the
    // Lease has expired.
    let last_renewal = Instant::now();
    let (taken_at, by) = reclaimed_once(&rs[..2]);
    let after_renewal = taken_at - last_renewal;
    assert!(
        after_renewal >= LEASE,
        "reclaimed {after_renewal:?} after the last renewal, before the {LEASE:?} Lease expired"
    );
    eprintln!(
        "Lease {LEASE:?}: n2's ranges taken by {by} {:?} after its Node was deleted, {after_renewal:?} after its Lease's last renewal",
        taken_at - deleted
    );

    // n2 comes back with its state: it finds its tombstone and yields.
    rs[2].start();
    let yielded = wait_until(Duration::from_secs(60), || {
        rs[2]
            .status()
            .is_some_and(|s| s["ipam"]["state"] == "tombstoned")
    });
    assert!(yielded, "{:#?}\n{}", rs[2].status(), rs[2].log_tail());
    assert_eq!(size(&owned(&rs[0])) + size(&owned(&rs[1])), WHOLE);
    assert!(owned(&rs[2]).is_empty(), "{:#?}", ipam(&rs[2]));
}

/// The survivors restart after n2's Node was deleted (a DaemonSet rollout
/// right after `kubectl delete node`): none of them ever listed n2's Node,
/// and their fresh topologies never saw n2. They find n2 by its Lease (the
/// weft Lease list) and its name by the router ID the Lease carries; one
/// of them reclaims once the Lease has gone unrenewed for its duration.
#[test]
fn routers_started_after_a_node_was_deleted_still_reclaim_its_router() {
    if !require_root("routers_started_after_a_node_was_deleted_still_reclaim_its_router") {
        return;
    }
    let cluster = Cluster::new(3);
    let (api, mut rs) = mesh(&cluster);
    for n in ["n0", "n1", "n2"] {
        assert!(
            wait_until(Duration::from_secs(30), || renew_time(&api, n).is_some()),
            "{n} holds no Lease: {}",
            rs[0].log_tail()
        );
    }
    let lease = api.get(LEASES, &format!("{NS}/n2")).unwrap();
    assert_eq!(
        lease["metadata"]["annotations"]["weft.dev/router-id"],
        rs[2].status().unwrap()["id"],
        "{lease:#}"
    );
    for r in &mut rs {
        r.kill9();
    }
    api.delete(NODES, "/n2");
    let deleted = Instant::now();
    rs[0].start();
    rs[1].start();
    wait_ready(&rs[..2], Duration::from_secs(30));
    let (taken_at, by) = reclaimed_once(&rs[..2]);
    let taken = taken_at - deleted;
    assert!(
        taken >= LEASE,
        "reclaimed {taken:?} after the kill, before the {LEASE:?} Lease expired"
    );
    eprintln!(
        "restarted survivors: n2's ranges taken by {by} {taken:?} after its Node was deleted"
    );
}

/// A live identity switch (`weft rotate-identity` without a restart)
/// renames the router's Lease: the Lease task reads the ID from the
/// control task, so peers reclaiming by Lease name the key in use.
#[test]
fn a_live_identity_switch_renames_the_routers_lease() {
    if !require_root("a_live_identity_switch_renames_the_routers_lease") {
        return;
    }
    let cluster = Cluster::new(3);
    let (api, rs) = mesh(&cluster);
    let annotated = || {
        api.get(LEASES, &format!("{NS}/n1")).and_then(|l| {
            l["metadata"]["annotations"]["weft.dev/router-id"]
                .as_str()
                .map(str::to_string)
        })
    };
    let old_id = rs[1].status().unwrap()["id"].as_str().unwrap().to_string();
    assert!(
        wait_until(Duration::from_secs(30), || annotated().as_deref()
            == Some(old_id.as_str())),
        "n1's Lease does not name {old_id}: {:?}\n{}",
        annotated(),
        rs[1].log_tail()
    );
    let out = rs[1].rotate_identity();
    assert!(
        out.status.success(),
        "weft rotate-identity: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let switched = wait_until(Duration::from_secs(30), || {
        rs[1]
            .status()
            .is_some_and(|s| s["id"].as_str() != Some(old_id.as_str()))
    });
    assert!(switched, "n1 kept its ID {old_id}:\n{}", rs[1].log_tail());
    let new_id = rs[1].status().unwrap()["id"].as_str().unwrap().to_string();
    assert!(
        wait_until(Duration::from_secs(10), || annotated().as_deref()
            == Some(new_id.as_str())),
        "n1's Lease still names {:?}, not its new ID {new_id}\n{}",
        annotated(),
        rs[1].log_tail()
    );
    assert!(
        !log_of(&rs[1]).contains("restarting under the new identity key"),
        "n1 restarted to rotate; the switch was to be live:\n{}",
        rs[1].log_tail()
    );
}
