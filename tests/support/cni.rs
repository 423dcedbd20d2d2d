//! CNI test helpers: the plugin binary, invoking it with the CNI
//! environment inside a node's namespace, a network configuration per spec
//! version, what the plugin left in the kernel (veths, weft routes), and a
//! small fake router API for plumbing tests that must control the router's
//! answers (not ready, an allocation to release). The container runtimes
//! that run it (podman, containerd's `ctr`) are in support::runtimes,
//! re-exported here.

#[allow(unused_imports)]
pub use super::runtimes::*;

use super::{Netns, run_timeout};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

/// The `weft-cni` binary (built by `cargo build --workspace`; built here if
/// missing, e.g. under `cargo test --test cni`). `WEFT_CNI_BIN` overrides.
pub fn plugin_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("WEFT_CNI_BIN") {
            return PathBuf::from(p);
        }
        build_plugin("weft-cni", &[])
    })
    .clone()
}

/// The test-only plugin that reads `WEFT_CNI_FAULT` (`weft-cni-faults`,
/// feature `fault-injection`; never built by `cargo build --workspace`, so
/// built here, into the same target directory under its own name).
pub fn fault_plugin_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_plugin("weft-cni-faults", &["--features", "fault-injection"]))
        .clone()
}

/// Runs `cargo build -p weft-cni --bin NAME` (a no-op when fresh) for this
/// test's profile and returns the binary.
fn build_plugin(name: &str, extra: &[&str]) -> PathBuf {
    {
        // target/<profile>/deps/cni-HASH → target/<profile>/NAME
        let exe = std::env::current_exe().expect("test exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = profile_dir.join(name);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        // Without the CARGO_* variables cargo sets for this test process:
        // build scripts (ring's) watch some, and a difference would rebuild
        // the whole dependency graph, twice per test run.
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_") && k != "CARGO_TARGET_DIR" && k != "CARGO_HOME" {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("OUT_DIR").env_remove("RUST_TEST_THREADS");
        cmd.args(["build", "-p", "weft-cni", "--bin", name])
            .args(extra);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build -p weft-cni");
        assert!(status.success(), "building {name} failed");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    }
}

/// A directory holding the plugin as `weft` plus the reference plugins
/// (Debian's containernetworking-plugins in /usr/lib/cni), for CNI_PATH.
pub fn plugin_dir(dir: &Path) -> PathBuf {
    let bin = dir.join("cni-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let _ = std::fs::remove_file(bin.join("weft"));
    std::fs::copy(plugin_bin(), bin.join("weft")).unwrap();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/cni") {
        for e in entries.flatten() {
            let target = bin.join(e.file_name());
            if !target.exists() {
                let _ = std::os::unix::fs::symlink(e.path(), target);
            }
        }
    }
    bin
}

/// A single-plugin network configuration (as a runtime hands it over).
pub fn net_conf(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "weft",
        "type": "weft",
        "socket": socket.display().to_string(),
        "mtu": 0,
    })
}

/// One plugin run.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("plugin stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success and returns the parsed stdout (Null when empty).
    pub fn ok(&self) -> Value {
        assert_eq!(self.code, 0, "plugin failed: {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts failure with CNI error code `code`; returns the error object.
    pub fn err(&self, code: u64) -> Value {
        assert_ne!(self.code, 0, "plugin succeeded unexpectedly: {self:?}");
        let j = self.json();
        assert_eq!(j["code"].as_u64(), Some(code), "wrong error code: {self:?}");
        assert!(j["msg"].as_str().is_some_and(|m| !m.is_empty()));
        j
    }
}

/// The CNI environment of one call.
#[derive(Clone, Debug, Default)]
pub struct Call {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub extra_env: Vec<(String, String)>,
    /// Run the fault-injection build ([`fault_plugin_bin`]).
    pub faulty: bool,
}

impl Call {
    pub fn new(command: &str, container_id: &str, netns: &str) -> Self {
        Self {
            command: command.into(),
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            extra_env: Vec::new(),
            faulty: false,
        }
    }
}

/// Runs the plugin in namespace `node` (the host side of the pod) with
/// `conf` on stdin.
pub fn invoke(node: &Netns, call: &Call, conf: &Value) -> Outcome {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", node.name))
        .arg(if call.faulty {
            fault_plugin_bin()
        } else {
            plugin_bin()
        })
        .env("CNI_COMMAND", &call.command)
        .env("CNI_CONTAINERID", &call.container_id)
        .env("CNI_NETNS", &call.netns)
        .env("CNI_IFNAME", &call.ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &call.extra_env {
        cmd.env(k, v);
    }
    let out = run_with_stdin(&mut cmd, conf.to_string().as_bytes());
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a plugin-like command with `input` on its stdin and its output
/// captured; it must finish within 30 s (a plugin answers in milliseconds).
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the plugin");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the plugin hung: {cmd:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().expect("plugin output")
}

/// A command's exit code and output, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Path of a namespace for CNI_NETNS.
pub fn netns_path(ns: &Netns) -> String {
    format!("/run/netns/{}", ns.name)
}

/// The plugin's host veths (`weft` + 11 hex) in `node`.
pub fn weft_veths(node: &Netns) -> Vec<String> {
    let out = run_timeout(
        Command::new("ip").args(["-n", &node.name, "-o", "link", "show"]),
        10,
    )
    .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.len() == 15 && n.starts_with("weft"))
        .collect()
}

/// The /32 routes tagged with weft's protocol that go to a pod veth.
pub fn pod_routes(node: &Netns) -> Vec<String> {
    tagged_pod_routes(node, "-4")
}

/// The IPv6 /128 routes tagged with weft's protocol that go to a pod veth.
pub fn pod_routes6(node: &Netns) -> Vec<String> {
    tagged_pod_routes(node, "-6")
}

fn tagged_pod_routes(node: &Netns, family: &str) -> Vec<String> {
    let out = run_timeout(
        Command::new("ip").args(["-n", &node.name, family, "route", "show", "proto", "87"]),
        10,
    )
    .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" dev weft") && !l.contains("dev weft0"))
        .map(str::to_string)
        .collect()
}

