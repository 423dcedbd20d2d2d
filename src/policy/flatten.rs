//! One pod's rules in one direction, flattened into disjoint entries, the
//! shape an nftables interval verdict map needs: addresses → policy (rules
//! without ports), and protocol · addresses · ports → policy. Where several
//! policies allow the same packet, the first by `namespace/name` is the one
//! named in counters and logs. Lookups are per entry kind, so the cost per
//! packet does not grow with the number of policies (issue 18,
//! "Enforcement"). [`Direction::decide`] is the same decision in Rust: the
//! truth tables test it, so they test what nftables is given. Pure.

use super::addrs::{Addr, AddrSet};
use super::compile::{PolicyId, Proto};
use std::collections::{BTreeMap, BTreeSet};

/// One allow of one policy before flattening: peer addresses times
/// (protocol, port range), or times everything when `ports` is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawBox {
    /// The peers.
    pub addrs: AddrSet,
    /// `None`: any protocol, any port.
    pub ports: Option<(Proto, u16, u16)>,
    /// Index into the direction's `selected_by`.
    pub policy: usize,
}

/// Peers allowed on every port: an inclusive address range and the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrEntry {
    /// First and last address.
    pub addrs: (Addr, Addr),
    /// Index into `selected_by`.
    pub policy: usize,
}

/// Peers allowed on some ports of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEntry {
    /// The protocol.
    pub proto: Proto,
    /// First and last address.
    pub addrs: (Addr, Addr),
    /// First and last port.
    pub ports: (u16, u16),
    /// Index into `selected_by`.
    pub policy: usize,
}

/// One direction of one pod: the policies that select it (none: open) and
/// what they allow, as disjoint entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Direction {
    /// The selecting policies, by name; entries point into this list.
    pub selected_by: Vec<PolicyId>,
    /// Peers allowed whatever the protocol and port.
    pub any_port: Vec<AddrEntry>,
    /// Peers allowed on given ports, disjoint per protocol.
    pub by_port: Vec<PortEntry>,
}

/// What decided about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No policy selects the pod in this direction.
    Open,
    /// Allowed by `selected_by[i]`.
    Allowed(usize),
    /// Selected, and nothing allows it: the namespace's default deny.
    Denied,
}

impl Decision {
    /// Whether the packet passes.
    pub fn passes(self) -> bool {
        !matches!(self, Self::Denied)
    }
}

impl Direction {
    /// Flattens the boxes of the policies in `selected_by`.
    pub fn flatten(selected_by: Vec<PolicyId>, boxes: &[RawBox]) -> Self {
        let any: Segments = boxes
            .iter()
            .filter(|b| b.ports.is_none())
            .flat_map(|b| b.addrs.ranges().iter().map(|&(lo, hi)| (lo, hi, b.policy)))
            .collect();
        let any_port = sweep_first(&any)
            .into_iter()
            .map(|(lo, hi, policy)| AddrEntry {
                addrs: (lo, hi),
                policy,
            })
            .collect();
        let mut by_port = Vec::new();
        for proto in Proto::ALL {
            let boxes: Vec<&RawBox> = boxes
                .iter()
                .filter(|b| b.ports.is_some_and(|(p, _, _)| p == proto))
                .collect();
            by_port.extend(flatten_ports(proto, &boxes));
        }
        Self {
            selected_by,
            any_port,
            by_port,
        }
    }

    /// Whether some policy selects the pod in this direction.
    pub fn is_isolated(&self) -> bool {
        !self.selected_by.is_empty()
    }

    /// The decision for a packet whose other end is `peer`; `transport` is
    /// its protocol and destination port, `None` for other protocols.
    pub fn decide(&self, peer: Addr, transport: Option<(Proto, u16)>) -> Decision {
        if !self.is_isolated() {
            return Decision::Open;
        }
        let within = |(lo, hi): (Addr, Addr), a: Addr| (lo..=hi).contains(&a);
        if let Some(e) = self.any_port.iter().find(|e| within(e.addrs, peer)) {
            return Decision::Allowed(e.policy);
        }
        if let Some((proto, port)) = transport
            && let Some(e) = self.by_port.iter().find(|e| {
                e.proto == proto && within(e.addrs, peer) && e.ports.0 <= port && port <= e.ports.1
            })
        {
            return Decision::Allowed(e.policy);
        }
        Decision::Denied
    }
}

/// A point of the line one past an address: `(false, a)` is `a`, `(true, 0)`
/// is one past [`Addr::MAX`] (an interval's exclusive end can be there).
type Point = (bool, Addr);

fn at(a: Addr) -> Point {
    (false, a)
}

/// The point just after `a`.
fn after(a: Addr) -> Point {
    match a.checked_add(1) {
        Some(next) => (false, next),
        None => (true, 0),
    }
}

/// The last address before `p` (`p` is never the line's start here: it
/// follows an event).
fn before(p: Point) -> Addr {
    match p {
        (true, _) => Addr::MAX,
        (false, a) => a.saturating_sub(1),
    }
}

/// Disjoint, merged segments of the union of `segments` (inclusive), each
/// with the least policy index covering it.
fn sweep_first(segments: &[(Addr, Addr, usize)]) -> Segments {
    let mut events: Vec<(Point, bool, usize)> = Vec::with_capacity(segments.len() * 2);
    for &(lo, hi, policy) in segments {
        events.push((at(lo), true, policy));
        events.push((after(hi), false, policy));
    }
    events.sort_unstable();
    let mut active: BTreeMap<usize, usize> = BTreeMap::new();
    let mut out: Segments = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let here = events[i].0;
        while i < events.len() && events[i].0 == here {
            let (_, start, policy) = events[i];
            let count = active.entry(policy).or_insert(0);
            if start {
                *count += 1;
            } else {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    active.remove(&policy);
                }
            }
            i += 1;
        }
        let (Some((&policy, _)), Some(&(next, _, _))) = (active.first_key_value(), events.get(i))
        else {
            continue;
        };
        let lo = here.1;
        match out.last_mut() {
            Some(last) if after(last.1) == here && last.2 == policy => last.1 = before(next),
            _ => out.push((lo, before(next), policy)),
        }
    }
    out
}

