//! The kernel side of a pod's attachment, through rtnetlink only (the plugin
//! runs on hosts that may have no `ip` binary). DESIGN.md "The picture": a
//! veth pair, the pod's /32 on `CNI_IFNAME`, a default route via the
//! link-local gateway 169.254.1.1 (onlink) with a permanent neighbour entry
//! for it, and on the host the veth up with IPv4 forwarding and proxy ARP
//! (fallback only) on, and a
//! /32 route to the pod tagged with weft's route protocol, which the
//! router's in-use scan reads back after a restart ("Identity, ownership and
//! reclaim").
//!
//! Dual-stack (issue 19): with an IPv6 address the pod also gets it as a
//! /128 (no DAD: usable at once), a default route via the link-local
//! gateway `fe80::1` with a permanent neighbour entry (the host end's MAC),
//! and the host a weft-tagged /128 route to the pod with a permanent
//! neighbour entry for it (the pod end's MAC), so neither side waits for
//! neighbour discovery on a link whose host end's own link-local address may
//! still be tentative.

use blake2::{Blake2s256, Digest};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use weft_api::WEFT_ROUTE_PROTOCOL;

/// A kernel operation that failed, with what we were doing.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub(crate) struct PlumbError {
    what: String,
    source: rtnetlink::Error,
}

fn fail(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PlumbError {
    let what = what.into();
    move |source| PlumbError { what, source }
}

/// The host end's name: `weft` + 11 hex characters of a hash of the
/// container ID and interface name, so DEL and GC find it from the IDs alone.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let digest = attachment_hash(container_id, ifname);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("weft{}", &hex[..11])
}

/// Deterministic locally administered MACs for (host end, pod end), so a
/// repeated ADD returns the very same result.
pub fn macs(container_id: &str, ifname: &str) -> ([u8; 6], [u8; 6]) {
    let d = attachment_hash(container_id, ifname);
    let mut host = [0x0a, d[16], d[17], d[18], d[19], d[20]];
    let mut pod = [0x0e, d[21], d[22], d[23], d[24], d[25]];
    host[0] |= 0x02;
    pod[0] |= 0x02;
    (host, pod)
}

fn attachment_hash(container_id: &str, ifname: &str) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"weft-cni veth\0");
    h.update(container_id.as_bytes());
    h.update([0]);
    h.update(ifname.as_bytes());
    h.finalize().into()
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What to configure.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Host end name.
    pub host_ifname: String,
    /// Pod end name (`CNI_IFNAME`).
    pub pod_ifname: String,
    /// Host end MAC.
    pub host_mac: [u8; 6],
    /// Pod end MAC.
    pub pod_mac: [u8; 6],
    /// The pod's address (a /32).
    pub address: Ipv4Addr,
    /// The link-local gateway.
    pub gateway: Ipv4Addr,
    /// MTU of both ends.
    pub mtu: u32,
    /// The pod's IPv6 address and gateway, when the router has an IPv6
    /// pod range.
    pub v6: Option<Plan6>,
}

/// The IPv6 half of a dual-stack [`Plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan6 {
    /// The pod's address (a /128).
    pub address: Ipv6Addr,
    /// The link-local gateway (`fe80::1`).
    pub gateway: Ipv6Addr,
}

/// Creates the veth pair with its pod end directly in the namespace `ns_fd`
/// (one atomic request: nothing is left if it fails). `host` and `pod` are
/// netlink handles in the host and the pod namespace.
pub(crate) async fn create_veth(
    host: &Handle,
    ns_fd: RawFd,
    plan: &Plan,
) -> Result<(), PlumbError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(plan.pod_ifname.clone())
        .mtu(plan.mtu)
        .address(plan.pod_mac.to_vec())
        .setns_by_fd(ns_fd)
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(plan.host_ifname.clone())
        .mtu(plan.mtu)
        .address(plan.host_mac.to_vec())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link().add(veth).execute().await.map_err(fail(format!(
        "cannot create the veth pair {} / {} in the pod",
        plan.host_ifname, plan.pod_ifname
    )))
}

