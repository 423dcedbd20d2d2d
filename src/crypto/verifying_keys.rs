//! Verifying keys by X25519 public key, derived once and kept (issue 15,
//! costs): deriving one from the public key (Montgomery → Edwards, the
//! canonical-encoding and small-order checks, compressing) is about a third of
//! what checking a topology entry cost, and the same few hundred routers sign
//! every entry a router checks.
//!
//! Keyed by the public key itself, not by the ID it hashes to, so a lookup can
//! only ever return the key those exact bytes derive: the cache changes no
//! verdict, only its cost. Keys that are refused are not kept. Bounded: when
//! full it starts over (a hostile neighbour sending entries of ever new
//! identities costs itself a derivation each, as without the cache).
//!
//! Owns: the map and its bound. Not here: which key an entry must be signed
//! by (the caller checks that the key hashes to the claimed ID).

use crate::crypto::signing::{SignatureError, VerifyingKey};
use std::collections::HashMap;

/// How many keys are kept before the cache starts over: far above any
/// cluster's size (the connection cap is 1,024).
const LIMIT: usize = 4_096;

/// A bounded map from X25519 public key to its [`VerifyingKey`].
#[derive(Debug, Default)]
pub struct VerifyingKeys {
    keys: HashMap<[u8; 32], VerifyingKey>,
    derived: u64,
}

impl VerifyingKeys {
    /// The verifying key of `public_key`, derived on first use.
    ///
    /// # Errors
    /// [`SignatureError::BadPublicKey`] as [`VerifyingKey::from_x25519`];
    /// nothing is kept then.
    pub fn key(&mut self, public_key: &[u8; 32]) -> Result<VerifyingKey, SignatureError> {
        if let Some(key) = self.keys.get(public_key) {
            return Ok(*key);
        }
        let key = VerifyingKey::from_x25519(public_key)?;
        self.derived += 1;
        if self.keys.len() >= LIMIT {
            self.keys.clear();
        }
        self.keys.insert(*public_key, key);
        Ok(key)
    }

    /// How many keys were derived (cache misses), for tests and benches.
    pub fn derived(&self) -> u64 {
        self.derived
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::Identity;
    use rand::SeedableRng;

    fn public_key(seed: u64) -> [u8; 32] {
        Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(seed)).public_key()
    }

    #[test]
    fn a_key_is_derived_once_and_is_the_one_its_bytes_derive() {
        let mut cache = VerifyingKeys::default();
        let (a, b) = (public_key(1), public_key(2));
        for _ in 0..3 {
            assert_eq!(cache.key(&a), VerifyingKey::from_x25519(&a));
            assert_eq!(cache.key(&b), VerifyingKey::from_x25519(&b));
        }
        assert_eq!(cache.derived(), 2);
    }

    #[test]
    fn a_refused_key_is_refused_every_time_and_not_kept() {
        let mut cache = VerifyingKeys::default();
        for _ in 0..2 {
            assert_eq!(cache.key(&[0; 32]), Err(SignatureError::BadPublicKey));
        }
        assert_eq!(cache.derived(), 0);
        assert!(cache.keys.is_empty());
    }

    #[test]
    fn the_cache_starts_over_when_full() {
        let mut cache = VerifyingKeys::default();
        let key = VerifyingKey::from_x25519(&public_key(3)).unwrap();
        for i in 0..LIMIT as u32 {
            let mut fake = [0u8; 32];
            fake[..4].copy_from_slice(&i.to_le_bytes());
            cache.keys.insert(fake, key);
        }
        let a = public_key(4);
        assert!(cache.key(&a).is_ok());
        assert_eq!(cache.keys.len(), 1);
    }
}
