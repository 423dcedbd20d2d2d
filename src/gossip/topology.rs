//! The topology CRDT: one versioned entry per router, merged by version.
//!
//! DESIGN.md "Identity": a router is its static key; its ID derives from the
//! key and the name is a label. Each router is the only writer of its own
//! entry; everyone else keeps the highest version seen (a last-writer-wins
//! register per router, so merges commute). This module holds the table and
//! the checks an entry from the network must pass; it does no I/O.
//!
//! DESIGN.md "Security model": an entry is believed only as its owner signed
//! it. On the wire an entry is a [`SignedEntry`]: the entry's encoded bytes and
//! the owner's signature over them (domain [`Domain::TopologyEntry`], the
//! topology wire version), so every field, including fields a newer build
//! appends, is covered, and relays forward the owner's bytes untouched.

use super::message::TOPOLOGY_VERSION;
use crate::crypto::{Domain, Signature, SigningKey, VerifyingKeys};
use crate::id::{PeerId, ShortId};
use crate::wire;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

/// Most connections one entry may list (an entry over the cap is refused).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most advertised addresses one entry may list.
pub const MAX_ADDRESSES: usize = 16;
/// Longest name, in bytes (a DNS name).
pub const MAX_NAME: usize = 253;
/// Smallest overlay MTU an entry may claim (the IPv4 minimum datagram).
pub const MIN_MTU: u16 = 576;
/// Highest version an entry may carry. Far above anything a router reaches
/// (one version per push, at most two a second, is 2⁶² in 7·10¹⁰ years), and
/// low enough that "one above" any accepted version never overflows: a
/// restarted router always recovers (no saturating freeze).
pub const MAX_VERSION: u64 = 1 << 62;
/// Most one merge may raise the version of an entry already known (2³²: 68
/// years of pushes at two a second). With signatures only the owner can raise
/// it at all; the bound keeps even a buggy or compromised owner from jumping
/// to [`MAX_VERSION`] in one step.
pub const MAX_VERSION_JUMP: u64 = 1 << 32;

/// One router's gossiped description of itself. Field order is the wire
/// order: append new fields only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyEntry {
    /// Derived from `public_key`; checked on receipt.
    pub id: PeerId,
    /// Bumped by the owner on every change; merges keep the highest.
    pub version: u64,
    /// A label (unique in the cluster, see [`RefusedReason::NameClash`]).
    pub name: String,
    /// The router's static X25519 public key.
    pub public_key: [u8; 32],
    /// Where the router accepts connections.
    pub addresses: Vec<SocketAddr>,
    /// The 16-bit ID stamped into data headers.
    pub short_id: ShortId,
    /// The router's overlay MTU; the cluster uses the minimum.
    pub mtu: u16,
    /// The router's connections, sorted by peer, without duplicates.
    pub connections: Vec<ConnectionInfo>,
}

impl fmt::Debug for TopologyEntry {
    // The public key is not secret, but a short form keeps logs readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopologyEntry")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("name", &self.name)
            .field("addresses", &self.addresses)
            .field("short_id", &self.short_id)
            .field("mtu", &self.mtu)
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

/// One connection as its owner reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The router at the other end.
    pub peer: PeerId,
    /// Both TCP and UDP work (DESIGN.md "MTU": a full-size heartbeat got through).
    pub established: bool,
    /// This router dialled.
    pub outbound: bool,
}

/// Why an entry from the network was refused. The table is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusedReason {
    /// The signed bytes do not decode as an entry.
    Malformed,
    /// The public key is not a valid X25519 key (non-canonical or small order).
    BadPublicKey,
    /// The signature is not the owner's over these bytes: a forged or altered
    /// entry in another router's name (or in mine).
    BadSignature,
    /// The version is above [`MAX_VERSION`].
    VersionOutOfRange(u64),
    /// The version is more than [`MAX_VERSION_JUMP`] above the known one.
    VersionJump {
        /// The version held.
        known: u64,
        /// The version offered.
        offered: u64,
    },
    /// Another known router (`holder`) already has this name with another key.
    NameClash {
        /// The router that holds the name.
        holder: PeerId,
    },
    /// The connections are not strictly sorted by peer, or list the owner itself.
    ConnectionsNotCanonical,
    /// The name is empty.
    EmptyName,
    /// The id does not derive from the public key.
    IdMismatch,
    /// The MTU is below [`MIN_MTU`].
    MtuTooSmall(u16),
    /// The name is longer than [`MAX_NAME`] bytes.
    NameTooLong(usize),
    /// More than [`MAX_ADDRESSES`] addresses.
    TooManyAddresses(usize),
    /// More than [`MAX_CONNECTIONS`] connections.
    TooManyConnections(usize),
    /// The appended identity rotation does not verify, or names another
    /// key than the entry's as the successor (`entry_rotation.rs`).
    BadRotation,
    /// The announcement's old key already moved to another key (`successor`):
    /// one old key has one successor, a second one means the old key was
    /// stolen (`gossip/core/rotation.rs`).
    RotationConflict {
        /// The successor known first.
        successor: PeerId,
    },
    /// `crypto::rotation::MAX_TRACKED` retirements are held already.
    TooManyRotations,
}

