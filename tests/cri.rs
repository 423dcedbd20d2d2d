#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Kubelet's own path (issue 17): containerd's CRI plugin driven as kubelet
//! drives it, through a client on the generated CRI bindings (`k8s-cri`,
//! runtime.v1), on netns nodes whose CNI config is the one the image's
//! entrypoint installs (`weft`, then `portmap`), against real routers.
//!
//! RunPodSandbox carries kubelet's metadata (the `io.kubernetes.pod.*`
//! labels, which containerd turns into `K8S_POD_*` CNI_ARGS), cluster DNS, a
//! hostPort and a plain pod's Linux security context; then
//! PodSandboxStatus, a container and ExecSync in it, StopPodSandbox twice and
//! RemovePodSandbox. A second test kills containerd while the plugin's ADD
//! is blocked (the test build's `WEFT_CNI_FAULT=hang-after-veth`) and does
//! what kubelet and a CNI 1.1 runtime do afterwards.
//!
//! Differences from a node, on purpose: containerd's root, state, socket and
//! CNI directories are per test (the host's are untouched), the native
//! snapshotter, and the pause image is busybox (no registry here).

mod support;

use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::cni::*;
use support::cni_mesh::*;
use support::cri::*;
use support::*;

const TOOLS: &[&str] = &[
    "containerd",
    "ctr",
    "runc",
    "podman",
    "nsenter",
    "iptables",
    "nft",
];

/// A command in node `ns`'s network namespace only (DESIGN.md "Test hosts").
fn in_node(ns: &Netns, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name)).args(args);
    run_timeout(&mut cmd, 20).expect("spawn nsenter")
}

/// The node's whole ruleset (portmap's iptables-nft chains included).
fn ruleset(ns: &Netns) -> String {
    String::from_utf8_lossy(&in_node(ns, &["nft", "list", "ruleset"]).stdout).into_owned()
}

/// What a sandbox may leave on its node: its allocation, its veth, its
/// route, a rule naming it (portmap's).
fn assert_nothing_left(m: &Mesh, node: usize, sandboxes: &[String]) {
    let ns = &m.cluster.nodes[node].ns;
    let released = wait_until(Duration::from_secs(10), || {
        allocations(&m.routers[node]).is_empty()
    });
    assert!(
        released,
        "left allocations: {:?}",
        allocations(&m.routers[node])
    );
    assert!(
        weft_veths(ns).is_empty(),
        "left veths: {:?}",
        weft_veths(ns)
    );
    assert!(
        pod_routes(ns).is_empty(),
        "left routes: {:?}",
        pod_routes(ns)
    );
    let rules = ruleset(ns);
    for id in sandboxes {
        assert!(
            !rules.contains(id.as_str()),
            "rules still name {id}:\n{rules}"
        );
    }
}

/// `GET /index.html` over plain TCP, bounded in time; the whole reply.
fn http_get(to: std::net::SocketAddr) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    s.take(64 * 1024).read_to_string(&mut reply)?;
    Ok(reply)
}

fn percentile_ms(mut samples: Vec<Duration>, p: f64) -> f64 {
    samples.sort();
    percentile(&samples, p).as_secs_f64() * 1000.0
}

/// Two nodes' containerds on the installed conflist, the image imported.
fn runtimes(m: &Mesh, dir: &Path, plugin: &Path, env: &[(&str, &str)]) -> Vec<CriRuntime> {
    let archive = busybox_oci_archive(dir, &m.cluster.nodes[0].ns, &m.routers[0].api());
    (0..m.routers.len())
        .map(|i| {
            let node_dir = dir.join(format!("node{i}"));
            let (bin, netd) = entrypoint_cni_dirs(&node_dir, plugin, &m.routers[i].api());
            let conf: Value =
                serde_json::from_slice(&std::fs::read(netd.join("10-weft.conflist")).unwrap())
                    .unwrap();
            assert_eq!(conf["plugins"][0]["type"], "weft");
            assert_eq!(conf["plugins"][1]["type"], "portmap", "{conf}");
            let rt = CriRuntime::start(
                &node_dir.join("containerd"),
                &m.cluster.nodes[i].ns,
                &bin,
                &netd,
                env,
            );
            rt.import(&archive);
            rt
        })
        .collect()
}

