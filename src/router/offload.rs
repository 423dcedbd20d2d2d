//! Which fast path the data plane runs, decided once at start from what the
//! kernel accepted, shown in status (`offload`) and metrics, and logged once
//! (DESIGN.md "The fast data path": no silent downgrade). GSO can still be
//! turned off at run time by a send that fails with EIO.

use super::tun::TunQueues;
use super::udp::UdpOffload;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable that selects the plain path (tests, debugging,
/// kernels whose offloads misbehave); read once by `main.rs`.
pub const DISABLE_ENV: &str = "WEFT_DISABLE_OFFLOAD";

/// Whether a value of `WEFT_DISABLE_OFFLOAD` asks for the plain path (set,
/// and anything but empty, `0` or `false`).
pub fn disabled_by(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v, "" | "0" | "false"))
}

/// The data plane's offload state, shared by the workers.
#[derive(Debug)]
pub struct OffloadState {
    /// TUN reads and writes carry a virtio header; TSO and checksum on.
    pub tun: bool,
    /// The TUN also does USO.
    pub uso: bool,
    /// UDP GRO on the worker sockets.
    pub gro: bool,
    gso: AtomicBool,
    reasons: Mutex<Vec<String>>,
}

impl OffloadState {
    /// The state after opening the TUN and the sockets.
    pub fn new(tun: &TunQueues, udp: &UdpOffload) -> Self {
        let reasons = tun
            .reason
            .iter()
            .chain(udp.reason.iter())
            .cloned()
            .collect();
        let disabled = !tun.vnet && !udp.gso && !udp.gro;
        Self {
            tun: tun.vnet,
            uso: tun.uso,
            gro: udp.gro && !disabled,
            gso: AtomicBool::new(udp.gso),
            reasons: Mutex::new(reasons),
        }
    }

    /// A state with everything off, for `reason`.
    pub fn none(reason: &str) -> Self {
        Self {
            tun: false,
            uso: false,
            gro: false,
            gso: AtomicBool::new(false),
            reasons: Mutex::new(vec![reason.to_string()]),
        }
    }

    /// Whether sends may use UDP GSO.
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Turns GSO off after the kernel refused a GSO send with EIO; logs
    /// once (the first worker to see it).
    pub fn disable_gso(&self, why: &str) {
        if self.gso.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                reason = why,
                "UDP GSO send failed; sending one datagram per segment from now on"
            );
            if let Ok(mut r) = self.reasons.lock() {
                r.push(format!("gso off: {why}"));
            }
        }
    }

    /// `tso+gso+gro`, the parts in force joined by `+`, `none` when none;
    /// followed by the reasons for what is off, in parentheses.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.tun {
            parts.push(if self.uso { "tso+uso" } else { "tso" });
        }
        if self.gso() {
            parts.push("gso");
        }
        if self.gro {
            parts.push("gro");
        }
        let mut s = if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join("+")
        };
        let reasons = self
            .reasons
            .lock()
            .map(|r| r.join("; "))
            .unwrap_or_default();
        if !reasons.is_empty() {
            s.push_str(&format!(" ({reasons})"));
        }
        s
    }

    /// Says once, at start, which path is active.
    pub fn log_once(&self) {
        let path = self.describe();
        if self.tun && self.gso() && self.gro {
            tracing::info!(offload = %path, "data plane: fast path (TUN offload, UDP GSO/GRO)");
        } else {
            tracing::warn!(offload = %path, "data plane: offload partly or wholly off; plain path in use where off");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(vnet: bool, gso: bool, gro: bool, reason: Option<&str>) -> OffloadState {
        let tun = TunQueues {
            queues: Vec::new(),
            multi_queue: true,
            vnet,
            uso: vnet,
            reason: reason.map(str::to_string),
        };
        let udp = UdpOffload {
            gso,
            gro,
            reason: None,
        };
        OffloadState::new(&tun, &udp)
    }

    #[test]
    fn only_a_set_value_other_than_empty_zero_or_false_disables_offload() {
        assert!(!disabled_by(None));
        for off in ["", "0", "false"] {
            assert!(!disabled_by(Some(off)), "{off:?}");
        }
        for on in ["1", "true", "yes"] {
            assert!(disabled_by(Some(on)), "{on:?}");
        }
    }

    #[test]
    fn status_names_the_active_path_and_why_the_rest_is_off() {
        assert_eq!(state(true, true, true, None).describe(), "tso+uso+gso+gro");
        let off = state(
            false,
            false,
            false,
            Some("disabled by WEFT_DISABLE_OFFLOAD"),
        );
        assert_eq!(off.describe(), "none (disabled by WEFT_DISABLE_OFFLOAD)");
        let s = state(true, true, true, None);
        s.disable_gso("EIO");
        s.disable_gso("EIO");
        assert_eq!(s.describe(), "tso+uso+gro (gso off: EIO)");
    }
}
