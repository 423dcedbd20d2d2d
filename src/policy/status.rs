//! `weft status policy [POD]` and the `weft_policy_*` metrics: what the
//! driver publishes, with the table's named counters read back from the
//! kernel when asked (`nft -j list counters`), spliced into the status
//! object under `policy` the way `crate::host_firewall` adds `firewall`.

use super::driver::{Published, Shared};
use super::nft::{Counted, TABLE};
use crate::api::proto::Reply;
use crate::api::server::ApiCall;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use tokio::sync::mpsc;

/// The policy part of the status object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// All three resources listed at least once (nothing is applied before).
    pub synced: bool,
    /// Since when (Unix seconds) the view may be out of date: the API
    /// server is unreachable or refuses. The rules in force stay.
    pub stale_since: Option<u64>,
    /// Successful applies of the table.
    pub applies: u64,
    /// Applies `nft` refused (retried, replacing the table whole).
    pub apply_failures: u64,
    /// Times the table was found deleted or its base chain emptied by
    /// someone else (`nft flush ruleset`, a firewall reload) and put back.
    #[serde(default)]
    pub repaired: u64,
    /// How long the last apply took (`nft -f`), milliseconds.
    pub last_apply_ms: f64,
    /// Why the last apply failed, if it did.
    pub error: Option<String>,
    /// The API errors in effect, per resource.
    pub api_errors: Vec<String>,
    /// Objects not taken: `Kind namespace/name` → why.
    pub skipped: BTreeMap<String, String>,
    /// Policies in force in the cluster.
    pub policies: usize,
    /// This node's pods.
    pub pods: Vec<PodPolicies>,
    /// Packets allowed, per `namespace/name` of policy: (to its pods, from
    /// its pods), summed over this node's pods.
    pub allowed: BTreeMap<String, (u64, u64)>,
    /// The drop log (absent from routers before it).
    #[serde(default)]
    pub drop_log: DropLogStatus,
}

/// Where the drop log comes from and what it wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropLogStatus {
    /// `NFLOG group 6783`, or why it fell back to the counters (lines
    /// without the other end and the port).
    pub source: String,
    /// Lines written.
    pub lines: u64,
    /// Lines left out by the rate limit.
    pub left_out: u64,
    /// NFLOG messages that did not parse.
    pub malformed: u64,
    /// Logged packets lost before they were read (socket buffer or queue
    /// full).
    pub lost: u64,
}

/// One local pod and the policies that select it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPolicies {
    /// `namespace/name`.
    pub pod: String,
    /// Its addresses.
    pub ips: Vec<String>,
    /// Policies isolating its ingress (none: open).
    pub ingress: Vec<String>,
    /// Policies isolating its egress.
    pub egress: Vec<String>,
    /// Packets to it dropped by its namespace's default deny.
    pub denied_in: u64,
    /// Packets from it dropped.
    pub denied_out: u64,
}

/// The status with counters read now (blocking: runs `nft`).
pub fn snapshot(published: &Published) -> PolicyStatus {
    let mut status = published.status.clone();
    let Some(applied) = &published.applied else {
        return status;
    };
    let counters = read_counters();
    for (name, packets) in counters {
        match applied.counters.get(&name) {
            Some(Counted::Allowed(id, dir)) => {
                let entry = status.allowed.entry(id.to_string()).or_default();
                if *dir == "in" {
                    entry.0 += packets;
                } else {
                    entry.1 += packets;
                }
            }
            Some(Counted::Denied(pod, dir)) => {
                if let Some(p) = status.pods.iter_mut().find(|p| &p.pod == pod) {
                    if *dir == "in" {
                        p.denied_in += packets;
                    } else {
                        p.denied_out += packets;
                    }
                }
            }
            None => {}
        }
    }
    status
}

