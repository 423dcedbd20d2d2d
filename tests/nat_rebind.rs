//! NAT rebinding mid-transfer (issue 16): two routers behind 1:1 NAT (the
//! seeds) and two behind masquerade gateways that drop unsolicited inbound
//! (`m`, `p`). With `m`↔`p` punched and
//! `m`↔seed direct (public), two checksummed pod-to-pod TCP flows run from
//! `m`'s pod, one over each path; then `m`'s gateway "restarts": its
//! masquerade moves to ports 30000-30999 and its conntrack is flushed, so
//! every UDP mapping changes and `m`'s TCP control connections break. Both
//! flows must complete intact, the longest stall and the time until each
//! peer follows `m`'s new endpoint are printed, and both are under 5 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::flow::Flow;
use support::nat::{NatKind, World};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// Each flow's pace: enough to notice a stall at once, little for 2 cores.
const RATE: u64 = 2 << 20;

/// `r`'s connection line for `peer`, if connected.
fn connection(r: &Router, peer: &str) -> Option<serde_json::Value> {
    r.status()?["connections"]
        .as_array()?
        .iter()
        .find(|c| c["peer"] == peer)
        .cloned()
}

/// The port of an `ADDR:PORT` field of `peer`'s connection line at `r`.
fn port_of(r: &Router, peer: &str, field: &str) -> Option<u16> {
    let c = connection(r, peer)?;
    c[field]
        .as_str()?
        .parse::<SocketAddr>()
        .ok()
        .map(|a| a.port())
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn rebound(port: Option<u16>) -> bool {
    port.is_some_and(|p| (30000..=30999).contains(&p))
}

#[test]
fn a_rebinding_nat_is_followed_without_losing_a_flow() {
    if !require_root("a_rebinding_nat_is_followed_without_losing_a_flow") {
        return;
    }
    let world = World::new(&[
        (NatKind::OneToOne, 2),
        (NatKind::MasqueradeDropInbound, 1),
        (NatKind::MasqueradeDropInbound, 1),
    ]);
    let seeds: Vec<Ipv4Addr> = world.sites[0].public.clone();
    let dir = TempDir::new("rebind");
    let mut routers = world.routers(Path::new(BIN), &dir.path, &seeds);
    for r in &mut routers {
        r.start();
    }
    let names: Vec<String> = routers.iter().map(|r| r.name.clone()).collect();
    let (seed, m, p) = (0, 2, 3);
    let ready = wait_until(Duration::from_secs(30), || {
        routers
            .iter()
            .all(|r| r.status().is_some_and(|s| s["ipam"]["genesis"].is_string()))
    });
    assert!(ready, "the ring did not start");
    let pods = world.pods(&routers);
    let paths_ok = || {
        path_to(&routers[m], &names[p]) == "punched"
            && path_to(&routers[p], &names[m]) == "punched"
            && path_to(&routers[m], &names[seed]) == "direct (public)"
            && path_to(&routers[seed], &names[m]) == "direct (public)"
    };
    let settled = wait_until(Duration::from_secs(40), paths_ok);
    assert!(
        settled,
        "paths before the rebinding: m->p {}, p->m {}, m->seed {}, seed->m {}",
        path_to(&routers[m], &names[p]),
        path_to(&routers[p], &names[m]),
        path_to(&routers[m], &names[seed]),
        path_to(&routers[seed], &names[m]),
    );
    assert!(pods[m].wait_ping(pods[p].addr, Duration::from_secs(10)));
    assert!(pods[m].wait_ping(pods[seed].addr, Duration::from_secs(10)));

    let punched = Flow::start(&pods[m], &pods[p], 5401, RATE, Duration::from_secs(120));
    let direct = Flow::start(&pods[m], &pods[seed], 5402, RATE, Duration::from_secs(120));
    let flowing = wait_until(Duration::from_secs(20), || {
        punched.received() > RATE && direct.received() > RATE
    });
    assert!(flowing, "the flows did not start");

    let done = AtomicBool::new(false);
    let (stalls, times) = std::thread::scope(|s| {
        let watch_punched = s.spawn(|| punched.longest_stall(&done));
        let watch_direct = s.spawn(|| direct.longest_stall(&done));
        // The watchers stop even if a step below panics.
        let _stop = StopOnDrop(&done);
        let rebind = Instant::now();
        world.sites[1].rebind("30000-30999");
        // When each view of m's new mapping appears (None: not in 30 s).
        let mut seen: [Option<Duration>; 4] = [None; 4];
        let deadline = rebind + Duration::from_secs(30);
        while Instant::now() < deadline && seen.iter().any(Option::is_none) {
            let checks = [
                // The seed's data goes to m's new endpoint.
                rebound(port_of(&routers[seed], &names[m], "udp_endpoint")),
                // The punched peer's too, and the path is punched again.
                rebound(port_of(&routers[p], &names[m], "udp_endpoint"))
                    && path_to(&routers[p], &names[m]) == "punched"
                    && path_to(&routers[m], &names[p]) == "punched",
                // m's control connection with the seed was dialled again
                // (the seed sees it from the new range).
                rebound(port_of(&routers[seed], &names[m], "address")),
                // m advertises its new public endpoint.
                routers[m].status().is_some_and(|s| {
                    s["advertised"].as_array().is_some_and(|a| {
                        a.iter().any(|x| {
                            rebound(
                                x.as_str()
                                    .and_then(|x| x.parse::<SocketAddr>().ok())
                                    .map(|a| a.port()),
                            )
                        })
                    })
                }),
            ];
            for (t, ok) in seen.iter_mut().zip(checks) {
                if ok && t.is_none() {
                    *t = Some(rebind.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A few more seconds of flow on the new paths.
        std::thread::sleep(Duration::from_secs(3));
        done.store(true, Ordering::Relaxed);
        (
            [watch_punched.join().unwrap(), watch_direct.join().unwrap()],
            seen,
        )
    });
    let punched_end = punched.finish();
    let direct_end = direct.finish();
    for r in &routers {
        eprintln!(
            "{}: paths {:?}",
            r.name,
            names
                .iter()
                .filter(|n| **n != r.name)
                .map(|n| (n.clone(), path_to(r, n)))
                .collect::<Vec<_>>()
        );
    }
    eprintln!(
        "rebinding: longest stall punched {:?}, direct {:?}; seed follows m's endpoint after {:?}, p (punched again) after {:?}, control re-dialled after {:?}, m advertises its new endpoint after {:?}",
        stalls[0], stalls[1], times[0], times[1], times[2], times[3]
    );
    let punched_end = punched_end.expect("the flow over the punched path broke");
    let direct_end = direct_end.expect("the flow over the direct path broke");
    assert_eq!(punched_end.sent, punched_end.received, "punched flow");
    assert_eq!(direct_end.sent, direct_end.received, "direct flow");
    let five = Duration::from_secs(5);
    assert!(
        times.iter().all(|t| t.is_some_and(|t| t < five)),
        "not followed within 5 s: {times:?}"
    );
    assert!(stalls.iter().all(|s| *s < five), "stalls {stalls:?}");
}
