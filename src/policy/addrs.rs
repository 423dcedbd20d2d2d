//! Sets of addresses of both families as sorted, disjoint, inclusive ranges:
//! what an ipBlock with `except` is, what a set of pods is, and what
//! nftables interval sets hold. Pure.
//!
//! One number line for both families ([`Addr`]): an IPv6 address is itself,
//! an IPv4 address is its IPv4-mapped IPv6 address (`::ffff:a.b.c.d`). An
//! IPv6 block never holds that mapped block (no packet carries such a
//! source: the data plane drops them), so a CIDR of one family is never a
//! set of the other's addresses, as Kubernetes specifies for ipBlock, while
//! "every address" is both families.

use crate::router::packet::{addr_key, ipv4_key};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address of either family on one number line (see the module doc):
/// the data plane's ownership key.
pub type Addr = crate::router::packet::AddrKey;

/// The first IPv4 address on the line (`::ffff:0.0.0.0`).
pub const V4_FIRST: Addr = 0xffff_0000_0000;
/// The last IPv4 address on the line.
pub const V4_LAST: Addr = 0xffff_ffff_ffff;

/// An IPv4 address on the line.
pub fn v4(addr: Ipv4Addr) -> Addr {
    ipv4_key(u32::from(addr))
}

/// An address of either family on the line.
pub fn addr(ip: IpAddr) -> Addr {
    addr_key(ip)
}

/// The address at a point of the line, IPv4 in the mapped block.
pub fn ip(addr: Addr) -> IpAddr {
    if (V4_FIRST..=V4_LAST).contains(&addr) {
        IpAddr::V4(Ipv4Addr::from(addr as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr))
    }
}

/// Sorted, disjoint, non-adjacent inclusive ranges of addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrSet(Vec<(Addr, Addr)>);

impl AddrSet {
    /// No address.
    pub fn empty() -> Self {
        Self(Vec::new())
    }

    /// Every address of both families.
    pub fn all() -> Self {
        Self(vec![(0, Addr::MAX)])
    }

    /// Every IPv4 address.
    pub fn all_v4() -> Self {
        Self(vec![(V4_FIRST, V4_LAST)])
    }

    /// The set of these addresses.
    pub fn from_addrs(addrs: impl IntoIterator<Item = Addr>) -> Self {
        Self::from_ranges(addrs.into_iter().map(|a| (a, a)))
    }

