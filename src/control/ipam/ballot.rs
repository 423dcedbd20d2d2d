//! `consensus` voter slots: turns the seed list into the ballot the
//! allocator votes with (DESIGN.md "Ring initialisation"; the vote itself is
//! `crate::ipam::allocator` `init.rs`). Owns the bindings of seed addresses
//! to identities, sticky until the ring is known, and the grace a partial
//! ballot waits for. No I/O: the directory and `now` come in, a
//! [`Ballot`] goes out.
//!
//! Every router gets the same seed list, so the slots are the seed
//! addresses (this router is a slot when its address is one, or when a seed
//! address turns out to be its own; otherwise, as when routers simply name
//! each other, it is one more slot). A slot is bound to the router that
//! answered there (`PeerDirectory::id_at`), and stays bound: ballots only
//! grow, so voters that reach each other end up proposing the same one. A
//! seed that is down at the very first start leaves its slot unbound; once
//! a majority of the slots is bound the router waits [`PARTIAL_GRACE`] for
//! the rest and then proposes without them (the allocator's majority of
//! locks keeps that safe). Fewer than a majority: it waits and says so.

use super::PeerDirectory;
use crate::id::PeerId;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a majority of bound slots waits for the others before proposing
/// without them: long enough for routers started together to find each
/// other (a first round of dials), short next to a seed that stays down.
pub const PARTIAL_GRACE: Duration = Duration::from_secs(10);

/// What the router can propose now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ballot {
    /// Nothing yet; why (for status and readiness).
    Wait(String),
    /// `slots` voter slots, `known` of them by identity (this router
    /// included); `note` says which seeds are missing when some are.
    Propose {
        /// Voter slots (the quorum is a majority of them).
        slots: usize,
        /// Voters known by identity.
        known: BTreeSet<PeerId>,
        /// Which seeds did not answer, when the ballot is partial.
        note: Option<String>,
    },
}

/// The seed slots' bindings (see the module docs).
#[derive(Debug, Default)]
pub struct SeedSlots {
    bound: BTreeMap<SocketAddr, PeerId>,
    /// When a majority of the slots was first bound with some still
    /// missing (the grace runs from here).
    majority_since: Option<Instant>,
}

