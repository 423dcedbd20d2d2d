//! Bad input to `weft router` and `weft status`: each mistake is a single
//! clear line on stderr and a non-zero exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

fn weft(args: &[&str]) -> Output {
    run_timeout(confined_command(BIN).args(args).env_remove("RUST_LOG"), 20).expect("run weft")
}

/// Asserts a failed run whose stderr is exactly one line mentioning every
/// word of `mentions`; returns the line.
fn one_line_failure(out: &Output, mentions: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got:\n{stderr}"
    );
    for word in mentions {
        assert!(
            stderr.contains(word),
            "{stderr:?} does not mention {word:?}"
        );
    }
    stderr
}

fn base_args(dir: &Path) -> Vec<String> {
    vec![
        "router".into(),
        "--name".into(),
        "a".into(),
        "--listen".into(),
        "192.0.2.10:6783".into(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--api".into(),
        dir.join("api.sock").display().to_string(),
        "--ipalloc-init".into(),
        "seed=a,b".into(),
    ]
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run_args(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    weft(&refs)
}

#[test]
fn a_missing_secret_says_how_to_create_one() {
    let dir = TempDir::new("nosecret");
    let out = run_args(&base_args(&dir.path));
    one_line_failure(&out, &["--secret-file", "head -c 32 /dev/urandom"]);
    let missing = dir.path.join("absent");
    let out = run_args(&with(
        base_args(&dir.path),
        &["--secret-file", missing.to_str().unwrap()],
    ));
    one_line_failure(&out, &["absent"]);
}

#[test]
fn a_short_secret_is_refused_with_its_minimum_length() {
    let dir = TempDir::new("shortsecret");
    let secret = dir.path.join("secret");
    std::fs::write(&secret, "too-short\n").unwrap();
    let out = run_args(&with(
        base_args(&dir.path),
        &["--secret-file", secret.to_str().unwrap()],
    ));
    one_line_failure(&out, &["32"]);
}

#[test]
fn network_policy_with_ipv6_pods_is_accepted_now_that_it_enforces_on_both_families() {
    // The policy table is `inet` (issue 18 on dual-stack pods): the
    // combination passes validation, and the one line is about the next
    // thing wrong, an IPv4 range too small.
    let dir = TempDir::new("policy6");
    let secret = dir.path.join("secret");
    write_secret(&secret);
    let args = with(
        base_args(&dir.path),
        &[
            "--secret-file",
            secret.to_str().unwrap(),
            "--ipalloc-range",
            "fd00:32::/48",
            "--ipalloc-range",
            "10.32.0.0/31",
            "--network-policy",
            // Never reached: the configuration is refused first.
            "--kube-api",
            "http://127.0.0.1:9",
        ],
    );
    let out = run_args(&args);
    one_line_failure(&out, &["10.32.0.0/31", "too small"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("IPv6 pods"), "{stderr}");
}

#[test]
fn a_bad_cidr_names_the_range_and_a_fix() {
    let dir = TempDir::new("badcidr");
    let secret = dir.path.join("secret");
    write_secret(&secret);
    let args = with(
        base_args(&dir.path),
        &["--secret-file", secret.to_str().unwrap()],
    );
    let out = run_args(&with(args.clone(), &["--ipalloc-range", "10.32.0.0/33"]));
    one_line_failure(&out, &["--ipalloc-range", "10.32.0.0/33"]);
    let out = run_args(&with(args, &["--ipalloc-range", "10.32.1.0/12"]));
    one_line_failure(&out, &["did you mean 10.32.0.0/12"]);
}

#[test]
fn an_unknown_flag_is_one_line_pointing_at_help() {
    let out = weft(&["router", "--no-such-flag"]);
    one_line_failure(&out, &["--no-such-flag", "--help"]);
    let out = weft(&["frobnicate"]);
    one_line_failure(&out, &["frobnicate"]);
}

#[test]
fn status_without_a_router_says_it_is_not_running() {
    let dir = TempDir::new("nostatus");
    let sock = dir.path.join("none.sock");
    let out = weft(&["status", "--api", sock.to_str().unwrap()]);
    one_line_failure(&out, &["cannot reach the weft router", "none.sock"]);
}

#[test]
fn a_bad_identity_max_age_is_one_line_with_an_example() {
    let dir = TempDir::new("maxage");
    let secret = dir.path.join("secret");
    write_secret(&secret);
    let args = with(
        base_args(&dir.path),
        &["--secret-file", secret.to_str().unwrap()],
    );
    for bad in ["soon", "0d", "5w", "12y"] {
        let out = run_args(&with(args.clone(), &["--identity-max-age", bad]));
        one_line_failure(&out, &["--identity-max-age", "90d"]);
    }
}

#[test]
fn rotate_identity_without_a_router_says_it_is_not_running() {
    let dir = TempDir::new("norotate");
    let sock = dir.path.join("none.sock");
    let out = weft(&["rotate-identity", "--api", sock.to_str().unwrap()]);
    one_line_failure(&out, &["cannot reach the weft router", "none.sock"]);
}

#[test]
fn a_port_already_in_use_is_reported_with_the_address() {
    if !require_root("port_in_use") {
        return;
    }
    let cluster = Cluster::new(1);
    let node = &cluster.nodes[0];
    let mut first = Router::new(Path::new(BIN), node, &cluster.dir.path, &[], &["n0", "n1"]);
    first.start();
    let dir = TempDir::new("second");
    let secret = dir.path.join("secret");
    write_secret(&secret);
    let mut args = vec!["netns", "exec", &node.ns.name, BIN];
    let second = [
        "router",
        "--name",
        "n0",
        "--listen",
        "192.0.2.10:6783",
        "--state-dir",
        &dir.path.join("state").display().to_string(),
        "--api",
        &dir.path.join("api.sock").display().to_string(),
        "--ipalloc-init",
        "seed=n0,n1",
        "--secret-file",
        secret.to_str().unwrap(),
        "--iface",
        "weft1",
    ]
    .map(String::from);
    args.extend(second.iter().map(String::as_str));
    let out = run_timeout(Command::new("ip").args(&args), 20).unwrap();
    one_line_failure(&out, &["192.0.2.10:6783", "in use"]);
    assert!(first.status().is_some(), "the first router went down");
}

#[test]
fn no_permission_for_the_tun_device_says_to_run_as_root() {
    if !require_root("tun_permission") {
        return;
    }
    let cluster = Cluster::new(1);
    let dir = TempDir::new("nobody");
    // The unprivileged user must be able to read the secret and write state.
    std::fs::set_permissions(
        &dir.path,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let secret = dir.path.join("secret");
    write_secret(&secret);
    // Its own 0600 file: a secret open to others is warned about (a second line).
    std::os::unix::fs::chown(&secret, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let state = dir.path.join("state");
    let api = dir.path.join("api.sock");
    let args = [
        "netns",
        "exec",
        &cluster.nodes[0].ns.name,
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        BIN,
        "router",
        "--name",
        "n0",
        "--listen",
        "192.0.2.10:6783",
        "--state-dir",
        state.to_str().unwrap(),
        "--api",
        api.to_str().unwrap(),
        "--ipalloc-init",
        "seed=n0",
        "--secret-file",
        secret.to_str().unwrap(),
    ];
    let out = run_timeout(Command::new("ip").args(args), 20).unwrap();
    one_line_failure(&out, &["TUN", "root", "CAP_NET_ADMIN"]);
}
