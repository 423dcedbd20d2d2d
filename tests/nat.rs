//! Multi-cloud behind NAT (issue 16, phase 1): six routers over four
//! sites — two behind 1:1 NAT, two behind masquerade, one behind symmetric
//! NAT, one behind masquerade that drops all unsolicited inbound — every router listening on its private address and given the same
//! seed list (the public addresses of the two 1:1 routers), default
//! `--ipalloc-init`. The ring starts, every router reaches every other, the
//! pairs 1:1 NAT allows are direct (private within a site, public across),
//! the pairs behind masquerade on both ends are punched (control relayed
//! end to end through a common router, data on the punched UDP path) and
//! carry a checksummed 100 MB transfer, and the pairs with the symmetric
//! NAT stay relayed with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::nat::{NatKind, World, nat_pods_reach_each_other};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// The router knows the ring (its genesis).
fn ring_ready(r: &Router) -> bool {
    r.status().is_some_and(|s| s["ipam"]["genesis"].is_string())
}

#[test]
fn six_routers_over_four_nat_sites_start_the_ring_and_reach_each_other() {
    if !require_root("six_routers_over_four_nat_sites_start_the_ring_and_reach_each_other") {
        return;
    }
    let world = World::new(&[
        (NatKind::OneToOne, 2),
        (NatKind::Masquerade, 2),
        (NatKind::Symmetric, 1),
        (NatKind::MasqueradeDropInbound, 1),
    ]);
    let seeds: Vec<Ipv4Addr> = world.sites[0].public.clone();
    let dir = TempDir::new("nat");
    let mut routers = world.routers(Path::new(BIN), &dir.path, &seeds);
    let started = Instant::now();
    for r in &mut routers {
        r.start();
    }
    let names: Vec<String> = routers.iter().map(|r| r.name.clone()).collect();

    // The ring starts: voters are the routers at the seed addresses, by
    // identity, although neither can dial its own public address.
    let ring = wait_until(Duration::from_secs(10), || routers.iter().all(ring_ready));
    assert!(
        ring,
        "the ring did not start within 10 s: {:?}",
        routers
            .iter()
            .map(|r| (r.name.clone(), r.status().map(|s| s["ipam"].clone())))
            .collect::<Vec<_>>()
    );
    eprintln!("ring ready after {:?}", started.elapsed());

    // One pod per node, at its range start + 10.
    let pods = world.pods(&routers);

    // Every router reaches every other.
    nat_pods_reach_each_other(&routers, &pods, Duration::from_secs(20));
    eprintln!("full reachability after {:?}", started.elapsed());

    // Paths: direct where 1:1 NAT allows (or the same site), punched where
    // both ends are behind masquerade (endpoint-independent mapping: once
    // both send, even the gateway that drops unsolicited inbound lets the
    // answers in), relayed with a reason where one is behind symmetric NAT.
    // The masquerade site's gateway keeps a conntrack entry for a far
    // probe that arrives before its own node's first one left (which
    // remaps that node): an attempt that fails so swaps who probes first
    // once the entry expired (ARCHITECTURE.md "Endpoints, NAT and paths",
    // "Who probes first"), so the wait covers the first window, the quiet
    // period and the second. At least one router of that site must end
    // punched to the far site; the other may still be relayed with the
    // reason (not every cold start punches both yet).
    let n = routers.len();
    let site_of = |i: usize| match i {
        0 | 1 => 0,
        2 | 3 => 1,
        k => k - 2,
    };
    let fits = |a: usize, b: usize, path: &str| -> bool {
        if site_of(a) == site_of(b) {
            path == "direct (private)"
        } else if site_of(a) == 0 || site_of(b) == 0 {
            path == "direct (public)"
        } else if site_of(a) == 2 || site_of(b) == 2 {
            // Both ends name the reason, the symmetric side too.
            path.starts_with("relayed via ") && path.ends_with(" (symmetric NAT)")
        } else {
            path == "punched"
                || (path.starts_with("relayed via ") && path.ends_with("(punch unanswered)"))
        }
    };
    let punched_both_ways = |i: usize| {
        path_to(&routers[i], &names[5]) == "punched" && path_to(&routers[5], &names[i]) == "punched"
    };
    let all_fit = || {
        (0..n).all(|a| {
            (0..n)
                .filter(|b| *b != a)
                .all(|b| fits(a, b, &path_to(&routers[a], &names[b])))
        })
    };
    wait_until(Duration::from_secs(75), || {
        all_fit() && (2..4).all(punched_both_ways)
    });
    let settled = all_fit();
    let table: Vec<String> = (0..n)
        .flat_map(|a| (0..n).filter(move |b| *b != a).map(move |b| (a, b)))
        .map(|(a, b)| {
            format!(
                "{} -> {}: {}",
                names[a],
                names[b],
                path_to(&routers[a], &names[b])
            )
        })
        .collect();
    eprintln!("{}", table.join("\n"));
    if !settled {
        for r in &routers {
            let c = r.status().map(|s| s["connections"].clone());
            eprintln!("{}: {}", r.name, c.unwrap_or_default());
        }
    }
    assert!(
        settled,
        "paths not as expected after 75 s:\n{}",
        table.join("\n")
    );
    eprintln!("all paths as expected after {:?}", started.elapsed());
    // A relayed path says why.
    let relayed = path_to(&routers[2], &names[4]);
    assert!(
        relayed.ends_with(')') && relayed.contains(" ("),
        "{relayed}"
    );

    // Each 1:1 router advertises its public address, learned from peers
    // (it listens on its private one).
    let lists = |viewer: &Router, peer: &str, addr: String| {
        viewer.status().is_some_and(|s| {
            s["peers"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["name"] == peer
                        && p["addresses"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(addr.as_str())))
                })
            })
        })
    };
    let public = &world.sites[0].public;
    assert!(lists(&routers[2], &names[0], format!("{}:6783", public[0])));
    assert!(lists(&routers[0], &names[1], format!("{}:6783", public[1])));

    // 100 MB between pods over a punched path (masquerade ↔ masquerade
    // that drops unsolicited inbound), intact and bounded in time; then
    // the same over a relayed one (masquerade ↔ symmetric), for the ratio.
    let m = (2..4)
        .find(|i| punched_both_ways(*i))
        .expect("a masquerade router punched to the drop-inbound site");
    // Packets the other routers forward: none of the punched transfer's.
    let forwarded = || -> u64 {
        (0..n)
            .filter(|i| *i != m && *i != 5)
            .filter_map(|i| routers[i].status())
            .map(|s| s["dataplane"]["forwarded"].as_u64().unwrap_or(0))
            .sum()
    };
    let forwarded_before = forwarded();
    let punched = transfer(
        &pods[m],
        &pods[5],
        100 << 20,
        Some(Duration::from_secs(120)),
    );
    assert_eq!(
        punched.sent,
        100 << 20,
        "the punched transfer did not finish in 120 s"
    );
    assert_eq!(
        punched.received, punched.sent,
        "bytes lost on the punched path"
    );
    assert_eq!(
        punched.received_sum, punched.sent_sum,
        "checksum mismatch on the punched path"
    );
    assert_eq!(
        path_to(&routers[m], &names[5]),
        "punched",
        "the path moved during the transfer"
    );
    let relayed_packets = forwarded() - forwarded_before;
    assert!(
        relayed_packets < 1_000,
        "{relayed_packets} packets of the punched transfer went through another router"
    );
    let mbits = |t: &Transfer| (t.sent * 8) as f64 / t.elapsed.as_secs_f64() / 1e6;
    let relayed_t = transfer(&pods[m], &pods[4], 20 << 20, Some(Duration::from_secs(120)));
    assert_eq!(
        relayed_t.received_sum, relayed_t.sent_sum,
        "checksum mismatch on the relayed path"
    );
    eprintln!(
        "100 MB punched in {:.2} s = {:.0} Mbit/s; 20 MB relayed = {:.0} Mbit/s; ratio {:.2}",
        punched.elapsed.as_secs_f64(),
        mbits(&punched),
        mbits(&relayed_t),
        mbits(&punched) / mbits(&relayed_t),
    );

    // The relay of the punched pair killed mid-transfer: the pair's control
    // moves to the other common router (the new connection adopts the
    // record, keys and UDP path), the path stays punched and the transfer
    // completes intact.
    let relay_id =
        control_via(&routers[m], &names[5]).expect("the punched pair's control is relayed");
    let r = (0..2)
        .find(|i| {
            routers[*i]
                .status()
                .is_some_and(|s| s["id"] == relay_id.as_str())
        })
        .expect("the relay is one of the 1:1 routers");
    let survivor = 1 - r;
    let survivor_id = routers[survivor].status().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let during = std::thread::scope(|scope| {
        let t = scope.spawn(|| {
            transfer(
                &pods[m],
                &pods[5],
                100 << 20,
                Some(Duration::from_secs(120)),
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        routers[r].kill9();
        t.join().expect("transfer thread")
    });
    let killed = Instant::now();
    assert_eq!(
        during.sent,
        100 << 20,
        "the transfer across the relay's death did not finish"
    );
    assert_eq!(
        during.received_sum, during.sent_sum,
        "checksum mismatch across the relay's death"
    );
    let moved = wait_until(Duration::from_secs(10), || {
        control_via(&routers[m], &names[5]).as_deref() == Some(survivor_id.as_str())
            && path_to(&routers[m], &names[5]) == "punched"
            && path_to(&routers[5], &names[m]) == "punched"
    });
    if !moved {
        for r in &routers {
            let s = r.status();
            eprintln!(
                "{}: paths {} connections {}",
                r.name,
                s.as_ref().map(|s| s["paths"].clone()).unwrap_or_default(),
                s.map(|s| s["connections"].clone()).unwrap_or_default()
            );
        }
    }
    assert!(
        moved,
        "control did not move to {}: via {:?}, paths {} / {}",
        names[survivor],
        control_via(&routers[m], &names[5]),
        path_to(&routers[m], &names[5]),
        path_to(&routers[5], &names[m]),
    );
    eprintln!(
        "relay {} killed mid-transfer: 100 MB intact in {:.2} s; control through {} and punched {:?} after the transfer",
        names[r],
        during.elapsed.as_secs_f64(),
        names[survivor],
        killed.elapsed(),
    );
}

/// The ID of the router `r`'s control connection with `peer` is relayed
/// through, if it is relayed.
fn control_via(r: &Router, peer: &str) -> Option<String> {
    r.status().and_then(|s| {
        s["connections"]
            .as_array()?
            .iter()
            .find(|c| c["peer"] == peer)
            .and_then(|c| c["control_via"].as_str().map(str::to_string))
    })
}
