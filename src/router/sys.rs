//! The data plane's system calls that std and socket2 do not wrap: the TUN
//! ioctls, `poll(2)` over a worker's two file descriptors, and the reuseport
//! steering program. This is the only module of the crate allowed `unsafe`;
//! each block states why it is sound.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFNAMSIZ: usize = 16;

/// `struct ifreq` reduced to the name and the flags union member.
#[repr(C)]
struct IfReqFlags {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens one queue of the multi-queue TUN device `name` (created if absent).
/// Every call adds a queue; the kernel spreads flows over queues by hash.
pub(crate) fn open_tun_queue(name: &str, multi_queue: bool) -> io::Result<File> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1 to 15 bytes"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReqFlags {
        name: [0; IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    if multi_queue {
        req.flags |= IFF_MULTI_QUEUE;
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its
    // layout (name, then the flags member of the union, padded to 40 bytes)
    // and lives for the whole call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    set_nonblocking(file.as_raw_fd())?;
    Ok(file)
}

/// Marks the TUN device persistent, so that a router restart keeps `weft0`
/// and the routes through it (DESIGN.md "No loops, no leaks").
pub(crate) fn set_tun_persist(queue: &File, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument by value.
    let rc = unsafe {
        libc::ioctl(
            queue.as_raw_fd(),
            TUNSETPERSIST,
            libc::c_ulong::from(persist),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of the descriptor of a tun-tap queue.
pub(crate) fn file_from_tun_tap(iface: tun_tap::Iface) -> File {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let raw = iface.into_raw_fd();
    // SAFETY: `into_raw_fd` gave up ownership of a valid open descriptor,
    // which nothing else refers to.
    File::from(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn set_nonblocking(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no pointers involved.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `file` non-blocking.
pub(crate) fn make_nonblocking(file: &File) -> io::Result<()> {
    set_nonblocking(file.as_raw_fd())
}

/// Readiness of a worker's two descriptors after `poll2`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    pub(crate) first: bool,
    pub(crate) second: bool,
}

/// Waits until `first` or `second` is readable, or `timeout_ms` passes.
pub(crate) fn poll2(
    first: BorrowedFd<'_>,
    second: BorrowedFd<'_>,
    timeout_ms: i32,
) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd {
            fd: first.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: second.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a valid array of two pollfd structures for the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(Ready::default());
        }
        return Err(err);
    }
    let readable =
        |revents: libc::c_short| revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    Ok(Ready {
        first: readable(fds[0].revents),
        second: readable(fds[1].revents),
    })
}

/// Attaches the reuseport steering program to a socket of the group: a
/// datagram goes to the socket at index `lane % workers`, and the control
/// lane to index `workers` (the control task's socket, which joins last).
/// A datagram too short to hold the lane byte makes the program return 0.
pub(crate) fn attach_lane_steering(
    socket: BorrowedFd<'_>,
    workers: u32,
    lane_offset: u32,
    control_lane: u8,
) -> io::Result<()> {
    const BPF_LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const BPF_MOD_K: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
    const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const BPF_RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
    let insn = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut program = [
        // A = payload[lane_offset] (the payload starts after the UDP header here).
        insn(BPF_LD_B_ABS, 0, 0, lane_offset),
        // if A == control_lane: return workers
        insn(BPF_JEQ_K, 0, 1, u32::from(control_lane)),
        insn(BPF_RET_K, 0, 0, workers),
        // return A % workers
        insn(BPF_MOD_K, 0, 0, workers.max(1)),
        insn(BPF_RET_A, 0, 0, 0),
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: SO_ATTACH_REUSEPORT_CBPF copies the program described by a
    // valid `sock_fprog` whose filter array outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets SO_RCVBUFFORCE / SO_SNDBUFFORCE (root may exceed rmem_max), falling
/// back to the plain options when not permitted.
pub(crate) fn force_buffers(socket: BorrowedFd<'_>, bytes: i32) -> io::Result<()> {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let set = |opt: libc::c_int| {
            // SAFETY: the option value is a valid c_int for the call's duration.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &bytes as *const i32 as *const libc::c_void,
                    std::mem::size_of::<i32>() as libc::socklen_t,
                )
            }
        };
        if set(force) < 0 && set(plain) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets don't-fragment on an IPv4 UDP socket (IP_PMTUDISC_DO): a datagram
/// larger than the path MTU is refused instead of fragmented, so full-size
/// heartbeats prove the path carries full-size packets (DESIGN.md "MTU").
pub(crate) fn set_dont_fragment(socket: BorrowedFd<'_>) -> io::Result<()> {
    let value: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: the option value is a valid c_int for the call's duration.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
