//! A rotation in progress, on disk (issue 20, docs/ARCHITECTURE.md
//! "Identity key rotation", step 2): `identity.next` holds the new key and
//! the signed announcement, written (0600, atomically) before anything
//! about the rotation is sent. The ring hand-over is persisted next, then
//! the new key replaces `identity.key` and `identity.next` goes.
//!
//! A start that finds `identity.next` decides from what the IPAM state
//! says ([`decide`]): a hand-over already written under the new ID means
//! the rotation completes; none means it is discarded. So a router never
//! runs under a key whose ranges it does not hold, nor keeps a key whose
//! ranges it gave away.

use super::identity::{Hex, Identity, IdentityError, decode_hex};
use super::rotation::{ROTATION_LEN, Rotation};
use crate::id::{PeerId, ShortId};
use std::path::Path;
use zeroize::Zeroizing;

/// File name of the rotation in progress inside the state dir.
pub const NEXT_FILE: &str = "identity.next";
/// First line of the file; bump the version if the format changes.
const HEADER: &str = "weft-identity-next v1";
/// Starts the optional line after the announcement that names the short
/// ID the old key held (files without it still load).
const SHORT_PREFIX: &str = "short-id ";

/// The successor key and the announcement naming it.
#[derive(Clone, Debug)]
pub struct Pending {
    /// The new identity.
    pub identity: Identity,
    /// The announcement: the old key hands over to [`Self::identity`].
    pub rotation: Rotation,
    /// The short ID the old key held when it rotated (a clash may have
    /// moved it off `ShortId::preferred(old)`): the new key carries it.
    /// `None` in a file written before this was kept.
    pub short: Option<ShortId>,
}

/// What a start does with an `identity.next` it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Run under the new key: the hand-over was written (or the new key
    /// already is `identity.key` and only the file's removal was missed).
    Complete,
    /// Drop the file and keep the current key: nothing was handed over, or
    /// the file belongs to no rotation of the current key.
    Discard,
}

impl Pending {
    /// A fresh successor of `old` from `rng`, announced at wall-clock
    /// second `issued`.
    pub fn generate<R: rand::RngCore + rand::CryptoRng>(
        old: &Identity,
        issued: u64,
        rng: &mut R,
    ) -> Self {
        let identity = Identity::generate(rng);
        let rotation = Rotation::sign(old, &identity, issued);
        Self {
            identity,
            rotation,
            short: None,
        }
    }

    /// The short ID the new key takes: the one the old key held, or (a
    /// file that does not say) the old ID's preferred one.
    pub fn carried_short(&self) -> ShortId {
        self.short
            .unwrap_or_else(|| ShortId::preferred(self.old_id()))
    }

    /// The ID the rotation moves from.
    pub fn old_id(&self) -> PeerId {
        PeerId::from_public_key(&self.rotation.old)
    }

