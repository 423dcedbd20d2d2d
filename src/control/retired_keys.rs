//! Retired identity keys on disk (issue 20; docs/ARCHITECTURE.md "Identity
//! key rotation"): the verified rotations this router tracks, the old IDs'
//! tombstones and how far each window got, so that a router restarted, or
//! a whole cluster restarted at once, still refuses a retired key (e.g. a
//! stolen copy of an old `identity.key`) and hands the tombstones on.
//!
//! The file (`retired-keys` in the state dir, 0600, written atomically) is
//! `WFRK`, then the pinned bincode encoding of [`Disk`]: a format number
//! and the records. Bounded: at most [`MAX_SAVED`] records, none older
//! than [`RETAIN`], each of fixed or capped size; the decoder reads at most
//! [`MAX_FILE`] bytes, checks every length and never panics (fuzz target
//! `retired_keys`). Signatures are checked when the records are restored
//! into the cores, as if they came from the network.

use crate::control::rotation::Kept;
use crate::crypto::rotation::{MAX_TRACKED, Rotation};
use crate::crypto::signing::{SIGNATURE_LEN, Signature};
use crate::gossip::topology::SignedEntry;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file's name in the state dir.
pub const RETIRED_FILE: &str = "retired-keys";

/// The format number; bumped on any change of layout.
pub const FORMAT: u16 = 1;

const MAGIC: &[u8; 4] = b"WFRK";

/// How long a retirement is kept after this router learned it: a year.
/// Far longer than the window (minutes) and than any sensible
/// `--identity-max-age`, so a copy of a retired key stays refused across
/// restarts for as long as it is plausibly still a threat; after that it
/// is judged as any key, and it still needs the cluster secret, which a
/// year-old copy should no longer match (rotate the secret when a key is
/// known stolen). Bounded so the file does not grow with every rotation a
/// long-lived cluster ever made.
pub const RETAIN: Duration = Duration::from_secs(365 * 24 * 3600);

/// The most records kept (the newest): half of what the in-memory tables
/// track, so a router restored from a full file still has room for the
/// rotations that come after its start.
pub const MAX_SAVED: usize = MAX_TRACKED / 2;

/// The largest tombstone kept: a topology entry with no addresses and no
/// connections, a name of at most 253 bytes and the 201-byte announcement
/// is about 560 bytes.
pub const MAX_TOMBSTONE: usize = 1024;

/// The largest file read (every record at its largest, with room).
pub const MAX_FILE: usize = 4 << 20;

/// One retirement as saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The announcement, its window's state and when it was learned.
    pub kept: Kept,
    /// The old ID's tombstone, signed by the old key, once known.
    pub tombstone: Option<SignedEntry>,
}

/// Why the file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RetiredError {
    /// Not a retired-keys file.
    #[error("not a retired-keys file (bad magic)")]
    Magic,
    /// Written by a newer build.
    #[error("format {0} is newer than this build reads ({FORMAT})")]
    Format(u16),
    /// Over [`MAX_FILE`] bytes or [`MAX_SAVED`] records.
    #[error("larger than a retired-keys file can be")]
    TooLarge,
    /// A body or a record that does not decode.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The encoded body. Field order is the layout: a change bumps [`FORMAT`].
#[derive(Serialize, Deserialize)]
struct Disk {
    format: u16,
    records: Vec<DiskRecord>,
}

#[derive(Serialize, Deserialize)]
struct DiskRecord {
    /// A [`Rotation`]'s encoding.
    rotation: Vec<u8>,
    /// Wall-clock seconds when this router learned it.
    learned: u64,
    /// Its window is over.
    ended: bool,
    /// The tombstone's signed bytes (empty: none known) and signature.
    tombstone: Vec<u8>,
    tombstone_signature: Vec<u8>,
}

/// The bincode configuration of the file: the pinned one, with the file's
/// own limit (a hostile length prefix reserves at most that).
fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_FILE>()
}

