//! A model of NAT gateways for the simulator (DESIGN.md "Endpoints, NAT and
//! paths"; issue 16): how a packet's addresses change on its way out of one
//! site and into another, and which inbound packets a gateway lets in. It
//! carries no payload and keeps no clock: the harness asks [`NatNet::send`]
//! what becomes of one packet and delivers it itself (over
//! [`super::net::Network`] or directly).
//!
//! Behaviours (RFC 4787 terms), one per site gateway ([`Nat`]):
//! - mapping: [`Mapping::OneToOne`] (a public address per host, ports kept:
//!   a cloud's elastic IP), [`Mapping::PortPreserving`] (endpoint-independent
//!   mapping, the inside port kept while free: Linux masquerade and most
//!   cloud NATs), [`Mapping::Symmetric`] (a new random port per
//!   destination: masquerade `--random-fully`, carrier-grade NATs);
//! - filtering: [`Filtering::Open`] (anything reaching a mapping gets in),
//!   [`Filtering::AddressPort`] (only from an address and port the inside
//!   host sent to: Linux conntrack), [`Filtering::DropUnsolicited`] (nothing
//!   gets in that the inside did not start, not even to a 1:1 address).
//! - hairpin: whether a host can reach a public address of its own gateway;
//! - unsolicited inbound kept ([`NatConfig::keeps_unsolicited`]): a Linux
//!   gateway without an input drop delivers a packet no mapping admits to
//!   itself and keeps a conntrack entry for it; until that entry expires
//!   (the UDP timeout after its last packet), an inside host's flow to
//!   that remote cannot keep its public port and gets another one (the
//!   punching race of ARCHITECTURE.md "Endpoints, NAT and paths"). Time
//!   comes from [`NatNet::set_now`]; without it entries never expire.
//!
//! A site without a gateway ([`NatNet::add_site`] with `None`) is the
//! public internet: its hosts' addresses are reachable from everywhere. A
//! private address is reachable only from its own site.
//!
//! API for other harnesses: [`NatNet::add_site`], [`NatNet::add_host`],
//! [`NatNet::send`] (what the receiver sees, or why it was dropped),
//! [`NatNet::rebind`] (the gateway restarts: mappings forgotten, new ports).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How a gateway picks the public address and port of an outbound flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Each inside host has its own public address; ports are kept.
    OneToOne,
    /// One public address; the inside port is kept while free, else the
    /// next free one; the same mapping for every destination.
    PortPreserving,
    /// One public address; a random port for every new destination.
    Symmetric,
}

/// Which inbound packets a gateway lets through to an inside host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtering {
    /// Anything that reaches a mapping (or a 1:1 address) gets in.
    Open,
    /// Only from an address and port the inside host has sent to through
    /// that mapping (a 1:1 address stays open).
    AddressPort,
    /// Only replies on a flow the inside host started, 1:1 addresses included.
    DropUnsolicited,
}

/// One site's gateway configuration.
#[derive(Clone, Debug)]
pub struct NatConfig {
    /// The gateway's public address (for [`Mapping::OneToOne`], the first
    /// of its public addresses: host `n` gets this one plus `n`).
    pub public: IpAddr,
    /// How outbound flows are mapped.
    pub mapping: Mapping,
    /// What inbound packets are let in.
    pub filtering: Filtering,
    /// Inside hosts may reach the gateway's public addresses.
    pub hairpin: bool,
    /// Unsolicited inbound reaches the gateway itself and leaves an entry
    /// for this long after its last packet (see the module docs); `None`:
    /// it is dropped and leaves nothing.
    pub keeps_unsolicited: Option<Duration>,
}

/// Why [`NatNet::send`] delivered nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The destination is nobody's address (or a private one of another site).
    Unreachable,
    /// The destination's gateway filtered it (no permission for this source).
    Filtered,
    /// A host sent to its own gateway's public address without hairpin.
    NoHairpin,
}

/// What the receiving host sees of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The inside address of the receiving host.
    pub to: SocketAddr,
    /// The source address and port the receiver sees (after the sender's
    /// gateway, if any).
    pub seen_from: SocketAddr,
}

