//! Gossip: peer identity and topology (a CRDT merged by version), gossip
//! messages, the connection maker (who to dial, back-off) and shortest-path
//! routes. All sans-IO (DESIGN.md "Sans-IO cores"); the tokio driver for the
//! TCP control connections lives beside these cores and owns all I/O.
//!
//! - [`message`]: the frame envelope `[version][channel][type]` and the
//!   topology channel's messages; the channel byte lets the driver route the
//!   IPAM ring's frames to the ring core.
//! - [`topology`]: entries, their checks, the table and its summary hash.
//! - [`entry_rotation`]: the identity rotation appended to a router's entry.
//! - [`core`]: [`Gossip`], the topology core.
//! - [`aliases`]: a rotated router's IDs as one node for routes.
//! - [`routes`]: next hop per destination over established connections.
//! - [`connection_maker`]: [`ConnectionMaker`], dialling and back-off.

pub mod aliases;
pub mod connection_maker;
pub mod core;
pub mod entry_rotation;
pub mod message;
pub mod routes;
pub mod topology;

pub use self::connection_maker::{ConnectionMaker, ConnectionMakerConfig};
pub use self::core::{Gossip, GossipConfig, GossipError, GossipEvent, GossipTimer, PeerInfo};
pub use self::message::{Channel, Frame};
pub use self::routes::{Route, Routes};
pub use self::topology::{ConnectionInfo, RefusedReason, TopologyEntry};
