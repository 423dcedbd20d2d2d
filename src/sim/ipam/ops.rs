//! The simulator's operations on the cluster, one per kind of step
//! (`one_step` in `ipam.rs` picks them): joins, restarts with or without
//! state, allocations and releases through the API, `rmpeer` and `leave`,
//! each within the operating conditions the module doc of `ipam.rs` states.

use super::{BOUND, Sim, SimNode, TestCrypto};
use crate::id::PeerId;
use crate::ipam::{AllocError, AllocKey, Allocator, InUse, IpamError, MemStore};
use rand::Rng;
use std::collections::BTreeMap;
use std::net::IpAddr;

impl Sim {
    pub(super) fn pick_live(&mut self) -> Option<PeerId> {
        let ids: Vec<PeerId> = self.nodes.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[self.rng.gen_range(0..ids.len())])
    }

    pub(super) fn join(&mut self) {
        let id = PeerId(self.next_id);
        self.next_id += 1;
        self.pick_build(id);
        let mut ipam = Allocator::new(self.config(id), MemStore::default(), &[], self.now).unwrap();
        // Every router's key is in the topology (here: lent to all).
        ipam.learn_test_keys(self.next_id);
        for n in self.nodes.values_mut() {
            n.ipam.learn_key(id, TestCrypto::public_key(id));
        }
        self.nodes.insert(
            id,
            SimNode {
                ipam,
                incarnation: 0,
                pods: BTreeMap::new(),
                node_addr: None,
            },
        );
        let coin = self.rng.gen_bool(0.5);
        if let Some(g) = self.partition.as_mut()
            && coin
        {
            g.insert(id);
        }
        self.refresh_reachability();
        let now = self.now;
        let peers: Vec<PeerId> = self.nodes.keys().copied().filter(|p| *p != id).collect();
        for p in peers {
            if self.connected(id, p) {
                // As the driver does: the version both hellos contain.
                let common = Some(self.ring_version(id).min(self.ring_version(p)));
                let them = &mut self.nodes.get_mut(&p).unwrap().ipam;
                them.set_peer_ring_version(id, common);
                them.handle_peer_up(id, now);
                let us = &mut self.nodes.get_mut(&id).unwrap().ipam;
                us.set_peer_ring_version(p, common);
                us.handle_peer_up(p, now);
                self.drain(p);
            }
        }
        self.drain(id);
        self.stats.joins += 1;
    }

    pub(super) fn restart(&mut self, id: PeerId, keep_state: bool) {
        let node = self.nodes.remove(&id).unwrap();
        if self.old_share > 0.0 {
            self.pick_build(id);
        }
        let mut in_use: Vec<InUse> = node
            .pods
            .iter()
            .map(|(cid, a)| InUse {
                addr: *a,
                key: Some(AllocKey::pod(cid, "eth0").unwrap()),
            })
            .collect();
        if let Some(a) = node.node_addr {
            in_use.push(InUse {
                addr: a,
                key: Some(AllocKey::Node),
            });
        }
        let store = if keep_state {
            node.ipam.into_store()
        } else {
            MemStore::default()
        };
        let mut ipam = match Allocator::new(self.config(id), store, &in_use, self.now) {
            Ok(a) => a,
            Err(e) => self.fail(format!("restart of {id}: {e}")),
        };
        ipam.learn_test_keys(self.next_id);
        self.nodes.insert(
            id,
            SimNode {
                ipam,
                incarnation: node.incarnation + 1,
                pods: node.pods,
                node_addr: node.node_addr,
            },
        );
        self.refresh_reachability();
        let now = self.now;
        let peers: Vec<PeerId> = self.nodes.keys().copied().filter(|p| *p != id).collect();
        for p in peers {
            if self.connected(id, p) {
                self.nodes.get_mut(&p).unwrap().ipam.handle_peer_up(id, now);
                self.drain(p);
            }
        }
        self.drain(id);
    }

    pub(super) fn allocate(&mut self) {
        let Some(id) = self.pick_live() else { return };
        let now = self.now;
        let node = self.nodes.get_mut(&id).unwrap();
        if node.node_addr.is_none()
            && node.ipam.is_ready()
            && let Ok(a) = node.ipam.allocate_node(now)
        {
            node.node_addr = Some(a);
            self.check_fresh(id, a);
        }
        self.pod_counter += 1;
        let cid = format!("pod-{}", self.pod_counter);
        let node = self.nodes.get_mut(&id).unwrap();
        match node.ipam.allocate(&cid, "eth0", now) {
            Ok(a) => {
                node.pods.insert(cid, a);
                self.stats.allocated += 1;
                self.check_fresh(id, a);
            }
            Err(AllocError::TryAgain(_)) => self.stats.try_again += 1,
            Err(e) => self.fail(format!("allocate on {id}: {e}")),
        }
        self.drain(id);
    }

    /// A newly handed-out address must not be held by any other live pod.
    pub(super) fn check_fresh(&self, id: PeerId, a: IpAddr) {
        for (other, n) in &self.nodes {
            let held =
                n.pods.values().filter(|p| **p == a).count() + usize::from(n.node_addr == Some(a));
            if held > usize::from(*other == id) {
                self.fail(format!(
                    "{a} handed out by {id} is already in use on {other}"
                ));
            }
        }
    }

    pub(super) fn release(&mut self, retry_instead: bool) {
        let Some(id) = self.pick_live() else { return };
        let now = self.now;
        let node = self.nodes.get_mut(&id).unwrap();
        let Some((cid, addr)) = node.pods.iter().next().map(|(c, a)| (c.clone(), *a)) else {
            return;
        };
        let result = if retry_instead {
            node.ipam.allocate(&cid, "eth0", now)
        } else {
            node.pods.remove(&cid);
            node.ipam.release(&cid, "eth0", now)
        };
        match result {
            Ok(a) if a == addr => {}
            other => self.fail(format!("{id} {cid}: expected {addr}, got {other:?}")),
        }
        if !retry_instead {
            self.stats.released += 1;
        }
        self.drain(id);
    }

    pub(super) fn quarantine_or_learning(&self) -> bool {
        self.nodes
            .values()
            .any(|n| !n.ipam.is_ready() || n.ipam.quarantined_until(self.now).is_some())
    }

    pub(super) fn rmpeer(&mut self) {
        if self.partition.is_some() || self.now < self.whole_since + BOUND * 2 {
            return;
        }
        let Some((&dead, _)) = self
            .dead
            .iter()
            .find(|(_, at)| self.now >= **at + BOUND * 2)
        else {
            return;
        };
        let ready: Vec<PeerId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.ipam.is_ready())
            .map(|(i, _)| *i)
            .collect();
        if ready.is_empty() {
            return;
        }
        let reclaimers = if ready.len() > 1 && self.rng.gen_bool(0.3) {
            2
        } else {
            1
        };
        for k in 0..reclaimers {
            let by = ready[(self.rng.gen_range(0..ready.len()) + k) % ready.len()];
            let now = self.now;
            if let Err(e) = self
                .nodes
                .get_mut(&by)
                .unwrap()
                .ipam
                .rmpeer(dead, false, now)
            {
                self.fail(format!("rmpeer {dead} by {by}: {e}"));
            }
            self.drain(by);
        }
        self.dead.remove(&dead);
        self.stats.reclaims += 1;
    }

    /// A drained node leaves (`weft leave`): its pods are released first,
    /// then its ranges go to the routers it can reach, and it is gone.
    pub(super) fn leave(&mut self) {
        if self.nodes.len() <= 3 {
            return;
        }
        let Some(id) = self.pick_live() else { return };
        if self.voters.contains(&id) {
            return;
        }
        let now = self.now;
        let node = self.nodes.get_mut(&id).unwrap();
        for cid in std::mem::take(&mut node.pods).into_keys() {
            if let Err(e) = node.ipam.release(&cid, "eth0", now) {
                self.fail(format!("{id} release {cid} before leaving: {e}"));
            }
            self.stats.released += 1;
        }
        match node.ipam.leave(false, now) {
            Ok(_) => {
                self.drain(id);
                self.nodes.remove(&id);
                if let Some(g) = self.partition.as_mut() {
                    g.remove(&id);
                }
                self.refresh_reachability();
                self.stats.leaves += 1;
            }
            Err(IpamError::NotReady | IpamError::NoHeir) => {
                self.drain(id);
            }
            Err(e) => self.fail(format!("{id} leave: {e}")),
        }
    }
}
