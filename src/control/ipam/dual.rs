//! One answer from two rings (issue 19, dual-stack pods): the CNI plugin's
//! pod requests go to the IPv4 ring and, when the router has an IPv6 pod
//! range, to the IPv6 ring under the same `(container_id, ifname)`; this
//! joins the two replies into the one the plugin reads. Pure: replies in,
//! reply out.

use crate::api::proto::{Allocation, AllocationList, ErrorCode, PodAddress, Reply, Request};

/// Whether `request` is about one pod's addresses (both rings answer it).
pub fn per_pod(request: &Request) -> bool {
    matches!(
        request,
        Request::Allocate { .. }
            | Request::Lookup { .. }
            | Request::Release { .. }
            | Request::List { .. }
            | Request::Gc { .. }
    )
}

/// Joins the IPv4 ring's reply `v4` and the IPv6 ring's `v6` to `request`.
///
/// - Allocate, Lookup: the IPv4 allocation with the IPv6 address in
///   `ipv6`; either ring's error is the answer (an IPv4 address already
///   taken stays with its key: a retried ADD gets it again, a DEL frees
///   both).
/// - Release: succeeds when either ring released something (the IPv4
///   answer when it did); `not_found` only when neither knew the key.
/// - List, Gc: the IPv4 allocations with their IPv6 addresses joined by key,
///   then the keys only the IPv6 ring held.
pub fn join(request: &Request, v4: Reply, v6: Reply) -> Reply {
    match request {
        Request::Allocate { .. } | Request::Lookup { .. } => {
            let (Some(mut four), Some(six)) = (allocation(&v4), allocation(&v6)) else {
                return if v4.ok { v6 } else { v4 };
            };
            four.ipv6 = Some(pod_address(six));
            to_reply(&four)
        }
        Request::Release { .. } => {
            let code = |r: &Reply| r.error.as_ref().map(|e| e.code);
            match (code(&v4), code(&v6)) {
                (None, _) => v4,
                (Some(_), None) => v6,
                // A real failure of the IPv6 ring is not hidden behind the
                // IPv4 ring's `not_found`.
                (Some(ErrorCode::NotFound), Some(c)) if c != ErrorCode::NotFound => v6,
                (Some(_), Some(_)) => v4,
            }
        }
        Request::List { .. } | Request::Gc { .. } => {
            let (Some(mut four), Some(six)) = (list(&v4), list(&v6)) else {
                return if v4.ok { v6 } else { v4 };
            };
            for a in six.allocations {
                match four
                    .allocations
                    .iter_mut()
                    .find(|b| b.container_id == a.container_id && b.ifname == a.ifname)
                {
                    Some(b) => b.ipv6 = Some(pod_address(a)),
                    None => four.allocations.push(a),
                }
            }
            to_reply(&four)
        }
        _ => v4,
    }
}

fn pod_address(a: Allocation) -> PodAddress {
    PodAddress {
        address: a.address,
        prefix_len: a.prefix_len,
        gateway: a.gateway,
        range: a.range,
    }
}

fn allocation(reply: &Reply) -> Option<Allocation> {
    serde_json::from_value(reply.result.clone()?).ok()
}

fn list(reply: &Reply) -> Option<AllocationList> {
    serde_json::from_value(reply.result.clone()?).ok()
}

fn to_reply<T: serde::Serialize>(value: &T) -> Reply {
    match serde_json::to_value(value) {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::err(ErrorCode::Internal, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn alloc(id: &str, address: &str) -> Allocation {
        Allocation {
            container_id: id.into(),
            ifname: "eth0".into(),
            address: address.into(),
            prefix_len: if address.contains(':') { 128 } else { 32 },
            gateway: if address.contains(':') {
                "fe80::1"
            } else {
                "169.254.1.1"
            }
            .into(),
            mtu: 1420,
            range: "r".into(),
            ipv6: None,
        }
    }

    fn allocate() -> Request {
        Request::Allocate {
            container_id: "c".into(),
            ifname: "eth0".into(),
            pod: None,
        }
    }

    fn release() -> Request {
        Request::Release {
            container_id: "c".into(),
            ifname: "eth0".into(),
            address: None,
            address6: None,
        }
    }

    #[test]
    fn an_allocation_carries_the_ipv6_address_of_the_same_key() {
        let v4 = to_reply(&alloc("c", "10.32.0.5"));
        let v6 = to_reply(&alloc("c", "fd00::5"));
        let joined: Allocation =
            serde_json::from_value(join(&allocate(), v4, v6).result.unwrap()).unwrap();
        assert_eq!(joined.address, "10.32.0.5");
        let six = joined.ipv6.unwrap();
        assert_eq!((six.address.as_str(), six.prefix_len), ("fd00::5", 128));
        assert_eq!(six.gateway, "fe80::1");
    }

    #[test]
    fn either_rings_refusal_is_the_answer_to_an_allocation() {
        let busy = Reply::err(ErrorCode::NotReady, "ring6 not ready");
        let r = join(
            &allocate(),
            to_reply(&alloc("c", "10.32.0.5")),
            busy.clone(),
        );
        assert_eq!(r.error.unwrap().code, ErrorCode::NotReady);
        let r = join(&allocate(), busy, to_reply(&alloc("c", "fd00::5")));
        assert_eq!(r.error.unwrap().code, ErrorCode::NotReady);
    }

    #[test]
    fn a_release_is_not_found_only_when_neither_ring_held_the_key() {
        let missing = Reply::err(ErrorCode::NotFound, "none");
        let freed4 = Reply::ok(json!({"address": "10.32.0.5"}));
        let freed6 = Reply::ok(json!({"address": "fd00::5"}));
        assert!(join(&release(), freed4.clone(), missing.clone()).ok);
        assert_eq!(
            join(&release(), missing.clone(), freed6).result.unwrap()["address"],
            "fd00::5"
        );
        let r = join(&release(), missing.clone(), missing.clone());
        assert_eq!(r.error.unwrap().code, ErrorCode::NotFound);
        let broken = Reply::err(ErrorCode::Internal, "disk");
        let r = join(&release(), missing, broken);
        assert_eq!(r.error.unwrap().code, ErrorCode::Internal);
    }

    #[test]
    fn a_gc_joins_addresses_by_key_and_keeps_ipv6_only_keys() {
        let v4 = to_reply(&AllocationList {
            allocations: vec![alloc("a", "10.32.0.1"), alloc("b", "10.32.0.2")],
        });
        let v6 = to_reply(&AllocationList {
            allocations: vec![alloc("b", "fd00::2"), alloc("z", "fd00::9")],
        });
        let joined: AllocationList =
            serde_json::from_value(join(&Request::Gc { keep: vec![] }, v4, v6).result.unwrap())
                .unwrap();
        let view: Vec<(&str, &str, Option<&str>)> = joined
            .allocations
            .iter()
            .map(|a| {
                (
                    a.container_id.as_str(),
                    a.address.as_str(),
                    a.ipv6.as_ref().map(|s| s.address.as_str()),
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("a", "10.32.0.1", None),
                ("b", "10.32.0.2", Some("fd00::2")),
                ("z", "fd00::9", None)
            ]
        );
    }
}
