//! `--reclaim-after` (issue 20, without Kubernetes): a router killed for
//! good has its ranges taken over by exactly one survivor once it has been
//! unreachable that long; a survivor that is not on the side of most of the
//! ring's owners takes nothing, however long it waits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::ipam::{ipam, owned, routers, wait_ready};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// The wait given to the routers.
const AFTER: Duration = Duration::from_secs(3);

fn log_of(r: &Router) -> String {
    std::fs::read_to_string(r.log_path()).unwrap_or_default()
}

fn size(ranges: &[(u32, u32)]) -> u64 {
    ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum()
}

#[test]
fn a_dead_router_is_reclaimed_once_by_the_majority_and_never_by_a_minority() {
    if !require_root("a_dead_router_is_reclaimed_once_by_the_majority_and_never_by_a_minority") {
        return;
    }
    let cluster = Cluster::new(3);
    let mut rs = routers(BIN, &cluster, 3, |_| vec![0, 1, 2], None, "10.32.0.0/16");
    for r in &mut rs {
        r.args
            .extend(["--reclaim-after".into(), format!("{}s", AFTER.as_secs())]);
        r.start();
    }
    wait_ready(&rs, Duration::from_secs(20));
    let whole = 1u64 << 16;

    // n2 dies for good: one of n0 and n1 takes its ranges, after the wait.
    let killed = Instant::now();
    rs[2].kill9();
    let reclaimed = wait_until(Duration::from_secs(30), || {
        size(&owned(&rs[0])) + size(&owned(&rs[1])) == whole
    });
    let took = killed.elapsed();
    assert!(
        reclaimed,
        "n2's ranges were not reclaimed: {:#?}\n{:#?}",
        ipam(&rs[0]),
        ipam(&rs[1])
    );
    assert!(
        took >= AFTER,
        "reclaimed after {took:?}, before the {AFTER:?} wait"
    );
    // Give a second reclaimer every chance to show up, then count.
    std::thread::sleep(AFTER);
    let reclaimers: Vec<String> = rs[..2]
        .iter()
        .filter(|r| log_of(r).contains("--reclaim-after: took over"))
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(reclaimers.len(), 1, "reclaimed by {reclaimers:?}");
    for r in &rs[..2] {
        let unreachable = ipam(r)["unreachable_ranges"].as_array().map_or(0, Vec::len);
        assert_eq!(unreachable, 0, "{} still lists unreachable ranges", r.name);
    }
    eprintln!(
        "--reclaim-after {AFTER:?}: n2's ranges taken {took:?} after kill -9, by {}",
        reclaimers[0]
    );

    // The reclaimer dies too: the survivor is half of the owners left, not
    // most of them, so it waits for an operator however long.
    let (victim, survivor) = if reclaimers[0] == rs[0].name {
        (0, 1)
    } else {
        (1, 0)
    };
    rs[victim].kill9();
    let noticed = wait_until(Duration::from_secs(30), || {
        ipam(&rs[survivor])["unreachable_ranges"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    assert!(noticed, "{:#?}", ipam(&rs[survivor]));
    std::thread::sleep(AFTER * 3);
    assert!(
        size(&owned(&rs[survivor])) < whole,
        "a lone survivor of two owners reclaimed the other: {:#?}",
        ipam(&rs[survivor])
    );
    assert!(
        !log_of(&rs[survivor]).contains("--reclaim-after: took over"),
        "{}",
        rs[survivor].log_tail()
    );
}
