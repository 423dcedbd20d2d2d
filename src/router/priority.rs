//! CPU priority of the data-plane workers (DESIGN.md "The fast data path":
//! RTT under load).
//!
//! Measured (docs/DATAPATH.md "Queues and latency"): under a bulk transfer
//! on a busy 2-CPU node, most of a ping's delay was not bytes queued in the
//! TUN ring or the UDP socket but the run queue: a woken worker waited for
//! a CPU behind the transfer's own endpoints and the other workers, on both
//! legs, even on the ACK-only return leg. The kernel's own tunnels (VXLAN,
//! WireGuard) run in softirq context, ahead of every task.
//!
//! So workers run like softirq does: in the real-time class (`SCHED_FIFO`,
//! priority 1, the lowest), ahead of every ordinary task, for as long as
//! they have packets. And like softirq, which hands its work to the
//! ordinary-priority ksoftirqd when it cannot keep up, a worker that has
//! been busy without a break for [`BUSY_LIMIT`] steps down to nice −10
//! until it next finds its queues empty ([`BusyGuard`]), so a data plane
//! that cannot keep up (a flood) does not starve the node's control plane
//! or its pods. Where the real-time class is refused (no `CAP_SYS_NICE`, or
//! a cgroup with no real-time budget), the workers run at nice −10 and the
//! router says so once.
//!
//! Against nice −10 alone (bench/tunnel.sh, 6 interleaved rounds): ping
//! under a 4-stream transfer 0.25 vs 1.87 ms mean, p99 1.3 vs 6.0 ms, every
//! ping within 5 ms (97.9 %), at the same throughput and CPU per GB.

use std::io;
use std::time::{Duration, Instant};

/// The variable that chooses the workers' priority: `rt` (the default),
/// a nice value in −20..=19, or `off` to leave the priority alone. Read
/// once by `main.rs` into `RouterConfig`.
pub const PRIORITY_ENV: &str = "WEFT_WORKER_PRIORITY";

/// The nice value of a worker that is not (or may not be) real-time.
pub const FALLBACK_NICE: i32 = -10;

/// How long a real-time worker may work without finding its queues empty
/// before it steps down. Softirq's 2 ms was tried: under a bulk transfer
/// workers stepped down all the time, and a stepped-down worker's flows then
/// waited behind the other, still real-time, workers (ping p99 20.8 ms).
/// With 50 ms no worker stepped down in the saturated bench; a flood still
/// gets the node back within 50 ms.
pub const BUSY_LIMIT: Duration = Duration::from_millis(50);

/// What the workers ask the scheduler for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// `SCHED_FIFO` priority 1 while not saturated, nice −10 otherwise.
    Realtime,
    /// An ordinary thread at this nice value.
    Nice(i32),
    /// Whatever the router process has.
    Unchanged,
}

impl Priority {
    /// The priority from the value of `WEFT_WORKER_PRIORITY` (`None` when
    /// unset); an unparsable value is an error naming the variable.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        let Some(value) = value.map(str::trim) else {
            return Ok(Self::Realtime);
        };
        match value {
            "rt" | "realtime" => Ok(Self::Realtime),
            "" | "off" | "none" => Ok(Self::Unchanged),
            _ => match value.parse::<i32>() {
                Ok(n) if (-20..=19).contains(&n) => Ok(Self::Nice(n)),
                _ => Err(format!(
                    "{PRIORITY_ENV}={value:?} is not \"rt\", a nice value in -20..=19, or \"off\""
                )),
            },
        }
    }

    /// The priority for a value of `WEFT_WORKER_PRIORITY`; an invalid
    /// value is logged and the default used (the router still starts).
    pub fn parse_or_default(value: Option<&str>) -> Self {
        Self::parse(value).unwrap_or_else(|e| {
            tracing::warn!("{e}; using rt");
            Self::Realtime
        })
    }
}

/// Puts the calling thread in the real-time class at the lowest priority.
pub fn enter_realtime() -> io::Result<()> {
    super::sys::set_thread_fifo(1)
}

