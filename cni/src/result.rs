//! The ADD result in the shape each spec version requires (CNI spec
//! "Success"): 0.3.x and 0.4.0 carry `ips[].version`, 1.0.0 drops it, 1.1.0
//! adds the interface `mtu`. When chained, the previous plugin's result is
//! kept and ours is appended (its interface indices shifted), so a plugin
//! after us (portmap, say) sees everything.

use crate::config::Version;
use serde_json::{Value, json};

/// What ADD configured (DESIGN.md "The picture").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plugged {
    /// Host end of the veth.
    pub host_ifname: String,
    /// Its MAC, `aa:bb:..`.
    pub host_mac: String,
    /// `CNI_IFNAME`.
    pub pod_ifname: String,
    /// The pod end's MAC.
    pub pod_mac: String,
    /// `CNI_NETNS`.
    pub sandbox: String,
    /// The pod's address with its prefix, `10.32.0.5/32`.
    pub address: String,
    /// The link-local gateway, `169.254.1.1`.
    pub gateway: String,
    /// The pod MTU.
    pub mtu: u32,
    /// The pod's IPv6 address with its prefix (`fd00::5/128`) and its
    /// link-local gateway (`fe80::1`), when dual-stack.
    pub ipv6: Option<(String, String)>,
}

/// The result object for `version`, appended to `prev` when chained.
pub fn render(version: Version, plugged: &Plugged, prev: Option<&Value>) -> Value {
    let mut interfaces: Vec<Value> = prev
        .and_then(|p| p["interfaces"].as_array().cloned())
        .unwrap_or_default();
    let mut ips: Vec<Value> = prev
        .and_then(|p| p["ips"].as_array().cloned())
        .unwrap_or_default();
    let mut routes: Vec<Value> = prev
        .and_then(|p| p["routes"].as_array().cloned())
        .unwrap_or_default();
    let dns = prev
        .and_then(|p| p.get("dns").cloned())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));

    interfaces.push(json!({"name": plugged.host_ifname, "mac": plugged.host_mac}));
    let pod_index = interfaces.len();
    let mut pod = json!({
        "name": plugged.pod_ifname,
        "mac": plugged.pod_mac,
        "sandbox": plugged.sandbox,
    });
    if version >= Version::V110 {
        pod["mtu"] = json!(plugged.mtu);
    }
    interfaces.push(pod);
    ips.push(json!({
        "address": plugged.address,
        "gateway": plugged.gateway,
        "interface": pod_index,
    }));
    if let Some((address, gateway)) = &plugged.ipv6 {
        ips.push(json!({
            "address": address,
            "gateway": gateway,
            "interface": pod_index,
        }));
    }
    for ip in &mut ips {
        shape_ip(version, ip);
    }
    routes.push(json!({"dst": "0.0.0.0/0", "gw": plugged.gateway}));
    if let Some((_, gateway)) = &plugged.ipv6 {
        routes.push(json!({"dst": "::/0", "gw": gateway}));
    }
    json!({
        "cniVersion": version.as_str(),
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
}

/// Adds or removes `version` ("4"/"6") as the spec version requires.
fn shape_ip(version: Version, ip: &mut Value) {
    let Some(obj) = ip.as_object_mut() else {
        return;
    };
    if version >= Version::V100 {
        obj.remove("version");
    } else if !obj.contains_key("version") {
        let v6 = obj
            .get("address")
            .and_then(Value::as_str)
            .is_some_and(|a| a.contains(':'));
        obj.insert("version".into(), json!(if v6 { "6" } else { "4" }));
    }
}

/// Every address a (previous) result gives interface `ifname` in a
/// sandbox (the last such interface, as [`address_for`]): CHECK wants each
/// of the router's addresses among them.
pub fn addresses_for(result: &Value, ifname: &str) -> Vec<String> {
    let Some(index) = result["interfaces"].as_array().and_then(|interfaces| {
        interfaces.iter().rposition(|i| {
            i["name"].as_str() == Some(ifname) && i.get("sandbox").is_some_and(|s| !s.is_null())
        })
    }) else {
        return Vec::new();
    };
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| ip["interface"].as_u64() == Some(index as u64))
        .filter_map(|ip| ip["address"].as_str().map(str::to_string))
        .collect()
}