#[test]
fn kubelet_runs_pods_through_containerd_cri_that_reach_each_other_and_a_host_port() {
    if !require_root("cri") || !require_tools("cri", TOOLS) {
        return;
    }
    let m = mesh(2);
    let dir = TempDir::new("cri");
    let logs = dir.path.join("pods");
    let rts = runtimes(&m, &dir.path, &plugin_bin(), &[]);
    let mut cris: Vec<Cri> = rts
        .iter()
        .map(|r| Cri::connect(&r.socket()).expect("CRI client"))
        .collect();

    // web-0 on n0 publishes hostPort 30080; web-1 on n1 has no hostPort.
    let mut pods = Vec::new();
    for i in 0..2 {
        let name = format!("web-{i}");
        let uid = format!("0c0ffee0-0000-4000-8000-00000000000{i}");
        let port = (i == 0).then_some((8080, 30080));
        let cfg = pod_config("default", &name, &uid, port, &logs);
        let cri = &mut cris[i];
        let sandbox = cri
            .run_sandbox(&cfg)
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", rts[i].log_tail()));
        let status = cri.sandbox_status(&sandbox).expect("PodSandboxStatus");
        assert_eq!(
            status.state,
            k8s_cri::v1::PodSandboxState::SandboxReady as i32
        );
        let ip: Ipv4Addr = status
            .network
            .as_ref()
            .map(|n| n.ip.parse().expect("an IPv4 address"))
            .expect("a network status");
        let overlay = u32::from(ip) & 0xfff0_0000 == u32::from(Ipv4Addr::new(10, 32, 0, 0));
        assert!(overlay, "{name} got {ip}, outside 10.32.0.0/12");
        let web = container_config(
            &cfg,
            "web",
            &[
                "sh",
                "-c",
                "echo weft-hostport >/tmp/index.html && exec httpd -f -p 8080 -h /tmp",
            ],
        );
        let container = cri
            .start_container(&sandbox, web, &cfg)
            .unwrap_or_else(|e| panic!("container in {name}: {e}\n{}", rts[i].log_tail()));
        // `weft status ipam` names the pod kubelet named.
        let text = Command::new(weft_bin())
            .args(["status", "ipam", "--api"])
            .arg(m.routers[i].api())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.lines()
                .any(|l| l.contains(&ip.to_string()) && l.contains(&format!("default/{name}"))),
            "weft status ipam does not name default/{name} at {ip}:\n{text}"
        );
        pods.push((sandbox, container, ip));
    }

    // DNS config reached the pod; pods reach each other across nodes.
    let (code, resolv) = cris[0]
        .exec_sync(&pods[0].1, &["cat", "/etc/resolv.conf"])
        .unwrap();
    assert_eq!(code, 0, "{resolv}");
    assert!(resolv.contains("nameserver 203.0.113.53"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local"),
        "{resolv}"
    );
    for (from, to) in [(0, 1), (1, 0)] {
        let target = pods[to].2.to_string();
        let ok = wait_until(Duration::from_secs(10), || {
            cris[from]
                .exec_sync(&pods[from].1, &["ping", "-c", "1", "-W", "1", &target])
                .is_ok_and(|(code, _)| code == 0)
        });
        assert!(ok, "web-{from} cannot reach web-{to} at {target}");
    }
    // The hostPort answers from the other node (portmap, chained): an HTTP
    // GET from n1's own namespace to n0's address.
    let target = std::net::SocketAddr::from((m.cluster.nodes[0].underlay, 30080));
    let mut last = String::new();
    let answered = wait_until(Duration::from_secs(10), || {
        let got = in_netns(&m.cluster.nodes[1].ns.name, move || http_get(target))
            .join()
            .unwrap();
        last = format!("{got:?}");
        got.is_ok_and(|body| body.contains("weft-hostport"))
    });
    assert!(
        answered,
        "hostPort 30080 on n0 did not answer from n1: {last}"
    );

    // Teardown as kubelet does it: StopPodSandbox (twice: it must be
    // idempotent), RemovePodSandbox.
    for (i, (sandbox, _, _)) in pods.iter().enumerate() {
        cris[i].stop_sandbox(sandbox).expect("StopPodSandbox");
        cris[i].stop_sandbox(sandbox).expect("StopPodSandbox again");
        cris[i].remove_sandbox(sandbox).expect("RemovePodSandbox");
        assert!(cris[i].sandboxes().unwrap().is_empty());
        assert_nothing_left(&m, i, std::slice::from_ref(sandbox));
    }

    // RunPodSandbox's latency with weft as the pod network, p50 of a few.
    let mut took = Vec::new();
    let mut ids = Vec::new();
    for k in 0..5 {
        let cfg = pod_config(
            "bench",
            &format!("p{k}"),
            &format!("uid-bench-{k}"),
            None,
            &logs,
        );
        let started = Instant::now();
        ids.push(cris[0].run_sandbox(&cfg).expect("RunPodSandbox"));
        took.push(started.elapsed());
    }
    for id in &ids {
        cris[0].stop_sandbox(id).unwrap();
        cris[0].remove_sandbox(id).unwrap();
    }
    eprintln!(
        "RunPodSandbox with weft: p50 {:.0} ms, max {:.0} ms over {}",
        percentile_ms(took.clone(), 0.5),
        percentile_ms(took.clone(), 1.0),
        took.len()
    );
    assert_nothing_left(&m, 0, &ids);
}

