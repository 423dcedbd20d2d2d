//! The Noise handshake between two routers (DESIGN.md "Keys and sessions" → "Handshake", "Key separation").
//!
//! `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s` through snow, over the TCP control
//! connection. Three messages:
//!
//! 1. initiator → responder: `[secret_id:4] ‖ noise(e)` whose payload is the
//!    initiator's wall-clock time (12 bytes: seconds and nanoseconds since the
//!    Unix epoch, big-endian), exactly [`MSG1_LEN`] bytes. With psk0 its tag
//!    already proves the cluster secret, so a responder reads exactly this
//!    much, allocates nothing more, and sends nothing back to a router without
//!    the secret. The time and the ephemeral key come back as a [`Msg1Stamp`]
//!    so that the driver can refuse a replayed message 1 before it does any
//!    Diffie-Hellman work ([`crate::crypto::freshness`]).
//! 2. responder → initiator: `noise(e, ee, s, es)` + payload (the control
//!    layer's hello);
//! 3. initiator → responder: `noise(s, se)` + payload.
//!
//! Then [`Handshake::finish`] derives four keys from snow's raw split with
//! HKDF-BLAKE2s (TCP i→r, TCP r→i, UDP i→r, UDP r→i) and orients them for this
//! side; snow's own transport keys are never used. Any error is final: drop
//! the handshake and close the connection. Payloads are opaque bytes here.
//!
//! Ephemeral keys come from the OS RNG, or from a seed
//! ([`Handshake::initiator_seeded`], [`Handshake::responder_seeded`]) through
//! snow's `CryptoResolver::resolve_rng`, so the simulator is reproducible.

mod error;
mod keys;
mod resolver;

pub use error::HandshakeError;

use crate::crypto::data::DataKey;
use crate::crypto::frame::{FrameOpener, FrameSealer};
use crate::crypto::identity::Identity;
use crate::crypto::secret::{ClusterSecrets, SecretId};
use error::read_error;
use keys::derive_keys;
use resolver::SeededResolver;
use snow::resolvers::{DefaultResolver, FallbackResolver};
use std::fmt;
use zeroize::Zeroizing;

const NOISE_PARAMS: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";
/// Version of the handshake's own framing, bound into the prologue. The
/// per-channel version ranges travel in the payloads instead, so that mixed
/// versions can still agree; a change here makes old and new refuse each other.
/// Version 2 added the timestamp to message 1.
pub const HANDSHAKE_VERSION: u8 = 2;
const SECRET_ID_LEN: usize = 4;
const DH_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Message 1's payload: seconds (u64) and nanoseconds (u32) since the epoch.
const MSG1_PAYLOAD_LEN: usize = 12;
/// Fixed size of message 1: the secret ID, the ephemeral key, the
/// timestamp, the payload's tag.
pub const MSG1_LEN: usize = SECRET_ID_LEN + DH_LEN + MSG1_PAYLOAD_LEN + TAG_LEN;
/// Largest message 2 or 3 accepted or produced (Noise's limit).
pub const MAX_MESSAGE_LEN: usize = 65535;
/// Noise overhead of message 2 (e, encrypted s, payload tag); message 3 has less.
const MSG2_OVERHEAD: usize = DH_LEN + DH_LEN + TAG_LEN + TAG_LEN;
/// Largest payload [`Handshake::write_message`] accepts.
pub const MAX_PAYLOAD_LEN: usize = MAX_MESSAGE_LEN - MSG2_OVERHEAD;

/// The prologue both sides must agree on: `b"weft" ‖ HANDSHAKE_VERSION ‖
/// cluster_range`. Pass the range in canonical form (e.g. `10.32.0.0/12`):
/// routers configured with different ranges fail to authenticate.
pub fn prologue(cluster_range: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + cluster_range.len());
    p.extend_from_slice(b"weft");
    p.push(HANDSHAKE_VERSION);
    p.extend_from_slice(cluster_range.as_bytes());
    p
}

/// One handshake in progress, either side.
pub struct Handshake {
    state: snow::HandshakeState,
    failed: bool,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.state.is_initiator())
            .field("finished", &self.state.is_handshake_finished())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// What an authenticated message 1 says about itself, for the replay guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg1Stamp {
    /// The initiator's wall-clock time when it wrote the message, since the
    /// Unix epoch.
    pub sent_at: std::time::Duration,
    /// The initiator's ephemeral public key: fresh per handshake, so a second
    /// message 1 with the same key is a replay.
    pub ephemeral: [u8; DH_LEN],
}

