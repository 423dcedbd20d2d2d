//! The lookup the IPAM driver resolves seeds and names through: routers
//! are identities (DESIGN.md "Endpoints, NAT and paths", issue 16), so an
//! address resolves first to the router that answered a dial to it, or to
//! this router when a peer reached it there, and only then to a router
//! that listens there or lists it as an endpoint. A seed given with other
//! addresses of its router (`--peers-from-kube`: a Node's InternalIP and
//! ExternalIP) resolves through any of them: one slot, one voter, whichever
//! address reached it.

use super::endpoints::Endpoints;
use super::ipam::PeerDirectory;
use super::peers::Peers;
use crate::gossip::Gossip;
use crate::id::PeerId;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// Looks routers up by address and name for the IPAM driver.
pub(super) struct Directory<'a> {
    pub(super) me: PeerId,
    pub(super) name: &'a str,
    pub(super) self_addresses: &'a HashSet<SocketAddr>,
    /// The other addresses of each seed's router.
    pub(super) seed_also: &'a HashMap<SocketAddr, Vec<SocketAddr>>,
    pub(super) endpoints: &'a Endpoints,
    pub(super) peers: &'a Peers,
    pub(super) gossip: &'a Gossip,
}

impl PeerDirectory for Directory<'_> {
    /// The router at `addr`, else at one of the other addresses it was
    /// given with as a seed (in their order).
    fn id_at(&self, addr: SocketAddr) -> Option<PeerId> {
        self.id_at_one(addr).or_else(|| {
            self.seed_also
                .get(&addr)?
                .iter()
                .find_map(|a| self.id_at_one(*a))
        })
    }

    fn id_named(&self, name: &str) -> Option<PeerId> {
        if name == self.name {
            return Some(self.me);
        }
        self.gossip.name_holder(name)
    }

    fn name_of(&self, id: PeerId) -> Option<String> {
        self.gossip.entry(id).map(|e| e.name.clone())
    }
}

impl Directory<'_> {
    /// Identity first (issue 16): the router that answered a dial to
    /// `addr`, or this one when a peer reached it there; then a connected
    /// peer's listen or remote address, then the endpoints entries list.
    fn id_at_one(&self, addr: SocketAddr) -> Option<PeerId> {
        if self.self_addresses.contains(&addr) {
            return Some(self.me);
        }
        if let Some(id) = self.endpoints.answered_at(addr) {
            return Some(id);
        }
        self.peers.at_address(addr).map(|p| p.id).or_else(|| {
            self.gossip
                .peers()
                .find(|e| e.addresses.contains(&addr))
                .map(|e| e.id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::Identity;
    use crate::crypto::signing::SigningKey;
    use crate::gossip::{GossipConfig, PeerInfo};
    use rand::{SeedableRng, rngs::StdRng};
    use std::time::{Duration, Instant};

    const LISTEN: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 10)),
        6783,
    );

    /// The identity of the router under test (seeded: the same in every run).
    fn my_identity() -> Identity {
        Identity::generate(&mut StdRng::seed_from_u64(1))
    }

    fn public(last: u8) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, last], 6783))
    }

    fn lookup(
        endpoints: &Endpoints,
        self_addresses: &HashSet<SocketAddr>,
        addr: SocketAddr,
    ) -> Option<PeerId> {
        lookup_seed(endpoints, self_addresses, &HashMap::new(), addr)
    }

    fn lookup_seed(
        endpoints: &Endpoints,
        self_addresses: &HashSet<SocketAddr>,
        seed_also: &HashMap<SocketAddr, Vec<SocketAddr>>,
        addr: SocketAddr,
    ) -> Option<PeerId> {
        let identity = my_identity();
        let me = identity.id();
        let peers = Peers::new(me, Duration::from_secs(120));
        let info = PeerInfo {
            id: me,
            name: "a".into(),
            public_key: identity.public_key(),
            addresses: vec![LISTEN],
        };
        let signer = SigningKey::from_identity(&identity);
        let gossip = Gossip::new(info, signer, GossipConfig::default(), 1, Instant::now());
        let directory = Directory {
            me,
            name: "a",
            self_addresses,
            seed_also,
            endpoints,
            peers: &peers,
            gossip: &gossip,
        };
        directory.id_at(addr)
    }

    #[test]
    fn a_seed_address_resolves_to_the_router_that_answered_a_dial_to_it() {
        let mut endpoints = Endpoints::new(LISTEN, vec![]);
        endpoints.dialled(public(12), PeerId(7));
        assert_eq!(
            lookup(&endpoints, &HashSet::new(), public(12)),
            Some(PeerId(7))
        );
        assert_eq!(lookup(&endpoints, &HashSet::new(), public(13)), None);
    }

    #[test]
    fn an_address_a_peer_reached_me_at_resolves_to_me() {
        let endpoints = Endpoints::new(LISTEN, vec![]);
        let mine: HashSet<SocketAddr> = [LISTEN, public(11)].into();
        assert_eq!(
            lookup(&endpoints, &mine, public(11)),
            Some(my_identity().id())
        );
    }

    /// A Node seeded by its InternalIP in another site, reached at its
    /// ExternalIP: its slot is that router, once, and no other seed's.
    #[test]
    fn a_seed_resolves_through_the_other_addresses_it_was_given_with() {
        let internal = SocketAddr::from(([198, 51, 100, 74], 6783));
        let mut endpoints = Endpoints::new(LISTEN, vec![]);
        endpoints.dialled(public(12), PeerId(7));
        let also: HashMap<SocketAddr, Vec<SocketAddr>> = [(internal, vec![public(12)])].into();
        let none = HashSet::new();
        assert_eq!(
            lookup_seed(&endpoints, &none, &also, internal),
            Some(PeerId(7))
        );
        assert_eq!(lookup(&endpoints, &none, internal), None);
        // An address given with no seed resolves only as itself.
        let other = SocketAddr::from(([198, 51, 100, 75], 6783));
        assert_eq!(lookup_seed(&endpoints, &none, &also, other), None);
    }
}
