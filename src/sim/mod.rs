//! The deterministic simulator (DESIGN.md "Sans-IO cores"): hundreds of
//! sans-IO cores in one process over a seeded network with delay, loss,
//! duplication, partitions and restarts, on a virtual clock that jumps to the
//! earliest deadline, with a bounded step count and invariant checks after
//! every step. A failure names the seed so the run can be replayed.
//!
//! - [`net`]: the network emulator, generic over the message type (the
//!   gossip and IPAM harnesses share it);
//! - [`gossip`]: the topology harness ([`gossip::GossipSim`]);
//! - [`link`]: TCP control links in pairs over delayed, rechunked byte
//!   pipes ([`link::LinkPair`], [`link::run_links`]);
//! - [`nat`]: NAT gateways (mapping, filtering, hairpin, rebinding)
//!   between sites, for harnesses that model endpoints (`nat_tests.rs`
//!   runs the endpoint and voter cores over it, `punch_tests.rs` the punch
//!   core between every pair of gateway kinds);
//! - `ipam` (tests only): many IPAM cores with joins, kills, restarts,
//!   partitions, donations, reclaims and leaves, checking invariant 1;
//! - `ring_bench` (tests only, ignored): the ring channel's idle bytes per
//!   router, full rings against digests;
//! - `cold_start` (tests only): issue 16's cold starts, 200 routers
//!   (1,000 ignored) with dials failing at random, and a cluster-wide
//!   outage;
//! - `control_bench` (tests only, ignored): control bytes per router per
//!   second over every channel, at idle and under traffic.

#[cfg(test)]
mod cold_start;
#[cfg(test)]
mod control_bench;
pub mod gossip;
#[cfg(test)]
mod ipam;
pub mod link;
pub mod nat;
#[cfg(test)]
mod nat_tests;
pub mod net;
#[cfg(test)]
mod punch_tests;
#[cfg(test)]
mod ring_bench;

#[cfg(test)]
mod tests;
