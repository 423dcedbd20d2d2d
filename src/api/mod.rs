//! The local API on a unix socket. The request and reply types (`proto`),
//! the blocking client (`client`) and the shared constants live in the
//! `weft-api` crate, which the CNI plugin links without the router; they are
//! re-exported here so that `crate::api::proto::…` reads as before. The
//! router's server (`server`, tokio) stays here.

pub use weft_api::{DEFAULT_SOCKET, WEFT_ROUTE_PROTOCOL, client, proto};

pub mod server;
