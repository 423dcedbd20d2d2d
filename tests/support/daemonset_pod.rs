//! The DaemonSet's pod as a kubelet would run it, for tests/image.rs: what
//! the Dockerfile's runtime stage is made of, the root filesystem's cache
//! key, a layer's compressed size, and a runc "kubelet" per node with the
//! OCI config containerd would derive from deploy/daemonset.yaml.

use super::cni::output_text as text;
use super::manifest::{self, instructions};
use super::run_timeout;
use serde_json::{Value, json};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the Dockerfile's runtime stage is made of.
pub struct RuntimeStage {
    /// Debian suite of its `FROM debian:SUITE-slim`.
    pub suite: String,
    /// What it `apt-get install`s.
    pub packages: Vec<String>,
    /// The ENTRYPOINT.
    pub entrypoint: String,
}

pub fn runtime_stage() -> RuntimeStage {
    let text = fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let all = instructions(&text);
    let start = all
        .iter()
        .position(|(k, v)| k == "FROM" && v.ends_with(" AS runtime"))
        .expect("a runtime stage");
    let stage = &all[start..];
    let base = stage[0].1.split_whitespace().next().unwrap();
    let suite = base
        .strip_prefix("debian:")
        .and_then(|s| s.strip_suffix("-slim"))
        .unwrap_or_else(|| panic!("the test builds debian:SUITE-slim bases only, not {base}"))
        .to_string();
    let install = stage
        .iter()
        .find(|(k, v)| k == "RUN" && v.contains("apt-get install"))
        .expect("an apt-get install");
    let after = install.1.split("apt-get install").nth(1).unwrap();
    let packages = after
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .map(str::to_string)
        .collect();
    let entrypoint = stage
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, v)| serde_json::from_str::<Vec<String>>(v).unwrap()[0].clone())
        .expect("an ENTRYPOINT");
    // The files the stage copies in, where the test puts them.
    let copies: Vec<&String> = stage
        .iter()
        .filter(|(k, _)| k == "COPY")
        .map(|(_, v)| v)
        .collect();
    assert!(
        copies
            .iter()
            .any(|c| c.contains("/out/weft /out/weft-cni /usr/local/bin/")),
        "{copies:?}"
    );
    assert!(
        copies
            .iter()
            .any(|c| c.ends_with(&format!("docker/entrypoint.sh {entrypoint}"))),
        "{copies:?}"
    );
    RuntimeStage {
        suite,
        packages,
        entrypoint,
    }
}

/// The cache key: what the root filesystem is built from.
pub fn rootfs_key() -> String {
    let out = run_timeout(
        Command::new("sh").arg("-c").arg(format!(
            "cat '{}/Dockerfile' '{}/scripts/build-rootfs.sh' | sha256sum",
            repo().display(),
            repo().display()
        )),
        10,
    )
    .unwrap();
    String::from_utf8_lossy(&out.stdout)[..16].to_string()
}

/// Bytes of `tar c DIRS | gzip -6`, as a registry stores a layer.
pub fn gzipped_size(dirs: &[(&Path, &str)]) -> u64 {
    let mut script = String::from("{ ");
    for (dir, what) in dirs {
        script.push_str(&format!("tar -C '{}' -cf - {what}; ", dir.display()));
    }
    script.push_str("} | gzip -6 | wc -c");
    let out = run_timeout(Command::new("sh").arg("-c").arg(script), 300).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A "kubelet" for one node: the node's host directories, the container's
/// bundle, and runc.
pub struct PodRunner {
    pub id: String,
    pub node_ns: String,
    /// runc's state directory (its `--root`).
    pub state: PathBuf,
    pub bundle: PathBuf,
    /// The node's host file system: `opt/cni/bin`, `etc/cni/net.d`,
    /// `var/lib/weft`, `run/weft`.
    pub host: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl PodRunner {
    pub fn runc(&self) -> Command {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(&self.state);
        cmd
    }

    /// Starts the container (`runc run`, in the node's network namespace
    /// only: DESIGN.md "Test hosts").
    pub fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg("runc")
            .arg("--root")
            .arg(&self.state)
            .args(["run", "--bundle"])
            .arg(&self.bundle)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("runc run"));
    }

    /// Waits up to `timeout` for the container to exit (an init
    /// container); its exit status, `None` if it still runs.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                let _ = run_timeout(self.runc().args(["delete", "--force", &self.id]), 10);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The kubelet's exec probe: `runc exec` of `argv`.
    pub fn exec(&self, argv: &[String]) -> Output {
        run_timeout(self.runc().arg("exec").arg(&self.id).args(argv), 10).unwrap()
    }

    /// SIGTERM to the container's PID 1, as the kubelet stops a pod; how
    /// long until it exited, if within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<Duration> {
        let started = Instant::now();
        let out = run_timeout(self.runc().args(["kill", &self.id, "TERM"]), 10).unwrap();
        assert!(out.status.success(), "runc kill: {}", text(&out));
        let child = self.child.as_mut()?;
        while started.elapsed() < grace {
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                let _ = run_timeout(self.runc().args(["delete", "--force", &self.id]), 10);
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn said(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The router's status over the socket in the node's `/run/weft`.
    pub fn status(&self) -> Option<Value> {
        let out = run_timeout(
            Command::new(WEFT)
                .args(["status", "--json", "--api"])
                .arg(self.host.join("run/weft/weft.sock")),
            10,
        )
        .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        let _ = run_timeout(self.runc().args(["kill", &self.id, "KILL"]), 10);
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = run_timeout(self.runc().args(["delete", "--force", &self.id]), 10);
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.id, self.said());
        }
    }
}

