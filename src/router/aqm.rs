//! A CoDel-style guard against a standing queue ahead of the router
//! (DESIGN.md "The fast data path": RTT under load must stay low). The TUN
//! ring has to be long enough to absorb a burst of IP fragments (a 64 KB UDP
//! datagram is 47 of them), but with TSO each entry can be a 64 KB TCP
//! super-packet, so a TCP sender would fill it to megabytes: the ring drops
//! only when full. The kernel shows us neither the ring's depth nor a
//! packet's sojourn time, so we use the observable proxy: a read batch that
//! stops at its byte cap without emptying the ring means more than the cap
//! (~0.6 ms of work) is queued. When that has held continuously for
//! `INTERVAL`, drop one TCP data (super-)packet, then at CoDel's rising rate
//! (`INTERVAL / sqrt(n)`) until the ring drains once. Sans-IO: the caller
//! passes `now`.

use std::time::{Duration, Instant};

/// How long the queue may stand before the first drop: a few in-cluster
/// RTTs, so TCP has time to react to one drop before the next (5 ms and 2 ms
/// measured alike within this machine's noise; 2 ms keeps the queue shorter).
pub const INTERVAL: Duration = Duration::from_millis(2);

/// The standing-queue detector of one worker's TUN queue.
#[derive(Debug, Default)]
pub struct StandingQueue {
    above_since: Option<Instant>,
    drop_next: Option<Instant>,
    count: u32,
}

impl StandingQueue {
    /// Records how a read batch ended: `drained` if the ring was found
    /// empty, otherwise it was cut off at its cap.
    pub fn on_batch_end(&mut self, drained: bool, now: Instant) {
        if drained {
            *self = Self::default();
        } else if self.above_since.is_none() {
            self.above_since = Some(now);
        }
    }

    /// Whether to drop the TCP data packet at hand.
    pub fn should_drop(&mut self, now: Instant) -> bool {
        let Some(since) = self.above_since else {
            return false;
        };
        if now.saturating_duration_since(since) < INTERVAL {
            return false;
        }
        if self.drop_next.is_some_and(|t| now < t) {
            return false;
        }
        self.count += 1;
        let gap = INTERVAL.div_f64(f64::from(self.count).sqrt());
        self.drop_next = Some(now + gap);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_that_drains_is_never_dropped_from() {
        let t0 = Instant::now();
        let mut q = StandingQueue::default();
        for i in 0..100u64 {
            let now = t0 + Duration::from_millis(i);
            q.on_batch_end(i % 3 == 0, now);
            assert!(!q.should_drop(now));
        }
    }

    #[test]
    fn a_standing_queue_drops_after_the_interval_then_faster() {
        let t0 = Instant::now();
        let mut q = StandingQueue::default();
        q.on_batch_end(false, t0);
        assert!(!q.should_drop(t0 + INTERVAL.mul_f64(0.8)));
        let t1 = t0 + INTERVAL;
        assert!(q.should_drop(t1));
        assert!(!q.should_drop(t1 + INTERVAL.mul_f64(0.5)));
        assert!(q.should_drop(t1 + INTERVAL));
        // The next gap is INTERVAL / sqrt(2).
        let t2 = t1 + INTERVAL;
        assert!(!q.should_drop(t2 + INTERVAL.mul_f64(0.6)));
        assert!(q.should_drop(t2 + INTERVAL.mul_f64(0.75)));
        q.on_batch_end(true, t1 + INTERVAL * 3);
        assert!(!q.should_drop(t1 + INTERVAL * 4));
    }
}
