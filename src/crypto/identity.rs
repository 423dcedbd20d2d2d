//! A router's static X25519 identity (DESIGN.md "Identity, ownership and reclaim", "Security model").
//!
//! Owns generating the key, persisting it in the state dir (mode 0600, a
//! versioned text file, written atomically so kill -9 never loses or tears it)
//! and deriving the router's [`PeerId`]. The key never leaves this type except
//! as the private key handed to snow inside [`crate::crypto::handshake`];
//! `Debug` prints only the ID and public key.

use crate::id::PeerId;
use std::fmt;
use std::path::{Path, PathBuf};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// File name of the identity key inside the state dir.
pub const IDENTITY_FILE: &str = "identity.key";
/// First line of the identity file; bump the version if the format changes.
const HEADER: &str = "weft-identity v1";

/// A router's static X25519 key pair.
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
    public: PublicKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id())
            .field("public_key", &Hex(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh key pair from `rng` (the OS RNG in the daemon, a seeded one in
    /// the simulator).
    pub fn generate<R: rand::RngCore + rand::CryptoRng>(rng: &mut R) -> Self {
        Self::from_secret(StaticSecret::random_from_rng(rng))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// Loads `state_dir/identity.key`, or creates it (and `state_dir`, mode
    /// 0700) with a fresh key from the OS RNG. Returns the identity and whether
    /// it was created. A file that exists but cannot be read or parsed is an
    /// error, never silently replaced: replacing it would change the router's ID.
    pub fn load_or_create(state_dir: &Path) -> Result<(Self, bool), IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        match std::fs::read(&path).map(Zeroizing::new) {
            Ok(bytes) => Self::decode(&bytes)
                .map(|identity| (identity, false))
                .map_err(|reason| IdentityError::Malformed { path, reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate(&mut rand::rngs::OsRng);
                crate::persist::ensure_private_dir(state_dir)
                    .and_then(|()| identity.write(&path))
                    .map_err(|source| IdentityError::Write {
                        path: path.clone(),
                        source,
                    })?;
                Ok((identity, true))
            }
            Err(source) => Err(IdentityError::Unreadable { path, source }),
        }
    }

    /// The static public key, as sent in the handshake.
    pub fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// The router's ID, derived from the public key.
    pub fn id(&self) -> PeerId {
        PeerId::from_public_key(self.public.as_bytes())
    }

    /// The private key bytes, for snow only.
    pub(crate) fn private_key(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// Writes the identity file format to `path` (0600, atomic, synced).
    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::persist::write_atomic(path, &self.encode(), 0o600)
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut text = Zeroizing::new(String::with_capacity(HEADER.len() + 66));
        text.push_str(HEADER);
        text.push('\n');
        text.push_str(&self.encode_hex());
        text.push('\n');
        Zeroizing::new(text.as_bytes().to_vec())
    }

    /// The private key as 64 lower-case hex digits, in a wiped buffer.
    pub(crate) fn encode_hex(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(64));
        for b in self.secret.as_bytes() {
            // Straight into the wiped buffer: no temporary string per byte.
            let _ = std::fmt::Write::write_fmt(&mut *text, format_args!("{b:02x}"));
        }
        text
    }

    /// The identity whose private key is the 64 hex digits `hex`.
    pub(crate) fn decode_hex(hex: &str) -> Option<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        decode_hex(hex, &mut *key)?;
        Some(Self::from_secret(StaticSecret::from(*key)))
    }

    fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text")?;
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(HEADER) {
            return Err("the first line is not \"weft-identity v1\"");
        }
        let hex = lines
            .next()
            .map(str::trim)
            .ok_or("the key line is missing")?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err("unexpected lines after the key");
        }
        Self::decode_hex(hex).ok_or("the key line is not 64 hex digits")
    }
}

/// Fills `out` from exactly `2 * out.len()` hex digits.
pub(crate) fn decode_hex(hex: &str, out: &mut [u8]) -> Option<()> {
    let digits = hex.as_bytes();
    if digits.len() != 2 * out.len() {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    Some(())
}

/// Lower-case hex for public values in `Debug` output.
pub(crate) struct Hex<'a>(pub(crate) &'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why the identity could not be loaded or created. None of these changes
/// anything on disk except that `Write` may leave the state dir created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file exists but cannot be read (permissions, I/O).
    #[error("cannot read identity key {path}: {source}; make the state dir readable by the router")]
    Unreadable {
        /// `state_dir/identity.key`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Malformed bytes: the file is not a weft identity.
    #[error(
        "identity key {path} is malformed ({reason}); restore it from backup, or move it away to create a new identity (this router then gets a new ID)"
    )]
    Malformed {
        /// `state_dir/identity.key`.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A new key could not be written.
    #[error(
        "cannot write identity key {path}: {source}; check that the state dir is writable (--state-dir)"
    )]
    Write {
        /// `state_dir/identity.key`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("weft-identity-{name}-{}", std::process::id()))
    }

    #[test]
    fn identity_persists_across_load_or_create_with_mode_0600() {
        let dir = temp_dir("persist");
        let _ = std::fs::remove_dir_all(&dir);
        let (first, created) = Identity::load_or_create(&dir).unwrap();
        assert!(created);
        let (second, created) = Identity::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(first.id(), second.id());
        let mode = std::fs::metadata(dir.join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(dir.join(IDENTITY_FILE)).unwrap();
        assert!(text.starts_with("weft-identity v1\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_malformed_identity_file_is_an_error_naming_the_file_and_never_replaced() {
        let dir = temp_dir("malformed");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(IDENTITY_FILE);
        for bad in [
            "garbage".as_bytes(),
            b"weft-identity v1\n",
            b"weft-identity v1\nzz\n",
            b"weft-identity v2\n0000000000000000000000000000000000000000000000000000000000000000\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            let msg = Identity::load_or_create(&dir).unwrap_err().to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert_eq!(std::fs::read(&path).unwrap(), bad);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let id = Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(7));
        let back = Identity::decode(&id.encode()).unwrap();
        assert_eq!(back.public_key(), id.public_key());
        assert_eq!(back.private_key(), id.private_key());
    }

    #[test]
    fn seeded_generation_is_reproducible() {
        let a = Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
        let b = Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
        assert_eq!(a.public_key(), b.public_key());
    }

    #[test]
    fn debug_shows_the_public_key_but_never_the_private_key() {
        let id = Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(3));
        let dbg = format!("{id:?}");
        let private: String = id
            .private_key()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let public: String = id.public_key().iter().map(|b| format!("{b:02x}")).collect();
        assert!(dbg.contains(&public));
        assert!(!dbg.contains(&private[..16]));
    }
}
