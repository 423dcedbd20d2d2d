//! The send side's batch: sealed datagrams laid out back to back in one
//! per-worker arena, grouped into UDP GSO messages (equal-size datagrams to
//! one endpoint, the last may be shorter; at most 64 segments and 64 KB per
//! message) and sent with one `sendmmsg` (DESIGN.md "The fast data path").
//! Each segment stays an independent datagram on the wire: a lost one costs
//! one segment.
//!
//! Backpressure: a full socket buffer makes the flush wait (briefly) for
//! room instead of dropping, so the TUN queue fills and the kernel's own
//! queue discipline pushes back on the senders; queues inside the router
//! stay bounded by the arena (`ARENA_LEN`), which bounds added latency.

use super::offload::OffloadState;
use super::stats::{DropReason, WorkerStats};
use super::sys::{self, MAX_BATCH, SendMsg};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

/// Bytes of sealed datagrams a worker holds before it must send.
pub const ARENA_LEN: usize = 256 * 1024;
/// Most bytes in one GSO message (the UDP length field, minus headroom).
const GSO_MAX_BYTES: usize = 65_000;
/// Most segments in one GSO message (the kernel's UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// How long a flush waits in total for send-buffer room before dropping.
const SEND_WAIT_ROUNDS: usize = 20;

#[derive(Clone, Copy, Debug)]
struct Group {
    addr: SocketAddr,
    start: usize,
    total: usize,
    seg: usize,
    count: usize,
    closed: bool,
}

/// The arena and its message groups.
pub struct SendBatch {
    buf: Box<[u8]>,
    used: usize,
    groups: Vec<Group>,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    /// An empty batch with its arena allocated once.
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; ARENA_LEN].into_boxed_slice(),
            used: 0,
            groups: Vec::with_capacity(MAX_BATCH),
        }
    }

    /// Whether `len` more bytes fit without a flush.
    pub fn has_room(&self, len: usize) -> bool {
        self.used + len <= self.buf.len() && self.groups.len() < MAX_BATCH
    }

    /// The free tail of the arena, where the next datagram is written.
    pub fn tail(&mut self) -> &mut [u8] {
        &mut self.buf[self.used..]
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Commits the `len` bytes written at the start of [`Self::tail`] as one
    /// datagram to `addr`, joining the last message when GSO allows.
    pub fn commit(&mut self, addr: SocketAddr, len: usize, gso: bool) {
        let start = self.used;
        self.used += len;
        if gso && let Some(g) = self.groups.last_mut() {
            let fits = g.addr == addr
                && !g.closed
                && g.start + g.total == start
                && g.count < GSO_MAX_SEGMENTS
                && g.total + len <= GSO_MAX_BYTES
                && len <= g.seg;
            if fits {
                g.total += len;
                g.count += 1;
                g.closed = len < g.seg;
                return;
            }
        }
        self.groups.push(Group {
            addr,
            start,
            total: len,
            seg: len,
            count: 1,
            closed: false,
        });
    }

    /// Sends everything with as few `sendmmsg` calls as it takes and empties
    /// the batch. Failures are counted on `stats`; EIO on a GSO message turns
    /// GSO off in `offload` and resends that message's datagrams one by one.
    pub fn flush(&mut self, socket: BorrowedFd<'_>, stats: &WorkerStats, offload: &OffloadState) {
        let mut next = 0;
        let mut waits = 0;
        while next < self.groups.len() {
            let mut list = [SendMsg {
                addr: self.groups[next].addr,
                data: &[],
                segment: 0,
            }; MAX_BATCH];
            let n = (self.groups.len() - next).min(MAX_BATCH);
            for (slot, g) in list.iter_mut().zip(&self.groups[next..next + n]) {
                *slot = SendMsg {
                    addr: g.addr,
                    data: &self.buf[g.start..g.start + g.total],
                    segment: if g.count > 1 { g.seg as u16 } else { 0 },
                };
            }
            match sys::send_mmsg(socket, &list[..n]) {
                Ok(sent) => next += sent.max(1),
                Err(e) if e.kind() == ErrorKind::WouldBlock && waits < SEND_WAIT_ROUNDS => {
                    waits += 1;
                    sys::wait_writable(socket, 5);
                }
                Err(e) => {
                    let g = self.groups[next];
                    if e.raw_os_error() == Some(libc::EIO) && g.count > 1 {
                        offload.disable_gso("EIO on a UDP_SEGMENT send");
                        self.resend_one_by_one(socket, stats, g);
                    } else if e.raw_os_error() == Some(libc::EMSGSIZE) {
                        for _ in 0..g.count {
                            stats.count_drop(DropReason::TooBig);
                        }
                    } else {
                        for _ in 0..g.count {
                            stats.count_drop(DropReason::IoError);
                        }
                    }
                    next += 1;
                }
            }
        }
        self.groups.clear();
        self.used = 0;
    }

    fn resend_one_by_one(&self, socket: BorrowedFd<'_>, stats: &WorkerStats, g: Group) {
        let mut at = g.start;
        let end = g.start + g.total;
        while at < end {
            let len = g.seg.min(end - at);
            let msg = SendMsg {
                addr: g.addr,
                data: &self.buf[at..at + len],
                segment: 0,
            };
            if sys::send_mmsg(socket, &[msg]).is_err() {
                stats.count_drop(DropReason::IoError);
            }
            at += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn equal_datagrams_to_one_endpoint_share_a_message_and_a_short_one_ends_it() {
        let mut b = SendBatch::new();
        for len in [100, 100, 100, 40, 100] {
            b.commit(addr(1), len, true);
        }
        b.commit(addr(2), 100, true);
        let shape: Vec<(usize, usize)> = b.groups.iter().map(|g| (g.count, g.total)).collect();
        assert_eq!(shape, vec![(4, 340), (1, 100), (1, 100)]);
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_message() {
        let mut b = SendBatch::new();
        for _ in 0..3 {
            b.commit(addr(1), 100, false);
        }
        assert_eq!(b.groups.len(), 3);
    }

    #[test]
    fn a_message_holds_at_most_64_segments_and_64_kb() {
        let mut b = SendBatch::new();
        for _ in 0..70 {
            b.commit(addr(1), 100, true);
        }
        assert_eq!(b.groups[0].count, 64);
        let mut b = SendBatch::new();
        for _ in 0..50 {
            b.commit(addr(1), 1452, true);
        }
        assert!(b.groups[0].total <= GSO_MAX_BYTES);
        assert_eq!(b.groups[0].count, 44);
    }
}
