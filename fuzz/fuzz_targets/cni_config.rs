//! The CNI plugin's inputs (issue "Hostile input": "CNI config and
//! stdin"): the `CNI_*` environment and the network configuration on stdin
//! in every spec version, with `prevResult`, `runtimeConfig` and `args`.
//!
//! Input: `KEY=VALUE` lines (the environment) up to the first empty line,
//! then stdin. Everything the plugin does before its first side effect
//! (`weft_cni::commands::prepare`) runs, then ADD's result is rendered over
//! the `prevResult` and read back as CHECK reads it.
//!
//! Oracle: no panic; a failure is a CNI error with a code the spec gives
//! for bad input (1, 4, 6, 7), printed as a one-line error object in the
//! caller's supported `cniVersion`; what is accepted satisfies the spec
//! (container ID pattern, a name the kernel takes, absolute socket, MTU
//! range); the rendered result has our interface and address last, the
//! `ips[].version` rule of its version, and CHECK finds our address in it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::collections::HashMap;
use weft_cni::commands::prepare;
use weft_cni::config::{Command, Env, SUPPORTED, Version, peek_version};
use weft_cni::result::{Plugged, address_for, render};

/// The kernel's `dev_valid_name`, written out independently of the plugin.
fn kernel_takes(name: &str) -> bool {
    (1..16).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b" \t\n\x0b\x0c\r".contains(&b))
}

/// The CNI spec's container ID pattern `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn spec_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fuzz_target!(|data: &[u8]| {
    let (env_text, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (&[][..], data),
    };
    let vars: HashMap<String, String> = String::from_utf8_lossy(env_text)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Every failure answers as the plugin would print it.
    let prepared = Env::parse(|k| vars.get(k).cloned())
        .and_then(|env| prepare(&env, stdin).map(|conf| (env, conf)));
    let (env, conf) = match prepared {
        Ok(ok) => ok,
        Err(e) => {
            assert!(
                matches!(e.code(), 1 | 4 | 6 | 7),
                "code {} for bad input: {e}",
                e.code()
            );
            let (text, exit) = weft_cni::render_outcome(stdin, Err(e));
            assert_eq!(exit, 1);
            assert!(!text.contains('\n'), "one line: {text}");
            let obj: Value = serde_json::from_str(&text).expect("the error object is JSON");
            let v = obj["cniVersion"].as_str().expect("cniVersion");
            assert!(SUPPORTED.contains(&v));
            assert_eq!(peek_version(stdin).as_deref().unwrap_or("1.1.0"), v);
            assert!(obj["code"].as_u64().is_some() && obj["msg"].is_string());
            return;
        }
    };

    if matches!(env.command, Command::Add | Command::Del | Command::Check) {
        assert!(
            spec_container_id(&env.container_id),
            "{:?}",
            env.container_id
        );
        assert!(kernel_takes(&env.ifname), "{:?}", env.ifname);
    }
    if matches!(env.command, Command::Add | Command::Check) {
        assert!(env.netns.is_some());
    }
    let Some(conf) = conf else {
        assert_eq!(env.command, Command::Version);
        let v = weft_cni::commands::version(stdin);
        assert!(SUPPORTED.contains(&v["cniVersion"].as_str().expect("cniVersion")));
        return;
    };
    assert!(serde_json::from_slice::<Value>(stdin).is_ok_and(|v| v.is_object()));
    assert!(conf.socket.is_absolute());
    assert!(conf.mtu == 0 || (576..=65535).contains(&conf.mtu));
    assert_eq!(peek_version(stdin).as_deref(), Some(conf.version.as_str()));
    if env.command == Command::Gc {
        assert!(conf.valid_attachments.is_some() && conf.version >= Version::V110);
    }

    // ADD's result over the prevResult, and CHECK reading it back.
    let ifname = if env.ifname.is_empty() {
        "eth0".to_string()
    } else {
        env.ifname.clone()
    };
    let plugged = Plugged {
        host_ifname: weft_cni::plumb::host_ifname(&env.container_id, &ifname),
        host_mac: "02:00:00:00:00:01".into(),
        pod_ifname: ifname.clone(),
        pod_mac: "02:00:00:00:00:02".into(),
        sandbox: "/run/netns/pod".into(),
        address: "10.32.0.5/32".into(),
        gateway: "169.254.1.1".into(),
        mtu: 1420,
        ipv6: None,
    };
    let r = render(conf.version, &plugged, conf.prev_result.as_ref());
    assert_eq!(r["cniVersion"], conf.version.as_str());
    let interfaces = r["interfaces"].as_array().expect("interfaces");
    let ips = r["ips"].as_array().expect("ips");
    let ours = ips.last().expect("our address");
    let index = ours["interface"].as_u64().expect("interface index") as usize;
    assert_eq!(index, interfaces.len() - 1);
    assert_eq!(interfaces[index]["name"], ifname.as_str());
    assert_eq!(ours["address"], "10.32.0.5/32");
    for ip in ips.iter().filter_map(Value::as_object) {
        assert_eq!(
            ip.contains_key("version"),
            conf.version < Version::V100,
            "{ip:?}"
        );
    }
    assert!(r["dns"].is_object());
    assert_eq!(address_for(&r, &ifname).as_deref(), Some("10.32.0.5/32"));
    // And the result, as the next plugin's prevResult, parses again.
    let text = r.to_string();
    let _: Value = serde_json::from_str(&text).expect("result is JSON");
});
