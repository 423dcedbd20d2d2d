//! The router's log as a log pipeline sees it (issue 17): stderr is a file,
//! as under `kubectl logs` or a collector, so the text format carries no
//! ANSI escapes, and `--log-format json` (or `WEFT_LOG_FORMAT=json`) gives
//! one JSON object per line with the fields tracing has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// Two routers that mesh and form a ring (so lifecycle lines at info are
/// written); n0 logs text, n1 json chosen through the environment.
#[test]
fn a_log_written_to_a_file_has_no_escapes_and_json_lines_parse() {
    if !require_root("a_log_written_to_a_file_has_no_escapes_and_json_lines_parse") {
        return;
    }
    let cluster = Cluster::new(2);
    let mut routers = new_routers(
        std::path::Path::new(BIN),
        &cluster,
        2,
        |i| vec![1 - i],
        |i, r| {
            if i == 1 {
                r.env.push(("WEFT_LOG_FORMAT".into(), "json".into()));
                // WEFT_LOG wins over the RUST_LOG=info the harness sets.
                r.env
                    .push(("WEFT_LOG".into(), "info,weft::router=warn".into()));
            }
        },
    );
    for r in &mut routers {
        r.start();
    }
    let ringed = wait_until(Duration::from_secs(20), || {
        routers.iter().all(|r| {
            std::fs::read_to_string(r.log_path())
                .unwrap_or_default()
                .contains("IPAM ring ready")
        })
    });
    assert!(
        ringed,
        "{}\n{}",
        routers[0].log_tail(),
        routers[1].log_tail()
    );

    let text = std::fs::read_to_string(routers[0].log_path()).unwrap();
    assert!(text.contains("router starting"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape sequences in a log that is not a terminal:\n{text:?}"
    );

    let json = std::fs::read_to_string(routers[1].log_path()).unwrap();
    assert!(!json.contains('\u{1b}'), "{json:?}");
    let mut lines = 0;
    for line in json.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        for key in ["timestamp", "level", "target"] {
            assert!(value[key].is_string(), "no {key}: {line}");
        }
        assert!(value["fields"]["message"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines >= 2, "{json}");
    // The data-plane info lines are filtered out by WEFT_LOG (n0 has them).
    assert!(text.contains("INFO weft::router::"), "{text}");
    assert!(
        !json.contains("\"target\":\"weft::router::"),
        "WEFT_LOG was not used:\n{json}"
    );
    let starting = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "router starting")
        .expect("a router starting line");
    assert_eq!(starting["level"], "INFO");
    assert_eq!(starting["target"], "weft::daemon");
    assert_eq!(starting["fields"]["name"], "n1");
    assert!(starting["fields"]["mtu"].is_u64(), "{starting}");
}
