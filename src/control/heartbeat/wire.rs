//! The heartbeat's wire form: the body of a `Heartbeat` data packet on the
//! control lane, sealed like data (DESIGN.md "The data header"), and the one
//! place heartbeats seal ([`seal`]); they open with the data plane's
//! [`crate::router::datagram::open_datagram`].
//!
//! Body: `[kind:8][stamp_ms:64]…`, stamps in milliseconds from the sender's
//! epoch, never 0:
//! - 0 ping `[..][0][rtt_us:32]`: answer with a pong at once; `rtt_us` (appended,
//!   0 = none; older routers ignore it) is the RTT the pinging side last
//!   measured, so the answering side of a passive keepalive knows it too;
//! - 1 pong `[..][full]`: echoes a ping's or probe's stamp; `full` = it was a probe;
//! - 2 probe `[..][1]`, padded to the overlay MTU: answered by a pong with `full`;
//! - 3 keepalive `[..][echo:64][held_ms:32]`: needs no answer; echoes the
//!   last stamp received from the peer and how long it was held, so both
//!   sides get an RTT without a pong per ping.
//!
//! Versioning (DESIGN.md "Wire rules"): kinds 0–2 are what every router
//! speaks. Kind 3 is new; a router that predates it counts it as liveness
//! (any authenticated heartbeat is) and ignores the unknown kind, and this
//! router still answers the older routers' pings and probes, so a mixed
//! cluster needs no version bump.

use crate::crypto::data::{DataKey, TAG_LEN};
use crate::router::datagram::seal_datagram;
use crate::router::packet::{DataHeader, HEADER_LEN};

const PING: u8 = 0;
const PONG: u8 = 1;
const PROBE: u8 = 2;
const KEEPALIVE: u8 = 3;
/// kind, stamp, flag.
const SHORT_BODY: usize = 10;
/// kind, stamp, flag, rtt.
const PING_BODY: usize = 14;
/// kind, stamp, echo, held.
const KEEPALIVE_BODY: usize = 21;

/// A decoded heartbeat body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Body {
    /// Asks for a pong now.
    Ping {
        /// The sender's stamp.
        stamp: u64,
        /// The RTT the sender last measured, in microseconds; 0 = none.
        rtt_us: u32,
    },
    /// Answers a ping or a probe.
    Pong {
        /// The stamp it answers.
        stamp: u64,
        /// It answers a full-size probe.
        full: bool,
    },
    /// A ping padded to the overlay MTU (the path-MTU probe).
    Probe {
        /// The sender's stamp.
        stamp: u64,
    },
    /// Proves the path; answered by nothing.
    Keepalive {
        /// The sender's stamp.
        stamp: u64,
        /// The last stamp the sender received from us, and how many
        /// milliseconds it held it before this keepalive; 0 = none.
        echo: u64,
        /// Milliseconds the echo was held.
        held_ms: u32,
    },
}

impl Body {
    /// The body's bytes; a probe is padded to `probe_len`.
    pub(super) fn encode(&self, probe_len: usize) -> Vec<u8> {
        let (kind, stamp) = match *self {
            Self::Ping { stamp, .. } => (PING, stamp),
            Self::Pong { stamp, .. } => (PONG, stamp),
            Self::Probe { stamp } => (PROBE, stamp),
            Self::Keepalive { stamp, .. } => (KEEPALIVE, stamp),
        };
        let len = match self {
            Self::Probe { .. } => probe_len.max(SHORT_BODY),
            Self::Keepalive { .. } => KEEPALIVE_BODY,
            Self::Ping { .. } => PING_BODY,
            _ => SHORT_BODY,
        };
        let mut body = vec![0u8; len];
        body[0] = kind;
        body[1..9].copy_from_slice(&stamp.to_be_bytes());
        match *self {
            Self::Pong { full, .. } => body[9] = u8::from(full),
            Self::Probe { .. } => body[9] = 1,
            Self::Keepalive { echo, held_ms, .. } => {
                body[9..17].copy_from_slice(&echo.to_be_bytes());
                body[17..21].copy_from_slice(&held_ms.to_be_bytes());
            }
            Self::Ping { rtt_us, .. } => body[10..14].copy_from_slice(&rtt_us.to_be_bytes()),
        }
        body
    }

