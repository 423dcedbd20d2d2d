//! Docker sets the iptables FORWARD policy to DROP, and an accept in the
//! router's own nftables table cannot overrule that: every base chain on a
//! hook must accept (DESIGN.md "Egress and forwarding"). So where FORWARD
//! drops by policy, the router also accepts its range there: in
//! `DOCKER-USER` when Docker made it (Docker keeps that chain for its users
//! and jumps to it first), else at the top of FORWARD. Rules carry a
//! comment, so `weft reset` finds them without knowing the range. Where
//! FORWARD accepts by policy nothing is added.
//!
//! A host has two iptables backends, and the kernel runs both: rules made by
//! `iptables-legacy` (x_tables) are invisible to `iptables-nft` and the
//! other way round, so asking the image's `iptables` (nft) on a legacy host
//! sees ACCEPT while legacy's DROP loses the traffic (issue 17). So each
//! backend's `iptables-*-save` is read (which creates no table), rules go
//! into every backend whose FORWARD drops, and status names the backend the
//! host uses, chosen the way kube-proxy's iptables-wrapper does: the one
//! holding the kubelet's hint chains, else the one with more rules.

use crate::cidr::Ipv4Cidr;
use std::process::{Command, Output};

/// The comment on every rule this module adds.
pub const COMMENT: &str = "weft pod range";

/// Why the rules could not be checked, added or removed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardPolicyError {
    /// No iptables command could be started (not installed).
    #[error("cannot run iptables: {0}")]
    Spawn(std::io::Error),
    /// An iptables command ran and refused.
    #[error("{command} {args} refused: {stderr}")]
    Refused {
        /// The program.
        command: &'static str,
        /// The arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
}

/// One iptables backend, as the command that drives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft`: xtables rules in nftables tables.
    Nft,
    /// `iptables-legacy`: the kernel's x_tables.
    Legacy,
    /// Plain `iptables`, when neither variant is installed (backend unknown).
    Unknown,
}

impl Backend {
    /// The name status and logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nft => "nft",
            Self::Legacy => "legacy",
            Self::Unknown => "unknown",
        }
    }

    fn command(self) -> &'static str {
        match self {
            Self::Nft => "iptables-nft",
            Self::Legacy => "iptables-legacy",
            Self::Unknown => "iptables",
        }
    }

    fn save_command(self) -> &'static str {
        match self {
            Self::Nft => "iptables-nft-save",
            Self::Legacy => "iptables-legacy-save",
            Self::Unknown => "iptables-save",
        }
    }
}

/// What one backend's `iptables-save` shows that matters here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ruleset {
    /// The filter table's FORWARD policy is DROP.
    forward_drops: bool,
    /// The filter table has Docker's `DOCKER-USER` chain.
    docker_user: bool,
    /// Rules plus non-ACCEPT policies: how much this backend is used.
    weight: usize,
    /// The kubelet's / kube-proxy's marker chains are here.
    kube_hint: bool,
}

/// Reads `iptables-save` output (all tables).
fn parse_save(text: &str) -> Ruleset {
    let mut set = Ruleset::default();
    let mut table = "";
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            table = name;
        } else if let Some(chain) = line.strip_prefix(':') {
            let mut words = chain.split_whitespace();
            let (name, policy) = (words.next().unwrap_or(""), words.next().unwrap_or("-"));
            if matches!(name, "KUBE-IPTABLES-HINT" | "KUBE-KUBELET-CANARY") {
                set.kube_hint = true;
            }
            if !matches!(policy, "ACCEPT" | "-") {
                set.weight += 1;
            }
            if table == "filter" {
                set.forward_drops |= name == "FORWARD" && policy == "DROP";
                set.docker_user |= name == "DOCKER-USER";
            }
        } else if line.starts_with("-A ") {
            set.weight += 1;
        }
    }
    set
}