impl SeedSlots {
    /// The ballot for `seeds` as the directory knows them now.
    pub fn ballot(
        &mut self,
        directory: &impl PeerDirectory,
        seeds: &[SocketAddr],
        me: PeerId,
        me_listen: SocketAddr,
        now: Instant,
    ) -> Ballot {
        let seeds: BTreeSet<SocketAddr> = seeds.iter().copied().collect();
        for seed in &seeds {
            if self.bound.contains_key(seed) {
                continue;
            }
            let id = if *seed == me_listen {
                Some(me)
            } else {
                directory.id_at(*seed)
            };
            if let Some(id) = id {
                self.bound.insert(*seed, id);
            }
        }
        let mut known: BTreeSet<PeerId> = seeds
            .iter()
            .filter_map(|s| self.bound.get(s).copied())
            .collect();
        let me_is_a_seed = known.contains(&me);
        known.insert(me);
        let slots = seeds.len() + usize::from(!me_is_a_seed);
        let missing: Vec<String> = seeds
            .iter()
            .filter(|s| !self.bound.contains_key(s))
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            self.majority_since = None;
            return Ballot::Propose {
                slots,
                known,
                note: None,
            };
        }
        let quorum = slots / 2 + 1;
        let missing = missing.join(", ");
        if known.len() < quorum {
            self.majority_since = None;
            return Ballot::Wait(format!(
                "voters not reached yet at {missing}: {} of the {slots} voters known, a majority ({quorum}) is needed",
                known.len()
            ));
        }
        let since = *self.majority_since.get_or_insert(now);
        let note = format!(
            "voters not reached yet at {missing} (a majority is: the ring starts without them)"
        );
        if now.duration_since(since) < PARTIAL_GRACE {
            return Ballot::Wait(note);
        }
        Ballot::Propose {
            slots,
            known,
            note: Some(note),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routers by address; `PeerId(1)` is this router.
    struct Dir(BTreeMap<SocketAddr, PeerId>);

    impl PeerDirectory for Dir {
        fn id_at(&self, addr: SocketAddr) -> Option<PeerId> {
            self.0.get(&addr).copied()
        }
        fn id_named(&self, _: &str) -> Option<PeerId> {
            None
        }
        fn name_of(&self, _: PeerId) -> Option<String> {
            None
        }
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 6783))
    }

    fn seeds() -> Vec<SocketAddr> {
        vec![addr(1), addr(2), addr(3)]
    }

    const ME: PeerId = PeerId(1);

    #[test]
    fn every_seed_answering_proposes_the_full_ballot_at_once() {
        let dir = Dir([(addr(2), PeerId(2)), (addr(3), PeerId(3))].into());
        let ballot = SeedSlots::default().ballot(&dir, &seeds(), ME, addr(1), Instant::now());
        assert_eq!(
            ballot,
            Ballot::Propose {
                slots: 3,
                known: [PeerId(1), PeerId(2), PeerId(3)].into(),
                note: None
            }
        );
    }

    #[test]
    fn one_seed_down_proposes_the_majority_after_the_grace_and_says_who_is_missing() {
        let dir = Dir([(addr(2), PeerId(2))].into());
        let mut slots = SeedSlots::default();
        let t0 = Instant::now();
        let early = slots.ballot(&dir, &seeds(), ME, addr(1), t0);
        assert!(
            matches!(&early, Ballot::Wait(why) if why.contains("192.0.2.3:6783")),
            "{early:?}"
        );
        let late = slots.ballot(&dir, &seeds(), ME, addr(1), t0 + PARTIAL_GRACE);
        assert!(
            matches!(&late, Ballot::Propose { slots: 3, known, note: Some(n) }
                if *known == [PeerId(1), PeerId(2)].into() && n.contains("192.0.2.3:6783")),
            "{late:?}"
        );
    }

    #[test]
    fn two_seeds_of_three_down_waits_and_says_a_majority_is_needed() {
        let dir = Dir(BTreeMap::new());
        let mut slots = SeedSlots::default();
        let t0 = Instant::now();
        for t in [t0, t0 + PARTIAL_GRACE * 10] {
            let ballot = slots.ballot(&dir, &seeds(), ME, addr(1), t);
            assert!(
                matches!(&ballot, Ballot::Wait(why) if why.contains("a majority (2) is needed")),
                "{ballot:?}"
            );
        }
    }

    #[test]
    fn a_binding_is_kept_when_the_router_behind_it_is_forgotten() {
        let mut dir = Dir([(addr(2), PeerId(2)), (addr(3), PeerId(3))].into());
        let mut slots = SeedSlots::default();
        let now = Instant::now();
        slots.ballot(&dir, &seeds(), ME, addr(1), now);
        dir.0.clear();
        assert!(matches!(
            slots.ballot(&dir, &seeds(), ME, addr(1), now),
            Ballot::Propose { slots: 3, ref known, note: None } if known.len() == 3
        ));
    }

    #[test]
    fn a_router_not_in_the_seed_list_is_one_more_slot() {
        // Routers naming each other: this one is given the two others.
        let dir = Dir([(addr(2), PeerId(2)), (addr(3), PeerId(3))].into());
        let ballot =
            SeedSlots::default().ballot(&dir, &[addr(2), addr(3)], ME, addr(1), Instant::now());
        assert!(matches!(ballot, Ballot::Propose { slots: 3, ref known, .. } if known.len() == 3));
    }

    #[test]
    fn a_seed_address_that_is_this_routers_own_public_one_is_its_slot() {
        // Behind 1:1 NAT: listens on a private address, seeded by its public one.
        let public = addr(1);
        let dir = Dir([(public, ME), (addr(2), PeerId(2)), (addr(3), PeerId(3))].into());
        let private = SocketAddr::from(([198, 51, 100, 1], 6783));
        let ballot = SeedSlots::default().ballot(&dir, &seeds(), ME, private, Instant::now());
        assert!(matches!(ballot, Ballot::Propose { slots: 3, ref known, .. } if known.len() == 3));
    }
}
