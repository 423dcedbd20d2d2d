//! Who wrote what in the ring (issue 14; DESIGN.md "Security model": the
//! writer of an entry is its signer, never a claim). Every ring entry, every
//! tombstone and every free-space record carries its writer's signature
//! over the bytes [`entry_message`], [`tombstone_message`] and
//! [`record_message`] define; a router verifies each item that would change
//! its ring before the ownership rules (`ring/validate.rs`) even look at it,
//! so a relay can pass on only what its writer signed.
//!
//! Owns: the signed byte strings, the [`RingCrypto`] seam the allocator
//! signs and verifies through, the writers' public keys it was lent, and a
//! bounded cache of verified items. Not here: the signature scheme (the
//! driver's [`RingCrypto`] is XEdDSA over the router's X25519 identity,
//! `crate::crypto::signing`), nor where keys come from (the driver learns
//! them from the topology entries, which carry them, and from the peers'
//! handshakes).
//!
//! Genesis entries (version 1) carry no signature: every router recomputes
//! them from the founders the ring names (`GenesisId::derive` binds them).
//! A `DonateRequest` is not signed: it travels one hop over the requester's
//! authenticated link and is never relayed, so its sender is already known.

use super::ring::{Entry, GenesisId, PeerRecord};
use crate::id::PeerId;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

pub use crate::crypto::signing::Signature;

/// The allocator's signing seam: this router's signatures and a check of
/// anyone's. The core calls it synchronously; the implementation holds no
/// clock, socket or lock.
pub trait RingCrypto: Send {
    /// This router's signature over `message`.
    fn sign(&self, message: &[u8]) -> Signature;
    /// Whether `signature` is `writer`'s over `message`, `public_key` being
    /// the X25519 key the driver lent for `writer`. A production
    /// implementation also checks that the key hashes to `writer`.
    fn verify(
        &self,
        writer: PeerId,
        public_key: &[u8; 32],
        message: &[u8],
        signature: &Signature,
    ) -> bool;
    /// Whether `public_key` is `writer`'s: it hashes to the ID. A key that
    /// a peer hands over for a writer is believed only if it does.
    fn binds(&self, writer: PeerId, public_key: &[u8; 32]) -> bool;
}

impl fmt::Debug for dyn RingCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RingCrypto")
    }
}

/// The bytes a ring entry's writer signs.
pub fn entry_message(genesis: GenesisId, token: u128, e: &Entry) -> Vec<u8> {
    let mut m = Vec::with_capacity(50);
    m.push(b'E');
    m.extend(genesis.0.to_be_bytes());
    m.extend(token.to_be_bytes());
    m.extend(e.owner.0.to_be_bytes());
    m.extend(e.version.to_be_bytes());
    m.extend(e.writer.0.to_be_bytes());
    m.push(u8::from(e.reclaim));
    m
}

/// The bytes a reclaimer signs for its tombstone of `dead`.
pub fn tombstone_message(genesis: GenesisId, dead: PeerId, by: PeerId) -> Vec<u8> {
    let mut m = Vec::with_capacity(25);
    m.push(b'T');
    m.extend(genesis.0.to_be_bytes());
    m.extend(dead.0.to_be_bytes());
    m.extend(by.0.to_be_bytes());
    m
}

/// The bytes a router signs for its own free-space record.
pub fn record_message(genesis: GenesisId, peer: PeerId, r: &PeerRecord) -> Vec<u8> {
    let mut m = Vec::with_capacity(49);
    m.push(b'R');
    m.extend(genesis.0.to_be_bytes());
    m.extend(peer.0.to_be_bytes());
    m.extend(r.version.to_be_bytes());
    m.extend(r.free.to_be_bytes());
    m.extend(r.pods.to_be_bytes());
    m
}

/// Why a signed item was refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The writer's key is not known yet (not in the topology): the ring is
    /// refused now and comes again with the next digest exchange, once the
    /// topology names the writer.
    #[error("ring item written by {0}, whose key is not known yet; refused until it is")]
    UnknownWriter(PeerId),
    /// The signature does not verify: forged, or a writer field that is a claim.
    #[error("ring item claims {0} as its writer but is not signed by it; refused")]
    BadSignature(PeerId),
}

/// How many verified items the cache holds before it starts over.
const CACHE_LIMIT: usize = 16_384;

/// The writers' keys the driver lent and the items already verified.
#[derive(Default)]
pub struct Verifier {
    keys: BTreeMap<PeerId, [u8; 32]>,
    verified: HashSet<(Vec<u8>, [u8; 64])>,
    /// Signatures checked (cache misses), for tests and metrics.
    pub checks: u64,
}

impl Verifier {
    /// Records `id`'s X25519 public key (from its topology entry or
    /// handshake); a later key for the same ID replaces it.
    pub fn learn_key(&mut self, id: PeerId, public_key: [u8; 32]) {
        self.keys.insert(id, public_key);
    }

    /// `id`'s key, if known.
    pub fn key(&self, id: PeerId) -> Option<[u8; 32]> {
        self.keys.get(&id).copied()
    }

    /// Records a key a peer handed over for `id`, if `id` has none yet and
    /// the key hashes to it; true if recorded.
    pub fn learn_handed_key(
        &mut self,
        crypto: &dyn RingCrypto,
        id: PeerId,
        public_key: [u8; 32],
    ) -> bool {
        if self.keys.contains_key(&id) || !crypto.binds(id, &public_key) {
            return false;
        }
        self.keys.insert(id, public_key);
        true
    }

