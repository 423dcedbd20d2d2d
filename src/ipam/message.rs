//! The IPAM messages carried on the gossip channel as opaque bytes:
//! `[version][type][bincode body]` (DESIGN.md "Wire rules": version and type
//! first, fields appended only, trailing bytes ignored, size capped by
//! `crate::wire`).

use super::delta::{DeltaError, RingDelta};
use super::digest::{BucketDigest, RingSummary};
use super::range::AddrRange;
use super::ring::{
    GenesisId, Marks, Ring, RingError, RingWire, TitlesWire, decode_titles_and_marks,
};
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
/// Ring channel version 4 added the bucket exchange (issue 14: send only
/// what differs): [`Message::DeltaDigest`], [`Message::Buckets`] and
/// [`Message::Delta`], which carry this version in their envelope and go
/// only to peers whose handshake offers it. The older types keep version 3,
/// so a version-3 peer reads everything it is sent.
pub const RING_DELTA_VERSION: u8 = 4;
/// Ring channel version 5 added the writers' key exchange
/// ([`Message::WantKeys`], [`Message::Keys`]): a router that cannot check
/// a ring item because it never met its writer (a router that left or died
/// and dropped out of the topology before this one started) asks the
/// sender for the key, which must hash to the writer's ID. Only to peers
/// whose handshake offers version 5.
pub const RING_KEYS_VERSION: u8 = 5;
/// Ring channel version 6 added signed titles (issue 15): a full ring's
/// body is followed by the titles of its entries (`ring/title.rs`), which
/// older decoders ignore as trailing bytes; the envelope keeps version 3
/// so that every signed peer reads it. A ring with titles comes from a
/// version-6 sender, and its jumps over another router's range need one;
/// a ring without them is judged as before and its jumps counted.
pub const RING_TITLES_VERSION: u8 = 6;
/// The newest ring channel version this build reads.
pub const RING_NEWEST_VERSION: u8 = RING_TITLES_VERSION;
/// The most writer IDs or keys one [`Message::WantKeys`] or
/// [`Message::Keys`] carries.
pub const MAX_KEYS: usize = 256;

const TYPE_RING: u8 = 1;
const TYPE_PROPOSE: u8 = 2;
const TYPE_DONATE_REQUEST: u8 = 3;
const TYPE_DIGEST: u8 = 4;
const TYPE_DELTA_DIGEST: u8 = 5;
const TYPE_BUCKETS: u8 = 6;
const TYPE_DELTA: u8 = 7;
const TYPE_WANT_KEYS: u8 = 8;
const TYPE_KEYS: u8 = 9;

/// A writer's X25519 public key, which hashes to its ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterKey {
    /// The writer.
    pub id: PeerId,
    /// Its public key.
    pub public_key: [u8; 32],
}

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
    /// The periodic summary of a sender that reads [`Message::Buckets`] and
    /// [`Message::Delta`] (version 4): a receiver whose ring differs
    /// answers with its bucket hashes, not its ring.
    DeltaDigest(RingSummary),
    /// The receiver's bucket hashes (version 4): the sender of the digest
    /// answers with the buckets that differ.
    Buckets(BucketDigest),
    /// The differing buckets of the sender's ring (version 4).
    Delta(RingDelta),
    /// The writers of ring items the sender could not check, whose keys it
    /// asks for (version 5; at most [`MAX_KEYS`]).
    WantKeys(Vec<PeerId>),
    /// The keys asked for that the sender knows (version 5; at most
    /// [`MAX_KEYS`]).
    Keys(Vec<WriterKey>),
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
    /// A bucket digest or delta that decodes but is not well formed.
    #[error("invalid ring delta: {0}")]
    Delta(#[from] DeltaError),
    /// A key request or answer with more than [`MAX_KEYS`] items.
    #[error("ipam key message with {0} items (at most {MAX_KEYS})")]
    TooManyKeys(usize),
}

