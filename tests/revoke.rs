#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A router whose cluster secret is rotated out is cut off (DESIGN.md
//! "Security model": a refused rekey closes the connection and no keyset
//! outlives REJECT_AFTER): three real routers rekeying every few seconds go
//! through the README's rotation (add the new secret second, make it first,
//! remove the old) while one is left on the old secret. Within one rekey
//! interval plus grace it holds no connection, the others list it as
//! unreachable and its pod cannot be reached; the others never drop a ping.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::attack::BackgroundPing;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");
/// The rekey interval the routers run with.
const REKEY_SECS: u64 = 3;
/// What "plus grace" allows beyond one rekey interval: the secret file is
/// polled every second, a rekey handshake may take its 10 s limit, and the
/// status is polled every 100 ms.
const GRACE: Duration = Duration::from_secs(12);
const NEW_SECRET: &str = "the-rotated-in-cluster-secret-of-more-than-32-bytes";

fn write_secret_lines(router: &Router, lines: &[&str]) {
    std::fs::write(router.dir.join("secret"), lines.join("\n") + "\n").unwrap();
}

/// Whether `status` says `name` is connected or reachable from there.
fn sees(status: &serde_json::Value, name: &str) -> bool {
    let connected = status["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["peer"] == name && c["established"] == true);
    let reachable = status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["name"] == name && p["reachable"] == true);
    connected || reachable
}

#[test]
fn a_router_left_on_the_old_secret_is_cut_off_within_one_rekey_interval_and_the_rest_never_drop_a_ping()
 {
    if !require_root("revoked_router") {
        return;
    }
    let mut cluster = Cluster::new(3);
    let routers = start_routers(
        Path::new(BIN),
        &mut cluster,
        3,
        |i| (0..3).filter(|j| *j != i).collect(),
        |_, r| {
            r.env
                .push(("WEFT_REKEY_INTERVAL_SECS".into(), REKEY_SECS.to_string()));
        },
    );
    let [p0, p1, p2] = [0, 1, 2].map(|i| (cluster.pods[i].addr, i));
    let full_mesh = wait_until(Duration::from_secs(20), || {
        routers.iter().all(|r| r.established_peers() == 2)
    });
    assert!(full_mesh, "the three routers never formed a full mesh");
    for (from, to) in [(p0, p1), (p1, p2), (p2, p0)] {
        assert!(
            cluster.pods[from.1].wait_ping(to.0, Duration::from_secs(10)),
            "pod {} cannot reach pod {}",
            from.1,
            to.1
        );
    }
    let old = std::fs::read_to_string(routers[0].dir.join("secret")).unwrap();
    let old = old.trim();

    // 200 ms apart for the whole rotation and cut-off, both ways.
    let rotation_budget = Duration::from_secs(3 * 4) + Duration::from_secs(REKEY_SECS) + GRACE;
    let count = (rotation_budget.as_millis() / 200) as u32 + 25;
    let pings = [
        BackgroundPing::start(&cluster.pods[0].ns, p1.0, count, 200),
        BackgroundPing::start(&cluster.pods[1].ns, p0.0, count, 200),
    ];

    // Add the new secret second (n2 never gets it), make it first, remove
    // the old: each step outlasts a rekey and the file poll.
    let step = Duration::from_secs(REKEY_SECS + 1);
    for r in &routers[..2] {
        write_secret_lines(r, &[old, NEW_SECRET]);
    }
    std::thread::sleep(step);
    for r in &routers[..2] {
        write_secret_lines(r, &[NEW_SECRET, old]);
    }
    std::thread::sleep(step);
    for r in &routers[..2] {
        write_secret_lines(r, &[NEW_SECRET]);
    }
    let removed = Instant::now();

    // Cut off: n2 holds no established connection, n0 and n1 neither
    // connect to it nor list it reachable.
    let cut_off = wait_until(Duration::from_secs(REKEY_SECS) + GRACE, || {
        routers[2].established_peers() == 0
            && routers[..2]
                .iter()
                .all(|r| r.status().is_some_and(|s| !sees(&s, "n2")))
    });
    let took = removed.elapsed();
    eprintln!("revoked router cut off {took:?} after the old secret was removed");
    assert!(
        cut_off,
        "n2 still connected or reachable {took:?} after the old secret was removed: n0 sees {:?}",
        routers[0]
            .status()
            .map(|s| (s["connections"].clone(), s["peers"].clone()))
    );
    // It stays out: a few more rekey intervals, no way back in.
    std::thread::sleep(Duration::from_secs(2 * REKEY_SECS));
    assert_eq!(routers[2].established_peers(), 0, "n2 got back in");
    for r in &routers[..2] {
        let status = r.status().unwrap();
        assert!(!sees(&status, "n2"), "{} sees n2 again", r.name);
        assert_eq!(r.established_peers(), 1, "{} lost its other peer", r.name);
    }
    assert!(
        !cluster.pods[0].ping(p2.0, 2),
        "n2's pod is still reachable from n0's"
    );
    let refused = wait_until(Duration::from_secs(15), || {
        routers[..2].iter().any(|r| {
            r.status()
                .and_then(|s| s["handshakes"]["refused"].as_u64())
                .is_some_and(|n| n > 0)
        })
    });
    assert!(refused, "neither n0 nor n1 counted a refused handshake");

    // No secret or identity key in any status or log line, in any form the
    // files hold them (DESIGN.md "Security model").
    for r in &routers {
        let identity = std::fs::read_to_string(r.dir.join("state/identity.key")).unwrap();
        let private_hex = identity.lines().nth(1).unwrap().trim().to_string();
        let printed = format!(
            "{}\n{}",
            r.status().unwrap(),
            std::fs::read_to_string(r.log_path()).unwrap()
        );
        for needle in [old, NEW_SECRET, &private_hex, &private_hex[..16]] {
            assert!(
                !printed.contains(needle),
                "{}'s status or log shows a secret or key",
                r.name
            );
        }
    }

    for (i, ping) in pings.into_iter().enumerate() {
        let (sent, received) = ping.finish();
        assert!(sent >= count - 5, "ping {i} sent only {sent}");
        assert_eq!(
            received, sent,
            "ping {i} between the kept routers lost packets"
        );
    }
}
