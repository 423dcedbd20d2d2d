//! Kubelet's side of the CRI, for tests/cri.rs: containerd with its CRI
//! plugin on a netns node (its own root, state and socket; CNI from a
//! per-test directory holding the conflist the image's entrypoint installs),
//! a client built on the generated CRI bindings (`k8s-cri`, runtime.v1), and
//! the pod and container configurations kubelet sends for a plain pod.
// The CRI's own error, whole, as kubelet gets it: a test helper has no
// hot path to keep small.
#![allow(clippy::result_large_err)]

use super::cni::plugin_dir;
use super::{Netns, run_timeout, wait_until};
use k8s_cri::v1 as cri;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// The sandbox ("pause") and container image, imported from the busybox
/// OCI archive (support::cni::busybox_oci_archive): no registry here.
pub const IMAGE: &str = "localhost/weft-busybox:latest";

/// The conflist `docker/entrypoint.sh` installs, with the plugin `plugin`
/// talking to `socket`: the entrypoint itself runs with its install
/// directories pointed under `dir` and `WEFT_BIN=true` in place of the
/// router, so this test and the DaemonSet cannot drift apart. Returns
/// (bin dir, conf dir); the bin dir also holds the reference plugins
/// (portmap, loopback).
pub fn entrypoint_cni_dirs(dir: &Path, plugin: &Path, socket: &Path) -> (PathBuf, PathBuf) {
    let bin = plugin_dir(dir);
    let netd = dir.join("net.d");
    let entrypoint = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/entrypoint.sh");
    let out = run_timeout(
        Command::new("sh")
            .arg(&entrypoint)
            .env("WEFT_CNI_BIN_DIR", &bin)
            .env("WEFT_CNI_CONF_DIR", &netd)
            .env("WEFT_CNI_PLUGIN", plugin)
            .env("WEFT_API", socket)
            .env("WEFT_BIN", "true"),
        20,
    )
    .expect("run the entrypoint");
    assert!(out.status.success(), "entrypoint: {out:?}");
    (bin, netd)
}

/// containerd with the CRI plugin enabled, in one node's network namespace
/// (`nsenter --net` only, DESIGN.md "Test hosts"), everything under `dir`.
pub struct CriRuntime {
    pub dir: PathBuf,
    pub node_ns: String,
    bin: PathBuf,
    netd: PathBuf,
    child: Option<Child>,
}

impl CriRuntime {
    /// Writes the config and starts containerd; `env` is added to its
    /// environment (containerd hands its environment to CNI plugins).
    pub fn start(dir: &Path, node: &Netns, bin: &Path, netd: &Path, env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut c = Self {
            dir: dir.to_path_buf(),
            node_ns: node.name.clone(),
            bin: bin.to_path_buf(),
            netd: netd.to_path_buf(),
            child: None,
        };
        c.write_config();
        c.spawn(env);
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn write_config(&self) {
        let d = self.dir.display();
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        // As a kubeadm node configures it, less what this host lacks:
        // the native snapshotter (overlayfs may not nest here), cgroupfs,
        // no AppArmor, and no CAP_SYS_RESOURCE (the pause container's
        // oom_score_adj -998 is clamped to ours, as in a nested node).
        std::fs::write(
            self.dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [{cri}]\n  sandbox_image = \"{IMAGE}\"\n  disable_apparmor = true\n\
                 \x20 restrict_oom_score_adj = true\n\
                 [{cri}.containerd]\n  snapshotter = \"native\"\n  default_runtime_name = \"runc\"\n\
                 [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
                 [{cri}.cni]\n  bin_dir = \"{}\"\n  conf_dir = \"{}\"\n  max_conf_num = 1\n",
                self.bin.display(),
                self.netd.display()
            ),
        )
        .unwrap();
    }

    fn spawn(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("containerd"));
        let up = wait_until(Duration::from_secs(20), || {
            Cri::connect(&self.socket()).is_some_and(|mut c| c.version().is_ok())
        });
        assert!(up, "containerd's CRI did not answer:\n{}", self.log_tail());
    }

    /// The containerd process's PID (for a test that kills it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a node that crashes or an OOM kill would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts containerd again on the same root and state.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn(&[]);
    }

    /// `ctr ARGS` in namespace k8s.io (CRI's), in the node's namespace.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", "k8s.io"])
            .args(args);
        run_timeout(&mut cmd, 60).expect("spawn ctr")
    }

    /// Imports the busybox OCI archive as CRI's pause and container image.
    pub fn import(&self, archive: &Path) {
        let out = self.ctr(&[
            "image",
            "import",
            "--snapshotter",
            "native",
            &archive.display().to_string(),
        ]);
        assert!(out.status.success(), "ctr image import: {out:?}");
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// What kubelet does with a runtime's leftovers: every sandbox stopped
    /// and removed. Returns the IDs it removed.
    pub fn remove_all_sandboxes(&self) -> Vec<String> {
        let Some(mut c) = Cri::connect(&self.socket()) else {
            return Vec::new();
        };
        let ids: Vec<String> = c
            .sandboxes()
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.id)
            .collect();
        for id in &ids {
            let _ = c.stop_sandbox(id);
            let _ = c.remove_sandbox(id);
        }
        ids
    }

    /// Processes this containerd started that outlive it (shims, a
    /// plugin): their command line or environment names our directory.
    fn our_stragglers(&self) -> Vec<u32> {
        let me = self.dir.display().to_string();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&me) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for CriRuntime {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all_sandboxes();
        }
        self.kill9();
        for pid in self.our_stragglers() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        // Rootfs bind mounts a killed containerd left (deepest first).
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let me = self.dir.display().to_string();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&me))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
    }
}

