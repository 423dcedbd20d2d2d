//! Sets of IPv4 addresses as sorted, disjoint, inclusive ranges: what an
//! ipBlock with `except` is, what a set of pods is, and what nftables
//! interval sets hold. Pure.

use std::net::Ipv4Addr;

/// Sorted, disjoint, non-adjacent inclusive ranges of IPv4 addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrSet(Vec<(u32, u32)>);

impl AddrSet {
    /// No address.
    pub fn empty() -> Self {
        Self(Vec::new())
    }

    /// Every address.
    pub fn all() -> Self {
        Self(vec![(0, u32::MAX)])
    }

    /// The set of these addresses.
    pub fn from_addrs(addrs: impl IntoIterator<Item = u32>) -> Self {
        Self::from_ranges(addrs.into_iter().map(|a| (a, a)))
    }

    /// The union of these ranges (each `lo <= hi`; others are ignored).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut ranges: Vec<(u32, u32)> = ranges.into_iter().filter(|(l, h)| l <= h).collect();
        ranges.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match out.last_mut() {
                Some(last) if u64::from(lo) <= u64::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Self(out)
    }

    /// Parses `ADDRESS/PREFIX` as an ipBlock gives it (host bits are
    /// ignored, as the API server did before it validated them). `Ok(None)`
    /// for an IPv6 block, which the IPv4 table never sees.
    pub fn parse_cidr(text: &str) -> Result<Option<Self>, String> {
        let bad = || format!("{text:?} is not a CIDR block");
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        if addr.contains(':') {
            return Ok(None);
        }
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        let host = u32::MAX.checked_shr(prefix).unwrap_or(0);
        let base = u32::from(addr) & !host;
        Ok(Some(Self(vec![(base, base | host)])))
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.0
    }

    /// Whether there is no address.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `addr` is in the set.
    pub fn contains(&self, addr: u32) -> bool {
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
            let mut start = u64::from(lo);
            for &(olo, ohi) in &other.0 {
                if u64::from(ohi) < start || olo > hi {
                    continue;
                }
                if u64::from(olo) > start {
                    out.push((start as u32, olo - 1));
                }
                start = u64::from(ohi) + 1;
            }
            if start <= u64::from(hi) {
                out.push((start as u32, hi));
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

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
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
    fn host_bits_are_masked_and_ipv6_blocks_are_not_ipv4() {
        let block = AddrSet::parse_cidr("10.32.1.5/4").unwrap().unwrap();
        assert_eq!(block.ranges(), &[(ip("0.0.0.0"), ip("15.255.255.255"))]);
        assert_eq!(AddrSet::parse_cidr("fd00::/8").unwrap(), None);
        assert_eq!(
            AddrSet::parse_cidr("0.0.0.0/0").unwrap(),
            Some(AddrSet::all())
        );
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0/8"] {
            assert!(AddrSet::parse_cidr(bad).is_err(), "{bad}");
        }
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