impl RefusedReason {
    /// A stable label for counters and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadPublicKey => "bad_public_key",
            Self::BadSignature => "bad_signature",
            Self::VersionOutOfRange(_) => "version_out_of_range",
            Self::VersionJump { .. } => "version_jump",
            Self::NameClash { .. } => "name_clash",
            Self::ConnectionsNotCanonical => "connections_not_canonical",
            Self::EmptyName => "empty_name",
            Self::IdMismatch => "id_mismatch",
            Self::MtuTooSmall(_) => "mtu_too_small",
            Self::NameTooLong(_) => "name_too_long",
            Self::TooManyAddresses(_) => "too_many_addresses",
            Self::TooManyConnections(_) => "too_many_connections",
            Self::BadRotation => "bad_rotation",
            Self::RotationConflict { .. } => "rotation_conflict",
            Self::TooManyRotations => "too_many_rotations",
        }
    }
}

/// An entry as its owner signed it: what travels and what relays forward.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEntry {
    /// The entry's wire encoding (`crate::wire`), exactly as the owner made it.
    pub bytes: Vec<u8>,
    /// The owner's signature over `bytes` (domain "weft topology entry", the
    /// topology wire version).
    pub signature: Signature,
}

impl fmt::Debug for SignedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedEntry")
            .field("bytes", &self.bytes.len())
            .field("signature", &self.signature)
            .finish()
    }
}

impl SignedEntry {
    /// Encodes and signs my own entry.
    pub fn sign(entry: &TopologyEntry, key: &SigningKey) -> Self {
        // Encoding a plain struct into a Vec fails only over the size limit,
        // which MAX_CONNECTIONS and MAX_ADDRESSES keep an entry far below.
        Self::sign_bytes(wire::encode(entry).unwrap_or_default(), key)
    }

    /// Signs bytes that start with my entry's encoding (appended fields
    /// after it: `entry_rotation.rs`).
    pub(super) fn sign_bytes(bytes: Vec<u8>, key: &SigningKey) -> Self {
        let signature = key.sign(Domain::TopologyEntry, TOPOLOGY_VERSION, &bytes);
        Self { bytes, signature }
    }

    /// The entry these bytes claim, decoded but not yet believed: check it
    /// with [`SignedEntry::verify`] before using anything but `id` and
    /// `version` (which may only decide to drop it).
    pub fn claim(&self) -> Result<TopologyEntry, RefusedReason> {
        wire::decode(&self.bytes).map_err(|_| RefusedReason::Malformed)
    }

    /// Checks that `claim` (decoded from these bytes) is its owner's: the id
    /// derives from the key, the key is valid, the signature verifies; then
    /// what the entry can get wrong on its own ([`TopologyEntry::validate`]).
    pub fn verify(&self, claim: &TopologyEntry) -> Result<(), RefusedReason> {
        self.verify_with(claim, &mut VerifyingKeys::default())
    }

    /// [`SignedEntry::verify`] with the signer's key from `keys` (derived
    /// there on first use): the same verdict, cheaper when repeated.
    pub fn verify_with(
        &self,
        claim: &TopologyEntry,
        keys: &mut VerifyingKeys,
    ) -> Result<(), RefusedReason> {
        if claim.version > MAX_VERSION {
            return Err(RefusedReason::VersionOutOfRange(claim.version));
        }
        if PeerId::from_public_key(&claim.public_key) != claim.id {
            return Err(RefusedReason::IdMismatch);
        }
        let key = keys
            .key(&claim.public_key)
            .map_err(|_| RefusedReason::BadPublicKey)?;
        key.verify(
            Domain::TopologyEntry,
            TOPOLOGY_VERSION,
            &self.bytes,
            &self.signature,
        )
        .map_err(|_| RefusedReason::BadSignature)?;
        claim.validate()
    }
}

