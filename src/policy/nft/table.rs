//! The policy table as objects, its full text, and the transaction that
//! turns the table in force into the desired one element by element (issue
//! 18: "updates are atomic transactions and incremental (a new pod is a set
//! element, not a reload)"). Pure: text in, text out; the driver runs it.
//!
//! The objects come in layers, each referring only to those before it, so
//! that a transaction creates bottom-up and deletes top-down:
//! 1. named counters;
//! 2. policy chains (`pol_*`: count, accept or return), on the counters;
//! 3. pod maps (`pod_*_any`, `pod_*_ports`, and their IPv6 twins `…6`:
//!    peer → `goto pol_*`);
//! 4. pod chains (`pod_*_in`, `pod_*_out`), on the pod maps and counters;
//! 5. the dispatch maps `ingress`, `egress`, `ingress6`, `egress6`
//!    (address → `jump pod_*`);
//! 6. the family chains `forward4` and `forward6`, on the dispatch maps,
//!    and the base chain `forward` that jumps to them (never change).

use super::{OLD_TABLE, TABLE};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Key → verdict, as nft spells them.
pub(super) type Elements = BTreeMap<String, String>;

/// The table's objects by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Table {
    /// Named counters.
    pub(super) counters: BTreeSet<String>,
    /// Policy chains → their rules.
    pub(super) policy_chains: BTreeMap<String, Vec<String>>,
    /// Pod maps → their elements (declaration from the name: [`map_spec`]).
    pub(super) pod_maps: BTreeMap<String, Elements>,
    /// Pod chains → their rules.
    pub(super) pod_chains: BTreeMap<String, Vec<String>>,
    /// `egress`, `egress6`, `ingress`, `ingress6` → their elements.
    pub(super) dispatch: BTreeMap<String, Elements>,
}

/// The dispatch maps: always there, only their elements change.
pub(super) const DISPATCH: [&str; 4] = ["egress", "egress6", "ingress", "ingress6"];

/// The base chain: established traffic first, then one branch on the
/// packet's family, so an IPv4 packet never meets the IPv6 rules nor the
/// other way round (one lookup in an anonymous verdict map, not four rule
/// evaluations).
const FORWARD: &str = "\tchain forward {\n\
    \t\ttype filter hook forward priority filter - 5; policy accept;\n\
    \t\tct state established,related accept\n\
    \t\tmeta nfproto vmap { ipv4 : jump forward4, ipv6 : jump forward6 }\n\
    \t}\n";

/// The family chains the base chain jumps to: the egress check of an
/// isolated local source, then the ingress check of an isolated local
/// destination, each on the map of the chain's family.
const FAMILY_CHAINS: &str = "\tchain forward4 {\n\
    \t\tip saddr vmap @egress\n\
    \t\tip daddr vmap @ingress\n\
    \t}\n\
    \tchain forward6 {\n\
    \t\tip6 saddr vmap @egress6\n\
    \t\tip6 daddr vmap @ingress6\n\
    \t}\n";

/// The chains [`FORWARD`] and [`FAMILY_CHAINS`] define, base chain first.
pub(super) const FIXED_CHAINS: [&str; 3] = ["forward", "forward4", "forward6"];

/// The base chain's family branch, as nft lists it back.
pub(super) const FAMILY_BRANCH: &str =
    "meta nfproto vmap { ipv4 : jump forward4, ipv6 : jump forward6 }";

/// A map's declaration, which its name decides: a pod's peer map on
/// addresses alone (`_any`), on protocol · address · port (`_ports`), or a
/// dispatch map on exact addresses; IPv6 when the name ends in `6`.
pub(super) fn map_spec(name: &str) -> &'static str {
    let v6 = name.ends_with('6');
    let name = name.strip_suffix('6').unwrap_or(name);
    match (name.ends_with("_ports"), name.ends_with("_any"), v6) {
        (true, _, false) => "type inet_proto . ipv4_addr . inet_service : verdict; flags interval;",
        (true, _, true) => "type inet_proto . ipv6_addr . inet_service : verdict; flags interval;",
        (_, true, false) => "type ipv4_addr : verdict; flags interval;",
        (_, true, true) => "type ipv6_addr : verdict; flags interval;",
        (_, _, false) => "type ipv4_addr : verdict;",
        (_, _, true) => "type ipv6_addr : verdict;",
    }
}

impl Table {
    /// An empty table: no pod isolated.
    pub(super) fn new() -> Self {
        Self {
            dispatch: DISPATCH
                .iter()
                .map(|name| ((*name).to_string(), Elements::new()))
                .collect(),
            ..Self::default()
        }
    }

