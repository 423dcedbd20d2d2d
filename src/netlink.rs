//! Kernel configuration through rtnetlink: the TUN device's MTU and state,
//! the node's own /32 on it, the cluster range routed into it, and an
//! `unreachable` route per owned range so that a packet for an unallocated
//! local address is answered with ICMP instead of looping through the TUN
//! (DESIGN.md "No loops, no leaks"). Every call is idempotent (`replace`),
//! so a restarted router reconciles instead of failing.

use crate::cidr::Ipv4Cidr;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};

/// The route protocol number that tags weft's routes (`ip route show proto
/// 87`); shared with the CNI plugin through the API crate.
pub use crate::api::WEFT_ROUTE_PROTOCOL;

/// What the interface should look like.
#[derive(Clone, Debug)]
pub struct InterfacePlan {
    /// Device name.
    pub iface: String,
    /// Overlay MTU.
    pub mtu: u32,
    /// The node's own overlay address (a /32 on the device), once the IPAM
    /// ring has given it one; until then the range is routed without `src`.
    pub own_address: Option<Ipv4Addr>,
    /// The cluster range, routed to the device.
    pub range: Ipv4Cidr,
    /// Ranges this router owns (inclusive), made `unreachable`.
    pub owned: Vec<(u32, u32)>,
}

/// Applies `plan`, and removes what an earlier plan set up that this one
/// no longer has (an address or an `unreachable` route for a range given
/// away), so the kernel follows the ring.
pub async fn configure(plan: &InterfacePlan) -> anyhow::Result<()> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let index = link_index(&handle, &plan.iface).await?;
    // The overlay is IPv4 for now: no link-local IPv6 chatter into the TUN.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", plan.iface),
        "1",
    );
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
    remove_stale_addresses(&handle, index, plan.own_address).await;
    let mut range = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::from(plan.range.first()), plan.range.prefix())
        .output_interface(index)
        .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL));
    if let Some(own) = plan.own_address {
        range = range.pref_source(own);
    }
    handle
        .route()
        .add(range.build())
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
        let unreachable = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::from(*base), *prefix)
            .kind(RouteType::Unreachable)
            .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL))
            .build();
        handle
            .route()
            .add(unreachable)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot add the unreachable route for {}/{prefix}: {e}",
                    Ipv4Addr::from(*base)
                )
            })?;
    }
    for route in weft_routes(&handle).await {
        if route.header.kind != RouteType::Unreachable {
            continue;
        }
        let Some(dst) = route_destination(&route) else {
            continue;
        };
        let block = (u32::from(dst), route.header.destination_prefix_length);
        if plan.range.contains(u32::from(dst)) && !wanted.contains(&block) {
            let _ = handle.route().del(route).execute().await;
        }
    }
    Ok(())
}

/// Addresses in the cluster range that the kernel shows in use on this node
/// (DESIGN.md: "Before an empty-state router claims anything, it rebuilds
/// its in-use set from the kernel"): the node address on `iface` (`true`),
/// and every weft-tagged /32 route to a pod (`false`).
pub async fn addresses_in_use(iface: &str, range: Ipv4Cidr) -> Vec<(Ipv4Addr, bool)> {
    let Ok((connection, handle, _)) = rtnetlink::new_connection() else {
        return Vec::new();
    };
    tokio::spawn(connection);
    let mut found = Vec::new();
    if let Ok(index) = link_index(&handle, iface).await {
        let mut addresses = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Ok(Some(message)) = addresses.try_next().await {
            for attribute in &message.attributes {
                if let AddressAttribute::Address(IpAddr::V4(addr)) = attribute
                    && range.contains(u32::from(*addr))
                {
                    found.push((*addr, true));
                }
            }
        }
    }
    for route in weft_routes(&handle).await {
        if route.header.kind != RouteType::Unicast || route.header.destination_prefix_length != 32 {
            continue;
        }
        if let Some(dst) = route_destination(&route)
            && range.contains(u32::from(dst))
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
pub async fn mtu_of_interface_with(local: Ipv4Addr) -> Option<u32> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let (connection, handle, _) = rtnetlink::new_connection().ok()?;
    tokio::spawn(connection);
    let mut addresses = handle.address().get().execute();
    let mut index = None;
    while let Ok(Some(message)) = addresses.try_next().await {
        let holds = message.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Address(IpAddr::V4(addr)) | AddressAttribute::Local(IpAddr::V4(addr)) if *addr == local)
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

async fn remove_stale_addresses(handle: &Handle, index: u32, keep: Option<Ipv4Addr>) {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut stale = Vec::new();
    while let Ok(Some(message)) = addresses.try_next().await {
        let is_v4_other = message.attributes.iter().any(
            |a| matches!(a, AddressAttribute::Address(IpAddr::V4(addr)) if Some(*addr) != keep),
        );
        if is_v4_other {
            stale.push(message);
        }
    }
    for message in stale {
        let _ = handle.address().del(message).execute().await;
    }
}

async fn weft_routes(handle: &Handle) -> Vec<RouteMessage> {
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut tagged = Vec::new();
    while let Ok(Some(route)) = routes.try_next().await {
        if route.header.protocol == RouteProtocol::Other(WEFT_ROUTE_PROTOCOL) {
            tagged.push(route);
        }
    }
    tagged
}

fn route_destination(route: &RouteMessage) -> Option<Ipv4Addr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
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
    for route in weft_routes(&handle).await {
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
    let mut blocks = Vec::new();
    let mut cursor = u64::from(start);
    let end = u64::from(end);
    while cursor <= end {
        let align = if cursor == 0 {
            32
        } else {
            cursor.trailing_zeros().min(32)
        };
        let mut size_bits = align;
        while size_bits > 0 && cursor + (1u64 << size_bits) - 1 > end {
            size_bits -= 1;
        }
        blocks.push((cursor as u32, (32 - size_bits) as u8));
        cursor += 1u64 << size_bits;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
