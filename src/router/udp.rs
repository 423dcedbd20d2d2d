//! The UDP side of the data plane: one reuseport group on the listen
//! address, one socket per worker plus one for the control task, steered by
//! lane so that each lane's replay window has exactly one owner.

use super::packet::{CONTROL_LANE, LANE_OFFSET};
use super::sys;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;

/// Socket buffer size: the default 208 KB overflows at once under load
/// (DESIGN.md "The fast data path").
const SOCKET_BUFFER: i32 = 8 << 20;

/// Binds `workers` data sockets and, last, the control socket, all on
/// `listen`, and attaches the lane-steering program. Returns
/// `(worker sockets, control socket)`, all non-blocking.
pub fn bind_group(listen: SocketAddr, workers: usize) -> io::Result<(Vec<UdpSocket>, UdpSocket)> {
    let mut sockets = Vec::with_capacity(workers + 1);
    for _ in 0..=workers {
        let socket = Socket::new(
            Domain::for_address(listen),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        sys::force_buffers(socket.as_fd(), SOCKET_BUFFER)?;
        socket.bind(&listen.into())?;
        if sockets.is_empty() {
            sys::attach_lane_steering(socket.as_fd(), workers as u32, LANE_OFFSET, CONTROL_LANE)?;
        }
        sockets.push(UdpSocket::from(socket));
    }
    let control = sockets
        .pop()
        .ok_or_else(|| io::Error::other("no control socket"))?;
    if listen.is_ipv4() {
        sys::set_dont_fragment(control.as_fd())?;
    }
    Ok((sockets, control))
}
