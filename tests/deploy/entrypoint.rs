//! The entrypoint (shellcheck, installing the plugin and conflist, bad
//! settings) and the DaemonSet's environment starting a real router.

use super::*;

/// A host in a temp dir: CNI dirs, the plugin the image carries, and a fake
/// `weft` on PATH that records its PID and arguments.
struct FakeHost {
    dir: TempDir,
}

impl FakeHost {
    fn new() -> Self {
        let dir = TempDir::new("entrypoint");
        fs::create_dir_all(dir.path.join("bin")).unwrap();
        fs::write(dir.path.join("weft-cni"), b"plugin v1\n").unwrap();
        let fake = dir.path.join("bin/weft");
        fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$$ $*\" > '{}'\n",
                dir.path.join("exec.log").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path.join(rel)
    }

    /// Runs the entrypoint; returns its output and its PID.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (Output, u32) {
        let mut cmd = Command::new("sh");
        cmd.arg(entrypoint())
            .args(args)
            .current_dir(&self.dir.path)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.path("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("WEFT_CNI_BIN_DIR", self.path("host/opt/cni/bin"))
            .env("WEFT_CNI_CONF_DIR", self.path("host/etc/cni/net.d"))
            .env("WEFT_CNI_PLUGIN", self.path("weft-cni"))
            .env_remove("WEFT_API")
            .env_remove("WEFT_CNI_MTU")
            .env_remove("WEFT_INSTALL_CNI");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        (child.wait_with_output().unwrap(), pid)
    }

    fn exec_log(&self) -> String {
        fs::read_to_string(self.path("exec.log")).unwrap_or_default()
    }

    fn plugin(&self) -> PathBuf {
        self.path("host/opt/cni/bin/weft")
    }

    fn conflist(&self) -> PathBuf {
        self.path("host/etc/cni/net.d/10-weft.conflist")
    }

    /// Leftover temporary files in the two host directories.
    fn leftovers(&self) -> Vec<String> {
        ["host/opt/cni/bin", "host/etc/cni/net.d"]
            .iter()
            .flat_map(|d| fs::read_dir(self.path(d)).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "weft" && n != "10-weft.conflist")
            .collect()
    }
}