/// The table's named counters: name → packets (empty if `nft` fails).
pub(crate) fn read_counters() -> Vec<(String, u64)> {
    let (family, table) = TABLE.split_once(' ').unwrap_or(("ip", TABLE));
    let Ok(out) = std::process::Command::new("nft")
        .args(["-j", "list", "counters", "table", family, table])
        .stdin(std::process::Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    parse_counters(&out.stdout)
}

fn parse_counters(json: &[u8]) -> Vec<(String, u64)> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
        return Vec::new();
    };
    value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let counter = item.get("counter")?;
            Some((
                counter["name"].as_str()?.to_string(),
                counter["packets"].as_u64()?,
            ))
        })
        .collect()
}

/// Passes API calls on to `next`, adding `policy` to status replies (the
/// counters are read with `nft`, off the runtime's threads).
pub async fn splice_status(
    calls: mpsc::Receiver<ApiCall>,
    next: mpsc::Sender<ApiCall>,
    shared: Shared,
) {
    crate::api::server::splice_status(calls, next, move |mut answer| {
        let published = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        async move {
            let policy = tokio::task::spawn_blocking(move || snapshot(&published))
                .await
                .unwrap_or_default();
            add(&mut answer, &policy);
            answer
        }
    })
    .await;
}

fn add(answer: &mut Reply, policy: &PolicyStatus) {
    if let Some(serde_json::Value::Object(status)) = answer.result.as_mut()
        && let Ok(value) = serde_json::to_value(policy)
    {
        status.insert("policy".into(), value);
    }
}

/// The `weft_policy_*` metrics. Labels are bounded: a direction, never a
/// pod or policy name (those are in `weft status policy`).
pub fn register_metrics(registry: &mut prometheus_client::registry::Registry, p: &PolicyStatus) {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    let gauge = |registry: &mut prometheus_client::registry::Registry,
                 name: &str,
                 help: &str,
                 value: u64| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, g);
    };
    gauge(
        registry,
        "policy_stale",
        "1 while the NetworkPolicy view may be out of date (API server unreachable or refusing; the rules in force stay)",
        u64::from(p.stale_since.is_some() || !p.synced),
    );
    gauge(
        registry,
        "policy_policies",
        "NetworkPolicies in force in the cluster",
        p.policies as u64,
    );
    gauge(
        registry,
        "policy_local_pods",
        "This node's pods under NetworkPolicy enforcement",
        p.pods.len() as u64,
    );
    gauge(
        registry,
        "policy_skipped",
        "API objects that could not be used (named in weft status policy)",
        p.skipped.len() as u64,
    );
    let applies: Counter = Counter::default();
    applies.inc_by(p.applies);
    registry.register(
        "policy_applies",
        "Updates of the policy table applied",
        applies,
    );
    let failures: Counter = Counter::default();
    failures.inc_by(p.apply_failures);
    registry.register(
        "policy_apply_failures",
        "Updates of the policy table nft refused",
        failures,
    );
    let repaired: Counter = Counter::default();
    repaired.inc_by(p.repaired);
    registry.register(
        "policy_table_repaired",
        "Times the policy table was found deleted or emptied by someone else and put back",
        repaired,
    );
    type Labels = Vec<(String, String)>;
    let packets = Family::<Labels, Counter>::default();
    let (allowed_in, allowed_out) = p
        .allowed
        .values()
        .fold((0, 0), |(a, b), (i, o)| (a + i, b + o));
    let denied_in: u64 = p.pods.iter().map(|pod| pod.denied_in).sum();
    let denied_out: u64 = p.pods.iter().map(|pod| pod.denied_out).sum();
    for (verdict, direction, value) in [
        ("allowed", "ingress", allowed_in),
        ("allowed", "egress", allowed_out),
        ("denied", "ingress", denied_in),
        ("denied", "egress", denied_out),
    ] {
        packets
            .get_or_create(&vec![
                ("verdict".to_string(), verdict.to_string()),
                ("direction".to_string(), direction.to_string()),
            ])
            .inc_by(value);
    }
    registry.register(
        "policy_packets",
        "New connections' packets decided by NetworkPolicy on this node, by verdict and direction",
        packets,
    );
}