/// Configures both ends of a veth made by [`create_veth`].
pub(crate) async fn configure(host: &Handle, pod: &Handle, plan: &Plan) -> Result<(), PlumbError> {
    // Pod side: address, up, onlink default route, permanent neighbour.
    let pod_index = link_index(pod, &plan.pod_ifname)
        .await?
        .ok_or_else(|| missing(&plan.pod_ifname))?;
    pod.address()
        .add(pod_index, IpAddr::V4(plan.address), 32)
        .replace()
        .execute()
        .await
        .map_err(fail(format!("cannot add {}/32 in the pod", plan.address)))?;
    pod.link()
        .set(LinkUnspec::new_with_index(pod_index).up().build())
        .execute()
        .await
        .map_err(fail(format!(
            "cannot bring {} up in the pod",
            plan.pod_ifname
        )))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(plan.gateway)
        .output_interface(pod_index)
        .onlink()
        .build();
    pod.route()
        .add(default)
        .replace()
        .execute()
        .await
        .map_err(fail("cannot add the pod's default route via 169.254.1.1"))?;
    pod.neighbours()
        .add(pod_index, IpAddr::V4(plan.gateway))
        .link_layer_address(&plan.host_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(fail("cannot add the pod's neighbour entry for 169.254.1.1"))?;

    // Host side: IPv4 forwarding (Linux forwards a packet only if the
    // device it came in on forwards: the pod's packets come in here) and
    // proxy ARP as the fallback (DESIGN.md: with proxy_delay 0), both
    // through netlink devconf (src/forwarding.rs); up; and the /32 route
    // tagged with weft's protocol.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv4/neigh/{}/proxy_delay", plan.host_ifname),
        "0",
    );
    let host_index = link_index(host, &plan.host_ifname)
        .await?
        .ok_or_else(|| missing(&plan.host_ifname))?;
    host.link()
        .set(
            LinkUnspec::new_with_index(host_index)
                .up()
                .append_extra_attribute(weft_api::devconf::ipv4_conf_request(true, true))
                .build(),
        )
        .execute()
        .await
        .map_err(fail(format!(
            "cannot bring {} up with IPv4 forwarding and proxy ARP on",
            plan.host_ifname
        )))?;
    host.route()
        .add(host_route(plan.address, host_index))
        .replace()
        .execute()
        .await
        .map_err(fail(format!(
            "cannot route {}/32 to {}",
            plan.address, plan.host_ifname
        )))?;
    if let Some(v6) = plan.v6 {
        configure_v6(host, pod, plan, v6, pod_index, host_index).await?;
    }
    Ok(())
}

/// The IPv6 half of [`configure`] (see the module doc).
async fn configure_v6(
    host: &Handle,
    pod: &Handle,
    plan: &Plan,
    v6: Plan6,
    pod_index: u32,
    host_index: u32,
) -> Result<(), PlumbError> {
    let mut add = pod
        .address()
        .add(pod_index, IpAddr::V6(v6.address), 128)
        .replace();
    let message = add.message_mut();
    message.header.flags = AddressHeaderFlags::Nodad;
    message
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    add.execute()
        .await
        .map_err(fail(format!("cannot add {}/128 in the pod", v6.address)))?;
    let default = RouteMessageBuilder::<Ipv6Addr>::new()
        .gateway(v6.gateway)
        .output_interface(pod_index)
        .build();
    pod.route()
        .add(default)
        .replace()
        .execute()
        .await
        .map_err(fail(format!(
            "cannot add the pod's IPv6 default route via {}",
            v6.gateway
        )))?;
    pod.neighbours()
        .add(pod_index, IpAddr::V6(v6.gateway))
        .link_layer_address(&plan.host_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(fail(format!(
            "cannot add the pod's neighbour entry for {}",
            v6.gateway
        )))?;
    let route = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(v6.address, 128)
        .output_interface(host_index)
        .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL))
        .build();
    host.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(fail(format!(
            "cannot route {}/128 to {}",
            v6.address, plan.host_ifname
        )))?;
    host.neighbours()
        .add(host_index, IpAddr::V6(v6.address))
        .link_layer_address(&plan.pod_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(fail(format!(
            "cannot add the host's neighbour entry for {}",
            v6.address
        )))
}

fn host_route(address: Ipv4Addr, index: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(address, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL))
        .build()
}

fn missing(name: &str) -> PlumbError {
    PlumbError {
        what: format!("interface {name} vanished while being configured"),
        source: rtnetlink::Error::RequestFailed,
    }
}

/// The index of link `name`, or `None` when there is none.
pub(crate) async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, PlumbError> {
    Ok(link(handle, name).await?.map(|l| l.index))
}

/// What [`verify`] looks at on a link.
struct LinkState {
    index: u32,
    up: bool,
    mac: Vec<u8>,
    forwarding: Option<bool>,
}

