//! The short ID a rotated router carries over from its old key, kept in
//! `STATE_DIR/short-id` (issue 20). The rotation moves it in
//! `identity.next`, which the start completing the rotation consumes;
//! without this file the next plain restart announced
//! `ShortId::preferred(new)`, a value another router may hold, and a clash
//! moved one of them. A file of its own, so the identity's files (and an
//! older build reading them) are unchanged: an older build ignores it.
//!
//! Format (text, 0600, atomic): `weft short-id 1`, then `id <hex>` (the ID
//! it belongs to: a file left by another key is not used) and `short <n>`.

use crate::id::{PeerId, ShortId};
use std::path::{Path, PathBuf};

/// The file in the state dir.
pub const FILE: &str = "short-id";

const HEADER: &str = "weft short-id 1";

/// Where it lives.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Saves `short` as the value `id` carries (0600, atomic).
pub fn save(state_dir: &Path, id: PeerId, short: ShortId) -> std::io::Result<()> {
    crate::persist::write_atomic(&path(state_dir), encode(id, short).as_bytes(), 0o600)
}

/// The value saved for `id`, if the file exists, parses and names `id`.
pub fn load(state_dir: &Path, id: PeerId) -> Option<ShortId> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    decode(&text)
        .filter(|(owner, _)| *owner == id)
        .map(|(_, s)| s)
}

fn encode(id: PeerId, short: ShortId) -> String {
    format!("{HEADER}\nid {:016x}\nshort {}\n", id.0, short.0)
}

fn decode(text: &str) -> Option<(PeerId, ShortId)> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let id = lines.next()?.strip_prefix("id ")?;
    let short = lines.next()?.strip_prefix("short ")?;
    if lines.next().is_some() {
        return None;
    }
    let id = u64::from_str_radix(id, 16).ok()?;
    Some((PeerId(id), ShortId(short.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_carried_short_id_round_trips_for_its_own_id_only() {
        let dir = std::env::temp_dir().join(format!("weft-carried-short-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        struct Gone<'a>(&'a Path);
        impl Drop for Gone<'_> {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(self.0);
            }
        }
        let _gone = Gone(&dir);
        let dir = dir.as_path();
        assert_eq!(load(dir, PeerId(7)), None);
        save(dir, PeerId(7), ShortId(4242)).unwrap();
        assert_eq!(load(dir, PeerId(7)), Some(ShortId(4242)));
        assert_eq!(load(dir, PeerId(8)), None);
        let mode = std::fs::metadata(path(dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        for bad in [
            "",
            "weft short-id 2\nid 0000000000000007\nshort 1\n",
            "weft short-id 1\nid zz\nshort 1\n",
            "weft short-id 1\nid 0000000000000007\nshort 70000\n",
            "weft short-id 1\nid 0000000000000007\nshort 1\nmore\n",
        ] {
            std::fs::write(path(dir), bad).unwrap();
            assert_eq!(load(dir, PeerId(7)), None, "{bad:?}");
        }
    }
}