/// An in-test stand-in for the router's API: one JSON line in, one out.
/// Hands out 10.32.0.10, .11, ... idempotently by (container, ifname).
pub struct FakeRouter {
    pub socket: PathBuf,
    pub state: Arc<Mutex<FakeState>>,
}

#[derive(Default)]
pub struct FakeState {
    pub ready: bool,
    pub next: u32,
    pub allocations: BTreeMap<(String, String), String>,
    pub requests: Vec<Value>,
}

impl FakeRouter {
    pub fn start(dir: &Path) -> Self {
        let socket = dir.join("fake-weft.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let state = Arc::new(Mutex::new(FakeState {
            ready: true,
            next: 10,
            ..FakeState::default()
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_err() {
                    continue;
                }
                let req: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let reply = answer(&mut shared.lock().unwrap(), req);
                let _ = writeln!(stream, "{reply}");
            }
        });
        Self { socket, state }
    }

    pub fn allocated(&self) -> usize {
        self.state.lock().unwrap().allocations.len()
    }
}

fn allocation(cid: &str, ifname: &str, address: &str) -> Value {
    json!({"container_id": cid, "ifname": ifname, "address": address, "prefix_len": 32,
           "gateway": "169.254.1.1", "mtu": 1420, "range": "10.32.0.0/12"})
}

fn answer(s: &mut FakeState, req: Value) -> Value {
    s.requests.push(req.clone());
    let key = (
        req["container_id"].as_str().unwrap_or("").to_string(),
        req["ifname"].as_str().unwrap_or("").to_string(),
    );
    let not_found =
        json!({"ok": false, "error": {"code": "not_found", "message": "no such allocation"}});
    match req["op"].as_str() {
        Some("ready") => {
            json!({"ok": true, "result": {"ready": s.ready, "mtu": 1420, "reason": if s.ready { Value::Null } else { json!("ring not known") }}})
        }
        _ if !s.ready => {
            json!({"ok": false, "error": {"code": "not_ready", "message": "the ring is not known yet"}})
        }
        Some("allocate") => {
            let next = &mut s.next;
            let addr = s
                .allocations
                .entry(key.clone())
                .or_insert_with(|| {
                    *next += 1;
                    format!("10.32.0.{}", *next - 1)
                })
                .clone();
            json!({"ok": true, "result": allocation(&key.0, &key.1, &addr)})
        }
        Some("lookup") => match s.allocations.get(&key) {
            Some(a) => json!({"ok": true, "result": allocation(&key.0, &key.1, a)}),
            None => not_found,
        },
        Some("release") => match s.allocations.remove(&key) {
            Some(a) => json!({"ok": true, "result": {"address": a}}),
            None => not_found,
        },
        Some("gc") => {
            let keep: Vec<String> = req["keep"]
                .as_array()
                .map(|k| {
                    k.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let gone: Vec<(String, String)> = s
                .allocations
                .keys()
                .filter(|(c, _)| !keep.contains(c))
                .cloned()
                .collect();
            let mut released = Vec::new();
            for k in gone {
                if let Some(a) = s.allocations.remove(&k) {
                    released.push(allocation(&k.0, &k.1, &a));
                }
            }
            json!({"ok": true, "result": {"allocations": released}})
        }
        _ => json!({"ok": false, "error": {"code": "bad_request", "message": "unknown op"}}),
    }
}
