//! The compiled rules as nftables text (DESIGN.md "NetworkPolicy"; issue
//! 18, "Enforcement"). Pure: [`render`] gives the table's objects; the
//! driver hands `nft -f -` either their full text or, when it knows what the
//! kernel holds, only what differs from it ([`Rendered::update_from`],
//! `table`), each as one transaction.
//!
//! Its own table, `table inet weft_policy`, not `table ip weft`: the router
//! replaces that table whole whenever someone else's firewall reload breaks
//! it (`crate::host_firewall`), and the policy table has another owner, its
//! own update rhythm and its own counters. Both hook `forward`; a drop in
//! either drops.
//!
//! Family `inet`, so that one table holds both families of a dual-stack pod
//! (issue 19): a pod's chains and a policy's counters are shared by its
//! IPv4 and IPv6 traffic; only the maps are per family (`egress`/`egress6`,
//! `…_any`/`…_any6`, `…_ports`/`…_ports6`), since an nft map has one key
//! type. An ipBlock lands only in the maps of its family.
//!
//! Per packet, whatever the number of policies and pods:
//! 1. `ct state established,related accept` (replies of allowed traffic);
//! 2. `meta nfproto vmap { ipv4 : jump forward4, ipv6 : jump forward6 }`:
//!    one branch on the family, so a packet meets only its family's rules;
//! 3. `ip saddr vmap @egress` (`ip6 saddr vmap @egress6` in `forward6`): an
//!    isolated local source jumps to its pod's egress chain, which looks the
//!    destination up in two interval verdict maps of the packet's family
//!    (addresses → policy for rules without ports; protocol · address ·
//!    port → policy) and `goto`es the allowing policy's counter chain, which
//!    returns to step 4; no entry: a rate-limited NFLOG copy for the drop
//!    log (`super::droplog`), the pod's default-deny counter, drop;
//! 4. `ip daddr vmap @ingress` (`ip6 daddr vmap @ingress6`): the same for
//!    an isolated local destination, with the source looked up; the
//!    policy's chain counts and accepts.
//!
//! Ingress is enforced on the destination's node and egress on the source's
//! (each router renders only its own pods), so traffic between nodes is
//! checked at both ends. Traffic from the node to its own pods goes through
//! `output`, not `forward`, and is never filtered (kubelet probes).

use super::addrs::{Addr, V4_FIRST, V4_LAST, ip};
use super::compile::PolicyId;
use super::flatten::Direction;
use std::collections::{BTreeMap, BTreeSet};

mod table;
use table::Table;

/// The table, as nft spells it.
pub const TABLE: &str = "inet weft_policy";

/// The chains that must be whole for anything to be enforced: the base
/// chain, hooked on `forward`, and the two family chains it jumps to.
pub const FIXED_CHAINS: [&str; 3] = table::FIXED_CHAINS;

/// Whether the `nft list chain` listings of [`FIXED_CHAINS`], one after
/// the other, still have the hook, the family branch and every dispatch
/// rule (`nft flush chain` leaves a chain empty).
pub fn base_chain_whole(listing: &str) -> bool {
    let has = |ending: &str| {
        listing
            .lines()
            .any(|line| line.trim_end().ends_with(ending))
    };
    listing.contains("hook forward")
        && has(table::FAMILY_BRANCH)
        && table::DISPATCH
            .iter()
            .all(|map| has(&format!("vmap @{map}")))
}

/// The IPv4-only table of earlier versions, deleted with the first full
/// apply (an upgraded router must not leave its rules behind).
pub const OLD_TABLE: &str = "ip weft_policy";

/// One local pod and its compiled rules.
#[derive(Clone, Debug)]
pub struct LocalPod {
    /// `namespace/name`, for comments.
    pub key: String,
    /// Its namespace (the default deny is the namespace's).
    pub namespace: String,
    /// Its addresses of both families (`super::addrs`).
    pub ips: Vec<Addr>,
    /// Who may send to it.
    pub ingress: Direction,
    /// Where it may send.
    pub egress: Direction,
}

