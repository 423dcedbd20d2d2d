//! The router's own nftables table, `table ip weft` (DESIGN.md "The picture",
//! "Egress and forwarding"): accept forwarding within the cluster range,
//! masquerade pod traffic leaving the range through a non-weft interface
//! (unless `--no-masq`), and drop packets from a pod whose source is not
//! that pod's address. With an IPv6 pod range (issue 19) its twin
//! `table ip6 weft` ([`render6`]) does the same checks for IPv6 sources, in
//! the same transaction.
//!
//! The text is rendered by a pure function and handed to `nft -f -` in the
//! current network namespace (the router runs in the node's). It replaces
//! the table in one transaction, so a restarted router reconciles instead
//! of stacking rules, and no packet sees a half-built table.

use crate::cidr::Ipv4Cidr;
use crate::ipam::AddrRange;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The table's family and name, as nft spells them.
pub const TABLE: &str = "ip weft";

/// The IPv6 twin, there only with an IPv6 pod range: an `ip6` table beside
/// the `ip` one rather than one `inet` table, so that the IPv4 table stays
/// what it was (upgrades, `present`, and hosts without IPv6 are untouched)
/// and IPv4 packets never meet an IPv6 rule.
pub const TABLE6: &str = "ip6 weft";

/// The host ends of pod veths, as nft matches them: the CNI plugin names
/// them `weft` + 11 hex digits (`weft_cni::plumb::host_ifname`).
pub const POD_VETH_PATTERN: &str = "\"weft*\"";

/// How long one `nft` call may take before it is killed.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the table could not be rendered, applied or removed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The TUN name cannot be put into a rule safely.
    #[error(
        "{0:?} is not an interface name the nftables rules can match (1 to 15 of A-Z a-z 0-9 - _ .)"
    )]
    BadInterface(String),
    /// The `nft` program could not be started (usually: not installed).
    #[error("cannot run nft: {0}")]
    Spawn(std::io::Error),
    /// `nft` did not finish in time and was killed.
    #[error("nft did not finish within {} s", NFT_TIMEOUT.as_secs())]
    Timeout,
    /// `nft` ran and refused.
    #[error("nft refused: {0}")]
    Refused(String),
}

/// The ruleset text for `nft -f -`: creates `table ip weft` if missing,
/// deletes it and creates it anew, all in one transaction.
///
/// - `forward` accepts forwarding from and to `range`. An accept in this
///   table does not override a drop in another table (Docker's iptables
///   FORWARD policy DROP, for one): every base chain on a hook must accept.
///   That interplay is not handled yet.
/// - `antispoof` drops, unless the route back to its source leaves by the
///   interface it came in on (strict reverse path): every packet from a
///   pod veth ([`POD_VETH_PATTERN`]), whatever its source (DESIGN.md
///   "Security model": another pod's address, the node's own — a local
///   route fails the check —, anything outside the range); and a packet
///   with a source in `range` on any interface but `tun`. The host routes
///   each local pod's /32 to its veth, so only the pod's own address
///   passes. ARP is not IP and is untouched; IPv6 is in the `ip6` twin
///   ([`render6`]).
/// - `postrouting` (only when `masquerade`) rewrites the source of pod
///   traffic leaving the range through any interface but `tun`.
pub fn render(range: Ipv4Cidr, tun: &str, masquerade: bool) -> Result<String, NftError> {
    let mut text = checks(TABLE, "ip", &range.to_string(), tun)?;
    if masquerade {
        text.push_str(&masquerade_chain("ip", &range.to_string(), tun));
    }
    text.push_str("}\n");
    Ok(text)
}

/// The `postrouting` chain that gives pod traffic leaving `range` through
/// any interface but `tun` the outgoing interface's address as its source.
fn masquerade_chain(family: &str, range: &str, tun: &str) -> String {
    format!(
        "\tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\t{family} saddr {range} {family} daddr != {range} oifname != \"{tun}\" masquerade\n\
         \t}}\n"
    )
}

