//! Per-lane replay protection for data packets (DESIGN.md "Keys and sessions" → "Lanes").
//!
//! A sliding window of 8192 bits in the style of RFC 6479 and WireGuard's
//! kernel `counter_validate`: a ring of 64-bit words, cleared a whole word at
//! a time as the highest counter moves up, so a large jump costs at most 128
//! word writes. Use it in two steps, as boringtun's `session.rs` does:
//! [`ReplayWindow::would_accept`] before decrypting (cheap, no state change,
//! drops obvious replays without spending a decryption), then
//! [`ReplayWindow::mark`] only after the tag verified, so that forged packets
//! can never move the window.

use crate::crypto::data::COUNTER_LIMIT;

const WORD_BITS: u64 = 64;
const WORDS: usize = 128;
/// Bits in the ring.
const RING_BITS: u64 = WORDS as u64 * WORD_BITS;
/// How far behind the highest accepted counter a packet may still arrive:
/// the ring minus one word, which may be partly ahead of the highest counter.
pub const WINDOW: u64 = RING_BITS - WORD_BITS;

/// One lane's replay window. Owned by the worker that owns the lane.
#[derive(Clone)]
pub struct ReplayWindow {
    /// One past the highest counter marked (0: nothing marked yet). Counters
    /// are shifted by one internally so that counter 0 needs no special case.
    top: u64,
    ring: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.top.checked_sub(1))
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// An empty window: every counter up to [`COUNTER_LIMIT`] is acceptable.
    pub fn new() -> Self {
        Self {
            top: 0,
            ring: [0; WORDS],
        }
    }

    /// Whether a packet with `counter` could be fresh: not above
    /// [`COUNTER_LIMIT`], not more than [`WINDOW`] behind the highest marked
    /// counter, and not marked yet. No state change.
    pub fn would_accept(&self, counter: u64) -> bool {
        if counter > COUNTER_LIMIT {
            return false;
        }
        let shifted = counter + 1;
        if shifted > self.top {
            return true;
        }
        if shifted + WINDOW < self.top {
            return false;
        }
        let (word, bit) = Self::position(shifted);
        self.ring[word] & bit == 0
    }

    /// Records `counter` as received, after its packet authenticated.
    /// Returns `false` (and changes nothing) if it would not have been
    /// accepted: a duplicate, too old, or above the limit.
    pub fn mark(&mut self, counter: u64) -> bool {
        if !self.would_accept(counter) {
            return false;
        }
        let shifted = counter + 1;
        if shifted > self.top {
            // Clear the words between the old top's word (exclusive) and the
            // new one (inclusive): they hold counters a full ring ago.
            let old_word = self.top / WORD_BITS;
            let new_word = shifted / WORD_BITS;
            let steps = (new_word - old_word).min(WORDS as u64);
            for i in 1..=steps {
                self.ring[((old_word + i) % WORDS as u64) as usize] = 0;
            }
            self.top = shifted;
        }
        let (word, bit) = Self::position(shifted);
        self.ring[word] |= bit;
        true
    }

    /// The highest counter marked so far, if any.
    pub fn highest(&self) -> Option<u64> {
        self.top.checked_sub(1)
    }

    fn position(shifted: u64) -> (usize, u64) {
        (
            ((shifted / WORD_BITS) % WORDS as u64) as usize,
            1u64 << (shifted % WORD_BITS),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn window_is_at_least_2048() {
        const { assert!(WINDOW >= 2048) };
        assert_eq!(WINDOW, 8128);
    }

    #[test]
    fn counter_zero_is_accepted_once() {
        let mut w = ReplayWindow::new();
        assert!(w.would_accept(0));
        assert!(w.mark(0));
        assert!(!w.would_accept(0));
        assert!(!w.mark(0));
        assert_eq!(w.highest(), Some(0));
    }

    #[test]
    fn duplicates_are_rejected() {
        let mut w = ReplayWindow::new();
        for c in 0..100 {
            assert!(w.mark(c));
        }
        for c in 0..100 {
            assert!(!w.would_accept(c) && !w.mark(c));
        }
    }

    #[test]
    fn reordering_within_the_window_is_accepted_once() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(5000));
        for c in (0..5000).rev() {
            assert!(w.mark(c), "{c}");
        }
        for c in 0..=5000 {
            assert!(!w.mark(c));
        }
        assert!(w.mark(5001));
    }

    #[test]
    fn counters_older_than_the_window_are_rejected() {
        let mut w = ReplayWindow::new();
        let high = 100_000;
        assert!(w.mark(high));
        assert!(w.would_accept(high - WINDOW));
        assert!(!w.would_accept(high - WINDOW - 1));
        assert!(!w.mark(0));
        assert!(w.mark(high - WINDOW));
    }

    #[test]
    fn a_large_jump_forgets_old_bits_but_not_recent_ones() {
        let mut w = ReplayWindow::new();
        for c in 0..10 {
            w.mark(c);
        }
        // A jump of exactly one ring: the ring slot of counter 9 is reused.
        let jump = 9 + RING_BITS;
        assert!(w.mark(jump));
        assert!(!w.would_accept(9), "too old now");
        assert!(w.would_accept(jump - 1));
        assert!(w.mark(jump - 1));
        assert!(!w.mark(jump - 1));
        // A jump far beyond, then everything in the window is fresh again.
        let far = 1 << 40;
        assert!(w.mark(far));
        for c in far - WINDOW..far {
            assert!(w.would_accept(c), "{c}");
        }
    }

    #[test]
    fn the_last_counter_is_accepted_and_nothing_above_it() {
        let mut w = ReplayWindow::new();
        assert!(!w.would_accept(COUNTER_LIMIT + 1));
        assert!(!w.mark(u64::MAX));
        assert!(w.mark(COUNTER_LIMIT));
        assert!(!w.mark(COUNTER_LIMIT));
        assert!(w.mark(COUNTER_LIMIT - 1));
        assert!(!w.mark(COUNTER_LIMIT + 1));
        assert_eq!(w.highest(), Some(COUNTER_LIMIT));
    }

    #[test]
    fn would_accept_changes_nothing() {
        let mut w = ReplayWindow::new();
        w.mark(10);
        assert!(w.would_accept(11));
        assert!(w.would_accept(11));
        assert_eq!(w.highest(), Some(10));
    }

    proptest! {
        /// Against a reference model: a counter is accepted iff it is new and
        /// within WINDOW of the highest accepted so far.
        #[test]
        fn matches_a_reference_model(ops in proptest::collection::vec((0u64..3, 0u64..20_000), 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::HashSet::new();
            let mut highest: Option<u64> = None;
            let mut base = 0u64;
            for (kind, delta) in ops {
                // Mix small steps, reordering and big jumps.
                let counter = match kind {
                    0 => base + delta % 64,
                    1 => base.saturating_sub(delta),
                    _ => { base += delta; base }
                };
                let expect = !seen.contains(&counter)
                    && highest.is_none_or(|h| counter + WINDOW >= h);
                prop_assert_eq!(w.would_accept(counter), expect, "counter {}", counter);
                prop_assert_eq!(w.mark(counter), expect, "counter {}", counter);
                if expect {
                    seen.insert(counter);
                    highest = Some(highest.map_or(counter, |h| h.max(counter)));
                }
            }
        }
    }
}
