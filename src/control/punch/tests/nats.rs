//! Two punch cores behind simulated NATs of each kind, with delay and
//! loss, on a virtual clock: probes open and cross the mappings, answers
//! come back through them, the rendezvous forwards requests as offers.
//!
//! NAT model (RFC 4787 terms): `OneToOne` maps one port for every
//! destination and filters nothing; `Masquerade` maps one port for every
//! destination (endpoint-independent mapping, as Linux masquerade gives)
//! and lets in only what comes from an address:port it sent to;
//! `Symmetric` maps another port per destination, never believed, so its
//! router advertises only its listen address.

use super::*;
use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nat {
    OneToOne,
    Masquerade,
    Symmetric,
}

struct Side {
    id: PeerId,
    core: Punch,
    nat: Nat,
    /// Listen address, then the believed public one (none when symmetric).
    advertised: Vec<SocketAddr>,
    public_ip: [u8; 4],
    /// Outbound mappings: destination -> public source port.
    mappings: BTreeMap<SocketAddr, u16>,
    /// Destinations it sent to (the filter of `Masquerade`).
    sent_to: HashSet<SocketAddr>,
}

impl Side {
    fn new(id: u64, nat: Nat, site: u8, seed: u64) -> Self {
        let public_ip = [203, 0, 113, site];
        let mut advertised = vec![SocketAddr::from(([198, 51, 100, site * 64 + 10], 6783))];
        if nat != Nat::Symmetric {
            advertised.push(SocketAddr::from((public_ip, 40_000 + u16::from(site))));
        }
        Self {
            id: PeerId(id),
            core: Punch::new(PeerId(id), seed),
            nat,
            advertised,
            public_ip,
            mappings: BTreeMap::new(),
            sent_to: HashSet::new(),
        }
    }

    /// The public source of a packet this side sends to `to`.
    fn map_out(&mut self, to: SocketAddr, rng: &mut StdRng) -> SocketAddr {
        self.sent_to.insert(to);
        let fixed = self.advertised.get(1).map(SocketAddr::port);
        let port = *self
            .mappings
            .entry(to)
            .or_insert_with(|| fixed.unwrap_or_else(|| rng.gen_range(1024..=65535)));
        SocketAddr::from((self.public_ip, port))
    }

    /// Whether a packet from `from` to this side's `to` gets in.
    fn admits(&self, from: SocketAddr, to: SocketAddr) -> bool {
        let mapped =
            self.mappings.values().any(|p| *p == to.port()) || self.advertised.get(1) == Some(&to);
        to.ip() == std::net::IpAddr::from(self.public_ip)
            && mapped
            && match self.nat {
                Nat::OneToOne => true,
                Nat::Masquerade | Nat::Symmetric => self.sent_to.contains(&from),
            }
    }
}

/// A packet in flight: a probe (answered at arrival) or an answer. Every
/// answer's round trip is twice the one-way delay in this model.
struct Packet {
    at: Instant,
    to_side: usize,
    from: SocketAddr,
    to: SocketAddr,
    probe: bool,
}