/// The keys of one finished handshake, oriented for this side.
#[derive(Debug)]
pub struct SessionKeys {
    /// Seals our control records on the TCP connection.
    pub tcp_send: FrameSealer,
    /// Opens the peer's control records.
    pub tcp_recv: FrameOpener,
    /// Seals our data packets.
    pub udp_send: DataKey,
    /// Opens the peer's data packets.
    pub udp_recv: DataKey,
}

fn build(
    identity: &Identity,
    psk: &[u8; 32],
    prologue: &[u8],
    seed: Option<u64>,
    initiator: bool,
) -> Result<snow::HandshakeState, HandshakeError> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(HandshakeError::Noise)?;
    let builder = match seed {
        None => snow::Builder::new(params),
        Some(seed) => snow::Builder::with_resolver(
            params,
            Box::new(FallbackResolver::new(
                Box::new(SeededResolver(seed)),
                Box::new(DefaultResolver),
            )),
        ),
    };
    let private = Zeroizing::new(identity.private_key());
    let state = builder
        .local_private_key(&*private)
        .and_then(|b| b.psk(0, psk))
        .and_then(|b| b.prologue(prologue))
        .and_then(|b| {
            if initiator {
                b.build_initiator()
            } else {
                b.build_responder()
            }
        });
    std::hint::black_box(&private);
    state.map_err(HandshakeError::Noise)
}

impl Handshake {
    /// Starts a handshake as initiator with the primary secret; returns it
    /// and message 1 (exactly [`MSG1_LEN`] bytes) to send. `wall_clock` is
    /// the time since the Unix epoch (the responder refuses a message 1 much
    /// older or newer than its own clock).
    pub fn initiator(
        identity: &Identity,
        secrets: &ClusterSecrets,
        prologue: &[u8],
        wall_clock: std::time::Duration,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        Self::initiator_inner(identity, secrets, prologue, wall_clock, None)
    }

    /// As [`Self::initiator`], with the ephemeral key drawn from `seed`
    /// (simulator and tests only: a real router must use OS randomness).
    pub fn initiator_seeded(
        identity: &Identity,
        secrets: &ClusterSecrets,
        prologue: &[u8],
        wall_clock: std::time::Duration,
        seed: u64,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        Self::initiator_inner(identity, secrets, prologue, wall_clock, Some(seed))
    }

    fn initiator_inner(
        identity: &Identity,
        secrets: &ClusterSecrets,
        prologue: &[u8],
        wall_clock: std::time::Duration,
        seed: Option<u64>,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let secret = secrets.primary();
        let mut state = build(identity, &secret.psk, prologue, seed, true)?;
        let mut timestamp = [0u8; MSG1_PAYLOAD_LEN];
        timestamp[..8].copy_from_slice(&wall_clock.as_secs().to_be_bytes());
        timestamp[8..].copy_from_slice(&wall_clock.subsec_nanos().to_be_bytes());
        let mut msg1 = vec![0u8; MSG1_LEN];
        msg1[..SECRET_ID_LEN].copy_from_slice(&secret.id.0);
        let written = state
            .write_message(&timestamp, &mut msg1[SECRET_ID_LEN..])
            .map_err(HandshakeError::Noise)?;
        if written != MSG1_LEN - SECRET_ID_LEN {
            return Err(HandshakeError::Noise(snow::Error::Input));
        }
        Ok((
            Self {
                state,
                failed: false,
            },
            msg1,
        ))
    }

    /// Answers message 1 as responder: picks the secret named by its ID
    /// (primary or secondary) and authenticates the message; returns the
    /// handshake and the message's [`Msg1Stamp`] (check it before writing
    /// message 2). On any error nothing should be sent back: close the
    /// connection.
    pub fn responder(
        identity: &Identity,
        secrets: &ClusterSecrets,
        prologue: &[u8],
        msg1: &[u8],
    ) -> Result<(Self, Msg1Stamp), HandshakeError> {
        Self::responder_inner(identity, secrets, prologue, msg1, None)
    }

    /// As [`Self::responder`], with the ephemeral key drawn from `seed`
    /// (simulator and tests only).
    pub fn responder_seeded(
        identity: &Identity,
        secrets: &ClusterSecrets,
        prologue: &[u8],
        msg1: &[u8],
        seed: u64,
    ) -> Result<(Self, Msg1Stamp), HandshakeError> {
        Self::responder_inner(identity, secrets, prologue, msg1, Some(seed))
    }

