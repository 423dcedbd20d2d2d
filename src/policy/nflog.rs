//! NFLOG, the kernel's packet log over netlink (`NETLINK_NETFILTER`,
//! subsystem ULOG), for the policy drop log (issue 18, "a rate-limited drop
//! log naming source and destination pod, port, direction and the policy").
//!
//! The table's default-deny rules copy the first bytes of a dropped packet
//! to NFLOG group [`GROUP`] with a prefix naming the pod and direction
//! (`nft ... log prefix "dHASH_in" group 6783`, rate-limited in the rule).
//! The router binds that group on a netlink socket and reads the packets
//! back. NFLOG is per network namespace, like the table, so this works in a
//! pod's or a test's namespace; the kernel log (`log` without a group) is
//! not (only the host's namespace writes it).
//!
//! The codec is pure and hostile-input safe ([`config_request`],
//! [`parse`], [`parse_ip`]): the kernel is the only sender on this
//! socket, but a decoder never trusts lengths. Nothing panics, nothing is
//! allocated beyond the input's size; what does not parse is counted and
//! skipped. [`Socket`] is the thin I/O around it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The NFLOG group the table logs to and the router binds: 6783, weft's
/// port. One socket per network namespace may bind a group; a second
/// router (or ulogd) on the same group is refused (`EPERM`) and says so.
pub const GROUP: u16 = 6783;

/// Bytes of each packet copied to the log: an IPv4 header of any length
/// (60 at most) and the ports after it, or the IPv6 header (40) with room
/// for common extension headers (hop-by-hop, a routing header, a fragment
/// header: 8–24 bytes each) before the ports.
pub const COPY_RANGE: u32 = 128;

/// The most IPv6 extension headers walked before the upper layer: more is
/// not a packet worth naming (each is 8 bytes at least, so the copy range
/// bounds the walk anyway; this says so without arithmetic).
const MAX_EXTENSION_HEADERS: usize = 8;

/// The longest prefix kept (the kernel's own bound is 64 with its NUL).
pub const MAX_PREFIX: usize = 63;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = NFNL_SUBSYS_ULOG << 8;
const NFULNL_MSG_CONFIG: u16 = (NFNL_SUBSYS_ULOG << 8) | 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 4;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
/// `nla_type` without the nested and byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One logged packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The rule's prefix (printable ASCII only, at most [`MAX_PREFIX`]).
    pub prefix: String,
    /// The packet's addresses and ports; `None` if the payload is missing
    /// or is neither IPv4 nor IPv6.
    pub packet: Option<IpHeader>,
}

/// What the drop log needs of a packet, IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHeader {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6 …);
    /// for IPv6 the upper layer after the extension headers, or the
    /// extension header the walk stopped at (cut off, or too many).
    pub protocol: u8,
    /// Source and destination port, for TCP, UDP and SCTP when the bytes
    /// are there (not in a later fragment).
    pub ports: Option<(u16, u16)>,
}

/// One netlink message the socket may read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The answer to a request: `errno` 0 is success.
    Ack {
        /// The request's sequence number.
        seq: u32,
        /// The kernel's error, positive (`libc::EPERM` …), 0 for none.
        errno: i32,
    },
    /// A logged packet.
    Packet(Logged),
}

/// What one read held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The messages understood, in order.
    pub messages: Vec<Message>,
    /// Messages (or a truncated rest) that did not parse.
    pub malformed: u32,
}

/// The request that binds this socket to `group`, copies [`COPY_RANGE`]
/// bytes of each packet, and sends each packet at once (queue threshold 1,
/// not the default 100 or 1 s) — asking for an acknowledgement.
pub fn config_request(group: u16, seq: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(40);
    // nfgenmsg: family AF_UNSPEC, version 0, the group (big-endian).
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&group.to_be_bytes());
    attribute(&mut body, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    attribute(&mut body, NFULA_CFG_MODE, &mode);
    attribute(&mut body, NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
    let mut message = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    let len = u32::try_from(NLMSG_HDRLEN + body.len()).unwrap_or(u32::MAX);
    message.extend_from_slice(&len.to_ne_bytes());
    message.extend_from_slice(&NFULNL_MSG_CONFIG.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&body);
    message
}

fn attribute(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + pad(len) - len, 0);
}

