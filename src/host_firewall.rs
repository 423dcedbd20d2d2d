//! The router's rules in the host's firewall, kept in place (DESIGN.md
//! "Egress and forwarding"; issue 17, "Someone else's firewall"): the
//! nftables table ([`crate::nftables`]) and, where FORWARD drops by policy,
//! the accept rules in each iptables backend ([`crate::forward_policy`]).
//!
//! Both are applied at start. Then a host agent may flush them (firewalld
//! reload, `nft flush ruleset`, another CNI's cleanup) and forwarding,
//! anti-spoofing and masquerade would be gone until a restart. So the driver
//! subscribes to the kernel's nftables change notifications (netlink
//! `NFNLGRP_NFTABLES`, [`crate::nft_changes`]): on a change, after a short
//! settle, it checks that the table and rules are whole and re-applies them
//! if not: one warning and one count each time. No busy tick: with no
//! changes it sleeps. Changes by `iptables-legacy` send no nftables
//! notification, so on a host using that backend the FORWARD rules are also
//! checked every [`LEGACY_CHECK`] (every [`SAFETY_NET`] elsewhere); if the
//! subscription is refused, all is checked every [`POLL_FALLBACK`].
//!
//! This driver is daemon-side (tokio, blocking `nft`/`iptables` runs on the
//! blocking pool); it owns [`FirewallStatus`], which the daemon splices into
//! the status object (and so into metrics) on its way out of the control
//! task. It does not own the rules' text: that is the two modules above.

use crate::api::proto::{FirewallStatus, Reply};
use crate::api::server::ApiCall;
use crate::cidr::Ipv4Cidr;
use crate::forward_policy::{self, Backend, ForwardPolicyError};
use crate::ipam::AddrRange;
use crate::nft_changes::{settle, subscribe};
use crate::nftables;
use rtnetlink::sys::AsyncSocketExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The least time between two checks, however busy the ruleset (kube-proxy
/// rewrites its chains often).
const MIN_GAP: Duration = Duration::from_secs(1);

/// How often the FORWARD rules are checked on an `iptables-legacy` host.
pub const LEGACY_CHECK: Duration = Duration::from_secs(5);

/// How often the FORWARD rules are checked anyway on other hosts (an
/// `iptables-legacy` DROP policy set after the router started sends no
/// notification).
pub const SAFETY_NET: Duration = Duration::from_secs(30);

/// How often everything is checked when the notifications are refused.
pub const POLL_FALLBACK: Duration = Duration::from_secs(2);

/// Status shared between the driver and the status splice.
pub type Shared = Arc<Mutex<FirewallStatus>>;

/// What the rules are made from.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The cluster range.
    pub range: Ipv4Cidr,
    /// The IPv6 pod range, if any (its anti-spoofing twin table).
    pub range6: Option<AddrRange>,
    /// The TUN device.
    pub iface: String,
    /// Masquerade pod traffic leaving the range.
    pub masquerade: bool,
    /// Masquerade IPv6 pod traffic leaving the IPv6 range (`--masquerade6`
    /// resolved against it).
    pub masquerade6: bool,
}

/// Applies the rules once (logging what happened) and starts the task that
/// keeps them in place. Call from inside the router's runtime.
pub fn start(rules: Rules) -> Shared {
    let shared: Shared = Arc::new(Mutex::new(FirewallStatus::default()));
    apply_table(&rules, &shared, false);
    if rules.range6.is_none() {
        remove_stale_twin();
    }
    let backend = open_forward(&rules, &shared, false);
    tokio::spawn(keep(rules, shared.clone(), backend));
    shared
}

/// Forwards API calls to the control task, adding the firewall status to
/// each `Status` reply on its way back (so `weft status` and metrics show
/// it without the control task knowing about the host's firewall).
pub async fn splice_status(
    calls: mpsc::Receiver<ApiCall>,
    control: mpsc::Sender<ApiCall>,
    shared: Shared,
) {
    crate::api::server::splice_status(calls, control, move |mut answer| {
        add_firewall(&mut answer, &shared);
        std::future::ready(answer)
    })
    .await;
}

fn add_firewall(answer: &mut Reply, shared: &Shared) {
    let Some(serde_json::Value::Object(status)) = answer.result.as_mut() else {
        return;
    };
    let firewall = snapshot(shared);
    if let Ok(value) = serde_json::to_value(firewall) {
        status.insert("firewall".into(), value);
    }
}

fn snapshot(shared: &Shared) -> FirewallStatus {
    shared.lock().map(|s| s.clone()).unwrap_or_default()
}

