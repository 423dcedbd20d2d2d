//! What routers say to each other on the TCP control connection: the hello
//! carried in the handshake payloads, the control messages carried in sealed
//! records afterwards, and the length-prefixed framing.
//!
//! Wire rules (DESIGN.md): every message starts with a version; bodies are
//! bincode 2 with the pinned config (`crate::wire`); new fields are appended
//! only; a record is at most `MAX_RECORD` bytes and its length is checked
//! before anything is allocated.

use crate::gossip::Channel;
use crate::id::PeerId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

mod rekey_hello;

pub use rekey_hello::{decode_rekey_hello, encode_rekey_hello};

/// The control protocol version this router speaks.
pub const CONTROL_VERSION: u8 = 1;
/// Largest sealed record on the wire (64 KiB of plaintext plus the tag).
pub const MAX_RECORD: usize = 64 * 1024 + 16;
/// Largest handshake message 2 or 3.
pub const MAX_HANDSHAKE_MESSAGE: usize = 4096;

/// A `[min, max]` range of versions for one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// Oldest version spoken.
    pub min: u8,
    /// Newest version spoken.
    pub max: u8,
}

impl VersionRange {
    /// The highest version both ranges contain.
    pub fn common(self, other: Self) -> Option<u8> {
        let high = self.max.min(other.max);
        (high >= self.min.max(other.min)).then_some(high)
    }
}

/// Versions per channel, exchanged in the hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// The UDP data plane.
    pub data: VersionRange,
    /// Control records.
    pub control: VersionRange,
    /// Topology gossip.
    pub topology: VersionRange,
    /// The IPAM ring.
    pub ring: VersionRange,
}

impl Versions {
    /// What this build speaks.
    pub const OURS: Self = Self {
        data: VersionRange { min: 1, max: 1 },
        // 2: `Observed`, `RelayTo`, `RelayFrom`, `PunchOffer` (issue 16);
        // a peer speaking only 1 is sent none of them (`send_to_peer`);
        // 3: the IPv6 ring's channel; 4: family probes (no new message);
        // 5: the live identity switch (a rotation in the rekey hello).
        control: VersionRange {
            min: 1,
            max: CONTROL_LIVE_ROTATION_VERSION,
        },
        topology: VersionRange {
            min: crate::gossip::message::TOPOLOGY_VERSION,
            max: crate::gossip::message::TOPOLOGY_VERSION,
        },
        // 6: signed titles after a full ring's entries (older peers
        // ignore them as trailing bytes);
        // 5: writers' keys asked of the sender of a ring;
        // 4: digests answered with bucket hashes and differing buckets;
        // 3: signed ring items; 2: periodic ring digests; 1: full rings.
        // Peers below 3 keep their link but get no IPAM messages (drive.rs).
        ring: VersionRange {
            min: 1,
            max: crate::ipam::message::RING_NEWEST_VERSION,
        },
    };

    /// The first channel with no version in common, if any.
    pub fn incompatible_channel(&self, other: &Self) -> Option<&'static str> {
        [
            ("data", self.data, other.data),
            ("control", self.control, other.control),
            ("topology", self.topology, other.topology),
            ("ring", self.ring, other.ring),
        ]
        .into_iter()
        .find(|(_, a, b)| a.common(*b).is_none())
        .map(|(name, _, _)| name)
    }
}

/// Who a router is, sent in handshake message 2 (responder) and 3
/// (initiator), so it is authenticated by the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Wire versions per channel.
    pub versions: Versions,
    /// The router's name (a label; the ID is its key).
    pub name: String,
    /// The short ID it uses in data headers.
    pub short_id: u16,
    /// The address its peers should dial and send UDP to.
    pub listen: SocketAddr,
    /// Its overlay MTU.
    pub mtu: u32,
    /// Random per process start: a new incarnation replaces an older
    /// connection at once; the same one means a simultaneous dial.
    pub incarnation: u64,
    /// The receiver index the sender chose for the keyset of this handshake.
    pub session_index: u32,
    /// The cluster range, so a misconfigured router is refused clearly.
    pub cluster_range: String,
}

/// The payload of a rekey handshake's messages 2 and 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyHello {
    /// The receiver index the sender chose for the new keyset.
    pub session_index: u32,
}

