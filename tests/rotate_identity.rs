//! Identity key rotation under load (issue 20, step 7; docs/ARCHITECTURE.md
//! "Identity key rotation"): three routers, a paced, checksummed TCP flow
//! from a pod on n0 to a pod on n1, and `weft rotate-identity` on n1. The
//! flow survives intact (no reset, every byte), n1 comes back under a new
//! ID with the same name, short ID and ranges, its peers know it only by
//! the new ID, and once the window (shortened here with
//! `WEFT_IDENTITY_ROTATION_WINDOW_SECS`) is over a router started with a
//! copy of the old `identity.key` is refused. And `--identity-max-age`: a
//! router restarted with a key older than the limit rotates it once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::flow::Flow;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// About 4 MB/s: enough to see every stall, light on 2 cores.
const RATE: u64 = 4 << 20;

/// The window in which peers still accept n1's old key.
const WINDOW_SECS: u64 = 8;

/// `(name, id)` of every peer `status` lists.
fn peers(status: &serde_json::Value) -> Vec<(String, String)> {
    status["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or("").to_string(),
                        p["id"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_rotated_router_keeps_its_flows_name_and_ranges_and_its_old_key_is_refused_after_the_window() {
    if !require_root("a_rotated_router_keeps_its_flows_name_and_ranges") {
        return;
    }
    let window = WINDOW_SECS.to_string();
    let mut cluster = Cluster::new(4);
    let mut routers = start_routers(
        Path::new(BIN),
        &mut cluster,
        3,
        |i| (0..3).filter(|j| *j != i).collect(),
        |_, r| {
            r.env = vec![("WEFT_IDENTITY_ROTATION_WINDOW_SECS".into(), window.clone())];
        },
    );
    let meshed = |routers: &[Router]| routers.iter().all(|r| r.established_peers() == 2);
    assert!(
        wait_until(Duration::from_secs(15), || meshed(&routers)),
        "the three routers did not mesh"
    );
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(
        a.wait_ping(b.addr, Duration::from_secs(5)),
        "pods not connected"
    );
    let before = routers[1].status().unwrap();
    let old_id = before["id"].as_str().unwrap().to_string();
    let old_key = cluster.dir.path.join("old-identity.key");
    std::fs::copy(routers[1].dir.join("state/identity.key"), &old_key).unwrap();

    let flow = Flow::start(a, b, 5311, RATE, Duration::from_secs(120));
    assert!(
        wait_until(Duration::from_secs(5), || flow.received() > RATE / 2),
        "the flow did not start"
    );
    let done = AtomicBool::new(false);
    let (stall, rotated_in) = std::thread::scope(|s| {
        let watch = s.spawn(|| flow.longest_stall(&done));
        let started = Instant::now();
        let out = run_timeout(
            Command::new(BIN)
                .args(["rotate-identity", "--api"])
                .arg(routers[1].api()),
            20,
        )
        .unwrap();
        assert!(
            out.status.success(),
            "weft rotate-identity: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(said.contains(&old_id), "{said}");
        // Back under a new ID, meshed again, the flow moving.
        let back = wait_until(Duration::from_secs(30), || {
            routers[1]
                .status()
                .is_some_and(|s| s["id"].as_str().is_some_and(|id| id != old_id))
                && meshed(&routers)
        });
        assert!(
            back,
            "n1 did not come back under a new ID:\n{}",
            routers[1].log_tail()
        );
        let at = flow.received();
        assert!(
            wait_until(Duration::from_secs(20), || flow.received() > at + RATE),
            "the flow did not move after the rotation"
        );
        let rotated_in = started.elapsed();
        done.store(true, Ordering::Relaxed);
        (watch.join().unwrap(), rotated_in)
    });
    let end = flow.finish().expect("the flow survived the rotation");
    assert_eq!(end.received, end.sent, "bytes lost or corrupted");

    let after = routers[1].status().unwrap();
    let new_id = after["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id);
    assert_eq!(after["name"], before["name"]);
    assert_eq!(after["short_id"], before["short_id"]);
    assert_eq!(
        after["ipam"]["owned_ranges"], before["ipam"]["owned_ranges"],
        "the ranges did not follow the key"
    );
    // The peers know n1 by its new ID only.
    for i in [0, 2] {
        let listed = wait_until(Duration::from_secs(10), || {
            let p = peers(&routers[i].status().unwrap_or_default());
            p.contains(&("n1".into(), new_id.clone())) && !p.iter().any(|(_, id)| *id == old_id)
        });
        assert!(
            listed,
            "n{i} does not list n1 under its new ID only: {:?}",
            peers(&routers[i].status().unwrap_or_default())
        );
    }
    assert!(a.ping(b.addr, 3), "pods not connected after the rotation");

    // After the window: a router holding the old key is refused.
    std::thread::sleep(Duration::from_secs(WINDOW_SECS + 1));
    let names = ["n0", "n1", "n2", "n3"];
    let mut thief = Router::new(
        Path::new(BIN),
        &cluster.nodes[3],
        &cluster.dir.path,
        &[cluster.nodes[0].underlay, cluster.nodes[2].underlay],
        &names,
    );
    let state = thief.dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::copy(&old_key, state.join("identity.key")).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    thief.start();
    assert_eq!(
        thief.status().unwrap()["id"].as_str(),
        Some(old_id.as_str())
    );
    let refused = |r: &Router| {
        r.status()
            .and_then(|s| s["handshakes"]["retired_key"].as_u64())
            .unwrap_or(0)
    };
    let seen = wait_until(Duration::from_secs(20), || {
        refused(&routers[0]) > 0 && refused(&routers[2]) > 0
    });
    assert!(
        seen,
        "the old key was not refused:\n{}\n{}",
        routers[0].log_tail(),
        thief.log_tail()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(thief.established_peers(), 0, "the old key got a link");
    for i in [0, 2] {
        assert!(
            !peers(&routers[i].status().unwrap())
                .iter()
                .any(|(_, id)| *id == old_id),
            "n{i} lists the old ID again"
        );
    }
    assert!(a.ping(b.addr, 3), "pods not connected at the end");
    thief.kill9();
    for r in &mut routers {
        r.kill9();
    }
    eprintln!(
        "{} MB intact across the rotation (longest stall {stall:?}, new ID meshed and the \
         flow moving {rotated_in:?} after the command); old key refused after the {WINDOW_SECS} s window",
        end.sent.0 >> 20
    );
}

#[test]
fn an_identity_older_than_its_max_age_is_rotated_once_at_start() {
    if !require_root("an_identity_older_than_its_max_age_is_rotated_once_at_start") {
        return;
    }
    let mut p = start_pair(Path::new(BIN), &[]);
    let r = &mut p.routers[1];
    let before = r.status().unwrap();
    let old_id = before["id"].as_str().unwrap().to_string();
    let created = r.dir.join("state/identity.created");
    let made: u64 = std::fs::read_to_string(&created)
        .expect("identity.created written at the first start")
        .trim()
        .parse()
        .unwrap();
    assert!(made > 1000);
    // Restarted with a key made long ago and --identity-max-age 1d.
    assert!(r.terminate(Duration::from_secs(10)).is_some());
    std::fs::write(&created, "1000\n").unwrap();
    r.args
        .extend(["--identity-max-age".to_string(), "1d".to_string()]);
    r.start();
    let rotated = wait_until(Duration::from_secs(30), || {
        r.status()
            .is_some_and(|s| s["id"].as_str().is_some_and(|id| id != old_id))
            && r.established_peers() == 1
    });
    assert!(rotated, "the old key was not rotated:\n{}", r.log_tail());
    let after = r.status().unwrap();
    let new_id = after["id"].as_str().unwrap().to_string();
    assert_eq!(after["name"], before["name"]);
    assert_eq!(after["short_id"], before["short_id"]);
    assert_eq!(
        after["ipam"]["owned_ranges"],
        before["ipam"]["owned_ranges"]
    );
    // The new key counts from its rotation: no second rotation.
    let made: u64 = std::fs::read_to_string(&created)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(made > 1000, "identity.created not renewed by the rotation");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(r.status().unwrap()["id"].as_str(), Some(new_id.as_str()));
    let (a, b) = (&p.cluster.pods[0], &p.cluster.pods[1]);
    assert!(
        a.wait_ping(b.addr, Duration::from_secs(10)),
        "pods not connected after the rotation"
    );
}
