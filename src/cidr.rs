//! CIDR ranges as users write them (`10.32.0.0/12`), parsed strictly so that
//! a typo gets one clear line instead of a surprising range.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: base address and prefix length, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    base: u32,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The first address.
    pub fn first(&self) -> u32 {
        self.base
    }

    /// The last address.
    pub fn last(&self) -> u32 {
        self.base | (u32::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0))
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: u32) -> bool {
        addr >= self.first() && addr <= self.last()
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Why a CIDR did not parse; the message says what a good one looks like.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    /// No `/`.
    #[error("{0:?} is not a CIDR range: write it as ADDRESS/PREFIX, e.g. 10.32.0.0/12")]
    NoPrefix(String),
    /// The address part is not IPv4.
    #[error("{0:?} is not a CIDR range: {1:?} is not an IPv4 address")]
    BadAddress(String, String),
    /// The prefix is not 0..=32.
    #[error("{0:?} is not a CIDR range: the prefix length must be 0 to 32")]
    BadPrefix(String),
    /// Host bits set.
    #[error("{0:?} has host bits set: did you mean {1}?")]
    HostBits(String, String),
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| CidrError::NoPrefix(text.into()))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| CidrError::BadAddress(text.into(), addr.into()))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| CidrError::BadPrefix(text.into()))?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let base = u32::from(addr);
        if base & !mask != 0 {
            let fixed = Self {
                base: base & mask,
                prefix,
            };
            return Err(CidrError::HostBits(text.into(), fixed.to_string()));
        }
        Ok(Self { base, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_range() {
        let cidr: Ipv4Cidr = "10.32.0.0/12".parse().expect("valid");
        assert_eq!(Ipv4Addr::from(cidr.first()), Ipv4Addr::new(10, 32, 0, 0));
        assert_eq!(Ipv4Addr::from(cidr.last()), Ipv4Addr::new(10, 47, 255, 255));
        assert_eq!(cidr.size(), 1 << 20);
        assert_eq!(cidr.to_string(), "10.32.0.0/12");
    }

    #[test]
    fn refuses_typos_with_a_hint() {
        assert!(matches!(
            "10.32.0.0".parse::<Ipv4Cidr>(),
            Err(CidrError::NoPrefix(_))
        ));
        assert!(matches!(
            "10.32.0/12".parse::<Ipv4Cidr>(),
            Err(CidrError::BadAddress(..))
        ));
        assert!(matches!(
            "10.32.0.0/33".parse::<Ipv4Cidr>(),
            Err(CidrError::BadPrefix(_))
        ));
        let err = "10.32.1.0/12".parse::<Ipv4Cidr>().expect_err("host bits");
        assert!(err.to_string().contains("did you mean 10.32.0.0/12"));
    }

    #[test]
    fn edge_prefixes_work() {
        let all: Ipv4Cidr = "0.0.0.0/0".parse().expect("valid");
        assert_eq!(all.last(), u32::MAX);
        let one: Ipv4Cidr = "10.32.0.1/32".parse().expect("valid");
        assert_eq!(one.first(), one.last());
        assert!(all.overlaps(&one));
    }
}