    /// Checks `writer`'s signature over `message`, from the cache when the
    /// same item verified before.
    pub fn check(
        &mut self,
        crypto: &dyn RingCrypto,
        writer: PeerId,
        message: Vec<u8>,
        signature: &Signature,
    ) -> Result<(), SignError> {
        let item = (message, signature.to_bytes());
        if self.verified.contains(&item) {
            return Ok(());
        }
        let key = self
            .keys
            .get(&writer)
            .ok_or(SignError::UnknownWriter(writer))?;
        self.checks += 1;
        if !crypto.verify(writer, key, &item.0, signature) {
            return Err(SignError::BadSignature(writer));
        }
        if self.verified.len() >= CACHE_LIMIT {
            self.verified.clear();
        }
        self.verified.insert(item);
        Ok(())
    }
}

/// A stand-in scheme for tests and the simulator: a router's "public key"
/// is its ID, and a signature is a keyed Blake2s hash under that key. It
/// proves nothing against an adversary who knows the scheme (anyone can
/// compute it); honest code and the simulator's hostile router sign only
/// through their own instance, which is what the tests model.
#[cfg(any(test, feature = "sim"))]
#[derive(Clone, Copy, Debug)]
pub struct TestCrypto {
    me: PeerId,
}

#[cfg(any(test, feature = "sim"))]
impl TestCrypto {
    /// `me`'s instance.
    pub fn new(me: PeerId) -> Self {
        Self { me }
    }

    /// `me`'s instance, boxed for [`crate::ipam::Config::new`].
    pub fn boxed(me: PeerId) -> Box<dyn RingCrypto> {
        Box::new(Self::new(me))
    }

    /// The "public key" of `id` under this scheme.
    pub fn public_key(id: PeerId) -> [u8; 32] {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&id.0.to_be_bytes());
        key
    }

    fn mac(key: &[u8; 32], message: &[u8]) -> Signature {
        use blake2::{Blake2s256, Digest};
        let mut h = Blake2s256::new();
        h.update(b"weft test ring signature");
        h.update(key);
        h.update(message);
        let mut bytes = [1u8; 64];
        bytes[..32].copy_from_slice(&h.finalize());
        Signature::from_bytes(&bytes)
    }
}

#[cfg(any(test, feature = "sim"))]
impl RingCrypto for TestCrypto {
    fn sign(&self, message: &[u8]) -> Signature {
        Self::mac(&Self::public_key(self.me), message)
    }

    fn verify(&self, writer: PeerId, key: &[u8; 32], message: &[u8], sig: &Signature) -> bool {
        *key == Self::public_key(writer) && Self::mac(key, message) == *sig
    }

    fn binds(&self, writer: PeerId, key: &[u8; 32]) -> bool {
        *key == Self::public_key(writer)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry() -> Entry {
        Entry {
            owner: PeerId(2),
            version: 3,
            writer: PeerId(1),
            reclaim: false,
        }
    }

    #[test]
    fn a_signature_verifies_once_and_then_comes_from_the_cache() {
        let mut v = Verifier::default();
        v.learn_key(PeerId(1), TestCrypto::public_key(PeerId(1)));
        let crypto = TestCrypto::new(PeerId(1));
        let m = entry_message(GenesisId(7), 10, &entry());
        let sig = crypto.sign(&m);
        v.check(&crypto, PeerId(1), m.clone(), &sig).unwrap();
        v.check(&crypto, PeerId(1), m, &sig).unwrap();
        assert_eq!(v.checks, 1);
    }

    #[test]
    fn a_writer_field_signed_by_someone_else_is_refused() {
        let mut v = Verifier::default();
        v.learn_key(PeerId(1), TestCrypto::public_key(PeerId(1)));
        let forger = TestCrypto::new(PeerId(9));
        let m = entry_message(GenesisId(7), 10, &entry());
        let sig = forger.sign(&m);
        assert_eq!(
            v.check(&forger, PeerId(1), m, &sig),
            Err(SignError::BadSignature(PeerId(1)))
        );
    }

    #[test]
    fn an_unknown_writer_is_refused_until_its_key_is_lent() {
        let mut v = Verifier::default();
        let crypto = TestCrypto::new(PeerId(1));
        let m = record_message(GenesisId(7), PeerId(1), &PeerRecord::default());
        let sig = crypto.sign(&m);
        assert_eq!(
            v.check(&crypto, PeerId(1), m.clone(), &sig),
            Err(SignError::UnknownWriter(PeerId(1)))
        );
        v.learn_key(PeerId(1), TestCrypto::public_key(PeerId(1)));
        v.check(&crypto, PeerId(1), m, &sig).unwrap();
    }

    #[test]
    fn signed_messages_differ_by_kind_genesis_and_every_field() {
        let g = GenesisId(7);
        let base = entry_message(g, 10, &entry());
        assert_ne!(base, entry_message(GenesisId(8), 10, &entry()));
        assert_ne!(base, entry_message(g, 11, &entry()));
        let mut e = entry();
        e.reclaim = true;
        assert_ne!(base, entry_message(g, 10, &e));
        assert_ne!(
            tombstone_message(g, PeerId(1), PeerId(2)),
            tombstone_message(g, PeerId(2), PeerId(1))
        );
    }
}
