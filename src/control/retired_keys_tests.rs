//! The retired-keys file (`retired_keys.rs`): round trips, bounds, and a
//! corrupt or hostile file refused with an error, never a panic; and the
//! windows it carries across a restart (`rotation::Rotations::restore`).
#![allow(clippy::unwrap_used)]

use super::*;
use crate::control::rotation::{Arrival, Rotations};
use crate::crypto::{Identity, SigningKey};
use crate::gossip::core::tombstone;
use rand::SeedableRng;
use std::time::Instant;

fn identity(seed: u64) -> Identity {
    Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
}

/// A rotation from `seed`'s key to `seed + 1`'s, learned at `learned`.
fn record(seed: u64, learned: u64, ended: bool, with_tombstone: bool) -> Record {
    let (old, new) = (identity(seed), identity(seed + 1));
    let rotation = Rotation::sign(&old, &new, 1_796_000_000 + seed);
    Record {
        kept: Kept {
            rotation,
            learned_unix: learned,
            ended,
        },
        tombstone: with_tombstone
            .then(|| tombstone(&rotation, "node-a", 1420, &SigningKey::from_identity(&old)).1),
    }
}

/// A state dir of its own, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("weft-retired-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        crate::persist::ensure_private_dir(&path).unwrap();
        Self(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NOW: u64 = 1_800_000_000;

#[test]
fn records_round_trip_through_the_file() {
    let dir = Dir::new("round-trip");
    assert_eq!(load(&dir.0, NOW).unwrap(), vec![], "no file: no records");
    let records = vec![
        record(10, NOW - 5, false, true),
        record(20, NOW - 9, true, false),
    ];
    save(&dir.0, &records).unwrap();
    assert_eq!(load(&dir.0, NOW).unwrap(), records);
    let mode = std::fs::metadata(path(&dir.0)).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
}

#[test]
fn old_records_are_dropped_and_the_newest_kept_up_to_the_bound() {
    let fresh = record(10, NOW - 60, true, false);
    let stale = record(20, NOW - RETAIN.as_secs() - 1, true, false);
    assert_eq!(
        retained(vec![stale, fresh.clone()], NOW),
        vec![fresh.clone()]
    );
    let many: Vec<Record> = (0..MAX_SAVED as u64 + 3)
        .map(|i| Record {
            kept: Kept {
                learned_unix: NOW - i,
                ..fresh.kept
            },
            tombstone: None,
        })
        .collect();
    let kept = retained(many, NOW);
    assert_eq!(kept.len(), MAX_SAVED);
    assert_eq!(kept[0].kept.learned_unix, NOW);
    assert_eq!(
        kept[MAX_SAVED - 1].kept.learned_unix,
        NOW - MAX_SAVED as u64 + 1
    );
    // A file over the bound is refused as a whole.
    let over: Vec<Record> = (0..=MAX_SAVED).map(|_| fresh.clone()).collect();
    assert!(matches!(
        decode(&encode(&over)),
        Err(RetiredError::TooLarge)
    ));
}

#[test]
fn a_corrupt_truncated_or_newer_file_is_an_error_not_a_panic() {
    let bytes = encode(&[record(10, NOW, false, true), record(20, NOW, true, true)]);
    for len in 0..bytes.len() {
        assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
    }
    assert!(matches!(decode(b"XXXX\x01\x00"), Err(RetiredError::Magic)));
    let mut newer = MAGIC.to_vec();
    newer.extend(bincode::serde::encode_to_vec(FORMAT + 1, config()).unwrap());
    assert!(matches!(decode(&newer), Err(RetiredError::Format(f)) if f == FORMAT + 1));
    // A count claiming more records than the file holds.
    let mut hostile = MAGIC.to_vec();
    hostile.extend(bincode::serde::encode_to_vec(FORMAT, config()).unwrap());
    hostile.extend([0xfc, 0xff, 0xff, 0xff, 0x7f]);
    assert!(decode(&hostile).is_err());
    // A rotation of the wrong size, a signature of the wrong size.
    let mut flipped = bytes.clone();
    for at in 4..flipped.len() {
        flipped[at] ^= 0x55;
        let _ = decode(&flipped);
        flipped[at] ^= 0x55;
    }
    // On disk: an error from load, the caller goes on without the records.
    let dir = Dir::new("corrupt");
    std::fs::write(path(&dir.0), b"WFRK\x01 garbage").unwrap();
    assert!(matches!(load(&dir.0, NOW), Err(RetiredError::Corrupt(_))));
    std::fs::write(path(&dir.0), vec![0u8; MAX_FILE + 1]).unwrap();
    assert!(matches!(load(&dir.0, NOW), Err(RetiredError::TooLarge)));
}

#[test]
fn a_window_carries_across_a_restart_and_an_ended_one_stays_ended() {
    const WINDOW: Duration = Duration::from_secs(600);
    let (old, new) = (identity(1), identity(2));
    let rotation = Rotation::sign(&old, &new, 5);
    let t0 = Instant::now();
    let mut before = Rotations::new(WINDOW);
    before.learn(&rotation, t0, NOW).unwrap();
    let dir = Dir::new("window");
    let saved = |r: &Rotations, at: Instant| {
        let records: Vec<Record> = r
            .kept(at)
            .into_iter()
            .map(|(_, kept)| Record {
                kept,
                tombstone: None,
            })
            .collect();
        save(&dir.0, &records).unwrap();
    };
    saved(&before, t0 + WINDOW / 3);
    // Restarted 200 s after it learned the rotation: 400 s of window left.
    let t1 = Instant::now();
    let mut after = Rotations::new(WINDOW);
    for r in load(&dir.0, NOW + 200).unwrap() {
        after.restore(&r.kept, t1, NOW + 200).unwrap();
    }
    let taken = Arrival::Accept { replaces: vec![] };
    assert_eq!(
        after.arrival(old.id(), [], t1 + Duration::from_secs(399)),
        taken
    );
    assert_eq!(
        after.arrival(old.id(), [], t1 + Duration::from_secs(400)),
        Arrival::Refuse
    );
    assert_eq!(
        after.handle_timeout(t1 + Duration::from_secs(400)),
        vec![old.id()]
    );
    // Saved after its end, it is refused at once after the next restart,
    // even with a clock that went back.
    saved(&after, t1 + Duration::from_secs(400));
    let t2 = Instant::now();
    let mut again = Rotations::new(WINDOW);
    for r in load(&dir.0, NOW - 1000).unwrap() {
        assert!(r.kept.ended);
        again.restore(&r.kept, t2, NOW - 1000).unwrap();
    }
    assert_eq!(again.arrival(old.id(), [], t2), Arrival::Refuse);
    assert_eq!(again.handle_timeout(t2), Vec::<crate::id::PeerId>::new());
    assert_eq!(again.current(old.id()), new.id());
    // A window not saved as ended but over by the clock: refused at once;
    // a clock that went back gives at most one window again.
    let open = Kept {
        rotation,
        learned_unix: NOW,
        ended: false,
    };
    let mut late = Rotations::new(WINDOW);
    late.restore(&open, t2, NOW + WINDOW.as_secs()).unwrap();
    assert_eq!(late.arrival(old.id(), [], t2), Arrival::Refuse);
    let mut back = Rotations::new(WINDOW);
    back.restore(&open, t2, NOW - 3600).unwrap();
    assert_eq!(back.arrival(old.id(), [], t2 + WINDOW), Arrival::Refuse);
    // My own rotation: the old key is refused at once.
    let mut own = Rotations::new(WINDOW);
    own.retire_own(&rotation, t2, NOW).unwrap();
    assert_eq!(own.arrival(old.id(), [], t2), Arrival::Refuse);
    assert!(own.kept(t2)[0].1.ended);
}
