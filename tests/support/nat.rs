//! A NAT world for tests (issue 16): sites behind gateways on an
//! "internet" segment, built from network namespaces.
//!
//! - The internet is a bridge in its own namespace on 203.0.113.0/24.
//! - Site `k` is a private underlay 198.51.100.(64k)/26 on a bridge in its
//!   own namespace (gateway .64k+1, nodes .64k+10, +11, ...). The bridge is
//!   not in the gateway's namespace on purpose: with `br_netfilter` loaded,
//!   conntrack would see the bridged replies and un-NAT them, which is
//!   hairpin by accident. Its
//!   gateway's WAN address is 203.0.113.(10k+10); with 1:1 NAT node `i` of
//!   the site is also 203.0.113.(10k+11+i).
//! - The gateway's nftables (`table ip weftnat`) does the NAT of its
//!   [`NatKind`]; no kind hairpins (a node dialling a public address of its
//!   own site does not get through), as many cloud NATs.
//! - Nodes are fresh hosts: IPv4 forwarding off, a default route via their
//!   gateway; the harness sets no sysctl on them but those that say so.
//!   Gateways are the harness's own routers and may.
//!
//! Every namespace is a [`Netns`]: unique name, deleted on drop, and
//! leftovers of killed runs are removed by `require_root`.

use super::{Netns, Node, Pod, Router, fresh_host, path_to, plumb_pod, veth};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// What a site's gateway does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Each node has its own public address (snat + dnat), as a cloud VM
    /// with an elastic IP: reachable from anywhere, no hairpin.
    OneToOne,
    /// Masquerade behind the gateway's address, keeping the source port
    /// when it can (endpoint-independent mapping); unsolicited inbound
    /// reaches the gateway itself (refused there).
    Masquerade,
    /// Masquerade, and every unsolicited inbound packet is dropped.
    MasqueradeDropInbound,
    /// Masquerade with a random port per connection (a new mapping per
    /// destination); unsolicited inbound dropped.
    Symmetric,
}

/// One site: its gateway, its switch and its nodes.
pub struct Site {
    pub kind: NatKind,
    pub gateway: Netns,
    pub switch: Netns,
    pub nodes: Vec<Node>,
    /// With 1:1 NAT, each node's public address (same order as `nodes`).
    pub public: Vec<Ipv4Addr>,
    /// The gateway's WAN address.
    pub wan: Ipv4Addr,
}

/// The internet and the sites on it.
pub struct World {
    pub sites: Vec<Site>,
    internet: Netns,
}

impl World {
    /// Builds one site per entry of `sites`: its NAT kind and node count.
    /// Node names are `s{k}n{i}`.
    pub fn new(sites: &[(NatKind, usize)]) -> Self {
        let internet = Netns::new("inet");
        internet.ip(&["link", "add", "br0", "type", "bridge"]);
        internet.ip(&["link", "set", "br0", "up"]);
        let built = sites
            .iter()
            .enumerate()
            .map(|(k, (kind, count))| build_site(&internet, k, *kind, *count))
            .collect();
        Self {
            sites: built,
            internet,
        }
    }

    /// Every node, site by site.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.sites.iter().flat_map(|s| s.nodes.iter())
    }

    /// The internet's namespace (for captures).
    pub fn internet(&self) -> &Netns {
        &self.internet
    }

    /// One router per node (`bin`, state under `dir`), every one given
    /// `seeds`, with the default `--ipalloc-init` (consensus among the
    /// seeds); not started.
    pub fn routers(&self, bin: &Path, dir: &Path, seeds: &[Ipv4Addr]) -> Vec<Router> {
        self.nodes()
            .map(|node| {
                let mut r = Router::new(bin, node, dir, seeds, &[]);
                if let Some(i) = r.args.iter().position(|a| a == "--ipalloc-init") {
                    r.args.drain(i..i + 2);
                }
                r
            })
            .collect()
    }

    /// One pod per node, at its router's range start + 10 (the ring must
    /// be ready).
    pub fn pods(&self, routers: &[Router]) -> Vec<Pod> {
        routers
            .iter()
            .zip(self.nodes())
            .enumerate()
            .map(|(i, (r, node))| {
                let ns = Netns::new(&format!("pod{i}"));
                let addr = Ipv4Addr::from(u32::from(r.range_start()) + 10);
                plumb_pod(&node.ns, &ns, &format!("veth{i}"), addr);
                Pod { ns, addr, node: i }
            })
            .collect()
    }
}

/// Asserts that every pod pings every other within `timeout` each (pod
/// `i` on `routers[i]`'s node), naming both paths when one does not.
pub fn nat_pods_reach_each_other(routers: &[Router], pods: &[Pod], timeout: Duration) {
    let names: Vec<&str> = routers.iter().map(|r| r.name.as_str()).collect();
    for a in pods {
        for b in pods {
            if a.node != b.node {
                assert!(
                    a.wait_ping(b.addr, timeout),
                    "{} cannot reach {}: paths {:?} / {:?}",
                    names[a.node],
                    names[b.node],
                    path_to(&routers[a.node], names[b.node]),
                    path_to(&routers[b.node], names[a.node]),
                );
            }
        }
    }
}