/// The start of `table` (`family` its match keyword, `ip` or `ip6`) up to
/// its last chain: replaced whole, its `forward` and `antispoof` chains.
fn checks(table: &str, family: &str, range: &str, tun: &str) -> Result<String, NftError> {
    check_interface(tun)?;
    Ok(format!(
        "table {table} {{}}\n\
         delete table {table}\n\
         table {table} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\t{family} saddr {range} accept\n\
         \t\t{family} daddr {range} accept\n\
         \t}}\n\
         \tchain antispoof {{\n\
         \t\ttype filter hook prerouting priority raw - 1; policy accept;\n\
         \t\tiifname {POD_VETH_PATTERN} iifname != \"{tun}\" fib saddr . iif oif missing counter drop\n\
         \t\tiifname != \"{tun}\" {family} saddr {range} fib saddr . iif oif missing counter drop\n\
         \t}}\n"
    ))
}

fn check_interface(tun: &str) -> Result<(), NftError> {
    let valid = (1..=15).contains(&tun.len())
        && tun
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(NftError::BadInterface(tun.to_string()))
    }
}

/// The ruleset text of the IPv6 twin, `table ip6 weft`, replaced whole like
/// the IPv4 one: forwarding within `range6` accepted, and the same two
/// strict reverse-path checks for IPv6 sources. The host routes each local
/// pod's /128 to its veth, so only the pod's own address passes; a pod's
/// link-local source passes too (nft looks a link-local address up on the
/// interface it came in on, where the host end has fe80::/64), which
/// neighbour discovery needs. With `masquerade6` (`--masquerade6`, on by
/// default for a unique local range) IPv6 pod traffic leaving `range6`
/// through any interface but `tun` is masqueraded like the IPv4 one (NAT66
/// to the node's address, not NPTv6: that needs a routed prefix per node as
/// long as the pods', which a node seldom has).
pub fn render6(range6: AddrRange, tun: &str, masquerade6: bool) -> Result<String, NftError> {
    let mut text = checks(TABLE6, "ip6", &range6.to_string(), tun)?;
    if masquerade6 {
        text.push_str(&masquerade_chain("ip6", &range6.to_string(), tun));
    }
    text.push_str("}\n");
    Ok(text)
}

/// Replaces `table ip weft` in the current network namespace with the
/// rules [`render`] gives, and with an IPv6 pod range `table ip6 weft` with
/// those of [`render6`], in one transaction. Idempotent.
pub fn apply(
    range: Ipv4Cidr,
    range6: Option<AddrRange>,
    tun: &str,
    masquerade: bool,
    masquerade6: bool,
) -> Result<(), NftError> {
    let mut text = render(range, tun, masquerade)?;
    if let Some(range6) = range6 {
        text.push_str(&render6(range6, tun, masquerade6)?);
    }
    nft(&["-f", "-"], Some(&text)).map(|_| ())
}

/// Whether `table ip weft` (and with an IPv6 pod range `table ip6 weft`) is
/// in place in the current network namespace with every rule [`render`]
/// (and [`render6`]) gives (someone else's firewall reload or an `nft flush
/// ruleset` removes it; issue 17).
pub fn present(
    range: Ipv4Cidr,
    range6: Option<AddrRange>,
    masquerade: bool,
    masquerade6: bool,
) -> Result<bool, NftError> {
    let listing = |family: &str| listing(&["list", "table", family, "weft"]);
    let Some(v4) = listing("ip")? else {
        return Ok(false);
    };
    if !complete(&v4, range, masquerade) {
        return Ok(false);
    }
    match range6 {
        None => Ok(true),
        Some(range6) => Ok(listing("ip6")?.is_some_and(|v6| complete6(&v6, range6, masquerade6))),
    }
}

