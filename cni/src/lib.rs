//! `weft-cni`, installed as `/opt/cni/bin/weft`: the CNI plugin that plugs a
//! pod into its node's weft router (DESIGN.md "The picture", "Operator
//! contract"). It reads the network configuration on stdin and the `CNI_*`
//! environment, asks the router over its unix socket for the pod's address,
//! and configures the veth pair through rtnetlink. Results and errors are
//! JSON on stdout in the shape of the requested spec version.
//!
//! A library with a thin binary (`main.rs`) so that every decoder of outside
//! input — stdin ([`config::NetConf`], [`config::peek_version`]), the
//! environment ([`config::Env`], [`cni_args`]), `prevResult` ([`result`]) and the router's
//! replies ([`commands::interpret`], [`commands::plan_for`]) — is reachable
//! by the fuzz targets (issue "Hostile input": `fuzz/fuzz_targets/cni_*.rs`).

pub mod cni_args;
pub mod commands;
pub mod config;
pub mod error;
mod netns;
pub mod plumb;
pub mod result;

use error::CniError;
use std::io::{Read, Write};

/// Largest configuration read from stdin (a conflist entry with a
/// prevResult is a few KB).
pub const MAX_STDIN: u64 = 1 << 20;

/// The plugin's `main`: reads stdin and the environment, prints what
/// [`answer`] says and exits with its code.
pub fn main() -> ! {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin);
    let (text, code) = match read {
        Ok(_) => answer(&stdin, |k| std::env::var(k).ok()),
        Err(e) => render_outcome(&stdin, Err(CniError::Io(format!("cannot read stdin: {e}")))),
    };
    let mut out = std::io::stdout().lock();
    if !text.is_empty() {
        let _ = writeln!(out, "{text}");
    }
    let _ = out.flush();
    std::process::exit(code);
}

/// The whole plugin between reading its inputs and printing: decodes the
/// environment (through `get`) and `stdin`, runs the command, and returns
/// the text for stdout (may be empty) and the exit code (CNI spec
/// "Error": a failure is a CNI error object and a non-zero exit).
pub fn answer(stdin: &[u8], get: impl Fn(&str) -> Option<String>) -> (String, i32) {
    let outcome = config::Env::parse(get).and_then(|env| commands::run(&env, stdin));
    render_outcome(stdin, outcome)
}

/// Stdout text and exit code for `outcome`: the result, or the error object
/// in the caller's `cniVersion` when stdin names a supported one (else
/// 1.1.0).
pub fn render_outcome(
    stdin: &[u8],
    outcome: Result<Option<serde_json::Value>, CniError>,
) -> (String, i32) {
    match outcome {
        Ok(Some(value)) => (value.to_string(), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => {
            let version = config::peek_version(stdin).unwrap_or_else(|| "1.1.0".into());
            (e.to_json(&version).to_string(), 1)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn weft_cni_fault_is_read_only_by_the_fault_injection_build() {
        let pairs = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
            ("WEFT_CNI_FAULT", "after-veth"),
        ];
        let parsed = config::Env::parse(env(&pairs)).unwrap();
        let want = cfg!(feature = "fault-injection").then(|| "after-veth".to_string());
        assert_eq!(parsed.fault, want);
    }

    #[test]
    fn version_answers_on_stdout_with_exit_zero() {
        let (text, code) = answer(
            br#"{"cniVersion":"0.4.0"}"#,
            env(&[("CNI_COMMAND", "VERSION")]),
        );
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    #[test]
    fn bad_input_is_one_error_object_in_the_callers_version_with_exit_one() {
        let stdin = br#"{"cniVersion":"0.3.1","name":"n","type":"bridge"}"#;
        let ok_env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/nonexistent"),
        ];
        for (pairs, want) in [(&ok_env[..], 7), (&[("CNI_COMMAND", "NOPE")][..], 4)] {
            let (text, code) = answer(stdin, env(pairs));
            assert_eq!(code, 1);
            assert!(!text.contains('\n'));
            let e: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(e["cniVersion"], "0.3.1");
            assert_eq!(e["code"], want);
        }
    }
}
