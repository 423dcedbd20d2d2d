//! The underlay's address families (issue 19): which of IPv4 and IPv6 this
//! router can reach peers over, and one spelling for every peer address.
//!
//! A router listening on `[::]` serves both families from one IPv6 socket
//! (its sockets clear IPV6_V6ONLY, whatever net.ipv6.bindv6only says): IPv4
//! peers then arrive as v4-mapped addresses (`::ffff:192.0.2.1`). Every
//! address read from a socket goes through [`canonical`], so an IPv4 peer
//! has one spelling whichever socket saw it (endpoints, topology entries,
//! replay of NAT observations). Sending needs no mapping: Linux accepts an
//! IPv4 `sockaddr_in` on a dual-stack IPv6 socket.

use std::net::SocketAddr;

/// An address with a v4-mapped IPv6 address turned back into IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The families a router can dial and be dialled over, from what it binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Families {
    /// IPv4 peers are reachable.
    pub v4: bool,
    /// IPv6 peers are reachable.
    pub v6: bool,
}

impl Families {
    /// Both families (a router listening on `[::]`).
    pub const BOTH: Self = Self { v4: true, v6: true };

    /// What binding `listen` serves: `0.0.0.0` or an IPv4 address serves
    /// IPv4 only, an IPv6 address IPv6 only, and `[::]` both.
    pub fn of_listen(listen: SocketAddr) -> Self {
        match listen {
            SocketAddr::V4(_) => Self {
                v4: true,
                v6: false,
            },
            SocketAddr::V6(a) if a.ip().is_unspecified() => Self::BOTH,
            SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some() => Self {
                v4: true,
                v6: false,
            },
            SocketAddr::V6(_) => Self {
                v4: false,
                v6: true,
            },
        }
    }

    /// Whether a peer at `addr` can be reached over these families.
    pub fn reach(self, addr: SocketAddr) -> bool {
        match canonical(addr) {
            SocketAddr::V4(_) => self.v4,
            SocketAddr::V6(_) => self.v6,
        }
    }

    /// `ipv4`, `ipv6` or `ipv4+ipv6`, for the status and the start log.
    pub fn label(self) -> &'static str {
        match (self.v4, self.v6) {
            (true, true) => "ipv4+ipv6",
            (false, true) => "ipv6",
            _ => "ipv4",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("valid socket address")
    }

    #[test]
    fn a_v4_mapped_peer_reads_as_ipv4_and_others_are_unchanged() {
        assert_eq!(canonical(a("[::ffff:192.0.2.1]:6783")), a("192.0.2.1:6783"));
        assert_eq!(canonical(a("[2001:db8::1]:6783")), a("[2001:db8::1]:6783"));
        assert_eq!(canonical(a("192.0.2.1:6783")), a("192.0.2.1:6783"));
    }

    #[test]
    fn the_listen_address_decides_which_families_a_router_reaches() {
        let v4 = Families::of_listen(a("0.0.0.0:6783"));
        assert!(v4.reach(a("192.0.2.2:6783")) && !v4.reach(a("[2001:db8::2]:6783")));
        let v6 = Families::of_listen(a("[2001:db8::1]:6783"));
        assert!(!v6.reach(a("192.0.2.2:6783")) && v6.reach(a("[2001:db8::2]:6783")));
        assert!(!v6.reach(a("[::ffff:192.0.2.2]:6783")));
        let both = Families::of_listen(a("[::]:6783"));
        assert!(both.reach(a("192.0.2.2:6783")) && both.reach(a("[2001:db8::2]:6783")));
        assert_eq!(
            (v4.label(), v6.label(), both.label()),
            ("ipv4", "ipv6", "ipv4+ipv6")
        );
    }

    #[test]
    fn ipv6_endpoints_survive_the_control_wire_next_to_ipv4_ones() {
        use crate::control::proto::{ControlMessage, decode_message, encode_message};
        let (v6, v4) = (a("[2001:db8::1]:6783"), a("192.0.2.1:6783"));
        for m in [
            ControlMessage::Observed {
                dialled: Some(v6),
                udp_from: Some(v4),
            },
            ControlMessage::PunchOffer {
                candidates: vec![v6, v4],
            },
        ] {
            let bytes = encode_message(&m);
            assert_eq!(decode_message(&bytes).ok(), Some(m));
        }
    }
}
