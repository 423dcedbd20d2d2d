#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]
//! NetworkPolicy enforced on real packets (issue 18): three real routers
//! with `--network-policy` watching a test API server that speaks
//! list/watch, nine pods in namespaces x, y, z plugged by the CNI plugin
//! with the `K8S_POD_*` arguments kubelet passes, listeners on TCP and UDP
//! 80 and 81 in each pod, and upstream's cases probed as full 81-pair
//! matrices over the mesh, compared with the expected matrices the
//! compiler's truth tables check too (`weft::policy::conformance`).

mod support;

use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::cni::*;
use support::cni_mesh::*;
use support::fake_api::{COLLECTIONS, FakeApi};
use support::*;
use weft::policy::Proto;
use weft::policy::conformance::{
    self, Action, Matrix, N, NAMESPACES, namespace_object, pod_labels, pod_object, policy_object,
};

const NAMESPACE_PATH: &str = COLLECTIONS[0];
const POD_PATH: &str = COLLECTIONS[1];
const POLICY_PATH: &str = COLLECTIONS[2];

/// The nine pods: their namespaces, addresses and listeners.
struct Pods {
    ns: Vec<Netns>,
    ips: Vec<Ipv4Addr>,
    stop: Arc<AtomicBool>,
}

impl Drop for Pods {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Pod `i` (x/a = 0 … z/c = 8) runs on node `i % 3`.
fn node_of(i: usize) -> usize {
    i % 3
}

/// Plugs the nine pods with the CNI plugin and starts their listeners:
/// TCP 80 and 81 accept, UDP 80 and 81 echo (bounded: 300 s at most).
fn plug_pods(m: &Mesh) -> Pods {
    let stop = Arc::new(AtomicBool::new(false));
    let mut ns = Vec::new();
    let mut ips = Vec::new();
    for (i, name) in conformance::names().iter().enumerate() {
        let (namespace, pod) = name.split_once('/').unwrap();
        let netns = Netns::new(&format!("{namespace}{pod}"));
        let stop = stop.clone();
        let ready = in_netns(&netns.name, move || listen(&stop, &AtomicUsize::new(0)));
        drop(ready);
        ips.push(plug_k8s_pod(m, node_of(i), name, &netns));
        ns.push(netns);
    }
    Pods { ns, ips, stop }
}

/// The listeners of one pod, polled (non-blocking) until `stop`; `heard`
/// counts the connections and datagrams that reached them.
fn listen(stop: &AtomicBool, heard: &AtomicUsize) {
    let any = Ipv4Addr::UNSPECIFIED;
    let tcp: Vec<TcpListener> = [80, 81]
        .iter()
        .map(|p| TcpListener::bind((any, *p)).unwrap())
        .collect();
    let udp: Vec<UdpSocket> = [80, 81]
        .iter()
        .map(|p| UdpSocket::bind((any, *p)).unwrap())
        .collect();
    for l in &tcp {
        l.set_nonblocking(true).unwrap();
    }
    for u in &udp {
        u.set_nonblocking(true).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let mut idle = true;
        for l in &tcp {
            if let Ok((s, _)) = l.accept() {
                drop(s);
                heard.fetch_add(1, Ordering::SeqCst);
                idle = false;
            }
        }
        for u in &udp {
            if let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
                heard.fetch_add(1, Ordering::SeqCst);
                idle = false;
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Whether `from`'s pod reaches `to:port` over `proto` (bounded: 1 s).
fn reaches(proto: Proto, to: SocketAddr, wait: Duration) -> bool {
    match proto {
        Proto::Udp => {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            socket.connect(to).unwrap();
            socket.set_read_timeout(Some(wait / 3)).unwrap();
            let mut buf = [0u8; 8];
            (0..3).any(|_| socket.send(b"probe").is_ok() && socket.recv(&mut buf).is_ok())
        }
        _ => TcpStream::connect_timeout(&to, wait).is_ok(),
    }
}

/// Probes all 72 pairs at once, each from inside its source pod.
fn probe(pods: &Pods, proto: Proto, port: u16) -> Matrix {
    let mut threads = Vec::new();
    for f in 0..N {
        for t in 0..N {
            if f == t {
                continue;
            }
            let to = SocketAddr::from((pods.ips[t], port));
            let thread = in_netns(&pods.ns[f].name, move || {
                reaches(proto, to, Duration::from_millis(900))
            });
            threads.push((f, t, thread));
        }
    }
    let mut m = Matrix::all_allowed();
    for (f, t, thread) in threads {
        m.0[f][t] = thread.join().unwrap();
    }
    m
}

/// Probes until the matrix is the expected one (enforcement is eventually
/// consistent: the watch event, the compile, the nft transaction), or
/// fails after 10 s printing both tables.
fn expect_matrix(pods: &Pods, case: &str, proto: Proto, port: u16, expected: &Matrix) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = probe(pods, proto, port);
        if !got.differs(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{case}, {} {port}: expected\n{}observed\n{}",
            proto.as_str(),
            expected.table(),
            got.table()
        );
    }
}

/// The pods and namespaces as the API server shows them, upstream's labels.
fn publish_objects(api: &FakeApi, pods: &Pods) {
    for ns in NAMESPACES {
        api.put(NAMESPACE_PATH, &namespace_object(ns, ""));
    }
    for i in 0..N {
        let node = format!("n{}", node_of(i));
        api.put(POD_PATH, &pod_object(i, pods.ips[i], &node, &pod_labels(i)));
    }
}

fn apply(api: &FakeApi, pods: &Pods, action: &Action) {
    match action {
        Action::Policy(ns, name, spec) => {
            let spec = conformance::expand(spec, |i| pods.ips[i]);
            api.put(POLICY_PATH, &policy_object(ns, name, &spec));
        }
        Action::DeletePolicy(ns, name) => api.delete(POLICY_PATH, &format!("{ns}/{name}")),
        Action::PodLabels(pod, extra) => {
            let i = conformance::index(pod).unwrap();
            let labels = format!("{}{extra}", pod_labels(i));
            let node = format!("n{}", node_of(i));
            api.put(POD_PATH, &pod_object(i, pods.ips[i], &node, &labels));
        }
        Action::NamespaceLabels(ns, extra) => api.put(NAMESPACE_PATH, &namespace_object(ns, extra)),
    }
}

/// Back to no policy and upstream's labels.
fn reset(api: &FakeApi, pods: &Pods) {
    for key in api.keys(POLICY_PATH) {
        api.delete(POLICY_PATH, &key);
    }
    publish_objects(api, pods);
}

fn policy_status(r: &Router) -> Value {
    r.status().map(|s| s["policy"].clone()).unwrap_or_default()
}

fn policy_text(r: &Router, pod: &str) -> String {
    let out = std::process::Command::new(weft_bin())
        .args(["status", "policy", pod, "--api"])
        .arg(r.api())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pod_entry<'a>(status: &'a Value, pod: &str) -> &'a Value {
    status["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["pod"] == pod))
        .unwrap_or(&Value::Null)
}

/// List requests the API server has seen.
fn lists(api: &FakeApi) -> usize {
    let requests = api.requests.lock().unwrap();
    requests.iter().filter(|r| r.contains("limit=")).count()
}

#[test]
fn network_policy_is_enforced_on_real_packets_through_the_mesh() {
    if !require_root("policy") {
        return;
    }
    let started = Instant::now();
    let cluster = Cluster::new(3);
    let api_addr: SocketAddr = format!("{}:6443", cluster.nodes[0].underlay)
        .parse()
        .unwrap();
    let mut api = FakeApi::start(&cluster.nodes[0].ns.name, api_addr);
    let m = mesh_on(cluster, |r| {
        r.args.push("--network-policy".into());
        r.args.push("--kube-api".into());
        r.args.push(format!("http://{api_addr}"));
    });
    let pods = plug_pods(&m);
    publish_objects(&api, &pods);
    // Everyone reaches everyone with no policy (the mesh is up, the
    // listeners listen, the routers have listed).
    expect_matrix(&pods, "no policy", Proto::Tcp, 80, &Matrix::all_allowed());
    for r in &m.routers {
        let p = policy_status(r);
        assert_eq!(p["synced"], true, "{p}");
        assert_eq!(p["pods"].as_array().map(Vec::len), Some(3), "{p}");
    }
    let setup = started.elapsed();
    eprintln!("setup (mesh, nine pods, first matrix): {setup:?}");

    let probing = Instant::now();
    let lists_before = lists(&api);
    for (k, case) in conformance::cases().iter().enumerate() {
        // Faults on the way: a 410 before one case, cut streams before another.
        match k {
            2 => api.gone(),
            4 => api.disconnect(),
            _ => {}
        }
        reset(&api, &pods);
        for step in &case.steps {
            for action in &step.actions {
                apply(&api, &pods, action);
            }
            for (proto, port, expected) in &step.probes {
                expect_matrix(&pods, case.name, *proto, *port, expected);
            }
        }
        eprintln!("case {k} {:?} done at {:?}", case.name, started.elapsed());
        match k {
            // The drops show in x/a's counters, named by its namespace's
            // default deny; the allowing policy counts what it let in.
            0 => {
                let status = policy_status(&m.routers[0]);
                let xa = pod_entry(&status, "x/a");
                assert!(xa["denied_in"].as_u64().unwrap_or(0) > 0, "{status}");
                assert_eq!(xa["ingress"][0], "x/deny-ingress", "{status}");
                let text = policy_text(&m.routers[0], "x/a");
                assert!(text.contains("default deny of x dropped"), "{text}");
                assert!(text.contains("x/deny-ingress"), "{text}");
                drops_are_logged_with_both_pods_and_the_port(&m, &pods);
            }
            1 => {
                let status = policy_status(&m.routers[0]);
                let allowed = &status["allowed"]["x/allow-client-a-via-ns-selector"];
                assert!(allowed[0].as_u64().unwrap_or(0) > 0, "{status}");
            }
            _ => {}
        }
    }
    let lists_after = lists(&api);
    assert!(
        lists_after > lists_before,
        "the 410 made no router list again"
    );
    let cases_took = probing.elapsed();

    // The API server is killed: the rules stay, status says stale; a change
    // made meanwhile is enforced once it is back.
    reset(&api, &pods);
    let deny = policy_object(
        "x",
        "deny-ingress",
        r#"{"podSelector":{},"policyTypes":["Ingress"]}"#,
    );
    api.put(POLICY_PATH, &deny);
    let denied = Matrix::all_allowed().expect("", "x", false);
    expect_matrix(&pods, "before the API server dies", Proto::Tcp, 80, &denied);
    api.stop();
    let stale = wait_until(Duration::from_secs(10), || {
        m.routers
            .iter()
            .all(|r| !policy_status(r)["stale_since"].is_null())
    });
    assert!(stale, "{}", policy_status(&m.routers[0]));
    assert!(policy_text(&m.routers[0], "x/a").contains("stale since"));
    expect_matrix(&pods, "API server down", Proto::Tcp, 80, &denied);
    // Someone deletes the table (`nft flush ruleset`, a firewall reload):
    // the router puts it back from what it holds, API server or not.
    let node0 = &m.cluster.nodes[0].ns;
    node0.ok(&["nft", "delete", "table", "inet", "weft_policy"]);
    let back = wait_until(Duration::from_secs(5), || {
        node0
            .exec(&["nft", "list", "chain", "inet", "weft_policy", "forward"])
            .status
            .success()
    });
    assert!(back, "the deleted policy table was not put back within 5 s");
    assert!(
        policy_status(&m.routers[0])["repaired"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    expect_matrix(&pods, "table deleted and put back", Proto::Tcp, 80, &denied);
    api.delete(POLICY_PATH, "x/deny-ingress");
    api.resume();
    expect_matrix(
        &pods,
        "API server back",
        Proto::Tcp,
        80,
        &Matrix::all_allowed(),
    );
    let fresh = wait_until(Duration::from_secs(10), || {
        m.routers
            .iter()
            .all(|r| policy_status(r)["stale_since"].is_null())
    });
    assert!(fresh, "{}", policy_status(&m.routers[0]));

    // From a policy change at the API to enforcement, over 100 changes:
    // y/b (node 1) to x/a (node 0) on TCP 80, closed and opened in turn.
    let (from, to) = (conformance::index("y/b").unwrap(), 0);
    let target = SocketAddr::from((pods.ips[to], 80));
    let mut latencies = Vec::new();
    for round in 0..100 {
        let closing = round % 2 == 0;
        let began = Instant::now();
        if closing {
            api.put(POLICY_PATH, &deny);
        } else {
            api.delete(POLICY_PATH, "x/deny-ingress");
        }
        let flipped = in_netns(&pods.ns[from].name, move || {
            while began.elapsed() < Duration::from_secs(5) {
                let open = reaches(Proto::Tcp, target, Duration::from_millis(40));
                if open != closing {
                    return Some(began.elapsed());
                }
            }
            None
        })
        .join()
        .unwrap();
        latencies.push(flipped.expect("a policy change was not enforced within 5 s"));
    }
    latencies.sort();
    let apply_ms = policy_status(&m.routers[0])["last_apply_ms"].clone();
    eprintln!(
        "policy change at the API to enforcement over {} changes: p50 {:?}, p99 {:?}, max {:?} (nft apply {apply_ms} ms); setup {setup:?}, {} cases probed in {cases_took:?}, total {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
        conformance::cases().len(),
        started.elapsed()
    );
    assert!(percentile(&latencies, 0.99) < Duration::from_secs(1));

    a_new_pod_is_closed_until_the_api_shows_it(&api, &m, &pods);
}

/// The drop log (NFLOG): y/b (node 1) tries x/a (node 0) on TCP 81 and
/// UDP 80 while x's default deny holds; x/a's router logs a line per
/// attempt naming both pods with their addresses, the protocol and port,
/// the direction and the deciding rule.
fn drops_are_logged_with_both_pods_and_the_port(m: &Mesh, pods: &Pods) {
    let status = policy_status(&m.routers[0]);
    assert_eq!(status["drop_log"]["source"], "NFLOG group 6783", "{status}");
    let yb = conformance::index("y/b").unwrap();
    let (xa, from) = (pods.ips[0], pods.ips[yb]);
    for (proto, port) in [(Proto::Tcp, 81), (Proto::Udp, 80)] {
        let expected = format!(
            "denied ingress to x/a ({xa}) from y/b ({from}) {} port {port}: default deny of x (isolated by x/deny-ingress)",
            proto.as_str().to_uppercase()
        );
        // Tried until the line shows (bounded: 10 s), as the log lines are
        // rate-limited and the probes of the matrix came just before.
        let logged = wait_until(Duration::from_secs(10), || {
            let to = SocketAddr::from((xa, port));
            let denied = in_netns(&pods.ns[yb].name, move || {
                !reaches(proto, to, Duration::from_millis(300))
            });
            assert!(denied.join().unwrap(), "y/b reached x/a:{port}");
            std::fs::read_to_string(m.routers[0].log_path())
                .is_ok_and(|log| log.contains(&expected))
        });
        assert!(
            logged,
            "no line {expected:?} in\n{}",
            m.routers[0].log_tail()
        );
    }
    let lines = policy_status(&m.routers[0])["drop_log"]["lines"].as_u64();
    assert!(lines.unwrap_or(0) >= 2, "{}", policy_status(&m.routers[0]));
}

/// A new pod in a default-deny namespace, plugged by CNI ADD before the API
/// server shows it: no packet reaches it in between (the router knows it
/// from its allocation), and once the API shows it with its labels, what
/// its policies allow flows.
fn a_new_pod_is_closed_until_the_api_shows_it(api: &FakeApi, m: &Mesh, pods: &Pods) {
    reset(api, pods);
    let allow = r#"{"podSelector":{"matchLabels":{"pod":"d"}},"ingress":[{"from":[
        {"namespaceSelector":{"matchLabels":{"ns":"y"}},"podSelector":{"matchLabels":{"pod":"b"}}}]}]}"#;
    api.put(POLICY_PATH, &policy_object("x", "allow-d-from-y-b", allow));
    let deny = r#"{"podSelector":{},"policyTypes":["Ingress"]}"#;
    api.put(POLICY_PATH, &policy_object("x", "deny-ingress", deny));
    let denied = Matrix::all_allowed().expect("", "x", false);
    expect_matrix(pods, "default deny in x", Proto::Tcp, 80, &denied);

