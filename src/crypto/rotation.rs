//! Identity key rotation, the sans-IO part (issue 20; docs/ARCHITECTURE.md
//! "Identity key rotation"): the signed announcement that moves a router
//! from its old static key to a new one, and the table by which peers
//! accept both keys for a window, then only the new one.
//!
//! A [`Rotation`] binds the two keys both ways: the old key signs the new
//! public key (only the holder of the old identity can name its successor)
//! and the new key signs the old public key (nobody can name someone
//! else's key as theirs). It is fixed size, so a decoder reads exactly
//! [`ROTATION_LEN`] bytes and allocates nothing.

use super::identity::Identity;
use super::signing::{Domain, SIGNATURE_LEN, Signature, SigningKey, VerifyingKey};
use crate::id::PeerId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The version byte in front of a rotation (its own, bumped on any change
/// of layout).
pub const ROTATION_VERSION: u8 = 1;

/// Encoded size: version, old key, new key, issued (seconds, big-endian),
/// the old key's signature, the new key's signature.
pub const ROTATION_LEN: usize = 1 + 32 + 32 + 8 + 2 * SIGNATURE_LEN;

/// How long peers accept the old key after they learn of a rotation: long
/// enough for every link to rekey under the new key (rekeys run at least
/// every 120 s, and a key is refused after 180 s), short enough that a
/// stolen old key is soon worth nothing.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);

/// The most rotations a peer tracks at once (each for one window): a
/// hostile member announcing rotations in a loop fills this and no more.
pub const MAX_TRACKED: usize = 4096;

/// A signed announcement: `old` hands its identity over to `new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The retiring X25519 public key.
    pub old: [u8; 32],
    /// The successor X25519 public key.
    pub new: [u8; 32],
    /// Wall-clock seconds when it was made (for logs and for ordering two
    /// rotations of one router; never compared with the receiver's clock).
    pub issued: u64,
    by_old: Signature,
    by_new: Signature,
}

/// Why a rotation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotationError {
    /// Not [`ROTATION_LEN`] bytes, or another version.
    #[error("a key rotation of the wrong size or version")]
    Malformed,
    /// Old and new are the same key.
    #[error("a key rotation to the same key")]
    SameKey,
    /// A key that is not a usable curve point, or a signature that does
    /// not verify.
    #[error("a key rotation whose signatures do not verify")]
    BadSignature,
    /// The old key already moved to another key.
    #[error("a second rotation of one key to another key")]
    Conflict,
    /// [`MAX_TRACKED`] rotations are tracked already.
    #[error("too many key rotations tracked; the next one is refused")]
    Full,
}

impl Rotation {
    /// Makes the announcement that `old` moves to `new`, at `issued`.
    pub fn sign(old: &Identity, new: &Identity, issued: u64) -> Self {
        let (old_key, new_key) = (old.public_key(), new.public_key());
        let by_old = SigningKey::from_identity(old).sign(
            Domain::IdentityRotation,
            ROTATION_VERSION,
            &message(b'n', &new_key, issued),
        );
        let by_new = SigningKey::from_identity(new).sign(
            Domain::IdentityRotation,
            ROTATION_VERSION,
            &message(b'o', &old_key, issued),
        );
        Self {
            old: old_key,
            new: new_key,
            issued,
            by_old,
            by_new,
        }
    }

    /// Checks both signatures; returns the old and new IDs.
    pub fn verify(&self) -> Result<(PeerId, PeerId), RotationError> {
        if self.old == self.new {
            return Err(RotationError::SameKey);
        }
        let check = |key: &[u8; 32], what: u8, other: &[u8; 32], sig: &Signature| {
            VerifyingKey::from_x25519(key)
                .and_then(|k| {
                    k.verify(
                        Domain::IdentityRotation,
                        ROTATION_VERSION,
                        &message(what, other, self.issued),
                        sig,
                    )
                })
                .map_err(|_| RotationError::BadSignature)
        };
        check(&self.old, b'n', &self.new, &self.by_old)?;
        check(&self.new, b'o', &self.old, &self.by_new)?;
        Ok((
            PeerId::from_public_key(&self.old),
            PeerId::from_public_key(&self.new),
        ))
    }

