//! The cluster address range, family-agnostic: a CIDR whose addresses are
//! handled as `u128` offsets from its base, so that the ring, the allocator
//! and the wire format never care whether the range is IPv4 or IPv6
//! (DESIGN.md "Coming later": IPv6).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a range could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The text is not `ADDRESS/PREFIX`.
    #[error("`{0}` is not a CIDR (expected e.g. 10.32.0.0/12)")]
    Syntax(String),
    /// The prefix is too long for the family, or an IPv6 /0 (2^128 addresses do not fit a u128 count).
    #[error("prefix /{0} is not valid for this address family")]
    Prefix(u8),
    /// Host bits are set in the base address.
    #[error("{0} has host bits set; use the network address")]
    NotAligned(String),
}

/// A CIDR block used as the cluster range. Addresses inside it are named by
/// their offset from the base (0 ..= size-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AddrRange {
    base: IpAddr,
    prefix: u8,
}

fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl AddrRange {
    /// Builds a range from its network address and prefix length, refusing
    /// host bits and impossible prefixes.
    pub fn new(base: IpAddr, prefix: u8) -> Result<Self, RangeError> {
        let bits = match base {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > bits || (bits == 128 && prefix == 0) {
            return Err(RangeError::Prefix(prefix));
        }
        let range = Self { base, prefix };
        let host_bits = range.size() - 1;
        if to_u128(base) & host_bits != 0 {
            return Err(RangeError::NotAligned(base.to_string()));
        }
        Ok(range)
    }

    /// Parses `ADDRESS/PREFIX`, e.g. the default `10.32.0.0/12`.
    pub fn parse(text: &str) -> Result<Self, RangeError> {
        let syntax = || RangeError::Syntax(text.to_string());
        let (addr, prefix) = text.split_once('/').ok_or_else(syntax)?;
        let base: IpAddr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        Self::new(base, prefix)
    }

    /// Re-checks a range that came off the wire or the disk.
    pub fn validate(&self) -> Result<(), RangeError> {
        Self::new(self.base, self.prefix).map(|_| ())
    }

    /// Number of addresses in the range (at most 2^127 for IPv6).
    pub fn size(&self) -> u128 {
        let bits: u32 = match self.base {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        1u128 << (bits - u32::from(self.prefix))
    }

    /// The network address.
    pub fn base(&self) -> IpAddr {
        self.base
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The address at `offset`, or `None` outside the range.
    pub fn addr(&self, offset: u128) -> Option<IpAddr> {
        if offset >= self.size() {
            return None;
        }
        let value = to_u128(self.base) + offset;
        Some(match self.base {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).ok()?)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
        })
    }

    /// The offset of `addr`, or `None` if it is outside the range or of the other family.
    pub fn offset(&self, addr: IpAddr) -> Option<u128> {
        if addr.is_ipv4() != self.base.is_ipv4() {
            return None;
        }
        let offset = to_u128(addr).checked_sub(to_u128(self.base))?;
        (offset < self.size()).then_some(offset)
    }

    /// Offsets never handed out: the network and broadcast addresses of an
    /// IPv4 range of at least 4 addresses (hosts treat them specially).
    pub fn is_reserved(&self, offset: u128) -> bool {
        self.base.is_ipv4() && self.size() >= 4 && (offset == 0 || offset == self.size() - 1)
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_range_has_a_million_addresses_and_round_trips_offsets() {
        let r = AddrRange::parse("10.32.0.0/12").unwrap();
        assert_eq!(r.size(), 1 << 20);
        let a: IpAddr = "10.47.255.254".parse().unwrap();
        let o = r.offset(a).unwrap();
        assert_eq!(r.addr(o), Some(a));
        assert_eq!(r.offset("10.48.0.0".parse().unwrap()), None);
        assert_eq!(r.offset("::1".parse().unwrap()), None);
        assert!(r.is_reserved(0) && r.is_reserved(r.size() - 1) && !r.is_reserved(1));
    }

    #[test]
    fn ipv6_ranges_work_the_same_way() {
        let r = AddrRange::parse("fd00::/64").unwrap();
        assert_eq!(r.size(), 1 << 64);
        assert_eq!(r.addr(5), Some("fd00::5".parse().unwrap()));
        assert!(!r.is_reserved(0));
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(matches!(
            AddrRange::parse("10.32.0.1/12"),
            Err(RangeError::NotAligned(_))
        ));
        assert!(matches!(
            AddrRange::parse("10.32.0.0/33"),
            Err(RangeError::Prefix(33))
        ));
        assert!(matches!(
            AddrRange::parse("::/0"),
            Err(RangeError::Prefix(0))
        ));
        assert!(matches!(
            AddrRange::parse("nonsense"),
            Err(RangeError::Syntax(_))
        ));
    }
}
