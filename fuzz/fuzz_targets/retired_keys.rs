//! The retired-keys file in the state dir (`control::retired_keys`): a
//! corrupt or hostile file is refused with an error, never a panic or an
//! allocation beyond the file's bound, and whatever it accepts encodes
//! back to a file it accepts again, record for record.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::control::retired_keys::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = decode(data) {
        let again = encode(&records);
        let back = decode(&again).expect("re-decode what we encoded");
        assert_eq!(back, records);
    }
});
