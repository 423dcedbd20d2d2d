//! Why a control link ended ([`LinkError`]) and how that is counted
//! ([`HandshakeFailure`], the labels of status and metrics).
//!
//! Grouped by cause as rustls does: malformed bytes, a peer that misbehaved
//! (well-formed but wrong in this state), refused by policy, a timeout, I/O
//! (constructed by the driver), and API misuse or a local fault. Every
//! variant that the link reports in [`super::LinkEvent::Failed`] is final: the
//! link has ended and ignores all later input.

use crate::crypto::frame::FrameError;
use crate::crypto::freshness::Msg1Refused;
use crate::crypto::handshake::HandshakeError;
use crate::wire::DecodeError;

/// Why a control link failed. See the module docs for the groups.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    // Malformed bytes.
    /// A handshake message 2 or 3 announced more than
    /// [`super::super::proto::MAX_HANDSHAKE_MESSAGE`] bytes. State changed:
    /// the link ended, nothing was allocated for it.
    #[error("handshake message of {len} bytes")]
    HandshakeMessageTooLong {
        /// The announced length.
        len: usize,
    },
    /// A record announced more than [`super::super::proto::MAX_RECORD`]
    /// bytes. State changed: the link ended, nothing was allocated for it.
    #[error("record of {len} bytes exceeds the limit")]
    RecordTooLong {
        /// The announced length.
        len: usize,
    },
    /// A handshake message 3 that failed to authenticate (the responder's
    /// side; message 1 already proved the secret, so this is tampering or a
    /// broken peer). State changed: the link ended.
    #[error("{0}")]
    BadHandshakeMessage(HandshakeError),
    /// A hello in message 2 or 3 that authenticated but does not decode.
    /// State changed: the link ended.
    #[error("malformed hello: {0}")]
    BadHello(DecodeError),
    /// A record failed to open: tampered, reordered or under the wrong key.
    /// State changed: the link ended.
    #[error("record failed to authenticate: {0}")]
    BadRecord(FrameError),
    /// A record that opened but holds no control message we can decode.
    /// State changed: the link ended.
    #[error("malformed record: {0}")]
    BadMessage(DecodeError),
    /// Fragments over the size cap, or a fragment inside a fragment. State
    /// changed: the link ended.
    #[error("malformed fragments: {0}")]
    BadFragments(DecodeError),
    /// A rekey message 2 or 3 that failed to authenticate or whose payload
    /// does not decode. State changed: the link ended.
    #[error("rekey: {0}")]
    BadRekey(String),

    // The peer misbehaved: well-formed, wrong in this state.
    /// Bytes from the responder's peer before message 2 was sent (a real
    /// initiator waits for it). State changed: the link ended.
    #[error("{len} bytes sent before handshake message 2")]
    UnexpectedBytes {
        /// How many bytes were waiting.
        len: usize,
    },
    /// A hello or rekey hello whose receiver index is 0 or over 24 bits.
    /// State changed: the link ended.
    #[error("invalid session index {index}")]
    InvalidSessionIndex {
        /// The index it named.
        index: u32,
    },
    /// A `TcpKeySwitch` with no completed rekey to switch to. State changed:
    /// the link ended.
    #[error("key switch without a completed rekey")]
    KeySwitchWithoutRekey,
    /// A rekey message with a step other than 1, 2 or 3. State changed: the
    /// link ended.
    #[error("unknown rekey step {step}")]
    UnknownRekeyStep {
        /// The step it named.
        step: u8,
    },
    /// A rekey under another static key than the connection's. State
    /// changed: the link ended.
    #[error("rekey under another static key than the connection's")]
    RekeyUnderOtherKey,
    /// A rekey under another static key with an identity announcement that
    /// does not hand the link's key over to that key (forged, someone
    /// else's, or for another key). State changed: the link sent `Close`
    /// and ended.
    #[error("rekey under a new key refused: its announcement {0}")]
    BadRotation(&'static str),

    // Refused by policy.
    /// Message 1 named a secret we do not hold or failed to authenticate
    /// (responder), or message 2 failed to authenticate (initiator): the
    /// peer does not hold our cluster secret. State changed: the link ended
    /// and sent nothing back.
    #[error("{0}")]
    Refused(HandshakeError),
    /// An authenticated message 1 admitted before. State changed: the link
    /// ended and sent nothing back.
    #[error("handshake message 1 was replayed")]
    Replayed,
    /// An authenticated message 1 timestamped too far from our clock. State
    /// changed: the link ended and sent nothing back.
    #[error("{0}")]
    ClockSkew(Msg1Refused),
    /// The peer's static key is our own: we dialled ourselves. State
    /// changed: the link ended.
    #[error("connected to ourselves")]
    SelfConnection,
    /// A rekey message 1 from the established peer that names a secret we
    /// no longer hold or fails to authenticate: its secret was rotated out
    /// (DESIGN.md "Security model"). State changed: the link sent `Close`
    /// and ended.
    #[error("rekey refused: {0}")]
    RekeyRefused(HandshakeError),
    /// No common version on some channel, or another cluster range. State
    /// changed: the link ended.
    #[error("{0}")]
    Incompatible(String),

    // Timeouts.
    /// The handshake did not finish within
    /// [`super::HANDSHAKE_TIMEOUT`]. State changed: the link ended.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The record keys reached [`super::REJECT_AFTER`] without a completed
    /// rekey (a peer that does not answer rekeys keeps nothing past that
    /// age). State changed: the link ended.
    #[error("record keys expired without a rekey")]
    KeysExpired,
    /// A write did not finish in time (constructed by the driver). State
    /// changed: the link ended.
    #[error("write timed out")]
    WriteTimeout,

    // I/O (constructed by the driver).
    /// The peer closed the TCP connection. State changed: the link ended.
    #[error("connection closed by peer")]
    PeerHungUp,
    /// Reading or writing the socket failed. State changed: the link ended.
    #[error("{0}")]
    Io(#[from] std::io::Error),

    // API misuse or a local fault (never caused by the peer's bytes alone).
    /// `send` or `rekey` before the handshake completed or after the link
    /// ended. No state change.
    #[error("the control link is not established")]
    NotEstablished,
    /// `switch_identity` with an announcement that does not move our key
    /// to the given identity, or while an earlier switch is not complete.
    /// No state change.
    #[error("identity switch refused: {0}")]
    SwitchRefused(&'static str),
    /// snow refused to start or continue a handshake of ours (a bug or a
    /// broken RNG). State changed: the link ended.
    #[error("{0}")]
    Local(HandshakeError),
}

impl LinkError {
    /// How a failure before the link came up is counted in status and
    /// metrics: the same labels as before the link was a core.
    pub fn handshake_failure(&self) -> HandshakeFailure {
        match self {
            Self::Refused(_) | Self::RekeyRefused(_) => HandshakeFailure::Refused,
            Self::Replayed => HandshakeFailure::Replayed,
            Self::ClockSkew(skew) => HandshakeFailure::ClockSkew(skew.to_string()),
            Self::SelfConnection => HandshakeFailure::SelfConnection,
            Self::Incompatible(why) => HandshakeFailure::Incompatible(why.clone()),
            other => HandshakeFailure::Protocol(other.to_string()),
        }
    }
}

/// Why a handshake failed, as counted in status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Could not connect at all.
    Unreachable(String),
    /// The peer does not hold our cluster secret (or we not theirs).
    Refused,
    /// Malformed or truncated messages, or a timeout.
    Protocol(String),
    /// We dialled ourselves.
    SelfConnection,
    /// The peer speaks no common version on some channel, or another range.
    Incompatible(String),
    /// An authenticated message 1 we admitted before: a replay.
    Replayed,
    /// An authenticated message 1 timestamped too far from our clock: an old
    /// replay, or a peer whose clock is off (the text says how far).
    ClockSkew(String),
}

impl HandshakeFailure {
    /// The label in status and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Refused => "refused",
            Self::Protocol(_) => "protocol",
            Self::SelfConnection => "self",
            Self::Incompatible(_) => "incompatible",
            Self::Replayed => "replayed",
            Self::ClockSkew(_) => "clock_skew",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_keeps_its_status_label() {
        let cases = [
            (
                LinkError::Refused(HandshakeError::Authentication),
                "refused",
            ),
            (LinkError::Replayed, "replayed"),
            (
                LinkError::ClockSkew(Msg1Refused::ClockSkew {
                    skew_secs: 400,
                    direction: "behind",
                }),
                "clock_skew",
            ),
            (LinkError::SelfConnection, "self"),
            (LinkError::Incompatible("range".into()), "incompatible"),
            (LinkError::HandshakeTimeout, "protocol"),
            (LinkError::PeerHungUp, "protocol"),
            (LinkError::RecordTooLong { len: 1 << 20 }, "protocol"),
        ];
        for (error, label) in cases {
            assert_eq!(error.handshake_failure().as_str(), label, "{error}");
        }
        assert_eq!(
            HandshakeFailure::Unreachable("x".into()).as_str(),
            "unreachable"
        );
        assert_eq!(
            LinkError::HandshakeTimeout.handshake_failure(),
            HandshakeFailure::Protocol("handshake timed out".into())
        );
    }
}
