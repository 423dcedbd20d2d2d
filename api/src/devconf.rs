//! The IPv4 per-interface settings both the router and the CNI plugin write
//! through netlink (DESIGN.md "The picture": the node forwards between
//! weft0, the underlay and pod veths). Set with `RTM_SETLINK` and
//! `IFLA_AF_SPEC`, which needs only CAP_NET_ADMIN, so it works where
//! `/proc/sys` is read-only (the DaemonSet's container). Behind the
//! `devconf` feature: the plugin and the router already link rtnetlink;
//! `weft status` and other API users need not.

use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute, LinkMessage,
};

/// The `IFLA_AF_SPEC` attribute that turns IPv4 forwarding (and, for a
/// pod's veth, proxy ARP) on for one interface: the netlink equivalent of
/// `net.ipv4.conf.IFACE.forwarding=1`, which needs only CAP_NET_ADMIN. Only
/// bits set to 1 are sent (the kernel leaves the others as they are).
pub fn ipv4_conf_request(forwarding: bool, proxy_arp: bool) -> LinkAttribute {
    let mut conf = InetDevConf::default();
    conf.forwarding = i32::from(forwarding);
    conf.proxy_arp = i32::from(proxy_arp);
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![AfSpecInet::DevConfRequest(
        conf,
    )])])
}

/// The IPv4 `forwarding` bit of a link as the kernel dumped it, if present.
pub fn ipv4_forwarding_of(link: &LinkMessage) -> Option<bool> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::AfSpecUnspec(specs) => specs.iter().find_map(|s| match s {
            AfSpecUnspec::Inet(inet) => inet.iter().find_map(|i| match i {
                AfSpecInet::DevConf(conf) => Some(conf.forwarding != 0),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::Emitable;

    #[test]
    fn the_forwarding_request_is_af_inet_inet_conf_with_forwarding_1() {
        let attribute = ipv4_conf_request(true, false);
        let mut bytes = vec![0u8; attribute.buffer_len()];
        attribute.emit(&mut bytes);
        let u16_at = |i: usize| u16::from_ne_bytes([bytes[i], bytes[i + 1]]);
        // IFLA_AF_SPEC (26) { AF_INET (2) { IFLA_INET_CONF (1, nested)
        // { IPV4_DEVCONF_FORWARDING (1) = 1u32 } } }: what the kernel's
        // inet_set_link_af reads. Nothing else is sent.
        assert_eq!(u16_at(2), 26);
        assert_eq!(u16_at(6), 2);
        assert_eq!(u16_at(10) & 0x7fff, 1);
        assert_eq!((u16_at(12), u16_at(14)), (8, 1));
        assert_eq!(
            u32::from_ne_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
            1
        );
        assert_eq!(bytes.len(), 20);
    }

    #[test]
    fn the_forwarding_bit_is_read_from_a_link_dump() {
        let mut link = LinkMessage::default();
        assert_eq!(ipv4_forwarding_of(&link), None);
        for on in [false, true] {
            let mut conf = InetDevConf::default();
            conf.forwarding = i32::from(on);
            link.attributes = vec![LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConf(conf),
            ])])];
            assert_eq!(ipv4_forwarding_of(&link), Some(on));
        }
    }
}