    let netns = Netns::new("xd");
    let heard = Arc::new(AtomicUsize::new(0));
    let (stop, counter) = (pods.stop.clone(), heard.clone());
    drop(in_netns(&netns.name, move || listen(&stop, &counter)));
    let ip = plug_k8s_pod(m, 0, "x/d", &netns);
    // The window: the address exists, the API does not show it. y/b (node
    // 1, which the policy will allow) and x/a (node 0) send all the while.
    let senders: Vec<_> = ["y/b", "x/a"]
        .iter()
        .map(|from| {
            let from = conformance::index(from).unwrap();
            in_netns(&pods.ns[from].name, move || {
                let (began, mut sent) = (Instant::now(), 0);
                while began.elapsed() < Duration::from_secs(3) {
                    for proto in [Proto::Udp, Proto::Tcp] {
                        sent += 1;
                        reaches(
                            proto,
                            SocketAddr::from((ip, 80)),
                            Duration::from_millis(150),
                        );
                    }
                }
                sent
            })
        })
        .collect();
    let status = policy_status(&m.routers[0]);
    let sent: usize = senders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(sent > 10, "only {sent} probes sent");
    assert_eq!(
        heard.load(Ordering::SeqCst),
        0,
        "packets reached x/d before the API showed it"
    );
    let pending = pod_entry(&status, "x/d");
    assert_eq!(pending["ips"][0], ip.to_string(), "{status}");
    assert!(
        pending["ingress"].as_array().is_some_and(|p| !p.is_empty()),
        "{status}"
    );