    /// The union of these ranges (each `lo <= hi`; others are ignored).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (Addr, Addr)>) -> Self {
        let mut ranges: Vec<(Addr, Addr)> = ranges.into_iter().filter(|(l, h)| l <= h).collect();
        ranges.sort_unstable();
        let mut out: Vec<(Addr, Addr)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Self(out)
    }

    /// Parses `ADDRESS/PREFIX` of either family as an ipBlock gives it
    /// (host bits are ignored, as the API server did before it validated
    /// them). An IPv6 block is its addresses less the IPv4-mapped block, so
    /// it never holds an IPv4 address (`::/0` is every IPv6 address). Never
    /// `Ok(None)` (kept for the callers' shape of an unsupported family).
    pub fn parse_cidr(text: &str) -> Result<Option<Self>, String> {
        let bad = || format!("{text:?} is not a CIDR block");
        let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix: u32 = prefix.parse().ok().filter(|p| *p <= bits).ok_or_else(bad)?;
        let host = Addr::MAX.checked_shr(prefix + 128 - bits).unwrap_or(0);
        let base = addr(address) & !host;
        let block = Self(vec![(base, base | host)]);
        Ok(Some(if address.is_ipv4() {
            block
        } else {
            block.subtract(&Self::all_v4())
        }))
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[(Addr, Addr)] {
        &self.0
    }

    /// Whether there is no address.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `addr` is in the set.
    pub fn contains(&self, addr: Addr) -> bool {
        let i = self.0.partition_point(|(_, hi)| *hi < addr);
        self.0.get(i).is_some_and(|(lo, _)| *lo <= addr)
    }

    /// Whether every address of `other` is in the set.
    pub fn covers(&self, other: &Self) -> bool {
        other.subtract(self).is_empty()
    }

    /// The union.
    pub fn union(&self, other: &Self) -> Self {
        Self::from_ranges(self.0.iter().chain(&other.0).copied())
    }

    /// The addresses of `self` not in `other`.
    pub fn subtract(&self, other: &Self) -> Self {
        let mut out = Vec::new();
        for &(lo, hi) in &self.0 {
            // `None`: past the end of the line.
            let mut start = Some(lo);
            for &(olo, ohi) in &other.0 {
                let Some(from) = start else { break };
                if ohi < from || olo > hi {
                    continue;
                }
                if olo > from {
                    out.push((from, olo - 1));
                }
                start = ohi.checked_add(1);
            }
            if let Some(from) = start
                && from <= hi
            {
                out.push((from, hi));
            }
        }
        Self(out)
    }

    /// The addresses in both.
    pub fn intersect(&self, other: &Self) -> Self {
        self.subtract(&self.subtract(other))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> Addr {
        addr(s.parse().unwrap())
    }

    #[test]
    fn an_ipblock_minus_its_except_leaves_the_edges() {
        let block = AddrSet::parse_cidr("10.32.0.0/16").unwrap().unwrap();
        let except = AddrSet::parse_cidr("10.32.1.0/24").unwrap().unwrap();
        let left = block.subtract(&except);
        assert_eq!(
            left.ranges(),
            &[
                (ip("10.32.0.0"), ip("10.32.0.255")),
                (ip("10.32.2.0"), ip("10.32.255.255"))
            ]
        );
        assert!(!left.contains(ip("10.32.1.7")));
        assert!(left.contains(ip("10.32.2.0")));
    }

    #[test]
    fn host_bits_are_masked_and_a_block_holds_only_its_own_family() {
        let block = AddrSet::parse_cidr("10.32.1.5/4").unwrap().unwrap();
        assert_eq!(block.ranges(), &[(ip("0.0.0.0"), ip("15.255.255.255"))]);
        let ula = AddrSet::parse_cidr("fd00::5/8").unwrap().unwrap();
        assert_eq!(
            ula.ranges(),
            &[(ip("fd00::"), ip("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))]
        );
        assert!(!ula.contains(ip("10.0.0.1")));
        let every4 = AddrSet::parse_cidr("0.0.0.0/0").unwrap().unwrap();
        let every6 = AddrSet::parse_cidr("::/0").unwrap().unwrap();
        assert_eq!(every4, AddrSet::all_v4());
        assert!(every4.contains(ip("10.32.0.1")) && !every4.contains(ip("fd00::1")));
        assert!(every6.contains(ip("fd00::1")) && every6.contains(ip("::")));
        assert!(!every6.contains(ip("10.32.0.1")) && !every6.contains(ip("0.0.0.0")));
        assert_eq!(every4.union(&every6), AddrSet::all());
        assert_eq!(
            AddrSet::parse_cidr("::ffff:0:0/96").unwrap(),
            Some(AddrSet::empty())
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "x/8",
            "10.0.0/8",
            "fd00::/129",
            "fd00::",
        ] {
            assert!(AddrSet::parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_of_both_families_go_round_the_line() {
        for text in [
            "10.32.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "fd00::1",
            "::",
            "::1",
        ] {
            let a: IpAddr = text.parse().unwrap();
            assert_eq!(super::ip(addr(a)), a);
        }
        assert_eq!(addr("255.255.255.255".parse().unwrap()), V4_LAST);
        assert_eq!(v4(Ipv4Addr::UNSPECIFIED), V4_FIRST);
        assert!(crate::router::packet::is_ipv4_key(V4_FIRST));
        assert!(crate::router::packet::is_ipv4_key(V4_LAST));
        assert!(!crate::router::packet::is_ipv4_key(V4_LAST + 1));
        let top = AddrSet::from_ranges([(Addr::MAX - 1, Addr::MAX), (3, 3)]);
        assert_eq!(
            top.subtract(&AddrSet::from_addrs([Addr::MAX])).ranges(),
            &[(3, 3), (Addr::MAX - 1, Addr::MAX - 1)]
        );
        assert_eq!(
            AddrSet::all().subtract(&top).ranges(),
            &[(0, 2), (4, Addr::MAX - 2)]
        );
    }

    #[test]
    fn adjacent_addresses_merge_into_one_range() {
        let set = AddrSet::from_addrs([ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.3"), 7]);
        assert_eq!(set.ranges(), &[(7, 7), (ip("10.0.0.1"), ip("10.0.0.3"))]);
        assert!(AddrSet::all().covers(&set));
        assert_eq!(AddrSet::all().subtract(&AddrSet::all()), AddrSet::empty());
        assert_eq!(
            set.intersect(&AddrSet::from_addrs([7, 8])).ranges(),
            &[(7, 7)]
        );
    }
}