/// Netlink lengths are padded to 4 bytes.
fn pad(len: usize) -> usize {
    len.saturating_add(3) & !3
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Splits what one `recv` returned into messages. A message whose length
/// does not fit ends the batch (its rest cannot be framed) and counts as
/// malformed; a message of another type is skipped.
pub fn parse(buf: &[u8]) -> Batch {
    let mut batch = Batch::default();
    let mut at = 0;
    while at < buf.len() {
        let (Some(len), Some(kind), Some(seq)) =
            (u32_at(buf, at), u16_at(buf, at + 4), u32_at(buf, at + 8))
        else {
            batch.malformed += 1;
            break;
        };
        let len = len as usize;
        let Some(message) = buf.get(at..at.saturating_add(len)) else {
            batch.malformed += 1;
            break;
        };
        if len < NLMSG_HDRLEN {
            batch.malformed += 1;
            break;
        }
        let body = &message[NLMSG_HDRLEN..];
        match kind {
            NLMSG_ERROR => match body.get(..4).and_then(|b| b.try_into().ok()) {
                Some(error) => batch.messages.push(Message::Ack {
                    seq,
                    errno: i32::from_ne_bytes(error).saturating_neg(),
                }),
                None => batch.malformed += 1,
            },
            NFULNL_MSG_PACKET => match parse_packet(body) {
                Some(logged) => batch.messages.push(Message::Packet(logged)),
                None => batch.malformed += 1,
            },
            _ => {}
        }
        at = at.saturating_add(pad(len));
    }
    batch
}

/// One `NFULNL_MSG_PACKET` body: the nfgenmsg, then attributes.
fn parse_packet(body: &[u8]) -> Option<Logged> {
    let mut attributes = body.get(NFGENMSG_LEN..)?;
    let mut logged = Logged {
        prefix: String::new(),
        packet: None,
    };
    while !attributes.is_empty() {
        let len = usize::from(u16_at(attributes, 0)?);
        let kind = u16_at(attributes, 2)? & NLA_TYPE_MASK;
        let data = attributes.get(4..len)?;
        match kind {
            NFULA_PREFIX => {
                logged.prefix = data
                    .iter()
                    .take_while(|b| **b != 0)
                    .take(MAX_PREFIX)
                    .filter(|b| b.is_ascii_graphic() || **b == b' ')
                    .map(|b| char::from(*b))
                    .collect();
            }
            NFULA_PAYLOAD => logged.packet = parse_ip(data),
            _ => {}
        }
        attributes = attributes.get(pad(len).min(attributes.len())..)?;
    }
    Some(logged)
}

/// The addresses, protocol and ports of an IPv4 or IPv6 packet's first
/// bytes, by the version nibble.
pub fn parse_ip(bytes: &[u8]) -> Option<IpHeader> {
    match bytes.first()? >> 4 {
        4 => parse_ipv4(bytes),
        6 => parse_ipv6(bytes),
        _ => None,
    }
}

/// The addresses, protocol and ports of an IPv4 packet's first bytes.
pub fn parse_ipv4(bytes: &[u8]) -> Option<IpHeader> {
    let first = *bytes.first()?;
    let header_len = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header_len < 20 {
        return None;
    }
    let octets = |at: usize| -> Option<Ipv4Addr> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    let (src, dst) = (octets(12)?, octets(16)?);
    let protocol = *bytes.get(9)?;
    let fragment_offset = u16::from_be_bytes(bytes.get(6..8)?.try_into().ok()?) & 0x1fff;
    // An authentication header is reported as the protocol, as nft sees
    // it: for IPv4 the transport header nft matches (`th`, `meta l4proto`)
    // is whatever follows the IP header, AH included; for IPv6 the kernel
    // skips it (`ipv6_find_hdr`), and so does [`parse_ipv6`].
    Some(IpHeader {
        src: src.into(),
        dst: dst.into(),
        protocol,
        ports: (fragment_offset == 0)
            .then(|| ports(protocol, bytes.get(header_len..)?))
            .flatten(),
    })
}

/// The IP protocol number of the authentication header.
const AH: u8 = 51;

/// An authentication header's next header and whole length, from its
/// first two bytes (the length field counts 4-byte units past the first 8).
fn ah_lengths(at: &[u8]) -> Option<(u8, usize)> {
    match at.get(..2)? {
        &[next, units] => Some((next, (usize::from(units) + 2) * 4)),
        _ => None,
    }
}

/// The addresses, upper-layer protocol and ports of an IPv6 packet's first
/// bytes: the fixed 40-byte header, then the extension headers a pod's
/// packet commonly carries (hop-by-hop options, routing, fragment,
/// destination options, and authentication), each length checked against
/// the bytes there.
/// A later fragment has no ports; an extension header cut off (or past
/// [`MAX_EXTENSION_HEADERS`]) ends the walk with its own number as the
/// protocol and no ports. Other headers (ESP, no next header …) are the
/// protocol as they are.
pub fn parse_ipv6(bytes: &[u8]) -> Option<IpHeader> {
    if bytes.first()? >> 4 != 6 {
        return None;
    }
    let address = |at: usize| -> Option<Ipv6Addr> {
        let b: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
        Some(Ipv6Addr::from(b))
    };
    let (src, dst) = (address(8)?, address(24)?);
    let mut header = IpHeader {
        src: src.into(),
        dst: dst.into(),
        protocol: *bytes.get(6)?,
        ports: None,
    };
    let mut at = 40usize;
    let mut walked = 0;
    loop {
        let (next, len) = match header.protocol {
            0 | 43 | 44 | 51 | 60 if walked == MAX_EXTENSION_HEADERS => return Some(header),
            // Hop-by-hop, routing, destination options: next header, then
            // the length in 8-byte units past the first 8.
            0 | 43 | 60 => match bytes.get(at..at.saturating_add(2)) {
                Some(&[next, units]) => (next, (usize::from(units) + 1) * 8),
                _ => return Some(header),
            },
            AH => match ah_lengths(bytes.get(at..).unwrap_or_default()) {
                Some(lengths) => lengths,
                None => return Some(header),
            },
            // Fragment: 8 bytes; past the first fragment, no upper-layer
            // header follows, but the next header still names it.
            44 => {
                let Some(fragment) = bytes.get(at..at.saturating_add(8)) else {
                    return Some(header);
                };
                let offset = u16::from_be_bytes([fragment[2], fragment[3]]) >> 3;
                if offset != 0 {
                    header.protocol = fragment[0];
                    return Some(header);
                }
                (fragment[0], 8)
            }
            upper => {
                header.ports = bytes.get(at..).and_then(|rest| ports(upper, rest));
                return Some(header);
            }
        };
        // The whole extension header must be there before its next
        // header is believed.
        let Some(end) = at.checked_add(len).filter(|end| *end <= bytes.len()) else {
            return Some(header);
        };
        at = end;
        header.protocol = next;
        walked += 1;
    }
}

/// Source and destination port at the start of `upper`, for TCP, UDP and
/// SCTP (the same place in all three) when the four bytes are there.
fn ports(protocol: u8, upper: &[u8]) -> Option<(u16, u16)> {
    match (protocol, upper) {
        (6 | 17 | 132, [s0, s1, d0, d1, ..]) => Some((
            u16::from_be_bytes([*s0, *s1]),
            u16::from_be_bytes([*d0, *d1]),
        )),
        _ => None,
    }
}

/// A netlink socket bound to one NFLOG group.
#[derive(Debug)]
pub struct Socket(socket2::Socket);

impl Socket {
    /// Opens a `NETLINK_NETFILTER` socket and binds it to `group` in this
    /// network namespace; the error says what to do about it.
    pub fn bind(group: u16) -> Result<Self, String> {
        let socket = socket2::Socket::new(
            socket2::Domain::from(libc::AF_NETLINK),
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::NETLINK_NETFILTER)),
        )
        .map_err(|e| format!("cannot open a netfilter netlink socket: {e}"))?;
        // Room for bursts while the driver is busy (each message ~150 bytes).
        let _ = socket.set_recv_buffer_size(1 << 20);
        // Sending autobinds the socket; the kernel is the default peer.
        socket
            .send(&config_request(group, 1))
            .map_err(|e| format!("cannot configure NFLOG group {group}: {e}"))?;
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut socket = Self(socket);
        let mut buf = vec![0u8; 8192];
        loop {
            let n = socket
                .read(&mut buf)
                .map_err(|e| format!("no answer binding NFLOG group {group}: {e}"))?;
            for message in parse(&buf[..n]).messages {
                match message {
                    Message::Ack { seq: 1, errno: 0 } => {
                        socket.0.set_read_timeout(None).map_err(|e| e.to_string())?;
                        return Ok(socket);
                    }
                    Message::Ack { seq: 1, errno } => {
                        return Err(format!(
                            "cannot bind NFLOG group {group}: {} (another process holds it in this network namespace, or the kernel lacks nfnetlink_log)",
                            std::io::Error::from_raw_os_error(errno)
                        ));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Reads what the kernel sent next (blocking).
    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::io::Read::read(&mut self.0, buf)
    }
}

#[cfg(test)]
#[path = "nflog_tests.rs"]
mod tests;
