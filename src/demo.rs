//! `weft demo`: a whole mesh in network namespaces on this machine. Nodes
//! share an underlay bridge (192.0.2.0/24), run one real `weft router` each,
//! get one pod each plugged in by the CNI plugin, then the demo pings every
//! pod from every other, measures throughput and prints `weft status`.
//! With `--ipv6` the pods are dual-stack (the routers also split an IPv6
//! ULA range derived from the cluster secret) and the matrix is pinged over
//! both families.
//! The demo does nothing to a node that a real node would not have: the
//! routers and the plugin turn on what they need (IPv4 and IPv6 forwarding).
//!
//! Everything it creates is named `weft-demo-<pid>-*` and removed at the end
//! (and leftovers of killed runs at the start), unless `--keep`. A failed
//! demo keeps its log directory and prints where it is.

use crate::api::client;
use crate::api::proto::{Request, Status};
use std::ffi::OsStr;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "weft-demo-";

/// Runs the demo with `nodes` nodes; dual-stack pods with `ipv6`.
pub fn run(nodes: usize, keep: bool, ipv6: bool) -> anyhow::Result<()> {
    if !(2..=8).contains(&nodes) {
        anyhow::bail!("--nodes must be 2 to 8");
    }
    if std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        != Some("0")
    {
        anyhow::bail!("weft demo creates network namespaces: run it as root (sudo)");
    }
    if ipv6 && !Path::new("/proc/sys/net/ipv6").exists() {
        anyhow::bail!(
            "weft demo --ipv6 needs IPv6 in the kernel (/proc/sys/net/ipv6 is missing: boot without ipv6.disable=1), or run it without --ipv6"
        );
    }
    if let Some(line) = missing_tools_line(&missing_tools(std::env::var_os("PATH").as_deref())) {
        anyhow::bail!(line);
    }
    let plugin = cni_plugin().ok_or_else(|| {
        anyhow::anyhow!(
            "weft demo needs the CNI plugin weft-cni next to {} or at {CNI_PLUGIN}: build it with cargo build --release --workspace",
            std::env::current_exe().map_or_else(|_| "weft".into(), |e| e.display().to_string())
        )
    })?;
    remove_leftovers();
    let mut demo = Demo::new(ipv6)?;
    let result = demo.build_and_show(nodes, &plugin);
    if keep && result.is_ok() {
        demo.keep();
        return Ok(());
    }
    println!("\ncleaning up…");
    demo.keep_logs = result.is_err();
    let dir = demo.dir.clone();
    drop(demo);
    if result.is_err() {
        println!(
            "done: no namespace, interface or process left behind; the routers' logs are kept in {}",
            dir.display()
        );
    } else {
        println!("done: no namespace, interface or process left behind.");
    }
    result
}

/// Every program the demo runs, with the Debian package that provides it.
/// (`iperf3` is optional: without it the demo skips the throughput figure.)
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    // The routers install their nftables table with it.
    ("nft", "nftables"),
    // Stops processes of a killed earlier demo.
    ("kill", "procps"),
    ("timeout", "coreutils"),
];