/// Whether an `nft list table ip6 weft` listing holds all of the twin's
/// rules, and a masquerade rule exactly when `masquerade6` asks for one
/// (with `--masquerade6 off`, a masquerade rule there is as wrong as a
/// missing one with `on`).
fn complete6(listing: &str, range6: AddrRange, masquerade6: bool) -> bool {
    has_checks(listing, "ip6", &range6.to_string())
        && masquerade6 == listing.lines().any(|l| l.contains("masquerade"))
}

/// Whether an `nft list table ip weft` listing holds all of the table's
/// rules (nft prints them normalised, with counters: match the stable parts).
fn complete(listing: &str, range: Ipv4Cidr, masquerade: bool) -> bool {
    has_checks(listing, "ip", &range.to_string())
        && (!masquerade || listing.lines().any(|l| l.contains("masquerade")))
}

/// Whether a listing holds every rule [`checks`] gives.
fn has_checks(listing: &str, family: &str, range: &str) -> bool {
    let has = |parts: &[&str]| {
        listing
            .lines()
            .any(|line| parts.iter().all(|part| line.contains(part)))
    };
    let saddr = format!("{family} saddr {range} accept");
    let daddr = format!("{family} daddr {range} accept");
    let range_rpf = format!("{family} saddr {range} fib");
    has(&[&saddr])
        && has(&[&daddr])
        && has(&[&range_rpf, "fib saddr . iif oif missing", "drop"])
        && has(&["iifname \"weft*\"", "fib saddr . iif oif missing", "drop"])
}

/// Deletes `table ip weft` and its IPv6 twin `table ip6 weft` from the
/// current network namespace. Returns the tables there were.
pub fn remove() -> Result<Vec<&'static str>, NftError> {
    let mut removed = Vec::new();
    for (table, family) in [(TABLE, "ip"), (TABLE6, "ip6")] {
        if delete_table(family)? {
            removed.push(table);
        }
    }
    Ok(removed)
}

/// Deletes the IPv6 twin `table ip6 weft` alone, for a router started
/// without an IPv6 pod range after one that had it; `true` if it was
/// there. Not part of [`apply`]'s transaction, so that a kernel without
/// nftables' `ip6` family never costs the IPv4 table.
pub fn remove_twin() -> Result<bool, NftError> {
    delete_table("ip6")
}

