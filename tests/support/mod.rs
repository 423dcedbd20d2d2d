//! Shared netns harness for weft's integration tests: uniquely named network
//! namespaces deleted on drop (and leftovers of killed runs deleted at start),
//! an underlay switch, nodes, pods plumbed as the CNI plugin would, real
//! `weft router` processes, and traffic helpers.
//!
//! Network safety: every namespace is named `weft-t<pid>-<n>-<label>`; every
//! address lives inside namespaces created here (underlay 192.0.2.0/24,
//! overlay 10.32.0.0/12); nothing is added to the root namespace; every
//! command has a timeout and every loop a bound.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

pub mod attack;
pub mod chaos;
pub mod daemonset_pod;
pub mod egress_echo;
pub mod fake_api;
pub mod fake_kube;
pub mod flow;
pub mod ipam;
pub mod manifest;
pub mod nat;
pub mod rootfs;
pub mod router;
pub mod runtimes;
pub mod traffic;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);
const PREFIX: &str = "weft-t";

/// True when the test may run. Without root it prints a loud skip, unless
/// WEFT_REQUIRE_ROOT_TESTS=1, which makes a skip a failure.
pub fn require_root(test: &str) -> bool {
    // SAFETY-free: geteuid has no preconditions.
    let root = unsafe_free_geteuid() == 0;
    if root {
        cleanup_leftovers();
        return true;
    }
    if std::env::var("WEFT_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!(
            "{test}: integration tests need root (CAP_NET_ADMIN); WEFT_REQUIRE_ROOT_TESTS=1 makes a skip a failure"
        );
    }
    eprintln!("\n!!!!! SKIPPED {test}: integration tests need root (CAP_NET_ADMIN) !!!!!\n");
    false
}

fn unsafe_free_geteuid() -> u32 {
    // /proc/self/status "Uid: real effective ..." avoids an unsafe libc call.
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Deletes namespaces of earlier test runs whose process is gone.
pub fn cleanup_leftovers() {
    let Ok(out) = run_timeout(Command::new("ip").args(["netns", "list"]), 10) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: u32 = rest
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if pid != 0 && !Path::new(&format!("/proc/{pid}")).exists() {
            kill_pids_in(name);
            let _ = run_timeout(Command::new("ip").args(["netns", "del", name]), 10);
        }
    }
}

