//! CNI test helpers: the plugin binary, invoking it with the CNI
//! environment inside a node's namespace, a network configuration per spec
//! version, what the plugin left in the kernel (veths, weft routes), and a
//! small fake router API for plumbing tests that must control the router's
//! answers (not ready, an allocation to release).

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

/// The conflist a runtime reads from its config dir.
pub fn conflist(socket: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "plugins": [
            {"type": "weft", "socket": socket.display().to_string(), "mtu": 0},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
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
    let out = run_timeout(
        Command::new("ip").args(["-n", &node.name, "route", "show", "proto", "87"]),
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

/// A rootfs tar of Debian's busybox-static (no registry needed): the binary
/// and one relative symlink per applet.
pub fn busybox_rootfs_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (apt-get install busybox-static)");
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    let list = run_timeout(Command::new(busybox).arg("--list"), 10).unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    let tar = dir.join("rootfs.tar");
    let out = run_timeout(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        30,
    )
    .unwrap();
    assert!(out.status.success(), "tar: {out:?}");
    tar
}

/// Whether a runtime's binaries are installed; when not, the test fails
/// under WEFT_REQUIRE_ROOT_TESTS=1 and skips loudly otherwise.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: missing {missing:?} (see .ci/run's apt-get line)");
    if std::env::var("WEFT_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!! SKIPPED {msg} !!!!!\n");
    false
}

/// Podman 4 with its CNI backend, all config and storage under `dir`, run
/// inside one node's namespace (entered with `nsenter --net`, so podman sees
/// the host's /sys and /run; `ip netns exec` would remount them).
pub struct Podman {
    pub dir: PathBuf,
    pub node_ns: String,
}

impl Podman {
    /// Configures podman under `dir` with the weft network `weft` talking
    /// to `socket`, and imports the busybox image as `weft-busybox`.
    pub fn new(dir: &Path, node: &Netns, socket: &Path, rootfs_tar: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display();
        let net_d = dir.join("net.d");
        std::fs::create_dir_all(&net_d).unwrap();
        let bin = plugin_dir(dir);
        std::fs::write(
            net_d.join("weft.conflist"),
            serde_json::to_string_pretty(&conflist(socket)).unwrap(),
        )
        .unwrap();
        // runc (crun fails on this kernel's cgroup layout); ulimits at or
        // below the hard limits; no static_dir (podman's exit command does
        // not carry it, and every --rm would then wait 20 s for conmon).
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\nvolume_path = \"{d}/volumes\"\n",
                bin.display(),
                net_d.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/graph\"\nrunroot = \"{d}/run\"\n"
            ),
        )
        .unwrap();
        let p = Self {
            dir: dir.to_path_buf(),
            node_ns: node.name.clone(),
        };
        p.ok(&["import", &rootfs_tar.display().to_string(), "weft-busybox"]);
        p
    }

    /// `podman ARGS` in the node's namespace.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        run_timeout(&mut cmd, 60).expect("spawn podman")
    }

    /// `podman ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A container's address on eth0, read inside it.
    pub fn address(&self, name: &str) -> std::net::Ipv4Addr {
        let text = self.ok(&["exec", name, "ip", "-o", "-4", "addr", "show", "eth0"]);
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {text:?}"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
    }
}

/// containerd with its state under `dir`, and `ctr run --rm --cni`. ctr
/// reads the lexically first conflist of /etc/cni/net.d and plugins from
/// /opt/cni/bin, so each ctr runs in a private mount namespace where those
/// two are bind mounts of directories under `dir` (the host's stay as they
/// are).
pub struct Containerd {
    pub dir: PathBuf,
    pub node_ns: String,
    child: std::process::Child,
}

impl Containerd {
    /// Starts containerd (in the node's namespace), imports `oci_archive`.
    pub fn start(dir: &Path, node: &Netns, socket: &Path, oci_archive: &Path) -> Self {
        std::fs::create_dir_all(dir.join("netd")).unwrap();
        std::fs::create_dir_all(dir.join("opt/cni")).unwrap();
        let bin = plugin_dir(dir);
        let _ = std::os::unix::fs::symlink(&bin, dir.join("opt/cni/bin"));
        std::fs::write(
            dir.join("netd/10-weft.conflist"),
            conflist(socket).to_string(),
        )
        .unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{d}/containerd.sock\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.name))
            .arg("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd");
        let c = Self {
            dir: dir.to_path_buf(),
            node_ns: node.name.clone(),
            child,
        };
        assert!(
            super::wait_until(std::time::Duration::from_secs(20), || {
                c.ctr(&["version"]).status.success()
            }),
            "containerd did not start: {}",
            std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        );
        let out = c.ctr(&[
            "image",
            "import",
            "--snapshotter",
            "native",
            &oci_archive.display().to_string(),
        ]);
        assert!(out.status.success(), "ctr image import: {out:?}");
        c
    }

    /// `ctr ARGS` (namespace `weft`) in the node's namespace.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        let sock = self.dir.join("containerd.sock");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg("ctr")
            .arg("-a")
            .arg(&sock)
            .args(["-n", "weft"])
            .args(args);
        run_timeout(&mut cmd, 60).expect("spawn ctr")
    }

    /// `ctr run --rm --cni IMAGE ID ARGS` with our CNI dirs mounted.
    pub fn run_cni(&self, image: &str, id: &str, args: &[&str]) -> std::process::Output {
        ctr_run_cni(&self.dir, &self.node_ns, image, id, args)
    }
}

/// [`Containerd::run_cni`] for a thread of its own.
pub fn ctr_run_cni(
    dir: &Path,
    node_ns: &str,
    image: &str,
    id: &str,
    args: &[&str],
) -> std::process::Output {
    let d = dir.display();
    let script = format!(
        "set -e; mount --bind {d}/netd /etc/cni/net.d; mount --bind {d}/opt /opt; \
         exec nsenter --net=/run/netns/{node_ns} ctr -a {d}/containerd.sock -n weft run --rm --cni \
         --snapshotter native \"$@\""
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "ctr-run",
    ])
    .arg(image)
    .arg(id)
    .args(args);
    run_timeout(&mut cmd, 90).expect("spawn ctr run")
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
