//! `/metrics` scraped during traffic parses as Prometheus text and its
//! counters move; a busy metrics port is one clear line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// Parses `name{labels} value` sample lines; comments must be # HELP, # TYPE,
/// # UNIT or # EOF, and the text must end with # EOF.
fn parse(response: &str) -> BTreeMap<String, f64> {
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    assert_eq!(body.lines().last(), Some("# EOF"));
    let mut samples = BTreeMap::new();
    for line in body.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                ["HELP ", "TYPE ", "UNIT ", "EOF"]
                    .iter()
                    .any(|p| comment.starts_with(p)),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        assert!(name.starts_with("weft_"), "unprefixed metric {name}");
        samples.insert(
            name.to_string(),
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        );
    }
    samples
}

#[test]
fn metrics_scraped_during_traffic_parse_and_their_counters_move() {
    if !require_root("metrics") {
        return;
    }
    let mut cluster = Cluster::new(2);
    let routers = start_routers(
        Path::new(BIN),
        &mut cluster,
        2,
        |i| vec![1 - i],
        |i, r| {
            if i == 0 {
                r.args
                    .extend(["--metrics-addr".to_string(), "192.0.2.10:6782".to_string()]);
            }
        },
    );
    assert!(wait_until(Duration::from_secs(10), || routers
        .iter()
        .all(|r| r.established_peers() == 1)));
    let ns = cluster.nodes[0].ns.name.clone();
    let before = parse(&scrape_metrics(&ns, Ipv4Addr::new(192, 0, 2, 10)));
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(a.wait_ping(b.addr, Duration::from_secs(5)));
    assert!(a.ping(b.addr, 5));
    let after = parse(&scrape_metrics(&ns, Ipv4Addr::new(192, 0, 2, 10)));
    let out = r#"weft_packets_total{direction="out"}"#;
    let inn = r#"weft_packets_total{direction="in"}"#;
    assert!(
        after[out] >= before[out] + 5.0,
        "out: {} → {}",
        before[out],
        after[out]
    );
    assert!(
        after[inn] >= before[inn] + 5.0,
        "in: {} → {}",
        before[inn],
        after[inn]
    );
    // IPv4 pods only: the IPv6 share stays 0 (and is exposed).
    for direction in ["in", "out"] {
        let key = format!(r#"weft_ipv6_packets_total{{direction="{direction}"}}"#);
        assert_eq!(after.get(&key), Some(&0.0), "{key}");
    }
    assert_eq!(after["weft_peers"], 1.0);
    assert_eq!(after[r#"weft_connections{state="established"}"#], 1.0);
    assert!(after[r#"weft_handshakes_total{result="ok"}"#] >= 1.0);
    assert!(after["weft_ipam_owned_addresses"] > 0.0);
    // A ring this build initialised requires titles from its birth.
    assert_eq!(after["weft_ipam_titles_required"], 1.0);
    // The router turned forwarding on (the node started with it off).
    assert_eq!(after["weft_ipv4_forwarding"], 1.0);
    // The active data path is exposed as an info metric whose `offload`
    // label is the status string's active part (the fast path here, as
    // tests/datapath.rs requires of this kernel).
    let path = routers[0].status().unwrap()["dataplane"]["offload"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(path, "tso+uso+gso+gro", "status offload");
    assert_eq!(
        after.get(&format!(r#"weft_datapath_info{{offload="{path}"}}"#)),
        Some(&1.0),
        "{:?}",
        after
            .keys()
            .filter(|k| k.contains("datapath"))
            .collect::<Vec<_>>()
    );
    // Ring gossip flows both ways; address requests are counted and timed.
    assert!(after[r#"weft_gossip_messages_total{channel="ring",direction="in"}"#] >= 1.0);
    assert!(after[r#"weft_gossip_bytes_total{channel="topology",direction="out"}"#] > 0.0);
    for i in 0..3 {
        let reply = weft::api::client::call(
            &routers[0].api(),
            &weft::api::proto::Request::Allocate {
                container_id: format!("metrics-{i}"),
                ifname: "eth0".into(),
                pod: None,
            },
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(reply.ok, "{:?}", reply.error);
    }
    let scraped = parse(&scrape_metrics(&ns, Ipv4Addr::new(192, 0, 2, 10)));
    assert_eq!(
        scraped[r#"weft_cni_requests_total{op="allocate",result="ok"}"#],
        3.0
    );
    assert_eq!(scraped["weft_cni_request_duration_seconds_count"], 3.0);
    assert_eq!(
        scraped[r#"weft_cni_request_duration_seconds_bucket{le="+Inf"}"#],
        3.0
    );
    assert!(scraped["weft_ipam_allocated_addresses"] >= 4.0);

    // A second router on the same metrics address: one clear line.
    let other = TempDir::new("metrics2");
    let secret = other.path.join("secret");
    write_secret(&secret);
    let out = run_timeout(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                BIN,
                "router",
                "--name",
                "n0",
                "--listen",
                "192.0.2.10:6790",
            ])
            .args([
                "--metrics-addr",
                "192.0.2.10:6782",
                "--iface",
                "weft1",
                "--ipalloc-init",
                "seed=n0",
                "--secret-file",
                secret.to_str().unwrap(),
                "--state-dir",
                other.path.join("state").to_str().unwrap(),
                "--api",
                other.path.join("api.sock").to_str().unwrap(),
            ]),
        20,
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot serve metrics on 192.0.2.10:6782"),
        "{stderr}"
    );
}
