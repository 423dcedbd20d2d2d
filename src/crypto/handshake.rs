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

use crate::crypto::data::DataKey;
use crate::crypto::frame::{FrameOpener, FrameSealer};
use crate::crypto::identity::Identity;
use crate::crypto::secret::{ClusterSecrets, SecretId};
use rand::SeedableRng;
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

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

/// Supplies seeded randomness to snow; everything else comes from the default resolver.
struct SeededResolver(u64);

struct SeededRandom(rand::rngs::StdRng);

impl snow::types::Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        rand::RngCore::fill_bytes(&mut self.0, dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(SeededRandom(rand::rngs::StdRng::seed_from_u64(
            self.0,
        ))))
    }
    fn resolve_dh(&self, _: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        None
    }
    fn resolve_hash(&self, _: &snow::params::HashChoice) -> Option<Box<dyn snow::types::Hash>> {
        None
    }
    fn resolve_cipher(
        &self,
        _: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        None
    }
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

/// The four HKDF outputs; wiped on drop once the ciphers hold them.
struct DerivedKeys {
    tcp_i2r: [u8; 32],
    tcp_r2i: [u8; 32],
    udp_i2r: [u8; 32],
    udp_r2i: [u8; 32],
}

impl Drop for DerivedKeys {
    fn drop(&mut self) {
        for key in [
            &mut self.tcp_i2r,
            &mut self.tcp_r2i,
            &mut self.udp_i2r,
            &mut self.udp_r2i,
        ] {
            key.zeroize();
        }
    }
}

/// HKDF-BLAKE2s: IKM = both raw split keys, salt = the handshake hash (binds
/// the transcript), one distinct label per key (DESIGN "Key separation").
fn derive_keys(k_i2r: &[u8; 32], k_r2i: &[u8; 32], handshake_hash: &[u8]) -> DerivedKeys {
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(k_i2r);
    ikm[32..].copy_from_slice(k_r2i);
    let hkdf = hkdf::SimpleHkdf::<blake2::Blake2s256>::new(Some(handshake_hash), &*ikm);
    let expand = |label: &[u8]| {
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF's 255 × 32-byte limit, so this cannot fail.
        if hkdf.expand(label, &mut out).is_err() {
            unreachable!("HKDF output length is fixed and valid");
        }
        out
    };
    DerivedKeys {
        tcp_i2r: expand(b"weft v1 tcp initiator->responder"),
        tcp_r2i: expand(b"weft v1 tcp responder->initiator"),
        udp_i2r: expand(b"weft v1 udp initiator->responder"),
        udp_r2i: expand(b"weft v1 udp responder->initiator"),
    }
}

/// Maps snow's errors on received bytes: a failed decryption means the
/// sender lacks the secret (or a key) or the bytes were tampered with;
/// anything else is malformed input.
fn read_error(e: snow::Error) -> HandshakeError {
    match e {
        snow::Error::Decrypt | snow::Error::Dh => HandshakeError::Authentication,
        snow::Error::Input => HandshakeError::Malformed,
        other => HandshakeError::Noise(other),
    }
}

