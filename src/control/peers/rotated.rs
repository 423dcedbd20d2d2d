//! Identity switches in the peer registry (issue 20, the live key switch;
//! docs/ARCHITECTURE.md "Identity key rotation"): a connected peer that
//! switched its static key on its live connection keeps its record,
//! moved under its new ID, and the rotating router's own ID changes. An
//! `impl Peers` block of the registry core (`peers.rs`).

use super::{PeerEvent, Peers};
use crate::control::connection::ConnectionId;
use crate::id::PeerId;

/// What [`Peers::rekey_in_place`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InPlace {
    /// The record moved to the new ID with its connection, endpoint, keys
    /// and short ID; no [`PeerEvent`].
    Moved,
    /// The successor already had a record on another connection: that one
    /// stays, the old ID's record went ([`PeerEvent::Down`]) and its
    /// connection is closed.
    Superseded,
    /// No record of `old` on that connection: nothing changed.
    Unknown,
}

impl Peers {
    /// The link on `connection` accepted the peer's switch from `old` to
    /// `new` (whose static key is `public_key`), the link's verified
    /// `PeerRotated`. Call it before that rekey's
    /// [`Peers::handle_rekeyed`], which then installs the rekey's keyset
    /// in the moved record (found by connection) and confirms it.
    pub fn rekey_in_place(
        &mut self,
        connection: ConnectionId,
        old: PeerId,
        new: PeerId,
        public_key: [u8; 32],
    ) -> InPlace {
        if self
            .peers
            .get(&old)
            .is_none_or(|p| p.connection != connection)
        {
            return InPlace::Unknown;
        }
        if self.peers.contains_key(&new) {
            if let Some(gone) = self.peers.remove(&old) {
                tracing::info!(peer = %gone.hello.name, %old, %new, "peer switched its key on a second connection; keeping the successor's");
                self.close(
                    gone.connection,
                    "replaced by the successor key's connection",
                );
            }
            self.events.push_back(PeerEvent::Down { peer: old });
            self.changed = true;
            return InPlace::Superseded;
        }
        let Some(mut peer) = self.peers.remove(&old) else {
            return InPlace::Unknown;
        };
        tracing::info!(peer = %peer.hello.name, %old, %new, "peer switched its identity key; connection kept");
        peer.id = new;
        peer.public_key = public_key;
        self.peers.insert(new, peer);
        self.changed = true;
        InPlace::Moved
    }

    /// Our own identity switched (issue 20): the lower-ID rule of the
    /// rekey policy and of duplicate dials uses `me` from now on.
    pub fn set_me(&mut self, me: PeerId) {
        self.me = me;
    }

