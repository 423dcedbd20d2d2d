//! Mixed versions (issue 20): three routers built from the last release
//! (the last CI-green main, built by the test once and cached; see
//! support/old_release.rs) mesh and their pods reach each other; then
//! they are upgraded in place one by one (SIGTERM, start this build's
//! binary on the same state dir), so the mesh passes through one new and
//! two old routers, then two new and one old, while the pods of all three
//! ping each other throughout: no ping is lost outside a restart gap, and
//! every gap is printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::old_release::{LAST_RELEASE, last_release_weft};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// Seconds between pings while upgrading.
const PING_EVERY: f64 = 0.1;
/// Pings of one pair at most (ended by SIGINT after the last upgrade).
const PINGS: u32 = 900;

/// Pings from pod `a` to pod `b` until SIGINT or [`PINGS`].
fn ping(cluster: &Cluster, a: usize, b: usize) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &cluster.pods[a].ns.name])
        .args(["timeout", "120", "ping", "-n", "-W", "1"])
        .args(["-i", &PING_EVERY.to_string(), "-c", &PINGS.to_string()])
        .arg(cluster.pods[b].addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Ends a ping with SIGINT (`timeout` passes it on; ping prints what it
/// has and its summary) and returns the sequence numbers lost among those
/// sent. The last one sent may still be on its way when SIGINT comes (ping
/// counts it as transmitted and exits at once), so it is judged only if its
/// reply came: CI lost exactly that ping once, 0.1 s before the SIGINT.
fn lost_pings(child: Child) -> Vec<u32> {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let replied: std::collections::BTreeSet<u32> = text
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    let sent: u32 = text
        .lines()
        .find_map(|l| l.split(" packets transmitted").next()?.trim().parse().ok())
        .expect("ping's summary");
    (1..sent).filter(|s| !replied.contains(s)).collect()
}

fn all_pairs() -> impl Iterator<Item = (usize, usize)> {
    (0..3).flat_map(|a| (0..3).filter(move |b| *b != a).map(move |b| (a, b)))
}

#[test]
fn routers_of_the_last_release_upgrade_one_by_one_losing_no_ping_beyond_each_restart() {
    if !require_root("routers_of_the_last_release_upgrade_one_by_one") {
        return;
    }
    let old = last_release_weft();
    let mut cluster = Cluster::new(3);
    let mut rs = start_routers(
        Path::new(BIN),
        &mut cluster,
        3,
        |i| (0..3).filter(|j| *j != i).collect(),
        |_, r| r.bin = old.clone(),
    );
    let meshed = wait_until(Duration::from_secs(30), || {
        rs.iter().all(|r| r.established_peers() == 2)
    });
    assert!(meshed, "{}\n{}", rs[0].log_tail(), rs[2].log_tail());
    for (a, b) in all_pairs() {
        assert!(
            cluster.pods[a].wait_ping(cluster.pods[b].addr, Duration::from_secs(30)),
            "{LAST_RELEASE}: pod on n{a} cannot reach the pod on n{b}\n{}",
            rs[a].log_tail()
        );
    }
    eprintln!("weft {LAST_RELEASE} on n0..n2: pods reach each other");

    // Every pod pings the other two while n0, n1, n2 are upgraded in turn.
    let pings: Vec<((usize, usize), Child)> = all_pairs()
        .map(|(a, b)| ((a, b), ping(&cluster, a, b)))
        .collect();
    let pinging = Instant::now();
    let mut gaps = Vec::new();
    for (i, r) in rs.iter_mut().enumerate() {
        std::thread::sleep(Duration::from_secs(2));
        let stopped = pinging.elapsed();
        let status = r.terminate(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "n{i} SIGTERM: {status:?}"
        );
        r.bin = BIN.into();
        r.start();
        let up = wait_until(Duration::from_secs(30), || r.established_peers() == 2);
        let upgraded = pinging.elapsed();
        assert!(up, "the upgraded n{i} did not rejoin:\n{}", r.log_tail());
        eprintln!(
            "upgrade {LAST_RELEASE} -> this build on n{i}: restart gap {:?} (SIGTERM to both links up)",
            upgraded - stopped
        );
        gaps.push((stopped, upgraded));
    }
    std::thread::sleep(Duration::from_secs(2));
    // Every lost ping was sent during a restart of one of the pair's two
    // routers (a second of slack each side for ping's own timing under
    // load).
    let at = |seq: u32| Duration::from_secs_f64(f64::from(seq - 1) * PING_EVERY);
    let slack = Duration::from_secs(1);
    for ((a, b), child) in pings {
        let lost = lost_pings(child);
        eprintln!("pod n{a} -> pod n{b}: {} pings lost {lost:?}", lost.len());
        for seq in &lost {
            let during = [a, b].iter().any(|i| {
                let (stopped, upgraded) = gaps[*i];
                at(*seq) + slack >= stopped && at(*seq) <= upgraded + slack
            });
            assert!(
                during,
                "n{a} -> n{b}: ping {seq} (at {:?}) lost outside the restarts of n{a} and n{b} {gaps:?}: lost {lost:?}",
                at(*seq)
            );
        }
    }

    // The ring is the last release's, which had no titles latch: titles
    // are not required of every member (its history has hand-overs
    // without them), every owner is now seen speaking them, and status
    // says what that leaves open.
    for r in &rs {
        let ipam = r.status().unwrap()["ipam"].clone();
        assert_eq!(ipam["titles_required"], false, "{}: {ipam}", r.name);
        assert!(
            ipam.get("titles_waiting_for").is_none(),
            "{}: {ipam}",
            r.name
        );
    }
    let out = std::process::Command::new(&rs[0].bin)
        .args(["status", "ipam", "--api"])
        .arg(rs[0].api())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("titles not required of every member"),
        "{text}"
    );
}