/// The records worth keeping at `unix` (wall-clock seconds): none older
/// than [`RETAIN`], the newest [`MAX_SAVED`].
pub fn retained(mut records: Vec<Record>, unix: u64) -> Vec<Record> {
    records.retain(|r| unix.saturating_sub(r.kept.learned_unix) <= RETAIN.as_secs());
    records.sort_by_key(|r| std::cmp::Reverse(r.kept.learned_unix));
    records.truncate(MAX_SAVED);
    records
}

/// Encodes `records` (the caller passes them through [`retained`]).
pub fn encode(records: &[Record]) -> Vec<u8> {
    let disk = Disk {
        format: FORMAT,
        records: records
            .iter()
            .map(|r| DiskRecord {
                rotation: r.kept.rotation.encode().to_vec(),
                learned: r.kept.learned_unix,
                ended: r.kept.ended,
                tombstone: r
                    .tombstone
                    .as_ref()
                    .map(|t| t.bytes.clone())
                    .unwrap_or_default(),
                tombstone_signature: r
                    .tombstone
                    .as_ref()
                    .map(|t| t.signature.to_bytes().to_vec())
                    .unwrap_or_default(),
            })
            .collect(),
    };
    let mut out = MAGIC.to_vec();
    out.extend(bincode::serde::encode_to_vec(&disk, config()).unwrap_or_default());
    out
}

/// Decodes a file's bytes (signatures unchecked: the cores check them when
/// the records are restored).
pub fn decode(bytes: &[u8]) -> Result<Vec<Record>, RetiredError> {
    if bytes.len() > MAX_FILE {
        return Err(RetiredError::TooLarge);
    }
    let body = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(RetiredError::Magic)?;
    // The format first, so a newer file says so rather than "corrupt".
    let (format, _): (u16, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| RetiredError::Corrupt(e.to_string()))?;
    if format > FORMAT {
        return Err(RetiredError::Format(format));
    }
    if format != FORMAT {
        return Err(RetiredError::Corrupt(format!("format {format}")));
    }
    let (disk, _): (Disk, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| RetiredError::Corrupt(e.to_string()))?;
    if disk.records.len() > MAX_SAVED {
        return Err(RetiredError::TooLarge);
    }
    disk.records.into_iter().map(record).collect()
}

fn record(disk: DiskRecord) -> Result<Record, RetiredError> {
    let corrupt = |what: &str| RetiredError::Corrupt(what.to_string());
    let rotation = Rotation::decode(&disk.rotation).map_err(|_| corrupt("a rotation"))?;
    let tombstone = if disk.tombstone.is_empty() {
        None
    } else {
        if disk.tombstone.len() > MAX_TOMBSTONE {
            return Err(corrupt("a tombstone over its size"));
        }
        let signature: &[u8; SIGNATURE_LEN] = disk
            .tombstone_signature
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("a tombstone's signature"))?;
        Some(SignedEntry {
            bytes: disk.tombstone,
            signature: Signature::from_bytes(signature),
        })
    };
    Ok(Record {
        kept: Kept {
            rotation,
            learned_unix: disk.learned,
            ended: disk.ended,
        },
        tombstone,
    })
}

/// The file's path in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(RETIRED_FILE)
}

/// Reads the file (none: no records), at most [`MAX_FILE`] bytes, and keeps
/// what [`retained`] keeps at `unix`.
pub fn load(state_dir: &Path, unix: u64) -> Result<Vec<Record>, RetiredError> {
    let file = match std::fs::File::open(path(state_dir)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE as u64 + 1).read_to_end(&mut bytes)?;
    Ok(retained(decode(&bytes)?, unix))
}

/// Writes `records` atomically (temp file, fsync, rename), mode 0600.
pub fn save(state_dir: &Path, records: &[Record]) -> std::io::Result<()> {
    crate::persist::write_atomic(&path(state_dir), &encode(records), 0o600)
}

#[cfg(test)]
#[path = "retired_keys_tests.rs"]
mod tests;
