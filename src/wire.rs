//! The one place where the control-plane encoding is pinned: serde + bincode 2
//! with a fixed configuration and a size limit, and the versioned envelope
//! that starts every control message.
//!
//! Rules (DESIGN.md "Wire rules"): every message starts with a version and a
//! type; new fields are appended only; decoders ignore trailing bytes; no
//! decoder allocates more than the message allows.

use serde::{Serialize, de::DeserializeOwned};

/// Largest control message body we ever encode or accept (one Noise record
/// is at most 64 KiB; larger state is reassembled by the framing layer, which
/// enforces its own cap).
pub const MAX_MESSAGE: usize = 1 << 20;

/// The pinned bincode configuration: little-endian, variable-length integers,
/// and a hard allocation limit so that a hostile length prefix cannot make
/// the decoder reserve more than `MAX_MESSAGE` bytes.
pub fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_MESSAGE>()
}

/// Why a control message could not be decoded. Never fatal: the caller drops
/// the message and counts it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the envelope.
    #[error("message truncated")]
    Truncated,
    /// A version this router does not speak.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// A type byte this router does not know.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The body did not decode.
    #[error("malformed body: {0}")]
    Malformed(String),
}

/// Encodes `value` with the pinned configuration.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, config())
}

/// Decodes a `T` from the start of `bytes`, ignoring trailing bytes (so that
/// newer peers may append fields).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_prefix(bytes).map(|(value, _read)| value)
}

/// Decodes a `T` from the start of `bytes` and says how many bytes it
/// took, so that a field appended after a whole encoded value (a ring's
/// titles after the ring) can be decoded from the rest.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(DecodeError::Malformed("message too large".into()));
    }
    bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V1 {
        a: u32,
        b: String,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V2 {
        a: u32,
        b: String,
        c: u64,
    }

    #[test]
    fn old_decoder_ignores_fields_appended_by_a_newer_peer() {
        let bytes = encode(&V2 {
            a: 7,
            b: "x".into(),
            c: 9,
        })
        .expect("encode");
        let old: V1 = decode(&bytes).expect("decode");
        assert_eq!(
            old,
            V1 {
                a: 7,
                b: "x".into()
            }
        );
    }

    #[test]
    fn golden_bytes_of_the_pinned_config() {
        let bytes = encode(&V1 {
            a: 300,
            b: "hi".into(),
        })
        .expect("encode");
        assert_eq!(bytes, [251, 44, 1, 2, b'h', b'i']);
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // A Vec<u8> claiming 2^60 elements.
        let mut bytes = vec![255u8];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }
}
