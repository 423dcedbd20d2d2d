//! Seeds of the CNI plugin's targets: `cni_config`, `cni_reply`.

use super::*;

/// `cni_config`: `KEY=VALUE` lines, an empty line, then stdin, as a
/// container runtime runs the plugin for cni/weft.conflist (the runtime
/// injects `cniVersion` and `name` into each plugin's entry, and adds
/// `runtimeConfig`, `args` and, when chained, `prevResult`).
pub(super) fn cni_config() {
    use serde_json::{Value, json};
    fn input(env: &[(&str, &str)], conf: &Value) -> Vec<u8> {
        let mut out = String::new();
        for (k, v) in env {
            out.push_str(&format!("{k}={v}\n"));
        }
        out.push('\n');
        out.push_str(&serde_json::to_string_pretty(conf).expect("json"));
        out.into_bytes()
    }
    let conflist: Value =
        serde_json::from_str(include_str!("../../../../cni/weft.conflist")).expect("weft.conflist");
    let entry = |version: &str| {
        let mut e = conflist["plugins"][0].clone();
        e["cniVersion"] = json!(version);
        e["name"] = conflist["name"].clone();
        e
    };
    let pod = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "3f2a9c0d1e5b"),
        ("CNI_NETNS", "/var/run/netns/cni-1f0e6a2b"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IgnoreUnknown=1",
        ),
    ];
    let with = |command: &'static str| {
        let mut env = pod;
        env[0].1 = command;
        env
    };
    // A bridge-style earlier plugin's result, in each version's shape.
    let prev = |version: &str| {
        let mut ip = json!({"address": "10.88.0.7/16", "gateway": "10.88.0.1", "interface": 2});
        if version < "1.0.0" {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": "cni0", "mac": "5a:1c:7e:00:00:01"},
                {"name": "veth1a2b3c4d", "mac": "5a:1c:7e:00:00:02"},
                {"name": "net1", "mac": "5a:1c:7e:00:00:03", "sandbox": "/var/run/netns/cni-1f0e6a2b"}
            ],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
        })
    };
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let tag = version.replace('.', "");
        write(
            "cni_config",
            &format!("add-{tag}"),
            &input(&pod, &entry(version)),
        );
        write(
            "cni_config",
            &format!("del-{tag}"),
            &input(&with("DEL"), &entry(version)),
        );
        // Runtime additions: portmap's capability and Kubernetes' args.
        let mut full = entry(version);
        full["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
        full["args"] = json!({"cni": {"ips": ["10.32.0.9"]}});
        full["prevResult"] = prev(version);
        write(
            "cni_config",
            &format!("add-chained-{tag}"),
            &input(&pod, &full),
        );
        if version >= "0.4.0" {
            // CHECK with the chain's final result, ours last.
            let mut ours = prev(version);
            ours["interfaces"].as_array_mut().expect("array").extend([
                json!({"name": "weftd4c1e0a9b27", "mac": "0a:11:22:33:44:55"}),
                json!({"name": "eth0", "mac": "0e:11:22:33:44:55", "sandbox": "/var/run/netns/cni-1f0e6a2b"}),
            ]);
            let mut ip =
                json!({"address": "10.32.0.5/32", "gateway": "169.254.1.1", "interface": 4});
            if version < "1.0.0" {
                ip["version"] = json!("4");
            }
            ours["ips"].as_array_mut().expect("array").push(ip);
            let mut check = entry(version);
            check["prevResult"] = ours;
            write(
                "cni_config",
                &format!("check-{tag}"),
                &input(&with("CHECK"), &check),
            );
        }
    }
    let mut gc = entry("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "3f2a9c0d1e5b", "ifname": "eth0"}, {"containerID": "77aa", "ifname": "eth0"}]);
    write(
        "cni_config",
        "gc-110",
        &input(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc),
    );
    write(
        "cni_config",
        "status-110",
        &input(&[("CNI_COMMAND", "STATUS")], &entry("1.1.0")),
    );
    write(
        "cni_config",
        "version",
        &input(
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": "1.0.0"}),
        ),
    );
    let mut empty_netns = with("DEL");
    empty_netns[2].1 = "";
    write(
        "cni_config",
        "del-no-netns",
        &input(&empty_netns, &entry("1.0.0")),
    );
    let mut mtu = entry("1.0.0");
    mtu["mtu"] = json!(1400);
    mtu["socket"] = json!("/var/run/weft/api.sock");
    write("cni_config", "add-mtu", &input(&pod, &mtu));
}

/// `cni_reply`: a selector byte (reply type, version, configured MTU; see
/// the target), then a reply line as the router writes it.
pub(super) fn cni_reply() {
    macro_rules! json_of {
        ($v:expr) => {
            serde_json::to_value($v).expect("json")
        };
    }
    use weft_api::proto::{
        Allocation, AllocationList, ApiError, ErrorCode, Readiness, Released, Reply,
    };
    let alloc = Allocation {
        container_id: "3f2a9c0d1e5b".into(),
        ifname: "eth0".into(),
        address: "10.32.0.5".into(),
        prefix_len: 32,
        gateway: "169.254.1.1".into(),
        mtu: 1420,
        range: "10.32.0.0/12".into(),
        ipv6: None,
    };
    let ok = |v: serde_json::Value| Reply {
        ok: true,
        result: Some(v),
        error: None,
    };
    let line = |sel: u8, r: &Reply| {
        let mut out = vec![sel];
        out.extend(serde_json::to_vec(r).expect("json"));
        out
    };
    for (name, sel) in [
        ("allocation-030", 0u8),
        ("allocation-110", 16),
        ("allocation-mtu", 0x84),
    ] {
        write("cni_reply", name, &line(sel, &ok(json_of!(&alloc))));
    }
    write(
        "cni_reply",
        "ready",
        &line(
            1,
            &ok(json_of!(&Readiness {
                ready: true,
                reason: None,
                mtu: 1420
            })),
        ),
    );
    write(
        "cni_reply",
        "not-ready",
        &line(
            1,
            &ok(json_of!(&Readiness {
                ready: false,
                reason: Some("ring unknown".into()),
                mtu: 1420
            })),
        ),
    );
    write(
        "cni_reply",
        "gc",
        &line(
            2,
            &ok(json_of!(&AllocationList {
                allocations: vec![alloc.clone()]
            })),
        ),
    );
    // Selector bit 0x40: the allocation's numbers as bytes.
    let mut numbers = vec![0x40u8, 32];
    numbers.extend_from_slice(&1420u32.to_le_bytes());
    numbers.extend_from_slice(&[10, 32, 0, 5, 169, 254, 1, 1]);
    write("cni_reply", "allocation-numbers", &numbers);
    write(
        "cni_reply",
        "released",
        &line(
            3,
            &ok(json_of!(&Released {
                address: "10.32.0.5".into()
            })),
        ),
    );
    for (name, code) in [
        ("bad-request", ErrorCode::BadRequest),
        ("refused", ErrorCode::Refused),
        ("not-found", ErrorCode::NotFound),
        ("not-ready", ErrorCode::NotReady),
        ("internal", ErrorCode::Internal),
    ] {
        let r = Reply {
            ok: false,
            result: None,
            error: Some(ApiError {
                code,
                message: format!("{name} (one line)"),
            }),
        };
        write("cni_reply", &format!("error-{name}"), &line(0, &r));
    }
}
