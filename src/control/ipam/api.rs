//! The local API's address requests (the CNI plugin's interface and
//! `weft` commands): allocate, release, gc, leave, rmpeer, readiness.

use super::{IpamDriver, POD_GATEWAY, POD_GATEWAY6};
use crate::api::proto::{
    Allocation, AllocationList, ErrorCode, Left, PodRef, Readiness, Reclaimed, Released, Reply,
    Request,
};
use crate::id::PeerId;
use crate::ipam::{AllocError, AllocKey, IpamError, PodName};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Instant;

impl IpamDriver {
    /// Answers an address request of the local API; `None` for requests
    /// that are not about addresses.
    pub fn handle_api(
        &mut self,
        request: &Request,
        mtu: u32,
        resolve_name: impl Fn(&str) -> Option<PeerId>,
        now: Instant,
    ) -> Option<Reply> {
        let (op, reply) = match request {
            Request::SeedsListed => {
                self.held = None;
                return Some(Reply::ok(serde_json::json!({})));
            }
            Request::NodesGone { names, ids } => {
                for (name, id) in ids {
                    if let Ok(id) = u64::from_str_radix(id, 16) {
                        self.learn_name_if_unknown(PeerId(id), name);
                    }
                }
                self.set_gone_nodes(names, now);
                return Some(Reply::ok(serde_json::json!({})));
            }
            Request::Ready => ("ready", self.ready(mtu)),
            Request::Allocate {
                container_id,
                ifname,
                pod,
            } => (
                "allocate",
                match pod_name(pod.as_ref())
                    .and_then(|pod| self.alloc.allocate_pod(container_id, ifname, pod, now))
                {
                    Ok(addr) => self.allocation_reply(container_id, ifname, addr, mtu),
                    Err(e) => alloc_error(&e),
                },
            ),
            Request::Release {
                container_id,
                ifname,
                address,
                address6,
            } => (
                "release",
                self.release(
                    container_id,
                    ifname,
                    [address.as_deref(), address6.as_deref()],
                    now,
                ),
            ),
            Request::Lookup {
                container_id,
                ifname,
            } => (
                "lookup",
                match self.alloc.lookup(container_id, ifname) {
                    Some(addr) => self.allocation_reply(container_id, ifname, addr, mtu),
                    None => Reply::err(
                        ErrorCode::NotFound,
                        format!(
                            "no address allocated to container {container_id} interface {ifname}"
                        ),
                    ),
                },
            ),
            Request::List { container_id } => {
                let allocations = self.pod_allocations(mtu, |c| {
                    container_id.as_deref().is_none_or(|want| want == c)
                });
                ("list", to_reply(&AllocationList { allocations }))
            }
            Request::Gc { keep } => ("gc", self.gc(keep, mtu, now)),
            Request::Rmpeer { name, force } => {
                ("rmpeer", self.rmpeer(name, *force, &resolve_name, now))
            }
            Request::Leave { force } => ("leave", self.leave(*force, now)),
            Request::Status
            | Request::Connect { .. }
            | Request::Forget { .. }
            | Request::Advertise { .. }
            | Request::RotateIdentity => return None,
        };
        let result = match &reply.error {
            None => "ok",
            Some(e) => match e.code {
                ErrorCode::NotReady => "try_again",
                ErrorCode::NotFound => "not_found",
                ErrorCode::BadRequest => "bad_request",
                ErrorCode::Refused => "refused",
                ErrorCode::Internal => "error",
            },
        };
        *self.requests.entry(format!("{op}/{result}")).or_default() += 1;
        Some(reply)
    }

    fn ready(&self, mtu: u32) -> Reply {
        let ready = self.alloc.is_ready();
        let reason = (!ready).then(|| self.detail().unwrap_or_else(|| "IPAM not ready".into()));
        to_reply(&Readiness { ready, reason, mtu })
    }

    fn allocation_reply(&self, container_id: &str, ifname: &str, addr: IpAddr, mtu: u32) -> Reply {
        to_reply(&self.allocation(container_id, ifname, addr, mtu))
    }

    fn allocation(&self, container_id: &str, ifname: &str, addr: IpAddr, mtu: u32) -> Allocation {
        Allocation {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            address: addr.to_string(),
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
            gateway: if addr.is_ipv4() {
                POD_GATEWAY
            } else {
                POD_GATEWAY6
            }
            .to_string(),
            mtu,
            range: self.range.to_string(),
            ipv6: None,
        }
    }

    fn pod_allocations(&self, mtu: u32, want: impl Fn(&str) -> bool) -> Vec<Allocation> {
        self.alloc
            .allocations()
            .into_iter()
            .filter_map(|(key, addr)| match key {
                AllocKey::Pod {
                    container_id,
                    ifname,
                } if want(&container_id) => {
                    Some(self.allocation(&container_id, &ifname, addr, mtu))
                }
                _ => None,
            })
            .collect()
    }

