//! The IPAM side of a test mesh: routers in a given ring mode and range,
//! their local API, and the `ipam` part of their status.

use super::{Cluster, Router, new_routers, wait_until};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;
use weft::api::client::call;
use weft::api::proto::{Reply, Request};

/// Routers on nodes `0..count`, each seeded with `seeds(i)`, in ring mode
/// `init` (None: the default, consensus among the routers at the seeds),
/// over `range`.
pub fn routers(
    bin: &str,
    cluster: &Cluster,
    count: usize,
    seeds: impl Fn(usize) -> Vec<usize>,
    init: Option<&str>,
    range: &str,
) -> Vec<Router> {
    new_routers(Path::new(bin), cluster, count, seeds, |_, r| {
        let at = r.args.iter().position(|a| a == "--ipalloc-init").unwrap();
        r.args.drain(at..at + 2);
        if let Some(init) = init {
            r.args.extend(["--ipalloc-init".into(), init.into()]);
        }
        r.args.extend(["--ipalloc-range".into(), range.into()]);
    })
}

pub fn api(r: &Router, request: &Request) -> Reply {
    call(&r.api(), request, Duration::from_secs(5)).expect("router answers")
}

pub fn ipam(r: &Router) -> serde_json::Value {
    r.status().expect("status")["ipam"].clone()
}

pub fn wait_ready(routers: &[Router], timeout: Duration) {
    let ready = wait_until(timeout, || {
        routers
            .iter()
            .all(|r| r.status().is_some_and(|s| s["ipam"]["state"] == "ready"))
    });
    let states: Vec<serde_json::Value> = routers.iter().map(ipam).collect();
    assert!(ready, "IPAM not ready everywhere: {states:#?}");
}

pub fn owned(r: &Router) -> Vec<(u32, u32)> {
    ipam(r)["owned_ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let start: Ipv4Addr = x["start"].as_str().unwrap().parse().unwrap();
            let end: Ipv4Addr = x["end"].as_str().unwrap().parse().unwrap();
            (u32::from(start), u32::from(end))
        })
        .collect()
}

/// Every address handed out by `r`'s pods, from `list`.
pub fn listed(r: &Router) -> BTreeMap<String, Ipv4Addr> {
    let reply = api(r, &Request::List { container_id: None });
    reply.result.unwrap()["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["container_id"].as_str().unwrap().to_string(),
                a["address"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}
