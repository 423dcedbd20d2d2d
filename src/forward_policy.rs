//! Docker sets the iptables FORWARD policy to DROP, and an accept in the
//! router's own nftables table cannot overrule that: every base chain on a
//! hook must accept (DESIGN.md "Egress and forwarding"). So where FORWARD
//! drops by policy, the router also accepts its range there, through the
//! `iptables` command so that whichever backend the host uses (nft or
//! legacy) gets the rules: in `DOCKER-USER` when Docker made it (Docker
//! keeps that chain for its users and jumps to it first), else at the top
//! of FORWARD. Rules carry a comment, so `weft reset` finds them without
//! knowing the range. Where FORWARD accepts by policy nothing is added.

use crate::cidr::Ipv4Cidr;
use std::process::{Command, Output};

/// The comment on every rule this module adds.
pub const COMMENT: &str = "weft pod range";

/// Why the rules could not be checked, added or removed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardPolicyError {
    /// `iptables` could not be started (not installed).
    #[error("cannot run iptables: {0}")]
    Spawn(std::io::Error),
    /// `iptables` ran and refused.
    #[error("iptables {args} refused: {stderr}")]
    Refused {
        /// The arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
}

/// What [`open`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// FORWARD accepts by policy: nothing to do.
    NotNeeded,
    /// The range is accepted in this chain (added now or already there).
    In(&'static str),
}

/// Accepts forwarding from and to `range` where the FORWARD policy drops.
pub fn open(range: Ipv4Cidr) -> Result<Opened, ForwardPolicyError> {
    let forward = iptables(&["-S", "FORWARD"])?;
    if !drops_by_policy(&forward) {
        return Ok(Opened::NotNeeded);
    }
    let chain = if iptables(&["-S", "DOCKER-USER"]).is_ok() {
        "DOCKER-USER"
    } else {
        "FORWARD"
    };
    let range = range.to_string();
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
        if iptables(&check).is_err() {
            let insert: Vec<&str> = ["-I", chain, "1"].iter().chain(&rule).copied().collect();
            iptables(&insert)?;
        }
    }
    Ok(Opened::In(chain))
}

/// Removes every rule [`open`] added, in either chain; returns how many.
pub fn close() -> Result<usize, ForwardPolicyError> {
    let mut removed = 0;
    for chain in ["DOCKER-USER", "FORWARD"] {
        let Ok(listing) = iptables(&["-S", chain]) else {
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
            iptables(&args)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether an `iptables -S FORWARD` listing sets the policy to DROP.
fn drops_by_policy(listing: &str) -> bool {
    listing.lines().any(|l| l.trim() == "-P FORWARD DROP")
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

/// Runs `iptables -w 5 ARGS` (waiting up to 5 s for the xtables lock).
fn iptables(args: &[&str]) -> Result<String, ForwardPolicyError> {
    let output: Output = Command::new("iptables")
        .arg("-w")
        .arg("5")
        .args(args)
        .output()
        .map_err(ForwardPolicyError::Spawn)?;
    if !output.status.success() {
        return Err(ForwardPolicyError::Refused {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_drop_policy_needs_rules() {
        assert!(drops_by_policy("-P FORWARD DROP\n-N DOCKER-USER\n"));
        assert!(!drops_by_policy("-P FORWARD ACCEPT\n-A FORWARD -j DROP\n"));
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
