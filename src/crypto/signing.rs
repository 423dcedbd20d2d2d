//! Signatures by a router's X25519 identity, so that any router, including one
//! that never talked to the signer, can check who wrote a relayed entry
//! (DESIGN.md "Security model": "the writer of an entry is its signer, never a
//! claim").
//!
//! Construction: XEdDSA (Signal, "The XEdDSA and VXEdDSA Signature Schemes",
//! 2016). The verification key is the Edwards form, sign bit 0, of the X25519
//! public key the router's ID is derived from (`crate::id::PeerId`), so the
//! signing key is bound to the identity with no extra key, file or message, and
//! existing IDs do not change. The signer uses the clamped X25519 scalar,
//! negated when its Edwards point has sign bit 1; signatures are plain Ed25519
//! (Schnorr over SHA-512) and verification is Ed25519's strict
//! (cofactorless, canonical `R` and `s`, no small-order `A` or `R`). Why one key
//! for Diffie-Hellman and signatures is sound here, and the domain labels, are
//! in docs/ARCHITECTURE.md "Signed entries".
//!
//! Every signed message is `label ‖ 0x00 ‖ wire version ‖ bytes`: the label
//! names the kind of message ([`Domain`]), so a signature over one kind can never
//! be replayed as another, and the version binds the encoding it was made for.
//!
//! Owns: deriving the signing and verifying keys, signing, verifying. Not here:
//! what is signed (the gossip and IPAM cores encode their entries), and which
//! key is expected (the caller checks that the key hashes to the claimed ID).

use crate::crypto::Identity;
use crate::id::PeerId;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};
use std::fmt;
use zeroize::Zeroize;

/// Length of a signature on the wire: `R ‖ s`.
pub const SIGNATURE_LEN: usize = 64;

/// What kind of message a signature covers. Each kind has its own label, so a
/// signature made for one can never verify as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A router's own topology entry (src/gossip).
    TopologyEntry,
    /// A ring entry written by a router (src/ipam).
    RingEntry,
    /// An IPAM message a router authors (donation requests and the like).
    IpamMessage,
    /// A key rotation: each key of the pair names the other
    /// (`crypto::rotation`).
    IdentityRotation,
}

impl Domain {
    /// The label prefixed to every message of this kind (ASCII, no NUL).
    pub const fn label(self) -> &'static [u8] {
        match self {
            Self::TopologyEntry => b"weft topology entry",
            Self::RingEntry => b"weft ring entry",
            Self::IpamMessage => b"weft ipam message",
            Self::IdentityRotation => b"weft identity rotation",
        }
    }
}

/// An Ed25519 signature `R ‖ s` (64 bytes; two 32-byte arrays so serde and
/// bincode encode it as 64 raw bytes with no length).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    r: [u8; 32],
    s: [u8; 32],
}

impl Signature {
    /// The 64 bytes `R ‖ s`.
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out[..32].copy_from_slice(&self.r);
        out[32..].copy_from_slice(&self.s);
        out
    }

    /// From the 64 bytes `R ‖ s`; whether they are a valid signature is
    /// decided by [`VerifyingKey::verify`].
    pub fn from_bytes(bytes: &[u8; SIGNATURE_LEN]) -> Self {
        let mut r = [0u8; 32];
        let mut s = [0u8; 32];
        r.copy_from_slice(&bytes[..32]);
        s.copy_from_slice(&bytes[32..]);
        Self { r, s }
    }

    /// An all-zero placeholder; never verifies (its `R` has small order).
    pub const ZERO: Self = Self {
        r: [0; 32],
        s: [0; 32],
    };
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public, but 128 hex digits drown a log line: the first 8 bytes of R.
        write!(f, "Signature(")?;
        for b in &self.r[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Why a public key or a signature was refused. Nothing changes state: the
/// caller drops the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The X25519 public key is not a canonical encoding of a point of large
    /// order (u ≥ p, the top bit set, u = -1, or a small-order point): no
    /// honest router has it.
    #[error("public key is non-canonical or of small order")]
    BadPublicKey,
    /// The signature bytes are malformed: `R` is not a canonical point of large
    /// order, or `s` is not a canonical scalar.
    #[error("signature is malformed (non-canonical or small-order R, or s ≥ l)")]
    Malformed,
    /// Well formed, but not made by this key over this message.
    #[error("signature does not verify")]
    Mismatch,
}

