//! Allocation and release by container ID and interface (and the node's
//! own address): idempotent, persisted before the answer ("persist, then
//! answer"), never from a quarantined range; an exhausted router asks for a
//! donation (`donation.rs`) and answers "try again" meanwhile.

use super::{Allocator, Phase, subtract};
use crate::ipam::error::AllocError;
use crate::ipam::space::{AllocKey, PodName};
use crate::ipam::store::Store;
use std::net::IpAddr;
use std::time::Instant;

impl<S: Store> Allocator<S> {
    /// Allocates an address for a pod interface, idempotently: a retry with
    /// the same `(container_id, ifname)` gets the same address. Persisted
    /// before it returns. See [`AllocError`] for "try again later".
    pub fn allocate(
        &mut self,
        container_id: &str,
        ifname: &str,
        now: Instant,
    ) -> Result<IpAddr, AllocError> {
        self.allocate_pod(container_id, ifname, None, now)
    }

    /// [`allocate`](Self::allocate), naming the pod behind the interface
    /// (kubelet's `CNI_ARGS`); the name is persisted with the allocation.
    /// A retry returns the same address and keeps the name first given.
    pub fn allocate_pod(
        &mut self,
        container_id: &str,
        ifname: &str,
        pod: Option<PodName>,
        now: Instant,
    ) -> Result<IpAddr, AllocError> {
        let key = AllocKey::pod(container_id, ifname)?;
        self.allocate_key(key, pod, now)
    }

    /// The router's own address (the /32 on `weft0`), from the same ranges.
    pub fn allocate_node(&mut self, now: Instant) -> Result<IpAddr, AllocError> {
        self.allocate_key(AllocKey::Node, None, now)
    }

    /// The pod behind a pod allocation, when the plugin named it.
    pub fn pod_name(&self, key: &AllocKey) -> Option<&PodName> {
        self.allocs.pod(key)
    }

    /// Releases a pod's address (CNI DEL). Something never allocated is an
    /// error, [`AllocError::NotFound`]; whether DEL treats it as success is
    /// the caller's choice.
    pub fn release(
        &mut self,
        container_id: &str,
        ifname: &str,
        _now: Instant,
    ) -> Result<IpAddr, AllocError> {
        let key = AllocKey::pod(container_id, ifname)?;
        let Some(offset) = self.allocs.remove(&key) else {
            return Err(AllocError::NotFound {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            });
        };
        if let Err(e) = self.persist_allocations() {
            self.allocs.insert(key, offset);
            return Err(AllocError::Persist(e));
        }
        self.addr(offset)
            .ok_or_else(|| AllocError::TryAgain("address outside the range".into()))
    }

    /// Frees an address the router found in use in the kernel at start
    /// without knowing its holder ([`AllocKey::Held`]), when the CNI plugin
    /// deletes the pod that had it. Anything else is [`AllocError::NotFound`].
    pub fn release_held(&mut self, addr: IpAddr) -> Result<IpAddr, AllocError> {
        let not_found = || AllocError::NotFound {
            container_id: String::new(),
            ifname: addr.to_string(),
        };
        let offset = self.cfg.range.offset(addr).ok_or_else(not_found)?;
        let key = AllocKey::Held(offset);
        if self.allocs.holder(offset) != Some(&key) {
            return Err(not_found());
        }
        self.allocs.remove(&key);
        if let Err(e) = self.persist_allocations() {
            self.allocs.insert(key, offset);
            return Err(AllocError::Persist(e));
        }
        Ok(addr)
    }