    fn release(
        &mut self,
        container_id: &str,
        ifname: &str,
        addresses: [Option<&str>; 2],
        now: Instant,
    ) -> Reply {
        match self.alloc.release(container_id, ifname, now) {
            Ok(addr) => to_reply(&Released {
                address: addr.to_string(),
            }),
            Err(AllocError::NotFound { .. }) => {
                // An address found in the kernel at start, holder unknown:
                // the one of this ring's family (the other is not in it).
                for addr in addresses.iter().flatten() {
                    if let Ok(addr) = addr.parse::<IpAddr>()
                        && let Ok(addr) = self.alloc.release_held(addr)
                    {
                        return to_reply(&Released {
                            address: addr.to_string(),
                        });
                    }
                }
                Reply::err(
                    ErrorCode::NotFound,
                    format!("no address allocated to container {container_id} interface {ifname}"),
                )
            }
            Err(e) => alloc_error(&e),
        }
    }

    fn gc(&mut self, keep: &[String], mtu: u32, now: Instant) -> Reply {
        let keep: BTreeSet<&str> = keep.iter().map(String::as_str).collect();
        let stale = self.pod_allocations(mtu, |c| !keep.contains(c));
        let mut released = Vec::new();
        for allocation in stale {
            match self
                .alloc
                .release(&allocation.container_id, &allocation.ifname, now)
            {
                Ok(_) => released.push(allocation),
                Err(e) => return alloc_error(&e),
            }
        }
        to_reply(&AllocationList {
            allocations: released,
        })
    }

    fn leave(&mut self, force: bool, now: Instant) -> Reply {
        match self.alloc.leave(force, now) {
            Ok(addresses) => to_reply(&Left {
                addresses: u64::try_from(addresses).unwrap_or(u64::MAX),
            }),
            Err(IpamError::NotReady) => {
                Reply::err(ErrorCode::NotReady, "the IPAM ring is not ready yet")
            }
            Err(e @ (IpamError::PodsRemain(_) | IpamError::NoHeir | IpamError::Tombstoned(_))) => {
                Reply::err(ErrorCode::Refused, e.to_string())
            }
            Err(e) => Reply::err(ErrorCode::Internal, e.to_string()),
        }
    }

    fn rmpeer(
        &mut self,
        name: &str,
        force: bool,
        resolve_name: &impl Fn(&str) -> Option<PeerId>,
        now: Instant,
    ) -> Reply {
        let by_name = self
            .names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| *id);
        let id = resolve_name(name)
            .or(by_name)
            .or_else(|| u64::from_str_radix(name, 16).ok().map(PeerId));
        let Some(id) = id else {
            return Reply::err(
                ErrorCode::NotFound,
                format!(
                    "no router named {name:?} is known here: use the owner shown by `weft status ipam` (a name or a hex ID)"
                ),
            );
        };
        match self.alloc.rmpeer(id, force, now) {
            Ok(addresses) => to_reply(&Reclaimed {
                peer: name.to_string(),
                addresses: u64::try_from(addresses).unwrap_or(u64::MAX),
            }),
            Err(IpamError::NotReady) => {
                Reply::err(ErrorCode::NotReady, "the IPAM ring is not ready yet")
            }
            Err(
                e @ (IpamError::PeerReachable(_)
                | IpamError::ReclaimSelf
                | IpamError::Tombstoned(_)),
            ) => {
                let mut message = e.to_string();
                if matches!(e, IpamError::PeerReachable(_)) {
                    message.push_str(": pass --force to override");
                }
                Reply::err(ErrorCode::Refused, message)
            }
            Err(e) => Reply::err(ErrorCode::Internal, e.to_string()),
        }
    }
}

fn to_reply<T: serde::Serialize>(value: &T) -> Reply {
    match serde_json::to_value(value) {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::err(ErrorCode::Internal, e.to_string()),
    }
}

/// An allocator refusal as an API error: "try again later" stays distinct
/// so that the CNI plugin can answer code 11.
fn alloc_error(error: &AllocError) -> Reply {
    let code = match error {
        AllocError::TryAgain(_) => ErrorCode::NotReady,
        AllocError::InvalidKey(_) => ErrorCode::BadRequest,
        AllocError::NotFound { .. } => ErrorCode::NotFound,
        AllocError::Tombstoned(_) => ErrorCode::Refused,
        AllocError::Persist(_) => ErrorCode::Internal,
    };
    Reply::err(code, error.to_string())
}

/// The allocator's checked pod name from the API's (an invalid one is a
/// `bad_request`: nothing is allocated).
fn pod_name(pod: Option<&PodRef>) -> Result<Option<PodName>, AllocError> {
    pod.map(|p| PodName::new(&p.namespace, &p.name, p.uid.as_deref()))
        .transpose()
        .map_err(AllocError::from)
}
