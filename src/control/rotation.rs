//! Identity key rotation at the connections (issue 20, step 5;
//! docs/ARCHITECTURE.md "Identity key rotation"): what a verified rotation
//! means for the links. Sans-IO: the control loop feeds the rotations the
//! topology verified, asks at each connection's arrival, and closes what
//! [`Rotations::handle_timeout`] names.
//!
//! - A connection from a retired key inside its window is accepted (an old
//!   link that has not moved yet); one past its window is refused, as a
//!   router without the cluster secret is.
//! - A connection from a successor replaces the links still on the keys it
//!   moved from (the rotated router restarted its connections under the
//!   new key; its old ones are closed, once).
//! - When a window ends, the links still on that key are closed, once.

use super::retired_keys::RETAIN;
use crate::crypto::rotation::{Admit, MAX_TRACKED, Rotation, RotationError, Successors};
use crate::id::PeerId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often [`Rotations::prune`] looks for rotations past [`RETAIN`].
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What to do with a connection that finished its handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Refuse it: its key was retired and its window is over.
    Refuse,
    /// Take it; close the links of `replaces` (keys it moved from).
    Accept {
        /// The retired IDs whose links this connection supersedes.
        replaces: Vec<PeerId>,
    },
}

/// The verified rotations and their windows.
#[derive(Debug)]
pub struct Rotations {
    successors: Successors,
    window: Duration,
    /// Each tracked rotation and the wall-clock second this router learned
    /// it: what the state dir keeps (`retired_keys.rs`).
    kept: BTreeMap<PeerId, (Rotation, u64)>,
    /// Bumped when what [`Self::kept`] reports changes (a rotation learned,
    /// a window ended): the driver saves then.
    changes: u64,
    /// When [`Self::prune`] next looks (`None`: at its first call).
    next_prune: Option<Instant>,
}

/// A tracked rotation as the state dir keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The verified announcement.
    pub rotation: Rotation,
    /// Wall-clock seconds when this router learned it.
    pub learned_unix: u64,
    /// Its window is over: the old key is refused.
    pub ended: bool,
}

impl Rotations {
    /// Accepting each retired key for `window` after it is learned.
    pub fn new(window: Duration) -> Self {
        Self {
            successors: Successors::new(window),
            window,
            kept: BTreeMap::new(),
            changes: 0,
            next_prune: None,
        }
    }

    /// A rotation the topology verified, learned at `now` (`unix`: the
    /// same moment in wall-clock seconds, saved so a restart knows how
    /// much of the window is left).
    pub fn learn(
        &mut self,
        rotation: &Rotation,
        now: Instant,
        unix: u64,
    ) -> Result<(PeerId, PeerId), RotationError> {
        let ids = self.successors.learn(rotation, now)?;
        self.keep(ids.0, rotation, unix);
        Ok(ids)
    }

    /// This router's own rotation (the start that completed it): nobody
    /// else holds the old key, so it is refused at once, no window.
    pub fn retire_own(
        &mut self,
        rotation: &Rotation,
        now: Instant,
        unix: u64,
    ) -> Result<(PeerId, PeerId), RotationError> {
        let ids = self.successors.restore(rotation, None, now)?;
        self.keep(ids.0, rotation, unix);
        Ok(ids)
    }

    /// A rotation the state dir kept across a restart: learned at
    /// `learned_unix`, its window over (`ended`) or ending at
    /// `learned_unix` + window; `unix` is now in wall-clock seconds. A
    /// clock that went back gives at most a full window again, never more.
    pub fn restore(
        &mut self,
        kept: &Kept,
        now: Instant,
        unix: u64,
    ) -> Result<(PeerId, PeerId), RotationError> {
        let ends = kept.learned_unix.saturating_add(self.window.as_secs());
        let left = (!kept.ended && ends > unix).then(|| Duration::from_secs(ends - unix));
        let ids = self.successors.restore(&kept.rotation, left, now)?;
        self.keep(ids.0, &kept.rotation, kept.learned_unix);
        Ok(ids)
    }

