//! The data plane's system calls that std and socket2 do not wrap: the TUN
//! ioctls (multi-queue, persist, virtio header, offloads), `poll(2)` over a
//! worker's two file descriptors, the reuseport steering program, the UDP
//! GSO/GRO socket options and `sendmmsg`/`recvmmsg` with their control
//! messages. This is the only module of the crate allowed `unsafe`;
//! each block states why it is sound.
#![allow(unsafe_code)]

mod mmsg;

pub(crate) use mmsg::{RecvMeta, SendMsg, recv_mmsg, send_mmsg, wait_writable};

use std::fs::{File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// TUNSETOFFLOAD flags: checksum offload, TSO for IPv4/IPv6, USO for IPv4/IPv6.
pub(crate) const TUN_F_CSUM: u32 = 0x01;
pub(crate) const TUN_F_TSO4: u32 = 0x02;
pub(crate) const TUN_F_TSO6: u32 = 0x04;
pub(crate) const TUN_F_USO4: u32 = 0x20;
pub(crate) const TUN_F_USO6: u32 = 0x40;
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most messages per `sendmmsg`/`recvmmsg` call.
pub(crate) const MAX_BATCH: usize = 64;
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
/// With `vnet_hdr`, every read and write carries a virtio-net header.
pub(crate) fn open_tun_queue(name: &str, multi_queue: bool, vnet_hdr: bool) -> io::Result<File> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1 to 15 bytes"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(tun_open_error)?;
    let mut req = IfReqFlags {
        name: [0; IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    if multi_queue {
        req.flags |= IFF_MULTI_QUEUE;
    }
    if vnet_hdr {
        req.flags |= IFF_VNET_HDR;
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

/// Says what to do when `/dev/net/tun` is missing. EPERM and EACCES keep
/// their OS code: the daemon turns them into one line that covers both
/// causes (no CAP_NET_ADMIN, or a runc 1.2.0 to 1.2.3 device cgroup without
/// tun; deploy/README.md, "/dev/net/tun").
fn tun_open_error(e: io::Error) -> io::Error {
    if e.raw_os_error() != Some(libc::ENOENT) {
        return e;
    }
    io::Error::new(
        e.kind(),
        format!(
            "cannot open /dev/net/tun ({e}): mount the host's /dev/net/tun (the DaemonSet's dev-net-tun volume) and load the tun module"
        ),
    )
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

/// Sets the TUN device's offloads (TUNSETOFFLOAD): which GSO packets the
/// kernel may hand us and accept from us. 0 turns them all off, which a
/// reader without the virtio header needs (the flags outlive the process on
/// a persistent device).
pub(crate) fn set_tun_offload(queue: &File, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes an unsigned integer argument by value.
    let rc = unsafe { libc::ioctl(queue.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
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

/// Puts the calling thread in `SCHED_FIFO` at `priority` (Linux schedules
/// threads, so 0 names the caller alone).
pub(crate) fn set_thread_fifo(priority: i32) -> io::Result<()> {
    set_thread_scheduler(libc::SCHED_FIFO, priority)
}

/// Puts the calling thread back in `SCHED_OTHER`.
pub(crate) fn set_thread_normal() -> io::Result<()> {
    set_thread_scheduler(libc::SCHED_OTHER, 0)
}

fn set_thread_scheduler(policy: libc::c_int, priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the duration of the call.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the calling thread's nice value (Linux keeps one per thread).
pub(crate) fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain integer arguments; PRIO_PROCESS with a thread ID names
    // that one thread on Linux.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
        setsockopt_int(socket, libc::SOL_SOCKET, force, bytes)
            .or_else(|_| setsockopt_int(socket, libc::SOL_SOCKET, plain, bytes))?;
    }
    Ok(())
}

/// Sets don't-fragment on a UDP socket (IP_PMTUDISC_DO, and on an IPv6
/// socket IPV6_PMTUDISC_DO plus the IPv4 option for the v4-mapped peers of
/// a dual-stack one): a datagram larger than the path MTU is refused
/// instead of fragmented, so full-size heartbeats prove the path carries
/// full-size packets (DESIGN.md "MTU").
pub(crate) fn set_dont_fragment(socket: BorrowedFd<'_>, ipv6: bool) -> io::Result<()> {
    if !ipv6 {
        return setsockopt_int(
            socket,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        );
    }
    setsockopt_int(
        socket,
        libc::IPPROTO_IPV6,
        libc::IPV6_MTU_DISCOVER,
        libc::IPV6_PMTUDISC_DO,
    )?;
    // Refused only on an IPv6-only socket, which never sends IPv4.
    let _ = setsockopt_int(
        socket,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO,
    );
    Ok(())
}

fn setsockopt_int(
    socket: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a valid c_int for the call's duration.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Turns on UDP_GRO: the kernel may hand one `recvmmsg` slot a train of
/// equal-size datagrams, with the size in a control message.
pub(crate) fn enable_udp_gro(socket: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(socket, SOL_UDP, UDP_GRO, 1)
}

/// Whether the kernel knows UDP_SEGMENT (UDP GSO on send): setting the
/// socket default to 0 (= off) succeeds only if it does.
pub(crate) fn probe_udp_segment(socket: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(socket, SOL_UDP, UDP_SEGMENT, 0)
}

/// `struct ifreq` reduced to the name and the `ifr_qlen` member.
#[repr(C)]
struct IfReqQlen {
    name: [u8; IFNAMSIZ],
    qlen: libc::c_int,
    _pad: [u8; 20],
}

/// Sets the transmit queue length of interface `name` (SIOCSIFTXQLEN). For
/// a TUN this is the ring between the kernel and our reads: with TSO each
/// entry can be a 64 KB super-packet, so the default 500 entries are 32 MB
/// of queue (bufferbloat).
pub(crate) fn set_txqueuelen(name: &str, qlen: i32) -> io::Result<()> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut req = IfReqQlen {
        name: [0; IFNAMSIZ],
        qlen,
        _pad: [0; 20],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCSIFTXQLEN reads a `struct ifreq` whose union holds an int;
    // `req` has that layout (40 bytes) and lives for the whole call.
    let rc = unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFTXQLEN as libc::c_ulong,
            &mut req as *mut IfReqQlen,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tun_device_says_to_mount_it_and_a_refused_one_keeps_its_code() {
        let missing = tun_open_error(io::Error::from_raw_os_error(libc::ENOENT)).to_string();
        assert!(missing.contains("dev-net-tun"), "{missing}");
        // The daemon's one line for EPERM names both causes (daemon.rs).
        let refused = tun_open_error(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(refused.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn other_tun_errors_keep_their_os_code() {
        // open_queues falls back to one queue on EINVAL: the code must survive.
        let e = tun_open_error(io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
}