/// A message inside a sealed control record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// A gossip payload for a channel (topology, ring, ...).
    Gossip {
        /// The channel.
        channel: u8,
        /// Opaque to the connection; decoded by the channel's core.
        payload: Vec<u8>,
    },
    /// One message of a rekey handshake (1, 2 or 3).
    Rekey {
        /// Which message.
        step: u8,
        /// The Noise message.
        message: Vec<u8>,
    },
    /// "I now send under the keyset you know as `session_index`": the
    /// receiver may switch its own sending to it too.
    KeyConfirm {
        /// The receiver's own index of the confirmed keyset.
        session_index: u32,
    },
    /// The last record under the old TCP key after a rekey.
    TcpKeySwitch,
    /// The higher-ID side asks the lower-ID side to rekey (its keys are old).
    RekeyRequest,
    /// Orderly close with a reason that the peer logs.
    Close {
        /// Human-readable reason.
        reason: String,
    },
    /// A piece of an encoded control message too big for one record (a
    /// large ring): the receiver appends pieces, up to
    /// [`MAX_REASSEMBLED`], and decodes the whole at the `last` one.
    Fragment {
        /// True on the final piece.
        last: bool,
        /// The next bytes of the encoded message.
        bytes: Vec<u8>,
    },
    /// What the sender sees of the receiver (issue 16, DESIGN.md
    /// "Endpoints, NAT and paths"); only ever about the receiver. The
    /// receiver believes an address once more than one peer reports it.
    Observed {
        /// The address the sender dialled and the receiver answered at
        /// (its public address behind 1:1 NAT, a DNS name's address).
        dialled: Option<SocketAddr>,
        /// Where the receiver's authenticated UDP comes from, as seen here.
        udp_from: Option<SocketAddr>,
    },
    /// Asks the receiver to forward `bytes` to its neighbour `peer` as a
    /// [`ControlMessage::RelayFrom`] (issue 16: control end to end through
    /// a router both ends reach). The bytes are a piece of the two ends'
    /// own Noise-sealed control stream: the relay can neither read nor
    /// forge them.
    RelayTo {
        /// The router to forward to (a direct neighbour of the receiver).
        peer: PeerId,
        /// Opaque stream bytes.
        bytes: Vec<u8>,
    },
    /// Bytes the sender forwards from its neighbour `peer` (stamped by the
    /// relay from the connection they came on, never taken from the
    /// sender of a `RelayTo`).
    RelayFrom {
        /// The router they came from.
        peer: PeerId,
        /// Opaque stream bytes.
        bytes: Vec<u8>,
    },
    /// The sender's endpoints, in their advertised order, for hole
    /// punching (sent end to end on a relayed control connection).
    PunchOffer {
        /// Listen address first, then the public ones.
        candidates: Vec<SocketAddr>,
    },
}

/// The control version that brought endpoint reports, relayed control
/// and punch offers: a build that does not know a variant fails the record
/// and so the connection, so these go only to peers that speak it.
pub const CONTROL_PATHS_VERSION: u8 = 2;

/// The control version that knows the IPv6 pod range's ring channel
/// (`Channel::Ring6`, issue 19). An older build parses an unknown channel's
/// bytes as a topology frame (one that happened to parse would be logged
/// as bad gossip), so a peer below
/// this version gets none: it keeps its link and the IPv4 ring, and takes
/// no part in the IPv6 one.
pub const CONTROL_RING6_VERSION: u8 = 3;

/// The control version of builds that take a heartbeat over a dual-stack
/// peer's other family as a probe (`control::family`, issue 19) rather
/// than a move of its endpoint. No message needs it: only peers that speak
/// it are probed over their other family, as an older build would move its
/// endpoint to and fro with every probe.
pub const CONTROL_FAMILY_VERSION: u8 = 4;

/// The control version of builds that follow a peer's identity switch on a
/// live link (issue 20): they read the [`crate::crypto::rotation::Rotation`]
/// appended to a rekey hello and accept the rekey under the successor key.
/// No message needs it (an older build ignores the appended bytes, then
/// refuses the rekey under another key and closes the link): a router
/// that rotates switches live only on links to peers that speak it and
/// closes the others, to be re-dialled under the new key.
pub const CONTROL_LIVE_ROTATION_VERSION: u8 = 5;

impl ControlMessage {
    /// The control version a peer must speak to be sent this message.
    pub fn needs_version(&self) -> u8 {
        match self {
            Self::Observed { .. }
            | Self::RelayTo { .. }
            | Self::RelayFrom { .. }
            | Self::PunchOffer { .. } => CONTROL_PATHS_VERSION,
            Self::Gossip { channel, .. } if *channel == Channel::Ring6.to_byte() => {
                CONTROL_RING6_VERSION
            }
            _ => 1,
        }
    }
}