    /// Writes `state_dir/identity.next` (0600, atomic, synced).
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        crate::persist::write_atomic(&state_dir.join(NEXT_FILE), &self.encode(), 0o600)
    }

    /// Reads `state_dir/identity.next`, if there is one. A file that is
    /// malformed, or whose announcement does not verify or does not name
    /// its own key as the successor, is an error (never acted on).
    pub fn load(state_dir: &Path) -> Result<Option<Self>, IdentityError> {
        let path = state_dir.join(NEXT_FILE);
        match std::fs::read(&path).map(Zeroizing::new) {
            Ok(bytes) => Self::decode(&bytes)
                .map(Some)
                .map_err(|reason| IdentityError::Malformed { path, reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IdentityError::Unreadable { path, source }),
        }
    }

    /// Makes the new key the identity: `identity.key` is replaced
    /// atomically, then `identity.next` removed. A crash between the two
    /// leaves a file that [`decide`] completes.
    pub fn commit(&self, state_dir: &Path) -> Result<(), IdentityError> {
        let path = state_dir.join(super::identity::IDENTITY_FILE);
        self.identity
            .write(&path)
            .map_err(|source| IdentityError::Write { path, source })?;
        discard(state_dir)
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let key = self.identity.encode_hex();
        let short = self
            .short
            .map(|s| format!("{SHORT_PREFIX}{}\n", s.0))
            .unwrap_or_default();
        let text = Zeroizing::new(format!(
            "{HEADER}\n{}\n{:?}\n{short}",
            key.as_str(),
            Hex(&self.rotation.encode())
        ));
        Zeroizing::new(text.as_bytes().to_vec())
    }

    fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text")?;
        let mut lines = text.lines().map(str::trim);
        if lines.next() != Some(HEADER) {
            return Err("the first line is not \"weft-identity-next v1\"");
        }
        let identity = Identity::decode_hex(lines.next().ok_or("the key line is missing")?)
            .ok_or("the key line is not 64 hex digits")?;
        let mut announced = [0u8; ROTATION_LEN];
        decode_hex(
            lines.next().ok_or("the announcement line is missing")?,
            &mut announced,
        )
        .ok_or("the announcement line is not hex of the right length")?;
        let mut rest = lines.filter(|l| !l.is_empty());
        let short = match rest.next() {
            None => None,
            Some(line) => Some(ShortId(
                line.strip_prefix(SHORT_PREFIX)
                    .and_then(|n| n.parse().ok())
                    .ok_or("the line after the announcement is not \"short-id N\" (N < 65536)")?,
            )),
        };
        if rest.next().is_some() {
            return Err("unexpected lines after the short ID");
        }
        let rotation = Rotation::decode(&announced).map_err(|_| "the announcement is malformed")?;
        let (_, new) = rotation
            .verify()
            .map_err(|_| "the announcement does not verify")?;
        if new != identity.id() {
            return Err("the announcement names another key than the file's");
        }
        Ok(Self {
            identity,
            rotation,
            short,
        })
    }
}

