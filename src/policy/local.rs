//! This node's pods from its address allocations, for `--network-policy`:
//! a splice on the local API's calls (like the status splices) that tells
//! the policy driver which pod got which address, so that a pod is enforced
//! from the moment its address exists rather than from when the API server
//! shows its `podIP` (issue 18: a pod selected by a default deny must not
//! accept anything in between).
//!
//! The answer to a CNI ADD is held until the driver says the table in force
//! covers the new address ([`ACK_WAIT`] at most): the plugin plugs the pod
//! in only after that, so its first packet already meets the rules. At
//! start, before any call is passed on, the allocations the router kept
//! across a restart are read from `weft status` (the pod names kubelet gave
//! them). A release (CNI DEL, GC) frees the address in the driver's view.

use super::addrs::{Addr, addr, ip};
use crate::api::proto::{Allocation, AllocationList, Released, Reply, Request};
use crate::api::server::ApiCall;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a CNI ADD's answer waits for the policy table to cover the new
/// address (an `nft` transaction takes tens of milliseconds; the plugin
/// gives up after 15 s).
pub const ACK_WAIT: Duration = Duration::from_secs(5);

/// What the driver is told about this node's pod allocations.
#[derive(Debug)]
pub enum LocalUpdate {
    /// Every pod allocation: `namespace/name` → addresses (at start).
    All(BTreeMap<String, Vec<Addr>>),
    /// A pod got an address, or one of each family (dual-stack); `done` is
    /// answered once the table in force covers them (or nothing more can
    /// be done: not synced, `nft` refused).
    Added {
        /// `namespace/name`.
        pod: String,
        /// Its addresses.
        ips: Vec<Addr>,
        /// Answered when enforced.
        done: oneshot::Sender<()>,
    },
    /// An address was freed.
    Released(Addr),
}