/// Largest plaintext piece put in one `Fragment` (leaves room for the
/// envelope within a 64 KiB record).
pub const FRAGMENT_PIECE: usize = 60 * 1024;
/// Largest message reassembled from fragments (the wire decode cap).
pub const MAX_REASSEMBLED: usize = crate::wire::MAX_MESSAGE;

/// The records' plaintexts for `message`: one, or `Fragment`s when it does
/// not fit one record.
pub fn encode_records(message: &ControlMessage) -> Vec<Vec<u8>> {
    let whole = encode_message(message);
    if whole.len() <= FRAGMENT_PIECE {
        return vec![whole];
    }
    let pieces = whole.len().div_ceil(FRAGMENT_PIECE);
    whole
        .chunks(FRAGMENT_PIECE)
        .enumerate()
        .map(|(i, piece)| {
            encode_message(&ControlMessage::Fragment {
                last: i + 1 == pieces,
                bytes: piece.to_vec(),
            })
        })
        .collect()
}

/// Reassembles `Fragment`s; bounded so that a peer cannot make it grow.
#[derive(Debug, Default)]
pub struct Reassembly {
    buffer: Vec<u8>,
}

impl Reassembly {
    /// Adds one piece; returns the whole message after the last one.
    pub fn push(
        &mut self,
        last: bool,
        bytes: &[u8],
    ) -> Result<Option<ControlMessage>, crate::wire::DecodeError> {
        if self.buffer.len() + bytes.len() > MAX_REASSEMBLED {
            self.buffer = Vec::new();
            return Err(crate::wire::DecodeError::Malformed(
                "fragmented message over the size cap".into(),
            ));
        }
        self.buffer.extend_from_slice(bytes);
        if !last {
            return Ok(None);
        }
        let whole = std::mem::take(&mut self.buffer);
        match decode_message(&whole)? {
            ControlMessage::Fragment { .. } => Err(crate::wire::DecodeError::Malformed(
                "a fragment inside a fragment".into(),
            )),
            message => Ok(Some(message)),
        }
    }
}

/// Encodes a control message as record plaintext: `[version][body]`.
pub fn encode_message(message: &ControlMessage) -> Vec<u8> {
    let mut out = vec![CONTROL_VERSION];
    // Encoding our own enum into a Vec cannot fail.
    if let Ok(body) = crate::wire::encode(message) {
        out.extend_from_slice(&body);
    }
    out
}

/// Decodes record plaintext.
pub fn decode_message(bytes: &[u8]) -> Result<ControlMessage, crate::wire::DecodeError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or(crate::wire::DecodeError::Truncated)?;
    if version != CONTROL_VERSION {
        return Err(crate::wire::DecodeError::UnsupportedVersion(version));
    }
    crate::wire::decode(body)
}

/// Writes one length-prefixed frame (u32 big-endian length).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    writer.write_all(&out).await
}

