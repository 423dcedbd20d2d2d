//! The per-lane replay window against a simple model (`common::ReplayModel`):
//! a set of marked counters and the highest one; a counter is fresh iff it is
//! at most `COUNTER_LIMIT`, not marked, and not more than `WINDOW` behind the
//! highest.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::crypto::COUNTER_LIMIT;
use weft::crypto::ReplayWindow;
use weft::crypto::replay::WINDOW;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mut input = common::Bytes::new(data);
    let mut window = ReplayWindow::new();
    let mut model = common::ReplayModel::default();
    while !input.is_empty() {
        let op = input.u8();
        let h = model.highest.unwrap_or(0);
        let counter = match op % 6 {
            0 => input.u64(),
            1 => input.u64() & COUNTER_LIMIT,
            2 => h.saturating_add(u64::from(input.u16())),
            3 => h.saturating_sub(u64::from(input.u16())),
            4 => h
                .saturating_sub(WINDOW)
                .saturating_add(u64::from(input.u8()))
                .saturating_sub(128),
            _ => (COUNTER_LIMIT - 64).saturating_add(u64::from(input.u8() % 128)),
        };
        let expected = model.fresh(counter);
        assert_eq!(
            window.would_accept(counter),
            expected,
            "would_accept({counter}) highest {:?}",
            model.highest
        );
        if op & 0x80 == 0 {
            assert_eq!(window.mark(counter), expected, "mark({counter})");
            if expected {
                model.mark(counter);
            }
        }
        assert_eq!(window.highest(), model.highest);
    }
});
