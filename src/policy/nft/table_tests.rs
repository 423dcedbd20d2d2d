//! The diff, checked against a model of what nft does with it: each
//! transaction is interpreted line by line on the table it was computed
//! from, refusing what the kernel refuses (an object or element created
//! twice or deleted while absent, a reference to something missing, a
//! chain, map or counter deleted while still referred to), and must leave
//! exactly the table a full render gives.

#![allow(clippy::unwrap_used)]
use super::super::{LocalPod, Rendered, TABLE, render};
use super::*;
use crate::policy::addrs::{Addr, AddrSet};
use crate::policy::compile::{PolicyId, Proto};
use crate::policy::flatten::{Direction, RawBox};
use proptest::prelude::*;

/// What the kernel holds, as far as the transactions can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Kernel {
    counters: BTreeSet<String>,
    chains: BTreeMap<String, Vec<String>>,
    maps: BTreeMap<String, Elements>,
}

impl Kernel {
    fn of(table: &Table) -> Self {
        Self {
            counters: table.counters.clone(),
            chains: table
                .policy_chains
                .iter()
                .chain(&table.pod_chains)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            maps: table
                .pod_maps
                .iter()
                .chain(&table.dispatch)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    fn rules(&self) -> impl Iterator<Item = &String> {
        self.chains.values().flatten()
    }

    fn chain_used(&self, chain: &str) -> bool {
        let verdicts = [format!("jump {chain}"), format!("goto {chain}")];
        self.maps
            .values()
            .flat_map(|m| m.values())
            .chain(self.rules())
            .any(|v| verdicts.iter().any(|w| v.ends_with(w.as_str())))
    }

    /// Runs a transaction: all of it, or nothing and why.
    fn run(&mut self, text: &str) -> Result<(), String> {
        let mut next = self.clone();
        for line in text.lines() {
            next.line(line).map_err(|e| format!("{e}: {line}"))?;
        }
        *self = next;
        Ok(())
    }

    /// `{ key : verdict, … }` into `map`, each key new, each target there.
    fn create(&mut self, map: &str, list: &str) -> Result<(), String> {
        let list = list
            .trim()
            .strip_prefix('{')
            .and_then(|l| l.strip_suffix('}'));
        for element in list.ok_or("no braces")?.trim().split(", ") {
            let (key, verdict) = element.split_once(" : ").ok_or("no verdict")?;
            let target = verdict.split_whitespace().nth(1).ok_or("verdict")?;
            self.chains.get(target).ok_or("no target chain")?;
            let map = self.maps.get_mut(map).ok_or("no map")?;
            let fresh = map.insert(key.into(), verdict.into()).is_none();
            fresh.then_some(()).ok_or("element exists")?;
        }
        Ok(())
    }

    fn line(&mut self, line: &str) -> Result<(), String> {
        let mut words = line.splitn(3, ' ');
        let (verb, object) = (words.next().unwrap(), words.next().unwrap_or(""));
        let rest = words
            .next()
            .and_then(|r| r.strip_prefix(TABLE))
            .ok_or("not our table")?
            .trim_start();
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let name = name.to_string();
        let braces = || {
            tail.trim()
                .strip_prefix('{')
                .and_then(|t| t.strip_suffix('}'))
                .map(str::trim)
                .ok_or("no braces")
        };
        match (verb, object) {
            ("add", "counter") => {
                self.counters.insert(name).then_some(()).ok_or("exists")?;
            }
            ("add", "chain") => {
                let fresh = self.chains.insert(name, Vec::new()).is_none();
                fresh.then_some(()).ok_or("exists")?;
            }
            ("add", "map") => {
                let rest = braces()?.strip_prefix(map_spec(&name)).ok_or("spec")?;
                let fresh = self.maps.insert(name.clone(), Elements::new()).is_none();
                fresh.then_some(()).ok_or("exists")?;
                if let Some(list) = rest.trim().strip_prefix("elements = ") {
                    self.create(&name, list)?;
                }
            }
            ("flush", "chain") => self.chains.get_mut(&name).ok_or("no chain")?.clear(),
            ("add", "rule") => {
                for word in tail.split_whitespace() {
                    if let Some(map) = word.strip_prefix('@') {
                        self.maps.get(map).ok_or("no map")?;
                    }
                }
                if let Some(c) = tail.split("counter name \"").nth(1) {
                    let counter = c.split('"').next().unwrap();
                    self.counters.get(counter).ok_or("no counter")?;
                }
                let chain = self.chains.get_mut(&name).ok_or("no chain")?;
                chain.push(tail.to_string());
            }
            ("create", "element") => self.create(&name, tail)?,
            ("delete", "element") => {
                for key in braces()?.split(", ") {
                    let map = self.maps.get_mut(&name).ok_or("no map")?;
                    map.remove(key).ok_or("no element")?;
                }
            }
            ("delete", "chain") => {
                self.chains.remove(&name).ok_or("no chain")?;
                (!self.chain_used(&name))
                    .then_some(())
                    .ok_or("chain in use")?;
            }
            ("delete", "map") => {
                self.maps.remove(&name).ok_or("no map")?;
                let at = format!("@{name}");
                let used = self.rules().any(|r| r.split_whitespace().any(|w| w == at));
                (!used).then_some(()).ok_or("map in use")?;
            }
            ("delete", "counter") => {
                self.counters
                    .remove(&name)
                    .then_some(())
                    .ok_or("no counter")?;
                let named = format!("counter name \"{name}\"");
                let used = self.rules().any(|r| r.contains(&named));
                (!used).then_some(()).ok_or("counter in use")?;
            }
            _ => return Err("unknown command".into()),
        }
        Ok(())
    }
}

fn id(name: &str) -> PolicyId {
    PolicyId {
        namespace: "x".into(),
        name: name.into(),
    }
}

fn ip(last: u8) -> Addr {
    crate::policy::addrs::v4(std::net::Ipv4Addr::new(10, 32, 2, last))
}

fn ip6(last: u8) -> Addr {
    Addr::from(std::net::Ipv6Addr::new(
        0xfd00,
        0x32,
        0,
        0,
        0,
        0,
        2,
        u16::from(last),
    ))
}

/// A pod of x isolated for ingress by `allows` (policy, peers, TCP ports),
/// open for egress.
/// A policy letting in peers (last bytes) on TCP ports, or on any.
type Allow<'a> = (&'a str, &'a [u8], Option<(u16, u16)>);

fn pod(name: &str, last: u8, allows: &[Allow<'_>]) -> LocalPod {
    let mut policies: Vec<PolicyId> = allows.iter().map(|a| id(a.0)).collect();
    policies.sort();
    policies.dedup();
    let boxes: Vec<RawBox> = allows
        .iter()
        .map(|(policy, peers, ports)| RawBox {
            addrs: AddrSet::from_addrs(peers.iter().map(|p| ip(*p))),
            ports: ports.map(|(lo, hi)| (Proto::Tcp, lo, hi)),
            policy: policies.iter().position(|p| *p == id(policy)).unwrap(),
        })
        .collect();
    LocalPod {
        key: format!("x/{name}"),
        namespace: "x".into(),
        ips: vec![ip(last)],
        ingress: Direction::flatten(policies, &boxes),
        egress: Direction::default(),
    }
}

/// Checks the transaction from `old` to `new` on the model; returns its
/// lines.
fn transition(old: &Rendered, new: &Rendered) -> Vec<String> {
    let text = new.update_from(old);
    let mut kernel = Kernel::of(&old.table);
    kernel.run(&text).unwrap();
    assert_eq!(kernel, Kernel::of(&new.table), "{text}");
    text.lines().map(String::from).collect()
}

fn verbs(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .map(|l| l.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

/// a lets in b and c on TCP 80 (web) and 10.32.2.40 on any port (net).
fn two_pods() -> Vec<LocalPod> {
    vec![
        pod(
            "a",
            1,
            &[("web", &[2, 3], Some((80, 80))), ("net", &[40], None)],
        ),
        pod("b", 2, &[("web", &[1], Some((80, 80)))]),
    ]
}

#[test]
fn nothing_changed_is_no_transaction() {
    let pods = two_pods();
    assert_eq!(render(&pods).update_from(&render(&pods)), "");
}

#[test]
fn a_new_peer_is_element_creates_only() {
    let before = two_pods();
    let mut after = before.clone();
    // web now also lets in 10.32.2.9 (not next to 2-3: no range merges).
    after[0] = pod(
        "a",
        1,
        &[("web", &[2, 3, 9], Some((80, 80))), ("net", &[40], None)],
    );
    let lines = transition(&render(&before), &render(&after));
    assert_eq!(verbs(&lines), ["create element".to_string()].into());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("tcp . 10.32.2.9 . 80 : goto pol_"),
        "{lines:?}"
    );
}

#[test]
fn a_new_local_pod_creates_its_own_objects_and_touches_no_other() {
    let before = two_pods();
    let mut after = before.clone();
    after.push(pod("c", 3, &[("web", &[1], Some((80, 80)))]));
    let lines = transition(&render(&before), &render(&after));
    let expected: BTreeSet<String> = [
        "add counter",
        "add chain",
        "add map",
        "add rule",
        "create element",
    ]
    .map(String::from)
    .into();
    assert_eq!(verbs(&lines), expected, "{lines:?}");
    let stem = format!("{:016x}", super::super::fnv("x/c"));
    for line in &lines {
        let ours = line.contains(&stem) || line.contains("ingress { 10.32.2.3 : jump");
        assert!(ours, "touches another pod's objects: {line}");
    }
}

#[test]
fn a_deleted_pod_is_deletes_only() {
    let mut before = two_pods();
    before.push(pod("c", 3, &[("other", &[1], None)]));
    let after = two_pods();
    let lines = transition(&render(&before), &render(&after));
    let expected: BTreeSet<String> = [
        "delete element",
        "delete chain",
        "delete map",
        "delete counter",
    ]
    .map(String::from)
    .into();
    assert_eq!(verbs(&lines), expected, "{lines:?}");
    // Its policy's chains and counters went with it (no other pod used it).
    let other = format!("{:016x}", super::super::fnv("x/other"));
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("delete chain {TABLE} pol_{other}_in"))
    );
}

#[test]
fn a_label_change_moves_elements() {
    // 10.32.2.3 was let in by web on port 80; its labels change so that
    // net lets it in on every port instead.
    let before = two_pods();
    let mut after = before.clone();
    after[0] = pod(
        "a",
        1,
        &[("web", &[2], Some((80, 80))), ("net", &[3, 40], None)],
    );
    let lines = transition(&render(&before), &render(&after));
    let expected: BTreeSet<String> = ["delete element", "create element"]
        .map(String::from)
        .into();
    assert_eq!(verbs(&lines), expected, "{lines:?}");
    let text = lines.join("\n");
    assert!(
        text.contains("_ports { tcp . 10.32.2.2-10.32.2.3 . 80 }"),
        "{text}"
    );
    assert!(
        text.contains("_ports { tcp . 10.32.2.2 . 80 : goto pol_"),
        "{text}"
    );
    assert!(text.contains("_any { 10.32.2.3 : goto pol_"), "{text}");
}

#[test]
fn a_policy_change_rewrites_only_the_maps_of_the_pods_it_selects() {
    // web moves from port 80 to 8080: the elements of a's and b's port
    // maps; a's map of any port (net) is untouched, no chain is rewritten.
    let before = two_pods();
    let after = vec![
        pod(
            "a",
            1,
            &[("web", &[2, 3], Some((8080, 8080))), ("net", &[40], None)],
        ),
        pod("b", 2, &[("web", &[1], Some((8080, 8080)))]),
    ];
    let lines = transition(&render(&before), &render(&after));
    let expected: BTreeSet<String> = ["delete element", "create element"]
        .map(String::from)
        .into();
    assert_eq!(verbs(&lines), expected, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("_ports {")), "{lines:?}");
    assert_eq!(lines.len(), 4, "{lines:?}");
}

#[test]
fn a_pod_that_stops_being_isolated_loses_its_objects_and_keeps_nothing_dangling() {
    let before = two_pods();
    let mut after = before.clone();
    after[1].ingress = Direction::default();
    let lines = transition(&render(&before), &render(&after));
    assert!(lines.iter().all(|l| l.starts_with("delete ")), "{lines:?}");
}

/// One step's pods: for each of five pods, absent or present with
/// up to three allows (policy, first and last peer, ports or any) per
/// direction; pod `i` is at 10.32.2.`i + 1`, plus fd00:32::2:`i + 1` if
/// `extra` (dual-stack). Peers with an odd first byte are IPv6 ones, and
/// first byte 23 is every address of both families.
type Spec = Vec<Option<(bool, Vec<(u8, u8, u8, u8)>, Vec<(u8, u8, u8, u8)>)>>;

fn allows() -> impl Strategy<Value = Vec<(u8, u8, u8, u8)>> {
    proptest::collection::vec((0u8..4, 0u8..24, 0u8..6, 0u8..4), 0..4)
}

fn step() -> impl Strategy<Value = Spec> {
    proptest::collection::vec(proptest::option::of((any::<bool>(), allows(), allows())), 5)
}

fn direction(allows: &[(u8, u8, u8, u8)]) -> Direction {
    let mut policies: Vec<PolicyId> = allows.iter().map(|a| id(&format!("p{}", a.0))).collect();
    policies.sort();
    policies.dedup();
    let boxes: Vec<RawBox> = allows
        .iter()
        .map(|&(policy, first, len, ports)| RawBox {
            addrs: match first {
                23 => AddrSet::all(),
                f if f % 2 == 1 => AddrSet::from_ranges([(ip6(f), ip6(f + len))]),
                f => AddrSet::from_ranges([(ip(f), ip(f + len))]),
            },
            ports: match ports {
                0 => None,
                1 => Some((Proto::Tcp, 80, 81)),
                2 => Some((Proto::Tcp, 81, 81)),
                _ => Some((Proto::Udp, 53, 53)),
            },
            policy: policies
                .iter()
                .position(|p| *p == id(&format!("p{policy}")))
                .unwrap(),
        })
        .collect();
    Direction::flatten(policies, &boxes)
}

fn pods_of(spec: &Spec) -> Vec<LocalPod> {
    spec.iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let (extra, ingress, egress) = p.as_ref()?;
            let i = i as u8;
            let mut ips = vec![ip(i + 1)];
            if *extra {
                ips.push(ip6(i + 1));
            }
            Some(LocalPod {
                key: format!("x/p{i}"),
                namespace: "x".into(),
                ips,
                ingress: direction(ingress),
                egress: direction(egress),
            })
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// From an empty table, through any sequence of changes, the diffs
    /// applied in turn leave exactly what a full render of the last step
    /// gives, and each is accepted whole by the model.
    #[test]
    fn diffs_in_sequence_leave_the_full_render_of_the_last_state(
        steps in proptest::collection::vec(step(), 1..8)
    ) {
        let mut applied = render(&[]);
        let mut kernel = Kernel::of(&applied.table);
        for spec in &steps {
            let next = render(&pods_of(spec));
            let text = next.update_from(&applied);
            prop_assert!(kernel.run(&text).is_ok(), "{:?}\n{text}", kernel.run(&text));
            prop_assert_eq!(&kernel, &Kernel::of(&next.table));
            applied = next;
        }
        let last = render(&pods_of(steps.last().unwrap()));
        prop_assert_eq!(applied.text(), last.text());
        prop_assert_eq!(last.update_from(&applied), "");
    }
}
