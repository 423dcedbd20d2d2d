//! Why a handshake step failed, grouped by cause (STYLE.md "Errors").

use super::{MAX_MESSAGE_LEN, MAX_PAYLOAD_LEN, MSG1_LEN};
use crate::crypto::secret::SecretId;

/// Maps snow's errors on received bytes: a failed decryption means the
/// sender lacks the secret (or a key) or the bytes were tampered with;
/// anything else is malformed input.
pub(super) fn read_error(e: snow::Error) -> HandshakeError {
    match e {
        snow::Error::Decrypt | snow::Error::Dh => HandshakeError::Authentication,
        snow::Error::Input => HandshakeError::Malformed,
        other => HandshakeError::Noise(other),
    }
}

/// Why a handshake step failed. Errors on received bytes mark the handshake
/// failed (every later call returns [`HandshakeError::Failed`]); the driver
/// closes the connection without answering.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    // Malformed bytes.
    /// Message 1 is not exactly [`MSG1_LEN`] bytes. No handshake was created.
    #[error("handshake message 1 is {len} bytes, expected exactly {MSG1_LEN}")]
    Msg1Length {
        /// Bytes received.
        len: usize,
    },
    /// A message 2 or 3 longer than [`MAX_MESSAGE_LEN`]. State changed: failed.
    #[error("handshake message of {len} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    MessageTooLong {
        /// Bytes received.
        len: usize,
    },
    /// Too short or otherwise unparseable. State changed: failed.
    #[error("malformed handshake message")]
    Malformed,

    // Authentication failed.
    /// Message 1 names a secret this router does not hold: the peer has a
    /// different cluster secret (or a rotation is half done). No handshake
    /// was created.
    #[error(
        "handshake names cluster secret {0}, which this router does not hold; check --secret-file on both routers"
    )]
    UnknownSecret(SecretId),
    /// A message failed to decrypt: wrong cluster secret, a different
    /// cluster range or handshake version (prologue), or tampering. State
    /// changed: failed (or, for message 1, no handshake was created).
    #[error(
        "handshake failed authentication: the peer has a different cluster secret or cluster range, or the message was altered"
    )]
    Authentication,

    // API misuse (never caused by the peer's bytes alone).
    /// `write_message` with a payload over [`MAX_PAYLOAD_LEN`]. No state change.
    #[error("handshake payload of {len} bytes exceeds {MAX_PAYLOAD_LEN}")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
    },
    /// Read when it is our turn to write, or the reverse, or after the end.
    /// No state change.
    #[error("handshake message out of turn")]
    OutOfTurn,
    /// `finish` before all three messages. The handshake was consumed.
    #[error("handshake not finished")]
    NotFinished,
    /// A call after an earlier error. No state change.
    #[error("handshake already failed")]
    Failed,
    /// An unexpected error from snow (a bug or a broken RNG).
    #[error("noise error: {0}")]
    Noise(snow::Error),
}
