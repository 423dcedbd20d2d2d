//! Anti-entropy by digest (DESIGN.md "Wire rules": digests first, full
//! state only on mismatch, full state to a new neighbour). Every interval a
//! router sends its [`RingSummary`] to the neighbours that speak ring
//! version 2 or later (as a `DeltaDigest` to those of version 4) and, for a
//! mixed-version cluster, its full ring to the others.
//!
//! A receiver compares summaries: equal, nothing is sent; a different
//! genesis, or a weight at least the sender's (it may have something the
//! sender lacks), its full ring goes back; a lighter one sends its own
//! digest, so that the heavier sender sends its ring. A router sent a ring
//! that lacks something it has sends its ring back (`merge.rs`), so each
//! exchange converges both ways. That is the exchange with peers of ring
//! versions 2 and 3; between version-4 routers the digest is answered with
//! bucket hashes and only the differing buckets travel (`delta.rs`).
//!
//! Back-off (issue 14, "idle links cost almost nothing"): a round whose
//! summary equals the one last sent sends nothing unless its wait is up;
//! the wait doubles from `gossip_interval` after every quiet send up to
//! `gossip_max`. A changed ring (a merge, a donation, a new free count in
//! our record) is sent at the next round and the wait starts over, and so
//! does a neighbour's differing digest: the routers that hold a change keep
//! exchanging at the base rate until their neighbours have it, so
//! convergence after a change is as fast as before, and changes of
//! ownership are pushed at once anyway (`send_ring`). The wait only grows
//! where there is nothing to say.

use super::{Allocator, Destination};
use crate::id::PeerId;
use crate::ipam::digest::RingSummary;
use crate::ipam::error::IpamError;
use crate::ipam::message::{
    Message, MessageError, RING_DELTA_VERSION, RING_DIGEST_VERSION, RING_WIRE_VERSION,
};
use crate::ipam::store::Store;
use crate::wire::DecodeError;
use std::time::{Duration, Instant};

/// When the next digest is due, and the wait after it (module docs).
#[derive(Clone, Copy, Debug)]
pub(super) struct Backoff {
    wait: Duration,
    next: Instant,
    last_sent: Option<RingSummary>,
}

impl Backoff {
    pub(super) fn new(base: Duration, now: Instant) -> Self {
        Self {
            wait: base,
            next: now,
            last_sent: None,
        }
    }

    /// Whether a round holding `summary` sends; if so, the send is noted
    /// and the next wait set.
    fn send_now(
        &mut self,
        summary: RingSummary,
        base: Duration,
        max: Duration,
        now: Instant,
    ) -> bool {
        if self.last_sent != Some(summary) {
            self.wait = base;
        } else if now < self.next {
            return false;
        }
        self.last_sent = Some(summary);
        self.next = now + self.wait;
        self.wait = (self.wait * 2).min(max.max(base));
        true
    }

    /// A neighbour's ring differs: the next round sends, at the base rate.
    fn hurry(&mut self, base: Duration, now: Instant) {
        self.wait = base;
        self.next = self.next.min(now);
    }
}

impl<S: Store> Allocator<S> {
    /// True when this allocator speaks digests (not a pre-digest build).
    pub(super) fn speaks_digests(&self) -> bool {
        self.cfg.ring_version >= RING_DIGEST_VERSION
    }

    /// The periodic send: a digest to the neighbours that read it, the full
    /// ring to the others (or to everyone, behaving as a pre-digest build).
    pub(super) fn send_anti_entropy(&mut self, now: Instant) {
        if !self.speaks_digests() {
            self.send_ring(Destination::Broadcast, now);
            return;
        }
        self.refresh_record(now);
        if let Some(ring) = &self.ring {
            let summary = RingSummary::of(ring);
            let (base, max) = (self.cfg.gossip_interval, self.cfg.gossip_max);
            if !self.backoff.send_now(summary, base, max, now) {
                return;
            }
            // Peers speaking the bucket exchange get its digest (`delta.rs`),
            // those of versions 2 and 3 the digest they answer with a ring.
            let (delta, digest) = match self.speaks_deltas() {
                true => (Some(RING_DELTA_VERSION), RING_DELTA_VERSION - 1),
                false => (None, u8::MAX),
            };
            if let Some(min) = delta {
                let bytes = Message::DeltaDigest(summary).encode();
                let to = Destination::Neighbours { min, max: u8::MAX };
                self.transmits.push_back((to, bytes));
            }
            let bytes = Message::Digest(summary).encode();
            let to = Destination::Neighbours {
                min: RING_DIGEST_VERSION,
                max: digest,
            };
            self.transmits.push_back((to, bytes));
        }
        self.send_ring(
            Destination::Neighbours {
                min: RING_WIRE_VERSION,
                max: RING_DIGEST_VERSION - 1,
            },
            now,
        );
    }

