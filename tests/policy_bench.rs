//! Benchmark of issue 18's throughput point (run by `bench/policy.sh`, not
//! by the suite): "throughput through a node carrying [1,000 policies over
//! 10,000 pods] within 5 % of one with none (same run)".
//!
//! Two routers with `--network-policy` watch a test API server holding the
//! scale case (`weft::policy::scale`: 10,000 pods in 100 namespaces, 100 of
//! them on each router's node, at addresses no real pod has). Two real pods
//! are plugged by the CNI plugin: `ns0/server` (app0) on node 0 and
//! `ns0/client` (app1) on node 1, so that ten of the 1,000 policies select
//! the server and let the client in on TCP 80. Then, alternately, the
//! policies are deleted (nothing is isolated) or put back (node 0's table
//! holds its 101 isolated pods), each time waited for in the kernel's map
//! and in both routers' status, then [`SETTLE`], and the client streams to
//! the server on TCP 80 for a few seconds.
//! Prints each round and one `policy-bench` line: the median Mbit/s of each
//! and their ratio (with / none).
//!
//! `WEFT_POLICY_BENCH_ROUNDS` (default 5, at most 10) rounds of
//! `WEFT_POLICY_BENCH_SECONDS` (default 4, at most 8) seconds per stream.
//! `WEFT_POLICY_BENCH_PIN=split` puts each node on a CPU of its own, as two
//! machines would be: node 0's router and the server's thread on CPU 0,
//! node 1's router and the client's thread on CPU 1 (unpinned, the
//! scheduler's placement of four busy threads on two CPUs picks between two
//! throughput modes from round to round, ~700 and ~1,800 Mbit/s on a quiet
//! machine, whatever the policies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};
use support::cni_mesh::*;
use support::fake_api::{COLLECTIONS, FakeApi};
use support::*;
use weft::policy::scale::{self, POLICIES};

const PORT: u16 = 80;
/// Pause after a change is in force on both routers, before streaming:
/// the last of their publishing and `nft` work off the measured cores.
const SETTLE: Duration = Duration::from_secs(1);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The CPUs (node 0's, node 1's) when `WEFT_POLICY_BENCH_PIN=split`.
fn pinned() -> Option<[&'static str; 2]> {
    (std::env::var("WEFT_POLICY_BENCH_PIN").as_deref() == Ok("split")).then_some(["0", "1"])
}

/// Pins the calling thread to `cpu` (`taskset` on its thread ID).
fn pin_this_thread(cpu: &str) {
    let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = me
        .file_name()
        .expect("a thread ID")
        .to_string_lossy()
        .into_owned();
    let out = Command::new("taskset")
        .args(["-p", "-c", cpu, &tid])
        .output()
        .expect("taskset");
    assert!(out.status.success(), "taskset: {out:?}");
}