    /// Parses an opened body; `None` for one too short or of an unknown
    /// kind (a newer router's: ignored, but it already proved liveness).
    pub(super) fn decode(body: &[u8]) -> Option<Self> {
        let stamp = u64::from_be_bytes(body.get(1..9)?.try_into().ok()?);
        Some(match *body.first()? {
            PING => Self::Ping {
                stamp,
                // Appended: an older router's ping has none.
                rtt_us: body
                    .get(10..14)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_be_bytes),
            },
            PONG => Self::Pong {
                stamp,
                full: body.get(9) == Some(&1),
            },
            PROBE => Self::Probe { stamp },
            KEEPALIVE => Self::Keepalive {
                stamp,
                echo: u64::from_be_bytes(body.get(9..17)?.try_into().ok()?),
                held_ms: u32::from_be_bytes(body.get(17..21)?.try_into().ok()?),
            },
            _ => return None,
        })
    }
}

/// Seals `body` under `key` behind `header` through the data plane's one
/// implementation of the framing ([`seal_datagram`]): the 16-byte header as
/// associated data, the body, the 16-byte tag.
pub(super) fn seal(key: &DataKey, header: &DataHeader, body: Vec<u8>) -> Vec<u8> {
    let body_len = body.len();
    let mut datagram = vec![0u8; HEADER_LEN + body_len + TAG_LEN];
    datagram[HEADER_LEN..HEADER_LEN + body_len].copy_from_slice(&body);
    // The buffer is sized for exactly this datagram, so sealing cannot fail.
    let _ = seal_datagram(header, key, &mut datagram, body_len);
    datagram
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_body_decodes_to_itself() {
        for body in [
            Body::Ping {
                stamp: 7,
                rtt_us: 1500,
            },
            Body::Pong {
                stamp: 7,
                full: true,
            },
            Body::Probe { stamp: 9 },
            Body::Keepalive {
                stamp: 11,
                echo: 5,
                held_ms: 300,
            },
        ] {
            assert_eq!(Body::decode(&body.encode(1400)), Some(body));
        }
        assert_eq!(Body::Probe { stamp: 1 }.encode(1400).len(), 1400);
    }

    #[test]
    fn the_old_layout_is_kept_for_pings_pongs_and_probes() {
        // What routers before keepalives send and parse: kind, stamp, flag.
        let pong = Body::Pong {
            stamp: 0x0102,
            full: true,
        }
        .encode(0);
        assert_eq!(pong, [1, 0, 0, 0, 0, 0, 0, 1, 2, 1]);
        let probe = Body::Probe { stamp: 3 }.encode(100);
        assert_eq!((probe[0], probe[9]), (2, 1));
    }

    #[test]
    fn a_ping_from_an_older_router_decodes_without_an_rtt() {
        let old = [0, 0, 0, 0, 0, 0, 0, 0, 5, 0];
        assert_eq!(
            Body::decode(&old),
            Some(Body::Ping {
                stamp: 5,
                rtt_us: 0
            })
        );
        let new = Body::Ping {
            stamp: 5,
            rtt_us: 7,
        }
        .encode(0);
        assert_eq!(&new[..10], &old, "the old layout, the RTT appended");
    }

    #[test]
    fn short_unknown_or_truncated_bodies_are_refused() {
        assert_eq!(Body::decode(&[]), None);
        assert_eq!(Body::decode(&[0, 1, 2]), None);
        assert_eq!(Body::decode(&[9; 30]), None);
        assert_eq!(Body::decode(&[3; 12]), None, "a keepalive without its echo");
    }
}