/// A blocking CRI client (runtime.v1) over containerd's socket; each call
/// is bounded by a timeout, as kubelet's are.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: cri::runtime_service_client::RuntimeServiceClient<Channel>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Cri {
    pub fn connect(socket: &Path) -> Option<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    Endpoint::from_static("http://[::]:50051").connect_with_connector(
                        tower::service_fn(move |_: Uri| {
                            tokio::net::UnixStream::connect(path.clone())
                        }),
                    ),
                )
                .await
            })
            .ok()?
            .ok()?;
        Some(Self {
            rt,
            client: cri::runtime_service_client::RuntimeServiceClient::new(channel),
        })
    }

    fn call<T, F>(
        &mut self,
        f: impl FnOnce(cri::runtime_service_client::RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        self.rt.block_on(async {
            match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded("CRI call timed out")),
            }
        })
    }

    pub fn version(&mut self) -> Result<cri::VersionResponse, tonic::Status> {
        self.call(|mut c| async move { c.version(cri::VersionRequest::default()).await })
    }

    pub fn run_sandbox(&mut self, config: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        self.call(|mut c| async move { c.run_pod_sandbox(req).await })
            .map(|r| r.pod_sandbox_id)
    }

    pub fn sandbox_status(&mut self, id: &str) -> Result<cri::PodSandboxStatus, tonic::Status> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        self.call(|mut c| async move { c.pod_sandbox_status(req).await })?
            .status
            .ok_or_else(|| tonic::Status::internal("no status"))
    }

    pub fn sandboxes(&mut self) -> Result<Vec<cri::PodSandbox>, tonic::Status> {
        let req = cri::ListPodSandboxRequest { filter: None };
        self.call(|mut c| async move { c.list_pod_sandbox(req).await })
            .map(|r| r.items)
    }

    pub fn stop_sandbox(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(|mut c| async move { c.stop_pod_sandbox(req).await })
            .map(|_| ())
    }

    pub fn remove_sandbox(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(|mut c| async move { c.remove_pod_sandbox(req).await })
            .map(|_| ())
    }

    /// CreateContainer then StartContainer, as kubelet does; the ID.
    pub fn start_container(
        &mut self,
        sandbox: &str,
        config: cri::ContainerConfig,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let id = self
            .call(|mut c| async move { c.create_container(req).await })?
            .container_id;
        let req = cri::StartContainerRequest {
            container_id: id.clone(),
        };
        self.call(|mut c| async move { c.start_container(req).await })?;
        Ok(id)
    }

    /// ExecSync: (exit code, stdout + stderr).
    pub fn exec_sync(
        &mut self,
        container: &str,
        cmd: &[&str],
    ) -> Result<(i32, String), tonic::Status> {
        let req = cri::ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        };
        self.call(|mut c| async move { c.exec_sync(req).await })
            .map(|r| {
                let mut text = String::from_utf8_lossy(&r.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&r.stderr));
                (r.exit_code, text)
            })
    }
}

/// A plain pod as kubelet sends it to RunPodSandbox: its metadata and the
/// `io.kubernetes.pod.*` labels (containerd turns them into the plugin's
/// `K8S_POD_*` CNI_ARGS), cluster DNS, a hostPort, and the Linux security
/// context of a pod with no securityContext of its own.
pub fn pod_config(
    namespace: &str,
    name: &str,
    uid: &str,
    host_port: Option<(i32, i32)>,
    logs: &Path,
) -> cri::PodSandboxConfig {
    let labels: HashMap<String, String> = [
        ("io.kubernetes.pod.name", name),
        ("io.kubernetes.pod.namespace", namespace),
        ("io.kubernetes.pod.uid", uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let annotations: HashMap<String, String> = [
        ("kubernetes.io/config.source", "api"),
        ("kubernetes.io/config.seen", "2026-12-02T06:00:00Z"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let port_mappings = host_port
        .map(|(container_port, host_port)| cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port,
            host_port,
            host_ip: String::new(),
        })
        .into_iter()
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs
            .join(format!("{namespace}_{name}_{uid}"))
            .display()
            .to_string(),
        // Documentation addresses: written into resolv.conf, never asked.
        dns_config: Some(cri::DnsConfig {
            servers: vec!["203.0.113.53".into()],
            searches: vec![
                format!("{namespace}.svc.cluster.local"),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        }),
        port_mappings,
        labels,
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Unconfined as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            sysctls: HashMap::new(),
        }),
    }
}

/// Kubelet's namespace options for a plain pod: the network and IPC of the
/// pod, a PID namespace per container.
fn namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

/// A container as kubelet sends it to CreateContainer, running `command`.
pub fn container_config(
    pod: &cri::PodSandboxConfig,
    name: &str,
    command: &[&str],
) -> cri::ContainerConfig {
    let mut labels = pod.labels.clone();
    labels.insert("io.kubernetes.container.name".into(), name.into());
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.into(),
            annotations: HashMap::new(),
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels,
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources::default()),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Unconfined as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}
