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
