//! The bucket exchange (ring version 4, issue 14: anti-entropy sends only
//! what differs). Between two routers that both speak it:
//!
//! 1. A's periodic [`Message::DeltaDigest`] (its [`RingSummary`], as the
//!    version-2 digest);
//! 2. B, whose summary differs, answers with its [`BucketDigest`]: the
//!    ring's items spread over buckets by key, a 4-byte hash each;
//! 3. A answers with the buckets that differ, whole ([`RingDelta`]);
//! 4. B rebuilds A's ring from its own with those buckets replaced; if the
//!    result does not hash as A's buckets did (B's ring changed meanwhile),
//!    B sends its bucket hashes again; else it merges it exactly as a full ring (`merge.rs`: signatures, ownership rules,
//!    join), and sends back, the same way, the buckets in which its merged
//!    ring differs from A's bucket hashes (the delta carries them all), so
//!    A gets what it lacks; A does the same with that answer, until a side
//!    has nothing A or B lacks.
//!
//! A ring that knows nothing (no ring yet, or the zero summary) and a ring
//! of another genesis still get the whole ring, and so does an exchange
//! where more than half the buckets differ (the whole ring costs no more)
//! or none does although the summaries differ (a hash collision).
//! Which messages a peer gets follows from what it sent: only a router
//! speaking version 4 sends a `DeltaDigest`, and the periodic one goes only
//! to neighbours whose handshake offers version 4
//! ([`Destination::Neighbours`]).

use super::{Allocator, Destination};
use crate::id::PeerId;
use crate::ipam::delta::RingDelta;
use crate::ipam::digest::{BucketDigest, RingSummary, bucket_count, differing, hashes_of};
use crate::ipam::error::IpamError;
use crate::ipam::message::{Message, MessageError, RING_DELTA_VERSION};
use crate::ipam::store::Store;
use crate::wire::DecodeError;
use std::time::Instant;

/// How a router that merged a peer's ring sends it what it lacks.
#[derive(Clone, Debug)]
pub(super) enum SendBack {
    /// The whole ring (the ring came whole).
    Ring,
    /// The buckets that differ from these hashes of the sender's (the ring
    /// was rebuilt from a delta).
    Buckets(Vec<[u8; 4]>),
}

impl<S: Store> Allocator<S> {
    /// True when this allocator speaks the bucket exchange.
    pub(super) fn speaks_deltas(&self) -> bool {
        self.cfg.ring_version >= RING_DELTA_VERSION
    }

    /// Refuses a version-4 message as a build without the exchange would.
    fn unknown_type(kind: u8) -> IpamError {
        MessageError::from(DecodeError::UnknownType(kind)).into()
    }

    /// Step 2: a peer's summary; our bucket hashes if our ring differs.
    pub(super) fn on_delta_digest(
        &mut self,
        from: PeerId,
        theirs: RingSummary,
        now: Instant,
    ) -> Result<(), IpamError> {
        if !self.speaks_deltas() {
            return Err(Self::unknown_type(5));
        }
        if self.ring.is_none() {
            // Two routers without a ring have nothing to ask each other.
            if theirs != RingSummary::nothing(theirs.genesis) {
                self.ask_for_the_ring(from, theirs.genesis);
            }
            return Ok(());
        }
        let Some(ours) = self.differs_from(theirs, now) else {
            return Ok(());
        };
        if ours.genesis != theirs.genesis || theirs == RingSummary::nothing(theirs.genesis) {
            self.send_ring(Destination::Peer(from), now);
            return Ok(());
        }
        let Some(ring) = &self.ring else {
            return Ok(());
        };
        let buckets = Message::Buckets(BucketDigest::of(ring, bucket_count(ring))).encode();
        self.transmits.push_back((Destination::Peer(from), buckets));
        Ok(())
    }