/// Reads one length-prefixed frame of at most `max` bytes; a larger length
/// is an error before anything is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut buffer = vec![0u8; len];
    reader.read_exact(&mut buffer).await?;
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn version_ranges_pick_the_highest_common_version() {
        let a = VersionRange { min: 1, max: 3 };
        let b = VersionRange { min: 2, max: 5 };
        assert_eq!(a.common(b), Some(3));
        assert_eq!(a.common(VersionRange { min: 4, max: 5 }), None);
    }

    #[test]
    fn control_messages_round_trip_and_garbage_is_refused() {
        let message = ControlMessage::Gossip {
            channel: 1,
            payload: vec![1, 2, 3],
        };
        assert_eq!(
            decode_message(&encode_message(&message)).ok(),
            Some(message)
        );
        assert!(decode_message(&[]).is_err());
        assert!(decode_message(&[9, 0]).is_err());
        assert!(decode_message(&[CONTROL_VERSION, 200, 1]).is_err());
    }

    #[test]
    fn messages_an_old_build_cannot_decode_need_control_version_2() {
        let old = ControlMessage::Close {
            reason: String::new(),
        };
        assert_eq!(old.needs_version(), 1);
        let new = [
            ControlMessage::Observed {
                dialled: None,
                udp_from: None,
            },
            ControlMessage::RelayTo {
                peer: PeerId(1),
                bytes: vec![],
            },
            ControlMessage::RelayFrom {
                peer: PeerId(1),
                bytes: vec![],
            },
            ControlMessage::PunchOffer { candidates: vec![] },
        ];
        for m in new {
            assert_eq!(m.needs_version(), CONTROL_PATHS_VERSION, "{m:?}");
        }
        const { assert!(Versions::OURS.control.max >= CONTROL_PATHS_VERSION) };
        // A build of control version 1 still shares a version with this one.
        let v1 = Versions {
            control: VersionRange { min: 1, max: 1 },
            ..Versions::OURS
        };
        assert_eq!(Versions::OURS.incompatible_channel(&v1), None);
    }

    #[test]
    fn the_ipv6_ring_goes_only_to_builds_that_know_its_channel() {
        let ring6 = ControlMessage::Gossip {
            channel: Channel::Ring6.to_byte(),
            payload: vec![1],
        };
        assert_eq!(ring6.needs_version(), CONTROL_RING6_VERSION);
        let ring = ControlMessage::Gossip {
            channel: Channel::Ring.to_byte(),
            payload: vec![1],
        };
        assert_eq!(ring.needs_version(), 1);
        const { assert!(Versions::OURS.control.max >= CONTROL_RING6_VERSION) };
        const { assert!(CONTROL_RING6_VERSION > CONTROL_PATHS_VERSION) };
    }

    #[test]
    fn golden_bytes_of_a_key_confirm() {
        let bytes = encode_message(&ControlMessage::KeyConfirm { session_index: 300 });
        assert_eq!(bytes, [1, 2, 251, 44, 1]);
    }

    #[test]
    fn golden_bytes_of_the_relay_and_punch_messages() {
        // Appended variants: the old discriminants are unchanged (7 is
        // `Observed`), so a router from before them reads every older one.
        let to = ControlMessage::RelayTo {
            peer: PeerId(5),
            bytes: vec![1, 2, 3],
        };
        assert_eq!(encode_message(&to), [1, 8, 5, 3, 1, 2, 3]);
        let from = ControlMessage::RelayFrom {
            peer: PeerId(5),
            bytes: vec![],
        };
        assert_eq!(encode_message(&from), [1, 9, 5, 0]);
        let offer = ControlMessage::PunchOffer {
            candidates: vec![SocketAddr::from(([203, 0, 113, 20], 6783))],
        };
        let bytes = [1, 10, 1, 0, 203, 0, 113, 20, 251, 0x7f, 0x1a];
        assert_eq!(encode_message(&offer), bytes);
        assert_eq!(decode_message(&bytes).ok(), Some(offer));
        // A relay message cannot smuggle an unbounded length past the cap.
        assert!(decode_message(&[1, 8, 5, 253, 255, 255, 255, 255, 255, 255, 255, 127]).is_err());
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_allocation() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        let err = read_frame(&mut input, 1024).await.expect_err("too large");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_message_too_big_for_one_record_goes_in_fragments_and_reassembles() {
        let big = ControlMessage::Gossip {
            channel: 2,
            payload: (0..200_000u32).map(|i| (i % 251) as u8).collect(),
        };
        let records = encode_records(&big);
        assert_eq!(records.len(), 4);
        assert!(records.iter().all(|r| r.len() <= MAX_RECORD - 16));
        let mut reassembly = Reassembly::default();
        let mut out = None;
        for record in &records {
            match decode_message(record).unwrap() {
                ControlMessage::Fragment { last, bytes } => {
                    out = reassembly.push(last, &bytes).unwrap();
                }
                other => panic!("not a fragment: {other:?}"),
            }
        }
        assert_eq!(out, Some(big));
        let small = ControlMessage::RekeyRequest;
        assert_eq!(encode_records(&small), vec![encode_message(&small)]);
    }

    #[test]
    fn reassembly_is_capped_and_refuses_nested_fragments() {
        let mut reassembly = Reassembly::default();
        let piece = vec![0u8; FRAGMENT_PIECE];
        let mut refused = false;
        for _ in 0..(MAX_REASSEMBLED / FRAGMENT_PIECE + 2) {
            if reassembly.push(false, &piece).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "the cap holds");
        let nested = encode_message(&ControlMessage::Fragment {
            last: true,
            bytes: vec![1],
        });
        let mut reassembly = Reassembly::default();
        assert!(reassembly.push(true, &nested).is_err());
    }
}
