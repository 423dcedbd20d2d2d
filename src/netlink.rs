//! Kernel configuration through rtnetlink: the TUN device's MTU and state,
//! the node's own /32 on it, the cluster range routed into it (and the IPv6
//! pod range, with the node's /128), and an `unreachable` route per owned
//! range of either family so that a packet for an unallocated
//! local address is answered with ICMP instead of looping through the TUN
//! (DESIGN.md "No loops, no leaks"). Every call is idempotent (`replace`),
//! so a restarted router reconciles instead of failing. Also the per-interface
//! IPv4 `forwarding` bit the data path needs ([`ensure_forwarding`]; which
//! interfaces and why: [`crate::forwarding`]), set through netlink devconf,
//! never through /proc/sys (read-only in the DaemonSet's pod).

use crate::cidr::Ipv4Cidr;
use crate::forwarding::{self, Outcome, Report};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags,
};
use rtnetlink::packet_route::route::RouteHeader;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The route protocol number that tags weft's routes (`ip route show proto
/// 87`); shared with the CNI plugin through the API crate.
pub use crate::api::WEFT_ROUTE_PROTOCOL;

/// What the interface should look like.
#[derive(Clone, Debug)]
pub struct InterfacePlan {
    /// Device name.
    pub iface: String,
    /// Overlay MTU (weft0's).
    pub mtu: u32,
    /// An MTU of the IPv4 range route below weft0's, when weft0 stays at
    /// IPv6's minimum over a smaller cluster MTU (`control::mtu`): the
    /// kernel then answers frag-needed for IPv4 packets over it.
    pub ipv4_route_mtu: Option<u32>,
    /// The node's own overlay address (a /32 on the device), once the IPAM
    /// ring has given it one; until then the range is routed without `src`.
    pub own_address: Option<Ipv4Addr>,
    /// The cluster range, routed to the device.
    pub range: Ipv4Cidr,
    /// Ranges this router owns (inclusive), made `unreachable`.
    pub owned: Vec<(u32, u32)>,
    /// The IPv6 pod range (dual-stack pods, issue 19), routed to the
    /// device as well.
    pub range6: Option<crate::ipam::AddrRange>,
    /// IPv6 ranges this router owns (inclusive), made `unreachable` like
    /// the IPv4 ones.
    pub owned6: Vec<(u128, u128)>,
    /// The node's own IPv6 overlay address (a /128 on the device, no DAD),
    /// the source of the node's own IPv6 traffic to pods elsewhere.
    pub own_address6: Option<Ipv6Addr>,
}

/// Applies `plan`, and removes what an earlier plan set up that this one
/// no longer has (an address or an `unreachable` route for a range given
/// away), so the kernel follows the ring.
pub async fn configure(plan: &InterfacePlan) -> anyhow::Result<()> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let index = link_index(&handle, &plan.iface).await?;
    no_ipv6_link_local(&handle, index, &plan.iface).await;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(plan.mtu).up().build())
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("cannot bring {} up: {e}", plan.iface))?;
    if let Some(own) = plan.own_address {
        handle
            .address()
            .add(index, IpAddr::V4(own), 32)
            .replace()
            .execute()
            .await
            .map_err(|e| anyhow::anyhow!("cannot add {own}/32 to {}: {e}", plan.iface))?;
    }
    remove_stale_addresses(&handle, index, plan).await;
    let mut range = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::from(plan.range.first()), plan.range.prefix())
        .output_interface(index)
        .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL));
    if let Some(own) = plan.own_address {
        range = range.pref_source(own);
    }
    let mut range = range.build();
    if let Some(mtu) = plan.ipv4_route_mtu {
        range
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    handle
        .route()
        .add(range)
        .replace()
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("cannot route {} to {}: {e}", plan.range, plan.iface))?;
    let wanted: Vec<(u32, u8)> = plan
        .owned
        .iter()
        .flat_map(|(start, end)| cidr_blocks(*start, *end))
        .collect();
    for (base, prefix) in &wanted {
        add_unreachable(&handle, IpAddr::V4(Ipv4Addr::from(*base)), *prefix).await?;
    }
    if let Some(range6) = plan.range6 {
        configure_v6(&handle, index, plan, range6).await?;
    }
    remove_stale_routes6(&handle, index, plan).await;
    for route in weft_routes(&handle, false).await {
        if route.header.kind != RouteType::Unreachable {
            continue;
        }
        let Some(IpAddr::V4(dst)) = route_destination(&route) else {
            continue;
        };
        let block = (u32::from(dst), route.header.destination_prefix_length);
        if plan.range.contains(u32::from(dst)) && !wanted.contains(&block) {
            let _ = handle.route().del(route).execute().await;
        }
    }
    Ok(())
}

