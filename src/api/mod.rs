//! The local API on a unix socket: request and reply types (`proto`), the
//! router's server (`server`, tokio) and a blocking client (`client`).

pub mod client;
pub mod proto;
pub mod server;
