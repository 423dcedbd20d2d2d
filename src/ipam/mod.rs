//! Decentralised IP address management (DESIGN.md "Identity, ownership and
//! reclaim"): the ring CRDT that says which router owns every address of the
//! cluster range, its one-time initialisation by a fixed voter set, the
//! per-router allocator (pods and the node's own address), donations
//! between routers, reclaim of dead routers, and persistence.
//!
//! Sans-IO throughout: [`Allocator`] takes messages, commands and `now`, and
//! emits messages, events and a timer; durable writes go through a
//! [`Store`]. The gossip layer carries the messages as opaque bytes.
//!
//! - [`range`]: the cluster range as base + `u128` offsets (IPv4 or IPv6).
//! - [`ring`]: the CRDT, its merge, validation and wire form.
//! - [`space`]: the allocation table and the free-address search.
//! - [`signed`]: who wrote what: the signed items, keys, the verifier.
//! - [`digest`]: the ring's summary and bucket hashes for anti-entropy.
//! - [`delta`]: the differing buckets of a ring, and rebuilding the
//!   sender's ring from them.
//! - [`message`]: the wire messages.
//! - [`store`]: the `Store` trait, in-memory and file stores, the disk format.
//! - [`allocator`]: the core.

pub mod allocator;
pub mod delta;
pub mod digest;
pub mod error;
pub mod message;
pub mod range;
pub mod ring;
pub mod signed;
pub mod space;
pub mod store;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lifecycle;
#[cfg(test)]
mod tests_rotation;
#[cfg(test)]
mod tests_security;
#[cfg(test)]
mod tests_titles_latch;
#[cfg(test)]
mod tests_voters;

pub use allocator::{
    Alarm, Allocator, Config, Destination, DonationRefusal, Event, InUse, Init, OwnedRange, Phase,
    Status, Timer,
};
pub use error::{AllocError, IpamError};
pub use range::AddrRange;
pub use ring::{GenesisId, Ring};
pub use space::{AllocKey, PodName};
pub use store::{FileStore, MemStore, Store};
