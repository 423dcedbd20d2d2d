//! The compiled rules as nftables text (DESIGN.md "NetworkPolicy"; issue
//! 18, "Enforcement"). Pure: [`render`] gives the text, the driver hands it
//! to `nft -f -` as one transaction.
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
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

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
    /// The text for `nft -f -` that replaces any previous table whole (the
    /// first apply after start, when what is in the kernel is unknown).
    pub text: String,
    /// The table's definitions alone (see [`Rendered::update_from`]).
    body: String,
    /// Policy `i` goes to chains `pol_{i}_in` and `pol_{i}_out`.
    pub policies: Vec<PolicyId>,
    /// Named counters → what they count.
    pub counters: BTreeMap<String, Counted>,
    /// Names of the chains and maps defined (a later update deletes those
    /// it no longer defines).
    objects: Objects,
}

/// What one named counter counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counted {
    /// Packets a policy allowed (`in`: to its pods; `out`: from them).
    Allowed(PolicyId, &'static str),
    /// Packets dropped by a pod's default deny (`namespace/name`, direction).
    Denied(String, &'static str),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Objects {
    chains: Vec<String>,
    maps: Vec<String>,
}

impl Rendered {
    /// The text that turns the table `previous` left into this one in one
    /// transaction, keeping the named counters of policies and pods that
    /// stay (rules flushed and re-added, map elements replaced, objects no
    /// longer used deleted). Only valid when `previous` is what the kernel
    /// holds (the driver falls back to [`Rendered::text`] after a failure).
    pub fn update_from(&self, previous: &Self) -> String {
        let mut t = format!("flush table {TABLE}\n");
        for map in &previous.objects.maps {
            let _ = writeln!(t, "flush map {TABLE} {map}");
        }
        t.push_str(&self.body);
        for chain in &previous.objects.chains {
            if !self.objects.chains.contains(chain) {
                let _ = writeln!(t, "delete chain {TABLE} {chain}");
            }
        }
        for map in &previous.objects.maps {
            if !self.objects.maps.contains(map) {
                let _ = writeln!(t, "delete map {TABLE} {map}");
            }
        }
        for counter in previous.counters.keys() {
            if !self.counters.contains_key(counter) {
                let _ = writeln!(t, "delete counter {TABLE} {counter}");
            }
        }
        t
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

/// A counter's name from what it counts: stable across updates (so its
/// numbers survive them), short (nft names are bounded), and free of the
/// characters Kubernetes names may hold. FNV-1a, 64 bits.
fn counter_name(kind: char, what: &str, dir: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in what.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{kind}{hash:016x}_{dir}")
}

/// Renders the whole table, replacing any previous one in the same
/// transaction (no packet sees a half-built table).
pub fn render(pods: &[LocalPod]) -> Rendered {
    let mut index: BTreeMap<PolicyId, usize> = BTreeMap::new();
    for pod in pods {
        for id in pod
            .ingress
            .selected_by
            .iter()
            .chain(&pod.egress.selected_by)
        {
            index.entry(id.clone()).or_insert(0);
        }
    }
    for (i, slot) in index.values_mut().enumerate() {
        *slot = i;
    }
    let policies: Vec<PolicyId> = index.keys().cloned().collect();

    let mut t = format!("table {TABLE} {{\n");
    let mut objects = Objects::default();
    let mut counters = BTreeMap::new();
    let mut ingress_elements = Vec::new();
    let mut egress_elements = Vec::new();
    for (p, pod) in pods.iter().enumerate() {
        for (dir, direction, elements) in [
            ("in", &pod.ingress, &mut ingress_elements),
            ("out", &pod.egress, &mut egress_elements),
        ] {
            if !direction.is_isolated() || pod.ips.is_empty() {
                continue;
            }
            let chain = format!("pod_{p}_{dir}");
            for ip in &pod.ips {
                elements.push(format!("{} : jump {chain}", Ipv4Addr::from(*ip)));
            }
            let counter = counter_name('d', &pod.key, dir);
            let _ = writeln!(t, "\tcounter {counter} {{\n\t}}");
            counters.insert(counter.clone(), Counted::Denied(pod.key.clone(), dir));
            render_pod_chain(&mut t, &chain, dir, pod, direction, &index, &counter);
            objects.maps.push(format!("{chain}_any"));
            objects.maps.push(format!("{chain}_ports"));
            objects.chains.push(chain);
        }
    }
    for (i, id) in policies.iter().enumerate() {
        let comment = quoted(&id.to_string());
        let (c_in, c_out) = (
            counter_name('p', &id.to_string(), "in"),
            counter_name('p', &id.to_string(), "out"),
        );
        let _ = write!(
            t,
            "\tcounter {c_in} {{\n\t}}\n\tcounter {c_out} {{\n\t}}\n\
             \tchain pol_{i}_in {{\n\t\tcounter name \"{c_in}\" accept comment \"{comment}\"\n\t}}\n\
             \tchain pol_{i}_out {{\n\t\tcounter name \"{c_out}\" comment \"{comment}\"\n\t}}\n"
        );
        counters.insert(c_in, Counted::Allowed(id.clone(), "in"));
        counters.insert(c_out, Counted::Allowed(id.clone(), "out"));
        objects.chains.push(format!("pol_{i}_in"));
        objects.chains.push(format!("pol_{i}_out"));
    }
    for (name, elements) in [("ingress", ingress_elements), ("egress", egress_elements)] {
        let _ = writeln!(t, "\tmap {name} {{\n\t\ttype ipv4_addr : verdict;");
        if !elements.is_empty() {
            let _ = writeln!(t, "\t\telements = {{ {} }}", elements.join(", "));
        }
        t.push_str("\t}\n");
        objects.maps.push(name.into());
    }
    t.push_str(
        "\tchain forward {\n\
         \t\ttype filter hook forward priority filter - 5; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tip saddr vmap @egress\n\
         \t\tip daddr vmap @ingress\n\
         \t}\n}\n",
    );
    Rendered {
        text: format!("table {TABLE} {{}}\ndelete table {TABLE}\n{t}"),
        body: t,
        policies,
        counters,
        objects,
    }
}

/// A pod's chain for one direction and its two maps.
fn render_pod_chain(
    t: &mut String,
    chain: &str,
    dir: &str,
    pod: &LocalPod,
    direction: &Direction,
    index: &BTreeMap<PolicyId, usize>,
    counter: &str,
) {
    // Ingress looks at the source; egress at the destination.
    let peer = if dir == "in" { "saddr" } else { "daddr" };
    let target = |local: usize| {
        let global = direction
            .selected_by
            .get(local)
            .and_then(|id| index.get(id))
            .copied()
            .unwrap_or(0);
        format!("goto pol_{global}_{dir}")
    };
    let any: Vec<String> = direction
        .any_port
        .iter()
        .map(|e| format!("{} : {}", addr_range(e.addrs), target(e.policy)))
        .collect();
    let ports: Vec<String> = direction
        .by_port
        .iter()
        .map(|e| {
            format!(
                "{} . {} . {} : {}",
                e.proto.as_str(),
                addr_range(e.addrs),
                port_range(e.ports),
                target(e.policy)
            )
        })
        .collect();
    let _ = writeln!(
        t,
        "\tmap {chain}_any {{\n\t\ttype ipv4_addr : verdict; flags interval;"
    );
    if !any.is_empty() {
        let _ = writeln!(t, "\t\telements = {{ {} }}", any.join(", "));
    }
    let _ = writeln!(
        t,
        "\t}}\n\tmap {chain}_ports {{\n\t\ttype inet_proto . ipv4_addr . inet_service : verdict; flags interval;"
    );
    if !ports.is_empty() {
        let _ = writeln!(t, "\t\telements = {{ {} }}", ports.join(", "));
    }
    let _ = write!(
        t,
        "\t}}\n\tchain {chain} {{\n\
         \t\tip {peer} vmap @{chain}_any\n\
         \t\tmeta l4proto . ip {peer} . th dport vmap @{chain}_ports\n\
         \t\t{}\n\
         \t\tcounter name \"{counter}\" drop comment \"{} default deny of {}\"\n\
         \t}}\n",
        super::droplog::log_statement(counter),
        quoted(&pod.key),
        quoted(&pod.namespace),
    );
}

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

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l.trim() == line)
    }

    #[test]
    fn the_table_is_replaced_in_one_transaction_with_conntrack_first() {
        let r = render(&pods());
        assert!(r.text.starts_with(
            "table ip weft_policy {}\ndelete table ip weft_policy\ntable ip weft_policy {\n"
        ));
        let forward: Vec<&str> = r
            .text
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
        assert_eq!(r.text.matches('{').count(), r.text.matches('}').count());
    }

    #[test]
    fn only_isolated_pods_get_a_chain_and_a_verdict_map_element() {
        let r = render(&pods());
        assert!(r.text.contains("elements = { 10.32.1.1 : jump pod_0_in }"));
        assert!(r.text.contains("elements = { 10.32.1.1 : jump pod_0_out }"));
        assert!(!r.text.contains("10.32.1.2"), "{}", r.text);
        assert!(!r.text.contains("pod_1_"));
    }

    #[test]
    fn entries_name_the_allowing_policy_and_the_drop_names_the_namespace() {
        let r = render(&pods());
        assert_eq!(
            r.policies,
            vec![id("x", "allow-net"), id("x", "allow-y"), id("x", "deny")]
        );
        assert!(
            r.text
                .contains("elements = { 10.0.0.0-10.255.255.255 : goto pol_0_in }"),
            "{}",
            r.text
        );
        assert!(
            r.text
                .contains("tcp . 10.32.2.1-10.32.2.2 . 80-81 : goto pol_1_in"),
            "{}",
            r.text
        );
        let deny = counter_name('d', "x/a", "in");
        assert!(has_line(
            &r.text,
            &format!("counter name \"{deny}\" drop comment \"x/a default deny of x\"")
        ));
        let allow = counter_name('p', "x/allow-net", "in");
        assert!(has_line(
            &r.text,
            &format!("counter name \"{allow}\" accept comment \"x/allow-net\"")
        ));
        // An egress allow returns to the forward chain for the ingress check.
        let out = counter_name('p', "x/deny", "out");
        assert!(has_line(
            &r.text,
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
        assert!(r.text.lines().any(|l| {
            l.trim()
                .ends_with("drop comment \"x/a accept; drop  default deny of x\"")
        }));
    }

    /// Applies the text in a network namespace of its own (root and nft
    /// needed; skipped loudly otherwise): the kernel takes the interval
    /// and concatenated verdict maps.
    #[test]
    fn the_kernel_accepts_the_table() {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !root {
            eprintln!("SKIP the_kernel_accepts_the_table: not root");
            return;
        }
        // Full, then an update that drops x/a's egress isolation (a chain,
        // two maps and a counter go), then back: each one transaction.
        let full = render(&pods());
        let mut fewer = pods();
        fewer[0].egress = Direction::default();
        let fewer = render(&fewer);
        let again = render(&pods());
        let dir = std::env::temp_dir().join(format!("weft-nft-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let texts = [
            full.text.clone(),
            fewer.update_from(&full),
            again.update_from(&fewer),
        ];
        let mut script = String::new();
        for (i, text) in texts.iter().enumerate() {
            let file = dir.join(format!("{i}.nft"));
            std::fs::write(&file, text).unwrap();
            script.push_str(&format!("nft -f {} && ", file.display()));
        }
        script.push_str("nft list table ip weft_policy");
        let out = std::process::Command::new("unshare")
            .args(["--net", "sh", "-c", &script])
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "nft refused:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            texts.join("\n----\n")
        );
        assert!(listing.contains("goto pol_1_in"), "{listing}");
        assert!(listing.contains("chain pod_0_out"), "{listing}");
        assert_eq!(listing.matches("10.32.1.1 : jump pod_0_in").count(), 1);
    }
}