/// The PID of a process running `exe`, if any.
fn process_running(exe: &Path) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
        (std::fs::read_link(e.path().join("exe")).ok()? == exe).then_some(pid)
    })
}

/// One variable of a process's environment.
fn environ_var(pid: u32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(&format!("{key}=")).map(String::from)
    })
}

#[test]
fn a_containerd_killed_mid_add_leaves_nothing_after_kubelet_style_cleanup() {
    if !require_root("cri_killed") || !require_tools("cri_killed", TOOLS) {
        return;
    }
    let m = mesh(1);
    let dir = TempDir::new("cri-killed");
    let logs = dir.path.join("pods");
    let mut rts = runtimes(
        &m,
        &dir.path,
        &fault_plugin_bin(),
        &[("WEFT_CNI_FAULT", "hang-after-veth")],
    );
    let node = &m.cluster.nodes[0].ns;
    let cfg = pod_config(
        "default",
        "crash-0",
        "uid-crash-0",
        Some((8080, 30081)),
        &logs,
    );

    // RunPodSandbox blocks inside the plugin's ADD, the veth made and the
    // address allocated; then containerd and the plugin die (SIGKILL).
    let socket = rts[0].socket();
    let run_cfg = cfg.clone();
    let blocked = std::thread::spawn(move || {
        Cri::connect(&socket).map(|mut c| c.run_sandbox(&run_cfg).map_err(|e| e.to_string()))
    });
    let plugin = dir.path.join("node0/cni-bin/weft");
    let mut pid = None;
    let mid_add = wait_until(Duration::from_secs(30), || {
        pid = process_running(&plugin);
        pid.is_some() && !weft_veths(node).is_empty() && !allocations(&m.routers[0]).is_empty()
    });
    assert!(mid_add, "ADD never got halfway:\n{}", rts[0].log_tail());
    let pid = pid.unwrap();
    let netns = environ_var(pid, "CNI_NETNS");
    rts[0].kill9();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let outcome = blocked.join().unwrap();
    assert!(
        !matches!(outcome, Some(Ok(_))),
        "RunPodSandbox succeeded although containerd died: {outcome:?}"
    );
    let held = allocations(&m.routers[0]);
    assert_eq!(held.len(), 1, "{held:?}");
    let stale = held[0].container_id.clone();

    // Kubelet after the runtime comes back: stop and remove the sandboxes
    // it finds not ready, then run the pod again (a new attempt).
    rts[0].restart();
    let mut cri = Cri::connect(&rts[0].socket()).unwrap();
    for s in cri.sandboxes().unwrap() {
        cri.stop_sandbox(&s.id).unwrap();
        cri.remove_sandbox(&s.id).unwrap();
    }
    let mut retry = cfg.clone();
    retry.metadata.as_mut().unwrap().attempt = 1;
    let sandbox = cri
        .run_sandbox(&retry)
        .unwrap_or_else(|e| panic!("RunPodSandbox again: {e}\n{}", rts[0].log_tail()));
    // containerd 1.6 never calls CNI GC: a CNI 1.1 runtime's GC, with the
    // sandboxes the runtime knows as valid attachments, releases what the
    // killed ADD left (allocation and veth) and keeps the live pod.
    let valid: Vec<Value> = cri
        .sandboxes()
        .unwrap()
        .iter()
        .map(|s| json!({"containerID": s.id, "ifname": "eth0"}))
        .collect();
    let mut gc = net_conf("1.1.0", &m.routers[0].api());
    gc["cni.dev/valid-attachments"] = Value::Array(valid);
    invoke(node, &Call::new("GC", "", ""), &gc).ok();
    let held = allocations(&m.routers[0]);
    assert_eq!(held.len(), 1, "GC kept {held:?}");
    assert_eq!(held[0].container_id, sandbox, "GC kept the stale {stale}");
    assert_eq!(weft_veths(node).len(), 1, "{:?}", weft_veths(node));

    cri.stop_sandbox(&sandbox).unwrap();
    cri.stop_sandbox(&sandbox).unwrap();
    cri.remove_sandbox(&sandbox).unwrap();
    assert_nothing_left(&m, 0, &[sandbox, stale]);
    // The killed ADD's namespace is containerd's to remove, and 1.6 never
    // does: unmount and delete it so the test leaves nothing either.
    if let Some(ns) = netns {
        let _ = Command::new("umount").arg(&ns).status();
        let _ = std::fs::remove_file(&ns);
    }
    drop(cri);
    rts.clear();
}

