//! The addresses this router has handed out, keyed by who holds them, and
//! the search for a free one inside the ranges it may allocate from.
//! Knows nothing about the ring: the allocator passes the ranges in.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who holds an address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AllocKey {
    /// The router's own address (the /32 on `weft0`).
    Node,
    /// A pod interface, as CNI names it.
    Pod {
        /// CNI `CNI_CONTAINERID`.
        container_id: String,
        /// CNI `CNI_IFNAME`.
        ifname: String,
    },
    /// Seen in use in the kernel at start, holder unknown; never handed out.
    Held(u128),
}

impl AllocKey {
    /// A pod key, validated as CNI requires (see [`validate_pod_key`]).
    pub fn pod(container_id: &str, ifname: &str) -> Result<Self, KeyError> {
        validate_pod_key(container_id, ifname)?;
        Ok(Self::Pod {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
    }
}

/// The Kubernetes pod behind a pod allocation, as kubelet names it in
/// `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`): a label
/// on the allocation, shown by `weft status ipam` and needed by
/// NetworkPolicy, never part of its key (a CNI retry is matched by container
/// ID and interface alone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodName {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID, when the runtime passed it.
    pub uid: Option<String>,
}

impl PodName {
    /// A pod name, checked against what Kubernetes allows (namespace: a
    /// DNS label, at most 63; name: a DNS subdomain, at most 253; UID: at
    /// most 64 characters), leniently as to case and `_`: bounded and
    /// printable is what matters to the state file and the status output.
    pub fn new(namespace: &str, name: &str, uid: Option<&str>) -> Result<Self, KeyError> {
        let ok = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if !ok(namespace, 63) || !ok(name, 253) || !uid.is_none_or(|u| ok(u, 64)) {
            let shown: String = format!("{namespace}/{name}").chars().take(80).collect();
            return Err(KeyError::PodName(shown));
        }
        Ok(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.map(str::to_string),
        })
    }
}

/// A malformed CNI key. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// CNI: the container ID must be non-empty, at most 255 characters of `[A-Za-z0-9_.-]`.
    #[error(
        "invalid container ID {0:?}: must be 1 to 255 characters of letters, digits, '_', '.' or '-'"
    )]
    ContainerId(String),
    /// Linux: an interface name is 1 to 15 bytes without '/', ':' or whitespace, and not `.` or `..`.
    #[error("invalid interface name {0:?}: must be 1 to 15 characters without '/', ':' or spaces")]
    IfName(String),
    /// Kubernetes: a namespace is 1 to 63, a pod name 1 to 253, a UID 1 to
    /// 64 characters of letters, digits, '-', '.' or '_'.
    #[error(
        "invalid pod name {0:?} in CNI_ARGS: namespace, name and UID must be letters, digits, '-', '.' or '_' (at most 63, 253 and 64 characters)"
    )]
    PodName(String),
}

/// Checks a CNI container ID and interface name.
pub fn validate_pod_key(container_id: &str, ifname: &str) -> Result<(), KeyError> {
    let id_ok = !container_id.is_empty()
        && container_id.len() <= 255
        && container_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !id_ok {
        let shown: String = container_id.chars().take(64).collect();
        return Err(KeyError::ContainerId(shown));
    }
    let if_ok = !ifname.is_empty()
        && ifname.len() <= 15
        && ifname != "."
        && ifname != ".."
        && ifname
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if !if_ok {
        let shown: String = ifname.chars().take(32).collect();
        return Err(KeyError::IfName(shown));
    }
    Ok(())
}

/// The allocation table: key ↔ offset, both ways.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocations {
    by_key: BTreeMap<AllocKey, u128>,
    by_offset: BTreeMap<u128, AllocKey>,
    /// The pod behind a pod key, when the plugin named it; dropped with
    /// the key.
    pods: BTreeMap<AllocKey, PodName>,
    cursor: u128,
}