fn build_site(internet: &Netns, k: usize, kind: NatKind, count: usize) -> Site {
    assert!(
        k < 4 && count <= 8,
        "the address plan holds 4 sites of 8 nodes"
    );
    let base = 64 * k as u8;
    let gw_lan = Ipv4Addr::new(198, 51, 100, base + 1);
    let wan = Ipv4Addr::new(203, 0, 113, 10 * k as u8 + 10);
    let gateway = Netns::new(&format!("gw{k}"));
    let port = format!("site{k}");
    veth(internet, &port, &gateway, "wan");
    internet.ip(&["link", "set", &port, "master", "br0", "up"]);
    gateway.ip(&["addr", "add", &format!("{wan}/24"), "dev", "wan"]);
    gateway.ip(&["link", "set", "wan", "up"]);
    let switch = Netns::new(&format!("sw{k}"));
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    veth(&switch, "gw", &gateway, "lan");
    switch.ip(&["link", "set", "gw", "master", "br0", "up"]);
    gateway.ip(&["addr", "add", &format!("{gw_lan}/26"), "dev", "lan"]);
    gateway.ip(&["link", "set", "lan", "up"]);
    gateway.sysctl("net.ipv4.ip_forward", "1");
    let mut nodes = Vec::new();
    let mut public = Vec::new();
    for i in 0..count {
        let name = format!("s{k}n{i}");
        let ns = Netns::new(&name);
        let underlay = Ipv4Addr::new(198, 51, 100, base + 10 + i as u8);
        let host_port = format!("n{i}");
        veth(&switch, &host_port, &ns, "eth0");
        switch.ip(&["link", "set", &host_port, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{underlay}/26"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &gw_lan.to_string()]);
        fresh_host(&ns);
        if kind == NatKind::OneToOne {
            let p = Ipv4Addr::new(203, 0, 113, 10 * k as u8 + 11 + i as u8);
            gateway.ip(&["addr", "add", &format!("{p}/32"), "dev", "wan"]);
            public.push(p);
        }
        nodes.push(Node { ns, underlay, name });
    }
    gateway.ok(&["nft", &rules(kind, &nodes, &public)]);
    Site {
        kind,
        gateway,
        switch,
        nodes,
        public,
        wan,
    }
}

/// The gateway's nftables for `kind`.
fn rules(kind: NatKind, nodes: &[Node], public: &[Ipv4Addr]) -> String {
    let mut pre = String::new();
    let mut post = String::new();
    match kind {
        NatKind::OneToOne => {
            for (n, p) in nodes.iter().zip(public) {
                pre += &format!("ip daddr {p} dnat to {}; ", n.underlay);
                post += &format!("oifname \"wan\" ip saddr {} snat to {p}; ", n.underlay);
            }
        }
        NatKind::Masquerade | NatKind::MasqueradeDropInbound => {
            post += "oifname \"wan\" masquerade; ";
        }
        NatKind::Symmetric => post += "oifname \"wan\" masquerade fully-random; ",
    }
    let drop_inbound = matches!(kind, NatKind::MasqueradeDropInbound | NatKind::Symmetric);
    let filter = if drop_inbound {
        "chain wanfwd { type filter hook forward priority 0; iifname \"wan\" ct state established,related accept; iifname \"wan\" drop; }; \
         chain wanin { type filter hook input priority 0; iifname \"wan\" ct state established,related accept; iifname \"wan\" drop; };"
    } else {
        ""
    };
    format!(
        "table ip weftnat {{ \
           chain pre {{ type nat hook prerouting priority dstnat; {pre}}}; \
           chain post {{ type nat hook postrouting priority srcnat; {post}}}; \
           {filter} }}"
    )
}

/// Issue 16's matrix (tests/nat.rs, tests/nat_bench.rs): nodes 0, 1 behind
/// 1:1 NAT, 2, 3 behind masquerade, 4 behind symmetric NAT, 5 behind
/// masquerade that drops unsolicited inbound.
pub const MATRIX: [(NatKind, usize); 4] = [
    (NatKind::OneToOne, 2),
    (NatKind::Masquerade, 2),
    (NatKind::Symmetric, 1),
    (NatKind::MasqueradeDropInbound, 1),
];

impl Site {
    /// The gateway "restarts" (issue 16, rebinding): its masquerade moves to
    /// `ports` (`"30000-30999"`) and its conntrack table is flushed, so every
    /// flow through it, TCP and UDP, gets a new public port at its next
    /// packet. Only for the masquerade kinds.
    pub fn rebind(&self, ports: &str) {
        assert!(
            matches!(
                self.kind,
                NatKind::Masquerade | NatKind::MasqueradeDropInbound
            ),
            "rebind: {:?} has no port mapping to move",
            self.kind
        );
        self.gateway
            .ok(&["nft", "flush", "chain", "ip", "weftnat", "post"]);
        self.gateway.ok(&[
            "nft",
            &format!(
                "add rule ip weftnat post oifname \"wan\" meta l4proto {{ tcp, udp }} masquerade to :{ports}"
            ),
        ]);
        self.gateway
            .ok(&["nft", "add rule ip weftnat post oifname \"wan\" masquerade"]);
        self.gateway.ok(&["conntrack", "-F"]);
    }
}
