//! Router identities shared by every core: the full ID derived from a
//! router's static key, the 16-bit short ID carried in data headers, and the
//! human-readable name (a label only).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A router's identity: the first 8 bytes (big-endian) of
/// BLAKE2s("weft peer id" ‖ static public key). Ordered, so that "the lower ID"
/// is well defined (rekey initiator, short-ID clashes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerId(pub u64);

impl PeerId {
    /// Derives the ID from a static X25519 public key.
    pub fn from_public_key(public_key: &[u8; 32]) -> Self {
        use blake2::{Blake2s256, Digest};
        let mut hasher = Blake2s256::new();
        hasher.update(b"weft peer id");
        hasher.update(public_key);
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self(u64::from_be_bytes(first))
    }

    /// Whether this router leads its pair with `other`: the lower ID starts
    /// timer rekeys and wins a rekey race, and the connection it dialled wins
    /// a simultaneous dial (DESIGN.md "Rekey"). The one place this rule lives.
    pub fn leads(self, other: Self) -> bool {
        self < other
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The 16-bit ID stamped into data headers (`src_short`, `dst_short`).
/// Gossiped; on a clash the lower full ID keeps its value.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ShortId(pub u16);

impl ShortId {
    /// The short ID a router proposes for itself before any clash is seen:
    /// the low 16 bits of its full ID.
    pub fn preferred(id: PeerId) -> Self {
        Self(id.0 as u16)
    }
}

/// A table keyed by router ID that follows a live identity rotation
/// (issue 20, docs/ARCHITECTURE.md "the live key switch"): the router kept
/// its link, so what was known of it moves from the old ID to the new one
/// instead of being dropped and learned again.
pub trait FollowRotation {
    /// Moves `old`'s entry to `new`. An entry `new` already has is newer
    /// (learned under the new key) and stays; `old`'s is then dropped.
    fn follow_rotation(&mut self, old: PeerId, new: PeerId);
}

impl<V, S: std::hash::BuildHasher> FollowRotation for std::collections::HashMap<PeerId, V, S> {
    fn follow_rotation(&mut self, old: PeerId, new: PeerId) {
        if let Some(value) = self.remove(&old) {
            self.entry(new).or_insert(value);
        }
    }
}

impl<V> FollowRotation for std::collections::BTreeMap<PeerId, V> {
    fn follow_rotation(&mut self, old: PeerId, new: PeerId) {
        if let Some(value) = self.remove(&old) {
            self.entry(new).or_insert(value);
        }
    }
}

impl<S: std::hash::BuildHasher> FollowRotation for std::collections::HashSet<PeerId, S> {
    fn follow_rotation(&mut self, old: PeerId, new: PeerId) {
        if self.remove(&old) {
            self.insert(new);
        }
    }
}

impl FollowRotation for std::collections::BTreeSet<PeerId> {
    fn follow_rotation(&mut self, old: PeerId, new: PeerId) {
        if self.remove(&old) {
            self.insert(new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap, HashSet};

    #[test]
    fn a_rotation_moves_an_entry_and_keeps_one_the_new_id_already_has() {
        let (old, new, other) = (PeerId(1), PeerId(2), PeerId(3));
        let mut map = HashMap::from([(old, "old"), (other, "other")]);
        map.follow_rotation(old, new);
        assert_eq!(map, HashMap::from([(new, "old"), (other, "other")]));
        let mut both = BTreeMap::from([(old, "old"), (new, "new")]);
        both.follow_rotation(old, new);
        assert_eq!(both, BTreeMap::from([(new, "new")]));
        let mut set = HashSet::from([old]);
        set.follow_rotation(old, new);
        assert_eq!(set, HashSet::from([new]));
        set.follow_rotation(other, old);
        assert_eq!(set, HashSet::from([new]), "an unknown ID moves nothing");
    }

    #[test]
    fn peer_id_is_stable_and_key_dependent() {
        let a = PeerId::from_public_key(&[1; 32]);
        assert_eq!(a, PeerId::from_public_key(&[1; 32]));
        assert_ne!(a, PeerId::from_public_key(&[2; 32]));
    }
}