/// The pod address in a (previous) result for interface `ifname` in a
/// sandbox, if the result names one (CHECK compares it with the router).
/// The last such interface and the last address on it win: [`render`]
/// appends ours after whatever an earlier plugin put there.
pub fn address_for(result: &Value, ifname: &str) -> Option<String> {
    let interfaces = result["interfaces"].as_array()?;
    let index = interfaces.iter().rposition(|i| {
        i["name"].as_str() == Some(ifname) && i.get("sandbox").is_some_and(|s| !s.is_null())
    })?;
    result["ips"].as_array()?.iter().rev().find_map(|ip| {
        (ip["interface"].as_u64() == Some(index as u64))
            .then(|| ip["address"].as_str().map(str::to_string))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plugged() -> Plugged {
        Plugged {
            host_ifname: "weft0123456789a".into(),
            host_mac: "02:00:00:00:00:01".into(),
            pod_ifname: "eth0".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            sandbox: "/run/netns/p".into(),
            address: "10.32.0.5/32".into(),
            gateway: "169.254.1.1".into(),
            mtu: 1420,
            ipv6: None,
        }
    }

    #[test]
    fn a_dual_stack_result_has_both_addresses_and_both_default_routes() {
        let mut p = plugged();
        p.ipv6 = Some(("fd00::5/128".into(), "fe80::1".into()));
        for v in [Version::V030, Version::V040, Version::V100, Version::V110] {
            let r = render(v, &p, None);
            let ips = r["ips"].as_array().unwrap();
            assert_eq!(ips.len(), 2, "{v:?}");
            assert_eq!(ips[1]["address"], "fd00::5/128");
            assert_eq!(ips[1]["gateway"], "fe80::1");
            assert_eq!(ips[1]["interface"], 1);
            if v < Version::V100 {
                assert_eq!(ips[0]["version"], "4");
                assert_eq!(ips[1]["version"], "6");
            } else {
                assert!(ips[1].get("version").is_none());
            }
            assert_eq!(r["routes"][1]["dst"], "::/0");
            assert_eq!(r["routes"][1]["gw"], "fe80::1");
            assert_eq!(addresses_for(&r, "eth0"), ["10.32.0.5/32", "fd00::5/128"]);
        }
        assert!(addresses_for(&render(Version::V100, &p, None), "eth1").is_empty());
    }

    #[test]
    fn each_version_gets_its_own_result_shape() {
        for v in [Version::V030, Version::V031, Version::V040] {
            let r = render(v, &plugged(), None);
            assert_eq!(r["cniVersion"], v.as_str());
            assert_eq!(r["ips"][0]["version"], "4");
            assert!(r["interfaces"][1].get("mtu").is_none());
        }
        let r = render(Version::V100, &plugged(), None);
        assert!(r["ips"][0].get("version").is_none());
        assert!(r["interfaces"][1].get("mtu").is_none());
        let r = render(Version::V110, &plugged(), None);
        assert_eq!(r["interfaces"][1]["mtu"], 1420);
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["ips"][0]["address"], "10.32.0.5/32");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(address_for(&r, "eth0").as_deref(), Some("10.32.0.5/32"));
    }

    #[test]
    fn a_chained_result_keeps_the_previous_one_and_shifts_our_indices() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "x", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "fd00::1/128", "interface": 0}],
            "routes": [{"dst": "::/0"}],
            "dns": {"nameservers": ["10.0.0.10"]},
        });
        let r = render(Version::V040, &plugged(), Some(&prev));
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["ips"][0]["version"], "6");
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["routes"].as_array().unwrap().len(), 2);
        assert_eq!(r["dns"]["nameservers"][0], "10.0.0.10");
    }

    // Found by fuzz target cni_config (from the seeds, in 6k runs): a
    // prevResult that already names an
    // interface eth0 in a sandbox (or has an address pointing at our index)
    // made CHECK compare the router's address with the earlier plugin's.
    #[test]
    fn check_reads_our_address_even_when_prev_result_names_the_same_interface() {
        let prev = json!({
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.9.9.9/32", "interface": 0},
                    {"address": "10.8.8.8/32", "interface": 2}],
        });
        let r = render(Version::V100, &plugged(), Some(&prev));
        assert_eq!(address_for(&r, "eth0").as_deref(), Some("10.32.0.5/32"));
    }
}
