//! The cluster secret (DESIGN.md "Keys and sessions", "Secret rotation"; "Security model").
//!
//! Owns parsing the `--secret-file` into one or two Noise pre-shared keys and
//! the 4-byte IDs that message 1 carries so a responder can pick the matching
//! secret during a rotation. It does not watch the file: the daemon reloads it
//! and hands a fresh [`ClusterSecrets`] to new handshakes.
//!
//! File format: one secret per non-empty line (surrounding whitespace
//! trimmed), each at least 32 bytes, at most two lines; the first is the
//! primary and is used to initiate. A line is used as is (e.g. base64 text),
//! never decoded, so `head -c 32 /dev/urandom | base64` makes a good one.
//! PSK = BLAKE2s-256("weft psk v1" ‖ line); ID = the first 4 bytes of
//! BLAKE2s-256("weft secret id v1" ‖ line). The two labels make the ID
//! independent of the PSK, so sending it in the clear reveals nothing usable.

use blake2::{Blake2s256, Digest};
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Shortest secret line accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// Most secrets a file may hold (the old and the new one during a rotation).
pub const MAX_SECRETS: usize = 2;

/// The 4-byte public ID of a cluster secret, sent in clear at the start of
/// handshake message 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretId(pub [u8; 4]);

impl fmt::Debug for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One secret: its derived PSK and ID. Never printed; the PSK is wiped on
/// drop (DESIGN.md "Security model").
#[derive(Clone)]
pub(crate) struct Secret {
    pub(crate) id: SecretId,
    pub(crate) psk: [u8; 32],
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl Secret {
    /// What `drop` does.
    fn wipe(&mut self) {
        self.psk.zeroize();
    }
}

impl ZeroizeOnDrop for Secret {}

impl Secret {
    fn derive(line: &[u8]) -> Self {
        let psk: [u8; 32] = Blake2s256::new()
            .chain_update(b"weft psk v1")
            .chain_update(line)
            .finalize()
            .into();
        let id_hash = Blake2s256::new()
            .chain_update(b"weft secret id v1")
            .chain_update(line)
            .finalize();
        let mut id = [0u8; 4];
        id.copy_from_slice(&id_hash[..4]);
        Self {
            id: SecretId(id),
            psk,
        }
    }
}

/// The cluster secrets a router holds: one, or two during a rotation. The
/// first is the primary, used when this router initiates; a responder accepts
/// either. `Debug` shows only the IDs.
#[derive(Clone)]
pub struct ClusterSecrets {
    /// Never empty, at most [`MAX_SECRETS`], IDs distinct.
    secrets: Vec<Secret>,
}

impl fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSecrets")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ClusterSecrets {
    /// Reads and parses the secret file at `path`. Every error names the file
    /// and says how to fix it.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let text = match std::fs::read(path) {
            Ok(text) => Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretError::Missing {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(SecretError::Unreadable {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(&text).map_err(|e| match e {
            SecretError::Content(problem) => SecretError::InFile {
                path: path.to_path_buf(),
                problem,
            },
            other => other,
        })
    }

    /// Parses the content of a secret file (see the module docs for the
    /// format). Errors are [`SecretError::Content`].
    pub fn parse(text: &[u8]) -> Result<Self, SecretError> {
        let mut secrets: Vec<Secret> = Vec::new();
        let mut count = 0usize;
        for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line = raw.trim_ascii();
            if line.is_empty() {
                continue;
            }
            count += 1;
            if line.len() < MIN_SECRET_LEN {
                return Err(SecretProblem::TooShort {
                    line: index + 1,
                    len: line.len(),
                }
                .into());
            }
            if count > MAX_SECRETS {
                continue; // counted, reported below
            }
            let secret = Secret::derive(line);
            if secrets.iter().any(|s| s.id == secret.id) {
                return Err(SecretProblem::Duplicate { line: index + 1 }.into());
            }
            secrets.push(secret);
        }
        if count == 0 {
            return Err(SecretProblem::Empty.into());
        }
        if count > MAX_SECRETS {
            return Err(SecretProblem::TooMany { count }.into());
        }
        Ok(Self { secrets })
    }

    /// The primary secret's ID (the one this router initiates with).
    pub fn primary_id(&self) -> SecretId {
        self.primary().id
    }

    /// The IDs of all secrets held, primary first.
    pub fn ids(&self) -> impl Iterator<Item = SecretId> + '_ {
        self.secrets.iter().map(|s| s.id)
    }

    pub(crate) fn primary(&self) -> &Secret {
        // Invariant: `parse` never builds an empty list.
        &self.secrets[0]
    }

    pub(crate) fn find(&self, id: SecretId) -> Option<&Secret> {
        self.secrets.iter().find(|s| s.id == id)
    }
}

