//! Cryptography for weft (DESIGN.md "Keys and sessions", "The data header"). Sans-IO: no clock, no
//! sockets, no threads; the drivers feed bytes and `now` in.
//!
//! - [`identity`]: the router's static X25519 key, persisted in the state dir, and its [`crate::id::PeerId`];
//! - [`identity_age`]: when the identity key was made (`--identity-max-age`);
//! - [`identity_next`]: a rotation in progress on disk (`identity.next`) and how a start resumes it;
//! - [`secret`]: the cluster secret file (one or two secrets) → Noise PSKs and their public IDs;
//! - [`handshake`]: `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s` over the TCP control connection, and the
//!   derivation of four separate session keys from its raw split;
//! - [`freshness`]: the responder's guard against a replayed message 1 (timestamp window + seen keys);
//! - [`frame`]: the control channel's in-order record cipher;
//! - [`data`]: the data plane's AEAD into caller buffers, nonce = lane ‖ counter;
//! - [`replay`]: the per-lane replay window (check, decrypt, then mark);
//! - [`session`]: the key schedule for one peer (next / current / previous, rekey and reject timers).
//! - [`signing`]: XEdDSA signatures by the X25519 identity over entries a router originates;
//! - [`rotation`]: identity key rotation: the signed announcement and the window in which peers
//!   accept the old key as well as the new;
//! - [`verifying_keys`]: the verifying keys derived so far, by public key (checking is repeated).
//!
//! Not here: rate limits and half-open caps on handshakes, the 10 s handshake deadline, choosing
//! session indices, who starts a rekey, and the data header's layout: those belong to the drivers.

pub mod carried_short;
#[cfg(test)]
pub(crate) mod cpu_time;
pub mod data;
pub mod frame;
pub mod freshness;
pub mod handshake;
pub mod identity;
pub mod identity_age;
pub mod identity_next;
pub mod replay;
pub mod rotation;
pub mod secret;
pub mod session;
pub mod signing;
pub mod verifying_keys;

pub use data::{BadTag, COUNTER_LIMIT, DataKey, TAG_LEN};
pub use frame::{FrameError, FrameOpener, FrameSealer};
pub use freshness::{Msg1Guard, Msg1Refused};
pub use handshake::{Handshake, HandshakeError, MSG1_LEN, Msg1Stamp, SessionKeys, prologue};
pub use identity::{Identity, IdentityError};
pub use replay::ReplayWindow;
pub use secret::{ClusterSecrets, SecretError, SecretId};
pub use session::{KeySchedule, KeyTimer, Keyset, PREVIOUS_GRACE, REJECT_AFTER, REKEY_AFTER};
pub use signing::{Domain, SIGNATURE_LEN, Signature, SignatureError, SigningKey, VerifyingKey};
pub use verifying_keys::VerifyingKeys;
