//! The contract between the weft router and its local clients (the CNI
//! plugin, `weft status` and the other operator commands): the request and
//! reply types of the unix-socket API ([`proto`]), a blocking client
//! ([`client`]) and the constants both sides must agree on.
//!
//! A crate of its own so that the plugin, which runs once per pod on every
//! node, links serde and nothing of the router (DESIGN.md "Layout": "It
//! depends on a small API crate ... not on the router"). The router
//! re-exports it as `weft::api`.

pub mod client;
#[cfg(feature = "devconf")]
pub mod devconf;
pub mod proto;

/// The router's API socket unless `--api` (router, operator commands) or
/// the network configuration's `socket` (plugin) says otherwise (DESIGN.md
/// "Operator contract").
pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";

/// The route protocol number that tags weft's routes (`ip route show proto
/// 87`): the router's own, and the plugin's /32 route to each pod, which a
/// restarted router reads back to rebuild what is in use.
pub const WEFT_ROUTE_PROTOCOL: u8 = 87;