/// One gateway's state: its mappings and the permissions they opened.
#[derive(Debug)]
struct Nat {
    cfg: NatConfig,
    /// 1:1: inside address ↔ public address.
    one_to_one: BTreeMap<IpAddr, IpAddr>,
    /// `(inside, destination or None when endpoint-independent)` → public port.
    out: BTreeMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// Public port → inside endpoint.
    back: BTreeMap<u16, SocketAddr>,
    /// `(public endpoint, remote)` pairs the inside has sent on.
    allowed: BTreeSet<(SocketAddr, SocketAddr)>,
    /// Added to every preserved port after a rebind (a restarted gateway
    /// hands out other ports).
    shift: u16,
    /// Entries for unsolicited inbound kept by the gateway:
    /// `(public endpoint, remote)` → when the last packet arrived.
    kept: BTreeMap<(SocketAddr, SocketAddr), Option<Instant>>,
    /// Flows that could not keep their mapping because of a kept entry:
    /// `(inside, remote)` → public port and when it was last used.
    remapped: BTreeMap<(SocketAddr, SocketAddr), (u16, Option<Instant>)>,
}

impl Nat {
    fn public_of(&self, inside: IpAddr) -> IpAddr {
        self.one_to_one
            .get(&inside)
            .copied()
            .unwrap_or(self.cfg.public)
    }

    /// Whether an entry last refreshed `at` is still alive `now`.
    fn alive(&self, at: Option<Instant>, now: Option<Instant>) -> bool {
        match (self.cfg.keeps_unsolicited, at, now) {
            (Some(timeout), Some(at), Some(now)) => now.saturating_duration_since(at) <= timeout,
            _ => true,
        }
    }

    /// Maps an outbound packet, opening its permission.
    fn outbound(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        rng: &mut StdRng,
        now: Option<Instant>,
    ) -> SocketAddr {
        let public = self.mapped(from, to, rng);
        let public = self.unclash(from, to, public, now);
        self.allowed.insert((public, to));
        public
    }

    /// A flow whose mapping clashes with a kept entry for the same remote
    /// gets another port, kept while the flow is refreshed (Linux: the
    /// reply tuple would equal the kept entry's original tuple).
    fn unclash(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        public: SocketAddr,
        now: Option<Instant>,
    ) -> SocketAddr {
        if let Some((port, at)) = self.remapped.get(&(from, to)).copied() {
            if self.alive(at, now) {
                self.remapped.insert((from, to), (port, now));
                return SocketAddr::new(public.ip(), port);
            }
            self.remapped.remove(&(from, to));
            self.back.remove(&port);
        }
        let clash = self
            .kept
            .get(&(public, to))
            .is_some_and(|at| self.alive(*at, now));
        if !clash {
            return public;
        }
        let mut port = public.port().wrapping_add(7919).max(1024);
        while self.back.contains_key(&port) || port == public.port() {
            port = port.checked_add(1).unwrap_or(1024);
        }
        self.back.insert(port, from);
        self.remapped.insert((from, to), (port, now));
        SocketAddr::new(public.ip(), port)
    }

    /// The mapping of a flow before any clash.
    fn mapped(&mut self, from: SocketAddr, to: SocketAddr, rng: &mut StdRng) -> SocketAddr {
        match self.cfg.mapping {
            Mapping::OneToOne => SocketAddr::new(self.public_of(from.ip()), from.port()),
            Mapping::PortPreserving | Mapping::Symmetric => {
                let key = match self.cfg.mapping {
                    Mapping::Symmetric => (from, Some(to)),
                    _ => (from, None),
                };
                let port = match self.out.get(&key) {
                    Some(port) => *port,
                    None => {
                        let mut port = match self.cfg.mapping {
                            Mapping::Symmetric => rng.gen_range(1024..=65535),
                            _ => from.port().wrapping_add(self.shift).max(1024),
                        };
                        while self.back.contains_key(&port) {
                            port = port.checked_add(1).unwrap_or(1024);
                        }
                        self.out.insert(key, port);
                        self.back.insert(port, from);
                        port
                    }
                };
                SocketAddr::new(self.cfg.public, port)
            }
        }
    }

    /// The inside endpoint for an inbound packet, or why it is dropped; a
    /// packet filtered at a gateway that keeps unsolicited inbound leaves
    /// its entry.
    fn inbound(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        now: Option<Instant>,
    ) -> Result<SocketAddr, Dropped> {
        let verdict = self.admit(from, to);
        if verdict == Err(Dropped::Filtered) && self.cfg.keeps_unsolicited.is_some() {
            self.kept.insert((to, from), now);
        }
        verdict
    }