impl TopologyEntry {
    /// Checks what an entry can get wrong on its own (not against the table).
    pub fn validate(&self) -> Result<(), RefusedReason> {
        if self.name.is_empty() {
            return Err(RefusedReason::EmptyName);
        }
        if self.name.len() > MAX_NAME {
            return Err(RefusedReason::NameTooLong(self.name.len()));
        }
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(RefusedReason::TooManyAddresses(self.addresses.len()));
        }
        if self.connections.len() > MAX_CONNECTIONS {
            return Err(RefusedReason::TooManyConnections(self.connections.len()));
        }
        if self.mtu < MIN_MTU {
            return Err(RefusedReason::MtuTooSmall(self.mtu));
        }
        let sorted = self.connections.windows(2).all(|w| w[0].peer < w[1].peer);
        if !sorted || self.connections.iter().any(|c| c.peer == self.id) {
            return Err(RefusedReason::ConnectionsNotCanonical);
        }
        // Last: it hashes.
        if PeerId::from_public_key(&self.public_key) != self.id {
            return Err(RefusedReason::IdMismatch);
        }
        Ok(())
    }

    /// The connection to `peer`, if this entry lists one.
    pub fn connection(&self, peer: PeerId) -> Option<&ConnectionInfo> {
        self.connections
            .binary_search_by_key(&peer, |c| c.peer)
            .ok()
            .and_then(|i| self.connections.get(i))
    }
}

/// The table of entries (each with the signed bytes it arrived as) with an
/// order-independent summary of its `(id, version)` pairs, maintained
/// incrementally, so that anti-entropy can compare two tables in 12 bytes.
#[derive(Clone, Debug, Default)]
pub struct Table {
    entries: BTreeMap<PeerId, (TopologyEntry, SignedEntry)>,
    hash: u64,
}

impl Table {
    /// The entry for `id`.
    pub fn get(&self, id: PeerId) -> Option<&TopologyEntry> {
        self.entries.get(&id).map(|(e, _)| e)
    }

    /// The signed form of `id`'s entry, as it is sent.
    pub fn signed(&self, id: PeerId) -> Option<&SignedEntry> {
        self.entries.get(&id).map(|(_, s)| s)
    }

    /// All entries, by id.
    pub fn iter(&self) -> impl Iterator<Item = &TopologyEntry> {
        self.entries.values().map(|(e, _)| e)
    }

