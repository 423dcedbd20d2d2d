//! weft: an encrypted mesh overlay network for Kubernetes.
//!
//! ```text
//!  pod netns                     node (host netns)                                  another node
//!  eth0 10.32.1.5/32 ══veth══ vethX ─ kernel routing ─ weft0 (TUN) ─ router ══ UDP 6783 (encrypted) ══ router ─ …
//!                                                                    ╲
//!                                                                     TCP 6783: Noise handshake, gossip, control
//!  weft-cni ── unix socket /run/weft/weft.sock ── router (IPAM, status, metrics)
//! ```
//!
//! The protocol cores (`crypto`, `gossip`, `ipam`) are sans-IO state machines:
//! bytes and `now` in, messages and timers out. The drivers around them
//! (`control`, `router`, `api`, `daemon`) are thin and own all I/O.
//! See `docs/ARCHITECTURE.md` and `../shared/DESIGN.md` for the whole design.

pub mod api;
pub mod cidr;
pub mod config;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod demo;
pub mod forward_policy;
pub mod forwarding;
pub mod gossip;
pub mod host_firewall;
pub mod id;
pub mod ipam;
pub mod kube;
pub mod logging;
pub mod metrics;
pub mod netlink;
pub mod nft_changes;
pub mod nftables;
pub mod persist;
pub mod pod_ranges;
pub mod policy;
pub mod router;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod status_text;
pub mod underlay;
pub mod wire;