#[test]
fn the_entrypoint_installs_the_plugin_and_conflist_then_execs_the_router() {
    let host = FakeHost::new();
    let (out, pid) = host.run(&["--metrics-addr", ":6782"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    // exec: the router runs as the entrypoint's own process, so the
    // kubelet's SIGTERM reaches it.
    assert_eq!(
        host.exec_log(),
        format!("{pid} router --metrics-addr :6782\n")
    );
    assert_eq!(fs::read(host.plugin()).unwrap(), b"plugin v1\n");
    assert_eq!(
        fs::metadata(host.plugin()).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let conf: Value = serde_json::from_slice(&fs::read(host.conflist()).unwrap()).unwrap();
    assert_eq!(conf["name"], "weft");
    assert_eq!(conf["cniVersion"], "1.0.0");
    let plugin = &conf["plugins"][0];
    assert_eq!(plugin["type"], "weft");
    assert_eq!(plugin["socket"], "/run/weft/weft.sock");
    assert_eq!(plugin["mtu"], 0);
    // hostPorts: portmap is chained after weft with the capability the
    // kubelet keys on, as the README and cni/weft.conflist promise.
    let portmap = &conf["plugins"][1];
    assert_eq!(portmap["type"], "portmap");
    assert_eq!(portmap["capabilities"]["portMappings"], true);
    let shipped: Value =
        serde_json::from_slice(&fs::read(root().join("cni/weft.conflist")).unwrap()).unwrap();
    assert_eq!(
        conf, shipped,
        "the installed conflist differs from cni/weft.conflist"
    );
    // No portmap on this fake host: one line says hostPorts will not work.
    assert!(text(&out).contains("portmap is missing"), "{}", text(&out));
    assert!(host.leftovers().is_empty(), "{:?}", host.leftovers());
}

#[test]
fn the_entrypoint_replaces_files_by_rename_and_only_when_they_changed() {
    let host = FakeHost::new();
    let (out, _) = host.run(&[], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let inode = |p: &Path| fs::metadata(p).unwrap().ino();
    let (plugin_before, conf_before) = (inode(&host.plugin()), inode(&host.conflist()));

    // Unchanged: nothing is rewritten (the same inodes).
    let (out, _) = host.run(&[], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(inode(&host.plugin()), plugin_before);
    assert_eq!(inode(&host.conflist()), conf_before);
    assert!(text(&out).contains("up to date"), "{}", text(&out));

    // A new plugin and a new socket path: each file is replaced by a
    // rename (a new inode), never written in place, so the kubelet never
    // runs or reads a half-written file, and an old plugin still executing
    // keeps its own inode.
    fs::write(host.path("weft-cni"), b"plugin v2\n").unwrap();
    let (out, _) = host.run(&[], &[("WEFT_API", "/var/run/weft/other.sock")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(inode(&host.plugin()), plugin_before);
    assert_ne!(inode(&host.conflist()), conf_before);
    assert_eq!(fs::read(host.plugin()).unwrap(), b"plugin v2\n");
    let conf: Value = serde_json::from_slice(&fs::read(host.conflist()).unwrap()).unwrap();
    assert_eq!(conf["plugins"][0]["socket"], "/var/run/weft/other.sock");
    assert!(host.leftovers().is_empty(), "{:?}", host.leftovers());
}

#[test]
fn the_entrypoint_runs_other_commands_without_installing() {
    let host = FakeHost::new();
    let (out, pid) = host.run(&["status", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(host.exec_log(), format!("{pid} status --json\n"));
    assert!(!host.plugin().exists());

    let (out, pid) = host.run(&["--peers-from-kube"], &[("WEFT_INSTALL_CNI", "0")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(host.exec_log(), format!("{pid} router --peers-from-kube\n"));
    assert!(!host.conflist().exists());
}

#[test]
fn the_entrypoint_refuses_bad_settings_in_one_line_and_starts_nothing() {
    let host = FakeHost::new();
    for (var, value) in [("WEFT_CNI_MTU", "1400x"), ("WEFT_API", "/run/\"weft")] {
        let (out, _) = host.run(&[], &[(var, value)]);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {}", text(&out));
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(said.lines().count(), 1, "{said}");
        assert!(said.contains(var), "{said}");
        assert!(host.exec_log().is_empty());
    }
    let (out, _) = host.run(&[], &[("WEFT_CNI_PLUGIN", "/nonexistent/weft-cni")]);
    assert!(!out.status.success());
    assert!(text(&out).contains("missing from this image"));
    assert!(host.exec_log().is_empty());
}

#[test]
fn node_sysctls_turns_ipv6_forwarding_on_only_for_an_ipv6_range_and_never_blocks_the_router() {
    let host = FakeHost::new();
    let proc_sys = host.path("proc/sys");
    let file = proc_sys.join("net/ipv6/conf/all/forwarding");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    let proc_env = proc_sys.display().to_string();
    for (ranges, wanted) in [
        ("10.32.0.0/12", "0"),
        ("", "0"),
        ("ipv6x", "0"),
        ("10.32.0.0/12,fd00:32::/48", "1"),
        ("10.32.0.0/12, ipv6", "1"),
        ("ipv6", "1"),
    ] {
        fs::write(&file, "0\n").unwrap();
        let (out, _) = host.run(
            &["node-sysctls"],
            &[("WEFT_PROC_SYS", &proc_env), ("WEFT_IPALLOC_RANGE", ranges)],
        );
        assert!(out.status.success(), "{ranges}: {}", text(&out));
        assert_eq!(
            fs::read_to_string(&file).unwrap().trim(),
            wanted,
            "{ranges}"
        );
        assert!(host.exec_log().is_empty(), "no router, no install");
        assert!(!host.plugin().exists());
    }
    // Refused (no such file here, read-only /proc/sys on a node): one line
    // with the setting to make, and success, so the router still starts.
    let (out, _) = host.run(
        &["node-sysctls"],
        &[
            ("WEFT_PROC_SYS", "/nonexistent/proc/sys"),
            ("WEFT_IPALLOC_RANGE", "ipv6"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.contains("net.ipv6.conf.all.forwarding=1"), "{said}");
}

// ---- the DaemonSet's environment, end to end ----

/// The container's environment as the kubelet would make it for node
/// `cp-1` at 192.0.2.10, its arguments and its readiness probe's command.
fn daemonset_env() -> (Vec<(String, String)>, Vec<String>, Vec<String>) {
    let container = support::manifest::pod_spec()["containers"][0].clone();
    (
        support::manifest::container_env("cp-1", "192.0.2.10"),
        support::manifest::strings(&container["args"]),
        support::manifest::strings(&container["readinessProbe"]["exec"]["command"]),
    )
}

/// One node, `cp-1` at 192.0.2.10, as a NodeList.
const ONE_NODE: &[u8] = br#"{"kind":"NodeList","apiVersion":"v1","metadata":{},"items":[{"metadata":{"name":"cp-1"},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.10"}],"conditions":[{"type":"Ready","status":"False"}]}}]}"#;

/// The API's answer when the service account may not list nodes.
const FORBIDDEN: &[u8] = include_bytes!("../data/nodes-forbidden.json");

/// The entrypoint, started with the DaemonSet's arguments and the
/// environment the kubelet would give it (host paths moved into a temp dir,
/// the real `weft`, the Kubernetes API a fake one), installs the CNI files
/// and becomes a router that serves metrics on the annotated port. With the
/// ConfigMap's defaults, unedited, the readiness probe fails and says why
/// while the Node list cannot be read, and passes once it can: the router
/// forms its ring from the nodes the list names.
#[test]
fn the_daemonset_environment_starts_a_router_that_passes_its_readiness_probe() {
    let test = "the_daemonset_environment_starts_a_router_that_passes_its_readiness_probe";
    if !support::require_root(test) || !have("python3", test) {
        return;
    }
    let (mut env, args, probe) = daemonset_env();
    let dir = TempDir::new("daemonset");
    let secret = dir.path.join("secret");
    write_secret(&secret);
    let api = dir.path.join("run/weft.sock");
    let cni_plugin = Path::new(BIN).with_file_name("weft-cni");
    let overrides = [
        ("WEFT_STATE_DIR", dir.path.join("state")),
        ("WEFT_API", api.clone()),
        ("WEFT_CNI_BIN_DIR", dir.path.join("host/opt/cni/bin")),
        ("WEFT_CNI_CONF_DIR", dir.path.join("host/etc/cni/net.d")),
        ("WEFT_SECRET_FILE", secret),
    ];
    for (name, path) in overrides {
        let slot = env
            .iter_mut()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("the DaemonSet sets no {name}"));
        slot.1 = path.display().to_string();
    }
    let plugin = if cni_plugin.exists() {
        cni_plugin
    } else {
        let stand_in = dir.path.join("weft-cni");
        fs::write(&stand_in, b"stand-in").unwrap();
        stand_in
    };
    env.push(("WEFT_CNI_PLUGIN".into(), plugin.display().to_string()));
    env.push(("WEFT_BIN".into(), BIN.into()));
    // The in-cluster API, as a fake on the node, listed every second.
    env.push(("WEFT_KUBE_API".into(), "http://192.0.2.10:8080".into()));
    env.push(("WEFT_KUBE_RESYNC_SECS".into(), "1".into()));

    // One node on an underlay switch: n0 at 192.0.2.10, as cp-1 is.
    let cluster = support::Cluster::new(1);
    let node = &cluster.nodes[0].ns;
    assert_eq!(cluster.nodes[0].underlay.to_string(), "192.0.2.10");
    let kube = support::fake_kube::FakeApi::start(
        &node.name,
        "192.0.2.10:8080".parse().unwrap(),
        403,
        FORBIDDEN,
    );

    // The probe, as written but for the binary and the socket's path.
    assert_eq!(probe[..2], ["weft", "ready"]);
    let run_probe = || {
        let mut argv: Vec<String> = probe[1..].to_vec();
        for a in &mut argv {
            if a == "/run/weft/weft.sock" {
                *a = api.display().to_string();
            }
        }
        run_timeout(Command::new(BIN).args(&argv), 10).unwrap()
    };
    let probe_ok = || run_probe().status.success();
    assert!(!probe_ok(), "the probe passes with no router running");

    let log = dir.path.join("router.log");
    let log_file = fs::File::create(&log).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.name, "sh"])
        .arg(entrypoint())
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let said = || fs::read_to_string(&log).unwrap_or_default();
    let answering = wait_until(std::time::Duration::from_secs(15), || {
        text(&run_probe()).contains("not ready")
    });
    if !answering {
        let _ = child.kill();
        panic!("the router never answered its readiness probe:\n{}", said());
    }
    assert!(dir.path.join("host/opt/cni/bin/weft").exists());
    assert!(
        dir.path
            .join("host/etc/cni/net.d/10-weft.conflist")
            .exists()
    );

    // Metrics on the port the annotations name.
    let scraped = support::in_netns(&node.name, || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("192.0.2.10", 6782)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        Some(body)
    })
    .join()
    .unwrap()
    .unwrap_or_default();
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    assert!(scraped.contains("weft_"), "{scraped}");

    // The Node list is forbidden: not ready, and the probe says why, for
    // as long as it lasts (the router does not vote alone meanwhile).
    let logged = wait_until(std::time::Duration::from_secs(5), || {
        said().contains("HTTP 403")
    });
    assert!(logged, "{}", said());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = run_probe();
    assert!(!out.status.success(), "ready without a node list");
    assert!(
        text(&out).contains("not ready: waiting for the first Kubernetes node list"),
        "{}",
        text(&out)
    );
    // Once per task: the node list's and the Lease's (the same RBAC).
    assert_eq!(
        said().matches("forbids listing nodes (HTTP 403)").count(),
        1,
        "{}",
        said()
    );
    assert_eq!(
        said()
            .matches("forbids the router's Lease (HTTP 403)")
            .count(),
        1,
        "{}",
        said()
    );

    // RBAC fixed: the list names this node; the default consensus forms a
    // ring of one and the probe passes.
    kube.answer(200, ONE_NODE);
    let ready = wait_until(std::time::Duration::from_secs(15), probe_ok);
    if !ready {
        let _ = child.kill();
        panic!(
            "the router never passed its readiness probe: {}\n{}",
            text(&run_probe()),
            said()
        );
    }
    assert!(said().contains("IPAM ring ready"), "{}", said());
    let _ = child.kill();
    let _ = child.wait();
}

// ---- the shipped binaries (scripts/build-dist.sh) ----
