//! The MTUs this router uses, from the MTU each router announces (DESIGN.md
//! "MTU": the cluster takes the smallest) and IPv6's floor: every IPv6
//! link must carry 1,280-byte packets (RFC 8200 section 5), and Linux turns
//! IPv6 off on an interface whose MTU goes below that (its IPv6 addresses
//! and routes vanish), so a router with an IPv6 pod range never puts weft0
//! or a pod's veth under it. Pure: the control loop passes in what gossip
//! knows; the why is in docs/ARCHITECTURE.md "IPv6's minimum MTU".

/// IPv6's minimum link MTU (RFC 8200 section 5).
pub const IPV6_MIN_MTU: u32 = 1280;

/// The MTUs one router applies, decided by [`OverlayMtu::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayMtu {
    /// The smallest MTU any router announces, this one's included: the
    /// largest IPv4 packet the overlay carries (larger ones get
    /// frag-needed), and the size heartbeats verify each link at.
    pub cluster: u32,
    /// weft0's MTU, the MTU new pods get, and the largest IPv6 packet the
    /// data plane sends: `cluster`, raised to [`IPV6_MIN_MTU`] when this
    /// router has an IPv6 pod range.
    pub link: u32,
    /// The routers whose announced MTU is under [`IPV6_MIN_MTU`] while this
    /// router keeps the floor (empty otherwise), smallest MTU first.
    pub below_ipv6: Vec<SmallPeer>,
}

/// A router announcing an MTU that IPv6 cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmallPeer {
    /// Its name.
    pub name: String,
    /// The MTU it announces.
    pub mtu: u32,
}

impl OverlayMtu {
    /// Decides from this router's own MTU, the `(name, mtu)` every other
    /// router announces, and whether this router has an IPv6 pod range.
    pub fn decide<'a>(
        own: u32,
        others: impl IntoIterator<Item = (&'a str, u32)>,
        ipv6: bool,
    ) -> Self {
        let mut cluster = own;
        let mut below_ipv6 = Vec::new();
        for (name, mtu) in others {
            cluster = cluster.min(mtu);
            if ipv6 && mtu < IPV6_MIN_MTU {
                below_ipv6.push(SmallPeer {
                    name: name.to_string(),
                    mtu,
                });
            }
        }
        below_ipv6.sort_by(|a, b| (a.mtu, &a.name).cmp(&(b.mtu, &b.name)));
        let link = if ipv6 {
            cluster.max(IPV6_MIN_MTU)
        } else {
            cluster
        };
        Self {
            cluster,
            link,
            below_ipv6,
        }
    }

    /// The IPv4 range route's own MTU when IPv4 must stay under weft0's
    /// (the kernel then answers frag-needed for IPv4 alone); `None` when
    /// weft0's MTU is the cluster's.
    pub fn ipv4_route_mtu(&self) -> Option<u32> {
        (self.cluster < self.link).then_some(self.cluster)
    }

    /// One line for logs and `weft status` while the floor holds, naming
    /// the routers that pull the cluster under it; `None` otherwise.
    pub fn floor_summary(&self) -> Option<String> {
        if self.below_ipv6.is_empty() {
            return None;
        }
        let peers: Vec<String> = self
            .below_ipv6
            .iter()
            .map(|p| format!("{} announces {}", p.name, p.mtu))
            .collect();
        Some(format!(
            "{}, below IPv6's minimum {IPV6_MIN_MTU}: weft0 and new pods stay at {} so IPv6 keeps working; IPv4 packets over {} get frag-needed",
            peers.join(", "),
            self.link,
            self.cluster
        ))
    }
}

/// Where a router's own MTU came from, for the start check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtuOrigin {
    /// `--mtu`.
    Flag,
    /// The underlay interface's MTU less the encapsulation.
    Underlay {
        /// The interface's MTU.
        interface: u32,
        /// The bytes the encapsulation adds.
        encapsulation: u32,
    },
    /// The default, no interface found.
    Default,
}