    fn admit(&self, from: SocketAddr, to: SocketAddr) -> Result<SocketAddr, Dropped> {
        let inside = if let Some((inside, _)) = self
            .one_to_one
            .iter()
            .find(|(_, public)| **public == to.ip())
        {
            SocketAddr::new(*inside, to.port())
        } else if to.ip() == self.cfg.public {
            *self.back.get(&to.port()).ok_or(Dropped::Filtered)?
        } else {
            return Err(Dropped::Unreachable);
        };
        let one_to_one = self.cfg.mapping == Mapping::OneToOne;
        let permitted = self.allowed.contains(&(to, from));
        match self.cfg.filtering {
            Filtering::Open => Ok(inside),
            Filtering::AddressPort if one_to_one || permitted => Ok(inside),
            Filtering::DropUnsolicited if permitted => Ok(inside),
            _ => Err(Dropped::Filtered),
        }
    }

    fn owns(&self, ip: IpAddr) -> bool {
        ip == self.cfg.public || self.one_to_one.values().any(|p| *p == ip)
    }
}

/// Sites, their hosts and gateways (see the module docs).
#[derive(Debug)]
pub struct NatNet {
    sites: Vec<Option<Nat>>,
    site_of: BTreeMap<IpAddr, usize>,
    rng: StdRng,
    now: Option<Instant>,
}

impl NatNet {
    /// No sites yet; `seed` drives symmetric port choice.
    pub fn new(seed: u64) -> Self {
        Self {
            sites: Vec::new(),
            site_of: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            now: None,
        }
    }

    /// A site behind `nat`, or on the public internet with `None`; returns
    /// its index.
    pub fn add_site(&mut self, nat: Option<NatConfig>) -> usize {
        self.sites.push(nat.map(|cfg| Nat {
            cfg,
            one_to_one: BTreeMap::new(),
            out: BTreeMap::new(),
            back: BTreeMap::new(),
            allowed: BTreeSet::new(),
            shift: 0,
            kept: BTreeMap::new(),
            remapped: BTreeMap::new(),
        }));
        self.sites.len() - 1
    }

    /// A host at `addr` in `site`; returns its public address (itself on the
    /// internet, its own public address behind 1:1 NAT, the gateway's
    /// otherwise).
    pub fn add_host(&mut self, site: usize, addr: IpAddr) -> IpAddr {
        self.site_of.insert(addr, site);
        match self.sites.get_mut(site).and_then(Option::as_mut) {
            None => addr,
            Some(nat) if nat.cfg.mapping == Mapping::OneToOne => {
                let n = u8::try_from(nat.one_to_one.len()).unwrap_or(u8::MAX);
                let public = match nat.cfg.public {
                    IpAddr::V4(v4) => {
                        let mut o = v4.octets();
                        o[3] = o[3].wrapping_add(n);
                        IpAddr::from(o)
                    }
                    v6 => v6,
                };
                nat.one_to_one.insert(addr, public);
                public
            }
            Some(nat) => nat.cfg.public,
        }
    }