/// The rendered table and what its objects stand for (for counters,
/// status and the next update).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The policies selecting some local pod, by name.
    pub policies: Vec<PolicyId>,
    /// Named counters → what they count.
    pub counters: BTreeMap<String, Counted>,
    /// The objects, for the full text and for the next update's diff.
    table: Table,
}

/// What one named counter counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counted {
    /// Packets a policy allowed (`in`: to its pods; `out`: from them).
    Allowed(PolicyId, &'static str),
    /// Packets dropped by a pod's default deny (`namespace/name`, direction).
    Denied(String, &'static str),
}

impl Rendered {
    /// The text for `nft -f -` that replaces any previous table whole, in
    /// one transaction: the first apply after start, and whenever what the
    /// kernel holds is not known (after a failed apply).
    pub fn text(&self) -> String {
        self.table.replace_text()
    }

    /// The transaction that turns `previous` into this table: only the
    /// counters, chains, maps and map elements that differ (a new pod is
    /// its chains, its maps and a dispatch element, plus elements in the
    /// maps of the local pods that may talk to it); empty when nothing
    /// does. Named counters that stay keep their numbers. Only valid when
    /// `previous` is what the kernel holds: if it is not, the transaction
    /// fails whole (it creates elements that must be absent and deletes
    /// elements that must be present) and the driver falls back to
    /// [`Rendered::text`].
    pub fn update_from(&self, previous: &Self) -> String {
        table::diff(&previous.table, &self.table)
    }
}

/// Text safe inside an nft double-quoted comment.
fn quoted(text: &str) -> String {
    text.chars()
        .filter(|c| (c.is_ascii_graphic() && *c != '"' && *c != '\\') || *c == ' ')
        .take(120)
        .collect()
}

/// An address range as nft elements, per family: the IPv4 part (in the
/// mapped block) and the IPv6 parts around it (`super::addrs`).
fn addr_ranges((lo, hi): (Addr, Addr)) -> (Vec<String>, Vec<String>) {
    let text = |lo: Addr, hi: Addr| {
        if lo == hi {
            ip(lo).to_string()
        } else {
            format!("{}-{}", ip(lo), ip(hi))
        }
    };
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    if lo < V4_FIRST {
        v6.push(text(lo, hi.min(V4_FIRST - 1)));
    }
    if lo <= V4_LAST && hi >= V4_FIRST {
        v4.push(text(lo.max(V4_FIRST), hi.min(V4_LAST)));
    }
    if hi > V4_LAST {
        v6.push(text(lo.max(V4_LAST + 1), hi));
    }
    (v4, v6)
}

/// The name of a per-family map: the IPv4 one is `name`, the IPv6 one
/// `name6`.
fn family_map(name: &str, v6: bool) -> String {
    if v6 {
        format!("{name}6")
    } else {
        name.to_string()
    }
}

fn port_range((lo, hi): (u16, u16)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// FNV-1a, 64 bits.
fn fnv(what: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in what.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The name stem of each pod's or policy's chains, maps and counters: from
/// a hash of its name, so that it does not move when others come and go (a
/// position would rename every later pod's objects on each new pod, and
/// counters would lose their numbers), short (nft names are bounded), and
/// free of the characters Kubernetes names may hold. Names whose hashes
/// collide (FNV is no defence against chosen names) get a suffix in name
/// order, so no two pods or policies ever share an object.
fn stems(names: BTreeSet<String>, hash: fn(&str) -> u64) -> BTreeMap<String, String> {
    let mut taken = BTreeSet::new();
    let mut stems = BTreeMap::new();
    for name in names {
        let base = format!("{:016x}", hash(&name));
        let mut stem = base.clone();
        let mut n = 0u32;
        while !taken.insert(stem.clone()) {
            n += 1;
            stem = format!("{base}x{n}");
        }
        stems.insert(name, stem);
    }
    stems
}

/// Renders the table for these pods.
pub fn render(pods: &[LocalPod]) -> Rendered {
    let policies: BTreeSet<PolicyId> = pods
        .iter()
        .flat_map(|pod| {
            pod.ingress
                .selected_by
                .iter()
                .chain(&pod.egress.selected_by)
        })
        .cloned()
        .collect();
    let policy_stems = stems(policies.iter().map(PolicyId::to_string).collect(), fnv);
    let pod_stems = stems(pods.iter().map(|pod| pod.key.clone()).collect(), fnv);
    let mut table = Table::new();
    let mut counters = BTreeMap::new();
    for pod in pods {
        let stem = &pod_stems[&pod.key];
        for (dir, direction, dispatch) in [
            ("in", &pod.ingress, "ingress"),
            ("out", &pod.egress, "egress"),
        ] {
            if !direction.is_isolated() || pod.ips.is_empty() {
                continue;
            }
            let chain = format!("pod_{stem}_{dir}");
            for addr in &pod.ips {
                let address = ip(*addr);
                let map = family_map(dispatch, address.is_ipv6());
                table
                    .dispatch
                    .entry(map)
                    .or_default()
                    .insert(address.to_string(), format!("jump {chain}"));
            }
            let counter = format!("d{stem}_{dir}");
            table.counters.insert(counter.clone());
            counters.insert(counter.clone(), Counted::Denied(pod.key.clone(), dir));
            render_pod(
                &mut table,
                &chain,
                dir,
                pod,
                direction,
                &policy_stems,
                &counter,
            );
        }
    }
    for id in &policies {
        let name = id.to_string();
        let stem = &policy_stems[&name];
        let comment = quoted(&name);
        for (dir, verdict) in [("in", " accept"), ("out", "")] {
            // An egress allow returns to `forward` for the ingress check.
            let counter = format!("p{stem}_{dir}");
            table.policy_chains.insert(
                format!("pol_{stem}_{dir}"),
                vec![format!(
                    "counter name \"{counter}\"{verdict} comment \"{comment}\""
                )],
            );
            table.counters.insert(counter.clone());
            counters.insert(counter, Counted::Allowed(id.clone(), dir));
        }
    }
    Rendered {
        policies: policies.into_iter().collect(),
        counters,
        table,
    }
}

/// Puts the elements of one entry (`verdict` `None`: none) into the maps of
/// their families ([IPv4, IPv6]), each key made by `key` from an address
/// range.
fn put(
    maps: &mut [table::Elements; 2],
    addrs: (Addr, Addr),
    verdict: Option<String>,
    key: impl Fn(&str) -> String,
) {
    let Some(verdict) = verdict else { return };
    let (v4, v6) = addr_ranges(addrs);
    for (map, ranges) in maps.iter_mut().zip([v4, v6]) {
        for range in ranges {
            map.insert(key(&range), verdict.clone());
        }
    }
}

/// A pod's chain for one direction and its four maps (two per family).
fn render_pod(
    table: &mut Table,
    chain: &str,
    dir: &str,
    pod: &LocalPod,
    direction: &Direction,
    policy_stems: &BTreeMap<String, String>,
    counter: &str,
) {
    // Ingress looks at the source; egress at the destination.
    let peer = if dir == "in" { "saddr" } else { "daddr" };
    // An entry whose policy is unknown (never, by construction) is left
    // out: the packet meets the default deny, not another policy's allow.
    let target = |local: usize| {
        let id = direction.selected_by.get(local)?;
        let stem = policy_stems.get(&id.to_string())?;
        Some(format!("goto pol_{stem}_{dir}"))
    };
    // Per family: [IPv4, IPv6].
    let mut any: [table::Elements; 2] = Default::default();
    let mut ports: [table::Elements; 2] = Default::default();
    for e in &direction.any_port {
        put(&mut any, e.addrs, target(e.policy), |a| a.to_string());
    }
    for e in &direction.by_port {
        put(&mut ports, e.addrs, target(e.policy), |a| {
            format!("{} . {a} . {}", e.proto.as_str(), port_range(e.ports))
        });
    }
    let [any4, any6] = any;
    let [ports4, ports6] = ports;
    table.pod_maps.insert(format!("{chain}_any"), any4);
    table.pod_maps.insert(format!("{chain}_any6"), any6);
    table.pod_maps.insert(format!("{chain}_ports"), ports4);
    table.pod_maps.insert(format!("{chain}_ports6"), ports6);
    table.pod_chains.insert(
        chain.to_string(),
        vec![
            format!("ip {peer} vmap @{chain}_any"),
            format!("ip6 {peer} vmap @{chain}_any6"),
            format!("meta l4proto . ip {peer} . th dport vmap @{chain}_ports"),
            format!("meta l4proto . ip6 {peer} . th dport vmap @{chain}_ports6"),
            super::droplog::log_statement(counter),
            format!(
                "counter name \"{counter}\" drop comment \"{} default deny of {}\"",
                quoted(&pod.key),
                quoted(&pod.namespace),
            ),
        ],
    );
}

#[cfg(test)]
mod kernel_tests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::addrs::AddrSet;
    use crate::policy::compile::Proto;
    use crate::policy::flatten::RawBox;

    fn id(ns: &str, name: &str) -> PolicyId {
        PolicyId {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn ip(s: &str) -> Addr {
        crate::policy::addrs::addr(s.parse().unwrap())
    }

    /// x/a isolated both ways: ingress from y's pods on TCP 80-81 (allow-y),
    /// from 10.0.0.0/8 on every port (allow-net); egress nowhere (deny).
    /// x/b open.
    fn pods() -> Vec<LocalPod> {
        let ingress = Direction::flatten(
            vec![id("x", "allow-net"), id("x", "allow-y")],
            &[
                RawBox {
                    addrs: AddrSet::from_addrs([ip("10.32.2.1"), ip("10.32.2.2")]),
                    ports: Some((Proto::Tcp, 80, 81)),
                    policy: 1,
                },
                RawBox {
                    addrs: AddrSet::parse_cidr("10.0.0.0/8").unwrap().unwrap(),
                    ports: None,
                    policy: 0,
                },
            ],
        );
        vec![
            LocalPod {
                key: "x/a".into(),
                namespace: "x".into(),
                ips: vec![ip("10.32.1.1")],
                ingress,
                egress: Direction::flatten(vec![id("x", "deny")], &[]),
            },
            LocalPod {
                key: "x/b".into(),
                namespace: "x".into(),
                ips: vec![ip("10.32.1.2")],
                ingress: Direction::default(),
                egress: Direction::default(),
            },
        ]
    }

    /// An object's name: `kind` and the hash of `key`.
    fn named(kind: &str, key: &str, dir: &str) -> String {
        format!("{kind}{:016x}_{dir}", fnv(key))
    }

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l.trim() == line)
    }

    /// The lines of chain `name` in `text`, from its `chain` line to the
    /// last rule, as `nft list chain` prints them.
    fn chain_lines(text: &str, name: &str) -> Vec<String> {
        let head = format!("chain {name} {{");
        text.lines()
            .skip_while(|l| l.trim() != head)
            .take_while(|l| l.trim() != "}")
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn the_base_chain_is_whole_only_with_its_hook_the_family_branch_and_every_dispatch_rule() {
        let text = render(&pods()).text();
        let chains: Vec<Vec<String>> = FIXED_CHAINS
            .iter()
            .map(|name| chain_lines(&text, name))
            .collect();
        assert!(chains.iter().all(|lines| lines.len() >= 3), "{text}");
        let whole = chains.concat().concat();
        assert!(base_chain_whole(&whole), "{whole}");
        // The base chain alone (what was listed before the family chains).
        assert!(!base_chain_whole(&chains[0].concat()));
        // Each chain as nft lists it flushed: its head, no rules.
        for flushed in 0..chains.len() {
            let kept = if flushed == 0 { 2 } else { 1 };
            let listing: String = chains
                .iter()
                .enumerate()
                .map(|(i, lines)| {
                    let n = if i == flushed { kept } else { lines.len() };
                    lines[..n].concat()
                })
                .collect();
            assert!(!base_chain_whole(&listing), "{listing}");
        }
        // One rule gone (the IPv6 one must not pass for the IPv4 one).
        for gone in ["vmap @egress", table::FAMILY_BRANCH] {
            let without: String = whole
                .lines()
                .filter(|l| !l.ends_with(gone))
                .map(|l| format!("{l}\n"))
                .collect();
            assert!(!base_chain_whole(&without), "{without}");
        }
    }

    #[test]
    fn the_table_is_replaced_in_one_transaction_with_conntrack_first() {
        let text = render(&pods()).text();
        assert!(text.starts_with(
            "table ip weft_policy {}\ndelete table ip weft_policy\n\
             table inet weft_policy {}\ndelete table inet weft_policy\ntable inet weft_policy {\n"
        ));
        let rules = |name: &str| -> Vec<String> {
            chain_lines(&text, name)
                .iter()
                .skip(1)
                .map(|l| l.trim().to_string())
                .collect()
        };
        assert_eq!(
            rules("forward"),
            [
                "type filter hook forward priority filter - 5; policy accept;",
                "ct state established,related accept",
                "meta nfproto vmap { ipv4 : jump forward4, ipv6 : jump forward6 }",
            ]
        );
        assert_eq!(
            rules("forward4"),
            ["ip saddr vmap @egress", "ip daddr vmap @ingress"]
        );
        assert_eq!(
            rules("forward6"),
            ["ip6 saddr vmap @egress6", "ip6 daddr vmap @ingress6"]
        );
        // The family chains are defined before the base chain jumps to them.
        let at = |head: &str| text.find(head).unwrap_or(usize::MAX);
        assert!(at("chain forward4 {") < at("chain forward {"));
        assert!(at("chain forward6 {") < at("chain forward {"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn only_isolated_pods_get_a_chain_and_a_verdict_map_element() {
        let r = render(&pods());
        let text = r.text();
        for dir in ["in", "out"] {
            let chain = named("pod_", "x/a", dir);
            assert!(text.contains(&format!("elements = {{ 10.32.1.1 : jump {chain} }}")));
        }
        assert!(!text.contains("10.32.1.2"), "{text}");
        assert!(!text.contains(&named("pod_", "x/b", "")));
    }

    #[test]
    fn entries_name_the_allowing_policy_and_the_drop_names_the_namespace() {
        let r = render(&pods());
        assert_eq!(
            r.policies,
            vec![id("x", "allow-net"), id("x", "allow-y"), id("x", "deny")]
        );
        let text = r.text();
        let any = format!(
            "elements = {{ 10.0.0.0-10.255.255.255 : goto {} }}",
            named("pol_", "x/allow-net", "in")
        );
        assert!(text.contains(&any), "{text}");
        let ports = format!(
            "tcp . 10.32.2.1-10.32.2.2 . 80-81 : goto {}",
            named("pol_", "x/allow-y", "in")
        );
        assert!(text.contains(&ports), "{text}");
        let deny = named("d", "x/a", "in");
        assert!(has_line(
            &text,
            &format!("counter name \"{deny}\" drop comment \"x/a default deny of x\"")
        ));
        let allow = named("p", "x/allow-net", "in");
        assert!(has_line(
            &text,
            &format!("counter name \"{allow}\" accept comment \"x/allow-net\"")
        ));
        // An egress allow returns to the forward chain for the ingress check.
        let out = named("p", "x/deny", "out");
        assert!(has_line(
            &text,
            &format!("counter name \"{out}\" comment \"x/deny\"")
        ));
        assert_eq!(r.counters[&deny], Counted::Denied("x/a".into(), "in"));
        assert_eq!(
            r.counters[&allow],
            Counted::Allowed(id("x", "allow-net"), "in")
        );
    }

    #[test]
    fn names_cannot_break_out_of_a_comment() {
        let mut p = pods();
        p[0].key = "x/a\" accept; drop \\".into();
        let r = render(&p);
        assert!(r.text().lines().any(|l| {
            l.trim()
                .ends_with("drop comment \"x/a accept; drop  default deny of x\"")
        }));
    }

    #[test]
    fn names_whose_hashes_collide_get_objects_of_their_own() {
        let names: BTreeSet<String> = ["x/a", "x/b", "y/c"].map(String::from).into();
        let got = stems(names, |_| 7);
        let mut stems: Vec<&String> = got.values().collect();
        stems.sort();
        stems.dedup();
        assert_eq!(stems.len(), 3, "{got:?}");
        assert_eq!(got["x/a"], "0000000000000007");
        // Without collisions a name's stem is its own hash, whoever else
        // is there: a new pod renames nothing.
        let alone = super::stems(["x/b".to_string()].into(), fnv);
        let with = super::stems(["x/a", "x/b", "y/c"].map(String::from).into(), fnv);
        assert_eq!(alone["x/b"], with["x/b"]);
    }

    #[test]
    fn a_dual_stack_pod_is_dispatched_by_both_addresses_to_one_chain() {
        let mut p = pods();
        p[0].ips.push(ip("fd00:32::1:1"));
        let text = render(&p).text();
        let chain = named("pod_", "x/a", "in");
        assert!(text.contains(&format!("elements = {{ 10.32.1.1 : jump {chain} }}")));
        assert!(text.contains(&format!("elements = {{ fd00:32::1:1 : jump {chain} }}")));
        assert!(
            text.contains("map ingress6 {\n\t\ttype ipv6_addr : verdict;"),
            "{text}"
        );
        // One chain per pod and direction, whatever its families.
        assert_eq!(text.matches(&format!("chain {chain} {{")).count(), 1);
        assert!(has_line(&text, &format!("ip6 saddr vmap @{chain}_any6")));
        assert!(has_line(
            &text,
            &format!("meta l4proto . ip6 saddr . th dport vmap @{chain}_ports6")
        ));
    }

    #[test]
    fn peers_land_in_the_maps_of_their_family_only() {
        let mut p = pods();
        let both = AddrSet::parse_cidr("10.32.2.0/24")
            .unwrap()
            .unwrap()
            .union(&AddrSet::parse_cidr("fd00:32::2:0/120").unwrap().unwrap());
        p[0].ingress = Direction::flatten(
            vec![id("x", "web")],
            &[
                RawBox {
                    addrs: both,
                    ports: Some((Proto::Tcp, 80, 80)),
                    policy: 0,
                },
                // Every address of both families: split around the IPv4 block.
                RawBox {
                    addrs: AddrSet::all(),
                    ports: Some((Proto::Udp, 53, 53)),
                    policy: 0,
                },
            ],
        );
        let text = render(&p).text();
        let goto = format!("goto {}", named("pol_", "x/web", "in"));
        let map = |suffix: &str| {
            let name = format!("map {}{suffix} {{", named("pod_", "x/a", "in"));
            let at = text
                .find(&name)
                .unwrap_or_else(|| panic!("no {name} in {text}"));
            text[at..].split("\t}\n").next().unwrap().to_string()
        };
        let (v4, v6) = (map("_ports"), map("_ports6"));
        assert!(
            v4.contains(&format!("tcp . 10.32.2.0-10.32.2.255 . 80 : {goto}")),
            "{v4}"
        );
        assert!(
            v4.contains(&format!("udp . 0.0.0.0-255.255.255.255 . 53 : {goto}")),
            "{v4}"
        );
        assert!(!v4.contains("fd00"), "{v4}");
        assert!(
            v6.contains(&format!("tcp . fd00:32::2:0-fd00:32::2:ff . 80 : {goto}")),
            "{v6}"
        );
        assert!(
            v6.contains(&format!("udp . ::-::fffe:ffff:ffff . 53 : {goto}")),
            "{v6}"
        );
        assert!(
            v6.contains(&format!(
                "udp . ::1:0:0:0-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff . 53 : {goto}"
            )),
            "{v6}"
        );
        assert!(!v6.contains("10.32"), "{v6}");
    }
}
