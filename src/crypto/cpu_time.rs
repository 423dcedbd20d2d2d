//! CPU time per operation, for the `#[ignore]`d cost tests (signing, data
//! keys, topology entries): this thread's utime + stime from /proc, so a
//! figure holds on a machine other builds are loading. Test-only.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

/// This thread's CPU time so far (10 ms ticks: run long enough for them).
pub(crate) fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the parenthesised command name: utime and stime are the
    // 14th and 15th fields overall.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let ticks: u64 = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse::<u64>().unwrap())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Runs `op` `n` times; CPU nanoseconds per run.
pub(crate) fn cpu_ns_per_op(n: u32, mut op: impl FnMut()) -> u128 {
    let start = thread_cpu();
    for _ in 0..n {
        op();
    }
    (thread_cpu() - start).as_nanos() / u128::from(n)
}