    /// The wire (and disk) form.
    pub fn encode(&self) -> [u8; ROTATION_LEN] {
        let mut out = [0u8; ROTATION_LEN];
        out[0] = ROTATION_VERSION;
        out[1..33].copy_from_slice(&self.old);
        out[33..65].copy_from_slice(&self.new);
        out[65..73].copy_from_slice(&self.issued.to_be_bytes());
        out[73..137].copy_from_slice(&self.by_old.to_bytes());
        out[137..].copy_from_slice(&self.by_new.to_bytes());
        out
    }

    /// Parses exactly [`ROTATION_LEN`] bytes (signatures unchecked: see
    /// [`Self::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, RotationError> {
        let bytes: &[u8; ROTATION_LEN] = bytes.try_into().map_err(|_| RotationError::Malformed)?;
        if bytes[0] != ROTATION_VERSION {
            return Err(RotationError::Malformed);
        }
        let array = |range: std::ops::Range<usize>| -> [u8; 32] {
            let mut a = [0u8; 32];
            a.copy_from_slice(&bytes[range]);
            a
        };
        let sig = |at: usize| {
            let mut s = [0u8; SIGNATURE_LEN];
            s.copy_from_slice(&bytes[at..at + SIGNATURE_LEN]);
            Signature::from_bytes(&s)
        };
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&bytes[65..73]);
        Ok(Self {
            old: array(1..33),
            new: array(33..65),
            issued: u64::from_be_bytes(issued),
            by_old: sig(73),
            by_new: sig(137),
        })
    }
}

/// What one side signs: which key it names (`n`ew or `o`ld), that key and
/// the time.
fn message(what: u8, key: &[u8; 32], issued: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(41);
    m.push(what);
    m.extend_from_slice(key);
    m.extend_from_slice(&issued.to_be_bytes());
    m
}

/// How a peer's static key (from a handshake, a rekey, a signed entry)
/// is to be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// No rotation concerns it: judge it as always.
    Unrotated,
    /// A retired key still inside its window: accept it as the router it
    /// was handed to (`successor`), e.g. an old link that has not rekeyed.
    Retiring {
        /// The ID the key moved to.
        successor: PeerId,
    },
    /// A retired key past its window: refuse it.
    Retired,
}

/// The rotations this router has verified, by old ID: each old key is
/// accepted for a window from when it was learned, then refused. Sans-IO:
/// the caller passes `now` and sleeps until [`Self::poll_timeout`].
#[derive(Debug)]
pub struct Successors {
    window: Duration,
    /// Old ID → (new ID, end of the window, its end reported). Retired
    /// keys stay (refused) until the driver forgets them past their
    /// retention ([`Self::forget`]) or, at the bound, the oldest ended one
    /// makes room; across a restart the router's state dir brings them
    /// back (`control::retired_keys`, [`Self::restore`]).
    by_old: BTreeMap<PeerId, (PeerId, Instant, bool)>,
}