/// Streams from `from` to `to:80` for `secs`: Mbit/s as the receiver saw
/// it (bytes over the time from accept to the end of the stream).
fn stream(from: &Netns, to_ns: &Netns, to: Ipv4Addr, secs: u64) -> f64 {
    let listen = SocketAddr::from((to, PORT));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(&to_ns.name, move || {
        if let Some([cpu, _]) = pinned() {
            pin_this_thread(cpu);
        }
        let listener = TcpListener::bind(listen).expect("bind port 80");
        ready_tx.send(()).unwrap();
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let began = Instant::now();
        let (mut buf, mut total) = (vec![0u8; 256 * 1024], 0u64);
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => panic!("receiving: {e}"),
            }
        }
        (total, began.elapsed())
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let client = in_netns(&from.name, move || {
        if let Some([_, cpu]) = pinned() {
            pin_this_thread(cpu);
        }
        let mut s = TcpStream::connect_timeout(&listen, Duration::from_secs(5)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let block = vec![0x5au8; 64 * 1024];
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(secs) {
            s.write_all(&block).expect("send");
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
    });
    client.join().unwrap();
    let (bytes, took) = server.join().unwrap();
    bytes as f64 * 8.0 / took.as_secs_f64() / 1e6
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Whether node 0's table sends the server's packets through its chain
/// (its address in the `ingress` verdict map).
fn server_isolated(node: &Netns, server: Ipv4Addr) -> bool {
    let out = node.exec(&["nft", "list", "map", "inet", "weft_policy", "ingress"]);
    String::from_utf8_lossy(&out.stdout).contains(&format!("{server} : jump"))
}

fn policy_status(r: &Router) -> Value {
    r.status().map(|s| s["policy"].clone()).unwrap_or_default()
}

#[test]
#[ignore = "benchmark: bench/policy.sh"]
fn throughput_with_a_thousand_policies_against_none() {
    if !require_root("throughput_with_a_thousand_policies_against_none") {
        return;
    }
    // Bounded: the test API server serves for 900 s.
    let rounds = env_or("WEFT_POLICY_BENCH_ROUNDS", 5).clamp(1, 10);
    let secs = env_or("WEFT_POLICY_BENCH_SECONDS", 4).clamp(1, 8);
    let [namespaces, pods, policies] = [COLLECTIONS[0], COLLECTIONS[1], COLLECTIONS[2]];
    let cluster = Cluster::new(2);
    let api_addr: SocketAddr = format!("{}:6443", cluster.nodes[0].underlay)
        .parse()
        .unwrap();
    let api = FakeApi::start(&cluster.nodes[0].ns.name, api_addr);
    // Fake pods at 10.48.0.1 … 10.48.39.250, outside the routers' range
    // 10.32.0.0/12 (one router's share starts at 10.40.0.0, where
    // the real pods would have clashed with fake ones), 100 on each real
    // node (n0, n1), the rest elsewhere. Only nft rules see them.
    let case = scale::scale_case(
        |i| Ipv4Addr::new(10, 48, (i / 250) as u8, (i % 250 + 1) as u8),
        |i| format!("n{}", i / 100),
    );
    for object in &case.namespaces {
        api.put(namespaces, &object.to_string());
    }
    for object in &case.pods {
        api.put(pods, &object.to_string());
    }
    let m = mesh_on(cluster, |r| {
        if let Some(cpus) = pinned() {
            let cpu = if r.name == "n0" { cpus[0] } else { cpus[1] };
            r.wrapper = vec!["taskset".into(), "-c".into(), cpu.into()];
        }
        r.args.push("--network-policy".into());
        r.args.push("--kube-api".into());
        r.args.push(format!("http://{api_addr}"));
    });
    let (server_ns, client_ns) = (Netns::new("server"), Netns::new("client"));
    let server = plug_k8s_pod(&m, 0, "ns0/server", &server_ns);
    let client = plug_k8s_pod(&m, 1, "ns0/client", &client_ns);
    api.put(
        pods,
        &scale::pod("ns0", "server", "app0", "n0", server).to_string(),
    );
    api.put(
        pods,
        &scale::pod("ns0", "client", "app1", "n1", client).to_string(),
    );
    let node0 = &m.cluster.nodes[0].ns;
    let synced = wait_until(Duration::from_secs(30), || {
        let p = policy_status(&m.routers[0]);
        p["synced"] == true && p["pods"].as_array().map(Vec::len) == Some(101)
    });
    assert!(synced, "{}", policy_status(&m.routers[0]));

    let set_policies = |with: bool| {
        let began = Instant::now();
        for object in &case.policies {
            if with {
                api.put(policies, &object.to_string());
            } else {
                let key = format!(
                    "{}/{}",
                    object["metadata"]["namespace"].as_str().unwrap(),
                    object["metadata"]["name"].as_str().unwrap()
                );
                api.delete(policies, &key);
            }
        }
        let want = if with { POLICIES as u64 } else { 0 };
        // Both routers, not only the server's: a stream must not share the
        // two cores with a router still compiling and applying the change.
        let applied = wait_until(Duration::from_secs(120), || {
            m.routers
                .iter()
                .all(|r| policy_status(r)["policies"].as_u64() == Some(want))
                && server_isolated(node0, server) == with
        });
        assert!(applied, "{}", policy_status(&m.routers[0]));
        let took = began.elapsed();
        std::thread::sleep(SETTLE);
        took
    };
    let (mut none, mut with) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate the order, so that a drift of the machine's load does
        // not favour one side.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for policies_on in order {
            let took = set_policies(policies_on);
            let mbit = stream(&client_ns, &server_ns, server, secs);
            eprintln!(
                "round {round}: {} policies (in force after {took:?}): {mbit:.0} Mbit/s",
                if policies_on { POLICIES } else { 0 }
            );
            if policies_on {
                // The connection went through the policies: the allowing
                // one counted its first packet.
                let status = policy_status(&m.routers[0]);
                let allowed: u64 = status["allowed"]
                    .as_object()
                    .map(|a| a.values().filter_map(|v| v[0].as_u64()).sum())
                    .unwrap_or(0);
                assert!(allowed > 0, "{status}");
                with.push(mbit);
            } else {
                none.push(mbit);
            }
        }
    }
    let (none, with) = (median(&mut none), median(&mut with));
    println!(
        "policy-bench rounds={rounds} seconds={secs} none={none:.0} with={with:.0} ratio={:.3}",
        with / none
    );
}
