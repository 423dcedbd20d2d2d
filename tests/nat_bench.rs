//! Benchmark of issue 16 (run by `bench/nat.sh`, not by the suite): one
//! cold start of the NAT matrix of `tests/nat.rs` (six routers over four
//! sites: 1:1, masquerade, symmetric, masquerade dropping unsolicited
//! inbound; no gateway hairpins; default `--ipalloc-init`), timed from the
//! routers' start to:
//! - `ring`: every router knows the ring;
//! - `reach`: every pod pings every other (pairs tried in turn);
//! - `direct`: every pair whose NATs allow it is direct or punched (both
//!   routers of the masquerade site punched to the site that drops
//!   unsolicited inbound), the symmetric pairs relayed — or `none` when
//!   that is not reached within 90 s of the start;
//! - `paths`: as `direct`, but one masquerade router may still be relayed
//!   as `punch unanswered` (its first attempt lost the gateway's conntrack
//!   race; the retry in the other order follows the quiet period).
//!
//! With `WEFT_NAT_BENCH_THROUGHPUT=1`, also 20 MB over a punched path and
//! over a relayed one (masquerade ↔ symmetric), for the ratio. Prints one
//! `nat-bench` line for the script to parse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::nat::{MATRIX, World};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

#[test]
#[ignore = "benchmark: bench/nat.sh"]
fn nat_matrix_cold_start_times() {
    if !require_root("nat_matrix_cold_start_times") {
        return;
    }
    let world = World::new(&MATRIX);
    let dir = TempDir::new("natbench");
    let mut routers = world.routers(Path::new(BIN), &dir.path, &world.sites[0].public);
    let started = Instant::now();
    for r in &mut routers {
        r.start();
    }
    let names: Vec<String> = routers.iter().map(|r| r.name.clone()).collect();
    let ring_ready = |r: &Router| r.status().is_some_and(|s| s["ipam"]["genesis"].is_string());
    assert!(
        wait_until(Duration::from_secs(30), || routers.iter().all(ring_ready)),
        "the ring did not start within 30 s"
    );
    let ring = started.elapsed();

    let pods = world.pods(&routers);
    for a in &pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            assert!(
                a.wait_ping(b.addr, Duration::from_secs(30)),
                "{} cannot reach {}",
                names[a.node],
                names[b.node]
            );
        }
    }
    let reach = started.elapsed();

    // Nodes: 0, 1 behind 1:1; 2, 3 masquerade; 4 symmetric; 5 drop-inbound.
    let site_of = |i: usize| [0, 0, 1, 1, 2, 3][i];
    let wanted = |a: usize, b: usize| -> &'static str {
        match (site_of(a), site_of(b)) {
            (x, y) if x == y => "direct (private)",
            (0, _) | (_, 0) => "direct (public)",
            (2, _) | (_, 2) => "relayed via ",
            _ => "punched",
        }
    };
    let n = routers.len();
    let paths = || -> Vec<Vec<String>> {
        (0..n)
            .map(|a| (0..n).map(|b| path_to(&routers[a], &names[b])).collect())
            .collect()
    };
    // `direct`: every allowed pair direct or punched. `paths`: a
    // masquerade-site router may still be relayed as `punch unanswered`
    // (the conntrack race before the swap), as long as one of the two is
    // punched both ways.
    let fits = |p: &[Vec<String>], strict: bool| {
        let pairs_fit = (0..n).all(|a| {
            (0..n).filter(|b| *b != a).all(|b| {
                let path = &p[a][b];
                path.starts_with(wanted(a, b))
                    || (!strict
                        && wanted(a, b) == "punched"
                        && path.ends_with("(punch unanswered)"))
            })
        });
        pairs_fit && (2..4).any(|m| p[m][5] == "punched" && p[5][m] == "punched")
    };
    let (mut direct, mut settled) = (None, None);
    let deadline = started + Duration::from_secs(90);
    while Instant::now() < deadline && direct.is_none() {
        let p = paths();
        if settled.is_none() && fits(&p, false) {
            settled = Some(started.elapsed());
        }
        if fits(&p, true) {
            direct = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if direct.is_none() {
        let p = paths();
        for a in 0..n {
            for b in (0..n).filter(|b| *b != a) {
                eprintln!("{} -> {}: {}", names[a], names[b], p[a][b]);
            }
        }
    }

    let mut ratio = String::from("-");
    if std::env::var("WEFT_NAT_BENCH_THROUGHPUT").as_deref() == Ok("1") {
        let punched = (2..4).find(|i| {
            path_to(&routers[*i], &names[5]) == "punched"
                && path_to(&routers[5], &names[*i]) == "punched"
        });
        if let Some(m) = punched {
            let mbits = |t: &Transfer| (t.sent * 8) as f64 / t.elapsed.as_secs_f64() / 1e6;
            let limit = Some(Duration::from_secs(120));
            let p = transfer(&pods[m], &pods[5], 20 << 20, limit);
            let r = transfer(&pods[m], &pods[4], 20 << 20, limit);
            assert_eq!(p.received_sum, p.sent_sum, "punched transfer corrupted");
            assert_eq!(r.received_sum, r.sent_sum, "relayed transfer corrupted");
            ratio = format!(
                "{:.0}/{:.0}/{:.2}",
                mbits(&p),
                mbits(&r),
                mbits(&p) / mbits(&r)
            );
        }
    }
    let secs = |d: Duration| format!("{:.2}", d.as_secs_f64());
    println!(
        "nat-bench ring={} reach={} paths={} direct={} punched/relayed-mbit/ratio={ratio}",
        secs(ring),
        secs(reach),
        settled.map_or("none".into(), secs),
        direct.map_or("none".into(), secs),
    );
}
