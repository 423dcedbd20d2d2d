//! The IPAM messages carried on the gossip channel as opaque bytes:
//! `[version][type][bincode body]` (DESIGN.md "Wire rules": version and type
//! first, fields appended only, trailing bytes ignored, size capped by
//! `crate::wire`).

use super::range::AddrRange;
use super::ring::{GenesisId, Ring, RingError, RingWire};
use crate::id::PeerId;
use crate::wire::{self, DecodeError};
use serde::{Deserialize, Serialize};

/// The ring channel's wire version spoken here.
pub const RING_WIRE_VERSION: u8 = 1;

const TYPE_RING: u8 = 1;
const TYPE_PROPOSE: u8 = 2;
const TYPE_DONATE_REQUEST: u8 = 3;

/// A voter's proposal to initialise the ring: its view of the range and of
/// the voter set, compared by every receiver (DESIGN.md "Ring initialisation").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The sender's cluster range.
    pub range: AddrRange,
    /// The sender's voter set, sorted ascending.
    pub voters: Vec<PeerId>,
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
}

/// Why an IPAM message was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Truncated, unknown version or type, or a malformed body.
    #[error("malformed ipam message: {0}")]
    Decode(#[from] DecodeError),
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
        };
        let mut out = vec![RING_WIRE_VERSION, kind];
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
        if *version != RING_WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion(*version).into());
        }
        Ok(match *kind {
            TYPE_RING => Self::Ring(Ring::from_wire(wire::decode::<RingWire>(body)?)?),
            TYPE_PROPOSE => Self::Propose(wire::decode(body)?),
            TYPE_DONATE_REQUEST => Self::DonateRequest(wire::decode(body)?),
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
            }),
            Message::DonateRequest(DonateRequest {
                genesis: ring.genesis_id(),
            }),
        ] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn truncated_unknown_and_future_messages_are_refused() {
        assert!(Message::decode(&[]).is_err());
        assert!(Message::decode(&[1]).is_err());
        assert!(Message::decode(&[2, 1, 0]).is_err());
        assert!(Message::decode(&[1, 99]).is_err());
        assert!(Message::decode(&[1, 1, 0, 4]).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::decode(&bytes);
            let mut framed = vec![1, 1];
            framed.extend(&bytes);
            let _ = Message::decode(&framed);
        }
    }
}
