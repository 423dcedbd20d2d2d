//! The static split of the cluster range by router names
//! (`--ipalloc-init seed=NAME1,NAME2,...`): every router computes the same
//! table from the same list. The CRDT IPAM ring replaces this table; the data
//! plane only sees owned ranges either way.

use crate::cidr::Ipv4Cidr;

/// One router's share: inclusive bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedRange {
    /// The router's name.
    pub name: String,
    /// First address.
    pub start: u32,
    /// Last address.
    pub end: u32,
}

/// Splits `range` into `names.len()` contiguous, equal parts (the last takes
/// the remainder), assigned in sorted name order. Duplicate names count once.
pub fn split_by_names(range: Ipv4Cidr, names: &[String]) -> Vec<NamedRange> {
    let mut names: Vec<&String> = names.iter().collect();
    names.sort();
    names.dedup();
    let count = names.len() as u64;
    if count == 0 {
        return Vec::new();
    }
    let share = range.size() / count;
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let start = u64::from(range.first()) + share * i as u64;
            let end = if i as u64 == count - 1 {
                u64::from(range.last())
            } else {
                start + share - 1
            };
            NamedRange {
                name: name.clone(),
                start: start as u32,
                end: end as u32,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_router_computes_the_same_disjoint_cover() {
        let range: Ipv4Cidr = "10.32.0.0/12".parse().expect("cidr");
        let a = split_by_names(range, &["b".into(), "a".into(), "c".into()]);
        let b = split_by_names(range, &["c".into(), "b".into(), "a".into(), "a".into()]);
        assert_eq!(a, b);
        assert_eq!(a[0].name, "a");
        assert_eq!(a[0].start, range.first());
        assert_eq!(a[2].end, range.last());
        for pair in a.windows(2) {
            assert_eq!(pair[0].end + 1, pair[1].start);
        }
    }
}