/// Removes `state_dir/identity.next` (absent is fine) and syncs the dir.
pub fn discard(state_dir: &Path) -> Result<(), IdentityError> {
    let path = state_dir.join(NEXT_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => std::fs::File::open(state_dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| IdentityError::Write { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IdentityError::Write { path, source }),
    }
}

/// What a start does with `pending` when `current` is the key in
/// `identity.key` and `handed_over` says whether some IPAM state on disk
/// is already owned by the new ID.
pub fn decide(current: &Identity, pending: &Pending, handed_over: bool) -> Resume {
    let current = current.public_key();
    if pending.rotation.new == current {
        return Resume::Complete;
    }
    if pending.rotation.old == current && handed_over {
        return Resume::Complete;
    }
    Resume::Discard
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::identity::IDENTITY_FILE;
    use rand::SeedableRng;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("weft-identity-next-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn rng(seed: u64) -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    #[test]
    fn a_pending_rotation_is_written_0600_and_reads_back_the_same_keys() {
        let dir = temp_dir("roundtrip");
        let (old, _) = Identity::load_or_create(&dir).unwrap();
        let pending = Pending::generate(&old, 1_796_000_000, &mut rng(1));
        assert_eq!(Pending::load(&dir).unwrap().map(|p| p.rotation), None);
        pending.write(&dir).unwrap();
        let mode = std::fs::metadata(dir.join(NEXT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Pending::load(&dir).unwrap().unwrap();
        assert_eq!(back.rotation, pending.rotation);
        assert_eq!(back.identity.id(), pending.identity.id());
        assert_eq!(back.old_id(), old.id());
        assert_eq!(back.rotation.verify(), Ok((old.id(), back.identity.id())));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_short_id_the_old_key_held_is_kept_and_a_file_without_it_falls_back() {
        let dir = temp_dir("short");
        let (old, _) = Identity::load_or_create(&dir).unwrap();
        let mut pending = Pending::generate(&old, 7, &mut rng(5));
        // A file without the line (as written before it was kept).
        pending.write(&dir).unwrap();
        let back = Pending::load(&dir).unwrap().unwrap();
        assert_eq!(back.short, None);
        assert_eq!(back.carried_short(), ShortId::preferred(old.id()));
        // The old key moved after a clash: the value it holds comes back.
        let moved = ShortId::candidate(old.id(), 3);
        assert_ne!(moved, ShortId::preferred(old.id()));
        pending.short = Some(moved);
        pending.write(&dir).unwrap();
        let back = Pending::load(&dir).unwrap().unwrap();
        assert_eq!(back.short, Some(moved));
        assert_eq!(back.carried_short(), moved);
        assert_eq!(back.identity.id(), pending.identity.id());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn commit_makes_the_new_key_the_identity_and_removes_the_file() {
        let dir = temp_dir("commit");
        let (old, _) = Identity::load_or_create(&dir).unwrap();
        let pending = Pending::generate(&old, 5, &mut rng(2));
        pending.write(&dir).unwrap();
        pending.commit(&dir).unwrap();
        let (now, created) = Identity::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(now.id(), pending.identity.id());
        assert_ne!(now.id(), old.id());
        assert!(!dir.join(NEXT_FILE).exists());
        let mode = std::fs::metadata(dir.join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_start_completes_only_a_handed_over_rotation_of_its_own_key() {
        let mut r = rng(3);
        let old = Identity::generate(&mut r);
        let stranger = Identity::generate(&mut r);
        let pending = Pending::generate(&old, 9, &mut r);
        // Crash before the ring was written: discard, keep the old key.
        assert_eq!(decide(&old, &pending, false), Resume::Discard);
        // Crash after it: complete.
        assert_eq!(decide(&old, &pending, true), Resume::Complete);
        // Crash after the new key replaced identity.key: only the removal
        // of the file is left.
        assert_eq!(decide(&pending.identity, &pending, false), Resume::Complete);
        // A file of another router's rotation is never adopted.
        assert_eq!(decide(&stranger, &pending, true), Resume::Discard);
    }

    #[test]
    fn a_damaged_or_forged_file_is_an_error_naming_it_and_is_left_alone() {
        let dir = temp_dir("damaged");
        crate::persist::ensure_private_dir(&dir).unwrap();
        let mut r = rng(4);
        let old = Identity::generate(&mut r);
        let pending = Pending::generate(&old, 11, &mut r);
        let good = String::from_utf8(pending.encode().to_vec()).unwrap();
        let lines: Vec<&str> = good.lines().collect();
        // Another key than the one the announcement names.
        let other = Identity::generate(&mut r).encode_hex();
        let swapped = format!("{}\n{}\n{}\n", lines[0], other.as_str(), lines[2]);
        // One flipped hex digit in a signature.
        let mut sig = lines[2].to_string();
        let flip = if sig.ends_with('0') { "1" } else { "0" };
        sig.replace_range(sig.len() - 1.., flip);
        let forged = format!("{}\n{}\n{sig}\n", lines[0], lines[1]);
        let cases = [
            "garbage".to_string(),
            format!("{}\n{}\n", lines[0], lines[1]),
            format!("{}\n{}\n{}\n", lines[0], lines[1], &lines[2][2..]),
            format!("{good}extra\n"),
            format!("{good}short-id 65536\n"),
            format!("{good}short-id 12\nshort-id 13\n"),
            swapped,
            forged,
        ];
        let path = dir.join(NEXT_FILE);
        for bad in &cases {
            std::fs::write(&path, bad).unwrap();
            let msg = Pending::load(&dir).unwrap_err().to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), *bad);
        }
        std::fs::write(&path, &good).unwrap();
        assert!(Pending::load(&dir).unwrap().is_some());
        discard(&dir).unwrap();
        discard(&dir).unwrap();
        assert!(Pending::load(&dir).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
