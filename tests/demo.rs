//! `weft demo` is the README's first command: it must build the mesh, show an
//! all-green ping matrix and leave nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use support::*;

#[test]
fn the_demo_pings_every_pod_from_every_other_and_cleans_up() {
    if !require_root("demo") {
        return;
    }
    let out = run_timeout(
        Command::new(env!("CARGO_BIN_EXE_weft")).args(["demo", "--nodes", "3"]),
        120,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let matrix: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("ping matrix"))
        .skip(2)
        .take(3)
        .collect();
    assert_eq!(matrix.len(), 3, "no ping matrix in:\n{stdout}");
    for row in &matrix {
        assert_eq!(row.matches("ok").count(), 3, "row not all green: {row}");
    }
    assert!(!stdout.contains("FAIL"));
    assert!(stdout.contains("connections established"));
    let pid = std::process::id();
    let left = sh(&["ip", "netns", "list"]);
    assert!(
        !left.lines().any(|l| l.starts_with("weft-demo-")
            && !l.contains(&format!("weft-demo-{pid}"))
            && l.split('-')
                .nth(2)
                .is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())),
        "demo left namespaces behind:\n{left}"
    );
}

#[test]
fn the_ipv6_demo_pings_every_pod_over_both_families() {
    if !require_root("demo_ipv6") {
        return;
    }
    let out = run_timeout(
        Command::new(env!("CARGO_BIN_EXE_weft")).args(["demo", "--nodes", "2", "--ipv6"]),
        120,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo --ipv6 failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let matrix = |title: &str| -> Vec<String> {
        stdout
            .lines()
            .skip_while(|l| !l.starts_with(title))
            .skip(1)
            .take(3)
            .map(str::to_string)
            .collect()
    };
    let v4 = matrix("ping matrix (");
    let v6 = matrix("ping matrix over IPv6 (");
    assert_eq!(v6.len(), 3, "no IPv6 ping matrix in:\n{stdout}");
    // The header row holds the pods' addresses: IPv4 in one, IPv6 (ULA) in the other.
    let count = |row: &str, v6: bool| {
        row.split_whitespace()
            .filter_map(|t| t.parse::<std::net::IpAddr>().ok())
            .filter(|a| a.is_ipv6() == v6)
            .count()
    };
    assert_eq!(count(&v4[0], false), 2, "{}", v4[0]);
    assert_eq!(count(&v6[0], true), 2, "{}", v6[0]);
    for row in v4[1..].iter().chain(&v6[1..]) {
        assert_eq!(row.matches("ok").count(), 2, "row not all green: {row}");
    }
    assert!(!stdout.contains("FAIL"));
}

#[test]
fn a_demo_without_ping_says_so_in_one_line_and_creates_nothing() {
    if !require_root("demo_tools") {
        return;
    }
    // A PATH with every tool the demo runs but ping.
    let dir = TempDir::new("demo-path");
    for tool in ["ip", "nft", "kill", "timeout"] {
        let found = sh(&["sh", "-c", &format!("command -v {tool}")]);
        std::os::unix::fs::symlink(found.trim(), dir.path.join(tool)).unwrap();
    }
    let out = run_timeout(
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("demo")
            .env("PATH", &dir.path),
        30,
    )
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("ping (iputils-ping)")
            && stderr.contains("apt-get install -y iputils-ping"),
        "{stderr}"
    );
    assert!(!stderr.contains("nft ("), "{stderr}");
    // It has exited: any namespace of a demo whose process is gone is its
    // (the other test here runs a demo at the same time, alive).
    let left = sh(&["ip", "netns", "list"]);
    assert!(
        !left.lines().any(|l| l.starts_with("weft-demo-")
            && l.split('-')
                .nth(2)
                .is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())),
        "the demo created something:\n{left}"
    );
}