/// Passes API calls on to `next`, telling `driver` about allocations and
/// releases; an allocation's answer waits for the driver's word.
pub async fn splice_allocations(
    mut calls: mpsc::Receiver<ApiCall>,
    next: mpsc::Sender<ApiCall>,
    driver: mpsc::Sender<LocalUpdate>,
) {
    // A release answer names only the IPv4 address; the IPv6 address of
    // the same allocation goes with it.
    let partners: Partners = Arc::default();
    if let Some(all) = ask(&next, Request::Status).await.map(|r| from_status(&r)) {
        for ips in all.values() {
            pair(&partners, ips);
        }
        let _ = driver.send(LocalUpdate::All(all)).await;
    }
    while let Some((request, reply)) = calls.recv().await {
        let pod = match &request {
            Request::Allocate { pod: Some(pod), .. } => {
                Some(format!("{}/{}", pod.namespace, pod.name))
            }
            Request::Release { .. } | Request::Gc { .. } => None,
            _ => {
                if next.send((request, reply)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let (tx, rx) = oneshot::channel();
        if next.send((request, tx)).await.is_err() {
            return;
        }
        let Some(pod) = pod else {
            // Releases are answered at once; the driver hears of them in
            // order, before any later allocation of the same address.
            let Ok(answer) = rx.await else { continue };
            for ip in released(&answer) {
                let _ = driver.send(LocalUpdate::Released(ip)).await;
                let partner = partners
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&ip);
                if let Some(partner) = partner {
                    let _ = driver.send(LocalUpdate::Released(partner)).await;
                }
            }
            let _ = reply.send(answer);
            continue;
        };
        let driver = driver.clone();
        let partners = partners.clone();
        tokio::spawn(async move {
            let Ok(answer) = rx.await else { return };
            let ips = result::<Allocation>(&answer)
                .map(|a| addresses(&a))
                .unwrap_or_default();
            pair(&partners, &ips);
            if !ips.is_empty() {
                let (done, enforced) = oneshot::channel();
                let sent = driver.send(LocalUpdate::Added {
                    pod: pod.clone(),
                    ips,
                    done,
                });
                if sent.await.is_ok() && tokio::time::timeout(ACK_WAIT, enforced).await.is_err() {
                    tracing::warn!(
                        "--network-policy: the table does not cover {pod} after {ACK_WAIT:?}; answering the CNI plugin anyway"
                    );
                }
            }
            let _ = reply.send(answer);
        });
    }
}

/// The IPv6 address of each dual-stack allocation, by its IPv4 address.
type Partners = Arc<Mutex<HashMap<Addr, Addr>>>;

/// Remembers the pair if `ips` is one address of each family.
fn pair(partners: &Partners, ips: &[Addr]) {
    if let [a, b] = ips[..] {
        let (v4, v6) = match (ip(a).is_ipv4(), ip(b).is_ipv4()) {
            (true, false) => (a, b),
            (false, true) => (b, a),
            _ => return,
        };
        partners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(v4, v6);
    }
}

/// Makes one call of our own down the chain.
async fn ask(next: &mpsc::Sender<ApiCall>, request: Request) -> Option<Reply> {
    let (tx, rx) = oneshot::channel();
    next.send((request, tx)).await.ok()?;
    rx.await.ok()
}

fn result<T: serde::de::DeserializeOwned>(reply: &Reply) -> Option<T> {
    if reply.error.is_some() {
        return None;
    }
    serde_json::from_value(reply.result.clone()?).ok()
}

fn parse(address: &str) -> Option<Addr> {
    address.parse::<IpAddr>().ok().map(addr)
}

/// An allocation's addresses: the IPv4 one, then the IPv6 one if any.
fn addresses(a: &Allocation) -> Vec<Addr> {
    parse(&a.address)
        .into_iter()
        .chain(a.ipv6.as_ref().and_then(|six| parse(&six.address)))
        .collect()
}

/// The addresses a `release` or `gc` answer freed.
fn released(reply: &Reply) -> Vec<Addr> {
    if let Some(one) = result::<Released>(reply) {
        return parse(&one.address).into_iter().collect();
    }
    result::<AllocationList>(reply)
        .map(|list| list.allocations.iter().flat_map(addresses).collect())
        .unwrap_or_default()
}

/// The named pod allocations in a status answer (`ipam.allocations` and
/// `ipam6.allocations`).
fn from_status(reply: &Reply) -> BTreeMap<String, Vec<Addr>> {
    let mut all: BTreeMap<String, Vec<Addr>> = BTreeMap::new();
    let allocations: Vec<serde_json::Value> = ["/ipam/allocations", "/ipam6/allocations"]
        .iter()
        .flat_map(|path| {
            reply
                .result
                .as_ref()
                .and_then(|r| r.pointer(path))
                .and_then(|a| a.as_array())
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    for holder in allocations {
        let field = |f: &str| holder.pointer(f).and_then(|v| v.as_str());
        let (Some(namespace), Some(name), Some(ip)) = (
            field("/pod/namespace"),
            field("/pod/name"),
            field("/address").and_then(parse),
        ) else {
            continue;
        };
        all.entry(format!("{namespace}/{name}"))
            .or_default()
            .push(ip);
    }
    all
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::proto::PodRef;
    use serde_json::json;

    /// A stand-in for the rest of the chain: allocates 10.32.0.N in order.
    fn control(mut rx: mpsc::Receiver<ApiCall>) {
        tokio::spawn(async move {
            let mut n = 0;
            while let Some((request, reply)) = rx.recv().await {
                let answer = match request {
                    Request::Status => Reply::ok(json!({"ipam":{"allocations":[
                        {"address":"10.32.0.7","kind":"pod","pod":{"namespace":"x","name":"old"}},
                        {"address":"10.32.0.1","kind":"node"}]}})),
                    Request::Allocate { container_id, .. } => {
                        n += 1;
                        let mut a = json!({"container_id":container_id,"ifname":"eth0",
                            "address":format!("10.32.0.{n}"),"prefix_len":32,
                            "gateway":"169.254.1.1","mtu":1400,"range":"10.32.0.0/12"});
                        if container_id.starts_with("dual") {
                            a["ipv6"] = json!({"address":format!("fd00::{n}"),"prefix_len":128,
                                "gateway":"fe80::1","range":"fd00::/112"});
                        }
                        Reply::ok(a)
                    }
                    Request::Release { .. } => Reply::ok(json!({"address":"10.32.0.1"})),
                    _ => Reply::ok(json!({})),
                };
                let _ = reply.send(answer);
            }
        });
    }

    fn v4(n: u8) -> Addr {
        crate::policy::addrs::v4(std::net::Ipv4Addr::new(10, 32, 0, n))
    }

    fn allocate(name: &str) -> Request {
        Request::Allocate {
            container_id: name.into(),
            ifname: "eth0".into(),
            pod: Some(PodRef {
                namespace: "x".into(),
                name: name.into(),
                uid: None,
            }),
        }
    }

    #[tokio::test]
    async fn an_allocation_is_answered_only_after_the_driver_covers_it() {
        let (calls_tx, calls_rx) = mpsc::channel(4);
        let (next_tx, next_rx) = mpsc::channel(4);
        let (driver_tx, mut driver_rx) = mpsc::channel(4);
        control(next_rx);
        tokio::spawn(splice_allocations(calls_rx, next_tx, driver_tx));
        let Some(LocalUpdate::All(all)) = driver_rx.recv().await else {
            panic!("no snapshot first")
        };
        assert_eq!(all, BTreeMap::from([("x/old".into(), vec![v4(7)])]));

        let (reply_tx, mut reply_rx) = oneshot::channel();
        calls_tx.send((allocate("a"), reply_tx)).await.unwrap();
        let Some(LocalUpdate::Added { pod, ips, done }) = driver_rx.recv().await else {
            panic!("no allocation")
        };
        assert_eq!((pod.as_str(), ips), ("x/a", vec![v4(1)]));
        tokio::task::yield_now().await;
        assert!(reply_rx.try_recv().is_err(), "answered before enforced");
        done.send(()).unwrap();
        let answer = reply_rx.await.unwrap();
        assert!(answer.error.is_none());

        let (reply_tx, reply_rx) = oneshot::channel();
        let release = Request::Release {
            container_id: "a".into(),
            ifname: "eth0".into(),
            address: None,
            address6: None,
        };
        calls_tx.send((release, reply_tx)).await.unwrap();
        assert!(matches!(
            driver_rx.recv().await,
            Some(LocalUpdate::Released(a)) if a == v4(1)
        ));
        assert!(reply_rx.await.unwrap().error.is_none());
    }

    #[tokio::test]
    async fn a_dual_stack_allocation_adds_both_addresses_and_its_release_frees_both() {
        let (calls_tx, calls_rx) = mpsc::channel(4);
        let (next_tx, next_rx) = mpsc::channel(4);
        let (driver_tx, mut driver_rx) = mpsc::channel(4);
        control(next_rx);
        tokio::spawn(splice_allocations(calls_rx, next_tx, driver_tx));
        assert!(matches!(driver_rx.recv().await, Some(LocalUpdate::All(_))));
        let (reply_tx, reply_rx) = oneshot::channel();
        calls_tx.send((allocate("dual"), reply_tx)).await.unwrap();
        let Some(LocalUpdate::Added { pod, ips, done }) = driver_rx.recv().await else {
            panic!("no allocation")
        };
        let six = addr("fd00::1".parse().unwrap());
        assert_eq!((pod.as_str(), ips), ("x/dual", vec![v4(1), six]));
        done.send(()).unwrap();
        assert!(reply_rx.await.unwrap().error.is_none());
        let (reply_tx, reply_rx) = oneshot::channel();
        let release = Request::Release {
            container_id: "dual".into(),
            ifname: "eth0".into(),
            address: None,
            address6: None,
        };
        calls_tx.send((release, reply_tx)).await.unwrap();
        let mut freed = Vec::new();
        for _ in 0..2 {
            let Some(LocalUpdate::Released(a)) = driver_rx.recv().await else {
                panic!("no release")
            };
            freed.push(a);
        }
        assert_eq!(freed, vec![v4(1), six]);
        assert!(reply_rx.await.unwrap().error.is_none());
    }
}
