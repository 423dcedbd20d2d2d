//! The TCP control channel's record cipher (DESIGN.md "Keys and sessions" → "Key separation", "Wire rules").
//!
//! ChaCha20-Poly1305 with the nonce a 64-bit record counter (`[0; 4] ‖
//! counter.to_le_bytes()`, the Noise layout), strictly in order: TCP neither
//! loses nor reorders, so any failure means tampering or a bug, and the
//! connection is dead. After one failure the opener refuses every later
//! record. Length framing and reassembly belong to the control driver; this
//! module only seals and opens one record (ciphertext ‖ tag).

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use std::fmt;
use zeroize::Zeroizing;

/// Tag length at the end of every record.
pub const FRAME_TAG_LEN: usize = 16;
/// Largest record (ciphertext ‖ tag), as in Noise: 65535 bytes.
pub const MAX_RECORD_LEN: usize = 65535;
/// Largest plaintext one record carries.
pub const MAX_FRAME_PLAINTEXT: usize = MAX_RECORD_LEN - FRAME_TAG_LEN;

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n.into()
}

/// Seals outgoing control records, one counter step per record.
pub struct FrameSealer {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl fmt::Debug for FrameSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameSealer")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl FrameSealer {
    /// A sealer starting at counter 0.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let key = Zeroizing::new(key);
        Self {
            cipher: ChaCha20Poly1305::new(&(*key).into()),
            counter: 0,
        }
    }

    /// Seals one record: returns ciphertext ‖ tag. The caller keeps
    /// `plaintext.len() <= MAX_FRAME_PLAINTEXT` (a larger record is refused
    /// by the peer's opener).
    ///
    /// # Panics
    /// After 2^64 - 1 records (centuries; a rekey replaces the sealer long before).
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        debug_assert!(
            plaintext.len() <= MAX_FRAME_PLAINTEXT,
            "control record too large"
        );
        let counter = self.counter;
        self.counter = match counter.checked_add(1) {
            Some(next) => next,
            None => panic!("control record counter exhausted"),
        };
        let payload = Payload {
            msg: plaintext,
            aad: &[],
        };
        match self.cipher.encrypt(&nonce(counter), payload) {
            Ok(record) => record,
            Err(_) => panic!(
                "ChaCha20-Poly1305 refused a {}-byte record",
                plaintext.len()
            ),
        }
    }

    /// Records sealed so far.
    pub fn records(&self) -> u64 {
        self.counter
    }
}

/// Opens incoming control records in order.
pub struct FrameOpener {
    cipher: ChaCha20Poly1305,
    counter: u64,
    failed: bool,
}

impl fmt::Debug for FrameOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameOpener")
            .field("counter", &self.counter)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl FrameOpener {
    /// An opener expecting counter 0 next.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let key = Zeroizing::new(key);
        Self {
            cipher: ChaCha20Poly1305::new(&(*key).into()),
            counter: 0,
            failed: false,
        }
    }

    /// Opens the next record (ciphertext ‖ tag) and returns its plaintext.
    /// Any error is fatal for the connection: the opener stays failed.
    pub fn open(&mut self, record: &[u8]) -> Result<Vec<u8>, FrameError> {
        if self.failed {
            return Err(FrameError::Failed);
        }
        let result = if record.len() < FRAME_TAG_LEN {
            Err(FrameError::TooShort { len: record.len() })
        } else if record.len() > MAX_RECORD_LEN {
            Err(FrameError::TooLong { len: record.len() })
        } else {
            let payload = Payload {
                msg: record,
                aad: &[],
            };
            self.cipher
                .decrypt(&nonce(self.counter), payload)
                .map_err(|_| FrameError::Authentication)
        };
        match result {
            Ok(plaintext) => {
                // Cannot overflow before the sealer on the other side panics.
                self.counter = self.counter.wrapping_add(1);
                Ok(plaintext)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Records opened so far.
    pub fn records(&self) -> u64 {
        self.counter
    }
}

/// Why a control record could not be opened. Every variant except `Failed`
/// moves the opener into the failed state; the driver closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Malformed: shorter than a tag. State changed: the opener is now failed.
    #[error("control record of {len} bytes is shorter than its tag")]
    TooShort {
        /// The record's length.
        len: usize,
    },
    /// Malformed: longer than [`MAX_RECORD_LEN`]. State changed: failed.
    #[error("control record of {len} bytes exceeds the 65535-byte limit")]
    TooLong {
        /// The record's length.
        len: usize,
    },
    /// Authentication failed: tampered, reordered, replayed or wrong key.
    /// State changed: failed.
    #[error("control record failed authentication")]
    Authentication,
    /// API misuse: the opener already failed. No state change.
    #[error("control channel already failed; close the connection")]
    Failed,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pair() -> (FrameSealer, FrameOpener) {
        (
            FrameSealer::from_bytes([5; 32]),
            FrameOpener::from_bytes([5; 32]),
        )
    }

    #[test]
    fn records_open_in_order() {
        let (mut s, mut o) = pair();
        for msg in [&b"one"[..], b"", b"three"] {
            let record = s.seal(msg);
            assert_eq!(record.len(), msg.len() + FRAME_TAG_LEN);
            assert_eq!(o.open(&record).unwrap(), msg);
        }
        assert_eq!((s.records(), o.records()), (3, 3));
    }

    #[test]
    fn reordered_records_are_rejected_and_the_opener_stays_failed() {
        let (mut s, mut o) = pair();
        let first = s.seal(b"one");
        let second = s.seal(b"two");
        assert_eq!(o.open(&second), Err(FrameError::Authentication));
        assert_eq!(o.open(&first), Err(FrameError::Failed));
    }

    #[test]
    fn a_replayed_record_is_rejected() {
        let (mut s, mut o) = pair();
        let first = s.seal(b"one");
        o.open(&first).unwrap();
        assert_eq!(o.open(&first), Err(FrameError::Authentication));
    }

    #[test]
    fn tampered_truncated_or_oversized_records_are_rejected() {
        let (mut s, _) = pair();
        let record = s.seal(b"hello");
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0x01;
            assert_eq!(pair().1.open(&bad), Err(FrameError::Authentication));
        }
        assert_eq!(
            pair().1.open(&record[..record.len() - 1]),
            Err(FrameError::Authentication)
        );
        assert_eq!(
            pair().1.open(&record[..3]),
            Err(FrameError::TooShort { len: 3 })
        );
        let huge = vec![0u8; MAX_RECORD_LEN + 1];
        assert_eq!(
            pair().1.open(&huge),
            Err(FrameError::TooLong {
                len: MAX_RECORD_LEN + 1
            })
        );
    }

    #[test]
    fn a_different_key_fails() {
        let record = FrameSealer::from_bytes([1; 32]).seal(b"x");
        assert_eq!(
            FrameOpener::from_bytes([2; 32]).open(&record),
            Err(FrameError::Authentication)
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let (s, o) = (
            FrameSealer::from_bytes([0xcd; 32]),
            FrameOpener::from_bytes([0xcd; 32]),
        );
        let dbg = format!("{s:?} {o:?}");
        assert!(!dbg.contains("cdcd") && !dbg.contains("205"), "{dbg}");
    }
}