/// The IPv6 side of [`configure`]: the node's own /128 without DAD (a TUN
/// has no neighbours to collide with) and the IPv6 pod range to the device,
/// from that address once there is one.
async fn configure_v6(
    handle: &Handle,
    index: u32,
    plan: &InterfacePlan,
    range6: crate::ipam::AddrRange,
) -> anyhow::Result<()> {
    let IpAddr::V6(base) = range6.base() else {
        anyhow::bail!("the IPv6 pod range {range6} is not IPv6");
    };
    if let Some(own) = plan.own_address6 {
        let mut add = handle.address().add(index, IpAddr::V6(own), 128).replace();
        let message = add.message_mut();
        message.header.flags = AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        add.execute()
            .await
            .map_err(|e| anyhow::anyhow!("cannot add {own}/128 to {}: {e}", plan.iface))?;
    }
    let mut route = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(base, range6.prefix())
        .output_interface(index)
        .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL));
    if let Some(own) = plan.own_address6 {
        route = route.pref_source(own);
    }
    handle
        .route()
        .add(route.build())
        .replace()
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("cannot route {range6} to {}: {e}", plan.iface))?;
    for (block, prefix) in &wanted6(plan) {
        add_unreachable(handle, IpAddr::V6(Ipv6Addr::from(*block)), *prefix).await?;
    }
    Ok(())
}

/// The IPv6 blocks `plan` makes `unreachable`.
fn wanted6(plan: &InterfacePlan) -> Vec<(u128, u8)> {
    plan.owned6
        .iter()
        .flat_map(|(start, end)| blocks(*start, *end, 128))
        .collect()
}

/// Removes the IPv6 routes weft made that `plan` no longer has: every one
/// when the router runs without an IPv6 pod range (after a run with one),
/// else a range route or `unreachable` block of another range or given
/// away. Routes of pods (to their veths, tagged by the CNI plugin) stay.
async fn remove_stale_routes6(handle: &Handle, index: u32, plan: &InterfacePlan) {
    let wanted = wanted6(plan);
    for route in weft_routes(handle, true).await {
        let Some(IpAddr::V6(dst)) = route_destination(&route) else {
            continue;
        };
        let made = WeftRoute6 {
            unreachable: route.header.kind == RouteType::Unreachable,
            on_tun: route
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index)),
            block: (u128::from(dst), route.header.destination_prefix_length),
        };
        if made.stale(plan.range6, &wanted) {
            let _ = handle.route().del(route).execute().await;
        }
    }
}

/// A route tagged with weft's protocol, as [`remove_stale_routes6`] judges it.
#[derive(Clone, Copy, Debug)]
struct WeftRoute6 {
    /// An `unreachable` route (for an owned block).
    unreachable: bool,
    /// Through the TUN (the range route).
    on_tun: bool,
    /// Destination and prefix length.
    block: (u128, u8),
}

impl WeftRoute6 {
    /// Whether the router made this route and the plan no longer has it.
    fn stale(self, range6: Option<crate::ipam::AddrRange>, wanted: &[(u128, u8)]) -> bool {
        let in_range = |range6: crate::ipam::AddrRange| {
            range6
                .offset(IpAddr::V6(Ipv6Addr::from(self.block.0)))
                .is_some()
                && self.block.1 >= range6.prefix()
        };
        match range6 {
            None => self.unreachable || self.on_tun,
            Some(range6) if self.unreachable => !in_range(range6) || !wanted.contains(&self.block),
            Some(range6) => {
                self.on_tun && self.block != (ipv6_bits(range6.base()), range6.prefix())
            }
        }
    }
}

fn ipv6_bits(address: IpAddr) -> u128 {
    match address {
        IpAddr::V6(a) => u128::from(a),
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
    }
}