    /// The text that replaces any table of that name whole, in one
    /// transaction (the old rules hold until the new are in): for the first
    /// apply after start, and whenever what the kernel holds is not known.
    /// The IPv4-only table of earlier versions goes in the same transaction.
    pub(super) fn replace_text(&self) -> String {
        let mut t = format!(
            "table {OLD_TABLE} {{}}\ndelete table {OLD_TABLE}\n\
             table {TABLE} {{}}\ndelete table {TABLE}\ntable {TABLE} {{\n"
        );
        for counter in &self.counters {
            let _ = writeln!(t, "\tcounter {counter} {{\n\t}}");
        }
        let chain = |t: &mut String, name: &str, rules: &[String]| {
            let _ = writeln!(t, "\tchain {name} {{");
            for rule in rules {
                let _ = writeln!(t, "\t\t{rule}");
            }
            t.push_str("\t}\n");
        };
        let map = |t: &mut String, name: &str, elements: &Elements| {
            let _ = writeln!(t, "\tmap {name} {{\n\t\t{}", map_spec(name));
            if !elements.is_empty() {
                let _ = writeln!(t, "\t\telements = {{ {} }}", element_list(elements));
            }
            t.push_str("\t}\n");
        };
        for (name, rules) in &self.policy_chains {
            chain(&mut t, name, rules);
        }
        for (name, elements) in &self.pod_maps {
            map(&mut t, name, elements);
        }
        for (name, rules) in &self.pod_chains {
            chain(&mut t, name, rules);
        }
        for (name, elements) in &self.dispatch {
            map(&mut t, name, elements);
        }
        t.push_str(FAMILY_CHAINS);
        t.push_str(FORWARD);
        t.push_str("}\n");
        t
    }
}

fn element_list<'a>(elements: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut list = String::new();
    for (key, verdict) in elements {
        if !list.is_empty() {
            list.push_str(", ");
        }
        let _ = write!(list, "{key} : {verdict}");
    }
    list
}

/// The transaction that turns `old`, the table in force, into `new`: only
/// what differs. Empty when nothing does.
///
/// Counters and chains that are new are created first (empty), then new
/// maps with their elements, then chains whose rules differ are flushed and
/// refilled, then the elements that differ in the other maps are deleted and
/// created (deleted first: an interval that
/// grows would overlap its old self), then what is gone is deleted from the
/// top layer down. Elements are added with `create`, which fails if the key
/// is already there, and removed with `delete`, which fails if it is not:
/// a table that someone else changed fails the transaction (nothing of it
/// applies) instead of silently diverging, and the driver then replaces
/// the table whole.
pub(super) fn diff(old: &Table, new: &Table) -> String {
    let mut t = String::new();
    for counter in new.counters.difference(&old.counters) {
        let _ = writeln!(t, "add counter {TABLE} {counter}");
    }
    for (name, _) in new_only(&new.policy_chains, &old.policy_chains)
        .chain(new_only(&new.pod_chains, &old.pod_chains))
    {
        let _ = writeln!(t, "add chain {TABLE} {name}");
    }
    // A new map comes with its elements: nft 1.0.6 refuses `create element`
    // ("File exists") into an interval map made in the same transaction.
    for (name, elements) in
        new_only(&new.pod_maps, &old.pod_maps).chain(new_only(&new.dispatch, &old.dispatch))
    {
        let _ = write!(t, "add map {TABLE} {name} {{ {}", map_spec(name));
        if !elements.is_empty() {
            let _ = write!(t, " elements = {{ {} }}", element_list(elements));
        }
        t.push_str(" }\n");
    }
    for (chains, before) in [
        (&new.policy_chains, &old.policy_chains),
        (&new.pod_chains, &old.pod_chains),
    ] {
        for (name, rules) in chains {
            match before.get(name) {
                Some(old_rules) if old_rules == rules => continue,
                Some(_) => {
                    let _ = writeln!(t, "flush chain {TABLE} {name}");
                }
                None => {}
            }
            for rule in rules {
                let _ = writeln!(t, "add rule {TABLE} {name} {rule}");
            }
        }
    }
    for (maps, before) in [
        (&new.pod_maps, &old.pod_maps),
        (&new.dispatch, &old.dispatch),
    ] {
        for (name, elements) in maps {
            if let Some(old_elements) = before.get(name) {
                element_changes(&mut t, name, old_elements, elements);
            }
        }
    }
    for (name, _) in new_only(&old.pod_chains, &new.pod_chains) {
        let _ = writeln!(t, "delete chain {TABLE} {name}");
    }
    for (name, _) in
        new_only(&old.pod_maps, &new.pod_maps).chain(new_only(&old.dispatch, &new.dispatch))
    {
        let _ = writeln!(t, "delete map {TABLE} {name}");
    }
    for (name, _) in new_only(&old.policy_chains, &new.policy_chains) {
        let _ = writeln!(t, "delete chain {TABLE} {name}");
    }
    for counter in old.counters.difference(&new.counters) {
        let _ = writeln!(t, "delete counter {TABLE} {counter}");
    }
    t
}

/// The entries of `a` whose names `b` lacks.
fn new_only<'a, V>(
    a: &'a BTreeMap<String, V>,
    b: &'a BTreeMap<String, V>,
) -> impl Iterator<Item = (&'a String, &'a V)> {
    a.iter().filter(|(name, _)| !b.contains_key(*name))
}

/// One map's element deletes, then creates (a key whose verdict changes is
/// both).
fn element_changes(t: &mut String, map: &str, old: &Elements, new: &Elements) {
    let gone: Vec<&str> = old
        .iter()
        .filter(|(key, verdict)| new.get(*key) != Some(verdict))
        .map(|(key, _)| key.as_str())
        .collect();
    let added: Vec<(&String, &String)> = new
        .iter()
        .filter(|(key, verdict)| old.get(*key) != Some(verdict))
        .collect();
    if !gone.is_empty() {
        let _ = writeln!(t, "delete element {TABLE} {map} {{ {} }}", gone.join(", "));
    }
    if !added.is_empty() {
        let _ = writeln!(
            t,
            "create element {TABLE} {map} {{ {} }}",
            element_list(added)
        );
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