    // The API shows it: y/b gets in, x/a still not.
    let object = format!(
        r#"{{"kind":"Pod","metadata":{{"name":"d","namespace":"x","labels":{{"pod":"d"}}}},"spec":{{"nodeName":"n0"}},"status":{{"phase":"Running","podIP":"{ip}"}}}}"#
    );
    api.put(POD_PATH, &object);
    let yb = conformance::index("y/b").unwrap();
    let reached = in_netns(&pods.ns[yb].name, move || {
        wait_until(Duration::from_secs(30), || {
            reaches(
                Proto::Tcp,
                SocketAddr::from((ip, 80)),
                Duration::from_millis(300),
            )
        })
    });
    assert!(reached.join().unwrap(), "{}", m.routers[0].log_tail());
    let xa = in_netns(&pods.ns[0].name, move || {
        reaches(
            Proto::Tcp,
            SocketAddr::from((ip, 80)),
            Duration::from_millis(900),
        )
    });
    assert!(!xa.join().unwrap(), "x/a reached x/d, which only y/b may");

    let mut del = Call::new("DEL", "cid-x-d", &netns_path(&netns));
    del.extra_env.push((
        "CNI_ARGS".into(),
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=d".into(),
    ));
    let conf = net_conf("1.0.0", &m.routers[0].api());
    invoke(&m.cluster.nodes[0].ns, &del, &conf).ok();
    api.delete(POD_PATH, "x/d");
}