/// Disjoint segments `(first, last, policy)`, inclusive.
type Segments = Vec<(Addr, Addr, usize)>;

/// First address, last address, and the port map of the addresses between.
type Piece = (Addr, Addr, Segments);

/// The protocol's entries: addresses cut where the set of boxes covering
/// them changes; within each piece, ports swept like addresses; neighbouring
/// pieces with the same port map merged.
fn flatten_ports(proto: Proto, boxes: &[&RawBox]) -> Vec<PortEntry> {
    let mut events: Vec<(Point, bool, usize)> = Vec::new();
    for (i, b) in boxes.iter().enumerate() {
        for &(lo, hi) in b.addrs.ranges() {
            events.push((at(lo), true, i));
            events.push((after(hi), false, i));
        }
    }
    events.sort_unstable();
    let mut active: BTreeSet<usize> = BTreeSet::new();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let here = events[i].0;
        while i < events.len() && events[i].0 == here {
            let (_, start, b) = events[i];
            if start {
                active.insert(b);
            } else {
                active.remove(&b);
            }
            i += 1;
        }
        let Some(&(next, _, _)) = events.get(i) else {
            continue;
        };
        if active.is_empty() {
            continue;
        }
        let ports: Segments = active
            .iter()
            .filter_map(|&b| {
                let (_, lo, hi) = boxes[b].ports?;
                Some((Addr::from(lo), Addr::from(hi), boxes[b].policy))
            })
            .collect();
        let map = sweep_first(&ports);
        match pieces.last_mut() {
            Some(last) if after(last.1) == here && last.2 == map => last.1 = before(next),
            _ => pieces.push((here.1, before(next), map)),
        }
    }
    pieces
        .into_iter()
        .flat_map(|(lo, hi, map)| {
            map.into_iter().map(move |(plo, phi, policy)| PortEntry {
                proto,
                addrs: (lo, hi),
                ports: (plo as u16, phi as u16),
                policy,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(name: &str) -> PolicyId {
        PolicyId {
            namespace: "x".into(),
            name: name.into(),
        }
    }

    #[test]
    fn overlapping_allows_become_disjoint_entries_naming_the_first_policy() {
        let boxes = [
            RawBox {
                addrs: AddrSet::from_ranges([(10, 20)]),
                ports: None,
                policy: 1,
            },
            RawBox {
                addrs: AddrSet::from_ranges([(15, 30)]),
                ports: None,
                policy: 0,
            },
        ];
        let d = Direction::flatten(vec![id("a"), id("b")], &boxes);
        assert_eq!(
            d.any_port,
            vec![
                AddrEntry {
                    addrs: (10, 14),
                    policy: 1
                },
                AddrEntry {
                    addrs: (15, 30),
                    policy: 0
                }
            ]
        );
    }

    #[test]
    fn port_entries_are_disjoint_and_merge_over_neighbouring_addresses() {
        let boxes = [
            RawBox {
                addrs: AddrSet::from_ranges([(1, 1)]),
                ports: Some((Proto::Tcp, 80, 81)),
                policy: 0,
            },
            RawBox {
                addrs: AddrSet::from_ranges([(2, 2)]),
                ports: Some((Proto::Tcp, 80, 81)),
                policy: 0,
            },
            RawBox {
                addrs: AddrSet::from_ranges([(2, 5)]),
                ports: Some((Proto::Tcp, 81, 90)),
                policy: 1,
            },
            RawBox {
                addrs: AddrSet::from_ranges([(1, 9)]),
                ports: Some((Proto::Udp, 53, 53)),
                policy: 1,
            },
        ];
        let d = Direction::flatten(vec![id("a"), id("b")], &boxes);
        let tcp: Vec<_> = d
            .by_port
            .iter()
            .filter(|e| e.proto == Proto::Tcp)
            .map(|e| (e.addrs, e.ports, e.policy))
            .collect();
        assert_eq!(
            tcp,
            vec![
                ((1, 1), (80, 81), 0),
                ((2, 2), (80, 81), 0),
                ((2, 2), (82, 90), 1),
                ((3, 5), (81, 90), 1),
            ]
        );
        for (peer, port, expected) in [
            (1, 81, Decision::Allowed(0)),
            (2, 85, Decision::Allowed(1)),
            (3, 80, Decision::Denied),
            (6, 81, Decision::Denied),
        ] {
            assert_eq!(d.decide(peer, Some((Proto::Tcp, port))), expected);
        }
        assert_eq!(d.decide(9, Some((Proto::Udp, 53))), Decision::Allowed(1));
        assert_eq!(d.decide(9, None), Decision::Denied);
    }

    #[test]
    fn a_pod_no_policy_selects_is_open_and_a_selected_one_without_rules_is_denied() {
        assert_eq!(
            Direction::flatten(vec![], &[]).decide(1, None),
            Decision::Open
        );
        assert_eq!(
            Direction::flatten(vec![id("deny")], &[]).decide(1, Some((Proto::Tcp, 80))),
            Decision::Denied
        );
    }
}
