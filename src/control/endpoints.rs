//! `Endpoints`: where this router can be reached, and who answers at the
//! addresses it dialled (sans-IO; DESIGN.md "Endpoints, NAT and paths",
//! issue 16).
//!
//! Owns:
//! - the endpoints this router advertises in its topology entry: its listen
//!   address, the operator's (`--advertise`, Kubernetes ExternalIP), and the
//!   addresses peers observe its connections and UDP coming from, believed
//!   only once [`BELIEVED_AFTER`] distinct peers report the same one (a
//!   single peer cannot make this router advertise anything);
//! - the addresses that turned out to be this router's own (a peer answered
//!   by it at an address: its public address behind 1:1 NAT, which it
//!   cannot dial itself through a gateway without hairpin);
//! - which router answered each address this router dialled, so a seed or
//!   an IPAM voter is an identity, whatever address was dialled;
//! - what it has told each peer about that peer (each report is sent once
//!   per change, not per heartbeat).
//!
//! It does not own the connections, the dials or the topology entry: the
//! control task feeds it (`handle_report`, `dialled`, `observe_udp`,
//! `handle_peer_down`) and then drains `poll_event` until `None` (events:
//! an address learned to be mine, the advertised list changed).
//!
//! A report is only ever about its receiver (the sender tells me where *I*
//! come from), so no router can make a claim about another through it.

use crate::id::{FollowRotation, PeerId};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;

/// Distinct peers that must report the same address before it is believed.
pub const BELIEVED_AFTER: usize = 2;

/// Most endpoints a router advertises (the topology entry's bound).
pub const MAX_ENDPOINTS: usize = 8;

/// Most addresses learned to be this router's own from peers' `dialled`
/// reports (a handful in any real topology: one per NAT in front of it and
/// per DNS name); past it a claim is refused and counted.
pub const MAX_MINE: usize = 16;

/// Most of those one peer may bring (its latest `dialled` report replaces
/// the last, so an honest peer brings one, two across a NAT rebinding):
/// past it that peer's claims are refused and counted, so one hostile peer
/// cannot fill [`MAX_MINE`] before the true addresses arrive.
pub const MINE_PER_PEER: usize = 2;

/// What the control task must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointEvent {
    /// A peer reached this router at `addr`: never dial it, count it as
    /// this router in the seed list.
    MineLearned(SocketAddr),
    /// The endpoints to advertise changed (see [`Endpoints::advertised`]).
    AdvertisedChanged,
}

/// Why a peer's `dialled` claim was refused (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    /// The address is another router's.
    OtherRouter = 0,
    /// [`MAX_MINE`] addresses are mine already.
    TooMany = 1,
    /// The peer brought [`MINE_PER_PEER`] addresses already.
    PerPeer = 2,
}

impl Refused {
    fn as_str(self) -> &'static str {
        match self {
            Self::OtherRouter => "observed_refused/other_router",
            Self::TooMany => "observed_refused/too_many",
            Self::PerPeer => "observed_refused/per_peer",
        }
    }
}

/// What one peer last said about this router.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Report {
    dialled: Option<SocketAddr>,
    udp_from: Option<SocketAddr>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Endpoints {
    listen: SocketAddr,
    operator: Vec<SocketAddr>,
    from_kube: Vec<SocketAddr>,
    reports: BTreeMap<PeerId, Report>,
    mine: BTreeSet<SocketAddr>,
    /// How many of `mine` each peer brought.
    brought: HashMap<PeerId, usize>,
    answered: HashMap<SocketAddr, PeerId>,
    told_udp: HashMap<PeerId, SocketAddr>,
    advertised: Vec<SocketAddr>,
    events: VecDeque<EndpointEvent>,
    refused: [u64; 3],
}

impl Endpoints {
    /// Starts with the listen address and the operator's endpoints.
    pub fn new(listen: SocketAddr, operator: Vec<SocketAddr>) -> Self {
        let mut e = Self {
            listen,
            operator,
            from_kube: Vec::new(),
            reports: BTreeMap::new(),
            mine: BTreeSet::new(),
            brought: HashMap::new(),
            answered: HashMap::new(),
            told_udp: HashMap::new(),
            advertised: Vec::new(),
            events: VecDeque::new(),
            refused: [0; 3],
        };
        e.advertised = e.compute();
        e
    }

