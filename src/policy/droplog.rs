//! The drop log (issue 18: "a rate-limited drop log naming source and
//! destination pod (namespace/name), port, direction and the policy — or
//! 'default deny of NAMESPACE' — that decided").
//!
//! A default-deny rule logs the packet it drops to NFLOG ([`super::nflog`])
//! with its counter's name as prefix (`dHASH_in`), rate-limited in the rule
//! itself (`limit rate 10/second burst 20 packets`, per pod and direction).
//! The router reads it back, finds the pod from the prefix (the table's
//! counters) and the other end from the policy state (any pod of the
//! cluster by address, or the bare address), and logs one line:
//!
//! `denied ingress to x/a (10.32.0.2) from y/b (10.32.0.7) TCP port 80:
//! default deny of x (isolated by x/deny-ingress)`
//!
//! Lines are rate-limited again here ([`Budget`]: 10 a second, bursts of
//! 20, over all pods), and the next line says how many were left out.
//! Pure: the driver owns the socket thread and the clock.

use super::nflog::{IpHeader, Logged};
use super::nft::{Counted, Rendered};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Lines per second, sustained.
const LINES_PER_SECOND: f64 = 10.0;
/// Lines at once after a quiet time.
const BURST: f64 = 20.0;

/// The nft statement each default-deny rule puts before its drop: the
/// kernel's rate limit (per rule, so per pod and direction), then the log.
pub fn log_statement(prefix: &str) -> String {
    format!(
        "limit rate 10/second burst 20 packets log prefix \"{prefix}\" group {}",
        super::nflog::GROUP
    )
}

/// A token bucket over log lines.
#[derive(Debug)]
pub struct Budget {
    tokens: f64,
    last: Option<Instant>,
    left_out: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            tokens: BURST,
            last: None,
            left_out: 0,
        }
    }
}

impl Budget {
    /// Whether a line may be written at `now`: `Some(n)` with the number of
    /// lines left out since the last one written, or `None` (this one is
    /// left out and counted). `now` must not go backwards.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
        self.last = Some(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * LINES_PER_SECOND).min(BURST);
        if self.tokens < 1.0 {
            self.left_out += 1;
            return None;
        }
        self.tokens -= 1.0;
        Some(std::mem::take(&mut self.left_out))
    }
}

/// What the line needs from the router's view: whose address is whose and
/// which policies isolate a local pod.
pub trait Names {
    /// The pod (`namespace/name`) holding `ip` (IPv4 or IPv6), if any is
    /// known.
    fn pod_with_ip(&self, ip: IpAddr) -> Option<String>;
    /// The policies isolating local pod `pod` in direction `dir` (`in`,
    /// `out`).
    fn isolated_by(&self, pod: &str, dir: &str) -> Vec<String>;
}

/// The line for one logged drop, or `None` when the packet is not one of
/// ours (another prefix) or carries no IP header.
pub fn describe(logged: &Logged, table: Option<&Rendered>, names: &impl Names) -> Option<String> {
    let packet = logged.packet?;
    // The prefix is the pod's default-deny counter; a prefix from a table
    // since replaced still ends in its direction.
    let (pod, dir) = match table.and_then(|t| t.counters.get(&logged.prefix)) {
        Some(Counted::Denied(pod, dir)) => (Some(pod.clone()), *dir),
        _ => {
            let dir = logged.prefix.rsplit('_').next()?;
            if !logged.prefix.starts_with('d') || !matches!(dir, "in" | "out") {
                return None;
            }
            (None, if dir == "in" { "in" } else { "out" })
        }
    };
    let (local, peer) = if dir == "in" {
        (packet.dst, packet.src)
    } else {
        (packet.src, packet.dst)
    };
    let pod = pod.or_else(|| names.pod_with_ip(local));
    let name = |who: &Option<String>, ip: IpAddr| match who {
        Some(pod) => format!("{pod} ({ip})"),
        None => ip.to_string(),
    };
    let (direction, towards) = if dir == "in" {
        ("ingress to", "from")
    } else {
        ("egress from", "to")
    };
    let namespace = pod
        .as_deref()
        .and_then(|p| p.split_once('/'))
        .map_or("its namespace", |(ns, _)| ns);
    let policies = pod
        .as_deref()
        .map(|p| names.isolated_by(p, dir).join(", "))
        .unwrap_or_default();
    Some(format!(
        "denied {direction} {} {towards} {} {}: default deny of {namespace} (isolated by {policies})",
        name(&pod, local),
        name(&names.pod_with_ip(peer), peer),
        protocol_and_port(&packet),
    ))
}