    fn keep(&mut self, old: PeerId, rotation: &Rotation, unix: u64) {
        if let std::collections::btree_map::Entry::Vacant(slot) = self.kept.entry(old) {
            slot.insert((*rotation, unix));
            self.changes += 1;
            // At the bound the table made room by dropping the oldest
            // ended window: forget it here too.
            if self.kept.len() > MAX_TRACKED {
                let successors = &self.successors;
                self.kept.retain(|old, _| successors.contains(*old));
            }
        }
    }

    /// Drops the rotations learned more than [`RETAIN`] before `unix`
    /// whose window is over (run-time pruning; a start drops them too):
    /// at most once per [`PRUNE_EVERY`], whenever the driver calls it.
    /// Returns the old IDs dropped (the driver drops them from the gossip
    /// core too, `Gossip::forget_retirement`).
    pub fn prune(&mut self, now: Instant, unix: u64) -> Vec<PeerId> {
        if self.next_prune.is_some_and(|t| now < t) {
            return Vec::new();
        }
        self.next_prune = Some(now + PRUNE_EVERY);
        let expired: Vec<PeerId> = self
            .kept
            .iter()
            .filter(|(old, (_, learned))| {
                unix.saturating_sub(*learned) > RETAIN.as_secs()
                    && self.successors.admit(**old, now) == Admit::Retired
            })
            .map(|(old, _)| *old)
            .collect();
        for old in &expired {
            self.kept.remove(old);
            self.successors.forget(*old);
        }
        if !expired.is_empty() {
            self.changes += 1;
        }
        expired
    }

    /// Every tracked rotation as the state dir keeps it, at `now`.
    pub fn kept(&self, now: Instant) -> Vec<(PeerId, Kept)> {
        self.kept
            .iter()
            .map(|(old, (rotation, learned_unix))| {
                let ended = self.successors.admit(*old, now) == Admit::Retired;
                (
                    *old,
                    Kept {
                        rotation: *rotation,
                        learned_unix: *learned_unix,
                        ended,
                    },
                )
            })
            .collect()
    }

    /// Changes when what [`Self::kept`] reports does (other than time).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Judges a connection from `peer` at `now`, given the peers that have
    /// a link now (`linked`).
    pub fn arrival(
        &self,
        peer: PeerId,
        linked: impl IntoIterator<Item = PeerId>,
        now: Instant,
    ) -> Arrival {
        if self.successors.admit(peer, now) == Admit::Retired {
            return Arrival::Refuse;
        }
        let moved: Vec<PeerId> = self.successors.predecessors(peer).collect();
        let replaces = linked.into_iter().filter(|id| moved.contains(id)).collect();
        Arrival::Accept { replaces }
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.successors.poll_timeout(now)
    }

