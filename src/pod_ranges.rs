//! The pod ranges per family (issue 19, dual-stack pods): `--ipalloc-range`
//! given at most once per family. The IPv4 range is always there (default
//! 10.32.0.0/12); an IPv6 range only when asked for, as a CIDR or as `ipv6`,
//! a ULA /48 derived from the cluster secret's ID so that every router of a
//! cluster derives the same one without being told. A derived range is
//! written to the state dir the first time and read back after, so that a
//! secret rotation (which changes the ID) does not move the range under a
//! router's saved ring; a node added after a rotation derives another one
//! and its IPv6 ring refuses the cluster's (`range_mismatch`), which is why
//! README advises giving the range explicitly in clusters that rotate.

use crate::cidr::Ipv4Cidr;
use crate::crypto::secret::SecretId;
use crate::ipam::AddrRange;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

/// The default IPv4 pod range.
pub const DEFAULT_RANGE: &str = "10.32.0.0/12";

/// The keyword asking for a derived IPv6 range.
pub const DERIVED_KEYWORD: &str = "ipv6";

/// The file in the state dir that keeps a derived IPv6 range.
pub const DERIVED_FILE: &str = "ipam6-derived-range";

/// How the IPv6 pod range is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range6 {
    /// Given by the operator.
    Given(AddrRange),
    /// `ipv6`: a ULA /48 from the cluster secret's ID (see [`derived_ula`]).
    Derived,
}

/// Parses every `--ipalloc-range`: at most one IPv4 and one IPv6 range.
pub fn parse_ranges(values: &[String]) -> anyhow::Result<(Ipv4Cidr, Option<Range6>)> {
    let mut v4: Option<Ipv4Cidr> = None;
    let mut v6: Option<Range6> = None;
    for value in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        let twice = |family: &str| {
            anyhow::anyhow!(
                "--ipalloc-range given twice for {family} ({value:?}): give one IPv4 and at most one IPv6 range"
            )
        };
        if value == DERIVED_KEYWORD || value.contains(':') {
            if v6.is_some() {
                return Err(twice("IPv6"));
            }
            v6 = Some(parse_v6(value)?);
            continue;
        }
        if v4.is_some() {
            return Err(twice("IPv4"));
        }
        v4 = Some(
            value
                .parse()
                .map_err(|e| anyhow::anyhow!("--ipalloc-range: {e}"))?,
        );
    }
    let v4 = match v4 {
        Some(v4) => v4,
        None => DEFAULT_RANGE
            .parse()
            .map_err(|e| anyhow::anyhow!("default range: {e}"))?,
    };
    Ok((v4, v6))
}

fn parse_v6(value: &str) -> anyhow::Result<Range6> {
    if value == DERIVED_KEYWORD {
        return Ok(Range6::Derived);
    }
    let range = AddrRange::parse(value).map_err(|e| {
        anyhow::anyhow!("--ipalloc-range {value}: {e} (e.g. fd00:32::/48, or `ipv6` to derive one)")
    })?;
    check_v6(range)?;
    Ok(Range6::Given(range))
}

/// An IPv6 pod range must be IPv6, leave room for a /64 of pods per ring
/// split at least in principle (/16 to /120), and not be link-local or
/// multicast.
fn check_v6(range: AddrRange) -> anyhow::Result<()> {
    let IpAddr::V6(base) = range.base() else {
        anyhow::bail!("--ipalloc-range {range} is not an IPv6 range");
    };
    if !(16..=120).contains(&range.prefix()) {
        anyhow::bail!(
            "--ipalloc-range {range}: use an IPv6 prefix from /16 to /120 (a ULA /48 such as fd00:32::/48 suits)"
        );
    }
    if base.is_multicast() || (base.segments()[0] & 0xffc0) == 0xfe80 || base.is_loopback() {
        anyhow::bail!(
            "--ipalloc-range {range} is link-local, loopback or multicast: use a ULA (fd00::/8) or a global range"
        );
    }
    // 0000::/16 is reserved and holds the IPv4-mapped block, which the
    // data plane's ownership table uses for IPv4 ranges (`AddrKey`).
    if base.segments()[0] == 0 {
        anyhow::bail!(
            "--ipalloc-range {range} lies in the reserved ::/16 (IPv4-mapped addresses): use a ULA (fd00::/8) or a global range"
        );
    }
    Ok(())
}

