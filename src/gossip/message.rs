//! Gossip framing: the envelope every gossip frame starts with (version,
//! channel, type) and the topology channel's messages.
//!
//! DESIGN.md "Wire rules": every message starts with a version and a type;
//! bodies are serde + bincode 2 through `crate::wire`; new fields are appended
//! only; decoders ignore trailing bytes and check every count before use.
//!
//! Frame layout: `[version:u8][channel:u8][type:u8][body…]`. The channel byte
//! lets the driver hand another channel's payload (the IPAM ring) to its own
//! core without decoding it: see [`Frame::parse`].

use super::topology::SignedEntry;
use crate::id::PeerId;
use crate::wire::{self, DecodeError};
use serde::{Deserialize, Serialize};

/// The topology channel's wire version spoken by this build. 2: entries
/// travel signed by their owner ([`SignedEntry`]); version 1 (unsigned) is not
/// spoken any more, so a pre-signature router is refused the connection with
/// "no common topology version" (DESIGN.md "Security model" over "Wire
/// rules": accepting unsigned entries from anyone would let any secret holder
/// speak for every router).
pub const TOPOLOGY_VERSION: u8 = 2;

/// Most `(id, version)` pairs in one digest or request (a digest of a larger
/// topology is split into id ranges).
pub const MAX_DIGEST_ITEMS: usize = 4096;

/// Most entries in one update message.
pub const MAX_UPDATE_ENTRIES: usize = 4096;

/// Target size of one encoded update: it must fit a 64 KiB Noise record with
/// room to spare (DESIGN.md "Wire rules").
pub const UPDATE_TARGET_BYTES: usize = 48 * 1024;

/// A gossip channel: which core a frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The topology CRDT (this module).
    Topology,
    /// The IPAM ring, carried by the same connections.
    Ring,
    /// The ring of the IPv6 pod range (issue 19): the same allocator
    /// messages for a second allocator; sent only to peers whose control
    /// version knows it (`control::proto::CONTROL_RING6_VERSION`).
    Ring6,
    /// A channel this build does not know (a newer peer): dropped by the driver.
    Unknown(u8),
}

impl Channel {
    /// The byte that names the channel on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Topology => 1,
            Self::Ring => 2,
            Self::Ring6 => 3,
            Self::Unknown(b) => b,
        }
    }

    /// The channel named by `b`.
    pub fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::Topology,
            2 => Self::Ring,
            3 => Self::Ring6,
            other => Self::Unknown(other),
        }
    }
}

/// A parsed envelope over borrowed bytes: what the driver needs to dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The channel's wire version.
    pub version: u8,
    /// Which core the payload belongs to.
    pub channel: Channel,
    /// The channel's message type.
    pub kind: u8,
    /// The encoded body.
    pub body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Splits a frame into its envelope and body. Only fails on a frame
    /// shorter than the envelope; never allocates.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        match bytes {
            [version, channel, kind, body @ ..] => Ok(Self {
                version: *version,
                channel: Channel::from_byte(*channel),
                kind: *kind,
                body,
            }),
            _ => Err(DecodeError::Truncated),
        }
    }

    /// Builds a frame: the envelope followed by `body`.
    pub fn build(version: u8, channel: Channel, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + body.len());
        out.extend_from_slice(&[version, channel.to_byte(), kind]);
        out.extend_from_slice(body);
        out
    }
}

/// One topology-channel message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Anti-entropy opener: "this is what my table hashes to". A receiver with
    /// a different summary answers with its [`Message::Digest`].
    Summary(Summary),
    /// `(id, version)` of every entry the sender holds with an id in
    /// `[first, last]`. The receiver sends back what the sender lacks and
    /// requests what it lacks itself.
    Digest(Digest),
    /// "Send me these entries."
    Request(Request),
    /// Whole entries: answers, pushes of changes, and a new neighbour's catch-up.
    Update(Update),
}

/// Body of [`Message::Summary`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// How many entries the sender holds.
    pub count: u32,
    /// Order-independent hash of the sender's `(id, version)` pairs.
    pub hash: u64,
}

/// Body of [`Message::Digest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Lowest id this chunk covers (inclusive).
    pub first: PeerId,
    /// Highest id this chunk covers (inclusive).
    pub last: PeerId,
    /// The sender's `(id, version)` pairs in `[first, last]`, sorted by id.
    pub items: Vec<(PeerId, u64)>,
}

/// Body of [`Message::Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Entries wanted.
    pub ids: Vec<PeerId>,
}

/// Body of [`Message::Update`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Entries as their owners signed them, each to be verified and merged
    /// by version.
    pub entries: Vec<SignedEntry>,
}

const TYPE_SUMMARY: u8 = 1;
const TYPE_DIGEST: u8 = 2;
const TYPE_REQUEST: u8 = 3;
const TYPE_UPDATE: u8 = 4;

/// Why a topology frame was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The envelope or body did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The frame belongs to another channel.
    #[error("frame for channel {0:?} given to the topology core")]
    WrongChannel(Channel),
    /// A list longer than this build accepts.
    #[error("{what}: {count} items exceeds the cap of {cap}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Items claimed.
        count: usize,
        /// The cap.
        cap: usize,
    },
}