/// Waits for ruleset changes (or the fallback period) and repairs.
async fn keep(rules: Rules, shared: Shared, mut backend: Option<Backend>) {
    let socket = match subscribe() {
        Ok(socket) => Some(socket),
        Err(e) => {
            tracing::warn!(
                error = %e,
                every = ?POLL_FALLBACK,
                "cannot subscribe to nftables changes; checking the router's firewall rules periodically instead"
            );
            None
        }
    };
    loop {
        let legacy = backend == Some(Backend::Legacy);
        let changed = match &socket {
            Some(socket) => {
                let period = if legacy { LEGACY_CHECK } else { SAFETY_NET };
                match tokio::time::timeout(period, socket.recv_from_full()).await {
                    // A message, or an error (ENOBUFS: changes were lost).
                    Ok(_) => {
                        settle(socket).await;
                        true
                    }
                    Err(_) => false,
                }
            }
            None => {
                tokio::time::sleep(POLL_FALLBACK).await;
                true
            }
        };
        let (r, s) = (rules.clone(), shared.clone());
        let check_table = changed;
        backend = tokio::task::spawn_blocking(move || {
            if check_table {
                repair_table(&r, &s);
            }
            open_forward(&r, &s, true)
        })
        .await
        .unwrap_or(backend);
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// Removes `table ip6 weft` left by an earlier run with an IPv6 pod range:
/// nothing would keep or report it now, and its forward accepts would
/// still let a range through that this router no longer routes.
fn remove_stale_twin() {
    match nftables::remove_twin() {
        Ok(true) => tracing::info!(
            table = nftables::TABLE6,
            "removed the IPv6 table an earlier run left (no IPv6 pod range now)"
        ),
        Ok(false) => {}
        Err(e) => tracing::debug!(error = %e, "cannot remove {}", nftables::TABLE6),
    }
}

/// Re-applies the table if it is gone or incomplete.
fn repair_table(rules: &Rules, shared: &Shared) {
    match nftables::present(
        rules.range,
        rules.range6,
        rules.masquerade,
        rules.masquerade6,
    ) {
        Ok(true) => {}
        Ok(false) => apply_table(rules, shared, true),
        Err(e) => tracing::debug!(error = %e, "cannot list the nftables table"),
    }
}

/// Applies the table; `repair` counts and logs it as a re-apply.
fn apply_table(rules: &Rules, shared: &Shared, repair: bool) {
    let result = nftables::apply(
        rules.range,
        rules.range6,
        &rules.iface,
        rules.masquerade,
        rules.masquerade6,
    );
    let mut status = shared.lock().unwrap_or_else(|e| e.into_inner());
    match result {
        Ok(()) => {
            status.nftables = "applied".into();
            if repair {
                status.reapplied += 1;
                tracing::warn!(
                    table = nftables::TABLE,
                    reapplied = status.reapplied,
                    "the router's nftables table was removed or changed by someone else (a firewall reload? nft flush ruleset?): re-applied"
                );
            } else {
                tracing::info!(
                    table = nftables::TABLE,
                    masquerade = rules.masquerade,
                    masquerade6 = rules.range6.is_some().then_some(rules.masquerade6),
                    "nftables table applied"
                );
            }
        }
        Err(e) => {
            status.nftables = format!("not applied: {e}");
            let masq = if rules.masquerade {
                format!(
                    "no masquerade, so pods cannot reach addresses outside {}, and ",
                    rules.range
                )
            } else {
                String::new()
            };
            tracing::warn!(
                "nftables table {} not applied ({e}): {masq}no anti-spoofing check on pod sources; install nftables (the nft command) and restart the router",
                nftables::TABLE
            )
        }
    }
}

/// Accepts the range in every iptables backend whose FORWARD drops by
/// policy (Docker's), which the router's own table cannot overrule;
/// `repair` counts rules put back as a re-apply. Returns the host's backend.
fn open_forward(rules: &Rules, shared: &Shared, repair: bool) -> Option<Backend> {
    let result = forward_policy::open(rules.range);
    let mut status = shared.lock().unwrap_or_else(|e| e.into_inner());
    match result {
        Ok(opened) => {
            let accepted: Vec<String> = opened
                .accepted_in
                .iter()
                .map(|(b, chain)| format!("{}/{chain}", b.as_str()))
                .collect();
            let changed =
                status.iptables != opened.backend.as_str() || status.forward_accept != accepted;
            status.iptables = opened.backend.as_str().into();
            status.forward_accept = accepted;
            if repair && opened.added > 0 {
                status.reapplied += 1;
                tracing::warn!(
                    accepted_in = ?status.forward_accept,
                    reapplied = status.reapplied,
                    "the router's iptables FORWARD accept rules were removed by someone else: re-applied"
                );
            } else if changed && !status.forward_accept.is_empty() {
                tracing::info!(
                    iptables = %status.iptables,
                    accepted_in = ?status.forward_accept,
                    "the iptables FORWARD policy is DROP (Docker?): accepting the pod range there"
                );
            } else if changed {
                tracing::info!(iptables = %status.iptables, "iptables backend of this host");
            }
            Some(opened.backend)
        }
        Err(ForwardPolicyError::Spawn(_)) => None,
        Err(e) => {
            if !repair {
                tracing::warn!(
                    "cannot check the iptables FORWARD policy ({e}): if it is DROP (Docker sets it), pod traffic through this node is dropped; accept {} in FORWARD",
                    rules.range
                );
            }
            None
        }
    }
}