impl Successors {
    /// Accepting each old key for `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            by_old: BTreeMap::new(),
        }
    }

    /// A rotation from the network (or our own). Verified here; a rotation
    /// already known keeps its first window (a replay never extends it),
    /// and an old key has one successor (a second rotation of the same old
    /// key to another new key is refused: the old key was stolen, or it is
    /// a replay of an abandoned attempt). Returns the (old, new) IDs.
    pub fn learn(
        &mut self,
        rotation: &Rotation,
        now: Instant,
    ) -> Result<(PeerId, PeerId), RotationError> {
        let (old, new) = rotation.verify()?;
        match self.by_old.get(&old) {
            Some((known, _, _)) if *known != new => return Err(RotationError::Conflict),
            Some(_) => {}
            None => {
                self.make_room(now)?;
                self.by_old.insert(old, (new, now + self.window, false));
            }
        }
        Ok((old, new))
    }

    /// A rotation saved before a restart (`control::retired_keys`):
    /// verified again, with what was `left` of its window (`None`: the
    /// window had ended, the old key is refused at once and its end is not
    /// reported again). A rotation already known keeps what it has.
    pub fn restore(
        &mut self,
        rotation: &Rotation,
        left: Option<Duration>,
        now: Instant,
    ) -> Result<(PeerId, PeerId), RotationError> {
        let (old, new) = rotation.verify()?;
        match self.by_old.get(&old) {
            Some((known, _, _)) if *known != new => Err(RotationError::Conflict),
            Some(_) => Ok((old, new)),
            None => {
                self.make_room(now)?;
                let until = now + left.unwrap_or_default().min(self.window);
                self.by_old.insert(old, (new, until, left.is_none()));
                Ok((old, new))
            }
        }
    }

    /// At the bound, the rotation whose window ended first goes (the
    /// oldest learned), so a long-lived cluster keeps rotating; one whose
    /// window is still open is never dropped: then the new one is refused.
    fn make_room(&mut self, now: Instant) -> Result<(), RotationError> {
        if self.by_old.len() < MAX_TRACKED {
            return Ok(());
        }
        let oldest = self
            .by_old
            .iter()
            .filter(|(_, (_, until, _))| *until <= now)
            .min_by_key(|(old, (_, until, _))| (*until, **old))
            .map(|(old, _)| *old)
            .ok_or(RotationError::Full)?;
        self.by_old.remove(&oldest);
        Ok(())
    }

    /// Drops the rotation of `old` (kept past its retention); returns
    /// whether it was held.
    pub fn forget(&mut self, old: PeerId) -> bool {
        self.by_old.remove(&old).is_some()
    }

    /// Whether the rotation of `old` is held.
    pub fn contains(&self, old: PeerId) -> bool {
        self.by_old.contains_key(&old)
    }

    /// How to take the key whose ID is `id` at `now`.
    pub fn admit(&self, id: PeerId, now: Instant) -> Admit {
        match self.by_old.get(&id) {
            None => Admit::Unrotated,
            Some((successor, until, _)) if now < *until => Admit::Retiring {
                successor: *successor,
            },
            Some(_) => Admit::Retired,
        }
    }

    /// The router `id` now is, following rotations (a key rotated twice
    /// within a window leads to the latest; a loop ends where it started).
    pub fn current(&self, id: PeerId) -> PeerId {
        let mut at = id;
        for _ in 0..self.by_old.len() {
            match self.by_old.get(&at) {
                Some((next, _, _)) if *next != id => at = *next,
                _ => break,
            }
        }
        at
    }

    /// The old IDs that moved to `new` (a key rotated once has one).
    pub fn predecessors(&self, new: PeerId) -> impl Iterator<Item = PeerId> + '_ {
        self.by_old
            .iter()
            .filter(move |(_, (next, _, _))| *next == new)
            .map(|(old, _)| *old)
    }

    /// The earliest end of a window not yet reported (when to call
    /// [`Self::handle_timeout`]).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.by_old
            .values()
            .filter(|(_, _, reported)| !reported)
            .map(|(_, until, _)| (*until).max(now))
            .min()
    }

    /// Appends the old IDs whose window has ended since the last call, once
    /// each (the caller closes links still on them). They stay refused.
    pub fn handle_timeout(&mut self, now: Instant, ended: &mut Vec<PeerId>) {
        for (old, (_, until, reported)) in &mut self.by_old {
            if !*reported && *until <= now {
                *reported = true;
                ended.push(*old);
            }
        }
    }
}

#[cfg(test)]
#[path = "rotation_tests.rs"]
mod tests;