/// A dual-stack pod plugged with the `K8S_POD_*` arguments: both addresses.
fn plug_dual_pod(m: &Mesh, node: usize, name: &str, netns: &Netns) -> (Ipv4Addr, Ipv6Addr) {
    let result = plug_k8s_pod_result(m, node, name, netns);
    let address = |i: usize| {
        let text = result["ips"][i]["address"].as_str().unwrap();
        text.split_once('/').unwrap().0.to_string()
    };
    (address(0).parse().unwrap(), address(1).parse().unwrap())
}

/// Whether a TCP connection from inside `from` to `to` is accepted (0.5 s).
fn connects(from: &Netns, to: SocketAddr) -> bool {
    in_netns(&from.name, move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_ok()
    })
    .join()
    .unwrap()
}

/// Probes until `from` reaches `to` or not as `open` says (10 s at most).
#[track_caller]
fn expect_reach(case: &str, from: &Netns, to: SocketAddr, open: bool) {
    let settled = wait_until(Duration::from_secs(10), || connects(from, to) == open);
    assert!(
        settled,
        "{case}: {to} should be {}",
        if open { "open" } else { "closed" }
    );
}

/// Dual-stack pods (issue 19) under NetworkPolicy: x/a and x/c on n0, x/b
/// on n1, each with an IPv4 and an IPv6 address from the CNI plugin. A
/// default deny of x and an allow from x/b into x/a hold over both
/// families (pod selectors name both addresses), across nodes and on one
/// node; an ipBlock of x/c's IPv6 /128 opens x/a to x/c over IPv6 only.
#[test]
fn dual_stack_pods_are_enforced_on_both_addresses() {
    if !require_root("policy_dual_stack") {
        return;
    }
    let cluster = Cluster::new(2);
    let api_addr: SocketAddr = format!("{}:6443", cluster.nodes[0].underlay)
        .parse()
        .unwrap();
    let api = FakeApi::start(&cluster.nodes[0].ns.name, api_addr);
    let m = mesh_on(cluster, |r| {
        r.args.extend([
            "--network-policy".into(),
            "--kube-api".into(),
            format!("http://{api_addr}"),
            "--ipalloc-range".into(),
            "fd00:32::/112".into(),
        ]);
    });
    let ready = wait_until(Duration::from_secs(30), || {
        m.routers
            .iter()
            .all(|r| r.status().is_some_and(|s| s["ipam6"]["state"] == "ready"))
    });
    assert!(
        ready,
        "the IPv6 ring is not ready: {}",
        m.routers[0].log_tail()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let mut pods = Vec::new();
    for (name, node) in [("x/a", 0), ("x/b", 1), ("x/c", 0)] {
        let netns = Netns::new(&format!("d{}", &name[2..]));
        let flag = stop.clone();
        // TCP 80 on [::] takes both families (bindv6only is 0).
        drop(in_netns(&netns.name, move || {
            let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 80)).unwrap();
            listener.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
        let (v4, v6) = plug_dual_pod(&m, node, name, &netns);
        let pod = &name[2..];
        api.put(
            POD_PATH,
            &format!(
                r#"{{"kind":"Pod","metadata":{{"name":"{pod}","namespace":"x","labels":{{"pod":"{pod}"}}}},"spec":{{"nodeName":"n{node}"}},"status":{{"phase":"Running","podIP":"{v4}","podIPs":[{{"ip":"{v4}"}},{{"ip":"{v6}"}}]}}}}"#
            ),
        );
        pods.push((netns, v4, v6));
    }
    api.put(NAMESPACE_PATH, &namespace_object("x", ""));
    let [(_, a4, a6), (b, _, _), (c, _, c6)] = &pods[..] else {
        unreachable!()
    };
    let (to_a4, to_a6) = (SocketAddr::from((*a4, 80)), SocketAddr::from((*a6, 80)));
    for (from, who) in [(b, "x/b"), (c, "x/c")] {
        expect_reach(&format!("no policy, {who} over IPv4"), from, to_a4, true);
        expect_reach(&format!("no policy, {who} over IPv6"), from, to_a6, true);
    }

    api.put(
        POLICY_PATH,
        &policy_object(
            "x",
            "deny-ingress",
            r#"{"podSelector":{},"policyTypes":["Ingress"]}"#,
        ),
    );
    api.put(
        POLICY_PATH,
        &policy_object(
            "x",
            "allow-a-from-b",
            r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"pod":"b"}}}]}]}"#,
        ),
    );
    // x/c (same node as x/a) is shut out on both families first, so that
    // x/b's opens below are the allow, not a table not yet applied.
    expect_reach("default deny, x/c over IPv6", c, to_a6, false);
    expect_reach("default deny, x/c over IPv4", c, to_a4, false);
    // The drop log names both pods by their IPv6 addresses, the port and
    // the deciding rule, as for IPv4 (tried until the line shows, bounded:
    // the log lines are rate-limited).
    let expected = format!(
        "denied ingress to x/a ({a6}) from x/c ({c6}) TCP port 80: default deny of x (isolated by "
    );
    let logged = wait_until(Duration::from_secs(10), || {
        let denied = in_netns(&c.name, move || {
            !reaches(Proto::Tcp, to_a6, Duration::from_millis(300))
        });
        assert!(denied.join().unwrap(), "x/c reached x/a over IPv6");
        std::fs::read_to_string(m.routers[0].log_path()).is_ok_and(|log| {
            log.lines()
                .any(|l| l.contains(&expected) && l.contains("x/deny-ingress"))
        })
    });
    assert!(
        logged,
        "no line {expected:?}… x/deny-ingress in\n{}",
        m.routers[0].log_tail()
    );
    expect_reach("allow from x/b, over IPv6 across nodes", b, to_a6, true);
    expect_reach("allow from x/b, over IPv4 across nodes", b, to_a4, true);
    let status = policy_status(&m.routers[0]);
    let xa = pod_entry(&status, "x/a");
    assert!(xa["denied_in"].as_u64().unwrap_or(0) >= 2, "{status}");
    let ips: Vec<&str> = xa["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        ips.contains(&a4.to_string().as_str()) && ips.contains(&a6.to_string().as_str()),
        "{status}"
    );

    // An ipBlock is of one family: x/c's IPv6 /128 lets it in over IPv6,
    // not over IPv4.
    api.put(
        POLICY_PATH,
        &policy_object(
            "x",
            "allow-a-from-c-v6",
            &format!(
                r#"{{"podSelector":{{"matchLabels":{{"pod":"a"}}}},"ingress":[{{"from":[{{"ipBlock":{{"cidr":"{c6}/128"}}}}]}}]}}"#
            ),
        ),
    );
    expect_reach("ipBlock of x/c's IPv6, over IPv6", c, to_a6, true);
    expect_reach("ipBlock of x/c's IPv6, over IPv4", c, to_a4, false);
    stop.store(true, Ordering::SeqCst);
}

/// Sets the flag when dropped (the listeners stop even on a failure).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
