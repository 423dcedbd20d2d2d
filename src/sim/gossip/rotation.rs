//! Identity rotation in the simulation (issue 20): a router moves to a new
//! key live ([`Gossip::rotate`]), and each neighbour moves its link when
//! the link's rekey reaches it, one network delay later
//! ([`Gossip::neighbour_rotated`]). Until then the neighbour still names
//! the router by its old ID, as a driver whose registry has not moved the
//! link yet would.

use super::{GossipSim, Wire};
use crate::crypto::rotation::Rotation;
use crate::crypto::{Identity, SigningKey};
use crate::id::PeerId;

impl GossipSim {
    /// Router `i` moves to `identity` under an announcement issued at the
    /// wall-clock second `issued`. Returns `(old, new)`.
    pub fn rotate_identity(
        &mut self,
        i: usize,
        identity: Identity,
        issued: u64,
    ) -> (PeerId, PeerId) {
        let was = self.routers[i].identity.clone();
        let rotation = Rotation::sign(&was, &identity, issued);
        let (old, new) = (was.id(), identity.id());
        let mut info = self.routers[i].info.clone();
        info.id = new;
        info.public_key = identity.public_key();
        let now = self.now;
        if let Some(g) = self.routers[i].gossip.as_mut()
            && let Err(e) = g.rotate(
                info.clone(),
                SigningKey::from_identity(&identity),
                rotation,
                &SigningKey::from_identity(&was),
                now,
            )
        {
            panic!("rotation refused: {e:?} (seed {})", self.seed);
        }
        self.routers[i].info = info;
        self.routers[i].identity = identity;
        // Frames still addressed to the old ID reach the same router.
        self.idx_of.insert(new, i);
        let neighbours: Vec<usize> = self
            .links
            .iter()
            .filter_map(|&(a, b)| (a == i).then_some(b).or((b == i).then_some(a)))
            .collect();
        for j in neighbours {
            self.known_as.insert((j, i), old);
            let at = now + self.net.delay();
            self.net
                .schedule(at, i, j, Wire::Rekeyed(Box::new(rotation)));
        }
        self.drain(i, true);
        (old, new)
    }

    /// The rekey of the link `from` → `to` under `from`'s new key arrived.
    pub(super) fn rekeyed(&mut self, from: usize, to: usize, rotation: &Rotation) {
        if self.known_as.remove(&(to, from)).is_none() {
            return;
        }
        let Ok((old, new)) = rotation.verify() else {
            return;
        };
        let now = self.now;
        if let Some(g) = self.routers[to].gossip.as_mut()
            && let Err(e) = g.neighbour_rotated(old, new, *rotation, now)
        {
            panic!("neighbour rotation refused: {e:?} (seed {})", self.seed);
        }
        self.drain(to, false);
    }

    /// The ID router `to` knows router `from`'s link by.
    pub(super) fn known_id(&self, to: usize, from: usize) -> PeerId {
        self.known_as
            .get(&(to, from))
            .copied()
            .unwrap_or_else(|| self.id(from))
    }
}

#[cfg(test)]
#[path = "rotation_tests.rs"]
mod tests;