/// Why the secret file could not be used. Loading has no side effects, so no
/// state changes on any of these; the router refuses to start (or keeps the
/// secrets it had, on a reload).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Refused by policy: there is no secret file.
    #[error(
        "secret file {path} does not exist; create one with: head -c 32 /dev/urandom | base64 > {path}"
    )]
    Missing {
        /// The file named by `--secret-file`.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error(
        "cannot read secret file {path}: {source}; make it readable by the router (mode 0600, owned by root)"
    )]
    Unreadable {
        /// The file named by `--secret-file`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Malformed content, from [`ClusterSecrets::load`].
    #[error("secret file {path}: {problem}")]
    InFile {
        /// The file named by `--secret-file`.
        path: PathBuf,
        /// What is wrong with its content.
        problem: SecretProblem,
    },
    /// Malformed content, from [`ClusterSecrets::parse`].
    #[error("{0}")]
    Content(#[from] SecretProblem),
}

/// What is wrong with the content of a secret file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    /// No non-empty line.
    #[error("it holds no secret; write one with: head -c 32 /dev/urandom | base64 > FILE")]
    Empty,
    /// A line shorter than [`MIN_SECRET_LEN`] bytes.
    #[error(
        "the secret on line {line} is {len} bytes, fewer than 32; replace it with one made by: head -c 32 /dev/urandom | base64"
    )]
    TooShort {
        /// 1-based line number.
        line: usize,
        /// Its length after trimming.
        len: usize,
    },
    /// More than [`MAX_SECRETS`] non-empty lines.
    #[error(
        "it holds {count} secrets, at most 2 are allowed (the current one and the next, during a rotation); remove the old ones"
    )]
    TooMany {
        /// Non-empty lines found.
        count: usize,
    },
    /// The same secret twice.
    #[error("the secret on line {line} repeats an earlier one; remove one of the two lines")]
    Duplicate {
        /// 1-based line number of the repeat.
        line: usize,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const A: &[u8] = b"0123456789abcdef0123456789abcdef-a";
    const B: &[u8] = b"0123456789abcdef0123456789abcdef-b";

    #[test]
    fn one_secret_per_line_with_whitespace_and_blank_lines_ignored() {
        let text = [b"\n  ".as_slice(), A, b"  \r\n\n", B, b"\n"].concat();
        let secrets = ClusterSecrets::parse(&text).unwrap();
        let ids: Vec<_> = secrets.ids().collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(secrets.primary_id(), Secret::derive(A).id);
        assert_eq!(ids[1], Secret::derive(B).id);
    }

    #[test]
    fn id_and_psk_are_independent_derivations() {
        let s = Secret::derive(A);
        assert_ne!(&s.psk[..4], &s.id.0);
        assert_ne!(Secret::derive(A).id, Secret::derive(B).id);
    }

    #[test]
    fn empty_file_is_refused_with_the_fix() {
        let err = ClusterSecrets::parse(b" \n\n").unwrap_err();
        assert!(matches!(err, SecretError::Content(SecretProblem::Empty)));
        assert!(err.to_string().contains("head -c 32 /dev/urandom"));
    }

    #[test]
    fn short_secret_is_refused_naming_its_line() {
        let err = ClusterSecrets::parse(&[A, b"\nshort\n"].concat()).unwrap_err();
        assert!(matches!(
            err,
            SecretError::Content(SecretProblem::TooShort { line: 2, len: 5 })
        ));
    }

    #[test]
    fn three_secrets_are_refused() {
        let text = [A, b"\n", B, b"\n", A, b"c\n"].concat();
        let err = ClusterSecrets::parse(&text).unwrap_err();
        assert!(matches!(
            err,
            SecretError::Content(SecretProblem::TooMany { count: 3 })
        ));
    }

    #[test]
    fn a_repeated_secret_is_refused() {
        let err = ClusterSecrets::parse(&[A, b"\n", A].concat()).unwrap_err();
        assert!(matches!(
            err,
            SecretError::Content(SecretProblem::Duplicate { line: 2 })
        ));
    }

    #[test]
    fn load_names_the_missing_file_and_how_to_create_it() {
        let path = std::env::temp_dir().join(format!("weft-no-secret-{}", std::process::id()));
        let err = ClusterSecrets::load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("head -c 32 /dev/urandom | base64 >"), "{msg}");
    }

    #[test]
    fn load_names_the_file_when_its_content_is_bad() {
        let dir = std::env::temp_dir().join(format!("weft-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, b"tiny\n").unwrap();
        let msg = ClusterSecrets::load(&path).unwrap_err().to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("line 1"),
            "{msg}"
        );
        std::fs::write(&path, A).unwrap();
        assert!(ClusterSecrets::load(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_shows_ids_but_never_the_secret_or_psk() {
        let secrets = ClusterSecrets::parse(A).unwrap();
        let dbg = format!("{secrets:?}");
        assert!(dbg.contains(&secrets.primary_id().to_string()));
        assert!(!dbg.contains("0123456789abcdef"));
        let psk_hex: String = secrets
            .primary()
            .psk
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!dbg.contains(&psk_hex[..8]));
    }

    #[test]
    fn the_psk_and_every_secret_key_type_are_wiped_on_drop() {
        fn wiped_on_drop<T: ZeroizeOnDrop>() {}
        // Our PSKs; the record ciphers (FrameSealer, FrameOpener); the
        // static identity key. (DataKey wraps ring's key: not wiped, see
        // `DataKey::from_bytes`.)
        wiped_on_drop::<Secret>();
        wiped_on_drop::<chacha20poly1305::ChaCha20Poly1305>();
        // x25519-dalek's `zeroize(drop)` wipes StaticSecret in its Drop.
        fn wipeable<T: Zeroize>() {}
        wipeable::<x25519_dalek::StaticSecret>();
        let mut secret = ClusterSecrets::parse(A).unwrap().secrets.remove(0);
        assert_ne!(secret.psk, [0; 32]);
        // What `drop` runs, observed in place.
        secret.wipe();
        assert_eq!(secret.psk, [0; 32]);
    }
}