impl Message {
    /// Encodes with the envelope.
    pub fn encode(&self) -> Vec<u8> {
        let (version, kind, body) = match self {
            Self::Ring(ring) => (RING_SIGNED_VERSION, TYPE_RING, encode_ring(ring)),
            Self::Propose(p) => (RING_SIGNED_VERSION, TYPE_PROPOSE, wire::encode(p)),
            Self::DonateRequest(r) => (RING_SIGNED_VERSION, TYPE_DONATE_REQUEST, wire::encode(r)),
            Self::Digest(d) => (RING_SIGNED_VERSION, TYPE_DIGEST, wire::encode(d)),
            Self::DeltaDigest(d) => (RING_DELTA_VERSION, TYPE_DELTA_DIGEST, wire::encode(d)),
            Self::Buckets(b) => (RING_DELTA_VERSION, TYPE_BUCKETS, wire::encode(b)),
            Self::Delta(d) => (RING_DELTA_VERSION, TYPE_DELTA, encode_delta(d)),
            Self::WantKeys(ids) => (RING_KEYS_VERSION, TYPE_WANT_KEYS, wire::encode(ids)),
            Self::Keys(keys) => (RING_KEYS_VERSION, TYPE_KEYS, wire::encode(keys)),
        };
        let mut out = vec![version, kind];
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
        if *version > RING_NEWEST_VERSION {
            return Err(DecodeError::UnsupportedVersion(*version).into());
        }
        let delta = *version >= RING_DELTA_VERSION;
        let keys = *version >= RING_KEYS_VERSION;
        Ok(match *kind {
            TYPE_RING => Self::Ring(decode_ring(body)?),
            TYPE_PROPOSE => Self::Propose(Proposal::decode(body)?),
            TYPE_DONATE_REQUEST => Self::DonateRequest(wire::decode(body)?),
            TYPE_DIGEST => Self::Digest(wire::decode(body)?),
            TYPE_DELTA_DIGEST if delta => Self::DeltaDigest(wire::decode(body)?),
            TYPE_BUCKETS if delta => {
                let b: BucketDigest = wire::decode(body)?;
                if !BucketDigest::valid_count(b.hashes.len()) {
                    let count = u32::try_from(b.hashes.len()).unwrap_or(u32::MAX);
                    return Err(DeltaError::BucketCount(count).into());
                }
                Self::Buckets(b)
            }
            TYPE_DELTA if delta => {
                let d = decode_delta(body)?;
                d.check()?;
                Self::Delta(d)
            }
            TYPE_WANT_KEYS if keys => Self::WantKeys(bounded(wire::decode(body)?)?),
            TYPE_KEYS if keys => Self::Keys(bounded(wire::decode(body)?)?),
            other => return Err(DecodeError::UnknownType(other).into()),
        })
    }
}

/// A ring's body: the ring, then its titles and [`Marks`] unless it is
/// sent as a sender below ring version 6 sends it
/// ([`RING_TITLES_VERSION`]). A version-6 build from before the marks
/// reads the titles and ignores what follows them.
fn encode_ring(ring: &Ring) -> Result<Vec<u8>, bincode::error::EncodeError> {
    let mut body = wire::encode(&ring.to_wire())?;
    if !ring.untitled() {
        body.extend(wire::encode(&ring.titles_wire())?);
        body.extend(wire::encode(&ring.marks())?);
    }
    Ok(body)
}

/// Reads [`encode_ring`]'s body: nothing after the ring means a sender
/// that sends no titles; nothing after the titles, no marks.
fn decode_ring(body: &[u8]) -> Result<Ring, MessageError> {
    let (ring, read) = wire::decode_prefix::<RingWire>(body)?;
    let ring = Ring::from_wire(ring)?;
    let (titles, marks) = decode_titles(body.get(read..).unwrap_or_default())?;
    Ok(ring.with_titles(titles)?.with_marks(marks))
}

/// The titles and marks after a ring or a delta (both absent from a
/// sender below ring version 6; marks absent from a build before them).
fn decode_titles(rest: &[u8]) -> Result<(Option<TitlesWire>, Marks), MessageError> {
    Ok(match decode_titles_and_marks(rest)? {
        Some((titles, marks)) => (Some(titles), marks),
        None => (None, Marks::default()),
    })
}

/// A delta's body: the delta, then the titles of its entries and the
/// sender's [`Marks`] if it has titles (ring version 6, as
/// [`encode_ring`]).
fn encode_delta(delta: &RingDelta) -> Result<Vec<u8>, bincode::error::EncodeError> {
    let mut body = wire::encode(delta)?;
    if let Some(titles) = &delta.titles {
        body.extend(wire::encode(titles)?);
        body.extend(wire::encode(&delta.marks)?);
    }
    Ok(body)
}

/// Reads [`encode_delta`]'s body: nothing after the delta means a sender
/// that sends no titles. Shape checks are [`RingDelta::check`]'s.
fn decode_delta(body: &[u8]) -> Result<RingDelta, MessageError> {
    let (mut delta, read) = wire::decode_prefix::<RingDelta>(body)?;
    (delta.titles, delta.marks) = decode_titles(body.get(read..).unwrap_or_default())?;
    Ok(delta)
}