/// Why a router cannot start with overlay MTU `mtu` (from `origin`), as
/// one line naming the fix; `None` when it can: without an IPv6 pod range
/// (`ipv6` false) any MTU the flag allows is fine for IPv4.
pub fn start_refusal(mtu: u32, origin: MtuOrigin, ipv6: bool) -> Option<String> {
    if !ipv6 || mtu >= IPV6_MIN_MTU {
        return None;
    }
    let tail = format!(
        "is below {IPV6_MIN_MTU}, the smallest MTU IPv6 allows, and this router has an IPv6 pod range (--ipalloc-range)"
    );
    Some(match origin {
        MtuOrigin::Flag => {
            format!("--mtu {mtu} {tail}: pass --mtu {IPV6_MIN_MTU} or more, or drop the IPv6 range")
        }
        MtuOrigin::Underlay {
            interface,
            encapsulation,
        } => format!(
            "the overlay MTU {mtu} (underlay interface MTU {interface} - {encapsulation}) {tail}: raise the underlay interface's MTU to {} or more, or drop the IPv6 range",
            IPV6_MIN_MTU + encapsulation
        ),
        MtuOrigin::Default => format!(
            "the overlay MTU {mtu} {tail}: pass --mtu {IPV6_MIN_MTU} or more, or drop the IPv6 range"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_minimum_is_used_as_before_without_ipv6_or_at_1280_and_up() {
        for (others, ipv6, expected) in [
            ([("n1", 1420), ("n2", 1200)], false, 1200),
            ([("n1", 1320), ("n2", 1280)], true, 1280),
        ] {
            let m = OverlayMtu::decide(1420, others, ipv6);
            assert_eq!((m.cluster, m.link), (expected, expected));
            assert!(m.below_ipv6.is_empty());
            assert_eq!(m.ipv4_route_mtu(), None);
            assert_eq!(m.floor_summary(), None);
        }
    }

    #[test]
    fn a_peer_under_1280_keeps_the_link_at_1280_and_is_named() {
        let m = OverlayMtu::decide(
            1420,
            [("n3", 1200), ("n1", 1420), ("n2", 1100), ("n4", 1200)],
            true,
        );
        assert_eq!(m.cluster, 1100, "IPv4 still fits every router");
        assert_eq!(m.link, IPV6_MIN_MTU, "weft0 and pods never go under 1280");
        assert_eq!(m.ipv4_route_mtu(), Some(1100));
        let named: Vec<(&str, u32)> = m
            .below_ipv6
            .iter()
            .map(|p| (p.name.as_str(), p.mtu))
            .collect();
        assert_eq!(named, vec![("n2", 1100), ("n3", 1200), ("n4", 1200)]);
        let line = m.floor_summary().expect("a summary");
        assert!(
            line.starts_with("n2 announces 1100, n3 announces 1200, n4 announces 1200")
                && line.contains("stay at 1280")
                && line.contains("over 1100 get frag-needed"),
            "{line}"
        );
    }

    #[test]
    fn the_floor_lifts_when_the_small_peer_is_gone() {
        let with = OverlayMtu::decide(1420, [("n1", 1420), ("n2", 1200)], true);
        let without = OverlayMtu::decide(1420, [("n1", 1420)], true);
        assert_eq!(with.link, 1280);
        assert_eq!((without.cluster, without.link), (1420, 1420));
        assert!(without.below_ipv6.is_empty());
    }

    #[test]
    fn start_is_refused_under_1280_only_with_an_ipv6_range() {
        assert_eq!(start_refusal(1200, MtuOrigin::Flag, false), None);
        assert_eq!(start_refusal(576, MtuOrigin::Flag, false), None);
        assert_eq!(start_refusal(1280, MtuOrigin::Flag, true), None);
        let flag = start_refusal(1200, MtuOrigin::Flag, true).expect("refused");
        assert!(
            flag.starts_with("--mtu 1200 is below 1280")
                && flag.contains("pass --mtu 1280 or more, or drop the IPv6 range")
                && !flag.contains('\n'),
            "{flag}"
        );
        let underlay = MtuOrigin::Underlay {
            interface: 1300,
            encapsulation: 80,
        };
        let derived = start_refusal(1220, underlay, true).expect("refused");
        assert!(
            derived.contains("overlay MTU 1220 (underlay interface MTU 1300 - 80)")
                && derived.contains("raise the underlay interface's MTU to 1360 or more"),
            "{derived}"
        );
    }
}
