//! When the identity key was made (`--identity-max-age`, issue 20 step 6;
//! docs/ARCHITECTURE.md "Identity key rotation"): `identity.created`
//! beside `identity.key` holds the wall-clock second of its creation (or of
//! the rotation that made it). A key found without the file (made by a
//! build before it) counts from the first start that finds it, so an
//! upgrade never rotates every router at once.

use std::path::Path;
use std::time::Duration;

/// File name beside `identity.key`.
pub const CREATED_FILE: &str = "identity.created";

/// Records that the current key was made at `now` (wall-clock seconds).
pub fn record(state_dir: &Path, now: u64) -> std::io::Result<()> {
    crate::persist::write_atomic(
        &state_dir.join(CREATED_FILE),
        format!("{now}\n").as_bytes(),
        0o600,
    )
}

/// When the current key was made: the file's second, or `now` (recorded)
/// when the file is missing or unreadable as a number.
pub fn created(state_dir: &Path, now: u64) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(state_dir.join(CREATED_FILE)).unwrap_or_default();
    match text.trim().parse::<u64>() {
        Ok(at) => Ok(at),
        Err(_) => record(state_dir, now).map(|()| now),
    }
}

/// Whether a key made at `created` is older than `max_age` at `now` (a
/// clock behind the file's time says no).
pub fn due(created: u64, now: u64, max_age: Duration) -> bool {
    now.saturating_sub(created) > max_age.as_secs()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_missing_file_counts_from_now_and_a_recorded_time_is_kept() {
        let dir = std::env::temp_dir().join(format!("weft-identity-age-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(created(&dir, 1000).unwrap(), 1000);
        assert_eq!(created(&dir, 5000).unwrap(), 1000);
        record(&dir, 4000).unwrap();
        assert_eq!(created(&dir, 5000).unwrap(), 4000);
        std::fs::write(dir.join(CREATED_FILE), "garbage").unwrap();
        assert_eq!(created(&dir, 6000).unwrap(), 6000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_is_due_only_when_older_than_the_limit() {
        let day = Duration::from_secs(86_400);
        assert!(!due(0, 86_400, day));
        assert!(due(0, 86_401, day));
        // A clock set back never makes a key due.
        assert!(!due(90_000, 10, day));
    }
}