/// The state of link `name`.
async fn link(handle: &Handle, name: &str) -> Result<Option<LinkState>, PlumbError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => {
            let mac = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Address(m) => Some(m.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            Ok(Some(LinkState {
                index: msg.header.index,
                up: msg.header.flags.contains(LinkFlags::Up),
                mac,
                forwarding: weft_api::devconf::ipv4_forwarding_of(&msg),
            }))
        }
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(fail(format!("cannot look up {name}"))(e)),
    }
}

/// The pod's addresses, read from the weft-tagged host routes through its
/// veth before the veth goes.
pub(crate) type HostEndAddresses = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// Removes the host end `name` (its peer and every route through it go with
/// it). Returns the pod addresses found on its weft-tagged /32 and /128
/// routes first, if any. Nothing there is not an error.
pub(crate) async fn remove_host_end(
    host: &Handle,
    name: &str,
) -> Result<HostEndAddresses, PlumbError> {
    let Some(index) = link_index(host, name).await? else {
        return Ok((None, None));
    };
    let address = (
        host_route_to(host, index, 32).await?,
        host_route_to(host, index, 128).await?,
    );
    match host.link().del(index).execute().await {
        Ok(()) => Ok(address),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(address),
        Err(e) => Err(fail(format!("cannot remove {name}"))(e)),
    }
}

/// The destination of the weft-tagged host route (`prefix` bits: 32 or
/// 128, of family `A`) through interface `index`, if there is one.
async fn host_route_to<A: Family>(
    host: &Handle,
    index: u32,
    prefix: u8,
) -> Result<Option<A>, PlumbError> {
    Ok(routes::<A>(host)
        .await?
        .into_iter()
        .find(|r| r.oif == Some(index) && r.prefix == prefix && r.weft)
        .and_then(|r| r.dst))
}

/// One route, reduced to what CHECK and DEL look at.
#[derive(Clone, Debug)]
pub(crate) struct Route<A = Ipv4Addr> {
    /// Destination (None = default).
    pub(crate) dst: Option<A>,
    /// Prefix length.
    pub(crate) prefix: u8,
    /// Gateway.
    pub(crate) gateway: Option<A>,
    /// Output interface.
    pub(crate) oif: Option<u32>,
    /// Tagged with weft's protocol.
    pub(crate) weft: bool,
}

/// An address family whose routes [`routes`] lists.
pub(crate) trait Family: Copy + Sized {
    /// The family's name in errors.
    const NAME: &'static str;
    /// A route dump request for the family's main table.
    fn dump() -> RouteMessage;
    /// The address, if `a` is of this family.
    fn of(a: &RouteAddress) -> Option<Self>;
}

impl Family for Ipv4Addr {
    const NAME: &'static str = "IPv4";
    fn dump() -> RouteMessage {
        RouteMessageBuilder::<Self>::new().build()
    }
    fn of(a: &RouteAddress) -> Option<Self> {
        match a {
            RouteAddress::Inet(a) => Some(*a),
            _ => None,
        }
    }
}

impl Family for Ipv6Addr {
    const NAME: &'static str = "IPv6";
    fn dump() -> RouteMessage {
        RouteMessageBuilder::<Self>::new().build()
    }
    fn of(a: &RouteAddress) -> Option<Self> {
        match a {
            RouteAddress::Inet6(a) => Some(*a),
            _ => None,
        }
    }
}

