//! Maps keyed by small integers the router chose itself (receiver indices,
//! short IDs, lanes), looked up once or twice for every segment.
//!
//! std's SipHash costs ~20 ns a lookup, as much as summing a segment's
//! checksum; a multiply-and-rotate hash (rustc-hash's) costs ~1 ns. Flooding
//! is not a concern: the keys in these maps are inserted only by the control
//! plane, for authenticated peers and sessions, and a lookup of an arbitrary
//! key from the wire costs the same as any other.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// rustc-hash 2's hasher: add, multiply, and a rotate to bring the well-mixed
/// high bits down to where hashbrown picks the bucket.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = self.0.wrapping_add(word).wrapping_mul(K);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_small_keys_spread_over_buckets() {
        // Sequential session indices and (index, lane) pairs must not pile up
        // in a few of hashbrown's buckets (low bits) or control groups (top 7).
        let mut low = std::collections::HashSet::new();
        let mut top = std::collections::HashSet::new();
        for index in 0u32..256 {
            for lane in 0u8..4 {
                let mut h = IdHasher::default();
                h.write_u32(index);
                h.write_u8(lane);
                let v = h.finish();
                low.insert(v & 1023);
                top.insert(v >> 57);
            }
        }
        assert!(low.len() > 600, "{} of 1024 low-bit buckets", low.len());
        assert_eq!(top.len(), 128);
    }

    #[test]
    fn a_map_finds_what_was_put_in() {
        let mut m: IdMap<(u32, u8), u32> = IdMap::default();
        for i in 0..1000u32 {
            m.insert((i * 7919, (i % 3) as u8), i);
        }
        for i in 0..1000u32 {
            assert_eq!(m.get(&(i * 7919, (i % 3) as u8)), Some(&i));
        }
        assert_eq!(m.get(&(1, 1)), None);
    }
}
