//! The control record cipher: hostile records, tampered records and honest
//! records interleaved, against a model of the opener's state (in order,
//! one failure is final).
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::crypto::frame::{FRAME_TAG_LEN, MAX_FRAME_PLAINTEXT};
use weft::crypto::{FrameError, FrameOpener, FrameSealer};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mut input = common::Bytes::new(data);
    let key = [0x42u8; 32];
    let mut sealer = FrameSealer::from_bytes(key);
    let mut opener = FrameOpener::from_bytes(key);
    let mut failed = false;
    let mut opened = 0u64;
    while !input.is_empty() {
        let op = input.u8();
        let chunk = input.chunk();
        let result = match op % 4 {
            // Hostile bytes as a record.
            0 => opener.open(chunk),
            // Honest record.
            1 => {
                let plain = &chunk[..chunk.len().min(MAX_FRAME_PLAINTEXT)];
                // A replayed honest record given as "hostile" bytes may have
                // opened and moved the opener ahead of our sealer.
                let in_sync = !failed && sealer.records() == opener.records();
                let record = sealer.seal(plain);
                assert_eq!(record.len(), plain.len() + FRAME_TAG_LEN);
                let result = opener.open(&record);
                if in_sync {
                    assert_eq!(result.as_deref().ok(), Some(plain));
                }
                result
            }
            // Honest record with one bit flipped: must fail.
            2 => {
                let plain = &chunk[..chunk.len().min(MAX_FRAME_PLAINTEXT)];
                let mut record = sealer.seal(plain);
                let at = input.u16() as usize % record.len();
                record[at] ^= 1 << (input.u8() % 8);
                let result = opener.open(&record);
                assert!(result.is_err());
                result
            }
            // A whole remaining input as one record (may exceed the limit).
            _ => opener.open(input.rest()),
        };
        match result {
            Ok(_) => {
                assert!(!failed, "a failed opener opened a record");
                opened += 1;
            }
            Err(e) => {
                if failed {
                    assert_eq!(e, FrameError::Failed);
                }
                failed = true;
            }
        }
        assert_eq!(opener.records(), opened);
    }
});
