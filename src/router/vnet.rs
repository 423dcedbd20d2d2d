//! The virtio-net header that a TUN opened with IFF_VNET_HDR puts before
//! every packet it hands us and expects before every packet we write
//! (DESIGN.md "The fast data path"). Ten bytes, little-endian on the hosts
//! we run on (the TUN's default byte order is the host's).
//!
//! ```text
//! flags:8 gso_type:8 hdr_len:16 gso_size:16 csum_start:16 csum_offset:16
//! ```

/// Length of `struct virtio_net_hdr` (without the mergeable-buffers field).
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the L4 checksum is partial; complete it at
/// `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has been validated.
pub const F_DATA_VALID: u8 = 2;

/// `gso_type`: not a super-packet.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: an IPv4 TCP super-packet.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: an IPv6 TCP super-packet.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: a UDP super-packet cut at datagram boundaries (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP sender uses ECN (CWR only on the first segment).
pub const GSO_ECN: u8 = 0x80;

/// A parsed virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM`, `F_DATA_VALID`.
    pub flags: u8,
    /// `GSO_*`, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers of one segment (a hint; never trusted).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed L4 region starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first ten bytes of `bytes`; `None` if shorter.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.first_chunk::<VNET_HDR_LEN>()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the header into `out`.
    pub fn emit(&self, out: &mut [u8; VNET_HDR_LEN]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 1380,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.emit(&mut b);
        assert_eq!(b, [1, 0x81, 2, 1, 0x64, 5, 20, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(h.gso_kind(), GSO_TCPV4);
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }
}