    /// The address held by a pod interface.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Option<IpAddr> {
        let key = AllocKey::pod(container_id, ifname).ok()?;
        self.allocs.get(&key).and_then(|o| self.addr(o))
    }

    /// Every address this router has handed out, with its holder.
    pub fn allocations(&self) -> Vec<(AllocKey, IpAddr)> {
        self.allocs
            .pairs()
            .filter_map(|(k, o)| Some((k.clone(), self.addr(o)?)))
            .collect()
    }

    pub(super) fn allocate_key(
        &mut self,
        key: AllocKey,
        pod: Option<PodName>,
        now: Instant,
    ) -> Result<IpAddr, AllocError> {
        if let Some(offset) = self.allocs.get(&key) {
            return self
                .addr(offset)
                .ok_or_else(|| AllocError::TryAgain("address outside the range".into()));
        }
        if let Some(by) = self.tombstoned {
            return Err(AllocError::Tombstoned(by));
        }
        if self.ring.is_none() {
            let why = match self.phase() {
                Phase::WaitingForVoters {
                    agreed,
                    locked,
                    quorum,
                    ..
                } => {
                    format!(
                        "ring not initialised: {agreed} of {quorum} voters agree, {locked} locked"
                    )
                }
                _ => "waiting to learn the ring from a peer".to_string(),
            };
            return Err(AllocError::TryAgain(why));
        }
        let ranges = self.allocatable(now);
        let range = self.cfg.range;
        match self.allocs.find_free(&ranges, |o| range.is_reserved(o)) {
            Some(offset) => {
                self.allocs.insert(key.clone(), offset);
                if let Some(pod) = pod {
                    self.allocs.name_pod(&key, pod);
                }
                if let Err(e) = self.persist_allocations() {
                    self.allocs.remove(&key);
                    return Err(AllocError::Persist(e));
                }
                self.addr(offset)
                    .ok_or_else(|| AllocError::TryAgain("address outside the range".into()))
            }
            None => Err(AllocError::TryAgain(self.request_donation(now))),
        }
    }

    pub(super) fn allocatable(&self, now: Instant) -> Vec<(u128, u128)> {
        if self.tombstoned.is_some() {
            return Vec::new();
        }
        let mut holes: Vec<(u128, u128)> = self
            .quarantine
            .iter()
            .filter(|q| q.2 > now)
            .map(|q| (q.0, q.1))
            .collect();
        if holes.is_empty() {
            return self.mine.clone();
        }
        holes.sort_unstable();
        subtract(&self.mine, &holes)
    }

    pub(super) fn free(&self, now: Instant) -> u128 {
        let range = self.cfg.range;
        self.allocatable(now)
            .iter()
            .map(|&(lo, hi)| {
                let reserved = [0, range.size() - 1]
                    .iter()
                    .filter(|o| **o >= lo && **o <= hi && range.is_reserved(**o))
                    .count() as u128;
                (hi - lo + 1).saturating_sub(reserved + self.allocs.count_in(lo, hi))
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::id::PeerId;
    use crate::ipam::signed::TestCrypto;
    use crate::ipam::store::MemStore;
    use crate::ipam::{AddrRange, Config, Init};

    fn lone_router(store: MemStore, now: Instant) -> Allocator<MemStore> {
        let range = AddrRange::parse("10.32.0.0/16").unwrap();
        let cfg = Config::new(
            PeerId(1),
            range,
            Init::Seed([PeerId(1)].into()),
            TestCrypto::boxed(PeerId(1)),
        );
        Allocator::new(cfg, store, &[], now).unwrap()
    }

    fn web0() -> PodName {
        PodName::new("default", "web-0", Some("0b6e1c2d-41aa")).unwrap()
    }

    #[test]
    fn a_pods_name_is_kept_with_its_allocation_across_a_restart() {
        let now = Instant::now();
        let mut a = lone_router(MemStore::default(), now);
        let addr = a.allocate_pod("c1", "eth0", Some(web0()), now).unwrap();
        let key = AllocKey::pod("c1", "eth0").unwrap();
        assert_eq!(a.pod_name(&key), Some(&web0()));
        let back = lone_router(a.into_store(), now);
        assert_eq!(back.lookup("c1", "eth0"), Some(addr));
        assert_eq!(back.pod_name(&key), Some(&web0()));
    }

    #[test]
    fn a_retry_keeps_the_first_name_and_a_release_forgets_it() {
        let now = Instant::now();
        let mut a = lone_router(MemStore::default(), now);
        let key = AllocKey::pod("c1", "eth0").unwrap();
        let addr = a.allocate_pod("c1", "eth0", Some(web0()), now).unwrap();
        let other = PodName::new("default", "other", None).unwrap();
        assert_eq!(
            a.allocate_pod("c1", "eth0", Some(other), now).unwrap(),
            addr
        );
        assert_eq!(a.pod_name(&key), Some(&web0()));
        a.release("c1", "eth0", now).unwrap();
        assert_eq!(a.pod_name(&key), None);
        // The next holder of the same key starts without the old name.
        a.allocate("c1", "eth0", now).unwrap();
        assert_eq!(a.pod_name(&key), None);
        let back = lone_router(a.into_store(), now);
        assert_eq!(back.pod_name(&key), None);
    }

    #[test]
    fn a_failed_persist_keeps_no_name() {
        let now = Instant::now();
        let mut a = lone_router(MemStore::default(), now);
        let mut store = a.into_store();
        store.fail = true;
        a = lone_router(store, now);
        assert!(a.allocate_pod("c1", "eth0", Some(web0()), now).is_err());
        assert_eq!(a.pod_name(&AllocKey::pod("c1", "eth0").unwrap()), None);
    }

    #[test]
    fn pod_names_kubernetes_would_refuse_are_refused() {
        for (ns, name, uid) in [
            ("", "web", None),
            ("ns", "", None),
            ("ns", "a/b", None),
            ("ns", "web", Some("x y")),
            ("ns\n", "web", None),
        ] {
            assert!(
                PodName::new(ns, name, uid).is_err(),
                "{ns:?} {name:?} {uid:?}"
            );
        }
        assert!(PodName::new(&"n".repeat(64), "web", None).is_err());
        assert!(PodName::new("ns", &"n".repeat(254), None).is_err());
        assert!(PodName::new(&"n".repeat(63), &"n".repeat(253), Some("0b6e-41")).is_ok());
    }
}
