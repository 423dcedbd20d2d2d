//! The identity rotation a topology entry carries (issue 20, step 4;
//! docs/ARCHITECTURE.md "Identity key rotation"): the router's entry under
//! its new ID appends the signed announcement to the entry's own fields.
//!
//! Appended the way every field is (DESIGN.md "Wire rules"; the allocation
//! record in `ipam/store.rs` reads its appended field the same way): the
//! entry's fields as every build encodes them, then [`Appended`]. An older
//! build decodes the entry and ignores what follows, and since the
//! signature covers all of [`SignedEntry::bytes`], relays by older builds
//! forward the announcement untouched and nobody can strip or add one.

use super::topology::{RefusedReason, SignedEntry, TopologyEntry};
use crate::crypto::SigningKey;
use crate::crypto::rotation::Rotation;
use crate::id::PeerId;
use serde::{Deserialize, Serialize};

/// What follows the entry's own fields. Field order is the wire order:
/// append only.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Appended {
    /// A [`Rotation`]'s encoding, or empty for none.
    rotation: Vec<u8>,
}

impl SignedEntry {
    /// Encodes and signs my own entry, with the announcement of the
    /// rotation that made its key (`None`: encoded as before, no bytes
    /// appended).
    pub fn sign_rotated(
        entry: &TopologyEntry,
        rotation: Option<&Rotation>,
        key: &SigningKey,
    ) -> Self {
        let Some(rotation) = rotation else {
            return Self::sign(entry, key);
        };
        let mut bytes = crate::wire::encode(entry).unwrap_or_default();
        let appended = Appended {
            rotation: rotation.encode().to_vec(),
        };
        bytes.extend(crate::wire::encode(&appended).unwrap_or_default());
        Self::sign_bytes(bytes, key)
    }

    /// The rotation these bytes carry, decoded but not checked (see
    /// [`checked_rotation`]). An entry from a build before the field, or
    /// one with an empty field, carries none; a field that does not decode
    /// is [`RefusedReason::Malformed`].
    pub fn rotation(&self) -> Result<Option<Rotation>, RefusedReason> {
        let (_, read): (TopologyEntry, usize) =
            bincode::serde::decode_from_slice(&self.bytes, crate::wire::config())
                .map_err(|_| RefusedReason::Malformed)?;
        let rest = self.bytes.get(read..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(None);
        }
        let appended: Appended = crate::wire::decode(rest).map_err(|_| RefusedReason::Malformed)?;
        if appended.rotation.is_empty() {
            return Ok(None);
        }
        Rotation::decode(&appended.rotation)
            .map(Some)
            .map_err(|_| RefusedReason::Malformed)
    }
}

/// Checks that `rotation` is a verified announcement whose successor is
/// the entry's own key; returns the ID it moves from.
pub fn checked_rotation(
    claim: &TopologyEntry,
    rotation: &Rotation,
) -> Result<PeerId, RefusedReason> {
    let (old, new) = rotation.verify().map_err(|_| RefusedReason::BadRotation)?;
    if new != claim.id || rotation.new != claim.public_key {
        return Err(RefusedReason::BadRotation);
    }
    Ok(old)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::Identity;
    use crate::id::ShortId;
    use rand::SeedableRng;

    fn keys() -> (Identity, Identity, Identity) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(20);
        (
            Identity::generate(&mut rng),
            Identity::generate(&mut rng),
            Identity::generate(&mut rng),
        )
    }

    fn entry_of(owner: &Identity) -> TopologyEntry {
        TopologyEntry {
            id: owner.id(),
            version: 4,
            name: "node-a".into(),
            public_key: owner.public_key(),
            addresses: vec!["192.0.2.1:6784".parse().unwrap()],
            short_id: ShortId(77),
            mtu: 1420,
            connections: vec![],
        }
    }

    #[test]
    fn the_rotation_rides_after_the_entry_and_an_older_decoder_reads_the_entry_alone() {
        let (old, new, _) = keys();
        let rotation = Rotation::sign(&old, &new, 1_796_000_000);
        let entry = entry_of(&new);
        let signed =
            SignedEntry::sign_rotated(&entry, Some(&rotation), &SigningKey::from_identity(&new));
        // What every build decodes: the entry, the appended bytes ignored.
        let claim = signed.claim().unwrap();
        assert_eq!(claim, entry);
        assert!(signed.bytes.len() > crate::wire::encode(&entry).unwrap().len());
        assert_eq!(signed.verify(&claim), Ok(()));
        assert_eq!(signed.rotation(), Ok(Some(rotation)));
        assert_eq!(checked_rotation(&claim, &rotation), Ok(old.id()));
        // No rotation: the bytes are exactly what an older build signs.
        let plain = SignedEntry::sign_rotated(&entry, None, &SigningKey::from_identity(&new));
        assert_eq!(
            plain,
            SignedEntry::sign(&entry, &SigningKey::from_identity(&new))
        );
        assert_eq!(plain.rotation(), Ok(None));
    }

    #[test]
    fn the_signature_covers_the_rotation_and_a_damaged_field_is_malformed() {
        let (old, new, _) = keys();
        let rotation = Rotation::sign(&old, &new, 9);
        let entry = entry_of(&new);
        let signed =
            SignedEntry::sign_rotated(&entry, Some(&rotation), &SigningKey::from_identity(&new));
        let claim = signed.claim().unwrap();
        // Stripped: the signature no longer verifies.
        let mut stripped = signed.clone();
        stripped
            .bytes
            .truncate(crate::wire::encode(&entry).unwrap().len());
        assert_eq!(stripped.verify(&claim), Err(RefusedReason::BadSignature));
        // Any byte of the field changed: refused.
        let last = signed.bytes.len() - 1;
        let mut altered = signed.clone();
        altered.bytes[last] ^= 1;
        assert_eq!(altered.verify(&claim), Err(RefusedReason::BadSignature));
        // A field cut short or of another length does not decode.
        let mut cut = signed.clone();
        cut.bytes.truncate(last);
        assert_eq!(cut.rotation(), Err(RefusedReason::Malformed));
        let mut short = crate::wire::encode(&entry).unwrap();
        short.extend(
            crate::wire::encode(&Appended {
                rotation: vec![1; 10],
            })
            .unwrap(),
        );
        let short = SignedEntry::sign_bytes(short, &SigningKey::from_identity(&new));
        assert_eq!(short.rotation(), Err(RefusedReason::Malformed));
        // A hostile length prefix allocates nothing beyond the bytes held.
        let mut huge = crate::wire::encode(&entry).unwrap();
        huge.extend([0xfc, 0xff, 0xff, 0xff, 0xff]);
        let huge = SignedEntry::sign_bytes(huge, &SigningKey::from_identity(&new));
        assert_eq!(huge.rotation(), Err(RefusedReason::Malformed));
    }

    #[test]
    fn a_rotation_to_another_key_than_the_entrys_is_refused() {
        let (old, new, stranger) = keys();
        let to_stranger = Rotation::sign(&old, &stranger, 9);
        assert_eq!(
            checked_rotation(&entry_of(&new), &to_stranger),
            Err(RefusedReason::BadRotation)
        );
        let mut forged = Rotation::sign(&old, &new, 9).encode();
        forged[80] ^= 1;
        let forged = Rotation::decode(&forged).unwrap();
        assert_eq!(
            checked_rotation(&entry_of(&new), &forged),
            Err(RefusedReason::BadRotation)
        );
    }
}