/// Whether an address on the TUN is left from an earlier plan: IPv4 but not
/// the node's /32; IPv6 with no IPv6 pod range now, outside it, or not the
/// node's /128 once that is known (until then one in the range is kept, so
/// a restart does not take the node's IPv6 source away meanwhile).
fn stale_address(address: IpAddr, plan: &InterfacePlan) -> bool {
    match address {
        IpAddr::V4(a) => Some(a) != plan.own_address,
        IpAddr::V6(a) => match (plan.range6, plan.own_address6) {
            (None, _) => true,
            (Some(_), Some(own)) => a != own,
            (Some(range6), None) => range6.offset(IpAddr::V6(a)).is_none(),
        },
    }
}

/// Adds (or keeps) the `unreachable` route for `base/prefix`, tagged with
/// weft's protocol.
async fn add_unreachable(handle: &Handle, base: IpAddr, prefix: u8) -> anyhow::Result<()> {
    let message = match base {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, prefix)
            .kind(RouteType::Unreachable)
            .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL))
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, prefix)
            .kind(RouteType::Unreachable)
            .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL))
            .build(),
    };
    handle
        .route()
        .add(message)
        .replace()
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("cannot add the unreachable route for {base}/{prefix}: {e}"))
}

/// Turns IPv6 forwarding on for the node (`net.ipv6.conf.all.forwarding`,
/// the only switch there is: the kernel takes no per-interface IPv6
/// forwarding over netlink) when pods have IPv6 addresses; Kubernetes'
/// dual-stack nodes need it on anyway. Note that a node forwarding IPv6
/// ignores router advertisements on interfaces whose `accept_ra` is 1.
/// Returns what happened, for the log and `weft status`.
pub fn ensure_ipv6_forwarding() -> forwarding::Outcome {
    const PATH: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
    match std::fs::read_to_string(PATH) {
        Ok(v) if v.trim() == "1" => forwarding::Outcome::WasOn,
        Ok(_) => match std::fs::write(PATH, "1") {
            Ok(()) => forwarding::Outcome::TurnedOn,
            Err(e) => forwarding::Outcome::Failed(format!("cannot write {PATH}: {e}")),
        },
        Err(e) => forwarding::Outcome::Failed(format!("cannot read {PATH}: {e}")),
    }
}

/// The TUN gets no IPv6 link-local address, so no router solicitations or
/// MLD reports into it (IPv6 pod packets are routed to it without one). Set before the device
/// first comes up, through netlink (`IFLA_INET6_ADDR_GEN_MODE` none): the
/// kernel does not take IPv6 devconf such as `disable_ipv6` over netlink,
/// and /proc/sys is read-only in the DaemonSet's pod. A kernel without IPv6
/// has nothing to do; any other refusal is logged, as the TUN still works.
async fn no_ipv6_link_local(handle: &Handle, index: u32, iface: &str) {
    let request = LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]))
        .build();
    match handle.link().set(request).execute().await {
        Ok(()) => {}
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EAFNOSUPPORT => {}
        Err(e) => tracing::warn!(
            "cannot turn IPv6 address generation off on {iface} ({e}): it may get a link-local address and send IPv6 router solicitations into the mesh, which drops them"
        ),
    }
}

pub use weft_api::devconf::{ipv4_conf_request, ipv4_forwarding_of};

/// Turns IPv4 forwarding on wherever the data path needs it and it is off
/// (the TUN `tun`, the underlay, pod veths: [`forwarding::needed`]), and
/// reports each interface. Idempotent: an interface already on is only
/// read. Never fails: what went wrong is in the report.
pub async fn ensure_forwarding(tun: &str) -> Report {
    let Ok((connection, handle, _)) = rtnetlink::new_connection() else {
        return Report::failed("cannot open a netlink socket");
    };
    tokio::spawn(connection);
    let links = match forwarding_links(&handle).await {
        Ok(links) => links,
        Err(e) => return Report::failed(format!("cannot list interfaces: {e}")),
    };
    let routes = match main_routes(&handle).await {
        Ok(routes) => routes,
        Err(e) => return Report::failed(format!("cannot list routes: {e}")),
    };
    let mut report = Report::default();
    for (index, role) in forwarding::needed(&links, &routes, tun) {
        let Some(link) = links.iter().find(|l| l.index == index) else {
            continue;
        };
        let outcome = if link.forwarding == Some(true) {
            Outcome::WasOn
        } else {
            let request = LinkUnspec::new_with_index(index)
                .append_extra_attribute(ipv4_conf_request(true, false))
                .build();
            match handle.link().set(request).execute().await {
                Ok(()) => Outcome::TurnedOn,
                Err(rtnetlink::Error::NetlinkError(e)) => {
                    Outcome::Failed(forwarding::failure_reason(e.raw_code(), &e.to_string()))
                }
                Err(e) => Outcome::Failed(e.to_string()),
            }
        };
        report.interfaces.push(forwarding::Interface {
            name: link.name.clone(),
            role,
            outcome,
        });
    }
    report
}