/// The main table's routes of family `A`.
pub(crate) async fn routes<A: Family>(handle: &Handle) -> Result<Vec<Route<A>>, PlumbError> {
    let mut stream = handle.route().get(A::dump()).execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(fail(format!("cannot list {} routes", A::NAME)))?
    {
        let mut r = Route {
            dst: None,
            prefix: msg.header.destination_prefix_length,
            gateway: None,
            oif: None,
            weft: msg.header.protocol == RouteProtocol::Other(WEFT_ROUTE_PROTOCOL),
        };
        for a in &msg.attributes {
            match a {
                RouteAttribute::Destination(d) => r.dst = A::of(d),
                RouteAttribute::Gateway(g) => r.gateway = A::of(g),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                _ => {}
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// Whether the interface `index` has `address`/`prefix`.
async fn has_address(
    handle: &Handle,
    index: u32,
    address: IpAddr,
    prefix: u8,
) -> Result<bool, String> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut found = false;
    while let Some(msg) = addrs.try_next().await.map_err(|e| e.to_string())? {
        let has = msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(a) if *a == address));
        found |= has && msg.header.prefix_len == prefix && msg.header.index == index;
    }
    Ok(found)
}

/// CHECK: whether the attachment looks as ADD left it; the first
/// difference found, in one line.
pub(crate) async fn verify(host: &Handle, pod: &Handle, plan: &Plan) -> Result<(), String> {
    let text = |e: PlumbError| e.to_string();
    let Some(LinkState {
        index: pod_index,
        up: pod_up,
        ..
    }) = link(pod, &plan.pod_ifname).await.map_err(text)?
    else {
        return Err(format!("the pod has no interface {}", plan.pod_ifname));
    };
    if !pod_up {
        return Err(format!("{} in the pod is down", plan.pod_ifname));
    }
    if !has_address(pod, pod_index, IpAddr::V4(plan.address), 32).await? {
        return Err(format!(
            "{} in the pod does not have {}/32",
            plan.pod_ifname, plan.address
        ));
    }
    let pod_routes = routes::<Ipv4Addr>(pod).await.map_err(text)?;
    if !pod_routes
        .iter()
        .any(|r| r.prefix == 0 && r.gateway == Some(plan.gateway) && r.oif == Some(pod_index))
    {
        return Err(format!(
            "the pod has no default route via {} on {}",
            plan.gateway, plan.pod_ifname
        ));
    }
    let Some(LinkState {
        index: host_index,
        up: host_up,
        mac: host_mac,
        forwarding,
    }) = link(host, &plan.host_ifname).await.map_err(text)?
    else {
        return Err(format!("the host has no interface {}", plan.host_ifname));
    };
    if !host_up {
        return Err(format!("{} on the host is down", plan.host_ifname));
    }
    if forwarding == Some(false) {
        return Err(format!(
            "IPv4 forwarding is off on {}: the pod's packets are not forwarded",
            plan.host_ifname
        ));
    }
    if host_mac != plan.host_mac {
        return Err(format!(
            "{} has MAC {}, expected {}",
            plan.host_ifname,
            mac_string(&host_mac),
            mac_string(&plan.host_mac)
        ));
    }
    let host_routes = routes::<Ipv4Addr>(host).await.map_err(text)?;
    if !host_routes.iter().any(|r| {
        r.prefix == 32 && r.dst == Some(plan.address) && r.oif == Some(host_index) && r.weft
    }) {
        return Err(format!(
            "the host has no weft route {}/32 via {}",
            plan.address, plan.host_ifname
        ));
    }
    match plan.v6 {
        Some(v6) => verify_v6(host, pod, plan, v6, pod_index, host_index).await,
        None => Ok(()),
    }
}

/// The IPv6 half of [`verify`].
async fn verify_v6(
    host: &Handle,
    pod: &Handle,
    plan: &Plan,
    v6: Plan6,
    pod_index: u32,
    host_index: u32,
) -> Result<(), String> {
    if !has_address(pod, pod_index, IpAddr::V6(v6.address), 128).await? {
        return Err(format!(
            "{} in the pod does not have {}/128",
            plan.pod_ifname, v6.address
        ));
    }
    let pod_routes = routes::<Ipv6Addr>(pod).await.map_err(|e| e.to_string())?;
    if !pod_routes
        .iter()
        .any(|r| r.prefix == 0 && r.gateway == Some(v6.gateway) && r.oif == Some(pod_index))
    {
        return Err(format!(
            "the pod has no IPv6 default route via {} on {}",
            v6.gateway, plan.pod_ifname
        ));
    }
    let host_routes = routes::<Ipv6Addr>(host).await.map_err(|e| e.to_string())?;
    if !host_routes.iter().any(|r| {
        r.prefix == 128 && r.dst == Some(v6.address) && r.oif == Some(host_index) && r.weft
    }) {
        return Err(format!(
            "the host has no weft route {}/128 via {}",
            v6.address, plan.host_ifname
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_ifnamsiz_and_differ_per_attachment() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("weft"));
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(a, host_ifname("abd", "eth0"));
        // The separator keeps ("ab","ceth0") and ("abc","eth0") apart.
        assert_ne!(host_ifname("ab", "ceth0"), a);
    }

    #[test]
    fn macs_are_unicast_locally_administered_and_stable() {
        let (h, p) = macs("abc", "eth0");
        for m in [h, p] {
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
        assert_ne!(h, p);
        assert_eq!(macs("abc", "eth0"), (h, p));
        assert_eq!(mac_string(&h).len(), 17);
    }
}
