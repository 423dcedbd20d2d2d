//! The rekey policy of the peer registry (DESIGN.md "Keys and sessions" →
//! "Rekey"): installing a rekey's keys and confirming them to the peer,
//! promoting a `next` keyset on confirmation, expiring keysets, and who
//! starts a timer rekey when (the leader; the follower only asks once its
//! keys are overdue, with retries spaced). An `impl Peers` block of the
//! registry core (`peers.rs`), whose drain order it follows.

use super::{Peer, Peers, PeersTimer};
use crate::control::connection::{ConnectionCommand, ConnectionId, NewKeys};
use crate::control::proto::ControlMessage;
use crate::crypto::session::{Keyset, REJECT_AFTER, REKEY_ATTEMPT_TIMEOUT};
use crate::id::PeerId;
use std::time::{Duration, Instant};

/// A side that does not lead asks for a rekey only once its keys are this
/// many quarters of `rekey_after` old (the leader missed it), so the two
/// never race into back-to-back rekeys; 1.25 × 120 s = 150 s leaves room for
/// retries before [`REJECT_AFTER`] (at 1.5 × the request came exactly when
/// the keys died, so it never helped).
const FOLLOWER_ASKS_AT_QUARTERS: u32 = 5;
/// Requests the follower can still send, [`REKEY_RETRY`] apart, before its
/// keys reach [`REJECT_AFTER`] whatever `rekey_after` is configured.
const FOLLOWER_RETRIES_BEFORE_REJECT: u32 = 2;
/// Spacing between rekey attempts (a handshake's own time limit).
pub(super) const REKEY_RETRY: Duration = REKEY_ATTEMPT_TIMEOUT;

impl Peers {
    /// A rekey handshake on `connection` finished: install its keys as
    /// `next` and tell the peer (after the driver publishes them).
    pub fn handle_rekeyed(&mut self, connection: ConnectionId, keys: NewKeys, now: Instant) {
        let Some(peer) = self.by_connection_mut(connection) else {
            return;
        };
        let remote_index = keys.remote_index;
        tracing::debug!(peer = %peer.hello.name, local = keys.local_index, remote = keys.remote_index, initiator = keys.initiator, "rekeyed");
        peer.keys.install(keyset_of(keys, now), now);
        peer.rekey_started = None;
        self.changed = true;
        self.confirm_to_peer(connection, remote_index);
    }

    pub(super) fn confirm_to_peer(&mut self, connection: ConnectionId, remote_index: u32) {
        self.transmits.push_back((
            connection,
            ConnectionCommand::Send(ControlMessage::KeyConfirm {
                session_index: remote_index,
            }),
        ));
    }

    /// `connection` ended. If it carried a peer, the record goes and its
    /// A UDP packet authenticated under our keyset `local_index`; with
    /// `peer` known, only its schedule is asked. Promotes a `next` keyset.
    pub fn confirm(&mut self, peer: Option<PeerId>, local_index: u32, now: Instant) {
        for p in self.peers.values_mut() {
            if peer.is_none_or(|id| id == p.id) && p.keys.confirm(local_index, now) {
                self.changed = true;
            }
        }
    }

    /// Expires keysets and applies the rekey policy: the leading side starts
    /// a timer rekey when due; the other asks with `RekeyRequest` only when
    /// its keys are overdue; attempts are [`REKEY_RETRY`] apart.
    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in self.peers.values_mut() {
            let before = peer.keys.receive_keysets().count();
            peer.keys.handle_timeout(now);
            if peer.keys.receive_keysets().count() != before {
                self.changed = true;
            }
            let leads = self.me.leads(peer.id);
            let overdue = peer.keys.current().is_some_and(|k| {
                now.saturating_duration_since(k.created) >= follower_asks_after(self.rekey_after)
            });
            let retry_ok = peer
                .rekey_started
                .is_none_or(|t| now.saturating_duration_since(t) >= REKEY_RETRY);
            if peer.keys.rekey_due(now) && retry_ok && (leads || overdue) {
                peer.rekey_started = Some(now);
                peer.keys.rekey_started(now);
                let command = if leads {
                    ConnectionCommand::Rekey
                } else {
                    ConnectionCommand::Send(ControlMessage::RekeyRequest)
                };
                self.transmits.push_back((peer.connection, command));
            }
        }
    }

    /// The earliest key expiry or moment the rekey policy may act.
    pub fn poll_timeout(&self) -> Option<(Instant, PeersTimer)> {
        self.peers
            .values()
            .flat_map(|p| {
                let expiry = p
                    .keys
                    .poll_expiry()
                    .map(|(t, _)| (t, PeersTimer::KeyExpiry));
                let rekey = self.rekey_at(p).map(|t| (t, PeersTimer::Rekey));
                [expiry, rekey]
            })
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    /// When the rekey policy may next act for `peer`: never earlier than it
    /// would, so a past deadline always makes `handle_timeout` act.
    fn rekey_at(&self, peer: &Peer) -> Option<Instant> {
        let leads = self.me.leads(peer.id);
        let mut at = match (peer.keys.rekey_deadline(), peer.keys.current()) {
            (Some(due), Some(current)) if !leads => {
                due.max(current.created + follower_asks_after(self.rekey_after))
            }
            (Some(due), _) => due,
            // No keys at all: only the leader acts, and `handle_timeout`
            // has already started it, so the retry spacing is the deadline.
            (None, None) if leads && peer.keys.next().is_none() => {
                peer.rekey_started? + REKEY_RETRY
            }
            (None, _) => return None,
        };
        if let Some(started) = peer.rekey_started {
            at = at.max(started + REKEY_RETRY);
        }
        Some(at)
    }
}

/// When the side that does not lead asks for an overdue rekey: always
/// before the keys are rejected, with room for retries.
fn follower_asks_after(rekey_after: Duration) -> Duration {
    let latest = REJECT_AFTER.saturating_sub(REKEY_RETRY * FOLLOWER_RETRIES_BEFORE_REJECT);
    (rekey_after * FOLLOWER_ASKS_AT_QUARTERS / 4).min(latest)
}

/// A keyset from a connection's new keys, created `now`.
pub fn keyset_of(keys: NewKeys, now: Instant) -> Keyset {
    Keyset {
        local_index: keys.local_index,
        remote_index: keys.remote_index,
        send: keys.send,
        recv: keys.recv,
        created: now,
    }
}