fn kill_pids_in(ns: &str) {
    if let Ok(out) = run_timeout(Command::new("ip").args(["netns", "pids", ns]), 10) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

/// `bin` as a command that, when run as root, gets a network namespace of
/// its own that dies with it (`unshare --net`): for tests that expect a
/// `weft router` to refuse its flags, so that a regression that lets one
/// start creates its weft0, routes and rules there, never in this host's.
pub fn confined_command(bin: &str) -> Command {
    if unsafe_free_geteuid() == 0 {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    }
}

/// Runs a command with a timeout (seconds), capturing output.
pub fn run_timeout(cmd: &mut Command, secs: u64) -> std::io::Result<Output> {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut wrapped = Command::new("timeout");
    wrapped
        .arg("-s")
        .arg("KILL")
        .arg(secs.to_string())
        .arg(program)
        .args(args);
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    wrapped.stdin(Stdio::null()).output()
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) -> String {
    let out = run_timeout(Command::new(args[0]).args(&args[1..]), 20).expect("spawn");
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace that is deleted (with every process in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(label: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{label}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        run_timeout(&mut cmd, 30).expect("spawn")
    }

    /// Runs `args` inside the namespace; it must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in {}: {} failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NS ...`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all);
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.ok(&["sysctl", "-qw", &format!("{key}={value}")]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_pids_in(&self.name);
        let _ = run_timeout(Command::new("ip").args(["netns", "del", &self.name]), 10);
    }
}

/// A node: a namespace on the underlay switch, as a fresh host: IPv4
/// forwarding off everywhere (the router and the CNI plugin turn on what
/// they need, per interface).
pub struct Node {
    pub ns: Netns,
    pub underlay: Ipv4Addr,
    pub name: String,
}

/// A veth pair: `here` in namespace `a`, `there` in namespace `b`.
pub fn veth(a: &Netns, here: &str, b: &Netns, there: &str) {
    sh(&[
        "ip", "-n", &a.name, "link", "add", here, "type", "veth", "peer", "name", there, "netns",
        &b.name,
    ]);
}

/// A new namespace copies the host's IPv4 settings; a fresh host has
/// forwarding off, for every interface and for new ones (`eth0` exists).
pub fn fresh_host(ns: &Netns) {
    ns.sysctl("net.ipv4.ip_forward", "0");
    ns.sysctl("net.ipv4.conf.all.forwarding", "0");
    ns.sysctl("net.ipv4.conf.default.forwarding", "0");
    ns.sysctl("net.ipv4.conf.eth0.forwarding", "0");
}

/// A router's `peers[].path` for `peer` (`direct (private)`, `relayed via
/// NAME (reason)`, ...), or "" when it does not know it.
pub fn path_to(r: &Router, peer: &str) -> String {
    r.status()
        .and_then(|s| {
            s["peers"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == peer)
                .map(|p| p["path"].as_str().unwrap_or("").to_string())
        })
        .unwrap_or_default()
}

/// Nodes on one underlay switch (a bridge in its own namespace).
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    switch: Netns,
    pub dir: TempDir,
}

/// Node `i` on the switch: namespace `n{i}` at 192.0.2.(10 + i), prepared
/// as a fresh host.
fn node_on(switch: &Netns, i: usize) -> Node {
    let name = format!("n{i}");
    let ns = Netns::new(&name);
    let underlay = Ipv4Addr::new(192, 0, 2, 10 + i as u8);
    let port = format!("p{i}");
    // A rebooted node's old port went with its namespace's end of the pair.
    let _ = switch.exec(&["ip", "link", "del", &port]);
    veth(switch, &port, &ns, "eth0");
    switch.ip(&["link", "set", &port, "master", "br0", "up"]);
    ns.ip(&["addr", "add", &format!("{underlay}/24"), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    fresh_host(&ns);
    Node { ns, underlay, name }
}

impl Cluster {
    /// `count` nodes named n0, n1, ... at 192.0.2.10, .11, ...
    pub fn new(count: usize) -> Self {
        let switch = Netns::new("sw");
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let nodes = (0..count).map(|i| node_on(&switch, i)).collect();
        Self {
            nodes,
            pods: Vec::new(),
            switch,
            dir: TempDir::new("cluster"),
        }
    }

    /// Node `i` reboots: its namespace, and with it weft0, every route and
    /// veth and the pods on it, is gone; a fresh one takes its place on the
    /// switch with the same address. Files (the state dir) stay. Its
    /// router must be stopped first and pointed at the new namespace.
    pub fn reboot(&mut self, i: usize) {
        self.pods.retain(|p| p.node != i);
        let fresh = node_on(&self.switch, i);
        // The old namespace goes when its `Netns` drops, here.
        self.nodes[i] = fresh;
    }

    /// Plugs a pod with `addr` into node `node` the way the CNI plugin does.
    pub fn add_pod(&mut self, node: usize, addr: Ipv4Addr) -> usize {
        let index = self.pods.len();
        let ns = Netns::new(&format!("pod{index}"));
        // Named as the CNI plugin names host ends ("weft" + 11 hex), which
        // the router's anti-spoofing rule matches.
        let host = format!("weft{index:011x}");
        plumb_pod(&self.nodes[node].ns, &ns, &host, addr);
        self.pods.push(Pod { ns, addr, node });
        index
    }

    /// Drops (in both directions) UDP between nodes `a` and `b` with an
    /// nftables table in `a`'s namespace, or lifts the block.
    pub fn block_udp(&self, a: usize, b: usize, blocked: bool) {
        let ns = &self.nodes[a].ns;
        let _ = ns.exec(&["nft", "delete", "table", "inet", "wefttest"]);
        if blocked {
            let peer = self.nodes[b].underlay.to_string();
            let rules = format!(
                "table inet wefttest {{ chain in {{ type filter hook input priority 0; ip saddr {peer} udp dport 6783 drop; }}; chain out {{ type filter hook output priority 0; ip daddr {peer} udp dport 6783 drop; }}; }}"
            );
            ns.ok(&["nft", &rules]);
        }
    }
}

impl Cluster {
    /// Drops every inbound underlay packet of node `i` that does not belong
    /// to a flow the node started (a router behind NAT), or lifts that.
    pub fn behind_nat(&self, i: usize, on: bool) {
        let ns = &self.nodes[i].ns;
        let _ = ns.exec(&["nft", "delete", "table", "inet", "wefttestnat"]);
        if on {
            ns.ok(&[
                "nft",
                "table inet wefttestnat { chain in { type filter hook input priority 0; iifname \"eth0\" ct state established,related accept; iifname \"eth0\" drop; }; }",
            ]);
        }
    }
}

/// Plugs namespace `pod` into `node` as the CNI plugin does, at an address
/// the test picks (the harness's stand-in for the plugin; tests/cni.rs runs
/// the real one): a veth pair, the pod's /32, a default route via
/// 169.254.1.1 with a permanent neighbour entry; on the host the veth with
/// IPv4 forwarding and proxy ARP on, and a /32 route to the pod.
pub fn plumb_pod(node: &Netns, pod: &Netns, host: &str, addr: Ipv4Addr) {
    sh(&[
        "ip", "-n", &node.name, "link", "add", host, "mtu", "1420", "type", "veth", "peer", "name",
        "eth0", "mtu", "1420", "netns", &pod.name,
    ]);
    pod.ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    node.ip(&["link", "set", host, "up"]);
    let link = sh(&["ip", "-n", &node.name, "-o", "link", "show", host]);
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC on {host}: {link}"))
        .to_string();
    pod.ip(&[
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
        "onlink",
    ]);
    pod.ip(&[
        "neigh",
        "replace",
        "169.254.1.1",
        "lladdr",
        &mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    node.ip(&["route", "add", &format!("{addr}/32"), "dev", host]);
    node.sysctl(&format!("net.ipv4.conf.{host}.forwarding"), "1");
    node.sysctl(&format!("net.ipv4.conf.{host}.proxy_arp"), "1");
}

/// A pod namespace plumbed into a node.
pub struct Pod {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    pub node: usize,
}

impl Pod {
    /// Pings `to`; true if all `count` replies came back.
    pub fn ping(&self, to: Ipv4Addr, count: u32) -> bool {
        self.exec_ok(&[
            "ping",
            "-c",
            &count.to_string(),
            "-W",
            "1",
            "-i",
            "0.2",
            &to.to_string(),
        ])
    }

    /// Keeps pinging once until a reply comes back or `timeout` passes.
    pub fn wait_ping(&self, to: Ipv4Addr, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.exec_ok(&["ping", "-c", "1", "-W", "1", &to.to_string()]) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// `ping -M do` (don't fragment) with a payload of `size` bytes, once:
    /// its stdout and stderr.
    pub fn ping_df(&self, to: Ipv4Addr, size: usize) -> String {
        mtu_ping_df(&self.ns, IpAddr::V4(to), size, 1)
    }

    fn exec_ok(&self, args: &[&str]) -> bool {
        self.ns.exec(args).status.success()
    }
}

/// `ping -M do` (don't fragment) from `ns` to `to` with a payload of
/// `size` bytes, `count` times 0.2 s apart: its stdout and stderr.
pub fn mtu_ping_df(ns: &Netns, to: IpAddr, size: usize, count: u32) -> String {
    let out = ns.exec(&[
        "ping",
        "-M",
        "do",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        "-s",
        &size.to_string(),
        &to.to_string(),
    ]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A temporary directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("weft-test-{}-{n}-{label}", std::process::id()));
        fs::create_dir_all(&path).expect("temp dir");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

pub use router::*;

/// Polls `check` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The packet count of the first `counter packets N bytes M` in `text`
/// (a line or a listing of `nft`).
pub fn nft_packets(text: &str) -> Option<u64> {
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
}

/// `GET /metrics` from the router serving metrics on `addr`:6782 inside
/// `ns`: the whole HTTP response.
pub fn scrape_metrics(ns: &str, addr: Ipv4Addr) -> String {
    in_netns(ns, move || {
        let target = SocketAddr::from((addr, 6782));
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .join()
    .unwrap()
}

/// Runs `f` on a thread that has entered namespace `ns` (setns moves only
/// the calling thread, so the test's other threads stay where they are).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).expect("open netns");
        nix_setns(&file);
        f()
    })
}

fn nix_setns(file: &fs::File) {
    use std::os::fd::AsRawFd;
    #[allow(unsafe_code)]
    // SAFETY: setns on a valid namespace descriptor affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns failed: {}", std::io::Error::last_os_error());
}

pub use traffic::*;

pub mod cni;
pub mod cni_mesh;
pub mod cri;
pub mod dual_pods;

/// Two nodes, a router each seeded with the other, one pod each, the
/// connection established. Routers drop first (printing their logs on
/// failure), then the cluster.
pub struct Pair {
    pub routers: Vec<Router>,
    pub cluster: Cluster,
}

/// Starts a [`Pair`] with `env` set for both routers.
pub fn start_pair(bin: &Path, env: &[(&str, &str)]) -> Pair {
    start_pair_on(Cluster::new(2), bin, env)
}

/// Starts a [`Pair`] on a two-node `cluster` the test has prepared (an
/// uplink present before the routers start, as on a real node).
pub fn start_pair_on(mut cluster: Cluster, bin: &Path, env: &[(&str, &str)]) -> Pair {
    let routers = start_routers(
        bin,
        &mut cluster,
        2,
        |i| vec![1 - i],
        |_, r| {
            r.env = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        },
    );
    let up = wait_until(Duration::from_secs(10), || {
        routers.iter().all(|r| r.established_peers() == 1)
    });
    assert!(
        up,
        "routers did not establish:\n{}\n{}",
        routers[0].log_tail(),
        routers[1].log_tail()
    );
    Pair { routers, cluster }
}

/// The last release's binary, built once (tests/mixed_versions.rs).
pub mod old_release;