    /// The retired IDs whose window ended since the last call (once each):
    /// the caller closes their links.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<PeerId> {
        let mut ended = Vec::new();
        self.successors.handle_timeout(now, &mut ended);
        if !ended.is_empty() {
            self.changes += 1;
        }
        ended
    }

    /// The router `id` is now (following rotations).
    pub fn current(&self, id: PeerId) -> PeerId {
        self.successors.current(id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::Identity;
    use rand::SeedableRng;

    fn identity(seed: u64) -> Identity {
        Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    const WINDOW: Duration = Duration::from_secs(30);

    #[test]
    fn rotations_past_a_year_are_pruned_at_run_time_and_open_windows_never() {
        let t0 = Instant::now();
        let window = Duration::from_secs(4 * 3600);
        let mut r = Rotations::new(window);
        let year = RETAIN.as_secs();
        let unix = 10 * year;
        let (a, b, c, d, e, f) = (
            identity(1),
            identity(2),
            identity(3),
            identity(4),
            identity(5),
            identity(6),
        );
        let ended = |rotation, learned_unix| Kept {
            rotation,
            learned_unix,
            ended: true,
        };
        // Learned over a year ago, and a year ago to the second (both
        // restored, windows over) …
        r.restore(&ended(Rotation::sign(&a, &b, 5), unix - year - 1), t0, unix)
            .unwrap();
        r.restore(&ended(Rotation::sign(&c, &d, 5), unix - year), t0, unix)
            .unwrap();
        // … and one whose window is open although the clock says it was
        // learned long ago.
        r.learn(&Rotation::sign(&e, &f, 5), t0, 0).unwrap();
        let before = r.changes();
        assert_eq!(r.prune(t0, unix), vec![a.id()]);
        assert!(r.changes() > before);
        // Forgotten: the key is judged as any key again.
        assert_eq!(
            r.arrival(a.id(), [], t0),
            Arrival::Accept { replaces: vec![] }
        );
        assert_eq!(r.arrival(c.id(), [], t0), Arrival::Refuse);
        // Not again before PRUNE_EVERY, then the next one past a year.
        assert_eq!(r.prune(t0 + PRUNE_EVERY / 2, unix + 10), vec![]);
        assert_eq!(r.prune(t0 + PRUNE_EVERY, unix + 10), vec![c.id()]);
        assert_eq!(r.kept(t0 + PRUNE_EVERY).len(), 1);
        // The open window goes only once it is over.
        assert_eq!(r.prune(t0 + window, unix + 10), vec![e.id()]);
        assert!(r.kept(t0 + window).is_empty());
    }

    #[test]
    fn an_old_key_is_taken_inside_its_window_and_refused_after_it() {
        let (old, new, other) = (identity(1), identity(2), identity(3));
        let t0 = Instant::now();
        let mut r = Rotations::new(WINDOW);
        assert_eq!(
            r.learn(&Rotation::sign(&old, &new, 5), t0, 100),
            Ok((old.id(), new.id()))
        );
        let inside = t0 + WINDOW / 2;
        assert_eq!(
            r.arrival(old.id(), [], inside),
            Arrival::Accept { replaces: vec![] }
        );
        assert_eq!(r.current(old.id()), new.id());
        let after = t0 + WINDOW;
        assert_eq!(r.arrival(old.id(), [], after), Arrival::Refuse);
        // Keys no rotation concerns are untouched.
        assert_eq!(
            r.arrival(other.id(), [old.id()], after),
            Arrival::Accept { replaces: vec![] }
        );
    }

    #[test]
    fn the_successor_replaces_the_links_still_on_the_old_key() {
        let (old, new, other) = (identity(1), identity(2), identity(3));
        let t0 = Instant::now();
        let mut r = Rotations::new(WINDOW);
        r.learn(&Rotation::sign(&old, &new, 5), t0, 100).unwrap();
        assert_eq!(
            r.arrival(new.id(), [other.id(), old.id()], t0),
            Arrival::Accept {
                replaces: vec![old.id()]
            }
        );
        assert_eq!(
            r.arrival(new.id(), [other.id()], t0),
            Arrival::Accept { replaces: vec![] }
        );
    }

    #[test]
    fn a_window_end_is_reported_once_and_a_replay_does_not_extend_it() {
        let (old, new) = (identity(1), identity(2));
        let t0 = Instant::now();
        let mut r = Rotations::new(WINDOW);
        let rotation = Rotation::sign(&old, &new, 5);
        r.learn(&rotation, t0, 100).unwrap();
        assert_eq!(r.poll_timeout(t0), Some(t0 + WINDOW));
        assert_eq!(r.handle_timeout(t0 + WINDOW / 2), vec![]);
        r.learn(&rotation, t0 + WINDOW / 2, 115).unwrap();
        assert_eq!(r.handle_timeout(t0 + WINDOW), vec![old.id()]);
        assert_eq!(r.handle_timeout(t0 + 2 * WINDOW), vec![]);
        assert_eq!(r.poll_timeout(t0 + 2 * WINDOW), None);
        // A second successor of the same key is refused.
        let stolen = Rotation::sign(&old, &identity(4), 6);
        assert_eq!(
            r.learn(&stolen, t0 + WINDOW, 130),
            Err(RotationError::Conflict)
        );
    }
}
