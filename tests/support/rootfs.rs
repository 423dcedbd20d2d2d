//! Other userlands for the tests that run weft's shipped binaries as a
//! node or an image would: a Debian root filesystem built once by
//! scripts/build-rootfs.sh (debootstrap, cached outside the repo under
//! /var/cache/weft-test), and commands run inside it through a private
//! mount namespace, so that what a test mounts into the root (the plugin,
//! /run/netns, a socket directory) never touches the cache or the host.

use super::run_timeout;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory of the shipped binaries (scripts/build-dist.sh:
/// `weft` and the static `weft-cni`, stripped), or `None` after a loud
/// skip (a failure under WEFT_REQUIRE_ROOT_TESTS=1).
pub fn shipped_binaries(test: &str) -> Option<PathBuf> {
    let dist = Path::new(env!("CARGO_BIN_EXE_weft")).with_file_name("dist");
    if dist.join("weft").exists() && dist.join("weft-cni").exists() {
        return Some(dist);
    }
    if std::env::var("WEFT_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!(
            "{test}: {} is incomplete: run scripts/build-dist.sh",
            dist.display()
        );
    }
    eprintln!("\n!!!!! SKIPPED {test}: run scripts/build-dist.sh first !!!!!\n");
    None
}

/// The root filesystem of Debian `suite` with `packages`, cached under
/// `key` (scripts/build-rootfs.sh), or `None` after a loud skip when
/// debootstrap is missing (a failure under WEFT_REQUIRE_ROOT_TESTS=1).
/// The first build on a machine downloads from deb.debian.org (1-2 min).
pub fn debian(test: &str, suite: &str, key: &str, packages: &[&str]) -> Option<PathBuf> {
    build(test, false, suite, key, packages)
}

/// [`debian`] slimmed as the `debian:SUITE-slim` image is (no manual
/// pages, documentation or translations): the Dockerfile's base.
pub fn debian_slim(test: &str, suite: &str, key: &str, packages: &[&str]) -> Option<PathBuf> {
    build(test, true, suite, key, packages)
}

fn build(test: &str, slim: bool, suite: &str, key: &str, packages: &[&str]) -> Option<PathBuf> {
    let have = Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        if std::env::var("WEFT_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
            panic!("{test}: debootstrap is not installed (.ci/run installs it)");
        }
        eprintln!(
            "\n!!!!! SKIPPED {test}: debootstrap is not installed (apt-get install debootstrap) !!!!!\n"
        );
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-rootfs.sh");
    let out = run_timeout(
        Command::new(script)
            .args(slim.then_some("--slim"))
            .arg(suite)
            .arg(key)
            .args(packages),
        900,
    )
    .expect("scripts/build-rootfs.sh");
    assert!(
        out.status.success(),
        "{test}: scripts/build-rootfs.sh {suite} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.join(".complete").exists(), "{}", path.display());
    Some(path)
}

/// A command to run inside a root filesystem, in a private mount namespace
/// set up by a small shell script: tmpfs over some directories of the root,
/// files and directories of the host bound in, `/proc` mounted, then
/// `nsenter --net=/run/netns/NETNS chroot ROOT ARGV...` (only the network
/// namespace is entered: DESIGN.md "Test hosts").
pub struct InRoot {
    root: PathBuf,
    script: Vec<String>,
}

fn quoted(path: &Path) -> String {
    let s = path.display().to_string();
    assert!(!s.contains('\''), "path with a quote: {s}");
    format!("'{s}'")
}

impl InRoot {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            script: vec![format!("mount -t proc proc {}", quoted(&root.join("proc")))],
        }
    }

    /// An empty tmpfs over `inside` (e.g. `/run`, `/opt`).
    pub fn tmpfs(mut self, inside: &str) -> Self {
        let at = quoted(&self.root.join(inside.trim_start_matches('/')));
        self.script
            .push(format!("mkdir -p {at} && mount -t tmpfs tmpfs {at}"));
        self
    }

    /// Binds the host's `host` (a file or a directory, recursively) at
    /// `inside`, creating the mount point.
    pub fn bind(mut self, host: &Path, inside: &str) -> Self {
        let at = quoted(&self.root.join(inside.trim_start_matches('/')));
        let make = if host.is_dir() {
            format!("mkdir -p {at}")
        } else {
            format!("mkdir -p \"$(dirname {at})\" && touch {at}")
        };
        self.script
            .push(format!("{make} && mount --rbind {} {at}", quoted(host)));
        self
    }

    /// The command: `argv` run in the root, in network namespace `netns`.
    pub fn command(&self, netns: &str, argv: &[&str]) -> Command {
        let mut script = self.script.join("\n");
        script.push_str(&format!(
            "\nexec nsenter --net=/run/netns/{netns} chroot {} \"$@\"",
            quoted(&self.root)
        ));
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-ec"])
            .arg(script)
            .arg("sh")
            .args(argv);
        cmd
    }
}