    /// Our ID.
    pub fn me(&self) -> PeerId {
        self.me
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::Arrived;
    use super::super::tests_support::{arrival, new_keys};
    use super::*;
    use crate::control::connection::ConnectionCommand;
    use crate::control::proto::ControlMessage;
    use crate::id::ShortId;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    const REKEY: Duration = Duration::from_secs(120);
    const OLD: PeerId = PeerId(5);
    const NEW: PeerId = PeerId(9);
    const NEW_KEY: [u8; 32] = [9; 32];

    fn drained(p: &mut Peers) -> (Vec<PeerEvent>, Vec<(ConnectionId, ConnectionCommand)>) {
        (
            std::iter::from_fn(|| p.poll_event()).collect(),
            std::iter::from_fn(|| p.poll_transmit()).collect(),
        )
    }

    /// No event and no command since the last drain.
    fn quiet(p: &mut Peers) -> bool {
        let (events, sent) = drained(p);
        events.is_empty() && sent.is_empty()
    }

    /// A registry of router 1 with `OLD` up on connection 1.
    fn with_old(now: Instant) -> Peers {
        let mut p = Peers::new(PeerId(1), REKEY);
        assert_eq!(p.handle_up(arrival(OLD, 1, true, 7), now), Arrived::New);
        p.set_endpoint(OLD, SocketAddr::from(([198, 51, 100, 5], 6783)));
        p.set_short(OLD, ShortId(77));
        let _ = drained(&mut p);
        let _ = p.take_changed();
        p
    }

    #[test]
    fn a_switched_peer_keeps_its_record_under_the_new_id_with_no_down_or_up() {
        let now = Instant::now();
        let mut p = with_old(now);
        let before = p.get(OLD).unwrap().keys.current().unwrap().local_index;
        assert_eq!(p.rekey_in_place(1, OLD, NEW, NEW_KEY), InPlace::Moved);
        assert!(p.take_changed());
        assert!(quiet(&mut p), "no down, no up");
        assert!(!p.contains(OLD));
        let moved = p.get(NEW).unwrap();
        assert_eq!((moved.id, moved.public_key), (NEW, NEW_KEY));
        assert_eq!(moved.connection, 1);
        assert_eq!(moved.short, ShortId(77));
        assert_eq!(
            moved.endpoint,
            Some(SocketAddr::from(([198, 51, 100, 5], 6783)))
        );
        assert_eq!(moved.keys.current().unwrap().local_index, before);
        assert_eq!(p.by_short(ShortId(77)), Some(NEW));
        // The switch's rekey lands in the moved record and is confirmed.
        p.handle_rekeyed(1, new_keys(40), now);
        assert_eq!(p.get(NEW).unwrap().keys.next().unwrap().local_index, 40);
        let (_, sent) = drained(&mut p);
        assert!(matches!(
            &sent[..],
            [(
                1,
                ConnectionCommand::Send(ControlMessage::KeyConfirm {
                    session_index: 1040
                })
            )]
        ));
        // A second connection from the successor's process is a duplicate
        // of the moved record, not a new peer.
        let mut second = arrival(NEW, 2, false, 7);
        second.public_key = NEW_KEY;
        assert_ne!(p.handle_up(second, now), Arrived::New);
        assert_eq!(
            p.handle_down(p.get(NEW).unwrap().connection, "test"),
            Some(NEW)
        );
        assert_eq!(drained(&mut p).0, [PeerEvent::Down { peer: NEW }]);
    }

    #[test]
    fn a_switch_on_another_connection_or_of_an_unknown_peer_changes_nothing() {
        let now = Instant::now();
        let mut p = with_old(now);
        assert_eq!(p.rekey_in_place(2, OLD, NEW, NEW_KEY), InPlace::Unknown);
        assert_eq!(
            p.rekey_in_place(1, PeerId(6), NEW, NEW_KEY),
            InPlace::Unknown
        );
        assert!(p.contains(OLD) && !p.contains(NEW));
        assert!(!p.take_changed());
        assert!(quiet(&mut p));
    }

    #[test]
    fn a_successor_already_connected_elsewhere_supersedes_the_switched_connection() {
        let now = Instant::now();
        let mut p = with_old(now);
        let mut successor = arrival(NEW, 2, true, 8);
        successor.public_key = NEW_KEY;
        assert_eq!(p.handle_up(successor, now), Arrived::New);
        let _ = drained(&mut p);
        assert_eq!(p.rekey_in_place(1, OLD, NEW, NEW_KEY), InPlace::Superseded);
        let (events, sent) = drained(&mut p);
        assert_eq!(events, [PeerEvent::Down { peer: OLD }]);
        assert!(matches!(&sent[..], [(1, ConnectionCommand::Close(_))]));
        assert!(!p.contains(OLD));
        assert_eq!(p.get(NEW).unwrap().connection, 2);
    }

    #[test]
    fn my_new_id_decides_who_starts_timer_rekeys() {
        let now = Instant::now();
        let due = now + REKEY;
        // Router 1 leads peer 5: it starts the rekey when due.
        let mut p = with_old(now);
        assert_eq!(p.me(), PeerId(1));
        p.handle_timeout(due);
        assert!(matches!(
            &drained(&mut p).1[..],
            [(1, ConnectionCommand::Rekey)]
        ));
        // Switched to ID 9, it follows: nothing until its keys are overdue.
        let mut p = with_old(now);
        p.set_me(PeerId(9));
        assert_eq!(p.me(), PeerId(9));
        p.handle_timeout(due);
        assert!(quiet(&mut p));
    }
}