/// The ULA /48 of a cluster secret: `fd` and a 40-bit global ID hashed from
/// the secret's public 4-byte ID (RFC 4193 wants the global ID
/// pseudo-random; the secret ID is already public, so nothing leaks).
pub fn derived_ula(id: SecretId) -> AddrRange {
    use blake2::{Blake2s256, Digest};
    let mut hash = Blake2s256::new();
    hash.update(b"weft ipv6 pod range v1");
    hash.update(id.0);
    let digest = hash.finalize();
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&digest[..5]);
    // Invariant: a /48 with zero host bits is always a valid range.
    AddrRange::new(IpAddr::V6(Ipv6Addr::from(octets)), 48).unwrap_or_else(|_| unreachable!())
}

/// The IPv6 range to run with: the given one, or the derived one kept in
/// `state_dir` (written the first time).
pub fn resolve(range6: Range6, id: SecretId, state_dir: &Path) -> anyhow::Result<AddrRange> {
    if let Range6::Given(range) = range6 {
        return Ok(range);
    }
    let path = state_dir.join(DERIVED_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let range = AddrRange::parse(text.trim()).map_err(|e| {
                anyhow::anyhow!(
                    "{} holds no IPv6 range ({e}): remove it to derive the range again",
                    path.display()
                )
            })?;
            check_v6(range)?;
            Ok(range)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let range = derived_ula(id);
            crate::persist::ensure_private_dir(state_dir)?;
            crate::persist::write_atomic(&path, format!("{range}\n").as_bytes(), 0o600)?;
            Ok(range)
        }
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn one_range_per_family_and_the_ipv4_default_stays() {
        let (v4, v6) = parse_ranges(&[]).unwrap();
        assert_eq!(v4.to_string(), DEFAULT_RANGE);
        assert_eq!(v6, None);
        let (v4, v6) = parse_ranges(&strings(&["fd00:32::/48"])).unwrap();
        assert_eq!(v4.to_string(), DEFAULT_RANGE);
        assert_eq!(
            v6,
            Some(Range6::Given(AddrRange::parse("fd00:32::/48").unwrap()))
        );
        let (v4, v6) = parse_ranges(&strings(&["10.40.0.0/16", "ipv6"])).unwrap();
        assert_eq!(v4.to_string(), "10.40.0.0/16");
        assert_eq!(v6, Some(Range6::Derived));
        assert!(parse_ranges(&strings(&["10.40.0.0/16", "10.50.0.0/16"])).is_err());
        assert!(parse_ranges(&strings(&["fd00::/48", "ipv6"])).is_err());
        assert!(parse_ranges(&strings(&["fe80::/64"])).is_err());
        assert!(parse_ranges(&strings(&["::ffff:0:0/96"])).is_err());
        assert!(parse_ranges(&strings(&["::/16"])).is_err());
        assert!(parse_ranges(&strings(&["fd00::1/48"])).is_err());
        assert!(parse_ranges(&strings(&["fd00::/124"])).is_err());
    }

    #[test]
    fn the_derived_range_is_a_ula_48_that_depends_on_the_secret_only() {
        let a = derived_ula(SecretId([1, 2, 3, 4]));
        assert_eq!(a, derived_ula(SecretId([1, 2, 3, 4])));
        assert_ne!(a, derived_ula(SecretId([1, 2, 3, 5])));
        assert_eq!(a.prefix(), 48);
        let IpAddr::V6(base) = a.base() else {
            panic!("not IPv6")
        };
        assert_eq!(base.octets()[0], 0xfd);
    }

    #[test]
    fn a_derived_range_is_kept_across_a_secret_rotation() {
        let dir = std::env::temp_dir().join(format!("weft-range6-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = resolve(Range6::Derived, SecretId([9, 9, 9, 9]), &dir).unwrap();
        assert_eq!(first, derived_ula(SecretId([9, 9, 9, 9])));
        let after_rotation = resolve(Range6::Derived, SecretId([7, 7, 7, 7]), &dir).unwrap();
        assert_eq!(after_rotation, first);
        let given = AddrRange::parse("fd00:32::/48").unwrap();
        assert_eq!(
            resolve(Range6::Given(given), SecretId([7, 7, 7, 7]), &dir).unwrap(),
            given
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
