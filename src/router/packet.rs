//! The 16-byte data header (DESIGN.md "The data header") and the few IPv4
//! fields the data plane reads. Checked views: every accessor is bounds-safe
//! because `DataHeader::parse` rejects anything shorter than the header.
//!
//! ```text
//! [version:4 | type:4] [hop_limit:8] [src_short:16] [dst_short:16]
//! [receiver_index:32 = session:24 | lane:8] [counter:48]
//! ```
//! All of it is authenticated as associated data.

use crate::id::ShortId;

/// Length of the data header on the wire.
pub const HEADER_LEN: usize = 16;
/// The data-plane wire version this router speaks.
pub const DATA_VERSION: u8 = 1;
/// Initial hop limit (DESIGN.md "Next hop from the topology").
pub const HOP_LIMIT: u8 = 8;
/// Byte offset of the lane within a datagram: the reuseport steering program
/// reads it to hand each lane to the one worker that owns its replay window.
pub const LANE_OFFSET: u32 = 9;
/// The lane reserved for control-plane heartbeats, sent and received by the
/// control task's own socket rather than a data worker.
pub const CONTROL_LANE: u8 = 255;

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketType {
    /// An inner IP packet.
    Data = 0,
    /// A heartbeat: proves the UDP path and carries no payload beyond padding.
    Heartbeat = 1,
}

impl PacketType {
    fn from_nibble(nibble: u8) -> Option<Self> {
        match nibble {
            0 => Some(Self::Data),
            1 => Some(Self::Heartbeat),
            _ => None,
        }
    }
}

/// A parsed data header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// Packet type.
    pub kind: PacketType,
    /// Remaining hops; a relay decrements it and drops at zero.
    pub hop_limit: u8,
    /// The router that read the packet from its TUN.
    pub src: ShortId,
    /// The router that owns the destination address.
    pub dst: ShortId,
    /// The receiver's session index (24 bits) for the keyset in use.
    pub session: u32,
    /// The sender's lane: part of the nonce, and selects the replay window.
    pub lane: u8,
    /// The per-lane counter (48 bits).
    pub counter: u64,
}

/// Why a header was refused. Never fatal: the datagram is dropped and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than the header plus a tag.
    Truncated,
    /// Another data-plane version.
    Version,
    /// A type this router does not know.
    Type,
}

impl DataHeader {
    /// Parses the header at the start of `datagram`, which must also hold at
    /// least a 16-byte tag after it.
    pub fn parse(datagram: &[u8]) -> Result<Self, HeaderError> {
        let Some(h) = datagram.first_chunk::<HEADER_LEN>() else {
            return Err(HeaderError::Truncated);
        };
        if datagram.len() < HEADER_LEN + crate::crypto::data::TAG_LEN {
            return Err(HeaderError::Truncated);
        }
        if h[0] >> 4 != DATA_VERSION {
            return Err(HeaderError::Version);
        }
        let kind = PacketType::from_nibble(h[0] & 0x0f).ok_or(HeaderError::Type)?;
        let receiver = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
        let mut counter = [0u8; 8];
        counter[2..].copy_from_slice(&h[10..16]);
        Ok(Self {
            kind,
            hop_limit: h[1],
            src: ShortId(u16::from_be_bytes([h[2], h[3]])),
            dst: ShortId(u16::from_be_bytes([h[4], h[5]])),
            session: receiver >> 8,
            lane: (receiver & 0xff) as u8,
            counter: u64::from_be_bytes(counter),
        })
    }

    /// Writes the header into `out`.
    pub fn emit(&self, out: &mut [u8; HEADER_LEN]) {
        out[0] = (DATA_VERSION << 4) | self.kind as u8;
        out[1] = self.hop_limit;
        out[2..4].copy_from_slice(&self.src.0.to_be_bytes());
        out[4..6].copy_from_slice(&self.dst.0.to_be_bytes());
        let receiver = ((self.session & 0x00ff_ffff) << 8) | u32::from(self.lane);
        out[6..10].copy_from_slice(&receiver.to_be_bytes());
        out[10..16].copy_from_slice(&self.counter.to_be_bytes()[2..]);
    }
}

/// An overlay address as one number for either family: an IPv6 address as
/// itself, an IPv4 address as its IPv4-mapped IPv6 address (`::ffff:a.b.c.d`),
/// so one sorted ownership table serves both rings (issue 19). The mapped
/// block is never a pod range (`pod_ranges` refuses it), so keys of the two
/// families never meet.
pub type AddrKey = u128;

/// The [`AddrKey`] of an IPv4 address.
pub fn ipv4_key(addr: u32) -> AddrKey {
    0xffff_0000_0000 | AddrKey::from(addr)
}

/// Whether `key` lies in the IPv4-mapped block (`::ffff:0:0/96`).
pub fn is_ipv4_key(key: AddrKey) -> bool {
    key >> 32 == 0xffff
}

