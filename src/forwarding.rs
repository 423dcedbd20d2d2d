//! IPv4 forwarding, per interface: which interfaces the data path needs it
//! on, and what the router tells the operator when it cannot turn it on
//! (DESIGN.md "The picture", "Egress and forwarding").
//!
//! Linux forwards a packet only if forwarding is on for the device the
//! packet came *in* on (`IN_DEV_FORWARD(in_dev)` in `ip_route_input_slow`;
//! proxy ARP checks the same bit). So the data path needs it on:
//! - the TUN (weft0), for packets from the mesh to local pods;
//! - each pod's host-side veth, for packets from pods (the CNI plugin turns
//!   it on when it creates the veth; the router re-asserts it on every
//!   interface holding a weft-tagged /32 route);
//! - the underlay: every interface with a non-weft IPv4 route in the main
//!   table, where replies to masqueraded pod traffic (and, with
//!   `--no-masq`, traffic routed to pods from outside) come in.
//!
//! `net.ipv4.ip_forward` is only "all of them at once"; it stays as the
//! node has it. The router sets the per-interface devconf bit through
//! rtnetlink (`RTM_SETLINK` with `IFLA_AF_SPEC`/`AF_INET`/`IFLA_INET_CONF`,
//! the kernel's `inet_set_link_af`), which needs CAP_NET_ADMIN only and so
//! works in the DaemonSet's pod, where /proc/sys is read-only. Unlike a
//! /proc write it does not turn LRO off on the device (a forwarded LRO
//! packet is dropped), which matters only on NICs with LRO on.
//!
//! Reverse-path filtering needs nothing more: the source of a packet from a
//! pod is routed back to its veth (its /32), that of a packet from the mesh
//! to weft0 (the range route), and a masqueraded reply is translated back
//! before routing, so its source is an outside address routed through the
//! interface it came in on; strict and loose `rp_filter` both pass.
//!
//! This module is pure: the netlink calls are in `netlink.rs`
//! ([`crate::netlink::ensure_forwarding`]), the periodic reconcile in
//! `daemon.rs`.

use std::fmt::Write as _;

/// Why an interface needs forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The TUN: packets from the mesh to local pods.
    Overlay,
    /// An interface with a non-weft route: replies to masqueraded traffic.
    Underlay,
    /// A pod's host-side veth: packets from the pod.
    Pod,
}

/// What happened to one interface's forwarding bit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was on already.
    WasOn,
    /// The router turned it on.
    TurnedOn,
    /// It is off and the router could not turn it on: why, in a few words.
    Failed(String),
}

/// One interface the data path needs forwarding on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Device name.
    pub name: String,
    /// Why it needs forwarding.
    pub role: Role,
    /// What the router found or did.
    pub outcome: Outcome,
}

/// The result of one pass over the node's interfaces. Empty until the first
/// pass ran (or when the TUN could not be listed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Every interface that needs forwarding, the TUN first.
    pub interfaces: Vec<Interface>,
    /// Why the pass could not run at all (no netlink socket, say).
    pub error: Option<String>,
    /// The node's IPv6 forwarding (`net.ipv6.conf.all.forwarding`), when
    /// pods have IPv6 addresses; `None` otherwise.
    pub ipv6: Option<Outcome>,
}