    /// Entries with ids in `[first, last]`, with their signed forms.
    pub fn range(
        &self,
        first: PeerId,
        last: PeerId,
    ) -> impl Iterator<Item = (&TopologyEntry, &SignedEntry)> {
        self.entries.range(first..=last).map(|(_, (e, s))| (e, s))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(count, hash)` over all `(id, version)` pairs.
    pub fn summary(&self) -> (u32, u64) {
        (
            u32::try_from(self.entries.len()).unwrap_or(u32::MAX),
            self.hash,
        )
    }

    /// Inserts or replaces an entry verified against `signed` (or signed by
    /// me), keeping the summary right. Returns the old entry.
    pub fn insert(&mut self, entry: TopologyEntry, signed: SignedEntry) -> Option<TopologyEntry> {
        self.hash = self.hash.wrapping_add(pair_hash(entry.id, entry.version));
        let old = self
            .entries
            .insert(entry.id, (entry, signed))
            .map(|(e, _)| e);
        if let Some(old) = &old {
            self.hash = self.hash.wrapping_sub(pair_hash(old.id, old.version));
        }
        old
    }

    /// Removes `id`'s entry, returning it with its signed form.
    pub fn remove(&mut self, id: PeerId) -> Option<(TopologyEntry, SignedEntry)> {
        let old = self.entries.remove(&id)?;
        self.hash = self.hash.wrapping_sub(pair_hash(old.0.id, old.0.version));
        Some(old)
    }
}

/// The summary contribution of one `(id, version)` pair: summed (wrapping)
/// over the table so that insertion order does not matter.
pub fn pair_hash(id: PeerId, version: u64) -> u64 {
    splitmix(id.0 ^ splitmix(version))
}

/// SplitMix64's finaliser: a cheap, well-mixed 64-bit permutation.
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `count` established outbound connections to peers 0, 1, … (tests).
#[cfg(test)]
pub(crate) fn connections_to(count: usize) -> Vec<ConnectionInfo> {
    (0..count as u64)
        .map(|i| ConnectionInfo {
            peer: PeerId(i),
            established: true,
            outbound: true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(key: u8, version: u64) -> TopologyEntry {
        let public_key = [key; 32];
        TopologyEntry {
            id: PeerId::from_public_key(&public_key),
            version,
            name: format!("r{key}"),
            public_key,
            addresses: vec![],
            short_id: ShortId(key.into()),
            mtu: 1420,
            connections: vec![],
        }
    }

    fn unsigned(e: &TopologyEntry) -> SignedEntry {
        SignedEntry {
            bytes: wire::encode(e).unwrap(),
            signature: Signature::ZERO,
        }
    }

    fn insert(table: &mut Table, e: TopologyEntry) {
        let signed = unsigned(&e);
        table.insert(e, signed);
    }

    #[test]
    fn the_summary_does_not_depend_on_insertion_order() {
        let mut a = Table::default();
        let mut b = Table::default();
        insert(&mut a, entry(1, 1));
        insert(&mut a, entry(2, 1));
        insert(&mut a, entry(1, 2));
        insert(&mut b, entry(2, 1));
        insert(&mut b, entry(1, 2));
        assert_eq!(a.summary(), b.summary());
        b.remove(entry(2, 1).id);
        assert_ne!(a.summary(), b.summary());
    }

    #[test]
    fn a_signed_entry_verifies_only_with_its_owners_signature_over_its_bytes() {
        use crate::crypto::Identity;
        use rand::SeedableRng;
        let owner = Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
        let other = Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(2));
        let mut e = entry(1, 3);
        e.public_key = owner.public_key();
        e.id = owner.id();
        let signed = SignedEntry::sign(&e, &SigningKey::from_identity(&owner));
        let claim = signed.claim().unwrap();
        assert_eq!(claim, e);
        assert_eq!(signed.verify(&claim), Ok(()));
        let by_other = SignedEntry::sign(&e, &SigningKey::from_identity(&other));
        assert_eq!(by_other.verify(&claim), Err(RefusedReason::BadSignature));
        assert_eq!(
            unsigned(&e).verify(&claim),
            Err(RefusedReason::BadSignature)
        );
        // Bytes appended by a newer build are covered too.
        let mut longer = signed.clone();
        longer.bytes.push(0);
        let claim = longer.claim().unwrap();
        assert_eq!(longer.verify(&claim), Err(RefusedReason::BadSignature));
    }

    #[test]
    fn an_entry_whose_id_is_not_its_keys_is_refused() {
        let mut e = entry(1, 1);
        e.id = PeerId(42);
        assert_eq!(e.validate(), Err(RefusedReason::IdMismatch));
    }

    #[test]
    fn oversized_entries_are_refused() {
        let mut e = entry(1, 1);
        e.name = "x".repeat(MAX_NAME + 1);
        assert_eq!(e.validate(), Err(RefusedReason::NameTooLong(MAX_NAME + 1)));
        let mut e = entry(1, 1);
        e.addresses = vec!["192.0.2.1:1".parse().unwrap(); MAX_ADDRESSES + 1];
        assert!(matches!(
            e.validate(),
            Err(RefusedReason::TooManyAddresses(_))
        ));
        let mut e = entry(1, 1);
        e.connections = connections_to(MAX_CONNECTIONS + 1);
        assert!(matches!(
            e.validate(),
            Err(RefusedReason::TooManyConnections(_))
        ));
    }

    #[test]
    fn unsorted_connections_are_refused() {
        let mut e = entry(1, 1);
        let c = |p| ConnectionInfo {
            peer: PeerId(p),
            established: true,
            outbound: true,
        };
        e.connections = vec![c(2), c(1)];
        assert_eq!(e.validate(), Err(RefusedReason::ConnectionsNotCanonical));
        e.connections = vec![c(1), c(1)];
        assert_eq!(e.validate(), Err(RefusedReason::ConnectionsNotCanonical));
    }

    /// What signatures cost per topology entry (a 10-connection entry), in
    /// CPU time: `cargo test --release --lib signed_entry_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "timing; run in release"]
    fn signed_entry_cost() {
        use crate::crypto::Identity;
        use crate::crypto::cpu_time::cpu_ns_per_op;
        use rand::SeedableRng;
        let owner = Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
        let key = SigningKey::from_identity(&owner);
        let mut e = entry(1, 3);
        e.public_key = owner.public_key();
        e.id = owner.id();
        e.connections = connections_to(10);
        let signed = SignedEntry::sign(&e, &key);
        let n = 20_000;
        let sign = cpu_ns_per_op(n, || {
            std::hint::black_box(SignedEntry::sign(std::hint::black_box(&e), &key));
        });
        let verify = cpu_ns_per_op(n, || {
            let claim = signed.claim().unwrap();
            signed.verify(std::hint::black_box(&claim)).unwrap();
        });
        let unsigned = wire::encode(&e).unwrap().len();
        let on_wire = wire::encode(&signed).unwrap().len();
        eprintln!(
            "entry of {unsigned} bytes ({on_wire} signed on the wire): sign {sign} ns, claim+verify {verify} ns (CPU time per op)"
        );
    }
}