    /// `from` tells where it reached me: the address it dialled (it got my
    /// static key there) and where my authenticated UDP comes from. A
    /// `None` field keeps what it said before. Unusable addresses
    /// (unspecified, port 0) are ignored; nothing else changes then.
    ///
    /// `owner` is the router the control task knows at `dialled` (a
    /// connected peer's listen or remote address, an address in another
    /// router's signed entry). A `dialled` claim for an address another
    /// router holds (that, or the one that answered my own dial there), or
    /// one past [`MAX_MINE`] or this peer's [`MINE_PER_PEER`], is refused
    /// and counted, and nothing changes:
    /// one peer's word makes an address mine at once (module docs), so it
    /// must not be able to take a router's address from it (this router
    /// would stop dialling it and count it as itself among the voters) nor
    /// grow the set without bound.
    pub fn handle_report(
        &mut self,
        from: PeerId,
        dialled: Option<SocketAddr>,
        udp_from: Option<SocketAddr>,
        owner: Option<PeerId>,
    ) {
        let usable = |a: &SocketAddr| !a.ip().is_unspecified() && a.port() != 0;
        if let Some(a) = dialled.filter(usable)
            && let Err(reason) = self.claim(from, a, owner)
        {
            self.refused[reason as usize] += 1;
            return;
        }
        let report = self.reports.entry(from).or_default();
        if let Some(a) = dialled.filter(usable) {
            report.dialled = Some(a);
        }
        if let Some(a) = udp_from.filter(usable) {
            report.udp_from = Some(a);
        }
        self.refresh();
    }

    /// Takes `from`'s word that `a` is mine, unless `owner` or the router
    /// that answered my dial there is another router, or the set or its
    /// share of it is full.
    fn claim(&mut self, from: PeerId, a: SocketAddr, owner: Option<PeerId>) -> Result<(), Refused> {
        if owner.or_else(|| self.answered_at(a)).is_some() {
            return Err(Refused::OtherRouter);
        }
        if a == self.listen || self.mine.contains(&a) {
            return Ok(());
        }
        if self.mine.len() >= MAX_MINE {
            return Err(Refused::TooMany);
        }
        let brought = self.brought.entry(from).or_default();
        if *brought >= MINE_PER_PEER {
            return Err(Refused::PerPeer);
        }
        *brought += 1;
        self.mine.insert(a);
        tracing::info!(address = %a, "a peer reached this router at an address of its own");
        self.events.push_back(EndpointEvent::MineLearned(a));
        Ok(())
    }

    /// `old` moved to the identity key of `new` on a live link (issue 20):
    /// its reports of our addresses stand, as the same router's.
    pub fn follow_rotation(&mut self, old: PeerId, new: PeerId) {
        self.reports.follow_rotation(old, new);
        self.brought.follow_rotation(old, new);
        self.told_udp.follow_rotation(old, new);
        for answered in self.answered.values_mut() {
            if *answered == old {
                *answered = new;
            }
        }
    }

    /// A peer went away: its reports no longer count, and it is told again
    /// when it returns.
    pub fn handle_peer_down(&mut self, peer: PeerId) {
        self.reports.remove(&peer);
        self.told_udp.remove(&peer);
        self.refresh();
    }

    /// The endpoints this router's Kubernetes Node gives it (ExternalIPs,
    /// the `weft.dev/advertise` annotation), replacing the last list: they
    /// come after the `--advertise` ones and before the observed ones.
    /// Unusable addresses are ignored, as in reports.
    pub fn set_from_kube(&mut self, mut addrs: Vec<SocketAddr>) {
        addrs.retain(|a| !a.ip().is_unspecified() && a.port() != 0);
        addrs.truncate(MAX_ENDPOINTS);
        self.from_kube = addrs;
        self.refresh();
    }

    /// I dialled `addr` and `peer` answered (the handshake proved its key).
    pub fn dialled(&mut self, addr: SocketAddr, peer: PeerId) {
        self.answered.insert(addr, peer);
    }

    /// The router that answered my dial to `addr`, if any.
    pub fn answered_at(&self, addr: SocketAddr) -> Option<PeerId> {
        self.answered.get(&addr).copied()
    }

    /// An authenticated packet from `peer` came from `from`: returns true
    /// when the peer should be told (the first time, or it moved).
    pub fn observe_udp(&mut self, peer: PeerId, from: SocketAddr) -> bool {
        self.told_udp.insert(peer, from) != Some(from)
    }

    /// `peer`'s record moved to a new connection (adopted): what it was
    /// told may have gone down with the old one (a NAT rebinding breaks the
    /// connection just as it moves the address), so it is told again.
    pub fn retell(&mut self, peer: PeerId) {
        self.told_udp.remove(&peer);
    }

    /// What to advertise: the listen address, the operator's endpoints
    /// (`--advertise`, then the Kubernetes Node's), then the believed
    /// observed ones, at most [`MAX_ENDPOINTS`].
    pub fn advertised(&self) -> &[SocketAddr] {
        &self.advertised
    }

    /// Addresses peers reached me at.
    pub fn mine(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.mine.iter().copied()
    }

