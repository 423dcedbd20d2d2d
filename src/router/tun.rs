//! The TUN device: `weft0`, one queue per worker (IFF_MULTI_QUEUE) so the
//! kernel keeps each flow on one queue, persistent so a router restart does
//! not take the pod routes through it down, and, when the kernel allows it,
//! with the virtio-net header and offloads (TSO/USO/checksum) so reads hand
//! us 64 KB super-packets and writes take coalesced ones (DESIGN.md "The
//! fast data path").
//!
//! Why not only `tun-tap`: the mandated crate opens a single queue and cannot
//! set IFF_MULTI_QUEUE, TUNSETPERSIST, IFF_VNET_HDR or TUNSETOFFLOAD, all of
//! which the data plane needs (docs/DATAPATH.md). Our own ioctls live in
//! `sys.rs`; `tun-rs` would do the same but brings its own device model and
//! async layer we do not use. tun-tap remains the fallback when the kernel
//! refuses a multi-queue device.

use super::sys;
use std::fs::File;
use std::io;

/// The opened queues and how they were opened.
pub struct TunQueues {
    /// One non-blocking queue per worker.
    pub queues: Vec<File>,
    /// False when the kernel refused IFF_MULTI_QUEUE and tun-tap's single
    /// queue is in use.
    pub multi_queue: bool,
    /// Every read and write carries a virtio-net header, and the device has
    /// TSO/checksum offload on.
    pub vnet: bool,
    /// USO (UDP segmentation offload) is on as well.
    pub uso: bool,
    /// Why offload is off, when it is.
    pub reason: Option<String>,
}

/// TUN ring entries on the fast path. Long enough for a burst of fragments
/// (a 64 KB UDP datagram is 47 of them; 8 entries lost them), short enough
/// that a full ring of 64 KB super-packets is bounded (8 MB instead of the
/// default 500 entries' 32 MB). What keeps TCP from filling it is the
/// standing-queue guard in `aqm` (measured: 500 entries without it gave
/// 10-35 ms ping under load; docs/DATAPATH.md).
const OFFLOAD_TXQUEUELEN: i32 = 128;
/// The kernel's default, restored on the plain path (entries are single
/// packets there).
const PLAIN_TXQUEUELEN: i32 = 500;

const FULL: u32 =
    sys::TUN_F_CSUM | sys::TUN_F_TSO4 | sys::TUN_F_TSO6 | sys::TUN_F_USO4 | sys::TUN_F_USO6;
const NO_USO: u32 = sys::TUN_F_CSUM | sys::TUN_F_TSO4 | sys::TUN_F_TSO6;

/// Opens `count` queues of the TUN device `name` and makes it persistent.
/// With `offload`, asks for the virtio header and offloads and falls back
/// to the plain device (saying why in `reason`) if the kernel refuses;
/// `txqueuelen` overrides the offload path's queue length
/// (`WEFT_TUN_TXQUEUELEN`, read by `main.rs`).
pub fn open(
    name: &str,
    count: usize,
    offload: bool,
    txqueuelen: Option<i32>,
) -> io::Result<TunQueues> {
    if offload {
        match open_queues(name, count, true) {
            Ok(Some(queues)) => {
                let first = &queues[0];
                let uso = match sys::set_tun_offload(first, FULL) {
                    Ok(()) => Some(true),
                    Err(_) => sys::set_tun_offload(first, NO_USO).ok().map(|()| false),
                };
                if let Some(uso) = uso {
                    sys::set_tun_persist(first, true)?;
                    let qlen = txqueuelen.unwrap_or(OFFLOAD_TXQUEUELEN);
                    if let Err(e) = sys::set_txqueuelen(name, qlen) {
                        tracing::warn!(iface = name, error = %e, "cannot shorten the TUN queue; expect more latency under load");
                    }
                    return Ok(TunQueues {
                        queues,
                        multi_queue: true,
                        vnet: true,
                        uso,
                        reason: None,
                    });
                }
                drop(queues);
                return plain(name, count, Some("TUNSETOFFLOAD refused".into()));
            }
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return plain(name, count, Some(format!("IFF_VNET_HDR refused: {e}")));
            }
            Err(e) => return Err(e),
        }
        // Multi-queue refused: the single-queue fallback is plain.
        return plain(name, count, Some("no multi-queue TUN".into()));
    }
    plain(name, count, Some("disabled by WEFT_DISABLE_OFFLOAD".into()))
}

/// Opens the queues; `Ok(None)` when the kernel refuses multi-queue.
fn open_queues(name: &str, count: usize, vnet: bool) -> io::Result<Option<Vec<File>>> {
    let mut queues = Vec::with_capacity(count);
    match sys::open_tun_queue(name, true, vnet) {
        Ok(first) => queues.push(first),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !vnet => return Ok(None),
        Err(e) => return Err(e),
    }
    for _ in 1..count {
        queues.push(sys::open_tun_queue(name, true, vnet)?);
    }
    Ok(Some(queues))
}

fn plain(name: &str, count: usize, reason: Option<String>) -> io::Result<TunQueues> {
    if let Some(queues) = open_queues(name, count, false)? {
        // The offload flags outlive us on a persistent device: a reader
        // without the virtio header must turn them off, or the kernel would
        // hand it 64 KB packets it cannot tell from ordinary ones.
        let _ = sys::set_tun_offload(&queues[0], 0);
        sys::set_tun_persist(&queues[0], true)?;
        let _ = sys::set_txqueuelen(name, PLAIN_TXQUEUELEN);
        return Ok(TunQueues {
            queues,
            multi_queue: true,
            vnet: false,
            uso: false,
            reason,
        });
    }
    tracing::warn!(
        iface = name,
        "kernel refused a multi-queue TUN; using one queue"
    );
    let iface = tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tun)?;
    let file = sys::file_from_tun_tap(iface);
    sys::make_nonblocking(&file)?;
    let _ = sys::set_tun_offload(&file, 0);
    sys::set_tun_persist(&file, true)?;
    Ok(TunQueues {
        queues: vec![file],
        multi_queue: false,
        vnet: false,
        uso: false,
        reason: reason.or(Some("no multi-queue TUN".into())),
    })
}