    /// Step 3: a peer's bucket hashes; the buckets of ours that differ.
    pub(super) fn on_buckets(
        &mut self,
        from: PeerId,
        theirs: BucketDigest,
        now: Instant,
    ) -> Result<(), IpamError> {
        if !self.speaks_deltas() {
            return Err(Self::unknown_type(6));
        }
        if self.ring.is_none() {
            self.ask_for_the_ring(from, theirs.summary.genesis);
            return Ok(());
        }
        if self.differs_from(theirs.summary, now).is_none() {
            return Ok(());
        }
        self.sign_own();
        let Some(ring) = &self.ring else {
            return Ok(());
        };
        if ring.genesis_id() != theirs.summary.genesis {
            self.send_ring(Destination::Peer(from), now);
            return Ok(());
        }
        let differing = theirs.differing(ring);
        self.send_buckets(from, theirs.hashes.len(), &differing, now);
        Ok(())
    }

    /// Step 4: a peer's differing buckets: its ring rebuilt from ours,
    /// merged as a full ring, and what it lacks sent back as buckets.
    pub(super) fn on_delta(
        &mut self,
        from: PeerId,
        delta: RingDelta,
        now: Instant,
    ) -> Result<(), IpamError> {
        if !self.speaks_deltas() {
            return Err(Self::unknown_type(7));
        }
        let Some(mine) = &self.ring else {
            self.ask_for_the_ring(from, delta.genesis);
            return Ok(());
        };
        if mine.genesis_id() != delta.genesis {
            // Another ring: its owner decides on the whole of it.
            self.ask_for_the_ring(from, delta.genesis);
            return Ok(());
        }
        // A delta with titles (ring version 6) rebuilds a titled ring,
        // judged as a full one; one without comes from a sender that sends
        // none and is judged as before titles (its jumps counted).
        let theirs = delta.patch(mine).map_err(MessageError::from)?;
        if hashes_of(&theirs, delta.buckets()) != delta.hashes {
            // Our ring changed in a bucket the sender did not send since it
            // saw our hashes (a merge with another peer, a restart): the
            // rebuilt ring is not the sender's, and its items may lean on
            // ones we do not hold. Show it our hashes again.
            let again = BucketDigest::of(mine, delta.buckets());
            let bytes = Message::Buckets(again).encode();
            self.transmits.push_back((Destination::Peer(from), bytes));
            return Ok(());
        }
        self.on_ring(from, theirs, SendBack::Buckets(delta.hashes), now)
    }

    /// Sends `to` the buckets in which our ring differs from its bucket
    /// `hashes`: what it lacks, after a merge.
    pub(super) fn send_differing(&mut self, to: PeerId, hashes: &[[u8; 4]], now: Instant) {
        self.refresh_record(now);
        self.sign_own();
        let Some(ring) = &self.ring else {
            return;
        };
        let differing = differing(ring, hashes);
        if !differing.is_empty() {
            self.send_buckets(to, hashes.len(), &differing, now);
        }
    }

    /// Sends `to` our buckets `differing` of `buckets`, or the whole ring
    /// when that is no dearer or none differs (a collision).
    fn send_buckets(&mut self, to: PeerId, buckets: usize, differing: &[u32], now: Instant) {
        let Some(ring) = &self.ring else {
            return;
        };
        if differing.is_empty() || differing.len() * 2 > buckets {
            self.send_ring(Destination::Peer(to), now);
            return;
        }
        let delta = RingDelta::cut(ring, buckets, differing);
        let delta = match self.speaks_titles() {
            true => delta,
            false => delta.without_titles(),
        };
        let delta = Message::Delta(delta).encode();
        self.transmits.push_back((Destination::Peer(to), delta));
    }