/// Puts the calling thread back in the ordinary class at `nice`.
pub fn leave_realtime(nice: i32) -> io::Result<()> {
    super::sys::set_thread_normal()?;
    super::sys::set_thread_nice(nice)
}

/// Sets the calling thread's nice value.
pub fn set_nice(nice: i32) -> io::Result<()> {
    super::sys::set_thread_nice(nice)
}

/// What a worker should do with its scheduling class after a loop turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing changes.
    Stay,
    /// Busy for `BUSY_LIMIT` without a break: leave the real-time class.
    StepDown,
    /// Found the queues empty after stepping down: return to it.
    StepUp,
}

/// Sans-IO: watches one real-time worker's busy stretches.
#[derive(Debug, Default)]
pub struct BusyGuard {
    busy_since: Option<Instant>,
    stepped_down: bool,
}

impl BusyGuard {
    /// Records one loop turn: `idle` if it found both queues empty.
    pub fn on_turn(&mut self, idle: bool, now: Instant) -> Step {
        if idle {
            self.busy_since = None;
            if std::mem::take(&mut self.stepped_down) {
                return Step::StepUp;
            }
            return Step::Stay;
        }
        let since = *self.busy_since.get_or_insert(now);
        if !self.stepped_down && now.saturating_duration_since(since) >= BUSY_LIMIT {
            self.stepped_down = true;
            return Step::StepDown;
        }
        Step::Stay
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unset_means_realtime_and_off_leaves_the_priority_alone() {
        assert_eq!(Priority::parse(None), Ok(Priority::Realtime));
        assert_eq!(Priority::parse(Some("rt")), Ok(Priority::Realtime));
        assert_eq!(Priority::parse(Some("off")), Ok(Priority::Unchanged));
        assert_eq!(Priority::parse(Some("")), Ok(Priority::Unchanged));
        assert_eq!(Priority::parse(Some(" -5 ")), Ok(Priority::Nice(-5)));
        assert_eq!(Priority::parse(Some("0")), Ok(Priority::Nice(0)));
    }

    #[test]
    fn out_of_range_or_garbage_is_an_error_naming_the_variable() {
        for bad in ["-21", "20", "fast", "1e3", "fifo"] {
            let e = Priority::parse(Some(bad)).unwrap_err();
            assert!(e.contains(PRIORITY_ENV), "{e}");
        }
    }

    #[test]
    fn a_worker_that_finds_its_queues_empty_in_time_stays_realtime() {
        let t0 = Instant::now();
        let mut g = BusyGuard::default();
        for i in 0..1000u32 {
            let now = t0 + BUSY_LIMIT * i / 4;
            assert_eq!(g.on_turn(i % 4 == 3, now), Step::Stay, "turn {i}");
        }
    }

    #[test]
    fn a_worker_busy_past_the_limit_steps_down_once_and_up_when_idle() {
        let t0 = Instant::now();
        let mut g = BusyGuard::default();
        assert_eq!(g.on_turn(false, t0), Step::Stay);
        assert_eq!(g.on_turn(false, t0 + BUSY_LIMIT / 2), Step::Stay);
        assert_eq!(g.on_turn(false, t0 + BUSY_LIMIT), Step::StepDown);
        for i in 1..100u32 {
            assert_eq!(g.on_turn(false, t0 + BUSY_LIMIT * (i + 1)), Step::Stay);
        }
        assert_eq!(g.on_turn(true, t0 + BUSY_LIMIT * 200), Step::StepUp);
        assert_eq!(g.on_turn(true, t0 + BUSY_LIMIT * 201), Step::Stay);
        // A new busy stretch is timed from its own start.
        let t1 = t0 + BUSY_LIMIT * 300;
        assert_eq!(g.on_turn(false, t1), Step::Stay);
        assert_eq!(g.on_turn(false, t1 + BUSY_LIMIT / 2), Step::Stay);
        assert_eq!(g.on_turn(false, t1 + BUSY_LIMIT), Step::StepDown);
    }
}