/// `nft delete table FAMILY weft`; `false` when there was none.
fn delete_table(family: &str) -> Result<bool, NftError> {
    match nft(&["delete", "table", family, "weft"], None) {
        Ok(_) => Ok(true),
        Err(NftError::Refused(text)) if text.contains("No such file or directory") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Applies `text` with `nft -f -` as one transaction, bounded by
/// [`NFT_TIMEOUT`] (for another table's owner: `crate::policy::driver`).
pub fn run(text: &str) -> Result<(), String> {
    nft(&["-f", "-"], Some(text))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What `nft ARGS` lists, or `None` when the object is not there.
pub fn listing(args: &[&str]) -> Result<Option<String>, NftError> {
    match nft(args, None) {
        Ok(listing) => Ok(Some(listing)),
        Err(NftError::Refused(text)) if text.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs `nft ARGS` with `stdin` (if any), bounded by [`NFT_TIMEOUT`];
/// returns what it printed (a listing is a few kilobytes: the pipe holds it
/// until nft exits).
fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error means nft exited early; its status says why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let deadline = Instant::now() + NFT_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(NftError::Spawn)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NftError::Timeout);
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    if status.success() {
        let mut stdout = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stdout);
        }
        return Ok(stdout);
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    let first = stderr.lines().next().unwrap_or("").trim().to_string();
    Err(NftError::Refused(if first.is_empty() {
        format!("exit status {status}")
    } else {
        first
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn range() -> Ipv4Cidr {
        "10.32.0.0/12".parse().unwrap()
    }

    #[test]
    fn the_ruleset_replaces_the_table_in_one_transaction() {
        let text = render(range(), "weft0", true).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "table ip weft {}");
        assert_eq!(lines[1], "delete table ip weft");
        assert_eq!(lines[2], "table ip weft {");
        assert_eq!(text.matches("delete").count(), 1);
    }

    /// Panics unless every one of `lines` is a whole line of `text`.
    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(
                text.lines().any(|l| l.trim() == *line),
                "{line:?} is not a line of:\n{text}"
            );
        }
    }

    #[test]
    fn forwarding_within_the_range_is_accepted_both_ways() {
        assert_lines(
            &render(range(), "weft0", false).unwrap(),
            &[
                "type filter hook forward priority filter; policy accept;",
                "ip saddr 10.32.0.0/12 accept",
                "ip daddr 10.32.0.0/12 accept",
            ],
        );
    }

    #[test]
    fn range_sources_off_the_tun_must_pass_the_reverse_path_check() {
        assert_lines(
            &render("10.40.0.0/16".parse().unwrap(), "tun7", false).unwrap(),
            &[
                "type filter hook prerouting priority raw - 1; policy accept;",
                "iifname != \"tun7\" ip saddr 10.40.0.0/16 fib saddr . iif oif missing counter drop",
            ],
        );
    }

    #[test]
    fn every_source_from_a_pod_veth_must_pass_the_reverse_path_check() {
        let text = render(range(), "tun7", false).unwrap();
        assert_lines(
            &text,
            &["iifname \"weft*\" iifname != \"tun7\" fib saddr . iif oif missing counter drop"],
        );
        // Not limited to the range: the node's address or anything outside.
        let rule = text.lines().find(|l| l.contains("\"weft*\"")).unwrap();
        assert!(!rule.contains("saddr 10."), "{rule}");
    }

    #[test]
    fn a_listing_without_the_pod_veth_rule_is_incomplete() {
        let text = render(range(), "weft0", false).unwrap();
        assert!(complete(&text, range(), false));
        let without: String = text
            .lines()
            .filter(|l| !l.contains("\"weft*\""))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!complete(&without, range(), false));
    }

    #[test]
    fn masquerade_rewrites_only_traffic_leaving_the_range_off_the_tun() {
        assert_lines(
            &render(range(), "weft0", true).unwrap(),
            &[
                "type nat hook postrouting priority srcnat; policy accept;",
                "ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 oifname != \"weft0\" masquerade",
            ],
        );
    }

    #[test]
    fn no_masq_leaves_out_the_nat_chain_and_keeps_the_rest() {
        let with = render(range(), "weft0", true).unwrap();
        let without = render(range(), "weft0", false).unwrap();
        assert!(!without.contains("postrouting"));
        assert!(!without.contains("masquerade"));
        assert!(without.contains("chain forward"));
        assert!(without.contains("chain antispoof"));
        assert!(with.starts_with(without.strip_suffix("}\n").unwrap()));
    }

    #[test]
    fn a_listing_missing_any_rule_is_incomplete() {
        let listing = "table ip weft {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tip saddr 10.32.0.0/12 accept\n\t\tip daddr 10.32.0.0/12 accept\n\t}\n\tchain antispoof {\n\t\ttype filter hook prerouting priority -301; policy accept;\n\t\tiifname \"weft*\" iifname != \"weft0\" fib saddr . iif oif missing counter packets 0 bytes 0 drop\n\t\tiifname != \"weft0\" ip saddr 10.32.0.0/12 fib saddr . iif oif missing counter packets 3 bytes 252 drop\n\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 oifname != \"weft0\" masquerade\n\t}\n}\n";
        assert!(complete(listing, range(), true));
        let unmasked: String = listing
            .lines()
            .filter(|l| !l.contains("masquerade"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(complete(&unmasked, range(), false));
        assert!(!complete(&unmasked, range(), true));
        let flushed = listing.replace("\t\tip daddr 10.32.0.0/12 accept\n", "");
        assert!(!complete(&flushed, range(), false));
        assert!(!complete(listing, "10.40.0.0/16".parse().unwrap(), false));
        assert!(!complete("", range(), false));
    }

    #[test]
    fn the_braces_balance() {
        for masq in [true, false] {
            let text = render(range(), "weft0", masq).unwrap();
            assert_eq!(text.matches('{').count(), text.matches('}').count());
        }
    }

    fn range6() -> AddrRange {
        AddrRange::parse("fd00:32::/48").unwrap()
    }

    #[test]
    fn the_ipv6_twin_checks_every_pod_source_and_range_sources_off_the_tun() {
        let text = render6(range6(), "tun7", false).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            &lines[..3],
            &[
                "table ip6 weft {}",
                "delete table ip6 weft",
                "table ip6 weft {"
            ]
        );
        assert_lines(
            &text,
            &[
                "type filter hook forward priority filter; policy accept;",
                "ip6 saddr fd00:32::/48 accept",
                "ip6 daddr fd00:32::/48 accept",
                "type filter hook prerouting priority raw - 1; policy accept;",
                "iifname \"weft*\" iifname != \"tun7\" fib saddr . iif oif missing counter drop",
                "iifname != \"tun7\" ip6 saddr fd00:32::/48 fib saddr . iif oif missing counter drop",
            ],
        );
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        assert!(!text.contains("masquerade"));
        assert!(
            !text.contains("ip saddr"),
            "IPv4 rules in the ip6 twin: {text}"
        );
        assert!(matches!(
            render6(range6(), "a b", true),
            Err(NftError::BadInterface(_))
        ));
    }

    #[test]
    fn an_ipv6_listing_missing_any_rule_or_of_another_range_is_incomplete() {
        let text = render6(range6(), "weft0", false).unwrap();
        assert!(complete6(&text, range6(), false));
        for rule in ["\"weft*\"", "ip6 daddr", "ip6 saddr fd00:32::/48 fib"] {
            let without: String = text
                .lines()
                .filter(|l| !l.contains(rule))
                .map(|l| format!("{l}\n"))
                .collect();
            assert!(!complete6(&without, range6(), false), "without {rule}");
        }
        assert!(!complete6(
            &text,
            AddrRange::parse("fd00:33::/48").unwrap(),
            false
        ));
        // The IPv4 table is not its twin.
        assert!(!complete6(
            &render(range(), "weft0", true).unwrap(),
            range6(),
            true
        ));
    }

    #[test]
    fn masquerade6_rewrites_ipv6_pod_traffic_leaving_the_range_off_the_tun() {
        let with = render6(range6(), "weft0", true).unwrap();
        assert_lines(
            &with,
            &[
                "type nat hook postrouting priority srcnat; policy accept;",
                "ip6 saddr fd00:32::/48 ip6 daddr != fd00:32::/48 oifname != \"weft0\" masquerade",
            ],
        );
        assert_eq!(with.matches('{').count(), with.matches('}').count());
        let without = render6(range6(), "weft0", false).unwrap();
        assert!(!without.contains("postrouting"));
        assert!(with.starts_with(without.strip_suffix("}\n").unwrap()));
        // The IPv4 table's masquerade is its own switch.
        assert!(!render(range(), "weft0", false).unwrap().contains("ip6"));
    }

    #[test]
    fn an_ipv6_listing_is_whole_only_with_the_masquerade_asked_for() {
        let with = render6(range6(), "weft0", true).unwrap();
        let without = render6(range6(), "weft0", false).unwrap();
        assert!(complete6(&with, range6(), true));
        assert!(complete6(&without, range6(), false));
        // Flushed by someone else: repaired. Left over with `off`: replaced.
        assert!(!complete6(&without, range6(), true));
        assert!(!complete6(&with, range6(), false));
    }

    #[test]
    fn an_interface_name_that_could_inject_rules_is_refused() {
        for bad in [
            "",
            "weft0\" accept; #",
            "a b",
            "we*",
            "x;y",
            "a\nb",
            "sixteen-chars-xx",
            "w\\0",
        ] {
            assert!(
                matches!(render(range(), bad, true), Err(NftError::BadInterface(_))),
                "{bad:?} was accepted"
            );
        }
        assert!(render(range(), "weft_0.x-1", true).is_ok());
    }
}
