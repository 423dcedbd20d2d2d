//! The IPAM messages carried on the gossip channel as opaque bytes:
//! `[version][type][bincode body]` (DESIGN.md "Wire rules": version and type
//! first, fields appended only, trailing bytes ignored, size capped by
//! `crate::wire`).

use super::digest::RingSummary;
use super::range::AddrRange;
use super::ring::{GenesisId, Ring, RingError, RingWire};
use crate::id::PeerId;
use crate::wire::{self, DecodeError};
use serde::{Deserialize, Serialize};

/// Ring channel version 1: full rings only (an allocator configured with it
/// behaves as that build did; the simulator and the bench use it).
pub const RING_WIRE_VERSION: u8 = 1;
/// Ring channel version 2 added [`Message::Digest`], sent only to peers
/// whose handshake says they speak it (the driver's
/// [`Destination::Neighbours`](super::Destination::Neighbours)).
pub const RING_DIGEST_VERSION: u8 = 2;
/// Ring channel version 3, the only one on the wire now: every ring item
/// carries its writer's signature and the ring its founding
/// (`crate::ipam::signed`). Versions 1 and 2 carried claims, not
/// signatures, so a router refuses them ([`MessageError::PreSigning`]) and
/// its driver sends nothing on the ring channel to a peer that cannot sign
/// (DESIGN.md "Wire rules": the link stays up, IPAM with that peer stops,
/// loudly, until it is upgraded).
pub const RING_SIGNED_VERSION: u8 = 3;

const TYPE_RING: u8 = 1;
const TYPE_PROPOSE: u8 = 2;
const TYPE_DONATE_REQUEST: u8 = 3;
const TYPE_DIGEST: u8 = 4;

/// A voter's proposal to initialise the ring, its ballot: its view of the
/// range, of how many voter slots there are (the seed list) and of the
/// identities bound to them so far, compared by every receiver (DESIGN.md
/// "Ring initialisation"; the vote is in `allocator/init.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The sender's cluster range.
    pub range: AddrRange,
    /// The voters the sender knows by identity, sorted ascending: all of
    /// them, or a majority of the slots when a seed has not answered.
    pub voters: Vec<PeerId>,
    /// How many voter slots there are (appended field; a proposal without
    /// it reads as `voters.len()`, every slot known).
    pub slots: u32,
    /// The sender has seen a majority of the slots propose this very
    /// ballot and will never propose another (appended field).
    pub locked: bool,
}

/// The proposal as builds before slots sent it (decoding only).
#[derive(Deserialize)]
struct ProposalV1 {
    range: AddrRange,
    voters: Vec<PeerId>,
}

impl Proposal {
    /// Decodes either form: a proposal from before slots counts every
    /// voter as known and locks nothing.
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        wire::decode::<Self>(body).or_else(|_| {
            let old = wire::decode::<ProposalV1>(body)?;
            Ok(Self {
                range: old.range,
                slots: u32::try_from(old.voters.len()).unwrap_or(u32::MAX),
                voters: old.voters,
                locked: false,
            })
        })
    }
}

/// A request for half of the receiver's largest free run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DonateRequest {
    /// The ring the requester belongs to.
    pub genesis: GenesisId,
}

/// One IPAM message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Full ring state (gossip, reply to a proposal, or a donation).
    Ring(Ring),
    /// An initialisation proposal.
    Propose(Proposal),
    /// Asks for a donation.
    DonateRequest(DonateRequest),
    /// The periodic summary of the sender's ring (version 2): the receiver
    /// answers only if its own differs.
    Digest(RingSummary),
}

