//! The rekey hello with the identity announcement appended (issue 20, the
//! live key switch; docs/ARCHITECTURE.md "Identity key rotation"): a
//! router that switched its static key mid-link sends the [`Rotation`]
//! in the payload of its rekey message 2 or 3, inside the Noise handshake,
//! so the peer can tell a successor from a stranger before the gossip has
//! delivered the announcement.
//!
//! Appended the way every field is (DESIGN.md "Wire rules", as
//! `gossip::entry_rotation` does for signed entries): [`RekeyHello`] as
//! every build encodes it, then [`Appended`]. An older build decodes the
//! hello and ignores what follows; bytes from an older build carry none.

use super::RekeyHello;
use crate::crypto::rotation::Rotation;
use crate::wire::DecodeError;
use serde::{Deserialize, Serialize};

/// What follows the rekey hello's own fields. Field order is the wire
/// order: append only.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Appended {
    /// A [`Rotation`]'s encoding, or empty for none.
    rotation: Vec<u8>,
}

/// A rekey hello's payload: with no rotation, exactly the bytes every
/// build sends.
pub fn encode_rekey_hello(session_index: u32, rotation: Option<&Rotation>) -> Vec<u8> {
    // Encoding our own structs into a Vec cannot fail.
    let mut bytes = crate::wire::encode(&RekeyHello { session_index }).unwrap_or_default();
    if let Some(rotation) = rotation {
        let appended = Appended {
            rotation: rotation.encode().to_vec(),
        };
        bytes.extend(crate::wire::encode(&appended).unwrap_or_default());
    }
    bytes
}

/// Decodes a rekey hello and the rotation it may carry (decoded, not
/// verified: the link checks it against the keys it knows). Never panics.
pub fn decode_rekey_hello(bytes: &[u8]) -> Result<(RekeyHello, Option<Rotation>), DecodeError> {
    let (hello, read): (RekeyHello, usize) = crate::wire::decode_prefix(bytes)?;
    let rest = bytes.get(read..).unwrap_or_default();
    if rest.is_empty() {
        return Ok((hello, None));
    }
    let appended: Appended = crate::wire::decode(rest)?;
    if appended.rotation.is_empty() {
        return Ok((hello, None));
    }
    let rotation =
        Rotation::decode(&appended.rotation).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok((hello, Some(rotation)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::identity::Identity;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rotation() -> Rotation {
        let old = Identity::generate(&mut StdRng::seed_from_u64(1));
        let new = Identity::generate(&mut StdRng::seed_from_u64(2));
        Rotation::sign(&old, &new, 1_800_000_000)
    }

    #[test]
    fn without_a_rotation_the_bytes_are_the_old_builds() {
        let old_bytes = crate::wire::encode(&RekeyHello { session_index: 77 }).unwrap();
        assert_eq!(encode_rekey_hello(77, None), old_bytes);
        let (hello, rotation) = decode_rekey_hello(&old_bytes).unwrap();
        assert_eq!(hello.session_index, 77);
        assert!(rotation.is_none(), "an older build's hello carries none");
    }

    #[test]
    fn a_rotation_round_trips_and_an_old_build_still_reads_its_index() {
        let rotation = rotation();
        let bytes = encode_rekey_hello(0x00ab_cdef, Some(&rotation));
        assert_eq!(
            decode_rekey_hello(&bytes).unwrap(),
            (
                RekeyHello {
                    session_index: 0x00ab_cdef
                },
                Some(rotation)
            )
        );
        // What an older build does with the new payload: the plain decode
        // of its struct, which ignores trailing bytes.
        let old: RekeyHello = crate::wire::decode(&bytes).unwrap();
        assert_eq!(old.session_index, 0x00ab_cdef);
    }

    #[test]
    fn a_damaged_appendix_is_an_error_not_a_panic() {
        let bytes = encode_rekey_hello(5, Some(&rotation()));
        for cut in 0..bytes.len() {
            let result = decode_rekey_hello(&bytes[..cut]);
            // One byte is the whole hello (index 5): an older build's bytes.
            // Any other cut is a truncated hello or appendix.
            assert_eq!(result.is_ok(), cut == 1, "cut at {cut}");
        }
        let mut wrong_size = crate::wire::encode(&RekeyHello { session_index: 5 }).unwrap();
        wrong_size.extend(
            crate::wire::encode(&Appended {
                rotation: vec![1; 10],
            })
            .unwrap(),
        );
        assert!(decode_rekey_hello(&wrong_size).is_err());
        let mut empty = crate::wire::encode(&RekeyHello { session_index: 5 }).unwrap();
        empty.extend(crate::wire::encode(&Appended::default()).unwrap());
        assert_eq!(decode_rekey_hello(&empty).unwrap().1, None);
    }
}
