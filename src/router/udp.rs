//! The UDP side of the data plane: one reuseport group on the listen
//! address, one socket per worker plus one for the control task, steered by
//! lane so that each lane's replay window has exactly one owner. Worker
//! sockets get UDP GRO when asked for, and we probe UDP_SEGMENT (GSO on
//! send) once.

use super::packet::{CONTROL_LANE, LANE_OFFSET};
use super::sys;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;

/// Socket buffer size: the default 208 KB overflows at once under load
/// (DESIGN.md "The fast data path"), but every byte queued here is latency
/// for everyone on the lane: 4 MB is under 7 ms at 5 Gbit/s.
const SOCKET_BUFFER: i32 = 4 << 20;

/// Which UDP offloads the worker sockets have.
#[derive(Clone, Debug, Default)]
pub struct UdpOffload {
    /// UDP_SEGMENT works (GSO on send).
    pub gso: bool,
    /// UDP_GRO is on (trains on receive).
    pub gro: bool,
    /// Why one is off, when asked for.
    pub reason: Option<String>,
}

/// Binds `workers` data sockets and, last, the control socket, all on
/// `listen`, and attaches the lane-steering program. Returns
/// `(worker sockets, control socket, offloads)`, all non-blocking. With
/// `offload`, turns on UDP GRO on the worker sockets and probes GSO.
pub fn bind_group(
    listen: SocketAddr,
    workers: usize,
    offload: bool,
) -> io::Result<(Vec<UdpSocket>, UdpSocket, UdpOffload)> {
    let mut offloads = UdpOffload {
        gso: offload,
        gro: offload,
        reason: None,
    };
    let mut sockets = Vec::with_capacity(workers + 1);
    for _ in 0..=workers {
        let socket = Socket::new(
            Domain::for_address(listen),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        if listen.is_ipv6() && listen.ip().is_unspecified() {
            // `[::]` serves both families whatever net.ipv6.bindv6only says.
            socket.set_only_v6(false)?;
        }
        sys::force_buffers(socket.as_fd(), SOCKET_BUFFER)?;
        // Every socket, not only the control one whose full-size probes
        // measure the path: a data datagram over the path MTU is refused
        // (EMSGSIZE, counted `too_big`) rather than fragmented (IPv6
        // fragments are dropped on many paths, silently; DESIGN.md "MTU").
        sys::set_dont_fragment(socket.as_fd(), listen.is_ipv6())?;
        socket.bind(&listen.into())?;
        if sockets.is_empty() {
            sys::attach_lane_steering(socket.as_fd(), workers as u32, LANE_OFFSET, CONTROL_LANE)?;
        }
        if sockets.len() < workers {
            if offloads.gso
                && let Err(e) = sys::probe_udp_segment(socket.as_fd())
            {
                offloads.gso = false;
                offloads.reason = Some(format!("UDP_SEGMENT refused: {e}"));
            }
            if offloads.gro
                && let Err(e) = sys::enable_udp_gro(socket.as_fd())
            {
                offloads.gro = false;
                offloads.reason = Some(format!("UDP_GRO refused: {e}"));
            }
        }
        sockets.push(UdpSocket::from(socket));
    }
    let control = sockets
        .pop()
        .ok_or_else(|| io::Error::other("no control socket"))?;
    Ok((sockets, control, offloads))
}