/// Why an IPAM message was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Truncated, unknown version or type, or a malformed body.
    #[error("malformed ipam message: {0}")]
    Decode(#[from] DecodeError),
    /// A message of ring version 1 or 2 (unsigned): a peer that cannot
    /// sign; upgrade it.
    #[error("unsigned ipam message (ring version {0}) from a pre-signing peer; upgrade it")]
    PreSigning(u8),
    /// A ring that decodes but breaks the ring's rules.
    #[error("invalid ring: {0}")]
    Ring(#[from] RingError),
}

impl Message {
    /// Encodes with the envelope.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = match self {
            Self::Ring(ring) => (TYPE_RING, wire::encode(&ring.to_wire())),
            Self::Propose(p) => (TYPE_PROPOSE, wire::encode(p)),
            Self::DonateRequest(r) => (TYPE_DONATE_REQUEST, wire::encode(r)),
            Self::Digest(d) => (TYPE_DIGEST, wire::encode(d)),
        };
        let mut out = vec![RING_SIGNED_VERSION, kind];
        // Encoding plain data into a Vec cannot fail; an empty body would be refused by the peer.
        out.extend(body.unwrap_or_default());
        out
    }

    /// Decodes hostile bytes: never panics, allocates at most what the
    /// message size allows, checks the ring's structure.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let [version, kind, body @ ..] = bytes else {
            return Err(DecodeError::Truncated.into());
        };
        if *version < RING_SIGNED_VERSION {
            return Err(MessageError::PreSigning(*version));
        }
        if *version > RING_SIGNED_VERSION {
            return Err(DecodeError::UnsupportedVersion(*version).into());
        }
        Ok(match *kind {
            TYPE_RING => Self::Ring(Ring::from_wire(wire::decode::<RingWire>(body)?)?),
            TYPE_PROPOSE => Self::Propose(Proposal::decode(body)?),
            TYPE_DONATE_REQUEST => Self::DonateRequest(wire::decode(body)?),
            TYPE_DIGEST => Self::Digest(wire::decode(body)?),
            other => return Err(DecodeError::UnknownType(other).into()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_message_round_trips() {
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        let ring = Ring::genesis(range, "voters", &[PeerId(1), PeerId(2)].into());
        for m in [
            Message::Ring(ring.clone()),
            Message::Propose(Proposal {
                range,
                voters: vec![PeerId(1), PeerId(2)],
                slots: 3,
                locked: true,
            }),
            Message::DonateRequest(DonateRequest {
                genesis: ring.genesis_id(),
            }),
            Message::Digest(RingSummary::of(&ring)),
        ] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn a_proposal_from_before_slots_reads_as_every_voter_known_and_unlocked() {
        #[derive(Serialize)]
        struct Old {
            range: AddrRange,
            voters: Vec<PeerId>,
        }
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        let old = Old {
            range,
            voters: vec![PeerId(1), PeerId(2), PeerId(3)],
        };
        let mut bytes = vec![RING_SIGNED_VERSION, TYPE_PROPOSE];
        bytes.extend(wire::encode(&old).unwrap());
        assert_eq!(
            Message::decode(&bytes).unwrap(),
            Message::Propose(Proposal {
                range,
                voters: old.voters,
                slots: 3,
                locked: false,
            })
        );
    }

    #[test]
    fn truncated_unknown_and_future_messages_are_refused() {
        assert!(Message::decode(&[]).is_err());
        assert!(Message::decode(&[3]).is_err());
        assert!(Message::decode(&[4, 1, 0]).is_err());
        assert!(Message::decode(&[3, 99]).is_err());
        assert!(Message::decode(&[3, 1, 0, 4]).is_err());
    }

    #[test]
    fn a_digest_is_a_few_dozen_bytes_with_version_3_first() {
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        let ring = Ring::genesis(range, "voters", &[PeerId(1), PeerId(2)].into());
        let bytes = Message::Digest(RingSummary::of(&ring)).encode();
        assert_eq!(&bytes[..2], &[RING_SIGNED_VERSION, TYPE_DIGEST]);
        assert!(bytes.len() <= 40, "{} bytes", bytes.len());
    }

    #[test]
    fn unsigned_messages_of_ring_versions_1_and_2_are_refused_as_pre_signing() {
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        let ring = Ring::genesis(range, "voters", &[PeerId(1)].into());
        let mut bytes = Message::Ring(ring).encode();
        assert_eq!(bytes[0], RING_SIGNED_VERSION);
        for old in [RING_WIRE_VERSION, RING_DIGEST_VERSION] {
            bytes[0] = old;
            assert!(matches!(
                Message::decode(&bytes),
                Err(MessageError::PreSigning(v)) if v == old
            ));
        }
    }

    #[test]
    fn malformed_digests_are_refused() {
        assert!(Message::decode(&[3, TYPE_DIGEST]).is_err());
        assert!(Message::decode(&[3, TYPE_DIGEST, 1, 2]).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::decode(&bytes);
            let mut framed = vec![RING_SIGNED_VERSION, 1];
            framed.extend(&bytes);
            let _ = Message::decode(&framed);
        }
    }
}
