//! Prometheus metrics on `--metrics-addr` (`GET /metrics`), built on each
//! scrape from the same status object `weft status --json` prints, so the two
//! never disagree. Encoded by `prometheus-client` (OpenMetrics text).
//! Names are documented in the README.

use crate::api::proto::{LatencyHistogram, Request, Status};
use crate::api::server::ApiCall;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

type Labels = Vec<(String, String)>;

/// Renders `status` (and the policy part, with `--network-policy`) as
/// OpenMetrics text.
pub fn render(status: &Status, policy: Option<&crate::policy::status::PolicyStatus>) -> String {
    let mut registry = Registry::with_prefix("weft");
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, g);
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let c: Counter = Counter::default();
        c.inc_by(value);
        registry.register(name, help, c);
    };
    let family = |registry: &mut Registry,
                  name: &str,
                  help: &str,
                  label: &str,
                  values: Vec<(String, u64)>| {
        let f = Family::<Labels, Counter>::default();
        for (key, value) in values {
            f.get_or_create(&vec![(label.to_string(), key)])
                .inc_by(value);
        }
        registry.register(name, help, f);
    };
    gauge(
        &mut registry,
        "peers",
        "Routers known from the topology",
        status.peers.len() as u64,
    );
    let states = ["connecting", "handshaking", "established", "failed"];
    let connections = Family::<Labels, Gauge>::default();
    for state in states {
        let n = status
            .connections
            .iter()
            .filter(|c| c.state == state)
            .count();
        connections
            .get_or_create(&vec![("state".into(), state.into())])
            .set(n as i64);
    }
    registry.register("connections", "Control connections by state", connections);
    family(
        &mut registry,
        "handshakes",
        "Handshakes and refused gossip by result",
        "result",
        status
            .handshakes
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    );
    counter(&mut registry, "rekeys", "Completed rekeys", status.rekeys);
    family(
        &mut registry,
        "paths",
        "Punch attempts, successes and failures, and control records relayed for others, by event",
        "event",
        status.paths.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    );
    let d = &status.dataplane.totals;
    family(
        &mut registry,
        "packets",
        "Data packets by direction",
        "direction",
        vec![("in".into(), d.packets_in), ("out".into(), d.packets_out)],
    );
    family(
        &mut registry,
        "bytes",
        "Inner bytes by direction",
        "direction",
        vec![("in".into(), d.bytes_in), ("out".into(), d.bytes_out)],
    );
    family(
        &mut registry,
        "ipv6_packets",
        "The IPv6 share of weft_packets, by direction (IPv4 is the rest)",
        "direction",
        vec![("in".into(), d.packets_in6), ("out".into(), d.packets_out6)],
    );
    family(
        &mut registry,
        "ipv6_bytes",
        "The IPv6 share of weft_bytes, by direction (IPv4 is the rest)",
        "direction",
        vec![("in".into(), d.bytes_in6), ("out".into(), d.bytes_out6)],
    );
    family(
        &mut registry,
        "coalesced_segments",
        "Inner TCP segments written to the TUN merged into super-packets, by family",
        "family",
        vec![
            ("ipv4".into(), d.coalesced_v4),
            ("ipv6".into(), d.coalesced_v6),
        ],
    );
    counter(
        &mut registry,
        "forwarded_packets",
        "Packets relayed for other routers",
        d.forwarded,
    );
    gauge(
        &mut registry,
        "realtime_workers",
        "Data-plane workers now in the real-time class (WEFT_WORKER_PRIORITY=rt)",
        d.realtime_workers,
    );
    counter(
        &mut registry,
        "worker_busy_step_downs",
        "Times a real-time worker stepped down to nice -10 after 2 ms of unbroken work (a saturated data plane)",
        d.busy_step_downs,
    );
    counter(
        &mut registry,
        "worker_events_dropped",
        "Endpoint and keyset reports from the data plane dropped because the control task's queue was full",
        d.events_dropped,
    );
    family(
        &mut registry,
        "dropped_packets",
        "Dropped packets by reason",
        "reason",
        d.dropped.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    );
    // A second family rather than a label on the first: its series stay as
    // they were, and drops of no known family (a bad tag) have no place here.
    let by_family = Family::<Labels, Counter>::default();
    for (family, drops) in [("ipv4", &d.dropped4), ("ipv6", &d.dropped6)] {
        for (reason, n) in drops {
            by_family
                .get_or_create(&vec![
                    ("family".to_string(), family.to_string()),
                    ("reason".to_string(), reason.clone()),
                ])
                .inc_by(*n);
        }
    }
    registry.register(
        "family_dropped_packets",
        "The share of weft_dropped_packets whose inner packet the router read, by family and reason (drops it could not read, such as bad_tag, are in no family)",
        by_family,
    );
    gauge(
        &mut registry,
        "ipam_owned_addresses",
        "Addresses in ranges this router owns",
        status.ipam.owned_addresses,
    );
    gauge(
        &mut registry,
        "ipam_allocated_addresses",
        "Addresses handed out",
        status.ipam.allocated,
    );
    gauge(
        &mut registry,
        "ipam_free_addresses",
        "Owned addresses not handed out",
        status.ipam.free,
    );
    gauge(
        &mut registry,
        "ipam_unreachable_share_ppm",
        "Share of the range owned by unreachable routers, in parts per million (weft rmpeer reclaims it)",
        (status.ipam.unreachable_share * 1e6) as u64,
    );
    gauge(
        &mut registry,
        "ipam_titles_required",
        "1 when every member's jumps over another router's range need a signed title (0 in a ring a build before titles initialised)",
        u64::from(status.ipam.titles_required),
    );
    let gossip_messages = Family::<Labels, Counter>::default();
    let gossip_bytes = Family::<Labels, Counter>::default();
    for (key, traffic) in &status.gossip {
        let (channel, direction) = key.split_once('/').unwrap_or((key.as_str(), ""));
        let labels = vec![
            ("channel".to_string(), channel.to_string()),
            ("direction".to_string(), direction.to_string()),
        ];
        gossip_messages
            .get_or_create(&labels)
            .inc_by(traffic.messages);
        gossip_bytes.get_or_create(&labels).inc_by(traffic.bytes);
    }
    registry.register(
        "gossip_messages",
        "Gossip messages by channel and direction",
        gossip_messages,
    );
    registry.register(
        "gossip_bytes",
        "Gossip payload bytes by channel and direction",
        gossip_bytes,
    );
    let requests = Family::<Labels, Counter>::default();
    for (key, count) in &status.api_requests {
        let (op, result) = key.split_once('/').unwrap_or((key.as_str(), ""));
        requests
            .get_or_create(&vec![
                ("op".to_string(), op.to_string()),
                ("result".to_string(), result.to_string()),
            ])
            .inc_by(*count);
    }
    registry.register(
        "cni_requests",
        "Address requests from the CNI plugin (local API) by operation and result",
        requests,
    );
    registry.register(
        "cni_request_duration_seconds",
        "Time the router took to answer an address request (fsync included)",
        HistogramSnapshot(status.api_latency.clone()),
    );
    gauge(
        &mut registry,
        "mtu",
        "Overlay MTU",
        u64::from(status.dataplane.mtu),
    );
    gauge(
        &mut registry,
        "ipv6_mtu_floor_peers",
        "Routers announcing an MTU under IPv6's minimum 1280 while this router keeps weft0 and its pods at 1280 (weft status names them); 0 otherwise",
        status
            .dataplane
            .ipv6_mtu_floor
            .as_ref()
            .map_or(0, |f| f.peers.len() as u64),
    );
    gauge(
        &mut registry,
        "ipv4_forwarding",
        "1 when IPv4 forwarding is on for every interface the data path needs (weft0, the underlay, pod veths); 0 when it is off or unknown somewhere (weft status says where and why)",
        u64::from(status.dataplane.forwarding.starts_with("on")),
    );
    registry.register(
        "datapath",
        "Which data path is active: the offloads in use (tso, uso, gso, gro, or none) and why the others are off",
        Info::new(datapath_labels(&status.dataplane.offload)),
    );
    counter(
        &mut registry,
        "firewall_reapplied",
        "Times the router's nftables table or iptables FORWARD rules were found removed and put back",
        status.firewall.reapplied,
    );
    registry.register(
        "firewall",
        "The iptables backend the host uses (nft, legacy, unknown) and the nftables table's state",
        Info::new(vec![
            ("iptables".to_string(), status.firewall.iptables.clone()),
            (
                "nftables".to_string(),
                if status.firewall.nftables == "applied" {
                    "applied"
                } else {
                    "not_applied"
                }
                .to_string(),
            ),
        ]),
    );
    if let Some(policy) = policy {
        crate::policy::status::register_metrics(&mut registry, policy);
    }
    let mut out = String::new();
    let _ = encode(&mut out, &registry);
    out
}

