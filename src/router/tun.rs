//! The TUN device: `weft0`, one queue per worker (IFF_MULTI_QUEUE) so the
//! kernel keeps each flow on one queue, and persistent so a router restart
//! does not take the pod routes through it down.
//!
//! Why not only `tun-tap`: the mandated crate opens a single queue and cannot
//! set IFF_MULTI_QUEUE, TUNSETPERSIST, IFF_VNET_HDR or TUNSETOFFLOAD, all of
//! which the data plane needs (docs/ARCHITECTURE.md). It remains the fallback
//! when the kernel refuses a multi-queue device.

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
}

/// Opens `count` queues of the TUN device `name` and makes it persistent.
pub fn open(name: &str, count: usize) -> io::Result<TunQueues> {
    let mut queues = Vec::with_capacity(count);
    match sys::open_tun_queue(name, true) {
        Ok(first) => queues.push(first),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                iface = name,
                "kernel refused a multi-queue TUN; using one queue"
            );
            let iface = tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tun)?;
            let file = sys::file_from_tun_tap(iface);
            sys::make_nonblocking(&file)?;
            sys::set_tun_persist(&file, true)?;
            return Ok(TunQueues {
                queues: vec![file],
                multi_queue: false,
            });
        }
        Err(e) => return Err(e),
    }
    for _ in 1..count {
        queues.push(sys::open_tun_queue(name, true)?);
    }
    sys::set_tun_persist(&queues[0], true)?;
    Ok(TunQueues {
        queues,
        multi_queue: true,
    })
}