async fn forwarding_links(handle: &Handle) -> Result<Vec<forwarding::Link>, rtnetlink::Error> {
    let mut links = handle.link().get().execute();
    let mut out = Vec::new();
    while let Some(link) = links.try_next().await? {
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        });
        out.push(forwarding::Link {
            index: link.header.index,
            name: name.unwrap_or_default(),
            loopback: link.header.flags.contains(LinkFlags::Loopback),
            forwarding: ipv4_forwarding_of(&link),
        });
    }
    Ok(out)
}

async fn main_routes(handle: &Handle) -> Result<Vec<forwarding::Route>, rtnetlink::Error> {
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut out = Vec::new();
    while let Some(route) = routes.try_next().await? {
        if route.header.table != RouteHeader::RT_TABLE_MAIN
            || route.header.kind != RouteType::Unicast
        {
            continue;
        }
        let interfaces = route
            .attributes
            .iter()
            .flat_map(|a| match a {
                RouteAttribute::Oif(index) => vec![*index],
                RouteAttribute::MultiPath(hops) => hops.iter().map(|h| h.interface_index).collect(),
                _ => Vec::new(),
            })
            .collect();
        out.push(forwarding::Route {
            interfaces,
            weft: route.header.protocol == RouteProtocol::Other(WEFT_ROUTE_PROTOCOL),
            host: route.header.destination_prefix_length == 32,
        });
    }
    Ok(out)
}

/// Addresses in a pod range of either family that the kernel shows in use
/// on this node (DESIGN.md: "Before an empty-state router claims anything,
/// it rebuilds its in-use set from the kernel"): the node address on
/// `iface` (`true`), and every weft-tagged host route to a pod (`false`),
/// a /32 for an IPv4 range and a /128 for an IPv6 one, so that pods which
/// outlived their router's state keep both addresses.
pub async fn addresses_in_use(iface: &str, range: crate::ipam::AddrRange) -> Vec<(IpAddr, bool)> {
    let Ok((connection, handle, _)) = rtnetlink::new_connection() else {
        return Vec::new();
    };
    tokio::spawn(connection);
    let v6 = range.base().is_ipv6();
    let host_prefix = if v6 { 128 } else { 32 };
    let mut found = Vec::new();
    if let Ok(index) = link_index(&handle, iface).await {
        let mut addresses = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Ok(Some(message)) = addresses.try_next().await {
            for attribute in &message.attributes {
                if let AddressAttribute::Address(addr) = attribute
                    && range.offset(*addr).is_some()
                {
                    found.push((*addr, true));
                }
            }
        }
    }
    for route in weft_routes(&handle, v6).await {
        if route.header.kind != RouteType::Unicast
            || route.header.destination_prefix_length != host_prefix
        {
            continue;
        }
        if let Some(dst) = route_destination(&route)
            && range.offset(dst).is_some()
        {
            found.push((dst, false));
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The MTU of the interface that holds `local` (the underlay address this
/// router sends from), or `None` if no interface has it.
pub async fn mtu_of_interface_with(local: IpAddr) -> Option<u32> {
    let (connection, handle, _) = rtnetlink::new_connection().ok()?;
    tokio::spawn(connection);
    let mut addresses = handle.address().get().execute();
    let mut index = None;
    while let Ok(Some(message)) = addresses.try_next().await {
        let holds = message.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Address(addr) | AddressAttribute::Local(addr) if *addr == local)
        });
        if holds {
            index = Some(message.header.index);
            break;
        }
    }
    let mut links = handle.link().get().match_index(index?).execute();
    let link = links.try_next().await.ok()??;
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

async fn remove_stale_addresses(handle: &Handle, index: u32, plan: &InterfacePlan) {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut stale = Vec::new();
    while let Ok(Some(message)) = addresses.try_next().await {
        let is_stale = message
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(addr) if stale_address(*addr, plan)));
        if is_stale {
            stale.push(message);
        }
    }
    for message in stale {
        let _ = handle.address().del(message).execute().await;
    }
}