/// The [`AddrKey`] of an address of either family.
pub fn addr_key(addr: std::net::IpAddr) -> AddrKey {
    match addr {
        std::net::IpAddr::V4(a) => ipv4_key(u32::from(a)),
        std::net::IpAddr::V6(a) => AddrKey::from(a),
    }
}

/// The source and destination keys of an inner IPv4 or IPv6 packet, and
/// whether it is IPv6; `None` unless the packet holds at least the fixed
/// header its version nibble names. Only the fixed header is read (no
/// extension header walk: routing needs only the addresses), so this
/// cannot be led anywhere by hostile input.
pub fn inner_addresses(packet: &[u8]) -> Option<InnerAddresses> {
    match packet.first()? >> 4 {
        4 => {
            let (src, dst) = ipv4_addresses(packet)?;
            Some(InnerAddresses {
                src: ipv4_key(src),
                dst: ipv4_key(dst),
                ipv6: false,
            })
        }
        6 => {
            let h = packet.first_chunk::<40>()?;
            let word = |at: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&h[at..at + 16]);
                AddrKey::from_be_bytes(b)
            };
            Some(InnerAddresses {
                src: word(8),
                dst: word(24),
                ipv6: true,
            })
        }
        _ => None,
    }
}

/// What [`inner_addresses`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerAddresses {
    /// The source's key.
    pub src: AddrKey,
    /// The destination's key.
    pub dst: AddrKey,
    /// An IPv6 packet (else IPv4).
    pub ipv6: bool,
}

/// The IPv4 source and destination of an inner packet, if it is a
/// well-formed-enough IPv4 packet to route.
pub fn ipv4_addresses(packet: &[u8]) -> Option<(u32, u32)> {
    let h = packet.first_chunk::<20>()?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let src = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let dst = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
    Some((src, dst))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn header_round_trips_and_matches_golden_bytes() {
        let header = DataHeader {
            kind: PacketType::Data,
            hop_limit: 8,
            src: ShortId(0x0102),
            dst: ShortId(0x0304),
            session: 0x00ab_cdef,
            lane: 3,
            counter: 0x0000_1122_3344_5566,
        };
        let mut bytes = [0u8; HEADER_LEN];
        header.emit(&mut bytes);
        assert_eq!(
            bytes,
            [
                0x10, 8, 1, 2, 3, 4, 0xab, 0xcd, 0xef, 3, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66
            ]
        );
        assert_eq!(bytes[LANE_OFFSET as usize], 3);
        let mut datagram = bytes.to_vec();
        datagram.extend_from_slice(&[0; 16]);
        assert_eq!(DataHeader::parse(&datagram), Ok(header));
    }

    #[test]
    fn short_or_foreign_datagrams_are_refused() {
        assert_eq!(DataHeader::parse(&[0x10; 31]), Err(HeaderError::Truncated));
        assert_eq!(DataHeader::parse(&[0x20; 32]), Err(HeaderError::Version));
        assert_eq!(DataHeader::parse(&[0x1f; 32]), Err(HeaderError::Type));
    }

    #[test]
    fn ipv4_addresses_need_a_full_ipv4_header() {
        let mut packet = [0u8; 20];
        packet[0] = 0x45;
        packet[12..16].copy_from_slice(&[10, 32, 0, 1]);
        packet[16..20].copy_from_slice(&[10, 33, 0, 2]);
        assert_eq!(ipv4_addresses(&packet), Some((0x0a20_0001, 0x0a21_0002)));
        assert_eq!(ipv4_addresses(&packet[..19]), None);
        packet[0] = 0x60;
        assert_eq!(ipv4_addresses(&packet), None);
    }

    #[test]
    fn inner_addresses_key_both_families_apart() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 32, 0, 1]);
        v4[16..20].copy_from_slice(&[10, 33, 0, 2]);
        let got = inner_addresses(&v4).unwrap();
        let mapped = |s: &str| addr_key(s.parse().unwrap());
        assert_eq!(
            (got.src, got.dst, got.ipv6),
            (
                mapped("::ffff:10.32.0.1"),
                mapped("::ffff:10.33.0.2"),
                false
            )
        );
        assert_eq!(got.src, mapped("10.32.0.1"));

        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        let src: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: std::net::Ipv6Addr = "fd00:1::2".parse().unwrap();
        v6[8..24].copy_from_slice(&src.octets());
        v6[24..40].copy_from_slice(&dst.octets());
        let got = inner_addresses(&v6).unwrap();
        assert_eq!(
            (got.src, got.dst, got.ipv6),
            (u128::from(src), u128::from(dst), true)
        );
        // Short of the fixed header, or another version: nothing.
        assert_eq!(inner_addresses(&v6[..39]), None);
        assert_eq!(inner_addresses(&v4[..19]), None);
        assert_eq!(inner_addresses(&[]), None);
        v6[0] = 0x50;
        assert_eq!(inner_addresses(&v6), None);
    }
}