    /// Says we know nothing of `genesis`: the peer answers with its ring.
    fn ask_for_the_ring(&mut self, to: PeerId, genesis: crate::ipam::ring::GenesisId) {
        let nothing = Message::DeltaDigest(RingSummary::nothing(genesis)).encode();
        self.transmits.push_back((Destination::Peer(to), nothing));
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

    fn node(me: u64, ring_version: u8, now: Instant) -> Node {
        let range = AddrRange::parse("10.32.0.0/16").unwrap();
        let init = Init::Seed((1..=8).map(PeerId).collect());
        let mut cfg = Config::new(PeerId(me), range, init, TestCrypto::boxed(PeerId(me)));
        cfg.ring_version = ring_version;
        let mut n = Node::new(cfg, MemStore::default(), &[], now).unwrap();
        n.learn_test_keys(8);
        n
    }

    fn outbox(n: &mut Node) -> Vec<(Destination, Message)> {
        std::iter::from_fn(|| n.poll_transmit())
            .map(|(to, bytes)| (to, Message::decode(&bytes).unwrap()))
            .collect()
    }

    fn kind(m: &Message) -> &'static str {
        match m {
            Message::Ring(_) => "ring",
            Message::Digest(_) => "digest",
            Message::DeltaDigest(_) => "delta-digest",
            Message::Buckets(_) => "buckets",
            Message::Delta(_) => "delta",
            Message::Propose(_)
            | Message::DonateRequest(_)
            | Message::WantKeys(_)
            | Message::Keys(_) => "other",
        }
    }

