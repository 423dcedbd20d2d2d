//! Mixed versions (issue 20): a router built from the last release (the
//! last CI-green main, built by the test once and cached; see
//! support/old_release.rs) meshes with two routers of this build, pods on
//! all three reach each other, and upgrading it in place (SIGTERM, start
//! this build's binary on the same state dir) loses no ping beyond the
//! restart gap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::old_release::{LAST_RELEASE, last_release_weft};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// Seconds between pings while upgrading.
const PING_EVERY: f64 = 0.1;
const PINGS: u32 = 300;

#[test]
fn a_router_of_the_last_release_meshes_with_this_build_and_upgrades_losing_no_ping_beyond_the_restart()
 {
    if !require_root("a_router_of_the_last_release_meshes_with_this_build_and_upgrades") {
        return;
    }
    let old = last_release_weft();
    let mut cluster = Cluster::new(3);
    let mut rs = start_routers(
        Path::new(BIN),
        &mut cluster,
        3,
        |i| (0..3).filter(|j| *j != i).collect(),
        |i, r| {
            if i == 2 {
                r.bin = old.clone();
            }
        },
    );
    let meshed = wait_until(Duration::from_secs(30), || {
        rs.iter().all(|r| r.established_peers() == 2)
    });
    assert!(meshed, "{}\n{}", rs[0].log_tail(), rs[2].log_tail());
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                let (from, to) = (&cluster.pods[a], cluster.pods[b].addr);
                assert!(
                    from.wait_ping(to, Duration::from_secs(30)),
                    "pod on n{a} cannot reach the pod on n{b} ({LAST_RELEASE} on n2)\n{}\n{}",
                    rs[a].log_tail(),
                    rs[2].log_tail()
                );
            }
        }
    }
    eprintln!("weft {LAST_RELEASE} on n2 meshes with this build: pods reach each other");

    // Upgrade n2 while n0's pod pings n2's.
    let ping = Command::new("ip")
        .args(["netns", "exec", &cluster.pods[0].ns.name])
        .args(["timeout", "90", "ping", "-n", "-W", "1"])
        .args(["-i", &PING_EVERY.to_string(), "-c", &PINGS.to_string()])
        .arg(cluster.pods[2].addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pinging = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let stopped = pinging.elapsed();
    let status = rs[2].terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}");
    rs[2].bin = BIN.into();
    rs[2].start();
    let up = wait_until(Duration::from_secs(30), || rs[2].established_peers() == 2);
    let upgraded = pinging.elapsed();
    assert!(up, "the upgraded n2 did not rejoin:\n{}", rs[2].log_tail());
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let replied: std::collections::BTreeSet<u32> = text
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    let lost: Vec<u32> = (1..=PINGS).filter(|s| !replied.contains(s)).collect();
    let at = |seq: u32| Duration::from_secs_f64(f64::from(seq - 1) * PING_EVERY);
    let restart_gap = upgraded - stopped;
    let lost_span = match (lost.first(), lost.last()) {
        (Some(a), Some(b)) => at(*b) - at(*a) + Duration::from_secs_f64(PING_EVERY),
        _ => Duration::ZERO,
    };
    eprintln!(
        "upgrade {LAST_RELEASE} -> this build on n2: restart gap {restart_gap:?} (SIGTERM to both links up), {} of {PINGS} pings lost over {lost_span:?}",
        lost.len()
    );
    // Every lost ping was sent while n2 was away (a second of slack each
    // side for ping's own timing under load).
    let slack = Duration::from_secs(1);
    for seq in &lost {
        assert!(
            at(*seq) + slack >= stopped && at(*seq) <= upgraded + slack,
            "ping {seq} (at {:?}) lost outside the restart ({stopped:?}..{upgraded:?}): lost {lost:?}",
            at(*seq)
        );
    }
    // And the upgraded mesh carries every pair again.
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                assert!(
                    cluster.pods[a].wait_ping(cluster.pods[b].addr, Duration::from_secs(30)),
                    "after the upgrade: pod on n{a} cannot reach the pod on n{b}"
                );
            }
        }
    }
}
