//! Control records: the plaintext of a sealed record on the TCP connection.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::control::proto::{decode_message, encode_message};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode_message(data) {
        // Whatever we accept, we can say again and read back the same.
        let again = encode_message(&message);
        assert_eq!(decode_message(&again).ok(), Some(message));
    }
});