/// The capabilities by number (linux/capability.h, up to
/// CAP_CHECKPOINT_RESTORE); a privileged container gets each of them that
/// the runtime itself holds (its bounding set), as containerd gives.
const ALL_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The OCI runtime config the kubelet (through containerd) would give
/// `container` of the DaemonSet's pod `spec` (its router container, or its
/// init container) on a node, from deploy/daemonset.yaml. A privileged
/// container gets what containerd gives one: every capability, a writable
/// `/sys` and `/proc/sys`, nothing masked.
#[allow(clippy::too_many_arguments)]
pub fn oci_config(
    spec: &Value,
    container: &Value,
    env: &[(String, String)],
    argv: &[String],
    rootfs: &Path,
    image_bin: &Path,
    volumes: &[(String, PathBuf)],
    cgroup: &str,
) -> Value {
    assert_eq!(spec["hostNetwork"], true, "the test runs a hostNetwork pod");
    let sc = &container["securityContext"];
    let privileged = sc["privileged"] == true;
    let caps: Vec<String> = if privileged {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let bounding = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .expect("CapBnd in /proc/self/status");
        ALL_CAPS
            .iter()
            .enumerate()
            .filter(|(bit, _)| bounding & (1 << bit) != 0)
            .map(|(_, c)| format!("CAP_{c}"))
            .collect()
    } else {
        assert_eq!(
            manifest::strings(&sc["capabilities"]["drop"]),
            ["ALL"],
            "the test gives exactly the capabilities added"
        );
        manifest::strings(&sc["capabilities"]["add"])
            .iter()
            .map(|c| format!("CAP_{c}"))
            .collect()
    };
    let sys_options = if privileged {
        json!(["nosuid", "noexec", "nodev"])
    } else {
        json!(["nosuid", "noexec", "nodev", "ro"])
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        // Not privileged: containerd mounts sysfs read-only.
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options}),
        // The image's COPY into /usr/local/bin (an empty directory in the
        // base): the binaries and the entrypoint, read-only.
        json!({"destination": "/usr/local/bin", "type": "bind", "source": image_bin, "options": ["rbind", "ro"]}),
    ];
    let by_name = |name: &str| -> Option<&PathBuf> {
        volumes.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    };
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().unwrap();
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        let dest = m["mountPath"].as_str().unwrap();
        let ro = m["readOnly"] == true;
        let mount = if volume["emptyDir"]["medium"] == "Memory" {
            let size = volume["emptyDir"]["sizeLimit"].as_str().unwrap_or("16Mi");
            let size = size.replace("Mi", "m");
            json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", format!("size={size}")]})
        } else {
            let source = if volume["hostPath"]["path"] == "/dev/net/tun" {
                assert_eq!(volume["hostPath"]["type"], "CharDevice");
                PathBuf::from("/dev/net/tun")
            } else {
                by_name(name)
                    .unwrap_or_else(|| panic!("the test has no host directory for volume {name}"))
                    .clone()
            };
            let mut options = vec!["rbind", "rprivate"];
            if ro {
                options.push("ro");
            }
            json!({"destination": dest, "type": "bind", "source": source, "options": options})
        };
        mounts.push(mount);
    }
    let mut env_list =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    env_list.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": argv,
            "env": env_list,
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": sc["allowPrivilegeEscalation"] == false,
        },
        "root": {"path": rootfs, "readonly": sc["readOnlyRootFilesystem"] == true},
        "mounts": mounts,
        "linux": {
            // hostNetwork (and so the host's UTS): the network namespace is
            // the node's, entered by nsenter; a PID, mount and IPC
            // namespace of its own (containerd adds a cgroup namespace on
            // cgroup v2 only).
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}],
            "cgroupsPath": cgroup,
            // containerd's defaults: deny every device but runc's own list
            // (which allows tun: deploy/README.md "/dev/net/tun").
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "maskedPaths": if privileged { json!([]) } else { json!(["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware"]) },
            "readonlyPaths": if privileged { json!([]) } else { json!(["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"]) },
        },
    })
}