    /// Claims refused since start, by reason (status `paths`).
    pub fn refused(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        [Refused::OtherRouter, Refused::TooMany, Refused::PerPeer]
            .into_iter()
            .map(|r| (r.as_str(), self.refused[r as usize]))
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    fn refresh(&mut self) {
        let now = self.compute();
        if now != self.advertised {
            self.advertised = now;
            self.events.push_back(EndpointEvent::AdvertisedChanged);
        }
    }

    fn compute(&self) -> Vec<SocketAddr> {
        let mut votes: BTreeMap<SocketAddr, BTreeSet<PeerId>> = BTreeMap::new();
        for (peer, r) in &self.reports {
            for a in [r.dialled, r.udp_from].into_iter().flatten() {
                votes.entry(a).or_default().insert(*peer);
            }
        }
        let mut out = vec![self.listen];
        let believed = votes
            .into_iter()
            .filter(|(_, peers)| peers.len() >= BELIEVED_AFTER)
            .map(|(a, _)| a);
        let given = self.operator.iter().chain(&self.from_kube).copied();
        for a in given.chain(believed) {
            if !out.contains(&a) && out.len() < MAX_ENDPOINTS {
                out.push(a);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, last], port))
    }
    const LISTEN: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 2)),
        6783,
    );

    fn drain(e: &mut Endpoints) -> Vec<EndpointEvent> {
        std::iter::from_fn(|| e.poll_event()).collect()
    }

    fn refused(e: &Endpoints, reason: &str) -> u64 {
        e.refused()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| n)
    }

    #[test]
    fn an_observed_address_from_a_single_peer_changes_nothing_advertised() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        e.handle_report(PeerId(1), None, Some(a(11, 6783)), None);
        assert_eq!(e.advertised(), &[LISTEN]);
        assert!(drain(&mut e).is_empty());
    }

    #[test]
    fn an_address_two_peers_agree_on_is_advertised_after_the_operators() {
        let mut e = Endpoints::new(LISTEN, vec![a(99, 443)]);
        e.handle_report(PeerId(1), None, Some(a(11, 6783)), None);
        e.handle_report(PeerId(2), Some(a(11, 6783)), None, None);
        assert_eq!(e.advertised(), &[LISTEN, a(99, 443), a(11, 6783)]);
        assert!(drain(&mut e).contains(&EndpointEvent::AdvertisedChanged));
    }

    #[test]
    fn the_kubernetes_nodes_endpoints_follow_the_operators_and_are_replaced_whole() {
        let mut e = Endpoints::new(LISTEN, vec![a(99, 443)]);
        e.set_from_kube(vec![a(20, 6783), a(21, 0)]);
        assert_eq!(e.advertised(), &[LISTEN, a(99, 443), a(20, 6783)]);
        assert_eq!(drain(&mut e), vec![EndpointEvent::AdvertisedChanged]);
        // The same list again changes nothing; a new one replaces it.
        e.set_from_kube(vec![a(20, 6783)]);
        assert!(drain(&mut e).is_empty());
        e.set_from_kube(vec![a(22, 6783)]);
        assert_eq!(e.advertised(), &[LISTEN, a(99, 443), a(22, 6783)]);
        e.set_from_kube(vec![]);
        assert_eq!(e.advertised(), &[LISTEN, a(99, 443)]);
    }

    #[test]
    fn a_rotated_peer_is_one_witness_not_two() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        e.handle_report(PeerId(1), None, Some(a(11, 6783)), None);
        e.follow_rotation(PeerId(1), PeerId(3));
        // The same router under its new key says it again: still one word.
        e.handle_report(PeerId(3), None, Some(a(11, 6783)), None);
        assert_eq!(e.advertised(), &[LISTEN]);
        e.handle_report(PeerId(2), None, Some(a(11, 6783)), None);
        assert_eq!(e.advertised(), &[LISTEN, a(11, 6783)]);
        // Its report went with it: gone when it goes.
        e.handle_peer_down(PeerId(3));
        assert_eq!(e.advertised(), &[LISTEN]);
    }

    #[test]
    fn a_symmetric_nat_giving_each_peer_another_port_is_never_believed() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        for p in 1..6 {
            e.handle_report(
                PeerId(p),
                None,
                Some(a(30, 40_000 + u16::from(p as u8))),
                None,
            );
        }
        assert_eq!(e.advertised(), &[LISTEN]);
    }

    #[test]
    fn a_peer_that_dialled_me_at_an_address_makes_it_mine_once() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        e.handle_report(PeerId(1), Some(a(11, 6783)), None, None);
        e.handle_report(PeerId(2), Some(a(11, 6783)), None, None);
        let events = drain(&mut e);
        let learned: Vec<_> = events
            .iter()
            .filter(|ev| matches!(ev, EndpointEvent::MineLearned(_)))
            .collect();
        assert_eq!(learned, vec![&EndpointEvent::MineLearned(a(11, 6783))]);
        assert_eq!(e.mine().collect::<Vec<_>>(), vec![a(11, 6783)]);
    }

    #[test]
    fn a_peer_that_leaves_takes_its_vote_with_it() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        e.handle_report(PeerId(1), None, Some(a(11, 6783)), None);
        e.handle_report(PeerId(2), None, Some(a(11, 6783)), None);
        assert_eq!(e.advertised().len(), 2);
        e.handle_peer_down(PeerId(2));
        assert_eq!(e.advertised(), &[LISTEN]);
    }

    #[test]
    fn one_peer_reporting_many_addresses_counts_once_for_each() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        e.handle_report(PeerId(1), Some(a(11, 6783)), Some(a(11, 6783)), None);
        assert_eq!(e.advertised(), &[LISTEN]);
    }

    #[test]
    fn the_advertised_list_is_bounded() {
        let ops: Vec<SocketAddr> = (1..20).map(|i| a(i, 6783)).collect();
        let e = Endpoints::new(LISTEN, ops);
        assert_eq!(e.advertised().len(), MAX_ENDPOINTS);
        assert_eq!(e.advertised()[0], LISTEN);
    }

    #[test]
    fn a_peer_is_told_its_udp_source_once_per_change() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        assert!(e.observe_udp(PeerId(1), a(5, 6783)));
        assert!(!e.observe_udp(PeerId(1), a(5, 6783)));
        assert!(e.observe_udp(PeerId(1), a(5, 7000)));
        e.handle_peer_down(PeerId(1));
        assert!(e.observe_udp(PeerId(1), a(5, 7000)));
    }

    #[test]
    fn a_claim_that_another_routers_address_is_mine_changes_nothing_and_is_counted() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        // I dialled a(12) and router 7 answered there: it is router 7's.
        e.dialled(a(12, 6783), PeerId(7));
        e.handle_report(PeerId(1), Some(a(12, 6783)), None, None);
        assert!(
            drain(&mut e).is_empty(),
            "nothing learned, nothing advertised"
        );
        assert_eq!(e.mine().count(), 0);
        // An address the control task knows as router 8's (its listen
        // address, its signed entry).
        e.handle_report(PeerId(1), Some(a(13, 6783)), None, Some(PeerId(8)));
        assert!(drain(&mut e).is_empty());
        assert_eq!(e.mine().count(), 0);
        assert_eq!(refused(&e, "observed_refused/other_router"), 2);
        // An address nobody holds is still taken from one peer.
        e.handle_report(PeerId(1), Some(a(14, 6783)), None, None);
        assert_eq!(drain(&mut e), vec![EndpointEvent::MineLearned(a(14, 6783))]);
    }

    #[test]
    fn a_flood_of_dialled_claims_from_one_peer_learns_a_bounded_number_of_addresses() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        for i in 0..10_000u32 {
            let addr = a((i % 250) as u8, 1000 + (i / 250) as u16);
            e.handle_report(PeerId(1), Some(addr), Some(addr), None);
        }
        assert_eq!(e.mine().count(), MINE_PER_PEER);
        let learned = drain(&mut e)
            .iter()
            .filter(|ev| matches!(ev, EndpointEvent::MineLearned(_)))
            .count();
        assert_eq!(learned, e.mine().count());
        assert_eq!(e.advertised(), &[LISTEN], "one peer is never believed");
        assert_eq!(
            refused(&e, "observed_refused/per_peer"),
            10_000 - MINE_PER_PEER as u64
        );
    }

    #[test]
    fn one_peer_filling_its_share_leaves_room_for_the_true_address_from_another() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        for i in 0..100 {
            e.handle_report(PeerId(1), Some(a(100 + i, 6783)), None, None);
        }
        drain(&mut e);
        e.handle_report(PeerId(2), Some(a(1, 6783)), None, None);
        assert_eq!(drain(&mut e), vec![EndpointEvent::MineLearned(a(1, 6783))]);
        assert!(e.mine().any(|m| m == a(1, 6783)));
    }

    #[test]
    fn many_peers_still_fill_only_the_global_cap() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        for p in 0..40u64 {
            for i in 0..2u8 {
                e.handle_report(PeerId(p), Some(a(i, 2000 + p as u16)), None, None);
            }
        }
        assert_eq!(e.mine().count(), MAX_MINE);
        assert_eq!(
            refused(&e, "observed_refused/too_many"),
            80 - MAX_MINE as u64
        );
    }

    #[test]
    fn the_router_that_answered_a_dial_is_found_by_that_address() {
        let mut e = Endpoints::new(LISTEN, vec![]);
        e.dialled(a(12, 6783), PeerId(7));
        assert_eq!(e.answered_at(a(12, 6783)), Some(PeerId(7)));
        assert_eq!(e.answered_at(a(13, 6783)), None);
    }
}
