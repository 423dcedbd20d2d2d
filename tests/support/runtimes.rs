//! Container runtimes that run the CNI plugin in tests/cni.rs and
//! tests/cri.rs: the busybox image made without a registry, podman with its
//! CNI backend, containerd with `ctr run --cni`, each with its config and
//! state under a test directory and run in one node's network namespace.

use super::cni::plugin_bin;
use super::cri::entrypoint_cni_dirs;
use super::{Netns, run_timeout};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    /// to `socket` (the conflist the image's entrypoint installs), and
    /// imports the busybox image as `weft-busybox`.
    pub fn new(dir: &Path, node: &Netns, socket: &Path, rootfs_tar: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display();
        let (bin, net_d) = entrypoint_cni_dirs(dir, &plugin_bin(), socket);
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
        // A default command for when the image is a pod sandbox's (CRI's
        // pause image, tests/cri.rs); every other use names its own.
        p.ok(&[
            "import",
            "--change",
            r#"CMD ["/bin/sleep", "86400"]"#,
            &rootfs_tar.display().to_string(),
            "weft-busybox",
        ]);
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
        eth0_address(&text, "inet").unwrap_or_else(|| panic!("no address in {text:?}"))
    }

    /// A container's global IPv6 address on eth0, read inside it (its
    /// link-local one is skipped).
    pub fn address6(&self, name: &str) -> std::net::Ipv6Addr {
        let text = self.ok(&[
            "exec", name, "ip", "-o", "-6", "addr", "show", "eth0", "scope", "global",
        ]);
        eth0_address(&text, "inet6").unwrap_or_else(|| panic!("no IPv6 address in {text:?}"))
    }
}

/// The first address after `family` (`inet`, `inet6`) in `ip -o addr`
/// output.
pub fn eth0_address<A: std::str::FromStr>(text: &str, family: &str) -> Option<A> {
    text.split_whitespace()
        .skip_while(|w| *w != family)
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
    }
}

/// The busybox image as an OCI archive (what `ctr image import` takes),
/// saved by podman on `node`: `localhost/weft-busybox:latest`.
pub fn busybox_oci_archive(dir: &Path, node: &Netns, socket: &Path) -> PathBuf {
    let rootfs = busybox_rootfs_tar(dir);
    let archive = dir.join("busybox-oci.tar");
    let p = Podman::new(&dir.join("podman"), node, socket, &rootfs);
    p.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        &archive.display().to_string(),
        "weft-busybox",
    ]);
    archive
}

/// containerd with its state under `dir`, and `ctr run --rm --cni` on the
/// conflist the image's entrypoint installs. ctr reads the lexically first
/// conflist of /etc/cni/net.d and plugins from /opt/cni/bin, so each ctr
/// runs in a private mount namespace where those two are bind mounts of
/// directories under `dir` (the host's stay as they are).
pub struct Containerd {
    pub dir: PathBuf,
    pub node_ns: String,
    child: std::process::Child,
}

impl Containerd {
    /// Starts containerd (in the node's namespace), imports `oci_archive`.
    pub fn start(dir: &Path, node: &Netns, socket: &Path, oci_archive: &Path) -> Self {
        std::fs::create_dir_all(dir.join("opt/cni")).unwrap();
        let (bin, _) = entrypoint_cni_dirs(dir, &plugin_bin(), socket);
        let _ = std::os::unix::fs::symlink(&bin, dir.join("opt/cni/bin"));
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
        "set -e; mount --bind {d}/net.d /etc/cni/net.d; mount --bind {d}/opt /opt; \
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