async fn weft_routes(handle: &Handle, v6: bool) -> Vec<RouteMessage> {
    let query = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let mut routes = handle.route().get(query).execute();
    let mut tagged = Vec::new();
    while let Ok(Some(route)) = routes.try_next().await {
        if route.header.protocol == RouteProtocol::Other(WEFT_ROUTE_PROTOCOL) {
            tagged.push(route);
        }
    }
    tagged
}

fn route_destination(route: &RouteMessage) -> Option<IpAddr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(IpAddr::V4(*d)),
        RouteAttribute::Destination(RouteAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
        _ => None,
    })
}

/// Removes what `configure` set up: the device (which takes its address and
/// the routes through it along) and every route tagged with weft's protocol.
/// Returns what was removed, for the operator. Idempotent.
pub async fn reset(iface: &str) -> anyhow::Result<Vec<String>> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let mut removed = Vec::new();
    if let Ok(index) = link_index(&handle, iface).await {
        handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| anyhow::anyhow!("cannot remove {iface}: {e}"))?;
        removed.push(format!("interface {iface}"));
    }
    let mut tagged = weft_routes(&handle, false).await;
    tagged.extend(weft_routes(&handle, true).await);
    for route in tagged {
        let label = format!(
            "route {:?}/{}",
            route
                .attributes
                .iter()
                .find_map(|a| match a {
                    rtnetlink::packet_route::route::RouteAttribute::Destination(d) =>
                        Some(format!("{d:?}")),
                    _ => None,
                })
                .unwrap_or_default(),
            route.header.destination_prefix_length
        );
        if handle.route().del(route).execute().await.is_ok() {
            removed.push(label);
        }
    }
    Ok(removed)
}

async fn link_index(handle: &Handle, name: &str) -> anyhow::Result<u32> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        _ => anyhow::bail!("interface {name} does not exist"),
    }
}

/// The smallest list of CIDR blocks covering `start..=end` exactly.
pub fn cidr_blocks(start: u32, end: u32) -> Vec<(u32, u8)> {
    blocks(u128::from(start), u128::from(end), 32)
        .into_iter()
        .map(|(base, prefix)| (base as u32, prefix))
        .collect()
}