/// A decoded list of keys or IDs, refused above [`MAX_KEYS`] (the wire's
/// size cap already bounds the allocation).
fn bounded<T>(items: Vec<T>) -> Result<Vec<T>, MessageError> {
    match items.len() {
        n if n > MAX_KEYS => Err(MessageError::TooManyKeys(n)),
        _ => Ok(items),
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
            Message::DeltaDigest(RingSummary::of(&ring)),
            Message::Buckets(BucketDigest::of(&ring, 8)),
            Message::Delta(RingDelta::cut(&ring, 8, &[0, 3])),
            Message::WantKeys(vec![PeerId(3), PeerId(4)]),
            Message::Keys(vec![WriterKey {
                id: PeerId(3),
                public_key: [7; 32],
            }]),
        ] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn the_bucket_exchange_travels_as_version_4_and_only_as_that() {
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        let ring = Ring::genesis(range, "voters", &[PeerId(1), PeerId(2)].into());
        for m in [
            Message::DeltaDigest(RingSummary::of(&ring)),
            Message::Buckets(BucketDigest::of(&ring, 8)),
            Message::Delta(RingDelta::cut(&ring, 8, &[1])),
        ] {
            let mut bytes = m.encode();
            assert_eq!(bytes[0], RING_DELTA_VERSION);
            // A version-3 envelope never carries these types.
            bytes[0] = RING_SIGNED_VERSION;
            assert!(Message::decode(&bytes).is_err());
        }
        // The older types keep the envelope a version-3 peer reads.
        assert_eq!(Message::Ring(ring).encode()[0], RING_SIGNED_VERSION);
    }

    #[test]
    fn the_key_exchange_travels_as_version_5_only_and_is_bounded() {
        let want = Message::WantKeys(vec![PeerId(9)]);
        let mut bytes = want.encode();
        assert_eq!(bytes[0], RING_KEYS_VERSION);
        bytes[0] = RING_DELTA_VERSION;
        assert!(Message::decode(&bytes).is_err());
        let keys = Message::Keys(vec![WriterKey {
            id: PeerId(3),
            public_key: [3; 32],
        }]);
        // The fuzz seeds of the `ipam_message` target when
        // `WEFT_FUZZ_SEEDS=DIR` is set.
        if let Some(dir) = std::env::var_os("WEFT_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir);
            std::fs::write(dir.join("seed-want-keys"), want.encode()).unwrap();
            std::fs::write(dir.join("seed-keys"), keys.encode()).unwrap();
        }
        assert_eq!(Message::decode(&keys.encode()).unwrap(), keys);
        let many = Message::WantKeys((0..=MAX_KEYS as u64).map(PeerId).collect());
        assert!(matches!(
            Message::decode(&many.encode()),
            Err(MessageError::TooManyKeys(n)) if n == MAX_KEYS + 1
        ));
    }

    /// Also writes the version-4 seeds of the `ipam_message` fuzz corpus
    /// when `WEFT_FUZZ_SEEDS=DIR` is set: deltas of the ring that target
    /// patches them onto (voters 1, 2, 3 over 10.32.0.0/12).
    #[test]
    fn the_fuzz_seeds_of_the_bucket_exchange_round_trip() {
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        let base = Ring::genesis(range, "voters", &[PeerId(1), PeerId(2), PeerId(3)].into());
        let mut changed = base.clone();
        let (lo, hi) = changed.ranges_of(PeerId(2))[0];
        assert!(changed.donate(PeerId(2), lo + 16, hi, PeerId(4)));
        changed.set_record(PeerId(2), 10, 3);
        changed.reclaim(PeerId(1), PeerId(3));
        let n = crate::ipam::digest::MIN_BUCKETS;
        let differing = BucketDigest::of(&base, n).differing(&changed);
        let seeds = [
            (
                "delta-digest",
                Message::DeltaDigest(RingSummary::of(&changed)),
            ),
            ("buckets", Message::Buckets(BucketDigest::of(&changed, n))),
            (
                "delta",
                Message::Delta(RingDelta::cut(&changed, n, &differing)),
            ),
            (
                "delta-all",
                Message::Delta(RingDelta::cut(&changed, n, &[0, 1, 2, 3, 4, 5, 6, 7])),
            ),
        ];
        for (name, m) in &seeds {
            let bytes = m.encode();
            assert_eq!(&Message::decode(&bytes).unwrap(), m);
            if let Some(dir) = std::env::var_os("WEFT_FUZZ_SEEDS") {
                std::fs::write(std::path::Path::new(&dir).join(name), &bytes).unwrap();
            }
        }
        let Message::Delta(delta) = &seeds[2].1 else {
            unreachable!()
        };
        // Buckets carry their entries' titles: the rebuilt ring is the
        // sender's, titles included.
        assert!(delta.titles.as_ref().is_some_and(|t| !t.is_empty()));
        assert_eq!(delta.patch(&base).unwrap(), changed);
    }

    #[test]
    fn a_deltas_titles_follow_its_body_and_an_older_decoder_ignores_them() {
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        let base = Ring::genesis(range, "voters", &[PeerId(1), PeerId(2), PeerId(3)].into());
        let mut changed = base.clone();
        let (lo, hi) = changed.ranges_of(PeerId(2))[0];
        assert!(changed.donate(PeerId(2), lo + 16, hi, PeerId(4)));
        let n = crate::ipam::digest::MIN_BUCKETS;
        let delta = RingDelta::cut(&changed, n, &BucketDigest::of(&base, n).differing(&changed));
        let titled = Message::Delta(delta.clone()).encode();
        let untitled = Message::Delta(delta.clone().without_titles()).encode();
        assert!(titled.len() > untitled.len() && titled.starts_with(&untitled));
        // A version-4 or -5 decoder reads the body and ignores the titles.
        let old: RingDelta = wire::decode(&titled[2..]).unwrap();
        assert_eq!(old, delta.clone().without_titles());
        assert_eq!(
            Message::decode(&untitled).unwrap(),
            Message::Delta(delta.clone().without_titles())
        );
        // Titles that do not decode refuse the delta.
        let mut bad = untitled.clone();
        bad.extend([1, 0xff]);
        assert!(Message::decode(&bad).is_err());
        if let Some(dir) = std::env::var_os("WEFT_FUZZ_SEEDS") {
            std::fs::write(std::path::Path::new(&dir).join("delta-titled"), &titled).unwrap();
        }
        assert_eq!(Message::decode(&titled).unwrap(), Message::Delta(delta));
    }

    fn latched_titles(m: &Message) -> TitlesWire {
        match m {
            Message::Ring(r) => r.titles_wire(),
            Message::Delta(d) => d.titles.clone().unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_titles_latch_rides_after_the_titles_and_a_build_before_it_ignores_it() {
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        let base = Ring::genesis(range, "voters", &[PeerId(1), PeerId(2), PeerId(3)].into());
        let mut latched = base.clone();
        let (lo, hi) = latched.ranges_of(PeerId(2))[0];
        assert!(latched.donate(PeerId(2), lo + 16, hi, PeerId(4)));
        assert!(latched.require_titles());
        let n = crate::ipam::digest::MIN_BUCKETS;
        let delta = RingDelta::cut(&latched, n, &BucketDigest::of(&base, n).differing(&latched));
        for m in [
            Message::Ring(latched.clone()),
            Message::Delta(delta.clone()),
        ] {
            let bytes = m.encode();
            assert_eq!(Message::decode(&bytes).unwrap(), m);
            // The same message from a build before the latch (titles,
            // nothing after them) reads as unlatched.
            let mut was = m.clone();
            match &mut was {
                Message::Ring(r) => *r = r.clone().with_marks(Marks::default()),
                Message::Delta(d) => d.marks = Marks::default(),
                _ => unreachable!(),
            }
            let marks = wire::encode(&Marks::default()).unwrap().len();
            let before = &bytes[..bytes.len() - marks];
            assert_eq!(Message::decode(before).unwrap(), was);
            // A build before the latch decodes our titles and stops there.
            let titles_at = bytes.len() - marks - wire::encode(&latched_titles(&m)).unwrap().len();
            let (_, read) = wire::decode_prefix::<TitlesWire>(&bytes[titles_at..]).unwrap();
            assert_eq!(titles_at + read + marks, bytes.len());
            // Marks that do not decode refuse the message.
            let mut bad = before.to_vec();
            bad.push(2);
            assert!(Message::decode(&bad).is_err());
            if let Some(dir) = std::env::var_os("WEFT_FUZZ_SEEDS") {
                let name = match m {
                    Message::Ring(_) => "ring-latched",
                    _ => "delta-latched",
                };
                std::fs::write(std::path::Path::new(&dir).join(name), &bytes).unwrap();
            }
        }
        assert_eq!(delta.patch(&base).unwrap(), latched);
        // A sender without titles sends no latch either.
        let old = Message::Ring(latched.clone().without_titles()).encode();
        let Message::Ring(read) = Message::decode(&old).unwrap() else {
            unreachable!()
        };
        assert!(read.untitled() && !read.titles_required());
    }

    #[test]
    fn bucket_digests_of_an_invalid_count_and_unchecked_deltas_are_refused() {
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        let ring = Ring::genesis(range, "voters", &[PeerId(1), PeerId(2)].into());
        let mut b = BucketDigest::of(&ring, 8);
        b.hashes.pop();
        assert!(Message::decode(&Message::Buckets(b).encode()).is_err());
        let mut d = RingDelta::cut(&ring, 8, &[0, 1, 2, 3, 4, 5, 6, 7]);
        d.indices = vec![];
        assert!(Message::decode(&Message::Delta(d).encode()).is_err());
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
        assert!(Message::decode(&[RING_NEWEST_VERSION + 1, 4, 0, 0, 0]).is_err());
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