impl Allocations {
    /// Builds a table from `(key, offset)` pairs; later duplicates of an
    /// offset or key are dropped.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (AllocKey, u128)>) -> Self {
        let mut table = Self::default();
        for (key, offset) in pairs {
            table.insert(key, offset);
        }
        table
    }

    /// The `(key, offset)` pairs, by key.
    pub fn pairs(&self) -> impl Iterator<Item = (&AllocKey, u128)> {
        self.by_key.iter().map(|(k, o)| (k, *o))
    }

    /// Number of addresses held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Number of pod allocations (node address and kernel holds excluded).
    pub fn pods(&self) -> u64 {
        self.by_key
            .keys()
            .filter(|k| matches!(k, AllocKey::Pod { .. }))
            .count() as u64
    }

    /// The offset held by `key`.
    pub fn get(&self, key: &AllocKey) -> Option<u128> {
        self.by_key.get(key).copied()
    }

    /// Who holds `offset`.
    pub fn holder(&self, offset: u128) -> Option<&AllocKey> {
        self.by_offset.get(&offset)
    }

    /// Records `key` at `offset`; false (no change) if either is taken.
    pub fn insert(&mut self, key: AllocKey, offset: u128) -> bool {
        if self.by_key.contains_key(&key) || self.by_offset.contains_key(&offset) {
            return false;
        }
        self.by_key.insert(key.clone(), offset);
        self.by_offset.insert(offset, key);
        true
    }

    /// Forgets `key` (and its pod name); returns its offset.
    pub fn remove(&mut self, key: &AllocKey) -> Option<u128> {
        let offset = self.by_key.remove(key)?;
        self.by_offset.remove(&offset);
        self.pods.remove(key);
        Some(offset)
    }

    /// Names the pod behind `key`; false (no change) if `key` holds nothing
    /// or is not a pod key.
    pub fn name_pod(&mut self, key: &AllocKey, pod: PodName) -> bool {
        if !matches!(key, AllocKey::Pod { .. }) || !self.by_key.contains_key(key) {
            return false;
        }
        self.pods.insert(key.clone(), pod);
        true
    }

    /// The pod behind `key`, when it was named.
    pub fn pod(&self, key: &AllocKey) -> Option<&PodName> {
        self.pods.get(key)
    }

    /// Every named pod, by key.
    pub fn pod_names(&self) -> impl Iterator<Item = (&AllocKey, &PodName)> {
        self.pods.iter()
    }

    /// Forgets every key but kernel holds.
    pub fn clear_all_but_holds(&mut self) {
        self.by_key.retain(|k, _| matches!(k, AllocKey::Held(_)));
        self.by_offset.retain(|_, k| matches!(k, AllocKey::Held(_)));
        self.pods.clear();
    }

    /// Number of held offsets inside `lo..=hi`.
    pub fn count_in(&self, lo: u128, hi: u128) -> u128 {
        self.by_offset.range(lo..=hi).count() as u128
    }

    /// A free offset inside `ranges` (inclusive, ascending) that `reserved`
    /// does not exclude, searching from just after the last one handed out
    /// so that consecutive allocations cost O(log n).
    pub fn find_free(
        &mut self,
        ranges: &[(u128, u128)],
        reserved: impl Fn(u128) -> bool,
    ) -> Option<u128> {
        let cursor = self.cursor;
        let pass = |from: u128| {
            ranges
                .iter()
                .filter(|(_, hi)| *hi >= from)
                .find_map(|(lo, hi)| {
                    let mut candidate = (*lo).max(from);
                    loop {
                        if candidate > *hi {
                            return None;
                        }
                        if !reserved(candidate) && !self.by_offset.contains_key(&candidate) {
                            return Some(candidate);
                        }
                        candidate += 1;
                    }
                })
        };
        let found = pass(cursor).or_else(|| pass(0))?;
        self.cursor = found.saturating_add(1);
        Some(found)
    }

    /// The longest run of free offsets inside `ranges`, as `(start, end)`.
    pub fn largest_free_run(
        &self,
        ranges: &[(u128, u128)],
        reserved: impl Fn(u128) -> bool,
    ) -> Option<(u128, u128)> {
        let mut best: Option<(u128, u128)> = None;
        let mut consider = |lo: u128, hi: u128| {
            // Trim reserved offsets off the run's ends (they only sit at the range ends).
            let (mut lo, mut hi) = (lo, hi);
            while lo <= hi && reserved(lo) {
                lo += 1;
            }
            while hi >= lo && reserved(hi) {
                if hi == 0 {
                    return;
                }
                hi -= 1;
            }
            if lo <= hi && best.is_none_or(|(a, b)| hi - lo > b - a) {
                best = Some((lo, hi));
            }
        };
        for (lo, hi) in ranges {
            let mut start = *lo;
            for (offset, _) in self.by_offset.range(*lo..=*hi) {
                if *offset > start {
                    consider(start, offset - 1);
                }
                start = offset + 1;
            }
            if start <= *hi {
                consider(start, *hi);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn container_ids_follow_the_cni_rules() {
        assert!(AllocKey::pod("abc_DEF-1.2", "eth0").is_ok());
        assert!(AllocKey::pod("", "eth0").is_err());
        assert!(AllocKey::pod(&"a".repeat(256), "eth0").is_err());
        assert!(AllocKey::pod("a/b", "eth0").is_err());
        assert!(AllocKey::pod("a b", "eth0").is_err());
        assert!(AllocKey::pod("ok", "").is_err());
        assert!(AllocKey::pod("ok", "a/b").is_err());
        assert!(AllocKey::pod("ok", "sixteen-chars-xx").is_err());
    }

    #[test]
    fn find_free_skips_taken_and_reserved_offsets_and_wraps() {
        let mut t = Allocations::default();
        let ranges = [(0, 3), (10, 11)];
        let reserved = |o| o == 0;
        assert_eq!(t.find_free(&ranges, reserved), Some(1));
        t.insert(AllocKey::Node, 1);
        assert_eq!(t.find_free(&ranges, reserved), Some(2));
        t.insert(AllocKey::Held(2), 2);
        assert_eq!(t.find_free(&ranges, reserved), Some(3));
        t.insert(AllocKey::Held(3), 3);
        assert_eq!(t.find_free(&ranges, reserved), Some(10));
        t.remove(&AllocKey::Held(2));
        t.insert(AllocKey::Held(10), 10);
        t.insert(AllocKey::Held(11), 11);
        assert_eq!(t.find_free(&ranges, reserved), Some(2), "wraps around");
    }

    #[test]
    fn largest_free_run_sees_gaps_between_allocations() {
        let t = Allocations::from_pairs([(AllocKey::Held(5), 5), (AllocKey::Held(6), 6)]);
        assert_eq!(t.largest_free_run(&[(0, 9)], |o| o == 0), Some((1, 4)));
        assert_eq!(
            t.largest_free_run(&[(0, 9), (20, 40)], |_| false),
            Some((20, 40))
        );
        assert_eq!(t.largest_free_run(&[(5, 6)], |_| false), None);
    }
}