impl Report {
    /// A pass that could not list the interfaces.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            interfaces: Vec::new(),
            error: Some(error.into()),
            ipv6: None,
        }
    }

    /// True when forwarding is on for the TUN and every other interface
    /// the data path needs.
    pub fn is_on(&self) -> bool {
        self.error.is_none()
            && self.interfaces.iter().any(|i| i.role == Role::Overlay)
            && self
                .interfaces
                .iter()
                .all(|i| !matches!(i.outcome, Outcome::Failed(_)))
    }

    fn failed_interfaces(&self) -> impl Iterator<Item = (&str, &str)> {
        self.interfaces.iter().filter_map(|i| match &i.outcome {
            Outcome::Failed(why) => Some((i.name.as_str(), why.as_str())),
            _ => None,
        })
    }

    /// `on (weft0, eth0, 3 pod interfaces)` or `off (eth0: no permission
    /// ...)`: the `dataplane.forwarding` field of `weft status`.
    pub fn summary(&self) -> String {
        if let Some(error) = &self.error {
            return format!("unknown ({error})");
        }
        if self.interfaces.is_empty() {
            return "unknown (not checked yet)".into();
        }
        if !self.is_on() {
            let failed: Vec<String> = self
                .failed_interfaces()
                .map(|(name, why)| format!("{name}: {why}"))
                .collect();
            return format!("off ({})", failed.join("; "));
        }
        format!("on ({})", self.names())
    }

    /// The interfaces by name, pods counted rather than listed.
    fn names(&self) -> String {
        let mut out = String::new();
        for i in self.interfaces.iter().filter(|i| i.role != Role::Pod) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(&i.name);
        }
        let pods = self
            .interfaces
            .iter()
            .filter(|i| i.role == Role::Pod)
            .count();
        if pods > 0 {
            let _ = write!(
                out,
                ", {pods} pod interface{}",
                if pods == 1 { "" } else { "s" }
            );
        }
        out
    }

    /// The one line to log when forwarding is off somewhere: where, the
    /// consequence, and what to do. `None` when it is on everywhere.
    pub fn warning(&self) -> Option<String> {
        if let Some(error) = &self.error {
            return Some(format!(
                "cannot check IPv4 forwarding ({error}): if it is off, pods on this node reach nothing; give the router CAP_NET_ADMIN in the node's network namespace"
            ));
        }
        let failed: Vec<(&str, &str)> = self.failed_interfaces().collect();
        if failed.is_empty() {
            return None;
        }
        let names: Vec<&str> = failed.iter().map(|(n, _)| *n).collect();
        let settings: Vec<String> = names
            .iter()
            .map(|n| format!("net.ipv4.conf.{n}.forwarding=1"))
            .collect();
        Some(format!(
            "IPv4 forwarding is off on {} and the router cannot turn it on ({}): pod traffic coming in there is dropped; give the router CAP_NET_ADMIN in the node's network namespace, or set {} on the node",
            names.join(", "),
            failed[0].1,
            settings.join(" ")
        ))
    }

    /// `on`, or `off (why)` for IPv6 forwarding: the `dataplane.forwarding6`
    /// field of `weft status`; `None` without IPv6 pods.
    pub fn ipv6_summary(&self) -> Option<String> {
        Some(match self.ipv6.as_ref()? {
            Outcome::WasOn | Outcome::TurnedOn => "on".into(),
            Outcome::Failed(why) => format!("off ({why})"),
        })
    }

    /// The one line to log when IPv6 forwarding is off and the router
    /// cannot turn it on (in the DaemonSet's pod /proc/sys is read-only).
    pub fn ipv6_warning(&self) -> Option<String> {
        let Some(Outcome::Failed(why)) = &self.ipv6 else {
            return None;
        };
        Some(format!(
            "IPv6 forwarding is off on this node and the router cannot turn it on ({why}): pods' IPv6 packets are not forwarded; set net.ipv6.conf.all.forwarding=1 on the node (Kubernetes dual-stack nodes need it anyway)"
        ))
    }

    /// The interfaces this pass turned on (logged: at start that is the
    /// normal case; later it means something turned them off, such as a
    /// sysctl reload writing `net.ipv4.ip_forward=0`).
    pub fn turned_on(&self) -> Vec<&str> {
        self.interfaces
            .iter()
            .filter(|i| i.outcome == Outcome::TurnedOn)
            .map(|i| i.name.as_str())
            .collect()
    }
}

/// One link as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Device name.
    pub name: String,
    /// The loopback device (never needs forwarding).
    pub loopback: bool,
    /// Its IPv4 `forwarding` devconf bit, when the kernel reported one.
    pub forwarding: Option<bool>,
}

/// One main-table IPv4 unicast route, reduced to what the selection needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Output interfaces (several for a multipath route).
    pub interfaces: Vec<u32>,
    /// Tagged with weft's route protocol (a pod's /32 or the range).
    pub weft: bool,
    /// A /32 (weft's /32s are pods).
    pub host: bool,
}

/// The interfaces that need forwarding and why, the TUN first, each once:
/// the TUN; interfaces holding a weft-tagged /32 (pod veths); interfaces
/// holding any other route (the underlay). Loopback is left out.
pub fn needed(links: &[Link], routes: &[Route], tun: &str) -> Vec<(u32, Role)> {
    let mut out: Vec<(u32, Role)> = Vec::new();
    let Some(tun) = links.iter().find(|l| l.name == tun) else {
        return out;
    };
    out.push((tun.index, Role::Overlay));
    let mut add = |index: u32, role: Role| {
        let is_loopback = links.iter().any(|l| l.index == index && l.loopback);
        if !is_loopback && !out.iter().any(|(i, _)| *i == index) {
            out.push((index, role));
        }
    };
    for route in routes.iter().filter(|r| r.weft && r.host) {
        for index in &route.interfaces {
            add(*index, Role::Pod);
        }
    }
    for route in routes.iter().filter(|r| !r.weft) {
        for index in &route.interfaces {
            add(*index, Role::Underlay);
        }
    }
    // Underlays listed before pods, so the summary reads "weft0, eth0, N pods".
    out.sort_by_key(|(_, role)| match role {
        Role::Overlay => 0,
        Role::Underlay => 1,
        Role::Pod => 2,
    });
    out
}