/// [`cidr_blocks`] for addresses of `bits` bits (32 or 128), as `u128`.
fn blocks(start: u128, end: u128, bits: u32) -> Vec<(u128, u8)> {
    // The last address of the block of 2^size at `base` (aligned to it).
    let last = |base: u128, size: u32| base | u128::MAX.checked_shr(128 - size).unwrap_or(0);
    let mut blocks = Vec::new();
    let mut cursor = start;
    while cursor <= end {
        let align = if cursor == 0 {
            bits
        } else {
            cursor.trailing_zeros().min(bits)
        };
        let mut size_bits = align;
        while size_bits > 0 && last(cursor, size_bits) > end {
            size_bits -= 1;
        }
        blocks.push((cursor, (bits - size_bits) as u8));
        match last(cursor, size_bits).checked_add(1) {
            Some(next) => cursor = next,
            None => break,
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(range6: Option<&str>, own6: Option<Ipv6Addr>) -> InterfacePlan {
        InterfacePlan {
            iface: "weft0".into(),
            mtu: 1420,
            ipv4_route_mtu: None,
            own_address: Some(Ipv4Addr::new(10, 32, 0, 1)),
            range: "10.32.0.0/12".parse().expect("a range"),
            owned: Vec::new(),
            range6: range6.map(|r| crate::ipam::AddrRange::parse(r).expect("a range")),
            owned6: Vec::new(),
            own_address6: own6,
        }
    }

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().expect("an address")
    }

    #[test]
    fn without_an_ipv6_range_every_ipv6_route_weft_made_is_stale_but_pod_routes() {
        let range_route = WeftRoute6 {
            unreachable: false,
            on_tun: true,
            block: (u128::from(v6("fd00:32::")), 112),
        };
        let block = WeftRoute6 {
            unreachable: true,
            on_tun: false,
            block: (u128::from(v6("fd00:32::")), 113),
        };
        let pod = WeftRoute6 {
            unreachable: false,
            on_tun: false,
            block: (u128::from(v6("fd00:32::5")), 128),
        };
        assert!(range_route.stale(None, &[]));
        assert!(block.stale(None, &[]));
        assert!(!pod.stale(None, &[]));
        // With the same range: the range route and owned blocks stay.
        let range6 = crate::ipam::AddrRange::parse("fd00:32::/112").ok();
        assert!(!range_route.stale(range6, &[]));
        assert!(!block.stale(range6, &[block.block]));
        assert!(block.stale(range6, &[]), "a block given away");
        assert!(!pod.stale(range6, &[]));
        // Another range now: the old range route and blocks go.
        let other = crate::ipam::AddrRange::parse("fd00:33::/112").ok();
        assert!(range_route.stale(other, &[]));
        assert!(block.stale(other, &[block.block]));
    }

    #[test]
    fn ipv6_addresses_on_the_tun_go_with_the_range_and_follow_the_nodes_own() {
        let own = v6("fd00:32::1");
        let a = IpAddr::V6(own);
        assert!(stale_address(a, &plan(None, None)));
        assert!(!stale_address(a, &plan(Some("fd00:32::/112"), Some(own))));
        assert!(stale_address(
            a,
            &plan(Some("fd00:32::/112"), Some(v6("fd00:32::2")))
        ));
        // Not yet known at start: kept while in the range.
        assert!(!stale_address(a, &plan(Some("fd00:32::/112"), None)));
        assert!(stale_address(a, &plan(Some("fd00:33::/112"), None)));
        // IPv4 as before: only the node's /32 stays.
        let p = plan(None, None);
        assert!(!stale_address(IpAddr::V4(Ipv4Addr::new(10, 32, 0, 1)), &p));
        assert!(stale_address(IpAddr::V4(Ipv4Addr::new(10, 32, 0, 2)), &p));
    }

    #[test]
    fn cidr_blocks_cover_a_range_exactly() {
        assert_eq!(
            cidr_blocks(0x0a20_0000, 0x0a2f_ffff),
            vec![(0x0a20_0000, 12)]
        );
        let blocks = cidr_blocks(0x0a20_0000, 0x0a25_5554);
        let covered: u64 = blocks.iter().map(|(_, p)| 1u64 << (32 - p)).sum();
        assert_eq!(covered, 0x0a25_5554 - 0x0a20_0000 + 1);
        for (base, prefix) in &blocks {
            let size = 1u64 << (32 - prefix);
            assert_eq!(u64::from(*base) % size, 0, "block aligned");
        }
        assert_eq!(cidr_blocks(5, 5), vec![(5, 32)]);
        assert_eq!(cidr_blocks(0, u32::MAX), vec![(0, 0)]);
    }

    #[test]
    fn ipv6_blocks_cover_a_range_exactly() {
        let base = u128::from(Ipv6Addr::new(0xfd00, 0x32, 0, 0, 0, 0, 0, 0));
        assert_eq!(blocks(base, base + 0xffff, 128), vec![(base, 112)]);
        let (start, end) = (base + 3, base + 0x1_0004);
        let got = blocks(start, end, 128);
        let covered: u128 = got.iter().map(|(_, p)| 1u128 << (128 - p)).sum();
        assert_eq!(covered, end - start + 1);
        for (block, prefix) in &got {
            assert_eq!(block % (1u128 << (128 - prefix)), 0, "block aligned");
        }
        assert_eq!(got.first(), Some(&(start, 128)));
        assert_eq!(blocks(u128::MAX, u128::MAX, 128), vec![(u128::MAX, 128)]);
        assert_eq!(blocks(0, u128::MAX, 128), vec![(0, 0)]);
        assert_eq!(blocks(7, 6, 128), vec![]);
    }
}