/// Runs a punch between A (wants) and B for up to 40 s; returns both
/// sides' final states.
fn run(a: Nat, b: Nat, loss: f64, delay: Duration, seed: u64) -> [Option<PunchState>; 2] {
    let mut rng = StdRng::seed_from_u64(seed);
    let rendezvous = PeerId(0xc);
    let mut sides = [Side::new(0xa, a, 1, seed), Side::new(0xb, b, 2, seed + 1)];
    let t0 = Instant::now();
    let mut now = t0;
    let mut flight: Vec<Packet> = Vec::new();
    let mut offers: Vec<(Instant, usize, Vec<SocketAddr>)> = Vec::new();
    let (ids, eps) = (
        [sides[0].id, sides[1].id],
        [sides[0].advertised.clone(), sides[1].advertised.clone()],
    );
    sides[0]
        .core
        .want(ids[1], Some(rendezvous), &eps[0], &eps[1], now);
    for _ in 0..100_000 {
        for s in [0, 1] {
            while let Some(t) = sides[s].core.poll_transmit() {
                match t {
                    PunchTransmit::Request { candidates, .. } => {
                        // Two hops through the rendezvous; control is reliable.
                        offers.push((now + delay * 2, 1 - s, candidates));
                    }
                    PunchTransmit::Probe { addr, .. } => {
                        let from = sides[s].map_out(addr, &mut rng);
                        if rng.gen_bool(1.0 - loss) {
                            flight.push(Packet {
                                at: now + delay,
                                to_side: 1 - s,
                                from,
                                to: addr,
                                probe: true,
                            });
                        }
                    }
                }
            }
            while sides[s].core.poll_event().is_some() {}
        }
        let next_packet = flight.iter().map(|p| p.at).min();
        let next_offer = offers.iter().map(|o| o.0).min();
        let next_timer = sides
            .iter()
            .filter_map(|s| s.core.poll_timeout())
            .map(|t| t.0)
            .min();
        let Some(next) = [next_packet, next_offer, next_timer]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };
        if next > t0 + Duration::from_secs(40) {
            break;
        }
        now = next;
        if let Some(i) = offers.iter().position(|o| o.0 <= now) {
            let (_, s, candidates) = offers.remove(i);
            sides[s]
                .core
                .handle_offer(ids[1 - s], rendezvous, &eps[s], &candidates, now);
            continue;
        }
        if let Some(i) = flight.iter().position(|p| p.at <= now) {
            let p = flight.remove(i);
            let side = &mut sides[p.to_side];
            if !side.admits(p.from, p.to) {
                continue;
            }
            if p.probe {
                // Answered from the same socket, so through its mapping.
                let from = side.map_out(p.from, &mut rng);
                if rng.gen_bool(1.0 - loss) {
                    flight.push(Packet {
                        at: now + delay,
                        to_side: 1 - p.to_side,
                        from,
                        to: p.from,
                        probe: false,
                    });
                }
            } else {
                let peer = ids[1 - p.to_side];
                side.core.handle_answer(peer, p.from, delay * 2);
            }
            continue;
        }
        for s in &mut sides {
            s.core.handle_timeout(now);
        }
    }
    [sides[0].core.state(ids[1]), sides[1].core.state(ids[0])]
}

fn punched(state: &Option<PunchState>) -> bool {
    matches!(state, Some(PunchState::Punched { .. }))
}

#[test]
fn masquerade_and_one_to_one_pairs_punch_with_delay_and_loss() {
    for (a, b) in [
        (Nat::Masquerade, Nat::Masquerade),
        (Nat::Masquerade, Nat::OneToOne),
        (Nat::OneToOne, Nat::Masquerade),
    ] {
        for seed in 0..20 {
            let states = run(a, b, 0.2, Duration::from_millis(40), seed);
            assert!(
                states.iter().all(punched),
                "{a:?} <-> {b:?}, seed {seed}: {states:?}"
            );
        }
    }
}

#[test]
fn a_pair_with_symmetric_nat_stays_relayed_with_the_reason() {
    for (a, b) in [
        (Nat::Masquerade, Nat::Symmetric),
        (Nat::Symmetric, Nat::Masquerade),
        (Nat::Symmetric, Nat::Symmetric),
    ] {
        let states = run(a, b, 0.0, Duration::from_millis(10), 1);
        assert!(!states.iter().any(punched), "{a:?} <-> {b:?}: {states:?}");
        assert!(
            states.contains(&Some(PunchState::Failed(PunchFailure::SymmetricNat))),
            "{a:?} <-> {b:?}: {states:?}"
        );
    }
}

#[test]
fn total_loss_ends_in_punch_unanswered_not_a_hang() {
    let states = run(
        Nat::Masquerade,
        Nat::Masquerade,
        1.0,
        Duration::from_millis(10),
        3,
    );
    assert_eq!(states[0], Some(PunchState::Failed(PunchFailure::NoAnswer)));
}