/// The key that checks a router's signatures, derived from its X25519 public
/// key alone.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey {
    point: EdwardsPoint,
    compressed: CompressedEdwardsY,
    x25519: [u8; 32],
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// The verifying key of the router whose X25519 public key is
    /// `public_key`: its Edwards form with sign bit 0 (XEdDSA §2.3). Refuses
    /// non-canonical encodings and small-order points, which honest routers
    /// never have; a key of mixed order is accepted (its ID hashes it, and
    /// strict verification does not rely on torsion-freeness).
    pub fn from_x25519(public_key: &[u8; 32]) -> Result<Self, SignatureError> {
        let point = MontgomeryPoint(*public_key)
            .to_edwards(0)
            .ok_or(SignatureError::BadPublicKey)?;
        // to_edwards reduces u mod p and ignores the top bit: map back and
        // insist on the same bytes, so one router has exactly one encoding.
        if point.to_montgomery().to_bytes() != *public_key || point.is_small_order() {
            return Err(SignatureError::BadPublicKey);
        }
        Ok(Self {
            point,
            compressed: point.compress(),
            x25519: *public_key,
        })
    }

    /// The X25519 public key this key was derived from.
    pub fn x25519_public_key(&self) -> [u8; 32] {
        self.x25519
    }

    /// The ID of the router this key belongs to.
    pub fn id(&self) -> PeerId {
        PeerId::from_public_key(&self.x25519)
    }

    /// Checks `signature` over `domain`/`version`/`message` (Ed25519
    /// `verify_strict`: canonical `R` and `s`, `R` not of small order,
    /// cofactorless equation).
    pub fn verify(
        &self,
        domain: Domain,
        version: u8,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let compressed_r = CompressedEdwardsY(signature.r);
        if !canonical_y(&signature.r) {
            return Err(SignatureError::Malformed);
        }
        let r = compressed_r.decompress().ok_or(SignatureError::Malformed)?;
        // With y canonical, only x = 0 with the sign bit set is a second
        // encoding, and both such points (y = ±1) have small order.
        if r.is_small_order() {
            return Err(SignatureError::Malformed);
        }
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(signature.s))
            .ok_or(SignatureError::Malformed)?;
        let k = challenge(&compressed_r, &self.compressed, domain, version, message);
        // [s]B − [k]A must equal R (projective comparison: no inversion).
        let expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-self.point, &s);
        if expected == r {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// A router's signing key: its clamped X25519 scalar, negated if needed so its
/// Edwards point has sign bit 0. Zeroized on drop; `Debug` shows only the ID.
pub struct SigningKey {
    scalar: Scalar,
    verifying: VerifyingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.verifying.id())
            .finish_non_exhaustive()
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        self.scalar.zeroize();
    }
}

impl SigningKey {
    /// The signing key of `identity` (XEdDSA §2.3 `calculate_key_pair`).
    pub fn from_identity(identity: &Identity) -> Self {
        let mut private = identity.private_key();
        let key = Self::from_x25519_private(&private);
        private.zeroize();
        key
    }

    fn from_x25519_private(private: &[u8; 32]) -> Self {
        let mut clamped = clamp_integer(*private);
        let mut scalar = Scalar::from_bytes_mod_order(clamped);
        clamped.zeroize();
        let mut point = EdwardsPoint::mul_base(&scalar);
        if point.compress().as_bytes()[31] & 0x80 != 0 {
            scalar = -scalar;
            point = -point;
        }
        let x25519 = point.to_montgomery().to_bytes();
        Self {
            scalar,
            verifying: VerifyingKey {
                point,
                compressed: point.compress(),
                x25519,
            },
        }
    }

    /// The key that verifies this key's signatures; equal to
    /// `VerifyingKey::from_x25519(identity.public_key())`.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.verifying
    }

    /// Signs `domain`/`version`/`message`. Deterministic: the nonce is
    /// SHA-512 of XEdDSA's `hash_1` prefix, the secret scalar and the message
    /// (as RFC 8032 derives it from a secret and the message), so the
    /// simulator replays byte for byte and a bad RNG cannot leak the key.
    pub fn sign(&self, domain: Domain, version: u8, message: &[u8]) -> Signature {
        let mut hasher = Sha512::new();
        hasher.update(hash_prefix(1));
        hasher.update(self.scalar.as_bytes());
        update_message(&mut hasher, domain, version, message);
        let mut wide: [u8; 64] = hasher.finalize().into();
        let mut nonce = Scalar::from_bytes_mod_order_wide(&wide);
        wide.zeroize();
        let r = EdwardsPoint::mul_base(&nonce).compress();
        let k = challenge(&r, &self.verifying.compressed, domain, version, message);
        let s = nonce + k * self.scalar;
        nonce.zeroize();
        Signature {
            r: r.to_bytes(),
            s: s.to_bytes(),
        }
    }
}

/// Whether the y coordinate of an encoded point (sign bit ignored) is below
/// p = 2²⁵⁵ − 19, i.e. the only encoding of its value.
fn canonical_y(bytes: &[u8; 32]) -> bool {
    let top = bytes[31] & 0x7f;
    !(top == 0x7f && bytes[1..31].iter().all(|b| *b == 0xff) && bytes[0] >= 0xed)
}

/// XEdDSA's `hash_i` prefix: 2²⁵⁶ − 1 − i, little-endian.
fn hash_prefix(i: u8) -> [u8; 32] {
    let mut prefix = [0xff; 32];
    prefix[0] = 0xff - i;
    prefix
}

fn update_message(hasher: &mut Sha512, domain: Domain, version: u8, message: &[u8]) {
    hasher.update(domain.label());
    hasher.update([0u8, version]);
    hasher.update(message);
}

/// Ed25519's challenge `H(R ‖ A ‖ M) mod l`.
fn challenge(
    r: &CompressedEdwardsY,
    a: &CompressedEdwardsY,
    domain: Domain,
    version: u8,
    message: &[u8],
) -> Scalar {
    let mut hasher = Sha512::new();
    hasher.update(r.as_bytes());
    hasher.update(a.as_bytes());
    update_message(&mut hasher, domain, version, message);
    Scalar::from_bytes_mod_order_wide(&hasher.finalize().into())
}

#[cfg(test)]
mod tests;
