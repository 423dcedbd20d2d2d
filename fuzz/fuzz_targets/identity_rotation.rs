//! An identity key rotation (`crypto::rotation`): fixed size, both
//! signatures checked; whatever decodes encodes back to the same bytes,
//! and the window table takes it without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};
use weft::crypto::rotation::{Rotation, Successors};

fuzz_target!(|data: &[u8]| {
    if let Ok(rotation) = Rotation::decode(data) {
        assert_eq!(&rotation.encode()[..], data);
        let now = Instant::now();
        let mut table = Successors::new(Duration::from_secs(1));
        if let Ok((old, new)) = table.learn(&rotation, now) {
            assert_eq!(table.current(old), new);
        }
    }
});