#[test]
fn kubelet_gets_both_pod_ips_ipv4_first_and_dual_stack_pods_reach_each_other_over_both() {
    if !require_root("cri_dual") || !require_tools("cri_dual", TOOLS) {
        return;
    }
    let m = support::dual_pods::dual_stack_mesh(2, |_| {});
    let dir = TempDir::new("cri-dual");
    let logs = dir.path.join("pods");
    let rts = runtimes(&m, &dir.path, &plugin_bin(), &[]);
    let mut cris: Vec<Cri> = rts
        .iter()
        .map(|r| Cri::connect(&r.socket()).expect("CRI client"))
        .collect();
    let mut pods = Vec::new();
    for i in 0..2 {
        let name = format!("dual-{i}");
        let cfg = pod_config("default", &name, &format!("uid-dual-{i}"), None, &logs);
        let cri = &mut cris[i];
        let sandbox = cri
            .run_sandbox(&cfg)
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", rts[i].log_tail()));
        // What kubelet turns into status.podIPs: the IPv4 address first,
        // then the IPv6 one.
        let network = cri
            .sandbox_status(&sandbox)
            .expect("PodSandboxStatus")
            .network
            .expect("a network status");
        let v4: Ipv4Addr = network.ip.parse().expect("IPv4 first");
        let more: Vec<&str> = network
            .additional_ips
            .iter()
            .map(|p| p.ip.as_str())
            .collect();
        assert_eq!(more.len(), 1, "{name}: {more:?}");
        let v6: std::net::Ipv6Addr = more[0].parse().expect("then IPv6");
        assert!(v6.segments()[..7] == [0xfd00, 0x32, 0, 0, 0, 0, 0], "{v6}");
        let held = allocations(&m.routers[i]);
        assert!(
            held.iter().any(|a| a.address == v4.to_string()
                && a.ipv6.as_ref().is_some_and(|x| x.address == v6.to_string())),
            "{name}: {v4} {v6}, the router holds {held:?}"
        );
        let app = container_config(&cfg, "app", &["sleep", "300"]);
        let container = cri
            .start_container(&sandbox, app, &cfg)
            .unwrap_or_else(|e| panic!("container in {name}: {e}\n{}", rts[i].log_tail()));
        pods.push((sandbox, container, v4.to_string(), v6.to_string()));
    }
    for (from, to) in [(0, 1), (1, 0)] {
        for (ping, target) in [("ping", &pods[to].2), ("ping6", &pods[to].3)] {
            let ok = wait_until(Duration::from_secs(10), || {
                cris[from]
                    .exec_sync(&pods[from].1, &[ping, "-c", "1", "-W", "1", target])
                    .is_ok_and(|(code, _)| code == 0)
            });
            assert!(ok, "dual-{from} cannot reach dual-{to} at {target}");
        }
    }
    for (i, (sandbox, _, _, _)) in pods.iter().enumerate() {
        cris[i].stop_sandbox(sandbox).expect("StopPodSandbox");
        cris[i].remove_sandbox(sandbox).expect("RemovePodSandbox");
        assert_nothing_left(&m, i, std::slice::from_ref(sandbox));
        let ns = &m.cluster.nodes[i].ns;
        assert!(pod_routes6(ns).is_empty(), "{:?}", pod_routes6(ns));
    }
}
