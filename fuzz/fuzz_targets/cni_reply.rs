//! The CNI plugin reading its router's replies (`weft_cni::commands::
//! interpret`) and turning an allocation into what it configures
//! (`plan_for`): a reply line as `weft_api::client::call` returns it.
//!
//! Input: one selector byte (the command's reply type, the configured MTU,
//! the spec version), then the reply line; or, with selector bit 0x40 on an
//! allocation, the allocation's numbers as bytes (prefix, MTU u32 LE,
//! address, gateway), so that the fuzzer reaches odd values directly.
//!
//! Oracle: no panic; a reply that is not the expected type is a router
//! error (101); an accepted allocation gives a plan the kernel takes (an
//! MTU in 576..=65535, 1280 or more with an IPv6 address, a usable unicast
//! address and gateway, a prefix of at most 32) and a result whose address reads back as `address/prefix`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use weft_api::proto::{Allocation, AllocationList, Readiness, Released, Reply};
use weft_cni::commands::{interpret, plan_for, router_error};
use weft_cni::config::{Env, NetConf};
use weft_cni::result::{Plugged, addresses_for, render};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, line)) = data.split_first() else {
        return;
    };
    if sel & 0x43 == 0x40 {
        let Some(b) = line.first_chunk::<13>() else {
            return;
        };
        let alloc = Allocation {
            container_id: "abc".into(),
            ifname: "eth0".into(),
            prefix_len: b[0],
            mtu: u32::from_le_bytes([b[1], b[2], b[3], b[4]]),
            address: Ipv4Addr::new(b[5], b[6], b[7], b[8]).to_string(),
            gateway: Ipv4Addr::new(b[9], b[10], b[11], b[12]).to_string(),
            range: "10.32.0.0/12".into(),
            ipv6: None,
        };
        return check_allocation(sel, &alloc);
    }
    let Ok(reply) = serde_json::from_slice::<Reply>(line) else {
        return;
    };
    let check_code = |e: weft_cni::error::CniError| {
        assert!(
            matches!(e.code(), 4 | 11 | 100 | 101 | 102),
            "{}: {e}",
            e.code()
        );
    };
    match sel % 4 {
        1 => match interpret::<Readiness>(reply) {
            Ok(Err(e)) => check_code(router_error(e)),
            Ok(Ok(_)) => {}
            Err(e) => assert_eq!(e.code(), 101),
        },
        2 => match interpret::<AllocationList>(reply) {
            Ok(Ok(list)) => {
                for a in &list.allocations {
                    let name = weft_cni::plumb::host_ifname(&a.container_id, &a.ifname);
                    assert_eq!(name.len(), 15);
                }
            }
            Ok(Err(e)) => check_code(router_error(e)),
            Err(e) => assert_eq!(e.code(), 101),
        },
        3 => match interpret::<Released>(reply) {
            Ok(Err(e)) => check_code(router_error(e)),
            Ok(Ok(_)) => {}
            Err(e) => assert_eq!(e.code(), 101),
        },
        _ => {
            let alloc = match interpret::<Allocation>(reply) {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => return check_code(router_error(e)),
                Err(e) => return assert_eq!(e.code(), 101),
            };
            check_allocation(sel, &alloc);
        }
    }
});

/// ADD's plan and result for the router's `alloc`.
fn check_allocation(sel: u8, alloc: &Allocation) {
    let version = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"][usize::from(sel >> 2) % 5];
    let mtu = if sel & 0x80 != 0 { ",\"mtu\":1400" } else { "" };
    let conf = format!(r#"{{"cniVersion":"{version}","name":"n","type":"weft"{mtu}}}"#);
    let conf = NetConf::parse(conf.as_bytes()).expect("a valid config");
    let env = Env::parse(|k| {
        match k {
            "CNI_COMMAND" => Some("ADD"),
            "CNI_CONTAINERID" => Some("abc"),
            "CNI_IFNAME" => Some("eth0"),
            "CNI_NETNS" => Some("/run/netns/pod"),
            _ => None,
        }
        .map(str::to_string)
    })
    .expect("a valid env");
    let plan = match plan_for(&env, alloc, &conf) {
        Ok(p) => p,
        Err(e) => return assert_eq!(e.code(), 101),
    };
    assert!((576..=65535).contains(&plan.mtu), "mtu {}", plan.mtu);
    for a in [plan.address, plan.gateway] {
        assert!(
            !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback()),
            "{a}"
        );
    }
    assert!(alloc.prefix_len <= 32);
    let address = format!("{}/{}", plan.address, alloc.prefix_len);
    let plugged = Plugged {
        host_ifname: plan.host_ifname.clone(),
        host_mac: weft_cni::plumb::mac_string(&plan.host_mac),
        pod_ifname: plan.pod_ifname.clone(),
        pod_mac: weft_cni::plumb::mac_string(&plan.pod_mac),
        sandbox: "/run/netns/pod".into(),
        address: address.clone(),
        gateway: plan.gateway.to_string(),
        mtu: plan.mtu,
        ipv6: plan
            .v6
            .map(|v6| (format!("{}/128", v6.address), v6.gateway.to_string())),
    };
    if let Some(v6) = plan.v6 {
        // IPv6 is off on a link under 1280.
        assert!(plan.mtu >= 1280, "an IPv6 pod at mtu {}", plan.mtu);
        // A pod address that is not link-local, multicast or unspecified;
        // a link-local unicast gateway.
        let link_local = |a: &std::net::Ipv6Addr| (a.segments()[0] & 0xffc0) == 0xfe80;
        let a = v6.address;
        assert!(!(a.is_unspecified() || a.is_multicast() || a.is_loopback() || link_local(&a)), "{a}");
        assert!(link_local(&v6.gateway) && !v6.gateway.is_multicast(), "{}", v6.gateway);
    }
    let r = render(conf.version, &plugged, None);
    let back = addresses_for(&r, "eth0");
    assert_eq!(back.len(), 1 + usize::from(plan.v6.is_some()));
    let (ip, len) = back[0].split_once('/').expect("address/prefix");
    assert_eq!(ip.parse::<Ipv4Addr>().ok(), Some(plan.address));
    assert!(len.parse::<u8>().is_ok_and(|l| l <= 32));
    if let Some(v6) = plan.v6 {
        assert_eq!(back[1], format!("{}/128", v6.address));
    }
}