    fn responder_inner(
        identity: &Identity,
        secrets: &ClusterSecrets,
        prologue: &[u8],
        msg1: &[u8],
        seed: Option<u64>,
    ) -> Result<(Self, Msg1Stamp), HandshakeError> {
        if msg1.len() != MSG1_LEN {
            return Err(HandshakeError::Msg1Length { len: msg1.len() });
        }
        let (id_bytes, noise) = msg1.split_at(SECRET_ID_LEN);
        let mut id = [0u8; SECRET_ID_LEN];
        id.copy_from_slice(id_bytes);
        let id = SecretId(id);
        let secret = secrets.find(id).ok_or(HandshakeError::UnknownSecret(id))?;
        let mut state = build(identity, &secret.psk, prologue, seed, false)?;
        let mut payload = [0u8; MSG1_LEN];
        match state.read_message(noise, &mut payload) {
            Ok(MSG1_PAYLOAD_LEN) => {}
            // Cannot happen: the fixed length leaves room for exactly this payload.
            Ok(_) => return Err(HandshakeError::Malformed),
            Err(e) => return Err(read_error(e)),
        }
        let mut secs = [0u8; 8];
        secs.copy_from_slice(&payload[..8]);
        let mut nanos = [0u8; 4];
        nanos.copy_from_slice(&payload[8..MSG1_PAYLOAD_LEN]);
        let mut ephemeral = [0u8; DH_LEN];
        ephemeral.copy_from_slice(&noise[..DH_LEN]);
        let stamp = Msg1Stamp {
            // A nanosecond field over 10^9 carries into the seconds (no panic).
            sent_at: std::time::Duration::from_secs(u64::from_be_bytes(secs)).saturating_add(
                std::time::Duration::from_nanos(u64::from(u32::from_be_bytes(nanos))),
            ),
            ephemeral,
        };
        Ok((
            Self {
                state,
                failed: false,
            },
            stamp,
        ))
    }

    /// Writes the next message (responder: message 2; initiator: message 3)
    /// carrying `payload`.
    pub fn write_message(&mut self, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        if self.failed {
            return Err(HandshakeError::Failed);
        }
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(HandshakeError::PayloadTooLarge { len: payload.len() });
        }
        if self.state.is_handshake_finished() || !self.state.is_my_turn() {
            return Err(HandshakeError::OutOfTurn);
        }
        let mut message = vec![0u8; payload.len() + MSG2_OVERHEAD];
        match self.state.write_message(payload, &mut message) {
            Ok(len) => {
                message.truncate(len);
                Ok(message)
            }
            Err(e) => {
                self.failed = true;
                Err(HandshakeError::Noise(e))
            }
        }
    }

    /// Reads the next message (initiator: message 2; responder: message 3)
    /// and returns its decrypted payload.
    pub fn read_message(&mut self, message: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        if self.failed {
            return Err(HandshakeError::Failed);
        }
        if self.state.is_handshake_finished() || self.state.is_my_turn() {
            return Err(HandshakeError::OutOfTurn);
        }
        if message.len() > MAX_MESSAGE_LEN {
            self.failed = true;
            return Err(HandshakeError::MessageTooLong { len: message.len() });
        }
        let mut payload = vec![0u8; message.len()];
        match self.state.read_message(message, &mut payload) {
            Ok(len) => {
                payload.truncate(len);
                Ok(payload)
            }
            Err(e) => {
                self.failed = true;
                Err(read_error(e))
            }
        }
    }

    /// Whether all three messages have been exchanged.
    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// Whether this side sent message 1.
    pub fn is_initiator(&self) -> bool {
        self.state.is_initiator()
    }

    /// The peer's static public key, once its message carrying it has
    /// authenticated (initiator: after message 2; responder: after message 3).
    pub fn remote_public_key(&self) -> Option<[u8; 32]> {
        self.state
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
    }

    /// Derives this side's session keys. The handshake is consumed either way.
    pub fn finish(mut self) -> Result<SessionKeys, HandshakeError> {
        if self.failed {
            return Err(HandshakeError::Failed);
        }
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::NotFinished);
        }
        let hash = self.state.get_handshake_hash().to_vec();
        let (k_i2r, k_r2i) = self.state.dangerously_get_raw_split();
        let (k_i2r, k_r2i) = (Zeroizing::new(k_i2r), Zeroizing::new(k_r2i));
        let keys = derive_keys(&k_i2r, &k_r2i, &hash);
        Ok(if self.state.is_initiator() {
            SessionKeys {
                tcp_send: FrameSealer::from_bytes(keys.tcp_i2r),
                tcp_recv: FrameOpener::from_bytes(keys.tcp_r2i),
                udp_send: DataKey::from_bytes(keys.udp_i2r),
                udp_recv: DataKey::from_bytes(keys.udp_r2i),
            }
        } else {
            SessionKeys {
                tcp_send: FrameSealer::from_bytes(keys.tcp_r2i),
                tcp_recv: FrameOpener::from_bytes(keys.tcp_i2r),
                udp_send: DataKey::from_bytes(keys.udp_r2i),
                udp_recv: DataKey::from_bytes(keys.udp_i2r),
            }
        })
    }
}

#[cfg(test)]
mod tests;