/// Why setting the bit failed, in a few words, from the errno the kernel
/// answered (negative or positive).
pub fn failure_reason(errno: i32, detail: &str) -> String {
    match errno.abs() {
        libc::EPERM | libc::EACCES => {
            "no permission: the router lacks CAP_NET_ADMIN in this network namespace".into()
        }
        libc::ENODEV => "the interface vanished".into(),
        libc::EAFNOSUPPORT => "the interface has no IPv4 configuration".into(),
        _ => detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            loopback: name == "lo",
            forwarding: Some(false),
        }
    }

    fn route(interfaces: &[u32], weft: bool, host: bool) -> Route {
        Route {
            interfaces: interfaces.to_vec(),
            weft,
            host,
        }
    }

    fn interface(name: &str, role: Role, outcome: Outcome) -> Interface {
        Interface {
            name: name.into(),
            role,
            outcome,
        }
    }

    #[test]
    fn the_tun_the_underlay_and_pod_veths_need_forwarding_and_loopback_does_not() {
        let links = [
            link(1, "lo"),
            link(2, "eth0"),
            link(3, "eth1"),
            link(4, "weft0"),
            link(5, "weftabc"),
            link(6, "unrouted"),
        ];
        let routes = [
            route(&[2], false, false),    // default via eth0
            route(&[4], true, false),     // the range, weft's
            route(&[5], true, true),      // a pod's /32
            route(&[1], false, true),     // something on lo
            route(&[3, 2], false, false), // multipath
        ];
        assert_eq!(
            needed(&links, &routes, "weft0"),
            vec![
                (4, Role::Overlay),
                (2, Role::Underlay),
                (3, Role::Underlay),
                (5, Role::Pod)
            ]
        );
    }

    #[test]
    fn without_the_tun_nothing_is_selected() {
        let links = [link(2, "eth0")];
        assert!(needed(&links, &[route(&[2], false, false)], "weft0").is_empty());
    }

    #[test]
    fn the_summary_names_the_interfaces_and_counts_pods() {
        let report = Report {
            interfaces: vec![
                interface("weft0", Role::Overlay, Outcome::TurnedOn),
                interface("eth0", Role::Underlay, Outcome::WasOn),
                interface("weftaaa", Role::Pod, Outcome::WasOn),
                interface("weftbbb", Role::Pod, Outcome::TurnedOn),
            ],
            error: None,
            ipv6: None,
        };
        assert!(report.is_on());
        assert_eq!(report.summary(), "on (weft0, eth0, 2 pod interfaces)");
        assert_eq!(report.warning(), None);
        assert_eq!(report.turned_on(), vec!["weft0", "weftbbb"]);
    }

    #[test]
    fn a_refused_interface_makes_it_off_with_one_line_saying_what_to_do() {
        let reason = failure_reason(-libc::EPERM, "Operation not permitted");
        let report = Report {
            interfaces: vec![
                interface("weft0", Role::Overlay, Outcome::WasOn),
                interface("eth0", Role::Underlay, Outcome::Failed(reason.clone())),
            ],
            error: None,
            ipv6: None,
        };
        assert!(!report.is_on());
        assert_eq!(report.summary(), format!("off (eth0: {reason})"));
        let line = report.warning().unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            "IPv4 forwarding is off on eth0 and the router cannot turn it on (no permission: the router lacks CAP_NET_ADMIN in this network namespace): pod traffic coming in there is dropped; give the router CAP_NET_ADMIN in the node's network namespace, or set net.ipv4.conf.eth0.forwarding=1 on the node"
        );
    }

    #[test]
    fn ipv6_forwarding_is_reported_only_with_ipv6_pods_and_off_says_what_to_set() {
        assert_eq!(Report::default().ipv6_summary(), None);
        assert_eq!(Report::default().ipv6_warning(), None);
        let on = Report {
            ipv6: Some(Outcome::TurnedOn),
            ..Report::default()
        };
        assert_eq!(on.ipv6_summary().as_deref(), Some("on"));
        assert_eq!(on.ipv6_warning(), None);
        let off = Report {
            ipv6: Some(Outcome::Failed("Read-only file system".into())),
            ..Report::default()
        };
        assert_eq!(
            off.ipv6_summary().as_deref(),
            Some("off (Read-only file system)")
        );
        let line = off.ipv6_warning().unwrap();
        assert!(!line.contains('\n'));
        assert!(
            line.contains("set net.ipv6.conf.all.forwarding=1 on the node"),
            "{line}"
        );
    }

    #[test]
    fn an_unchecked_or_failed_pass_is_not_on() {
        assert!(!Report::default().is_on());
        assert_eq!(Report::default().summary(), "unknown (not checked yet)");
        let failed = Report::failed("cannot open a netlink socket");
        assert!(!failed.is_on());
        assert_eq!(failed.summary(), "unknown (cannot open a netlink socket)");
        assert!(failed.warning().unwrap().contains("CAP_NET_ADMIN"));
    }

    #[test]
    fn failure_reasons_name_the_cause() {
        assert!(failure_reason(libc::EACCES, "x").contains("CAP_NET_ADMIN"));
        assert_eq!(failure_reason(-libc::EIO, "I/O error"), "I/O error");
    }
}
