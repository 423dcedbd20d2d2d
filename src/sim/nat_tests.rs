//! The NAT model ([`super::nat`]) under the real cores: endpoint learning
//! (`control/endpoints.rs`: believed only when two peers agree, never from
//! a symmetric NAT) and the first vote of a cluster whose seeds sit behind
//! 1:1 NAT (`control/ipam/ballot.rs` binding seed addresses to identities,
//! the allocator's vote), at 50 routers over 5 NATed sites.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::nat::{Filtering, Mapping, NatConfig, NatNet};
use crate::control::endpoints::Endpoints;
use crate::control::ipam::{Ballot, PARTIAL_GRACE, PeerDirectory, SeedSlots};
use crate::id::PeerId;
use crate::ipam::signed::TestCrypto;
use crate::ipam::{AddrRange, Allocator, Config, Destination, Init, MemStore, Ring};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

fn ep(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn gateway(last: u8, mapping: Mapping, filtering: Filtering) -> Option<NatConfig> {
    Some(NatConfig {
        public: IpAddr::from([203, 0, 113, last]),
        mapping,
        filtering,
        hairpin: false,
        keeps_unsolicited: None,
    })
}

/// Router X (UDP from 10.1.0.1:6784) sends to `peers` public routers, each
/// of which reports where X's packets come from; what X advertises.
fn advertised_after_reports(mapping: Mapping, peers: u8) -> Vec<SocketAddr> {
    let mut net = NatNet::new(1);
    let internet = net.add_site(None);
    let site = net.add_site(gateway(10, mapping, Filtering::AddressPort));
    let x_ip = IpAddr::from([10, 1, 0, 1]);
    net.add_host(site, x_ip);
    let listen = ep(x_ip, 6783);
    let mut endpoints = Endpoints::new(listen, vec![]);
    for p in 1..=peers {
        let peer_ip = IpAddr::from([192, 0, 2, p]);
        net.add_host(internet, peer_ip);
        let seen = net.send(ep(x_ip, 6784), ep(peer_ip, 6784)).unwrap();
        endpoints.handle_report(PeerId(u64::from(p)), None, Some(seen.seen_from), None);
    }
    endpoints.advertised().to_vec()
}

#[test]
fn a_masquerade_mapping_is_advertised_once_two_peers_see_it_not_one() {
    let public = ep(IpAddr::from([203, 0, 113, 10]), 6784);
    assert!(!advertised_after_reports(Mapping::PortPreserving, 1).contains(&public));
    assert!(advertised_after_reports(Mapping::PortPreserving, 2).contains(&public));
    assert!(advertised_after_reports(Mapping::OneToOne, 3).contains(&public));
}

#[test]
fn a_symmetric_nat_mapping_is_never_advertised() {
    let advertised = advertised_after_reports(Mapping::Symmetric, 6);
    assert_eq!(advertised, vec![ep(IpAddr::from([10, 1, 0, 1]), 6783)]);
}

/// What one router knows of who answered where (the control task's
/// `Directory` reduced to what the ballot reads).
#[derive(Default)]
struct Known {
    answered: HashMap<SocketAddr, PeerId>,
    mine: BTreeSet<SocketAddr>,
    me: Option<PeerId>,
}

impl PeerDirectory for Known {
    fn id_at(&self, addr: SocketAddr) -> Option<PeerId> {
        if self.mine.contains(&addr) {
            return self.me;
        }
        self.answered.get(&addr).copied()
    }
    fn id_named(&self, _: &str) -> Option<PeerId> {
        None
    }
    fn name_of(&self, _: PeerId) -> Option<String> {
        None
    }
}

struct Cluster {
    net: NatNet,
    /// Router ID → its listen address (private).
    listen: BTreeMap<PeerId, SocketAddr>,
    seeds: Vec<SocketAddr>,
    up: BTreeSet<PeerId>,
    known: BTreeMap<PeerId, Known>,
    endpoints: BTreeMap<PeerId, Endpoints>,
    alloc: BTreeMap<PeerId, Allocator<MemStore>>,
    now: Instant,
}

/// 50 routers: the three seeds behind one 1:1 gateway each (hairpin-less),
/// 47 others over a masquerade site, a masquerade site that drops
/// unsolicited inbound, a symmetric site and a public one. Seeds are given
/// by their public addresses, as every router's seed list.
fn cluster(down: &[u64]) -> Cluster {
    let mut net = NatNet::new(5);
    let sites = [
        net.add_site(gateway(11, Mapping::OneToOne, Filtering::AddressPort)),
        net.add_site(gateway(21, Mapping::OneToOne, Filtering::AddressPort)),
        net.add_site(gateway(31, Mapping::OneToOne, Filtering::AddressPort)),
        net.add_site(gateway(41, Mapping::PortPreserving, Filtering::AddressPort)),
        net.add_site(gateway(
            51,
            Mapping::PortPreserving,
            Filtering::DropUnsolicited,
        )),
        net.add_site(gateway(61, Mapping::Symmetric, Filtering::AddressPort)),
        net.add_site(None),
    ];
    let mut listen = BTreeMap::new();
    let mut seeds = Vec::new();
    for i in 1..=50u64 {
        let site = if i <= 3 {
            sites[(i - 1) as usize]
        } else {
            sites[3 + (i as usize % 4)]
        };
        let ip = if site == sites[6] {
            IpAddr::from([198, 51, 100, i as u8])
        } else {
            IpAddr::from([10, site as u8, 0, i as u8])
        };
        let public = net.add_host(site, ip);
        listen.insert(PeerId(i), ep(ip, 6783));
        if i <= 3 {
            seeds.push(ep(public, 6783));
        }
    }
    let up: BTreeSet<PeerId> = (1..=50)
        .map(PeerId)
        .filter(|p| !down.contains(&p.0))
        .collect();
    let now = Instant::now();
    let range = AddrRange::parse("10.32.0.0/12").unwrap();
    let mut alloc = BTreeMap::new();
    let mut endpoints = BTreeMap::new();
    let mut known = BTreeMap::new();
    for id in &up {
        let cfg = Config::new(
            *id,
            range,
            Init::Voters(BTreeSet::new()),
            TestCrypto::boxed(*id),
        );
        let mut a = Allocator::new(cfg, MemStore::default(), &[], now).unwrap();
        a.learn_test_keys(64);
        alloc.insert(*id, a);
        endpoints.insert(*id, Endpoints::new(listen[id], vec![]));
        known.insert(
            *id,
            Known {
                me: Some(*id),
                ..Known::default()
            },
        );
    }
    Cluster {
        net,
        listen,
        seeds,
        up,
        known,
        endpoints,
        alloc,
        now,
    }
}

impl Cluster {
    /// Every live router dials every seed address; a dial that arrives is
    /// answered by the router behind it, which is told where it was reached.
    fn dial_seeds(&mut self) {
        let by_listen: HashMap<SocketAddr, PeerId> =
            self.listen.iter().map(|(id, a)| (*a, *id)).collect();
        for id in self.up.clone() {
            let from = ep(self.listen[&id].ip(), 40000);
            for seed in self.seeds.clone() {
                let Ok(d) = self.net.send(from, seed) else {
                    continue;
                };
                let Some(&answerer) = by_listen.get(&d.to) else {
                    continue;
                };
                if !self.up.contains(&answerer) || answerer == id {
                    continue;
                }
                self.known
                    .get_mut(&id)
                    .unwrap()
                    .answered
                    .insert(seed, answerer);
                let e = self.endpoints.get_mut(&answerer).unwrap();
                e.handle_report(id, Some(seed), None, None);
                let mine: Vec<SocketAddr> = e.mine().collect();
                self.known.get_mut(&answerer).unwrap().mine.extend(mine);
            }
        }
    }

    /// Every live router proposes what its seed slots give after the grace.
    fn propose(&mut self) -> BTreeMap<PeerId, Ballot> {
        let mut out = BTreeMap::new();
        for id in self.up.clone() {
            let mut slots = SeedSlots::default();
            let k = &self.known[&id];
            slots.ballot(k, &self.seeds, id, self.listen[&id], self.now);
            let ballot = slots.ballot(
                k,
                &self.seeds,
                id,
                self.listen[&id],
                self.now + PARTIAL_GRACE,
            );
            if let Ballot::Propose { slots, known, .. } = &ballot {
                let now = self.now;
                self.alloc
                    .get_mut(&id)
                    .unwrap()
                    .set_ballot(*slots, known.clone(), now)
                    .unwrap();
            }
            out.insert(id, ballot);
        }
        out
    }

    /// Carries ring messages between every pair of live routers (the mesh
    /// relays what NAT does not let through directly) until quiet.
    fn pump(&mut self) {
        for _ in 0..20 {
            for _ in 0..200 {
                let mut queue = Vec::new();
                for (id, a) in &mut self.alloc {
                    while let Some((to, bytes)) = a.poll_transmit() {
                        queue.push((*id, to, bytes));
                    }
                    while a.poll_event().is_some() {}
                }
                if queue.is_empty() {
                    break;
                }
                for (from, to, bytes) in queue {
                    let targets: Vec<PeerId> = match to {
                        Destination::Peer(p) => vec![p],
                        _ => self.up.iter().copied().filter(|p| *p != from).collect(),
                    };
                    for t in targets {
                        if let Some(a) = self.alloc.get_mut(&t) {
                            let _ = a.handle_message(from, &bytes, self.now);
                        }
                    }
                }
            }
            self.now += Duration::from_secs(5);
            for a in self.alloc.values_mut() {
                a.handle_timeout(self.now).unwrap();
            }
        }
    }

    fn geneses(&self) -> BTreeSet<crate::ipam::GenesisId> {
        self.alloc
            .values()
            .filter_map(|a| a.ring().map(Ring::genesis_id))
            .collect()
    }

    fn owners(&self) -> BTreeSet<PeerId> {
        let ring = self.alloc.values().find_map(|a| a.ring()).unwrap();
        ring.owners().into_iter().collect()
    }
}

#[test]
fn fifty_routers_over_five_nated_sites_recognise_the_one_to_one_seeds_and_build_one_ring() {
    let mut c = cluster(&[]);
    c.dial_seeds();
    // Each seed learned its public address from the routers that reached it.
    for s in 1..=3 {
        assert!(
            c.known[&PeerId(s)]
                .mine
                .contains(&c.seeds[(s - 1) as usize])
        );
    }
    let ballots = c.propose();
    for s in 1..=3 {
        assert!(
            matches!(&ballots[&PeerId(s)], Ballot::Propose { slots: 3, known, note: None } if known.len() == 3),
            "seed {s}: {:?}",
            ballots[&PeerId(s)]
        );
    }
    c.pump();
    assert_eq!(c.geneses().len(), 1);
    assert!(
        c.alloc.values().all(|a| a.is_ready()),
        "every router learns the ring"
    );
    assert_eq!(c.owners(), (1..=3).map(PeerId).collect());
}

#[test]
fn a_seed_down_at_the_first_start_of_fifty_nated_routers_stalls_nothing_and_joins_later() {
    let mut c = cluster(&[3]);
    c.dial_seeds();
    let ballots = c.propose();
    assert!(
        matches!(&ballots[&PeerId(1)], Ballot::Propose { slots: 3, known, note: Some(_) } if known.len() == 2)
    );
    c.pump();
    assert_eq!(c.geneses().len(), 1);
    assert!(c.alloc.values().all(|a| a.is_ready()));
    assert_eq!(c.owners(), [PeerId(1), PeerId(2)].into());
    let genesis = c.geneses();
    // The seed comes up: it binds every slot, proposes, and is answered with the ring.
    let range = AddrRange::parse("10.32.0.0/12").unwrap();
    let cfg = Config::new(
        PeerId(3),
        range,
        Init::Voters(BTreeSet::new()),
        TestCrypto::boxed(PeerId(3)),
    );
    let mut a = Allocator::new(cfg, MemStore::default(), &[], c.now).unwrap();
    a.learn_test_keys(64);
    c.alloc.insert(PeerId(3), a);
    c.endpoints
        .insert(PeerId(3), Endpoints::new(c.listen[&PeerId(3)], vec![]));
    c.known.insert(
        PeerId(3),
        Known {
            me: Some(PeerId(3)),
            ..Known::default()
        },
    );
    c.up.insert(PeerId(3));
    c.dial_seeds();
    let ballots = c.propose();
    assert!(
        matches!(&ballots[&PeerId(3)], Ballot::Propose { slots: 3, known, note: None } if known.len() == 3)
    );
    c.pump();
    assert_eq!(
        c.geneses(),
        genesis,
        "it joined the ring, it did not start a second"
    );
    assert!(c.alloc[&PeerId(3)].is_ready());
}
