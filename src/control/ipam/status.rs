//! The `ipam` status object and the driver's counters.

use super::IpamDriver;
use crate::api::proto::{AddressHolder, IpamStatus, OwnerRange, PodRef, RangeStatus};
use crate::id::PeerId;
use crate::ipam::{AllocKey, Phase, PodName};
use std::collections::BTreeMap;
use std::time::Instant;

impl IpamDriver {
    /// One line on why the allocator is not ready (or the conflict's fix).
    pub(super) fn detail(&self) -> Option<String> {
        match self.alloc.phase() {
            Phase::Ready => None,
            Phase::WaitingForVoters {
                agreed,
                locked,
                slots,
                quorum,
                mismatched,
            } => {
                let mut line = format!(
                    "{agreed} of {quorum} voters needed (a majority of {slots}) agree on the first split, {locked} locked it"
                );
                if !mismatched.is_empty() {
                    line.push_str("; routers with another seed list or range: ");
                    line.push_str(&mismatched.join(", "));
                }
                if let Some(why) = &self.waiting_for {
                    line.push_str("; ");
                    line.push_str(why);
                }
                Some(line)
            }
            Phase::WaitingForRing => Some(
                self.waiting_for
                    .clone()
                    .unwrap_or_else(|| "waiting to learn the ring from a peer".into()),
            ),
            Phase::Conflict { ours, theirs } => Some(format!(
                "ring {ours} (here) and ring {theirs} (a peer) were initialised separately: on the side with no pods run `weft reset --state` and restart it"
            )),
            Phase::Tombstoned { reclaimer } => Some(format!(
                "reclaimed by {reclaimer}: run `weft reset --state` and restart"
            )),
        }
        .or_else(|| self.waiting_for.clone())
    }

    /// The `ipam` object of `weft status --json`.
    pub fn status(&self, reachable: impl Fn(PeerId) -> bool, now: Instant) -> IpamStatus {
        let core = self.alloc.status(now);
        let state = match core.state {
            Phase::Ready => "ready",
            Phase::WaitingForVoters { .. } => "waiting_for_voters",
            Phase::WaitingForRing => "waiting_for_ring",
            Phase::Conflict { .. } => "conflict",
            Phase::Tombstoned { .. } => "tombstoned",
        };
        let me = self.alloc.id();
        let unreachable: Vec<(u128, u128, PeerId)> = self
            .owner_offsets()
            .into_iter()
            .filter(|(_, _, owner)| *owner != me && !reachable(*owner))
            .collect();
        let text = |offset| self.range.addr(offset).map(|a| a.to_string());
        let unreachable_ranges = unreachable
            .iter()
            .map(|&(lo, hi, owner)| OwnerRange {
                owner: self.label(owner),
                start: text(lo).unwrap_or_default(),
                end: text(hi).unwrap_or_default(),
            })
            .collect();
        let mut allocations: Vec<AddressHolder> = self
            .alloc
            .allocations()
            .into_iter()
            .map(|(key, addr)| {
                let pod = self.alloc.pod_name(&key).map(pod_ref);
                let (kind, container_id, ifname) = match key {
                    AllocKey::Node => ("node", None, None),
                    AllocKey::Pod {
                        container_id,
                        ifname,
                    } => ("pod", Some(container_id), Some(ifname)),
                    AllocKey::Held(_) => ("held", None, None),
                };
                AddressHolder {
                    address: addr.to_string(),
                    kind: kind.into(),
                    container_id,
                    ifname,
                    pod,
                }
            })
            .collect();
        allocations.sort_by(|a, b| a.address.cmp(&b.address));
        let unreachable_share = unreachable
            .iter()
            .map(|(lo, hi, _)| (hi - lo) as f64 + 1.0)
            .sum::<f64>()
            / self.range.size() as f64;
        IpamStatus {
            range: core.range,
            mode: self.mode.label().into(),
            state: state.into(),
            detail: self.detail(),
            genesis: core.genesis,
            owned_ranges: core
                .owned_ranges
                .iter()
                .map(|r| RangeStatus {
                    start: r.start.to_string(),
                    end: r.end.to_string(),
                })
                .collect(),
            owned_addresses: u64::try_from(core.owned_addresses).unwrap_or(u64::MAX),
            allocated: core.allocated,
            free: u64::try_from(core.free).unwrap_or(u64::MAX),
            ring_peers: core.ring_peers,
            unreachable_share,
            unreachable_ranges,
            allocations,
            titles_required: self.alloc.titles_required_of_all(),
            titles_waiting_for: self
                .alloc
                .titles_waiting_for()
                .into_iter()
                .map(|p| self.label(p))
                .collect(),
        }
    }

    /// API requests by `op/result` and refused ring messages by kind, for metrics.
    pub fn counters(&self) -> (&BTreeMap<String, u64>, &BTreeMap<&'static str, u64>) {
        (&self.requests, &self.refused)
    }
}

fn pod_ref(pod: &PodName) -> PodRef {
    PodRef {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
    }
}
