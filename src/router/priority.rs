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
//! or its pods. A pulsed flood (busy just under [`BUSY_LIMIT`], a short
//! break, again) would pass that test forever, so real-time work is also
//! budgeted per second: past [`RT_BUDGET`] of busy time in one
//! [`RT_WINDOW`], a worker steps down until the window ends and it finds
//! its queues empty. Where the real-time class is refused (no `CAP_SYS_NICE`, or
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

/// Busy time a worker may spend in the real-time class per [`RT_WINDOW`]:
/// half a CPU. The kernel's own throttle (`sched_rt_runtime_us`, 95 % of all
/// CPUs) would leave a 2-CPU node almost nothing; a legitimate transfer
/// keeps each of several workers well under half (its turns find the
/// queues empty between bursts).
pub const RT_BUDGET: Duration = Duration::from_millis(500);
/// The window [`RT_BUDGET`] is counted over.
pub const RT_WINDOW: Duration = Duration::from_secs(1);

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
    /// Busy for `BUSY_LIMIT` without a break, or past `RT_BUDGET` in this
    /// window: leave the real-time class.
    StepDown,
    /// Found the queues empty after stepping down: return to it.
    StepUp,
}

/// Sans-IO: watches one real-time worker's busy stretches and its busy
/// time per [`RT_WINDOW`] (`now` comes in; a test drives it with a fake clock).
#[derive(Debug, Default)]
pub struct BusyGuard {
    busy_since: Option<Instant>,
    stepped_down: bool,
    /// The last turn, if it found work: the time since was spent working.
    last_busy_turn: Option<Instant>,
    window_start: Option<Instant>,
    /// Real-time busy time in the current window.
    used: Duration,
}

impl BusyGuard {
    /// Records one loop turn: `idle` if it found both queues empty.
    pub fn on_turn(&mut self, idle: bool, now: Instant) -> Step {
        if let Some(previous) = self.last_busy_turn.take()
            && !self.stepped_down
        {
            self.used += now.saturating_duration_since(previous);
        }
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= RT_WINDOW {
            self.window_start = Some(now);
            self.used = Duration::ZERO;
        }
        let over_budget = self.used >= RT_BUDGET;
        if idle {
            self.busy_since = None;
            if self.stepped_down && !over_budget {
                self.stepped_down = false;
                return Step::StepUp;
            }
            return Step::Stay;
        }
        self.last_busy_turn = Some(now);
        let since = *self.busy_since.get_or_insert(now);
        let stretch = now.saturating_duration_since(since) >= BUSY_LIMIT;
        if !self.stepped_down && (stretch || over_budget) {
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
        // Busy 2 turns of every 5 (40 %), breaks every 25 ms, for 12.5 s.
        for i in 0..1000u32 {
            let now = t0 + BUSY_LIMIT * i / 4;
            assert_eq!(g.on_turn(i % 5 >= 2, now), Step::Stay, "turn {i}");
        }
    }

    /// Drives `g` with turns `tick` apart: busy for `busy` of every
    /// `period`, idle for the rest, from `t0` for `turns` turns; returns
    /// each step with the time it came.
    fn pulse(
        g: &mut BusyGuard,
        t0: Instant,
        tick: Duration,
        busy: u32,
        period: u32,
        turns: u32,
    ) -> Vec<(Duration, Step)> {
        (0..turns)
            .map(|i| (tick * i, g.on_turn(i % period >= busy, t0 + tick * i)))
            .filter(|(_, step)| *step != Step::Stay)
            .collect()
    }

    #[test]
    fn a_pulsed_flood_under_the_burst_limit_is_held_to_the_per_second_budget() {
        let t0 = Instant::now();
        let mut g = BusyGuard::default();
        // 1 ms turns: busy 45 ms (under BUSY_LIMIT), idle 1 ms, for 10 s.
        let tick = Duration::from_millis(1);
        let steps = pulse(&mut g, t0, tick, 45, 46, 10_000);
        assert!(!steps.is_empty(), "the flood kept the worker real-time");
        // Real-time time per window: up to the budget, then out until the
        // window ends.
        let mut latest_in_window = Duration::ZERO;
        let mut down_at = None;
        for (at, step) in &steps {
            match step {
                Step::StepDown => {
                    assert!(down_at.is_none());
                    down_at = Some(*at);
                }
                Step::StepUp => {
                    let down = down_at.take().unwrap();
                    assert!(
                        *at - down >= RT_WINDOW - RT_BUDGET - BUSY_LIMIT,
                        "{steps:?}"
                    );
                }
                Step::Stay => unreachable!(),
            }
        }
        let downs = steps.iter().filter(|(_, s)| *s == Step::StepDown).count();
        assert!(downs >= 9, "about once a second over 10 s: {steps:?}");
        // Each down came once the budget was spent: at most ~0.5 s after
        // the window it belongs to started.
        for (at, step) in &steps {
            if *step == Step::StepDown {
                let into_window = at.as_millis() % RT_WINDOW.as_millis();
                latest_in_window = latest_in_window.max(Duration::from_millis(into_window as u64));
            }
        }
        assert!(latest_in_window <= RT_BUDGET + RT_BUDGET / 10, "{steps:?}");
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