/// Why a handshake step failed. Errors on received bytes mark the handshake
/// failed (every later call returns [`HandshakeError::Failed`]); the driver
/// closes the connection without answering.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    // Malformed bytes.
    /// Message 1 is not exactly [`MSG1_LEN`] bytes. No handshake was created.
    #[error("handshake message 1 is {len} bytes, expected exactly {MSG1_LEN}")]
    Msg1Length {
        /// Bytes received.
        len: usize,
    },
    /// A message 2 or 3 longer than [`MAX_MESSAGE_LEN`]. State changed: failed.
    #[error("handshake message of {len} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    MessageTooLong {
        /// Bytes received.
        len: usize,
    },
    /// Too short or otherwise unparseable. State changed: failed.
    #[error("malformed handshake message")]
    Malformed,

    // Authentication failed.
    /// Message 1 names a secret this router does not hold: the peer has a
    /// different cluster secret (or a rotation is half done). No handshake
    /// was created.
    #[error(
        "handshake names cluster secret {0}, which this router does not hold; check --secret-file on both routers"
    )]
    UnknownSecret(SecretId),
    /// A message failed to decrypt: wrong cluster secret, a different
    /// cluster range or handshake version (prologue), or tampering. State
    /// changed: failed (or, for message 1, no handshake was created).
    #[error(
        "handshake failed authentication: the peer has a different cluster secret or cluster range, or the message was altered"
    )]
    Authentication,

    // API misuse (never caused by the peer's bytes alone).
    /// `write_message` with a payload over [`MAX_PAYLOAD_LEN`]. No state change.
    #[error("handshake payload of {len} bytes exceeds {MAX_PAYLOAD_LEN}")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
    },
    /// Read when it is our turn to write, or the reverse, or after the end.
    /// No state change.
    #[error("handshake message out of turn")]
    OutOfTurn,
    /// `finish` before all three messages. The handshake was consumed.
    #[error("handshake not finished")]
    NotFinished,
    /// A call after an earlier error. No state change.
    #[error("handshake already failed")]
    Failed,
    /// An unexpected error from snow (a bug or a broken RNG).
    #[error("noise error: {0}")]
    Noise(snow::Error),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    const SECRET_A: &[u8] = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SECRET_B: &[u8] = b"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const RANGE: &str = "10.32.0.0/12";
    /// A wall-clock time for message 1.
    const T0: std::time::Duration = std::time::Duration::from_secs(1_800_000_000);

    fn identity(seed: u64) -> Identity {
        Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    fn secrets(lines: &[&[u8]]) -> ClusterSecrets {
        ClusterSecrets::parse(&lines.join(&b'\n')).unwrap()
    }

    struct Done {
        initiator: SessionKeys,
        responder: SessionKeys,
        payload2: Vec<u8>,
        payload3: Vec<u8>,
    }

    fn run(i_secrets: &ClusterSecrets, r_secrets: &ClusterSecrets) -> Result<Done, HandshakeError> {
        let (i_id, r_id) = (identity(1), identity(2));
        let p = prologue(RANGE);
        let (mut init, msg1) = Handshake::initiator(&i_id, i_secrets, &p, T0)?;
        assert_eq!(msg1.len(), MSG1_LEN);
        let (mut resp, _) = Handshake::responder(&r_id, r_secrets, &p, &msg1)?;
        assert_eq!(resp.remote_public_key(), None);
        let msg2 = resp.write_message(b"hello from responder")?;
        let payload2 = init.read_message(&msg2)?;
        assert_eq!(init.remote_public_key(), Some(r_id.public_key()));
        let msg3 = init.write_message(b"hello from initiator")?;
        let payload3 = resp.read_message(&msg3)?;
        assert_eq!(resp.remote_public_key(), Some(i_id.public_key()));
        assert!(init.is_finished() && resp.is_finished());
        assert!(init.is_initiator() && !resp.is_initiator());
        Ok(Done {
            initiator: init.finish()?,
            responder: resp.finish()?,
            payload2,
            payload3,
        })
    }

    fn assert_one_way(from: &mut SessionKeys, to: &mut SessionKeys) {
        let record = from.tcp_send.seal(b"control");
        assert_eq!(to.tcp_recv.open(&record).unwrap(), b"control");
        let header = [9u8; 16];
        let mut buf = b"data".to_vec();
        let tag = from.udp_send.seal_in_place(2, 7, &header, &mut buf);
        to.udp_recv
            .open_in_place(2, 7, &header, &mut buf, &tag)
            .unwrap();
        assert_eq!(buf, b"data");
    }

    fn assert_keys_match(a: &mut SessionKeys, b: &mut SessionKeys) {
        assert_one_way(a, b);
        assert_one_way(b, a);
        // Directions and channels use different keys.
        let mut buf = b"data".to_vec();
        let tag = a.udp_send.seal_in_place(0, 0, &[], &mut buf);
        assert!(
            a.udp_recv
                .open_in_place(0, 0, &[], &mut buf.clone(), &tag)
                .is_err()
        );
    }

    /// What each of the four derived keys makes of the same plaintext under
    /// the same nonce (counter 0, lane 0, no associated data): equal keys
    /// give equal bytes, whatever the channel.
    fn first_seals(initiator: &mut SessionKeys, responder: &mut SessionKeys) -> Vec<Vec<u8>> {
        let udp = |key: &DataKey| {
            let mut buf = b"same plaintext".to_vec();
            let tag = key.seal_in_place(0, 0, &[], &mut buf);
            buf.extend_from_slice(&tag);
            buf
        };
        vec![
            initiator.tcp_send.seal(b"same plaintext"),
            udp(&initiator.udp_send),
            responder.tcp_send.seal(b"same plaintext"),
            udp(&responder.udp_send),
        ]
    }

    #[test]
    fn the_four_derived_keys_differ_pairwise_tcp_from_udp_and_each_direction() {
        let s = secrets(&[SECRET_A]);
        let mut done = run(&s, &s).unwrap();
        let sealed = first_seals(&mut done.initiator, &mut done.responder);
        // The TCP record nonce and the UDP lane-0 nonce are the same bytes,
        // so this compares the keys themselves.
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(sealed[i], sealed[j], "derived keys {i} and {j} are equal");
            }
        }
        let keys = derive_keys(&[1; 32], &[2; 32], b"transcript");
        let all = [keys.tcp_i2r, keys.tcp_r2i, keys.udp_i2r, keys.udp_r2i];
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(all[i], all[j], "HKDF outputs {i} and {j} are equal");
            }
        }
    }

    #[test]
    fn a_full_handshake_yields_matching_oriented_keys_both_ways() {
        let s = secrets(&[SECRET_A]);
        let mut done = run(&s, &s).unwrap();
        assert_eq!(done.payload2, b"hello from responder");
        assert_eq!(done.payload3, b"hello from initiator");
        assert_keys_match(&mut done.initiator, &mut done.responder);
    }

    #[test]
    fn message_1_carries_the_initiators_clock_and_ephemeral_key_authenticated() {
        let s = secrets(&[SECRET_A]);
        let p = prologue(RANGE);
        let sent = T0 + std::time::Duration::from_nanos(123_456_789);
        let (_, msg1) = Handshake::initiator(&identity(1), &s, &p, sent).unwrap();
        let (_, stamp) = Handshake::responder(&identity(2), &s, &p, &msg1).unwrap();
        assert_eq!(stamp.sent_at, sent);
        assert_eq!(&stamp.ephemeral[..], &msg1[4..36]);
        // The timestamp is inside the AEAD: changing any of its bytes fails.
        for i in 36..48 {
            let mut tampered = msg1.clone();
            tampered[i] ^= 1;
            let err = Handshake::responder(&identity(2), &s, &p, &tampered).unwrap_err();
            assert!(
                matches!(err, HandshakeError::Authentication),
                "byte {i}: {err:?}"
            );
        }
    }

    #[test]
    fn a_responder_with_a_different_secret_returns_unknown_secret() {
        let err = run(&secrets(&[SECRET_A]), &secrets(&[SECRET_B]))
            .err()
            .unwrap();
        assert!(matches!(err, HandshakeError::UnknownSecret(_)), "{err:?}");
    }

    #[test]
    fn a_matching_id_with_a_different_psk_fails_authentication() {
        // Forge msg1 with B's PSK but A's ID: the ID matches, the tag does not.
        let (a, b) = (secrets(&[SECRET_A]), secrets(&[SECRET_B]));
        let p = prologue(RANGE);
        let (_, mut msg1) = Handshake::initiator(&identity(1), &b, &p, T0).unwrap();
        msg1[..4].copy_from_slice(&a.primary_id().0);
        let err = Handshake::responder(&identity(2), &a, &p, &msg1).unwrap_err();
        assert!(matches!(err, HandshakeError::Authentication), "{err:?}");
    }

    #[test]
    fn a_different_cluster_range_fails_authentication() {
        let s = secrets(&[SECRET_A]);
        let (_, msg1) = Handshake::initiator(&identity(1), &s, &prologue(RANGE), T0).unwrap();
        let err =
            Handshake::responder(&identity(2), &s, &prologue("10.0.0.0/8"), &msg1).unwrap_err();
        assert!(matches!(err, HandshakeError::Authentication), "{err:?}");
    }

    #[test]
    fn with_two_secrets_a_responder_accepts_either() {
        let both = secrets(&[SECRET_A, SECRET_B]);
        let both_reversed = secrets(&[SECRET_B, SECRET_A]);
        for initiator in [secrets(&[SECRET_A]), secrets(&[SECRET_B]), both_reversed] {
            let mut done = run(&initiator, &both).unwrap();
            assert_keys_match(&mut done.initiator, &mut done.responder);
        }
    }

    #[test]
    fn the_initiator_uses_its_primary_secret() {
        let both = secrets(&[SECRET_B, SECRET_A]);
        let (_, msg1) = Handshake::initiator(&identity(1), &both, &prologue(RANGE), T0).unwrap();
        assert_eq!(msg1[..4], both.primary_id().0);
        assert!(run(&both, &secrets(&[SECRET_B])).is_ok());
        assert!(run(&both, &secrets(&[SECRET_A])).is_err());
    }

    #[test]
    fn truncated_or_oversized_msg1_is_rejected() {
        let s = secrets(&[SECRET_A]);
        let p = prologue(RANGE);
        let (_, msg1) = Handshake::initiator(&identity(1), &s, &p, T0).unwrap();
        for bad in [
            &msg1[..MSG1_LEN - 1],
            &[msg1.as_slice(), b"x"].concat(),
            &[],
        ] {
            let err = Handshake::responder(&identity(2), &s, &p, bad).unwrap_err();
            assert!(matches!(err, HandshakeError::Msg1Length { .. }), "{err:?}");
        }
        for i in SECRET_ID_LEN..MSG1_LEN {
            let mut bad = msg1.clone();
            bad[i] ^= 1;
            let err = Handshake::responder(&identity(2), &s, &p, &bad).unwrap_err();
            assert!(
                matches!(err, HandshakeError::Authentication),
                "byte {i}: {err:?}"
            );
        }
    }

    #[test]
    fn tampered_truncated_or_oversized_msg2_and_msg3_are_rejected() {
        let s = secrets(&[SECRET_A]);
        let p = prologue(RANGE);
        let (i_id, r_id) = (identity(1), identity(2));
        let start = || {
            let (init, msg1) = Handshake::initiator_seeded(&i_id, &s, &p, T0, 1).unwrap();
            let (mut resp, _) = Handshake::responder_seeded(&r_id, &s, &p, &msg1, 2).unwrap();
            let msg2 = resp.write_message(b"two").unwrap();
            (init, resp, msg2)
        };
        let (_, _, msg2) = start();
        let mut bad2 = vec![
            msg2[..msg2.len() - 1].to_vec(),
            msg2[..10].to_vec(),
            Vec::new(),
        ];
        bad2.push(vec![0u8; MAX_MESSAGE_LEN + 1]);
        for i in [0, 40, msg2.len() - 1] {
            let mut m = msg2.clone();
            m[i] ^= 1;
            bad2.push(m);
        }
        for bad in bad2 {
            let (mut init, _, _) = start();
            assert!(init.read_message(&bad).is_err());
            assert!(matches!(
                init.write_message(b""),
                Err(HandshakeError::Failed)
            ));
            assert!(matches!(init.finish(), Err(HandshakeError::Failed)));
        }
        let (mut init, _, msg2) = start();
        init.read_message(&msg2).unwrap();
        let msg3 = init.write_message(b"three").unwrap();
        for bad in [
            &msg3[..msg3.len() - 1],
            &msg3[..5],
            &[][..],
            &vec![1u8; MAX_MESSAGE_LEN + 1],
        ] {
            let (_, mut resp, _) = start();
            assert!(resp.read_message(bad).is_err());
            assert!(matches!(resp.finish(), Err(HandshakeError::Failed)));
        }
    }

    #[test]
    fn seeded_handshakes_are_reproducible() {
        let s = secrets(&[SECRET_A]);
        let p = prologue(RANGE);
        let (_, a) = Handshake::initiator_seeded(&identity(1), &s, &p, T0, 42).unwrap();
        let (_, b) = Handshake::initiator_seeded(&identity(1), &s, &p, T0, 42).unwrap();
        let (_, c) = Handshake::initiator_seeded(&identity(1), &s, &p, T0, 43).unwrap();
        let (_, d) = Handshake::initiator(&identity(1), &s, &p, T0).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn calls_out_of_turn_are_refused_without_breaking_the_handshake() {
        let s = secrets(&[SECRET_A]);
        let p = prologue(RANGE);
        let (mut init, msg1) = Handshake::initiator(&identity(1), &s, &p, T0).unwrap();
        assert!(matches!(
            init.write_message(b""),
            Err(HandshakeError::OutOfTurn)
        ));
        let (mut resp, _) = Handshake::responder(&identity(2), &s, &p, &msg1).unwrap();
        assert!(matches!(
            resp.read_message(b"x"),
            Err(HandshakeError::OutOfTurn)
        ));
        assert!(matches!(
            resp.write_message(&vec![0; MAX_PAYLOAD_LEN + 1]),
            Err(HandshakeError::PayloadTooLarge { .. })
        ));
        let msg2 = resp.write_message(&vec![7; MAX_PAYLOAD_LEN]).unwrap();
        assert!(msg2.len() <= MAX_MESSAGE_LEN);
        assert_eq!(init.read_message(&msg2).unwrap().len(), MAX_PAYLOAD_LEN);
        let msg3 = init.write_message(b"").unwrap();
        resp.read_message(&msg3).unwrap();
        assert!(matches!(
            resp.write_message(b""),
            Err(HandshakeError::OutOfTurn)
        ));
        let (unfinished, _) = Handshake::initiator(&identity(1), &s, &p, T0).unwrap();
        assert!(matches!(
            unfinished.finish(),
            Err(HandshakeError::NotFinished)
        ));
    }

    #[test]
    fn prologue_binds_name_version_and_range() {
        assert_eq!(prologue("10.32.0.0/12"), b"weft\x0210.32.0.0/12");
    }

    /// Whether `printed` shows `key` (or its first 8 bytes) in any of the
    /// forms Rust prints bytes in: decimal lists (`{:?}` of an array or
    /// slice), lower- and upper-case hex, hex lists (`{:x?}`).
    fn shows(printed: &str, key: &[u8]) -> bool {
        let head = &key[..8];
        let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
        let forms = [
            format!("{head:?}").trim_end_matches(']').to_string(),
            format!("{head:x?}").trim_end_matches(']').to_string(),
            format!("{head:#x?}"),
            hex.clone(),
            hex.to_uppercase(),
            head.iter()
                .map(|b| format!("{b}"))
                .collect::<Vec<_>>()
                .join(", "),
        ];
        forms.iter().any(|form| printed.contains(form.as_str()))
    }

    #[test]
    fn no_key_type_prints_its_key_bytes_in_any_form() {
        // Distinctive bytes, so that a match cannot be chance.
        let raw: [u8; 32] = std::array::from_fn(|i| 0xa0 ^ (i as u8 * 7));
        assert!(shows(&format!("{raw:?}"), &raw), "the check itself works");
        assert!(shows(&format!("{:02x?}", &raw[..]), &raw));
        let printed = [
            format!("{:?}", DataKey::from_bytes(raw)),
            format!("{:?}", FrameSealer::from_bytes(raw)),
            format!("{:?}", FrameOpener::from_bytes(raw)),
            format!("{:#?}", DataKey::from_bytes(raw)),
        ];
        for p in &printed {
            assert!(!shows(p, &raw), "{p}");
        }
        // Real keys: the identity, the PSK and everything a handshake makes.
        let s = secrets(&[SECRET_A]);
        let id = identity(1);
        let private = id.private_key();
        let psk = s.primary().psk;
        let mut done = run(&s, &s).unwrap();
        let (init, _) = Handshake::initiator(&id, &s, &prologue(RANGE), T0).unwrap();
        let printed = [
            format!("{id:?}"),
            format!("{id:#?}"),
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{init:?}"),
            format!("{:?}", done.initiator),
            format!("{:#?}", done.responder),
        ];
        for p in &printed {
            assert!(!shows(p, &private), "identity key in {p}");
            assert!(!shows(p, &psk), "PSK in {p}");
            assert!(!shows(p, SECRET_A), "secret text in {p}");
        }
        // The derived keys are not reachable from outside; what they seal
        // is, and it must not equal what their Debug shows either.
        let sealed = first_seals(&mut done.initiator, &mut done.responder);
        assert!(printed.iter().all(|p| !sealed.iter().any(|c| shows(p, c))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_msg1_is_rejected_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100), use_real_id: bool) {
            let s = secrets(&[SECRET_A]);
            let mut bytes = bytes;
            if use_real_id && bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&s.primary_id().0);
            }
            prop_assert!(Handshake::responder(&identity(2), &s, &prologue(RANGE), &bytes).is_err());
        }

        #[test]
        fn random_msg2_and_msg3_are_rejected_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let s = secrets(&[SECRET_A]);
            let p = prologue(RANGE);
            let (mut init, msg1) = Handshake::initiator(&identity(1), &s, &p, T0).unwrap();
            let (mut resp, _) = Handshake::responder(&identity(2), &s, &p, &msg1).unwrap();
            prop_assert!(init.read_message(&bytes).is_err());
            let _ = resp.write_message(b"").unwrap();
            prop_assert!(resp.read_message(&bytes).is_err());
        }
    }
}