/// The [`TOOLS`] that no directory of `path` (a `PATH` value) holds as an
/// executable file.
fn missing_tools(path: Option<&OsStr>) -> Vec<(&'static str, &'static str)> {
    use std::os::unix::fs::PermissionsExt;
    let dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    TOOLS
        .iter()
        .filter(|(tool, _)| {
            !dirs.iter().any(|dir| {
                std::fs::metadata(dir.join(tool))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
        .copied()
        .collect()
}

/// One line naming the missing tools and the packages to install, or
/// `None` when nothing is missing.
fn missing_tools_line(missing: &[(&str, &str)]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let tools: Vec<String> = missing
        .iter()
        .map(|(tool, package)| format!("{tool} ({package})"))
        .collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    packages.dedup();
    Some(format!(
        "weft demo needs {}, not found on PATH: apt-get install -y {}",
        tools.join(", "),
        packages.join(" ")
    ))
}

struct Demo {
    tag: String,
    dir: PathBuf,
    namespaces: Vec<String>,
    routers: Vec<(String, Child)>,
    kept: bool,
    /// Keep the log directory when cleaning up (the demo failed).
    keep_logs: bool,
    /// Dual-stack pods (`--ipv6`).
    ipv6: bool,
}

/// A plugged pod: its namespace and addresses (IPv6 with `--ipv6`).
struct Pod {
    ns: String,
    v4: Ipv4Addr,
    v6: Option<Ipv6Addr>,
}

impl Demo {
    fn new(ipv6: bool) -> anyhow::Result<Self> {
        let tag = format!("{PREFIX}{}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            tag,
            dir,
            namespaces: Vec::new(),
            routers: Vec::new(),
            kept: false,
            keep_logs: false,
            ipv6,
        })
    }

    fn netns(&mut self, label: &str) -> anyhow::Result<String> {
        let name = format!("{}-{label}", self.tag);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn build_and_show(&mut self, count: usize, plugin: &Path) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let secret = self.dir.join("secret");
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        crate::persist::write_atomic(&secret, format!("{hex}\n").as_bytes(), 0o600)?;

        println!("building {count} nodes on an underlay bridge (192.0.2.0/24)…");
        let switch = self.netns("sw")?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        let names: Vec<String> = (0..count).map(|i| format!("node{i}")).collect();
        let mut node_ns = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = self.netns(name)?;
            let port = format!("p{i}");
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("192.0.2.{}/24", 10 + i),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            node_ns.push(ns);
        }
        println!(
            "starting one weft router per node (seed list: node0, node1, which vote on the first split of the address range)…"
        );
        let seeds: Vec<String> = (0..count.min(2))
            .map(|i| format!("192.0.2.{}:6783", 10 + i))
            .collect();
        for (i, name) in names.iter().enumerate() {
            let own = self.dir.join(name);
            std::fs::create_dir_all(&own)?;
            let log = std::fs::File::create(own.join("router.log"))?;
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &node_ns[i]])
                .arg(&exe)
                .args([
                    "router",
                    "--name",
                    name,
                    "--listen",
                    &format!("192.0.2.{}:6783", 10 + i),
                ])
                .arg("--secret-file")
                .arg(&secret)
                .arg("--state-dir")
                .arg(own.join("state"))
                .arg("--api")
                .arg(own.join("weft.sock"));
            for seed in &seeds {
                cmd.args(["--peer", seed]);
            }
            if self.ipv6 {
                // The default IPv4 range stays; `ipv6` adds the ULA /48
                // derived from the cluster secret.
                cmd.args(["--ipalloc-range", crate::pod_ranges::DERIVED_KEYWORD]);
            }
            let child = cmd
                .env_remove("WEFT_PEERS")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            self.routers.push((name.clone(), child));
        }
        let statuses = self.wait_for_mesh(count)?;

        println!(
            "plugging one pod into each node with the CNI plugin {}…",
            plugin.display()
        );
        let mut pods = Vec::new();
        for (i, status) in statuses.iter().enumerate() {
            let pod = self.netns(&format!("pod{i}"))?;
            let api = self.dir.join(&status.name).join("weft.sock");
            let (v4, v6) = cni_add(plugin, &node_ns[i], &pod, &api, &format!("demo-pod{i}"))?;
            if self.ipv6 && v6.is_none() {
                anyhow::bail!("CNI ADD for {pod} returned no IPv6 address with --ipv6");
            }
            pods.push(Pod { ns: pod, v4, v6 });
        }

        let mut failures = ping_matrix(&pods, |p| Some(IpAddr::V4(p.v4)), "");
        if self.ipv6 {
            failures += ping_matrix(&pods, |p| p.v6.map(IpAddr::V6), " over IPv6");
        }
        if failures > 0 {
            self.save_statuses();
            anyhow::bail!(
                "{failures} pod pairs could not reach each other; router logs are in {}",
                self.dir.display()
            );
        }
        self.throughput(&pods[0], &pods[1], IpAddr::V4(pods[1].v4));
        if let Some(v6) = pods[1].v6 {
            self.throughput(&pods[0], &pods[1], IpAddr::V6(v6));
        }
        println!("\n$ weft status   (on {})", names[0]);
        let status = self.status(&names[0])?;
        print!("{}", crate::status_text::render(&status, None));
        Ok(())
    }

    fn wait_for_mesh(&self, count: usize) -> anyhow::Result<Vec<Status>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let statuses: Vec<Option<Status>> = self
                .routers
                .iter()
                .map(|(name, _)| self.status(name).ok())
                .collect();
            let established: usize = statuses
                .iter()
                .flatten()
                .map(|s| s.connections.iter().filter(|c| c.established).count())
                .sum();
            let wanted = count * (count - 1);
            let ready = statuses
                .iter()
                .flatten()
                .filter(|s| {
                    let owns = |i: &crate::api::proto::IpamStatus| {
                        i.state == "ready" && !i.owned_ranges.is_empty()
                    };
                    owns(&s.ipam) && (!self.ipv6 || s.ipam6.as_ref().is_some_and(owns))
                })
                .count();
            print!(
                "\r  mesh forming: {established}/{wanted} connections established, {ready}/{count} routers own addresses "
            );
            let _ = std::io::stdout().flush();
            if established == wanted && ready == count && statuses.iter().all(Option::is_some) {
                println!();
                return Ok(statuses.into_iter().flatten().collect());
            }
            if Instant::now() > deadline {
                println!();
                anyhow::bail!(
                    "the mesh did not form within 20 s; router logs are in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Each router's status as JSON beside its log, for the failure report.
    fn save_statuses(&self) {
        for (name, _) in &self.routers {
            let reply = client::call(
                &self.dir.join(name).join("weft.sock"),
                &Request::Status,
                Duration::from_secs(3),
            );
            if let Ok(value) = reply.map(|r| r.result) {
                let text = serde_json::to_string_pretty(&value).unwrap_or_default();
                let _ = std::fs::write(self.dir.join(name).join("status.json"), text);
            }
        }
    }

    fn status(&self, name: &str) -> anyhow::Result<Status> {
        let reply = client::call(
            &self.dir.join(name).join("weft.sock"),
            &Request::Status,
            Duration::from_secs(3),
        )?;
        let value = reply.result.ok_or_else(|| anyhow::anyhow!("no status"))?;
        Ok(serde_json::from_value(value)?)
    }

    /// iperf3 from pod `from` to pod `to` at `to_addr` (either family).
    fn throughput(&self, from: &Pod, to: &Pod, to_addr: IpAddr) {
        if Command::new("iperf3").arg("--version").output().is_err() {
            println!("\n(install iperf3 for a throughput figure: apt-get install -y iperf3)");
            return;
        }
        println!(
            "\nthroughput, {} → {to_addr} (iperf3, TCP, 3 s, encrypted):",
            match to_addr {
                IpAddr::V4(_) => IpAddr::V4(from.v4),
                IpAddr::V6(_) => from.v6.map_or(IpAddr::V4(from.v4), IpAddr::V6),
            }
        );
        let server = Command::new("ip")
            .args(["netns", "exec", &to.ns, "iperf3", "-s", "-1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        std::thread::sleep(Duration::from_millis(500));
        let out = Command::new("timeout")
            .args([
                "15",
                "ip",
                "netns",
                "exec",
                &from.ns,
                "iperf3",
                "-c",
                &to_addr.to_string(),
                "-t",
                "3",
            ])
            .output();
        if let Ok(out) = out {
            for line in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("receiver"))
            {
                println!("  {}", line.trim());
            }
        }
        if let Ok(mut server) = server {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    fn keep(&mut self) {
        self.kept = true;
        println!("\nleft running (--keep). Explore with:");
        for (name, _) in &self.routers {
            println!(
                "  weft status --api {}        # {name}",
                self.dir.join(name).join("weft.sock").display()
            );
        }
        println!("  ip netns list | grep {}", self.tag);
        println!(
            "  ip netns exec {}-pod0 ping 10.…   # any pod address above (IPv6 too with --ipv6)",
            self.tag
        );
        println!("remove it all with: weft demo --clean");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for (_, child) in &mut self.routers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if !self.keep_logs {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes everything every earlier demo left, kept ones included.
pub fn remove_all() {
    remove(true);
}

/// Removes namespaces, processes and files of earlier demos whose process is
/// gone.
pub fn remove_leftovers() {
    remove(false);
}

fn remove(all: bool) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let mut dirs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !all && Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", p]).output();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        dirs.push(std::env::temp_dir().join(format!("{PREFIX}{pid}")));
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Prints the matrix of pings between `pods` at the address `addr` gives,
/// row to column; returns how many pairs failed.
fn ping_matrix(pods: &[Pod], addr: impl Fn(&Pod) -> Option<IpAddr>, family: &str) -> usize {
    let addrs: Vec<Option<IpAddr>> = pods.iter().map(&addr).collect();
    let width = addrs
        .iter()
        .flatten()
        .map(|a| a.to_string().len() + 2)
        .fold(14, usize::max);
    println!("\nping matrix{family} (from row to column, through the encrypted mesh):");
    print!("{:>width$}", "");
    for a in &addrs {
        print!("{:>width$}", a.map_or("-".into(), |a| a.to_string()));
    }
    println!();
    let mut failures = 0;
    for (from, from_addr) in pods.iter().zip(&addrs) {
        print!(
            "{:>width$}",
            from_addr.map_or("-".into(), |a| a.to_string())
        );
        for to in &addrs {
            let ok = match to {
                Some(to) => from_addr.as_ref() == Some(to) || ping(&from.ns, *to),
                None => false,
            };
            failures += usize::from(!ok);
            print!("{:>width$}", if ok { "ok" } else { "FAIL" });
        }
        println!();
    }
    failures
}

fn ping(ns: &str, to: IpAddr) -> bool {
    (0..3).any(|_| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                &to.to_string(),
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Where a node has the CNI plugin installed (DESIGN.md "Operator contract").
const CNI_PLUGIN: &str = "/opt/cni/bin/weft";

/// The CNI plugin binary: `weft-cni` next to this executable (a cargo
/// build), else the installed one.
fn cni_plugin() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("weft-cni")));
    beside
        .into_iter()
        .chain(std::iter::once(PathBuf::from(CNI_PLUGIN)))
        .find(|p| p.is_file())
}

/// Plugs pod namespace `pod` into node `node` with the CNI plugin (ADD, the
/// address from the router at `api`); returns the pod's IPv4 address and,
/// from a dual-stack router, its IPv6 one.
fn cni_add(
    plugin: &Path,
    node: &str,
    pod: &str,
    api: &Path,
    container_id: &str,
) -> anyhow::Result<(Ipv4Addr, Option<Ipv6Addr>)> {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weft", "type": "weft",
        "socket": api.display().to_string(), "mtu": 0,
    });
    let mut child = Command::new("ip")
        .args(["netns", "exec", node])
        .arg(plugin)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", format!("/run/netns/{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() {
        anyhow::bail!(
            "CNI ADD for {pod} failed: {}",
            result["msg"].as_str().unwrap_or("no CNI error on stdout")
        );
    }
    let addresses: Vec<IpAddr> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect();
    let v4 = addresses.iter().find_map(|a| match a {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    });
    let v6 = addresses.iter().find_map(|a| match a {
        IpAddr::V6(a) => Some(*a),
        IpAddr::V4(_) => None,
    });
    let v4 =
        v4.ok_or_else(|| anyhow::anyhow!("CNI ADD for {pod} returned no IPv4 address: {result}"))?;
    Ok((v4, v6))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_bin(dir: &Path, tools: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for tool in tools {
            let path = dir.join(tool);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn the_tool_check_names_each_missing_tool_and_its_package_in_one_line() {
        let root = std::env::temp_dir().join(format!("weft-demo-tools-{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        fake_bin(&a, &["ip", "kill"]);
        fake_bin(&b, &["timeout"]);
        // Not executable: does not count.
        std::fs::write(b.join("nft"), "").unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();
        let missing = missing_tools(Some(&path));
        assert_eq!(missing, vec![("ping", "iputils-ping"), ("nft", "nftables")]);
        assert_eq!(
            missing_tools_line(&missing).unwrap(),
            "weft demo needs ping (iputils-ping), nft (nftables), not found on PATH: apt-get install -y iputils-ping nftables"
        );
        fake_bin(&b, &["ping", "nft"]);
        assert!(missing_tools(Some(&path)).is_empty());
        assert_eq!(missing_tools_line(&[]), None);
        assert_eq!(missing_tools(None).len(), TOOLS.len());
        let _ = std::fs::remove_dir_all(&root);
    }
}
