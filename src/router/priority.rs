//! CPU priority of the data-plane workers (DESIGN.md "The fast data path":
//! RTT under load).
//!
//! Measured (docs/DATAPATH.md "Queues and latency"): under a bulk transfer
//! on a busy 2-CPU node, most of a ping's delay was not bytes queued in the
//! TUN ring or the UDP socket but the run queue: a woken worker waited for
//! a CPU behind the transfer's own endpoints and every other nice-0 task,
//! on both legs, even on the ACK-only return leg. The kernel's own tunnels
//! (VXLAN, WireGuard) run in softirq context, ahead of every task; a
//! userspace data plane at nice 0 instead gets one fair share per thread.
//! Raising the workers to nice −10 (weight ≈ 9.3× a nice-0 task, still
//! proportional sharing, unlike a real-time class that a saturated data
//! plane could use to starve the node) halved ping under load in the same
//! run. It needs `CAP_SYS_NICE` (or root); without it the workers run at
//! the default priority and the router says so once.

use std::io;

/// The variable that overrides the workers' nice value: an integer in
/// −20..=19, or `off` to leave the priority alone.
pub const NICE_ENV: &str = "WEFT_WORKER_NICE";

/// The workers' nice value when `WEFT_WORKER_NICE` is not set.
pub const DEFAULT_NICE: i32 = -10;

/// The nice value the workers should take, from the value of
/// `WEFT_WORKER_NICE` (`None` when unset): `Ok(None)` leaves the priority
/// alone; an unparsable or out-of-range value is an error naming it.
pub fn parse_nice(value: Option<&str>) -> Result<Option<i32>, String> {
    let Some(value) = value.map(str::trim) else {
        return Ok(Some(DEFAULT_NICE));
    };
    if matches!(value, "" | "off" | "none") {
        return Ok(None);
    }
    match value.parse::<i32>() {
        Ok(n) if (-20..=19).contains(&n) => Ok(Some(n)),
        _ => Err(format!(
            "{NICE_ENV}={value:?} is not a nice value in -20..=19 or \"off\""
        )),
    }
}

/// The workers' nice value from the environment; an invalid value is
/// logged and the default used.
pub fn nice_from_env() -> Option<i32> {
    let value = std::env::var(NICE_ENV).ok();
    parse_nice(value.as_deref()).unwrap_or_else(|e| {
        tracing::warn!("{e}; using {DEFAULT_NICE}");
        Some(DEFAULT_NICE)
    })
}

/// Sets the calling thread's nice value.
pub fn apply_to_current_thread(nice: i32) -> io::Result<()> {
    super::sys::set_thread_nice(nice)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unset_means_the_default_and_off_leaves_the_priority_alone() {
        assert_eq!(parse_nice(None), Ok(Some(DEFAULT_NICE)));
        assert_eq!(parse_nice(Some("off")), Ok(None));
        assert_eq!(parse_nice(Some("")), Ok(None));
        assert_eq!(parse_nice(Some(" -5 ")), Ok(Some(-5)));
        assert_eq!(parse_nice(Some("0")), Ok(Some(0)));
    }

    #[test]
    fn out_of_range_or_garbage_is_an_error_naming_the_variable() {
        for bad in ["-21", "20", "fast", "1e3"] {
            let e = parse_nice(Some(bad)).unwrap_err();
            assert!(e.contains(NICE_ENV), "{e}");
        }
    }
}
