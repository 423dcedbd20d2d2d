//! The human form of `weft status`: one line per peer and per connection.

use crate::api::proto::Status;
use std::fmt::Write;

/// Renders `status`, or one section of it (`peers`, `connections`, `ipam`).
pub fn render(status: &Status, section: Option<&str>) -> String {
    let mut out = String::new();
    let all = section.is_none();
    if all {
        let established = status.connections.iter().filter(|c| c.established).count();
        let _ = writeln!(
            out,
            "router {} ({}) listening on {}: {} peers, {}/{} connections established",
            status.name,
            status.id,
            status.listen,
            status.peers.len(),
            established,
            status.connections.len()
        );
        if status.advertised.len() > 1 {
            let _ = writeln!(out, "advertised: {}", status.advertised.join(", "));
        }
    }
    if all || section == Some("peers") {
        let _ = writeln!(out, "peers:");
        for p in &status.peers {
            let _ = writeln!(
                out,
                "  {:<20} {}  {:<22} {}",
                p.name,
                p.id,
                p.addresses.join(","),
                p.path
            );
        }
    }
    if all || section == Some("connections") {
        let _ = writeln!(out, "connections:");
        for c in &status.connections {
            let rtt = c.rtt_ms.map_or("-".to_string(), |r| format!("{r:.2}ms"));
            let _ = writeln!(
                out,
                "  {:<20} {:<22} {:<12} {:<8} udp={:<10} rtt={:<9} path={} rekeys={}{}{}",
                c.peer,
                c.address,
                c.state,
                c.direction,
                c.udp,
                rtt,
                c.path,
                c.rekeys,
                c.family
                    .as_ref()
                    .map(|f| format!(" family=\"{f}\""))
                    .unwrap_or_default(),
                c.error
                    .as_ref()
                    .map(|e| format!(" error={e}"))
                    .unwrap_or_default()
            );
        }
    }
    if all || section == Some("ipam") {
        ipam(&mut out, "ipam", &status.ipam, section == Some("ipam"));
        if let Some(i) = &status.ipam6 {
            ipam(&mut out, "ipam6", i, section == Some("ipam"));
        }
    }
    if all {
        let d = &status.dataplane;
        let drops: Vec<String> = d
            .totals
            .dropped
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            out,
            "dataplane: mtu {}, {} workers, offload {}, in {} pkts / {} B, out {} pkts / {} B, dropped: {}",
            d.mtu,
            d.workers,
            d.offload,
            d.totals.packets_in,
            d.totals.bytes_in,
            d.totals.packets_out,
            d.totals.bytes_out,
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops.join(" ")
            }
        );
        if d.totals.packets_in6 + d.totals.packets_out6 > 0 {
            let _ = writeln!(
                out,
                "  of which IPv6: in {} pkts / {} B, out {} pkts / {} B",
                d.totals.packets_in6,
                d.totals.bytes_in6,
                d.totals.packets_out6,
                d.totals.bytes_out6,
            );
        }
        for (label, drops) in [("IPv4", &d.totals.dropped4), ("IPv6", &d.totals.dropped6)] {
            if !drops.is_empty() {
                let list: Vec<String> = drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(out, "  dropped {label}: {}", list.join(" "));
            }
        }
        if let Some(floor) = &d.ipv6_mtu_floor {
            let _ = writeln!(out, "ipv6 mtu floor: {}", floor.summary);
        }
        if !d.underlay.is_empty() {
            let _ = writeln!(out, "underlay: {}", d.underlay);
        }
        if !d.forwarding.is_empty() {
            let _ = writeln!(out, "forwarding: {}", d.forwarding);
        }
        if !d.forwarding6.is_empty() {
            let _ = writeln!(out, "forwarding6: {}", d.forwarding6);
        }
    }
    out
}

/// One ring's lines: the IPv4 pod range's (`ipam`) or the IPv6 one's
/// (`ipam6`, issue 19); with `allocations`, every address handed out.
fn ipam(out: &mut String, label: &str, i: &crate::api::proto::IpamStatus, allocations: bool) {
    let ranges: Vec<String> = i
        .owned_ranges
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect();
    let _ = writeln!(
        out,
        "{label}: {} range {} ({}), owned {} addresses in {}, allocated {}, free {}, {} routers in the ring",
        i.state,
        i.range,
        i.mode,
        i.owned_addresses,
        if ranges.is_empty() {
            "no range".to_string()
        } else {
            ranges.join(" ")
        },
        i.allocated,
        i.free,
        i.ring_peers
    );
    if let Some(detail) = &i.detail {
        let _ = writeln!(out, "  {detail}");
    }
    if i.state == "ready" && !i.titles_required {
        let seen = match i.titles_waiting_for.as_slice() {
            [] => "every owner speaks them".to_string(),
            owners => format!("not seen speaking them: {}", owners.join(", ")),
        };
        let _ = writeln!(
            out,
            "  titles not required of every member (the ring is from a build before them; {seen}): a router holding the secret can still give another's range away by posing as an older build (counted as jump_without_title); a ring this build initialises closes that"
        );
    }
    for r in &i.unreachable_ranges {
        let _ = writeln!(
            out,
            "  unreachable router {} owns {}-{} (if it is gone for good: weft rmpeer {})",
            r.owner, r.start, r.end, r.owner
        );
    }
    if allocations {
        for a in &i.allocations {
            // The pod first (what an operator looks for), then the
            // container ID and interface CNI keys it by.
            let mut holder = match &a.pod {
                Some(p) => format!("{}/{} ", p.namespace, p.name),
                None => String::new(),
            };
            if let (Some(c), Some(f)) = (&a.container_id, &a.ifname) {
                holder.push_str(&format!("{c} {f}"));
            }
            let _ = writeln!(out, "  {:<16} {:<5} {holder}", a.address, a.kind);
        }
    }
}
