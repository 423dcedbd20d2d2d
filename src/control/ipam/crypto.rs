//! The allocator's [`RingCrypto`] for a real router: XEdDSA signatures by
//! the router's X25519 identity (`crate::crypto::signing`), checked under
//! the verifying key derived from the public key the topology entry or the
//! handshake lent for the writer, which must hash to the writer's ID.

use crate::crypto::{Domain, Identity, SigningKey, VerifyingKey};
use crate::id::PeerId;
use crate::ipam::message::RING_SIGNED_VERSION;
use crate::ipam::signed::{RingCrypto, Signature};

/// Signs as this router; verifies anyone.
pub(super) struct IdentityCrypto {
    key: SigningKey,
}

impl IdentityCrypto {
    /// This router's signer.
    pub(super) fn new(identity: &Identity) -> Self {
        Self {
            key: SigningKey::from_identity(identity),
        }
    }
}

impl RingCrypto for IdentityCrypto {
    fn sign(&self, message: &[u8]) -> Signature {
        self.key
            .sign(Domain::RingEntry, RING_SIGNED_VERSION, message)
    }

    fn verify(
        &self,
        writer: PeerId,
        public_key: &[u8; 32],
        message: &[u8],
        sig: &Signature,
    ) -> bool {
        if !self.binds(writer, public_key) {
            return false;
        }
        VerifyingKey::from_x25519(public_key).is_ok_and(|key| {
            key.verify(Domain::RingEntry, RING_SIGNED_VERSION, message, sig)
                .is_ok()
        })
    }

    fn binds(&self, writer: PeerId, public_key: &[u8; 32]) -> bool {
        PeerId::from_public_key(public_key) == writer
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_ring_item_verifies_under_its_writers_key_only() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (a, b) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
        let crypto = IdentityCrypto::new(&a);
        let sig = crypto.sign(b"entry");
        assert!(crypto.verify(a.id(), &a.public_key(), b"entry", &sig));
        assert!(!crypto.verify(a.id(), &a.public_key(), b"entrY", &sig));
        assert!(!crypto.verify(b.id(), &b.public_key(), b"entry", &sig));
        assert!(
            !crypto.verify(b.id(), &a.public_key(), b"entry", &sig),
            "key of another ID"
        );
    }
}