    /// Delivers `first` from `a` to `b`, then every reply back and forth
    /// until quiet; returns the kinds delivered, in order.
    fn converse(a: &mut Node, b: &mut Node, first: Message, now: Instant) -> Vec<&'static str> {
        let mut kinds = vec![kind(&first)];
        let mut queue = vec![(a.id(), first)];
        for _ in 0..20 {
            let Some((from, m)) = queue.pop() else {
                return kinds;
            };
            let to = if from == a.id() { &mut *b } else { &mut *a };
            to.handle_message(from, &m.encode(), now).unwrap();
            let id = to.id();
            for (dest, reply) in outbox(to) {
                if matches!(dest, Destination::Peer(_)) {
                    kinds.push(kind(&reply));
                    queue.insert(0, (id, reply));
                }
            }
        }
        panic!("no quiet: {kinds:?}");
    }

    /// Two version-4 routers of an eight-router ring, converged.
    fn pair() -> (Node, Node, Instant) {
        pair_at(RING_DELTA_VERSION)
    }

    /// Two routers of ring `version` of an eight-router ring, converged.
    fn pair_at(version: u8) -> (Node, Node, Instant) {
        let now = Instant::now();
        let (mut a, mut b) = (node(1, version, now), node(2, version, now));
        a.handle_peer_up(PeerId(2), now);
        let first = outbox(&mut a).remove(0).1;
        converse(&mut a, &mut b, first, now);
        b.handle_peer_up(PeerId(1), now);
        let first = outbox(&mut b).remove(0).1;
        converse(&mut b, &mut a, first, now);
        assert_eq!(summary(&a), summary(&b));
        (a, b, now)
    }

    fn summary(n: &Node) -> RingSummary {
        RingSummary::of(n.ring().unwrap())
    }

    /// `n`'s periodic digest for version-4 neighbours.
    fn delta_digest(n: &mut Node, now: Instant) -> Message {
        n.handle_timeout(now + Duration::from_secs(5)).unwrap();
        let out = outbox(n);
        let (dest, m) = out
            .into_iter()
            .find(|(_, m)| matches!(m, Message::DeltaDigest(_)))
            .expect("a delta digest");
        assert_eq!(
            dest,
            Destination::Neighbours {
                min: RING_DELTA_VERSION,
                max: u8::MAX
            }
        );
        m
    }

    #[test]
    fn a_changed_record_travels_as_its_bucket_not_as_the_ring() {
        let (mut a, mut b, now) = pair();
        a.allocate("pod", "eth0", now).unwrap();
        outbox(&mut a);
        let digest = delta_digest(&mut a, now);
        let kinds = converse(&mut a, &mut b, digest, now);
        assert_eq!(kinds, ["delta-digest", "buckets", "delta"]);
        assert_eq!(summary(&a), summary(&b));
        assert_eq!(b.ring().unwrap().peer_records()[&PeerId(1)].pods, 1);
    }

    #[test]
    fn concurrent_changes_converge_both_ways_with_deltas_only() {
        let (mut a, mut b, now) = pair();
        a.allocate("pa", "eth0", now).unwrap();
        b.allocate("pb", "eth0", now).unwrap();
        outbox(&mut a);
        outbox(&mut b);
        let digest = delta_digest(&mut a, now);
        let kinds = converse(&mut a, &mut b, digest, now);
        assert_eq!(kinds, ["delta-digest", "buckets", "delta", "delta"]);
        assert_eq!(summary(&a), summary(&b));
    }

    #[test]
    fn a_delta_that_no_longer_fits_the_receivers_ring_brings_fresh_hashes() {
        let (mut a, mut b, now) = pair();
        a.allocate("pa", "eth0", now).unwrap();
        outbox(&mut a);
        let digest = delta_digest(&mut a, now);
        b.handle_message(PeerId(1), &digest.encode(), now).unwrap();
        let buckets = outbox(&mut b).remove(0).1;
        a.handle_message(PeerId(2), &buckets.encode(), now).unwrap();
        let delta = outbox(&mut a).remove(0).1;
        assert_eq!(kind(&delta), "delta");
        // b changes before the delta arrives: it does not merge a guess.
        b.allocate("pb", "eth0", now).unwrap();
        b.handle_timeout(now + Duration::from_secs(5)).unwrap();
        outbox(&mut b);
        let before = b.ring().unwrap().clone();
        assert_ne!(before.peer_records()[&PeerId(2)].pods, 0);
        b.handle_message(PeerId(1), &delta.encode(), now).unwrap();
        assert_eq!(b.ring().unwrap(), &before);
        let again = outbox(&mut b).remove(0).1;
        assert_eq!(kind(&again), "buckets");
        let kinds = converse(&mut b, &mut a, again, now);
        assert!(!kinds.contains(&"ring"), "{kinds:?}");
        assert_eq!(summary(&a), summary(&b));
    }

    #[test]
    fn a_router_without_a_ring_asks_for_it_and_gets_it_whole() {
        let (mut a, _, now) = pair();
        let range = AddrRange::parse("10.32.0.0/16").unwrap();
        let cfg = Config::new(
            PeerId(3),
            range,
            Init::Observer,
            TestCrypto::boxed(PeerId(3)),
        );
        let mut c = Node::new(cfg, MemStore::default(), &[], now).unwrap();
        c.learn_test_keys(8);
        let digest = delta_digest(&mut a, now);
        let kinds = converse(&mut a, &mut c, digest, now);
        assert_eq!(kinds, ["delta-digest", "delta-digest", "ring"]);
        assert_eq!(c.ring().unwrap().entries(), a.ring().unwrap().entries());
    }

    #[test]
    fn a_version_3_peer_gets_the_digest_it_reads_and_is_answered_with_the_ring() {
        let (mut a, _, now) = pair();
        a.handle_timeout(now + Duration::from_secs(5)).unwrap();
        let out = outbox(&mut a);
        let old = out
            .iter()
            .find(|(_, m)| matches!(m, Message::Digest(_)))
            .expect("a digest for versions 2 and 3");
        assert_eq!(old.0, Destination::Neighbours { min: 2, max: 3 });
        // A version-3 router answers a version-4 router's digest with its ring.
        let mut v3 = node(2, 3, now);
        a.allocate("pa", "eth0", now).unwrap();
        outbox(&mut a);
        outbox(&mut v3);
        let digest = a
            .ring()
            .map(|r| Message::Digest(RingSummary::of(r)))
            .unwrap();
        v3.handle_message(PeerId(1), &digest.encode(), now).unwrap();
        assert!(outbox(&mut v3).iter().all(|(_, m)| kind(m) != "buckets"));
        // And refuses the version-4 types as a build without them did.
        for m in [
            Message::DeltaDigest(summary(&a)),
            Message::Buckets(BucketDigest::of(a.ring().unwrap(), 8)),
        ] {
            assert!(v3.handle_message(PeerId(1), &m.encode(), now).is_err());
        }
    }

    #[test]
    fn a_gift_learned_through_buckets_keeps_its_title() {
        let (mut a, mut b, now) = pair_at(crate::ipam::message::RING_TITLES_VERSION);
        // Router 3 asks a for a donation; b learns it through buckets only.
        let genesis = a.ring().unwrap().genesis_id();
        let ask = Message::DonateRequest(crate::ipam::message::DonateRequest { genesis });
        a.handle_message(PeerId(3), &ask.encode(), now).unwrap();
        outbox(&mut a);
        let (token, _) = a
            .ring()
            .unwrap()
            .entries()
            .iter()
            .find(|(_, e)| e.owner == PeerId(3) && e.writer == PeerId(1))
            .map(|(t, e)| (*t, *e))
            .expect("a gift to 3");
        let title = a.ring().unwrap().title(token).expect("titled").to_vec();
        let digest = delta_digest(&mut a, now);
        let kinds = converse(&mut a, &mut b, digest, now);
        assert_eq!(kinds, ["delta-digest", "buckets", "delta"]);
        assert_eq!(summary(&a), summary(&b));
        assert_eq!(b.ring().unwrap().title(token), Some(&title[..]));
    }

    /// The kinds of messages that carry the end of `c`'s quarantine to `a`
    /// when both speak `version` (the one-time burst of tests/idle.rs): `c`
    /// restarted without state with an address in use, learned the ring,
    /// and its ranges were quarantined; when that ends its free count grows.
    fn quarantine_end(version: u8) -> (Vec<&'static str>, u128) {
        let now = Instant::now();
        let mut a = node(1, version, now);
        let range = AddrRange::parse("10.32.0.0/16").unwrap();
        let init = Init::Seed((1..=8).map(PeerId).collect());
        let mut cfg = Config::new(PeerId(3), range, init, TestCrypto::boxed(PeerId(3)));
        cfg.ring_version = version;
        let in_use = [crate::ipam::InUse {
            addr: range.addr(16384 + 5).unwrap(),
            key: None,
        }];
        let mut c = Node::new(cfg, MemStore::default(), &in_use, now).unwrap();
        c.learn_test_keys(8);
        assert!(c.ring().is_none());
        a.handle_peer_up(PeerId(3), now);
        let ring = outbox(&mut a).remove(0).1;
        converse(&mut a, &mut c, ring, now);
        c.handle_peer_up(PeerId(1), now);
        let ring = outbox(&mut c).remove(0).1;
        converse(&mut c, &mut a, ring, now);
        assert_eq!(a.ring().unwrap().peer_records()[&PeerId(3)].free, 0);
        // Past the quarantine (twice the 30 s convergence bound).
        let later = now + Duration::from_secs(61);
        c.handle_timeout(later).unwrap();
        let digest = outbox(&mut c)
            .into_iter()
            .map(|(_, m)| m)
            .find(|m| kind(m).ends_with("digest"))
            .expect("a digest");
        let kinds = converse(&mut c, &mut a, digest, later);
        assert_eq!(summary(&a), summary(&c));
        (kinds, a.ring().unwrap().peer_records()[&PeerId(3)].free)
    }

    #[test]
    fn the_end_of_a_quarantine_reaches_a_neighbour_as_one_bucket_not_the_ring() {
        let (before, free) = quarantine_end(3);
        assert_eq!(before, ["digest", "digest", "ring"], "versions 2 and 3");
        assert!(free > 8000, "{free}");
        let (after, free) = quarantine_end(RING_DELTA_VERSION);
        assert_eq!(after, ["delta-digest", "buckets", "delta"]);
        assert!(free > 8000, "{free}");
    }
}