/// `TCP port 80`, `ICMP`, `ICMPv6`, `protocol 47`.
fn protocol_and_port(packet: &IpHeader) -> String {
    let name = match packet.protocol {
        1 => "ICMP",
        58 => "ICMPv6",
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        n => return format!("protocol {n}"),
    };
    match packet.ports {
        Some((_, port)) => format!("{name} port {port}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::compile::PolicyId;
    use crate::policy::flatten::Direction;
    use crate::policy::nft::{LocalPod, render};
    use std::net::{Ipv4Addr, Ipv6Addr};

    struct Cluster;

    /// x/a's and y/b's IPv6 addresses (their IPv4 ones: 10.32.0.2, .7).
    const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x32, 0, 0, 0, 0, 0, 2);
    const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x32, 0, 0, 0, 0, 0, 7);

    impl Names for Cluster {
        fn pod_with_ip(&self, ip: IpAddr) -> Option<String> {
            match ip {
                IpAddr::V4(v4) if v4.octets() == [10, 32, 0, 2] => Some("x/a".into()),
                IpAddr::V4(v4) if v4.octets() == [10, 32, 0, 7] => Some("y/b".into()),
                IpAddr::V6(A6) => Some("x/a".into()),
                IpAddr::V6(B6) => Some("y/b".into()),
                _ => None,
            }
        }
        fn isolated_by(&self, pod: &str, dir: &str) -> Vec<String> {
            vec![format!("{pod}-{dir}-deny"), "x/other".into()]
        }
    }

    fn table() -> Rendered {
        let deny = Direction::flatten(
            vec![PolicyId {
                namespace: "x".into(),
                name: "deny".into(),
            }],
            &[],
        );
        render(&[LocalPod {
            key: "x/a".into(),
            namespace: "x".into(),
            ips: vec![
                crate::policy::addrs::v4(Ipv4Addr::new(10, 32, 0, 2)),
                crate::policy::addrs::addr(A6.into()),
            ],
            ingress: deny.clone(),
            egress: deny,
        }])
    }

    /// The prefix the table gave x/a's default deny in `dir`.
    fn prefix(table: &Rendered, dir: &str) -> String {
        table
            .counters
            .iter()
            .find(|(_, c)| matches!(c, Counted::Denied(p, d) if p == "x/a" && *d == dir))
            .map(|(name, _)| name.clone())
            .unwrap()
    }

    fn logged(
        prefix: &str,
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
        protocol: u8,
        port: u16,
    ) -> Logged {
        Logged {
            prefix: prefix.into(),
            packet: Some(IpHeader {
                src: src.into(),
                dst: dst.into(),
                protocol,
                ports: matches!(protocol, 6 | 17 | 132).then_some((40000, port)),
            }),
        }
    }

    #[test]
    fn the_rule_logs_its_counter_name_to_our_group() {
        let t = table();
        let p = prefix(&t, "in");
        assert!(t.text().contains(&format!(
            "limit rate 10/second burst 20 packets log prefix \"{p}\" group 6783"
        )));
    }

    #[test]
    fn an_ingress_drop_names_both_pods_the_port_and_the_deciding_rule() {
        let t = table();
        let line = describe(
            &logged(&prefix(&t, "in"), [10, 32, 0, 7], [10, 32, 0, 2], 6, 80),
            Some(&t),
            &Cluster,
        );
        assert_eq!(
            line.unwrap(),
            "denied ingress to x/a (10.32.0.2) from y/b (10.32.0.7) TCP port 80: default deny of x (isolated by x/a-in-deny, x/other)"
        );
    }

    #[test]
    fn an_egress_drop_to_an_outside_address_names_the_address() {
        let t = table();
        let line = describe(
            &logged(&prefix(&t, "out"), [10, 32, 0, 2], [192, 0, 2, 9], 17, 53),
            Some(&t),
            &Cluster,
        );
        assert_eq!(
            line.unwrap(),
            "denied egress from x/a (10.32.0.2) to 192.0.2.9 UDP port 53: default deny of x (isolated by x/a-out-deny, x/other)"
        );
        let icmp = describe(
            &logged(&prefix(&t, "out"), [10, 32, 0, 2], [192, 0, 2, 9], 1, 0),
            Some(&t),
            &Cluster,
        );
        assert!(icmp.unwrap().contains("to 192.0.2.9 ICMP: default deny"));
    }

    /// A dual-stack pod's IPv6 drops name the same pods and rule as its
    /// IPv4 ones, with the IPv6 addresses.
    #[test]
    fn an_ipv6_drop_names_both_pods_the_port_and_the_deciding_rule() {
        let t = table();
        let line = describe(
            &logged(&prefix(&t, "in"), B6, A6, 6, 80),
            Some(&t),
            &Cluster,
        );
        assert_eq!(
            line.unwrap(),
            "denied ingress to x/a (fd00:32::2) from y/b (fd00:32::7) TCP port 80: default deny of x (isolated by x/a-in-deny, x/other)"
        );
        let outside = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9);
        let udp = describe(
            &logged(&prefix(&t, "out"), A6, outside, 17, 53),
            Some(&t),
            &Cluster,
        );
        assert_eq!(
            udp.unwrap(),
            "denied egress from x/a (fd00:32::2) to 2001:db8::9 UDP port 53: default deny of x (isolated by x/a-out-deny, x/other)"
        );
        let icmp = describe(&logged("d0123_out", A6, outside, 58, 0), None, &Cluster);
        assert!(icmp.unwrap().starts_with(
            "denied egress from x/a (fd00:32::2) to 2001:db8::9 ICMPv6: default deny of x"
        ));
    }

    #[test]
    fn a_prefix_from_a_replaced_table_still_names_the_pod_by_address() {
        let line = describe(
            &logged(
                "d0123456789abcdef_in",
                [10, 32, 0, 7],
                [10, 32, 0, 2],
                132,
                81,
            ),
            None,
            &Cluster,
        );
        assert!(
            line.unwrap()
                .starts_with("denied ingress to x/a (10.32.0.2) from y/b (10.32.0.7) SCTP port 81")
        );
    }

    #[test]
    fn other_prefixes_and_packets_without_a_header_are_not_ours() {
        let t = table();
        let stranger = logged("ulogd", [10, 32, 0, 7], [10, 32, 0, 2], 6, 80);
        assert_eq!(describe(&stranger, Some(&t), &Cluster), None);
        let headless = Logged {
            prefix: prefix(&t, "in"),
            packet: None,
        };
        assert_eq!(describe(&headless, Some(&t), &Cluster), None);
    }

    #[test]
    fn lines_are_limited_and_the_next_says_how_many_were_left_out() {
        let mut budget = Budget::default();
        let start = Instant::now();
        let written = (0..100).filter(|_| budget.admit(start).is_some()).count();
        assert_eq!(written, 20, "the burst");
        // A second later, ten more; the first of them counts the 80.
        let later = start + Duration::from_secs(1);
        assert_eq!(budget.admit(later), Some(80));
        let more = (0..100).filter(|_| budget.admit(later).is_some()).count();
        assert_eq!(more, 9);
        assert_eq!(budget.admit(later + Duration::from_secs(10)), Some(91));
    }
}