/// The backend the host uses (kube-proxy's iptables-wrapper rule): the one
/// holding the kubelet's hint chains, else the one with more rules (legacy
/// only when strictly more: nft is the default of current distributions).
fn in_use(nft: Option<Ruleset>, legacy: Option<Ruleset>) -> Backend {
    match (nft, legacy) {
        (None, None) => Backend::Unknown,
        (Some(_), None) => Backend::Nft,
        (None, Some(_)) => Backend::Legacy,
        (Some(n), _) if n.kube_hint => Backend::Nft,
        (_, Some(l)) if l.kube_hint => Backend::Legacy,
        (Some(n), Some(l)) if l.weight > n.weight => Backend::Legacy,
        _ => Backend::Nft,
    }
}

/// What [`open`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The backend the host uses.
    pub backend: Backend,
    /// Where the range is accepted (backend, chain), because that
    /// backend's FORWARD drops by policy; empty when none does.
    pub accepted_in: Vec<(Backend, &'static str)>,
    /// How many rules were added now (0 when they were all there).
    pub added: usize,
}

/// Each installed backend and its ruleset; plain `iptables` alone when
/// neither variant is installed.
fn rulesets() -> Result<Vec<(Backend, Ruleset)>, ForwardPolicyError> {
    let mut found = Vec::new();
    let mut spawn_error = None;
    for backend in [Backend::Nft, Backend::Legacy] {
        match run(backend.save_command(), &[]) {
            Ok(text) => found.push((backend, parse_save(&text))),
            Err(ForwardPolicyError::Spawn(e)) => spawn_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    if found.is_empty() {
        let listing = run(Backend::Unknown.command(), &["-S", "FORWARD"]).map_err(|e| match e {
            ForwardPolicyError::Spawn(e) => ForwardPolicyError::Spawn(spawn_error.unwrap_or(e)),
            e => e,
        })?;
        let docker_user = iptables(Backend::Unknown, &["-S", "DOCKER-USER"]).is_ok();
        found.push((
            Backend::Unknown,
            Ruleset {
                forward_drops: listing.lines().any(|l| l.trim() == "-P FORWARD DROP"),
                docker_user,
                ..Ruleset::default()
            },
        ));
    }
    Ok(found)
}

/// Accepts forwarding from and to `range` in every backend whose FORWARD
/// policy drops. Idempotent: a rule already there is not added again.
pub fn open(range: Ipv4Cidr) -> Result<Opened, ForwardPolicyError> {
    let found = rulesets()?;
    let get = |b: Backend| found.iter().find(|(x, _)| *x == b).map(|(_, r)| *r);
    let mut opened = Opened {
        backend: if found.iter().any(|(b, _)| *b == Backend::Unknown) {
            Backend::Unknown
        } else {
            in_use(get(Backend::Nft), get(Backend::Legacy))
        },
        accepted_in: Vec::new(),
        added: 0,
    };
    let range = range.to_string();
    for (backend, set) in &found {
        if !set.forward_drops {
            continue;
        }
        let chain = if set.docker_user {
            "DOCKER-USER"
        } else {
            "FORWARD"
        };
        for direction in ["-s", "-d"] {
            let rule = [
                direction,
                &range,
                "-m",
                "comment",
                "--comment",
                COMMENT,
                "-j",
                "ACCEPT",
            ];
            let check: Vec<&str> = ["-C", chain].iter().chain(&rule).copied().collect();
            if iptables(*backend, &check).is_err() {
                let insert: Vec<&str> = ["-I", chain, "1"].iter().chain(&rule).copied().collect();
                iptables(*backend, &insert)?;
                opened.added += 1;
            }
        }
        opened.accepted_in.push((*backend, chain));
    }
    Ok(opened)
}

/// Removes every rule [`open`] added, in either chain of every backend;
/// returns how many.
pub fn close() -> Result<usize, ForwardPolicyError> {
    let mut removed = 0;
    for (backend, set) in rulesets()? {
        let chains: &[&str] = if set.docker_user {
            &["DOCKER-USER", "FORWARD"]
        } else {
            &["FORWARD"]
        };
        for chain in chains {
            let Ok(listing) = iptables(backend, &["-S", chain]) else {
                continue;
            };
            for line in ours(&listing) {
                let Some(rest) = line.strip_prefix("-A ") else {
                    continue;
                };
                let args: Vec<String> = std::iter::once("-D".to_string())
                    .chain(split_rule(rest))
                    .collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                iptables(backend, &args)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The lines of an `iptables -S` listing that carry our comment.
fn ours(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter(|l| l.contains(&format!("--comment \"{COMMENT}\"")))
        .collect()
}

/// Splits a rule as `iptables -S` prints it into arguments (our comment is
/// the only quoted word it can contain).
fn split_rule(rule: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut rest = rule;
    while let Some(start) = rest.find('"') {
        args.extend(rest[..start].split_whitespace().map(str::to_string));
        let Some(len) = rest[start + 1..].find('"') else {
            break;
        };
        args.push(rest[start + 1..start + 1 + len].to_string());
        rest = &rest[start + 2 + len..];
    }
    args.extend(rest.split_whitespace().map(str::to_string));
    args
}

/// Runs `iptables-<backend> -w 5 ARGS` (waiting up to 5 s for the xtables lock).
fn iptables(backend: Backend, args: &[&str]) -> Result<String, ForwardPolicyError> {
    let mut all = vec!["-w", "5"];
    all.extend_from_slice(args);
    run(backend.command(), &all)
}

fn run(command: &'static str, args: &[&str]) -> Result<String, ForwardPolicyError> {
    let output: Output = Command::new(command)
        .args(args)
        .output()
        .map_err(ForwardPolicyError::Spawn)?;
    if !output.status.success() {
        return Err(ForwardPolicyError::Refused {
            command,
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_LEGACY: &str = "# Generated by iptables-save v1.8.9\n\
        *filter\n\
        :INPUT ACCEPT [0:0]\n\
        :FORWARD DROP [0:0]\n\
        :OUTPUT ACCEPT [0:0]\n\
        :DOCKER-USER - [0:0]\n\
        -A FORWARD -j DOCKER-USER\n\
        -A DOCKER-USER -j RETURN\n\
        COMMIT\n\
        *nat\n\
        :PREROUTING ACCEPT [0:0]\n\
        :FORWARD DROP [0:0]\n\
        COMMIT\n";

    #[test]
    fn a_save_listing_shows_the_forward_drop_docker_user_and_its_weight() {
        let set = parse_save(DOCKER_LEGACY);
        assert!(set.forward_drops);
        assert!(set.docker_user);
        assert!(!set.kube_hint);
        // Two rules and two DROP policies.
        assert_eq!(set.weight, 4);
        assert_eq!(parse_save(""), Ruleset::default());
    }

    #[test]
    fn only_the_filter_tables_forward_policy_counts() {
        let set = parse_save("*nat\n:FORWARD DROP [0:0]\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n");
        assert!(!set.forward_drops);
    }

    #[test]
    fn the_backend_in_use_is_the_hinted_one_else_the_busier_else_nft() {
        let hinted = parse_save("*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n");
        let busy = parse_save(DOCKER_LEGACY);
        let empty = Ruleset::default();
        assert_eq!(in_use(Some(empty), Some(busy)), Backend::Legacy);
        assert_eq!(in_use(Some(hinted), Some(busy)), Backend::Nft);
        assert_eq!(in_use(Some(busy), Some(hinted)), Backend::Legacy);
        assert_eq!(in_use(Some(empty), Some(empty)), Backend::Nft);
        assert_eq!(in_use(None, Some(empty)), Backend::Legacy);
        assert_eq!(in_use(None, None), Backend::Unknown);
    }

    #[test]
    fn our_rules_are_found_by_their_comment_and_split_back_into_arguments() {
        let listing = "-P FORWARD DROP\n\
            -A FORWARD -s 10.32.0.0/12 -m comment --comment \"weft pod range\" -j ACCEPT\n\
            -A FORWARD -j DOCKER-USER\n";
        let found = ours(listing);
        assert_eq!(found.len(), 1);
        let args = split_rule(found[0].strip_prefix("-A ").unwrap_or_default());
        assert_eq!(
            args,
            [
                "FORWARD",
                "-s",
                "10.32.0.0/12",
                "-m",
                "comment",
                "--comment",
                "weft pod range",
                "-j",
                "ACCEPT"
            ]
        );
    }
}
