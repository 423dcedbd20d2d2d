//! `weft-cni`, installed as `/opt/cni/bin/weft`: the CNI plugin that plugs a
//! pod into its node's weft router (DESIGN.md "The picture", "Operator
//! contract"). It reads the network configuration on stdin and the `CNI_*`
//! environment, asks the router over its unix socket for the pod's address,
//! and configures the veth pair through rtnetlink. Results and errors are
//! JSON on stdout in the shape of the requested spec version.

mod commands;
mod config;
mod error;
mod netns;
mod plumb;
mod result;

use std::io::{Read, Write};

/// Largest configuration read from stdin (a conflist entry with a
/// prevResult is a few KB).
const MAX_STDIN: u64 = 1 << 20;

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => config::Env::parse(|k| std::env::var(k).ok())
            .and_then(|env| commands::run(&env, &stdin)),
        Err(e) => Err(error::CniError::Io(format!("cannot read stdin: {e}"))),
    };
    let (text, code) = match outcome {
        Ok(Some(value)) => (value.to_string(), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => {
            let version = config::peek_version(&stdin).unwrap_or_else(|| "1.1.0".into());
            (e.to_json(&version).to_string(), 1)
        }
    };
    let mut out = std::io::stdout().lock();
    if !text.is_empty() {
        let _ = writeln!(out, "{text}");
    }
    let _ = out.flush();
    std::process::exit(code);
}
