//! The plugin as the kubelet runs it on an older host: the shipped
//! `weft-cni` (scripts/build-dist.sh: static, stripped) answers ADD, CHECK
//! and DEL inside a Debian 11 (bullseye, glibc 2.31) userland, against a
//! real router, and the pod it plugs in reaches its node; a binary linked
//! the ordinary (dynamic) way, the shipped router, does not even start
//! there, which shows that the userland is old enough to matter (issue 17,
//! point 3).
//! The pod named in `CNI_ARGS` is the one `weft status ipam` names.
//!
//! The bullseye root is debootstrapped once and cached outside the repo
//! (tests/support/rootfs.rs, scripts/build-rootfs.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use support::cni::output_text as text;
use support::rootfs::{self, InRoot};
use support::*;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// Runs `/opt/cni/bin/weft` in the root with the CNI environment of one
/// call and `conf` on stdin.
fn cni(root: &InRoot, node: &Netns, env: &[(&str, &str)], conf: &Value) -> Output {
    let mut cmd = root.command(&node.name, &["/opt/cni/bin/weft"]);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_IFNAME", "eth0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    support::cni::run_with_stdin(&mut cmd, conf.to_string().as_bytes())
}

#[test]
fn the_shipped_plugin_plugs_a_pod_in_on_debian_11() {
    let test = "the_shipped_plugin_plugs_a_pod_in_on_debian_11";
    let Some(dist) = rootfs::shipped_binaries(test) else {
        return;
    };
    let plugin = dist.join("weft-cni");
    if !require_root(test) {
        return;
    }
    let Some(bullseye) = rootfs::debian(test, "bullseye", "minbase", &[]) else {
        return;
    };
    let glibc = std::fs::read_dir(bullseye.join("lib/x86_64-linux-gnu"))
        .map(|d| d.flatten().any(|e| e.file_name() == "libc-2.31.so"))
        .unwrap_or(false);
    assert!(glibc, "{} is not a glibc 2.31 userland", bullseye.display());

    let cluster = Cluster::new(1);
    let mut router = Router::new(
        Path::new(WEFT),
        &cluster.nodes[0],
        &cluster.dir.path,
        &[],
        &["n0"],
    );
    router.start();
    let node = &cluster.nodes[0].ns;
    let pod = Netns::new("pod");
    let root = |bin: &Path| {
        InRoot::new(&bullseye)
            .tmpfs("/run")
            .tmpfs("/opt")
            .bind(Path::new("/run/netns"), "/run/netns")
            .bind(&router.dir, "/run/weft")
            .bind(bin, "/opt/cni/bin/weft")
    };
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "type": "weft",
        "socket": "/run/weft/weft.sock",
        "mtu": 0,
    });
    let netns = format!("/run/netns/{}", pod.name);

    // The control: a binary linked the ordinary way against the build
    // host's glibc (the shipped router, which stays dynamic) does not even
    // start here, so this userland is old enough to matter.
    let out = cni(
        &root(&dist.join("weft")),
        node,
        &[("CNI_COMMAND", "VERSION")],
        &conf,
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("GLIBC_2.3"),
        "a dynamically linked binary should need a newer glibc than bullseye's:\n{}",
        text(&out)
    );

    let shipped = root(&plugin);
    let out = cni(&shipped, node, &[("CNI_COMMAND", "VERSION")], &conf);
    assert!(out.status.success(), "VERSION: {}", text(&out));
    let ready = wait_until(Duration::from_secs(20), || {
        cni(&shipped, node, &[("CNI_COMMAND", "STATUS")], &json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft", "socket": "/run/weft/weft.sock"}))
            .status
            .success()
    });
    assert!(
        ready,
        "the router never became ready:\n{}",
        router.log_tail()
    );

    let add_env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "bullseye-1"),
        ("CNI_NETNS", netns.as_str()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=old-hosts;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=bullseye-1;K8S_POD_UID=6f1c0d2e-0000-4000-8000-000000000001",
        ),
    ];
    let out = cni(&shipped, node, &add_env, &conf);
    assert!(out.status.success(), "ADD: {}", text(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let address = result["ips"][0]["address"].as_str().unwrap().to_string();
    let pod_ip = address.split('/').next().unwrap().to_string();

    // The pod reaches its node's own overlay address (on weft0).
    let status = router.status().unwrap();
    let node_addr = status["ipam"]["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "node")
        .map(|a| a["address"].as_str().unwrap().to_string())
        .expect("the router's own address");
    let pinged = wait_until(Duration::from_secs(5), || {
        pod.exec(&["ping", "-c", "1", "-W", "1", &node_addr])
            .status
            .success()
    });
    assert!(pinged, "pod {pod_ip} cannot reach its node at {node_addr}");

    // `weft status ipam` names the pod kubelet named.
    let holder = status["ipam"]["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["address"] == pod_ip.as_str())
        .cloned()
        .expect("the pod's allocation");
    assert_eq!(holder["container_id"], "bullseye-1");
    assert_eq!(
        holder["pod"],
        json!({"namespace": "old-hosts", "name": "web-0", "uid": "6f1c0d2e-0000-4000-8000-000000000001"}),
        "{holder}"
    );
    let text_status = run_timeout(
        std::process::Command::new(WEFT)
            .args(["status", "ipam", "--api"])
            .arg(router.api()),
        10,
    )
    .unwrap();
    let shown = String::from_utf8_lossy(&text_status.stdout);
    assert!(
        shown
            .lines()
            .any(|l| l.contains(&pod_ip) && l.contains("old-hosts/web-0")),
        "{shown}"
    );

    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    let check_env = [
        ("CNI_COMMAND", "CHECK"),
        ("CNI_CONTAINERID", "bullseye-1"),
        ("CNI_NETNS", netns.as_str()),
    ];
    let out = cni(&shipped, node, &check_env, &check_conf);
    assert!(out.status.success(), "CHECK: {}", text(&out));

    let del_env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "bullseye-1"),
        ("CNI_NETNS", netns.as_str()),
    ];
    for round in 0..2 {
        let out = cni(&shipped, node, &del_env, &conf);
        assert!(out.status.success(), "DEL #{round}: {}", text(&out));
    }
    let after = router.status().unwrap();
    assert!(
        !after["ipam"]["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["address"] == pod_ip.as_str()),
        "DEL did not release {pod_ip}: {}",
        after["ipam"]
    );
    let left = support::cni::weft_veths(node);
    assert!(left.is_empty(), "veths left behind: {left:?}");
}
