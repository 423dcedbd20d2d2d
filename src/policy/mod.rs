//! Kubernetes NetworkPolicy (DESIGN.md "NetworkPolicy"; issue 18).
//!
//! Phase 1, the pure spine: [`model`] parses the API objects (bounded,
//! hostile-input safe), [`selector`] and [`addrs`] are the vocabulary,
//! [`compile`] turns pods, namespaces and policies into per-pod rules,
//! [`flatten`] makes them disjoint verdict-map entries, and [`nft`] renders
//! those into the router's policy table. Watching the API server, applying
//! the table and the drop log come on top of this (see docs/ARCHITECTURE.md).
//!
//! Identity is the pod address: these rules are only as good as the
//! anti-spoofing that stops a pod or a peer router from sending with
//! another pod's source (DESIGN.md "Security model"; `crate::nftables`
//! drops pod packets failing the reverse-path check, the data plane checks
//! that an inner source lies in the sending router's ranges).

pub mod addrs;
pub mod compile;
pub mod conformance;
pub mod driver;
pub mod droplog;
pub mod flatten;
pub mod local;
pub mod model;
pub mod nflog;
pub mod nft;
pub mod pod;
pub mod scale;
pub mod selector;
pub mod state;
pub mod status;
#[cfg(test)]
mod truth_table;
pub mod watch;

pub use compile::{Cluster, PodInfo, PodRules, Policy, PolicyId, Proto, compile_policy};
pub use flatten::{Decision, Direction};
pub use model::ObjectError;
