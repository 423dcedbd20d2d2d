//! Batched UDP: `sendmmsg`/`recvmmsg` with their GSO/GRO control messages,
//! the socket addresses they carry, and waiting for send-buffer room. Each
//! `unsafe` block states why it is sound (the parent module's rule).

use super::*;

fn to_storage(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned
            // for sockaddr_in; we write one whole value.
            unsafe { std::ptr::write(out as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(out as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family says so), and
            // storage is aligned and large enough for it.
            let sin = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            // A dual-stack socket sees IPv4 peers v4-mapped: one spelling.
            Some(crate::underlay::canonical(SocketAddr::V6(
                std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                ),
            )))
        }
        _ => None,
    }
}

/// One datagram (or, with `segment > 0`, a UDP GSO train cut by the kernel
/// into `segment`-byte datagrams) for [`send_mmsg`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendMsg<'a> {
    pub(crate) addr: SocketAddr,
    pub(crate) data: &'a [u8],
    pub(crate) segment: u16,
}

/// Room for one control message carrying a u16 or an int.
const CMSG_ROOM: usize = 32;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; CMSG_ROOM]);

/// The per-call arrays of one `sendmmsg` or `recvmmsg`: per slot an
/// address, an iovec, a control buffer and the header that points at them.
/// Lives on the caller's stack and must not move between `link` and the call.
struct MmsgSlots {
    addrs: [libc::sockaddr_storage; MAX_BATCH],
    iovs: [libc::iovec; MAX_BATCH],
    cmsgs: [CmsgBuf; MAX_BATCH],
    hdrs: [libc::mmsghdr; MAX_BATCH],
}

impl MmsgSlots {
    fn zeroed() -> Self {
        // SAFETY: plain C structs (and a byte array) for which all-zero is a
        // valid value.
        unsafe { std::mem::zeroed() }
    }

    /// Points slot `i`'s header at its address (`name_len` bytes), at the
    /// buffer `base..base + len`, and at `control_len` bytes of its control
    /// buffer (none if 0).
    fn link(
        &mut self,
        i: usize,
        base: *mut u8,
        len: usize,
        name_len: libc::socklen_t,
        control_len: usize,
    ) {
        self.iovs[i] = libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
        h.msg_namelen = name_len;
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        if control_len > 0 {
            h.msg_control = self.cmsgs[i].0.as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = control_len;
        }
    }
}

/// Sends up to [`MAX_BATCH`] messages with one `sendmmsg`. Returns how many
/// the kernel took (at least one), or the error of the first.
pub(crate) fn send_mmsg(socket: BorrowedFd<'_>, msgs: &[SendMsg<'_>]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut slots = MmsgSlots::zeroed();
    for (i, m) in msgs[..n].iter().enumerate() {
        let addr_len = to_storage(&m.addr, &mut slots.addrs[i]);
        // SAFETY: CMSG_SPACE is a pure computation.
        let control_len = if m.segment > 0 {
            unsafe { libc::CMSG_SPACE(2) as usize }
        } else {
            0
        };
        // The kernel only reads a send's buffer, so the cast from a shared
        // slice is sound.
        slots.link(
            i,
            m.data.as_ptr() as *mut u8,
            m.data.len(),
            addr_len,
            control_len,
        );
        let h = &mut slots.hdrs[i].msg_hdr;
        if m.segment > 0 {
            // SAFETY: msg_control points at CMSG_ROOM (>= CMSG_SPACE(2))
            // aligned bytes that live until the call returns; FIRSTHDR is
            // non-null because controllen covers one header.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, m.segment);
            }
        }
    }
    loop {
        // SAFETY: `hdrs[..n]` point at addresses, iovecs and control buffers
        // that outlive the call; the iovecs borrow the callers' slices,
        // which the kernel only reads.
        let rc = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                slots.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(rc as usize);
    }
}

/// What `recv_mmsg` learned about one slot.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RecvMeta {
    /// Bytes in the buffer.
    pub(crate) len: usize,
    /// The sender.
    pub(crate) addr: Option<SocketAddr>,
    /// With UDP_GRO, the size of each datagram of the train (the last may
    /// be shorter); 0 = one datagram.
    pub(crate) segment: usize,
}

/// Receives up to `bufs.len()` (at most [`MAX_BATCH`]) slots with one
/// non-blocking `recvmmsg`. Returns how many were filled; `WouldBlock` when
/// none was waiting.
pub(crate) fn recv_mmsg<B: AsMut<[u8]>>(
    socket: BorrowedFd<'_>,
    bufs: &mut [B],
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let n = bufs.len().min(meta.len()).min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut slots = MmsgSlots::zeroed();
    let name_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    for (i, b) in bufs[..n].iter_mut().enumerate() {
        let b = b.as_mut();
        slots.link(i, b.as_mut_ptr(), b.len(), name_len, CMSG_ROOM);
    }
    let rc = loop {
        // SAFETY: every header points at buffers that outlive the call and
        // are exclusively borrowed; the kernel writes at most their lengths.
        let rc = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                slots.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        break rc as usize;
    };
    for (i, slot_meta) in meta[..rc].iter_mut().enumerate() {
        let h = &mut slots.hdrs[i].msg_hdr;
        let mut segment = 0;
        // SAFETY: the kernel set msg_controllen to what it wrote into our
        // control buffer; FIRSTHDR/NXTHDR stay within it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                    segment = usize::try_from(v).unwrap_or(0);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        *slot_meta = RecvMeta {
            len: slots.hdrs[i].msg_len as usize,
            addr: from_storage(&slots.addrs[i]),
            segment,
        };
    }
    Ok(rc)
}

/// Waits up to `timeout_ms` until `socket` is writable (send buffer room).
pub(crate) fn wait_writable(socket: BorrowedFd<'_>, timeout_ms: i32) {
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call's duration.
    unsafe { libc::poll(&mut fd, 1, timeout_ms) };
}
