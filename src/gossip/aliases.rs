//! A rotated router's IDs as one node (identity rotation, issue 20). While
//! a rotation spreads, entries still list connections to the old ID, and a
//! neighbour's link may already carry the new one (or still the old one).
//! Routes and reachability follow a connection to either ID to the ID the
//! table holds the router under, so there is no moment at which the router
//! is unreachable because half the mesh names it one way and half the other.

use crate::id::PeerId;
use std::collections::HashMap;

/// ID → the ID the table knows the same router by, and back.
#[derive(Clone, Debug, Default)]
pub struct Aliases {
    forward: HashMap<PeerId, PeerId>,
    back: HashMap<PeerId, Vec<PeerId>>,
}

impl Aliases {
    /// From `(alias, canonical)` pairs; chains (a router rotated twice)
    /// resolve to their end, and a cycle (impossible from verified
    /// rotations) is cut.
    pub fn new(pairs: impl IntoIterator<Item = (PeerId, PeerId)>) -> Self {
        let forward: HashMap<PeerId, PeerId> = pairs.into_iter().filter(|(a, b)| a != b).collect();
        let mut aliases = Self {
            forward,
            back: HashMap::new(),
        };
        let keys: Vec<PeerId> = aliases.forward.keys().copied().collect();
        for alias in keys {
            let canonical = aliases.canonical(alias);
            if canonical != alias {
                aliases.back.entry(canonical).or_default().push(alias);
            }
        }
        aliases
    }

    /// Whether there is nothing to translate (the common case).
    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }

    /// The ID the table holds `id`'s router under.
    pub fn canonical(&self, id: PeerId) -> PeerId {
        let mut at = id;
        for _ in 0..=self.forward.len() {
            match self.forward.get(&at) {
                Some(next) if *next != id => at = *next,
                _ => return at,
            }
        }
        id
    }

    /// The other IDs that resolve to `canonical`.
    pub fn aliases_of(&self, canonical: PeerId) -> &[PeerId] {
        self.back.get(&canonical).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_resolve_to_their_end_and_cycles_stop() {
        let a = Aliases::new([(PeerId(1), PeerId(2)), (PeerId(2), PeerId(3))]);
        assert_eq!(a.canonical(PeerId(1)), PeerId(3));
        assert_eq!(a.canonical(PeerId(3)), PeerId(3));
        assert_eq!(a.canonical(PeerId(9)), PeerId(9));
        let mut back = a.aliases_of(PeerId(3)).to_vec();
        back.sort();
        assert_eq!(back, vec![PeerId(1), PeerId(2)]);
        let cycle = Aliases::new([(PeerId(1), PeerId(2)), (PeerId(2), PeerId(1))]);
        assert!([PeerId(1), PeerId(2)].contains(&cycle.canonical(PeerId(1))));
    }
}