    /// The time of the next packets (entries of gateways that keep
    /// unsolicited inbound expire by it); it must not go backwards.
    pub fn set_now(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// What becomes of one packet from the host endpoint `from` to `to` (an
    /// inside address of the same site, or a public one).
    pub fn send(&mut self, from: SocketAddr, to: SocketAddr) -> Result<Delivered, Dropped> {
        let Some(&src_site) = self.site_of.get(&from.ip()) else {
            return Err(Dropped::Unreachable);
        };
        if self.site_of.get(&to.ip()) == Some(&src_site) {
            return Ok(Delivered {
                to,
                seen_from: from,
            });
        }
        if let Some(Some(nat)) = self.sites.get(src_site)
            && nat.owns(to.ip())
            && !nat.cfg.hairpin
        {
            return Err(Dropped::NoHairpin);
        }
        let now = self.now;
        let seen_from = match self.sites.get_mut(src_site).and_then(Option::as_mut) {
            Some(nat) => nat.outbound(from, to, &mut self.rng, now),
            None => from,
        };
        // A public host (a site without a gateway) or a gateway's address.
        if let Some(&dst_site) = self.site_of.get(&to.ip()) {
            return match self.sites.get(dst_site) {
                Some(None) => Ok(Delivered { to, seen_from }),
                _ => Err(Dropped::Unreachable),
            };
        }
        for nat in self.sites.iter_mut().flatten() {
            if nat.owns(to.ip()) {
                let inside = nat.inbound(seen_from, to, now)?;
                return Ok(Delivered {
                    to: inside,
                    seen_from,
                });
            }
        }
        Err(Dropped::Unreachable)
    }

    /// The gateway of `site` restarts: every mapping and permission is
    /// forgotten and new ones get other ports (NAT rebinding).
    pub fn rebind(&mut self, site: usize) {
        if let Some(Some(nat)) = self.sites.get_mut(site) {
            nat.out.clear();
            nat.back.clear();
            nat.allowed.clear();
            nat.kept.clear();
            nat.remapped.clear();
            nat.shift = nat.shift.wrapping_add(1000);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ep(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }

    fn ip(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    /// A public host and one NATed site holding 10.0.0.1 and 10.0.0.2.
    fn net(mapping: Mapping, filtering: Filtering) -> (NatNet, usize) {
        let mut net = NatNet::new(7);
        let internet = net.add_site(None);
        net.add_host(internet, ip([192, 0, 2, 1]));
        net.add_host(internet, ip([192, 0, 2, 2]));
        let site = net.add_site(Some(NatConfig {
            public: ip([203, 0, 113, 10]),
            mapping,
            filtering,
            hairpin: false,
            keeps_unsolicited: None,
        }));
        net.add_host(site, ip([10, 0, 0, 1]));
        net.add_host(site, ip([10, 0, 0, 2]));
        (net, site)
    }

    const INSIDE: SocketAddr =
        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 6784);

    #[test]
    fn masquerade_keeps_the_port_and_the_mapping_for_every_destination() {
        let (mut net, _) = net(Mapping::PortPreserving, Filtering::AddressPort);
        let a = net.send(INSIDE, ep([192, 0, 2, 1], 6784)).unwrap();
        let b = net.send(INSIDE, ep([192, 0, 2, 2], 6784)).unwrap();
        assert_eq!(a.seen_from, ep([203, 0, 113, 10], 6784));
        assert_eq!(b.seen_from, a.seen_from);
    }

    #[test]
    fn a_second_host_on_the_same_port_gets_the_next_free_one() {
        let (mut net, _) = net(Mapping::PortPreserving, Filtering::Open);
        net.send(INSIDE, ep([192, 0, 2, 1], 6784)).unwrap();
        let other = net
            .send(ep([10, 0, 0, 2], 6784), ep([192, 0, 2, 1], 6784))
            .unwrap();
        assert_eq!(other.seen_from, ep([203, 0, 113, 10], 6785));
    }

    #[test]
    fn address_port_filtering_lets_in_only_replies_from_where_the_host_sent() {
        let (mut net, _) = net(Mapping::PortPreserving, Filtering::AddressPort);
        let public = ep([203, 0, 113, 10], 6784);
        assert_eq!(
            net.send(ep([192, 0, 2, 1], 6784), public),
            Err(Dropped::Filtered)
        );
        net.send(INSIDE, ep([192, 0, 2, 1], 6784)).unwrap();
        let reply = net.send(ep([192, 0, 2, 1], 6784), public).unwrap();
        assert_eq!(reply.to, INSIDE);
        assert_eq!(
            net.send(ep([192, 0, 2, 2], 6784), public),
            Err(Dropped::Filtered)
        );
        assert_eq!(
            net.send(ep([192, 0, 2, 1], 9999), public),
            Err(Dropped::Filtered)
        );
    }

    #[test]
    fn a_kept_unsolicited_packet_remaps_the_flow_to_its_sender_until_both_expire() {
        let mut net = NatNet::new(7);
        let internet = net.add_site(None);
        net.add_host(internet, ip([192, 0, 2, 1]));
        let site = net.add_site(Some(NatConfig {
            public: ip([203, 0, 113, 10]),
            mapping: Mapping::PortPreserving,
            filtering: Filtering::AddressPort,
            hairpin: false,
            keeps_unsolicited: Some(Duration::from_secs(30)),
        }));
        net.add_host(site, ip([10, 0, 0, 1]));
        let t0 = Instant::now();
        let (remote, public) = (ep([192, 0, 2, 1], 6784), ep([203, 0, 113, 10], 6784));
        net.set_now(t0);
        // The remote's packet arrives before the inside host sent to it.
        assert_eq!(net.send(remote, public), Err(Dropped::Filtered));
        let out = net.send(INSIDE, remote).unwrap().seen_from;
        assert_ne!(out, public, "the kept entry takes the port for this remote");
        // The remote keeps sending to the public port: nothing gets in,
        // and the entry is refreshed.
        net.set_now(t0 + Duration::from_secs(20));
        assert_eq!(net.send(remote, public), Err(Dropped::Filtered));
        assert_eq!(net.send(INSIDE, remote).unwrap().seen_from, out);
        // Both quiet for longer than the timeout: the port is kept again,
        // and the remote's packets are replies.
        net.set_now(t0 + Duration::from_secs(51));
        assert_eq!(net.send(INSIDE, remote).unwrap().seen_from, public);
        assert_eq!(net.send(remote, public).unwrap().to, INSIDE);
        // A host that sent first is never remapped.
        let other = ep([10, 0, 0, 1], 7000);
        net.send(other, remote).unwrap();
        net.send(remote, ep([203, 0, 113, 10], 7000)).unwrap();
        assert_eq!(
            net.send(other, remote).unwrap().seen_from,
            ep([203, 0, 113, 10], 7000)
        );
    }

    #[test]
    fn symmetric_nat_shows_each_destination_another_port() {
        let (mut net, _) = net(Mapping::Symmetric, Filtering::AddressPort);
        let a = net.send(INSIDE, ep([192, 0, 2, 1], 6784)).unwrap();
        let b = net.send(INSIDE, ep([192, 0, 2, 2], 6784)).unwrap();
        assert_eq!(a.seen_from.ip(), b.seen_from.ip());
        assert_ne!(a.seen_from.port(), b.seen_from.port());
        // The same destination keeps its mapping.
        assert_eq!(net.send(INSIDE, ep([192, 0, 2, 1], 6784)).unwrap(), a);
    }

    #[test]
    fn one_to_one_gives_each_host_its_address_and_is_reachable_unsolicited() {
        let (mut net, _) = net(Mapping::OneToOne, Filtering::AddressPort);
        let out = net.send(INSIDE, ep([192, 0, 2, 1], 6784)).unwrap();
        assert_eq!(out.seen_from, ep([203, 0, 113, 10], 6784));
        let second = net
            .send(ep([10, 0, 0, 2], 6784), ep([192, 0, 2, 1], 6784))
            .unwrap();
        assert_eq!(second.seen_from, ep([203, 0, 113, 11], 6784));
        let inbound = net
            .send(ep([192, 0, 2, 2], 1), ep([203, 0, 113, 11], 6783))
            .unwrap();
        assert_eq!(inbound.to, ep([10, 0, 0, 2], 6783));
    }

    #[test]
    fn drop_unsolicited_closes_even_a_one_to_one_address() {
        let (mut net, _) = net(Mapping::OneToOne, Filtering::DropUnsolicited);
        let public = ep([203, 0, 113, 10], 6783);
        assert_eq!(
            net.send(ep([192, 0, 2, 1], 6783), public),
            Err(Dropped::Filtered)
        );
    }

    #[test]
    fn private_addresses_of_another_site_and_hairpin_are_unreachable() {
        let (mut net, _) = net(Mapping::OneToOne, Filtering::Open);
        assert_eq!(
            net.send(ep([192, 0, 2, 1], 1), ep([10, 0, 0, 1], 6783)),
            Err(Dropped::Unreachable)
        );
        assert_eq!(
            net.send(INSIDE, ep([203, 0, 113, 10], 6783)),
            Err(Dropped::NoHairpin)
        );
        // Inside the site, private addresses work.
        assert!(net.send(INSIDE, ep([10, 0, 0, 2], 6783)).is_ok());
    }

    #[test]
    fn a_rebound_gateway_maps_the_same_flow_to_another_port_and_forgets_permissions() {
        let (mut net, site) = net(Mapping::PortPreserving, Filtering::AddressPort);
        let before = net
            .send(INSIDE, ep([192, 0, 2, 1], 6784))
            .unwrap()
            .seen_from;
        net.rebind(site);
        assert_eq!(
            net.send(ep([192, 0, 2, 1], 6784), before),
            Err(Dropped::Filtered)
        );
        let after = net
            .send(INSIDE, ep([192, 0, 2, 1], 6784))
            .unwrap()
            .seen_from;
        assert_ne!(after.port(), before.port());
    }
}