impl Message {
    /// Encodes the message as a complete topology frame.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = match self {
            Self::Summary(m) => (TYPE_SUMMARY, wire::encode(m)),
            Self::Digest(m) => (TYPE_DIGEST, wire::encode(m)),
            Self::Request(m) => (TYPE_REQUEST, wire::encode(m)),
            Self::Update(m) => (TYPE_UPDATE, wire::encode(m)),
        };
        // Encoding our own plain structs into a Vec cannot fail short of the
        // size limit, which the chunking in `core` keeps us far below.
        let body = body.unwrap_or_default();
        Frame::build(TOPOLOGY_VERSION, Channel::Topology, kind, &body)
    }

    /// Decodes a topology frame from hostile bytes: never panics, and never
    /// allocates more than `wire::MAX_MESSAGE` allows; list caps are checked
    /// here, entry contents by [`TopologyEntry::validate`].
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let frame = Frame::parse(bytes)?;
        if frame.channel != Channel::Topology {
            return Err(MessageError::WrongChannel(frame.channel));
        }
        if frame.version != TOPOLOGY_VERSION {
            return Err(DecodeError::UnsupportedVersion(frame.version).into());
        }
        let message = match frame.kind {
            TYPE_SUMMARY => Self::Summary(wire::decode(frame.body)?),
            TYPE_DIGEST => {
                let d: Digest = wire::decode(frame.body)?;
                check_cap("digest items", d.items.len(), MAX_DIGEST_ITEMS)?;
                Self::Digest(d)
            }
            TYPE_REQUEST => {
                let r: Request = wire::decode(frame.body)?;
                check_cap("request ids", r.ids.len(), MAX_DIGEST_ITEMS)?;
                Self::Request(r)
            }
            TYPE_UPDATE => {
                let u: Update = wire::decode(frame.body)?;
                check_cap("update entries", u.entries.len(), MAX_UPDATE_ENTRIES)?;
                Self::Update(u)
            }
            other => return Err(DecodeError::UnknownType(other).into()),
        };
        Ok(message)
    }
}

fn check_cap(what: &'static str, count: usize, cap: usize) -> Result<(), MessageError> {
    if count > cap {
        return Err(MessageError::TooMany { what, count, cap });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::{Identity, SigningKey};
    use crate::gossip::topology::{ConnectionInfo, TopologyEntry};
    use crate::id::ShortId;
    use rand::SeedableRng;

    /// A fixed entry signed by a fixed (seeded) identity.
    fn sample_entry() -> SignedEntry {
        let identity = Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(7));
        let public_key = identity.public_key();
        let entry = TopologyEntry {
            id: PeerId::from_public_key(&public_key),
            version: 3,
            name: "n1".into(),
            public_key,
            addresses: vec!["192.0.2.1:6783".parse().unwrap()],
            short_id: ShortId(0x0102),
            mtu: 1420,
            connections: vec![ConnectionInfo {
                peer: PeerId(5),
                established: true,
                outbound: false,
            }],
        };
        SignedEntry::sign(&entry, &SigningKey::from_identity(&identity))
    }

    #[test]
    fn every_message_survives_a_round_trip() {
        let messages = [
            Message::Summary(Summary { count: 2, hash: 99 }),
            Message::Digest(Digest {
                first: PeerId(0),
                last: PeerId(u64::MAX),
                items: vec![(PeerId(1), 2)],
            }),
            Message::Request(Request {
                ids: vec![PeerId(9)],
            }),
            Message::Update(Update {
                entries: vec![sample_entry()],
            }),
        ];
        for m in messages {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn golden_bytes_of_an_update_frame() {
        let bytes = Message::Update(Update {
            entries: vec![sample_entry()],
        })
        .encode();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            concat!(
                "020104",             // version 2, topology channel, type update
                "01",                 // one signed entry
                "40",                 // its bytes: 64
                "fdb820966fde84517c", // id (varint u64, 0xfd = 8 bytes follow)
                "03",                 // version
                "02",
                "6e31", // name "n1"
                "414862f45ddcdf54660ce2951e78dd540fb5060ffe3668872863251bb0cf7758", // public key
                "01",
                "00",
                "c0000201",
                "fb7f1a", // one address: V4 192.0.2.1:6783
                "fb0201", // short id 0x0102
                "fb8c05", // mtu 1420
                "01",
                "05",
                "01",
                "00", // one connection: peer 5, established, inbound
                // the owner's signature R ‖ s over "weft topology entry" 0x00 0x02 ‖ bytes
                "2e1b411630f3e7891b2d16b726d5bd1c46f23254fc8b3f7c9904c832ac832874",
                "5b85e89558ba5ee27202c30d50f03d31fd25630423d4d0af3535f9cf7f9a6807",
            )
        );
    }

    #[test]
    fn the_channel_byte_lets_a_driver_route_other_channels() {
        let frame = Frame::build(1, Channel::Ring, 7, b"ring bytes");
        let parsed = Frame::parse(&frame).unwrap();
        assert_eq!(parsed.channel, Channel::Ring);
        assert_eq!(parsed.body, b"ring bytes");
        assert!(matches!(
            Message::decode(&frame),
            Err(MessageError::WrongChannel(Channel::Ring))
        ));
    }

    #[test]
    fn a_digest_over_the_cap_is_refused() {
        let items = vec![(PeerId(1), 1); MAX_DIGEST_ITEMS + 1];
        let bytes = Message::Digest(Digest {
            first: PeerId(0),
            last: PeerId(1),
            items,
        })
        .encode();
        assert!(matches!(
            Message::decode(&bytes),
            Err(MessageError::TooMany { .. })
        ));
    }

    #[test]
    fn short_and_unknown_frames_are_errors() {
        assert!(Message::decode(&[1, 1]).is_err());
        assert!(Message::decode(&[2, 1, 1]).is_err());
        assert!(Message::decode(&[1, 1, 99]).is_err());
    }
}