    /// Our summary if it differs from a peer's `theirs` (our record
    /// refreshed first); the next digest round is then brought forward.
    pub(super) fn differs_from(
        &mut self,
        theirs: RingSummary,
        now: Instant,
    ) -> Option<RingSummary> {
        self.refresh_record(now);
        let ours = RingSummary::of(self.ring.as_ref()?);
        if ours == theirs {
            return None;
        }
        self.backoff.hurry(self.cfg.gossip_interval, now);
        Some(ours)
    }

    /// A peer's digest: answer only if our ring differs (see the module docs).
    /// A pre-digest allocator refuses it as an unknown type, as that build
    /// did; nothing changes either way.
    pub(super) fn on_digest(
        &mut self,
        from: PeerId,
        theirs: RingSummary,
        now: Instant,
    ) -> Result<(), IpamError> {
        if !self.speaks_digests() {
            return Err(MessageError::from(DecodeError::UnknownType(4)).into());
        }
        if self.ring.is_none() {
            let nothing = Message::Digest(RingSummary::nothing(theirs.genesis)).encode();
            self.transmits.push_back((Destination::Peer(from), nothing));
            return Ok(());
        }
        let Some(ours) = self.differs_from(theirs, now) else {
            return Ok(());
        };
        if ours.genesis != theirs.genesis || ours.weight >= theirs.weight {
            self.send_ring(Destination::Peer(from), now);
        } else {
            let digest = Message::Digest(ours).encode();
            self.transmits.push_back((Destination::Peer(from), digest));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::ipam::range::AddrRange;
    use crate::ipam::signed::TestCrypto;
    use crate::ipam::{Config, Init, MemStore};
    use std::time::Duration;

    type Node = Allocator<MemStore>;

    fn node(me: u64, init: Init, ring_version: u8, now: Instant) -> Node {
        let range = AddrRange::parse("10.32.0.0/16").unwrap();
        let mut cfg = Config::new(PeerId(me), range, init, TestCrypto::boxed(PeerId(me)));
        cfg.ring_version = ring_version;
        let mut n = Node::new(cfg, MemStore::default(), &[], now).unwrap();
        n.learn_test_keys(8);
        n
    }

    fn seeded(me: u64, now: Instant) -> Node {
        node(
            me,
            Init::Seed([PeerId(1), PeerId(2)].into()),
            RING_DIGEST_VERSION,
            now,
        )
    }

    fn outbox(n: &mut Node) -> Vec<(Destination, Message)> {
        std::iter::from_fn(|| n.poll_transmit())
            .map(|(to, bytes)| (to, Message::decode(&bytes).unwrap()))
            .collect()
    }

    /// Delivers everything between `a` (ID 1) and `b` (ID 2) until quiet;
    /// both speak digests. Returns how many messages went each way.
    fn pump(a: &mut Node, b: &mut Node, now: Instant) -> usize {
        let mut sent = 0;
        for _ in 0..50 {
            let (from_a, from_b) = (outbox(a), outbox(b));
            if from_a.is_empty() && from_b.is_empty() {
                return sent;
            }
            for (out, to) in [(from_a, &mut *b), (from_b, &mut *a)] {
                for (dest, m) in out {
                    if matches!(dest, Destination::Neighbours { max, .. } if max < RING_DIGEST_VERSION)
                    {
                        continue;
                    }
                    sent += 1;
                    let from = if to.id() == PeerId(1) { 2 } else { 1 };
                    to.handle_message(PeerId(from), &m.encode(), now).unwrap();
                }
            }
        }
        panic!("no quiet");
    }

    fn pair() -> (Node, Node, Instant) {
        let now = Instant::now();
        let (mut a, mut b) = (seeded(1, now), seeded(2, now));
        a.handle_peer_up(PeerId(2), now);
        b.handle_peer_up(PeerId(1), now);
        pump(&mut a, &mut b, now);
        (a, b, now)
    }

    fn summary(n: &Node) -> RingSummary {
        RingSummary::of(n.ring().unwrap())
    }

    fn digest_of(n: &mut Node, now: Instant) -> Message {
        n.handle_timeout(now + Duration::from_secs(5)).unwrap();
        let out = outbox(n);
        let digest = out.iter().find(|(d, _)| {
            *d == Destination::Neighbours {
                min: RING_DIGEST_VERSION,
                max: u8::MAX,
            }
        });
        digest.expect("a digest to digest speakers").1.clone()
    }

    /// The rounds, 5 s apart from `from`, in which `n` sent a digest.
    fn digest_rounds(n: &mut Node, from: Instant, rounds: u32) -> Vec<u32> {
        (1..=rounds)
            .filter(|k| {
                n.handle_timeout(from + Duration::from_secs(5) * *k)
                    .unwrap();
                outbox(n)
                    .iter()
                    .any(|(_, m)| matches!(m, Message::Digest(_)))
            })
            .collect()
    }

    #[test]
    fn an_unchanged_ring_sends_its_digest_ever_less_often_and_a_change_at_once() {
        let (mut a, _, now) = pair();
        let quiet = digest_rounds(&mut a, now, 30);
        // 5 s rounds: sent at 5, 10, 20, 40 s, then every 30 s.
        assert_eq!(quiet, [1, 2, 4, 8, 14, 20, 26], "{quiet:?}");
        // A pod allocated changes our record: the next round sends, and
        // the waits start over.
        let later = now + Duration::from_secs(5) * 30;
        a.allocate("pod-1", "eth0", later).unwrap();
        let busy = digest_rounds(&mut a, later, 4);
        assert_eq!(busy, [1, 2, 4], "{busy:?}");
    }

    #[test]
    fn a_neighbours_differing_digest_brings_the_next_round_forward() {
        let (mut a, mut b, now) = pair();
        digest_rounds(&mut a, now, 30);
        let later = now + Duration::from_secs(5) * 30;
        // b changes; its digest reaches a, which answers and then sends its
        // own digest at its next round rather than in up to 30 s.
        b.allocate("pod-1", "eth0", later).unwrap();
        let digest = digest_of(&mut b, later);
        a.handle_message(PeerId(2), &digest.encode(), later)
            .unwrap();
        outbox(&mut a);
        assert_eq!(digest_rounds(&mut a, later, 1), [1]);
    }

    #[test]
    fn equal_digests_send_nothing() {
        let (mut a, mut b, now) = pair();
        assert_eq!(summary(&a), summary(&b));
        let digest = digest_of(&mut a, now);
        b.handle_message(PeerId(1), &digest.encode(), now).unwrap();
        assert!(b.poll_transmit().is_none());
    }

    #[test]
    fn the_periodic_send_is_a_digest_to_new_peers_and_the_full_ring_to_old_ones() {
        let (mut a, _, now) = pair();
        a.handle_timeout(now + Duration::from_secs(5)).unwrap();
        let out = outbox(&mut a);
        assert!(matches!(
            out[0],
            (Destination::Neighbours { min: 2, .. }, Message::Digest(_))
        ));
        assert!(matches!(
            out[1],
            (Destination::Neighbours { max: 1, .. }, Message::Ring(_))
        ));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_lighter_receiver_answers_with_its_digest_and_the_sender_sends_its_ring() {
        let (mut a, mut b, now) = pair();
        a.allocate("pod", "eth0", now).unwrap();
        outbox(&mut a);
        let digest = digest_of(&mut a, now);
        b.handle_message(PeerId(1), &digest.encode(), now).unwrap();
        let reply = outbox(&mut b);
        assert!(matches!(
            reply[..],
            [(Destination::Peer(PeerId(1)), Message::Digest(_))]
        ));
        a.handle_message(PeerId(2), &reply[0].1.encode(), now)
            .unwrap();
        let ring = outbox(&mut a);
        assert!(matches!(
            ring[..],
            [(Destination::Peer(PeerId(2)), Message::Ring(_))]
        ));
        b.handle_message(PeerId(1), &ring[0].1.encode(), now)
            .unwrap();
        assert!(b.poll_transmit().is_none(), "b had nothing more");
        assert_eq!(summary(&a), summary(&b));
    }

    #[test]
    fn a_heavier_receiver_sends_its_ring() {
        let (mut a, mut b, now) = pair();
        b.allocate("pod", "eth0", now).unwrap();
        outbox(&mut b);
        let digest = digest_of(&mut a, now);
        b.handle_message(PeerId(1), &digest.encode(), now).unwrap();
        let reply = outbox(&mut b);
        assert!(matches!(
            reply[..],
            [(Destination::Peer(PeerId(1)), Message::Ring(_))]
        ));
        a.handle_message(PeerId(2), &reply[0].1.encode(), now)
            .unwrap();
        pump(&mut a, &mut b, now);
        assert_eq!(summary(&a), summary(&b));
    }

    #[test]
    fn concurrent_changes_converge_both_ways_from_one_digest() {
        let (mut a, mut b, now) = pair();
        a.allocate("pa", "eth0", now).unwrap();
        b.allocate("pb", "eth0", now).unwrap();
        outbox(&mut a);
        outbox(&mut b);
        let digest = digest_of(&mut a, now);
        b.handle_message(PeerId(1), &digest.encode(), now).unwrap();
        // b sends its ring, a merges it and sends its own back: at most three messages.
        assert!(pump(&mut a, &mut b, now) <= 3);
        assert_eq!(summary(&a), summary(&b));
        let records = a.ring().unwrap().peer_records();
        assert_eq!(records[&PeerId(1)].pods + records[&PeerId(2)].pods, 2);
    }

    #[test]
    fn a_malformed_digest_is_refused_and_changes_nothing() {
        let (_, mut b, now) = pair();
        let before = summary(&b);
        for bad in [
            &[2u8, 4][..],
            &[2, 4, 1],
            &[1, 4, 0, 0, 0],
            &[2, 4, 0xff, 0xff],
        ] {
            assert!(b.handle_message(PeerId(1), bad, now).is_err(), "{bad:?}");
        }
        assert!(b.poll_transmit().is_none());
        assert_eq!(summary(&b), before);
    }

    #[test]
    fn a_router_without_a_ring_answers_a_digest_and_gets_the_ring() {
        let (mut a, _, now) = pair();
        let mut c = node(3, Init::Observer, RING_DIGEST_VERSION, now);
        let digest = digest_of(&mut a, now);
        c.handle_message(PeerId(1), &digest.encode(), now).unwrap();
        let reply = outbox(&mut c);
        a.handle_message(PeerId(3), &reply[0].1.encode(), now)
            .unwrap();
        let ring = outbox(&mut a);
        assert!(matches!(
            ring[..],
            [(Destination::Peer(PeerId(3)), Message::Ring(_))]
        ));
        c.handle_message(PeerId(1), &ring[0].1.encode(), now)
            .unwrap();
        assert_eq!(c.ring().unwrap().entries(), a.ring().unwrap().entries());
    }

    #[test]
    fn a_pre_digest_allocator_refuses_digests_and_broadcasts_its_ring() {
        let (mut a, _, now) = pair();
        let mut old = node(1, Init::Seed([PeerId(1), PeerId(2)].into()), 1, now);
        outbox(&mut old);
        let digest = digest_of(&mut a, now);
        assert!(
            old.handle_message(PeerId(2), &digest.encode(), now)
                .is_err()
        );
        old.handle_timeout(now + Duration::from_secs(5)).unwrap();
        assert!(matches!(
            outbox(&mut old)[..],
            [(Destination::Broadcast, Message::Ring(_))]
        ));
    }
}