/// `2026-12-02 13:40:01 UTC` from Unix seconds.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The human form: the sync state, then each local pod (or only `pod`).
pub fn render_text(status: &PolicyStatus, pod: Option<&str>) -> String {
    let mut out = String::new();
    let state = match (status.synced, status.stale_since) {
        (_, Some(since)) => format!("stale since {} (the rules in force stay)", utc(since)),
        (true, None) => "in sync".into(),
        (false, None) => "not listed yet".into(),
    };
    let _ = writeln!(
        out,
        "network policy: {state}; {} policies; table applied {} times ({} failed, last {:.1} ms)",
        status.policies, status.applies, status.apply_failures, status.last_apply_ms
    );
    if status.repaired > 0 {
        let _ = writeln!(
            out,
            "  table put back {} times after someone else deleted it",
            status.repaired
        );
    }
    let log = &status.drop_log;
    if !log.source.is_empty() {
        let _ = writeln!(
            out,
            "  drop log: {}; {} lines, {} left out by the rate limit",
            log.source, log.lines, log.left_out
        );
    }
    for line in status.api_errors.iter().chain(&status.error) {
        let _ = writeln!(out, "  error: {line}");
    }
    for (name, why) in &status.skipped {
        let _ = writeln!(out, "  skipped {name}: {why}");
    }
    for p in status
        .pods
        .iter()
        .filter(|p| pod.is_none_or(|x| x == p.pod))
    {
        let _ = writeln!(out, "pod {} {}", p.pod, p.ips.join(","));
        for (dir, policies, denied, pick) in [
            ("ingress", &p.ingress, p.denied_in, 0),
            ("egress", &p.egress, p.denied_out, 1),
        ] {
            if policies.is_empty() {
                let _ = writeln!(out, "  {dir}: open (no policy selects it)");
                continue;
            }
            let named: Vec<String> = policies
                .iter()
                .map(|name| {
                    let counts = status.allowed.get(name).copied().unwrap_or_default();
                    let n = if pick == 0 { counts.0 } else { counts.1 };
                    format!("{name} (allowed {n})")
                })
                .collect();
            let namespace = p.pod.split('/').next().unwrap_or("");
            let _ = writeln!(
                out,
                "  {dir}: {}; default deny of {namespace} dropped {denied}",
                named.join(", ")
            );
        }
    }
    if let Some(pod) = pod
        && !status.pods.iter().any(|p| p.pod == pod)
    {
        let _ = writeln!(out, "no local pod {pod}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_218_801), "2026-12-02 13:40:01 UTC");
    }

    #[test]
    fn counters_come_from_nft_json() {
        let json = br#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
            {"counter":{"family":"ip","name":"pabc_in","table":"weft_policy","handle":3,"packets":7,"bytes":420}}]}"#;
        assert_eq!(parse_counters(json), vec![("pabc_in".to_string(), 7)]);
        assert!(parse_counters(b"garbage").is_empty());
    }

    #[test]
    fn the_text_names_policies_counters_and_the_default_deny() {
        let mut status = PolicyStatus {
            synced: true,
            stale_since: Some(1_796_218_801),
            policies: 1,
            ..PolicyStatus::default()
        };
        status.pods.push(PodPolicies {
            pod: "x/a".into(),
            ips: vec!["10.32.1.1".into()],
            ingress: vec!["x/allow-y".into()],
            denied_in: 4,
            ..PodPolicies::default()
        });
        status.allowed.insert("x/allow-y".into(), (12, 0));
        let text = render_text(&status, Some("x/a"));
        assert!(
            text.contains("stale since 2026-12-02 13:40:01 UTC"),
            "{text}"
        );
        assert!(
            text.contains("ingress: x/allow-y (allowed 12); default deny of x dropped 4"),
            "{text}"
        );
        assert!(text.contains("egress: open"), "{text}");
        assert!(render_text(&status, Some("y/b")).contains("no local pod y/b"));
    }
}
