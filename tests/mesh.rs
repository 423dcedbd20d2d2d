//! The gossip mesh: routers find each other from a few seeds, route around
//! broken links, notice dead routers and let a router behind NAT join.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

struct Mesh {
    routers: Vec<Router>,
    cluster: Cluster,
}

/// `count` nodes; node i is given only the seeds `seeds(i)`; one pod each.
fn mesh(count: usize, seeds: impl Fn(usize) -> Vec<usize>) -> Mesh {
    let mut cluster = Cluster::new(count);
    let routers = start_routers(Path::new(BIN), &mut cluster, count, seeds, |_, _| {});
    Mesh { routers, cluster }
}

/// Three routers, each seeded with the other two, all connections established.
fn full_mesh_of_three() -> Mesh {
    let m = mesh(3, |i| (0..3).filter(|j| *j != i).collect());
    let up = wait_until(Duration::from_secs(10), || {
        m.routers.iter().all(|r| r.established_peers() == 2)
    });
    assert!(
        up,
        "the mesh of three did not form:\n{}",
        m.routers[0].log_tail()
    );
    m
}

fn peer_names(r: &Router, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<String> {
    let Some(status) = r.status() else {
        return Vec::new();
    };
    let mut names: Vec<String> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| pred(p))
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn all_pods_reach_each_other(m: &Mesh, timeout: Duration) {
    for a in &m.cluster.pods {
        for b in &m.cluster.pods {
            if a.addr != b.addr {
                assert!(
                    a.wait_ping(b.addr, timeout),
                    "pod {} cannot reach pod {}",
                    a.addr,
                    b.addr
                );
            }
        }
    }
}

#[test]
fn four_routers_each_given_one_different_seed_find_each_other_and_every_pod_reaches_every_other() {
    if !require_root("mesh_discovery") {
        return;
    }
    let started = Instant::now();
    // A chain of seeds: n0→n1, n1→n2, n2→n3, n3→n0.
    let m = mesh(4, |i| vec![(i + 1) % 4]);
    let all_known = wait_until(Duration::from_secs(10), || {
        m.routers.iter().all(|r| {
            peer_names(r, |p| p["reachable"] == true).len() == 3 && r.established_peers() == 3
        })
    });
    assert!(all_known, "mesh did not form:\n{}", m.routers[0].log_tail());
    eprintln!("full mesh of 4 in {:?}", started.elapsed());
    all_pods_reach_each_other(&m, Duration::from_secs(5));
}

#[test]
fn with_udp_blocked_between_two_routers_traffic_detours_through_a_third_and_returns() {
    if !require_root("mesh_detour") {
        return;
    }
    let m = full_mesh_of_three();
    let (a, c) = (&m.cluster.pods[0], &m.cluster.pods[2]);
    assert!(a.wait_ping(c.addr, Duration::from_secs(5)));
    // A ping may get through via n1 before the direct link's first probe is
    // answered: wait for the direct path, bounded.
    let direct = wait_until(Duration::from_secs(5), || {
        path_to(&m.routers[0], "n2").starts_with("direct")
    });
    assert!(
        direct,
        "n0 → n2 never went direct: {}",
        path_to(&m.routers[0], "n2")
    );

    m.cluster.block_udp(0, 2, true);
    let detoured = Instant::now();
    let via = wait_until(Duration::from_secs(8), || {
        path_to(&m.routers[0], "n2").starts_with("relayed via n1")
    });
    assert!(via, "no detour: path is {:?}", path_to(&m.routers[0], "n2"));
    let switched = detoured.elapsed();
    eprintln!("route switched to the detour {switched:?} after the block");
    assert!(
        switched < Duration::from_secs(3),
        "detour took {switched:?}"
    );
    assert!(
        a.wait_ping(c.addr, Duration::from_secs(3)),
        "no traffic over the detour"
    );
    assert!(
        c.ping(a.addr, 3),
        "reverse path over the detour lost packets"
    );
    eprintln!(
        "detour carrying traffic {:?} after the block",
        detoured.elapsed()
    );
    let relayed = m.routers[1].status().unwrap()["dataplane"]["forwarded"]
        .as_u64()
        .unwrap();
    assert!(relayed > 0, "n1 relayed nothing");

    m.cluster.block_udp(0, 2, false);
    let back = wait_until(Duration::from_secs(8), || {
        path_to(&m.routers[0], "n2").starts_with("direct")
    });
    assert!(
        back,
        "did not return to the direct path: {:?}",
        path_to(&m.routers[0], "n2")
    );
    assert!(a.ping(c.addr, 3));
}

#[test]
fn a_router_whose_inbound_underlay_is_dropped_joins_through_its_own_connections() {
    if !require_root("mesh_nat") {
        return;
    }
    let cluster = Cluster::new(3);
    cluster.behind_nat(2, true);
    let names = ["n0", "n1", "n2"];
    let dir = cluster.dir.path.clone();
    let mut routers: Vec<Router> = (0..3)
        .map(|i| {
            let seeds: Vec<Ipv4Addr> = (0..2)
                .filter(|j| *j != i)
                .map(|j| cluster.nodes[j].underlay)
                .collect();
            Router::new(Path::new(BIN), &cluster.nodes[i], &dir, &seeds, &names)
        })
        .collect();
    for r in &mut routers {
        r.start();
    }
    let mut m = Mesh { routers, cluster };
    for i in 0..3 {
        let start = m.routers[i].range_start();
        m.cluster.add_pod(i, Ipv4Addr::from(u32::from(start) + 10));
    }
    let joined = wait_until(Duration::from_secs(10), || {
        m.routers.iter().all(|r| r.established_peers() == 2)
    });
    assert!(
        joined,
        "the router behind NAT did not join:\n{}",
        m.routers[2].log_tail()
    );
    let status = m.routers[2].status().unwrap();
    for c in status["connections"].as_array().unwrap() {
        if c["established"] == true {
            assert_eq!(
                c["direction"], "outbound",
                "an inbound connection reached the NATed router"
            );
        }
    }
    all_pods_reach_each_other(&m, Duration::from_secs(5));
}

#[test]
fn a_killed_router_is_marked_dead_within_5_s_and_rejoins_after_a_restart() {
    if !require_root("mesh_kill") {
        return;
    }
    let mut m = mesh(4, |i| if i == 0 { vec![1] } else { vec![0] });
    assert!(wait_until(Duration::from_secs(10), || m
        .routers
        .iter()
        .all(|r| r.established_peers() == 3)));
    m.routers[3].kill9();
    let killed = Instant::now();
    let dead = wait_until(Duration::from_secs(5), || {
        m.routers[..3].iter().all(|r| {
            !peer_names(r, |p| p["reachable"] == true).contains(&"n3".to_string())
                && r.established_peers() == 2
        })
    });
    assert!(dead, "n3 still looks alive after {:?}", killed.elapsed());
    eprintln!("n3 marked dead by all within {:?}", killed.elapsed());
    m.routers[3].start();
    let back = wait_until(Duration::from_secs(10), || {
        m.routers.iter().all(|r| r.established_peers() == 3)
    });
    assert!(back, "n3 did not rejoin:\n{}", m.routers[3].log_tail());
    all_pods_reach_each_other(&m, Duration::from_secs(5));
}

#[test]
fn weft_connect_and_forget_change_the_seed_list_of_a_running_router() {
    if !require_root("mesh_connect") {
        return;
    }
    // No seeds: the routers cannot know each other, so their ring (split
    // by name) waits; the pods are plugged in once they do.
    let cluster = Cluster::new(2);
    let mut routers: Vec<Router> = (0..2)
        .map(|i| {
            Router::new(
                Path::new(BIN),
                &cluster.nodes[i],
                &cluster.dir.path,
                &[],
                &["n0", "n1"],
            )
        })
        .collect();
    for r in &mut routers {
        r.start();
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut m = Mesh { routers, cluster };
    assert_eq!(
        m.routers[0].established_peers(),
        0,
        "connected without a seed"
    );
    let api = m.routers[0].api();
    let out = run_timeout(
        std::process::Command::new(BIN)
            .args(["connect", "192.0.2.11:6783", "--api"])
            .arg(&api),
        10,
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(Duration::from_secs(10), || m
        .routers
        .iter()
        .all(|r| r.established_peers() == 1)));
    for i in 0..2 {
        let start = m.routers[i].range_start();
        m.cluster.add_pod(i, Ipv4Addr::from(u32::from(start) + 10));
    }
    let (a, b) = (&m.cluster.pods[0], &m.cluster.pods[1]);
    assert!(a.wait_ping(b.addr, Duration::from_secs(5)));
    let out = run_timeout(
        std::process::Command::new(BIN)
            .args(["forget", "192.0.2.11:6783", "--api"])
            .arg(&api),
        10,
    )
    .unwrap();
    assert!(out.status.success());
    let seeds = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!seeds.contains("192.0.2.11"), "still a seed: {seeds}");
    // The router stays known through gossip (a learned peer, not a seed).
    assert_eq!(m.routers[0].established_peers(), 1);
}

#[test]
fn a_path_that_drops_full_size_packets_is_not_established_and_traffic_detours() {
    if !require_root("mesh_pmtu") {
        return;
    }
    let m = full_mesh_of_three();
    // n0 → n2: small datagrams pass, anything near the full overlay MTU is lost.
    let ns = &m.cluster.nodes[0].ns;
    ns.ok(&[
        "nft",
        "table inet wefttestmtu { chain out { type filter hook output priority 0; ip daddr 192.0.2.12 udp dport 6783 meta length > 1000 drop; }; }",
    ]);
    let conn_to_n2 = || {
        m.routers[0].status().and_then(|s| {
            s["connections"]
                .as_array()?
                .iter()
                .find(|c| c["peer"] == "n2")
                .cloned()
        })
    };
    // The detour, for the reason the probes found (the link may say "not
    // verified yet" while its first probes are out).
    let detoured = wait_until(Duration::from_secs(8), || {
        path_to(&m.routers[0], "n2").starts_with("relayed via n1")
            && conn_to_n2().is_some_and(|c| c["pmtu"] == "pmtu too small")
    });
    assert!(
        detoured,
        "no detour for pmtu: path is {:?}, connection {:?}",
        path_to(&m.routers[0], "n2"),
        conn_to_n2()
    );
    let conn = conn_to_n2().unwrap();
    assert_eq!(conn["udp"], "ok", "{conn}");
    // Full-size pings between pods still arrive, over the detour.
    let (a, c) = (&m.cluster.pods[0], &m.cluster.pods[2]);
    assert!(
        a.ns.exec(&[
            "ping",
            "-c",
            "3",
            "-W",
            "1",
            "-i",
            "0.2",
            "-s",
            "1300",
            &c.addr.to_string()
        ])
        .status
        .success()
    );
    ns.ok(&["nft", "delete", "table", "inet", "wefttestmtu"]);
    let back = wait_until(Duration::from_secs(8), || {
        path_to(&m.routers[0], "n2").starts_with("direct")
    });
    assert!(back, "did not return to the direct path");
}
