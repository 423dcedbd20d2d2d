#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]
//! The CNI plugin (`weft-cni`, installed as `weft`): driven directly with the
//! CNI environment in network namespaces, then by real container runtimes
//! (podman with its CNI backend, containerd's `ctr`), against real `weft
//! router` processes. A few plumbing tests use a fake router API where they
//! must control its answers (not ready, down).

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::cni::*;
use support::cni_mesh::*;
use support::*;

/// A node namespace with a fake router API and an address to ping.
struct Bench {
    node: Netns,
    fake: FakeRouter,
    dir: TempDir,
}

fn bench() -> Bench {
    let dir = TempDir::new("cni");
    let node = Netns::new("node");
    // Something for pods to ping on the host side: the node's own address.
    node.ip(&["link", "add", "d0", "type", "bridge"]);
    node.ip(&["addr", "add", "192.0.2.1/32", "dev", "d0"]);
    node.ip(&["link", "set", "d0", "up"]);
    let fake = FakeRouter::start(&dir.path);
    Bench { node, fake, dir }
}

fn pod_ping(pod: &Netns, to: &str) -> bool {
    pod.exec(&["ping", "-c", "1", "-W", "2", to])
        .status
        .success()
}

// By layer: the plugin driven directly (spec versions, errors, undo, GC);
// pods plugged on routers of a real mesh; real container runtimes.
#[path = "cni/mesh.rs"]
mod mesh;
#[path = "cni/plumbing.rs"]
mod plumbing;
#[path = "cni/runtimes.rs"]
mod runtimes;