/// Splits the status string `tso+uso+gro (gso off: EIO ...)` into the
/// `offload` label (the active parts) and, when some part is off, a
/// `reason` label, so dashboards can match on the first exactly.
fn datapath_labels(offload: &str) -> Labels {
    let (active, reason) = match offload.split_once(" (") {
        Some((active, rest)) => (active, rest.strip_suffix(')').unwrap_or(rest)),
        None => (offload, ""),
    };
    let mut labels = vec![("offload".to_string(), active.trim().to_string())];
    if !reason.is_empty() {
        labels.push(("reason".to_string(), reason.to_string()));
    }
    labels
}

/// A histogram built elsewhere (the status object), encoded as is.
#[derive(Debug)]
struct HistogramSnapshot(LatencyHistogram);

impl EncodeMetric for HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let mut buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .zip(h.counts.iter())
            .map(|(b, c)| (*b, *c))
            .collect();
        buckets.push((f64::INFINITY, h.counts.last().copied().unwrap_or(0)));
        encoder.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Binds the metrics listener (so a busy port is one clear error at start).
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot serve metrics on {addr}: {e} (pick another --metrics-addr)")
    })
}

/// Serves `GET /metrics` until the control task goes away.
pub async fn serve(listener: TcpListener, calls: mpsc::Sender<ApiCall>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await
            else {
                return;
            };
            let head = String::from_utf8_lossy(&request[..n]);
            let response = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?")
            {
                let (tx, rx) = oneshot::channel();
                let body = match calls.send((Request::Status, tx)).await {
                    Ok(()) => rx
                        .await
                        .ok()
                        .and_then(|reply| reply.result)
                        .and_then(|value| {
                            let policy = value
                                .get("policy")
                                .and_then(|p| serde_json::from_value(p.clone()).ok());
                            let status = serde_json::from_value::<Status>(value).ok()?;
                            Some(render(&status, policy.as_ref()))
                        }),
                    Err(_) => None,
                };
                match body {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                }
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_datapath_label_is_the_active_offloads_and_the_reason_stands_apart() {
        assert_eq!(
            datapath_labels("tso+uso+gso+gro"),
            vec![("offload".to_string(), "tso+uso+gso+gro".to_string())]
        );
        assert_eq!(
            datapath_labels("tso+uso+gro (gso off: EIO on a UDP_SEGMENT send)"),
            vec![
                ("offload".to_string(), "tso+uso+gro".to_string()),
                (
                    "reason".to_string(),
                    "gso off: EIO on a UDP_SEGMENT send".to_string()
                ),
            ]
        );
        assert_eq!(
            datapath_labels("none (disabled by WEFT_DISABLE_OFFLOAD)")[0].1,
            "none"
        );
    }
}
