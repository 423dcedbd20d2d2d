//! `Backlog`: how much decoded control input waits in the queue from the
//! connection tasks to the control task, and the bound that makes a
//! connection stop reading (DESIGN.md wire rules: no decoder may allocate
//! unbounded memory).
//!
//! A connection task decrypts and decodes records faster than the control
//! task handles them (each input drains every core), and the queue between
//! them is unbounded: a peer that holds the secret and floods cheap records
//! (issue 16: relay requests, address claims, punch offers) made it grow by
//! megabytes. Every connection task adds a message's [`weight`] before
//! queueing it and the control task takes it off when it handles it; while
//! the total is over [`LIMIT`] the connection tasks leave their sockets
//! unread (TCP pushes back on the senders) and look again after [`PAUSE`].
//! A shared bound rather than one per connection: the queue is shared and
//! first in, first out, so an honest peer waits behind a flood either way;
//! the bound only caps the memory.

use super::proto::ControlMessage;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Most weight queued for the control task before connections pause.
pub const LIMIT: usize = 1024 * 1024;
/// How long a paused connection waits before it looks again.
pub const PAUSE: Duration = Duration::from_millis(2);
/// What a queued message costs beyond its byte payloads (the event, the
/// queue's node, vector headers).
const OVERHEAD: usize = 256;

/// See the module docs. Shared by the connection tasks and the control task.
#[derive(Debug, Default)]
pub struct Backlog {
    queued: AtomicUsize,
}

impl Backlog {
    /// `message` is queued for the control task.
    pub fn add(&self, message: &ControlMessage) {
        self.queued.fetch_add(weight(message), Ordering::Relaxed);
    }

    /// The control task took `message` off the queue.
    pub fn done(&self, message: &ControlMessage) {
        let w = weight(message);
        // Saturating: a message queued before a count existed never
        // underflows it.
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(w))
            });
    }

    /// Whether connections should stop reading for now.
    pub fn full(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= LIMIT
    }
}

/// What a decoded message costs while queued, roughly its heap size.
pub fn weight(message: &ControlMessage) -> usize {
    OVERHEAD
        + match message {
            ControlMessage::Gossip { payload: b, .. }
            | ControlMessage::Rekey { message: b, .. }
            | ControlMessage::Fragment { bytes: b, .. }
            | ControlMessage::RelayTo { bytes: b, .. }
            | ControlMessage::RelayFrom { bytes: b, .. } => b.len(),
            ControlMessage::Close { reason } => reason.len(),
            ControlMessage::PunchOffer { candidates } => {
                candidates.len() * std::mem::size_of::<std::net::SocketAddr>()
            }
            ControlMessage::Observed { .. }
            | ControlMessage::KeyConfirm { .. }
            | ControlMessage::TcpKeySwitch
            | ControlMessage::RekeyRequest => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::PeerId;

    #[test]
    fn a_flood_of_small_messages_fills_the_backlog_and_handling_them_empties_it() {
        let backlog = Backlog::default();
        let offer = ControlMessage::PunchOffer {
            candidates: vec![std::net::SocketAddr::from(([192, 0, 2, 1], 6783)); 8],
        };
        let mut queued = 0;
        while !backlog.full() {
            backlog.add(&offer);
            queued += 1;
        }
        assert!(
            (1_000..=LIMIT / OVERHEAD).contains(&queued),
            "{queued} offers fill it"
        );
        for _ in 0..queued {
            backlog.done(&offer);
        }
        assert!(!backlog.full());
        assert_eq!(backlog.queued.load(Ordering::Relaxed), 0);
        backlog.done(&offer);
        assert_eq!(
            backlog.queued.load(Ordering::Relaxed),
            0,
            "never below zero"
        );
    }

    #[test]
    fn a_message_weighs_its_payload() {
        let relay = ControlMessage::RelayTo {
            peer: PeerId(1),
            bytes: vec![0; 60 * 1024],
        };
        assert_eq!(weight(&relay), OVERHEAD + 60 * 1024);
        assert_eq!(weight(&ControlMessage::RekeyRequest), OVERHEAD);
        // Seventeen relayed 60 KiB records fill it: a big ring (1 MiB,
        // reassembled) passes alone and pauses the others until handled.
        let backlog = Backlog::default();
        for _ in 0..16 {
            backlog.add(&relay);
        }
        assert!(!backlog.full());
        backlog.add(&relay);
        assert!(backlog.full());
    }
}
