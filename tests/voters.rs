//! The first start of a DaemonSet-style cluster with one seed down (issue
//! 16; DESIGN.md "Ring initialisation": a majority of the voters suffices):
//! three seeds, one not started, and a node that is not a seed. The others'
//! ring is ready and hands out addresses; the missing seed then starts and
//! joins that ring rather than starting a second one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;
use weft::api::client::call;
use weft::api::proto::Request;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

fn allocate(r: &Router, container_id: &str, patience: Duration) -> Option<String> {
    let mut address = None;
    wait_until(patience, || {
        let reply = call(
            &r.api(),
            &Request::Allocate {
                container_id: container_id.into(),
                ifname: "eth0".into(),
                pod: None,
            },
            Duration::from_secs(5),
        )
        .expect("router answers");
        address = reply
            .result
            .and_then(|v| v["address"].as_str().map(str::to_string));
        address.is_some()
    });
    address
}

fn ipam(r: &Router) -> serde_json::Value {
    r.status().map(|s| s["ipam"].clone()).unwrap_or_default()
}

#[test]
fn one_seed_down_at_first_start_the_majority_starts_the_ring_and_the_seed_joins_it_later() {
    if !require_root("one_seed_down") {
        return;
    }
    let cluster = Cluster::new(4);
    // Every router gets the same seed list (nodes 0, 1, 2); node 3 is not a seed.
    let mut rs = new_routers(
        Path::new(BIN),
        &cluster,
        4,
        |_| vec![0, 1, 2],
        |_, r| {
            let at = r.args.iter().position(|a| a == "--ipalloc-init").unwrap();
            r.args.drain(at..at + 2);
        },
    );
    for i in [0, 1, 3] {
        rs[i].start();
    }
    let up = [0, 1, 3];
    let ready = wait_until(Duration::from_secs(60), || {
        up.iter().all(|i| ipam(&rs[*i])["state"] == "ready")
    });
    let states: Vec<_> = up.iter().map(|i| ipam(&rs[*i])).collect();
    assert!(ready, "ring not ready with one seed down: {states:#?}");
    let genesis = ipam(&rs[0])["genesis"].clone();
    assert!(genesis.is_string());
    for i in up {
        assert_eq!(ipam(&rs[i])["genesis"], genesis, "one ring");
        assert!(
            allocate(&rs[i], &format!("pod-{i}"), Duration::from_secs(30)).is_some(),
            "router {i} hands out an address: {:#?}",
            ipam(&rs[i])
        );
    }
    // The missing seed comes up: it learns the same ring and gets addresses.
    rs[2].start();
    let joined = wait_until(Duration::from_secs(60), || {
        ipam(&rs[2])["state"] == "ready" && ipam(&rs[2])["genesis"] == genesis
    });
    assert!(
        joined,
        "the late seed: {:#?}\n{}",
        ipam(&rs[2]),
        rs[2].log_tail()
    );
    assert!(
        allocate(&rs[2], "pod-late", Duration::from_secs(60)).is_some(),
        "the late seed hands out an address: {:#?}",
        ipam(&rs[2])
    );
    for r in &rs {
        assert_eq!(ipam(r)["genesis"], genesis, "still one ring");
    }
}
