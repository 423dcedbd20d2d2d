//! The compiled rules as nftables text (DESIGN.md "NetworkPolicy"; issue
//! 18, "Enforcement"). Pure: [`render`] gives the table's objects; the
//! driver hands `nft -f -` either their full text or, when it knows what the
//! kernel holds, only what differs from it ([`Rendered::update_from`],
//! `table`), each as one transaction.
//!
//! Its own table, `table ip weft_policy`, not `table ip weft`: the router
//! replaces that table whole whenever someone else's firewall reload breaks
//! it (`crate::host_firewall`), and the policy table has another owner, its
//! own update rhythm and its own counters. Both hook `forward`; a drop in
//! either drops.
//!
//! Per packet, whatever the number of policies and pods:
//! 1. `ct state established,related accept` (replies of allowed traffic);
//! 2. `ip saddr vmap @egress`: an isolated local source jumps to its pod's
//!    egress chain, which looks the destination up in two interval verdict
//!    maps (addresses → policy for rules without ports; protocol · address ·
//!    port → policy) and `goto`es the allowing policy's counter chain, which
//!    returns to step 3; no entry: a rate-limited NFLOG copy for the drop
//!    log (`super::droplog`), the pod's default-deny counter, drop;
//! 3. `ip daddr vmap @ingress`: the same for an isolated local destination,
//!    with the source looked up; the policy's chain counts and accepts.
//!
//! Ingress is enforced on the destination's node and egress on the source's
//! (each router renders only its own pods), so traffic between nodes is
//! checked at both ends. Traffic from the node to its own pods goes through
//! `output`, not `forward`, and is never filtered (kubelet probes).

use super::compile::PolicyId;
use super::flatten::Direction;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

mod table;
use table::Table;

/// The table, as nft spells it.
pub const TABLE: &str = "ip weft_policy";

/// One local pod and its compiled rules.
#[derive(Clone, Debug)]
pub struct LocalPod {
    /// `namespace/name`, for comments.
    pub key: String,
    /// Its namespace (the default deny is the namespace's).
    pub namespace: String,
    /// Its addresses.
    pub ips: Vec<u32>,
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

fn addr_range((lo, hi): (u32, u32)) -> String {
    if lo == hi {
        Ipv4Addr::from(lo).to_string()
    } else {
        format!("{}-{}", Ipv4Addr::from(lo), Ipv4Addr::from(hi))
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
            let elements = table.dispatch.entry(dispatch.into()).or_default();
            for ip in &pod.ips {
                elements.insert(Ipv4Addr::from(*ip).to_string(), format!("jump {chain}"));
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

/// A pod's chain for one direction and its two maps.
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
    let any = direction
        .any_port
        .iter()
        .filter_map(|e| Some((addr_range(e.addrs), target(e.policy)?)))
        .collect();
    let ports = direction
        .by_port
        .iter()
        .filter_map(|e| {
            let key = format!(
                "{} . {} . {}",
                e.proto.as_str(),
                addr_range(e.addrs),
                port_range(e.ports),
            );
            Some((key, target(e.policy)?))
        })
        .collect();
    table.pod_maps.insert(format!("{chain}_any"), any);
    table.pod_maps.insert(format!("{chain}_ports"), ports);
    table.pod_chains.insert(
        chain.to_string(),
        vec![
            format!("ip {peer} vmap @{chain}_any"),
            format!("meta l4proto . ip {peer} . th dport vmap @{chain}_ports"),
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

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
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

    #[test]
    fn the_table_is_replaced_in_one_transaction_with_conntrack_first() {
        let text = render(&pods()).text();
        assert!(text.starts_with(
            "table ip weft_policy {}\ndelete table ip weft_policy\ntable ip weft_policy {\n"
        ));
        let forward: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("chain forward"))
            .map(str::trim)
            .collect();
        assert_eq!(
            &forward[1..5],
            &[
                "type filter hook forward priority filter - 5; policy accept;",
                "ct state established,related accept",
                "ip saddr vmap @egress",
                "ip daddr vmap @ingress",
            ]
        );
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
}
