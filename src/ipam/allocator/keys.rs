//! The writers' keys (ring version 5). A ring item is checked under its
//! writer's key, which the driver lends from the topology and the
//! handshakes. A router that left or died drops out of the topology a
//! minute later, but the items it wrote (donations, a leave's hand-over)
//! stay in the ring for good: a router started after that never learns
//! the key from the topology, and refused every ring that carried such an
//! item, so it never got addresses. Now it asks the sender of the ring for
//! the keys it lacks; the answer is believed only for keys that hash to
//! the writer's ID (`RingCrypto::binds`), so a peer can hand over a key but
//! never choose one, and the exchange starts over once the keys are in.
//!
//! Bounds: one request per peer per gossip interval, at most
//! [`MAX_KEYS`] IDs or keys per message, a key already known is never
//! replaced by a handed-over one.

use super::{Allocator, Destination};
use crate::id::PeerId;
use crate::ipam::digest::RingSummary;
use crate::ipam::error::IpamError;
use crate::ipam::message::{MAX_KEYS, Message, RING_KEYS_VERSION, WriterKey};
use crate::ipam::ring::{GenesisId, Ring, RingError};
use crate::ipam::signed::SignError;
use crate::ipam::store::Store;
use std::collections::BTreeSet;
use std::time::Instant;

/// A key request sent to a peer: not again before `until`; `genesis` is
/// the ring's that named the writers.
#[derive(Clone, Copy, Debug)]
pub(super) struct KeysAsked {
    until: Instant,
    genesis: GenesisId,
}

impl KeysAsked {
    /// Whether the request may be forgotten (it may go again).
    pub(super) fn expired(&self, now: Instant) -> bool {
        self.until <= now
    }
}

impl<S: Store> Allocator<S> {
    /// True when this allocator asks for and hands over keys.
    pub(super) fn speaks_keys(&self) -> bool {
        self.cfg.ring_version >= RING_KEYS_VERSION
    }

    /// Checks the signatures of what `theirs` would change in our ring (all
    /// of it if ours is of another genesis or missing). Writers whose keys
    /// we lack are asked of `from`, and the ring is refused until they
    /// come. Nothing changes but the verified-items cache.
    pub(super) fn check_signatures(
        &mut self,
        from: PeerId,
        theirs: &Ring,
        now: Instant,
    ) -> Result<(), IpamError> {
        let base = self
            .ring
            .as_ref()
            .filter(|r| r.genesis_id() == theirs.genesis_id());
        let crypto = &*self.cfg.crypto;
        let verifier = &mut self.verifier;
        let mut unknown = BTreeSet::new();
        theirs.check_signatures(base, &mut |writer, message, sig| match verifier
            .check(crypto, writer, message, sig)
        {
            Err(SignError::UnknownWriter(w)) => {
                unknown.insert(w);
                Ok(())
            }
            other => other.map_err(RingError::from),
        })?;
        let Some(&first) = unknown.first() else {
            return Ok(());
        };
        self.want_keys(from, theirs.genesis_id(), unknown, now);
        Err(RingError::from(SignError::UnknownWriter(first)).into())
    }

    /// Asks `from` for the keys of `writers`, at most once per gossip
    /// interval per peer.
    fn want_keys(
        &mut self,
        from: PeerId,
        genesis: GenesisId,
        writers: BTreeSet<PeerId>,
        now: Instant,
    ) {
        if !self.speaks_keys() || self.keys_asked.get(&from).is_some_and(|a| a.until > now) {
            return;
        }
        let until = now + self.cfg.gossip_interval;
        self.keys_asked.insert(from, KeysAsked { until, genesis });
        let ids: Vec<PeerId> = writers.into_iter().take(MAX_KEYS).collect();
        let to = Destination::PeerSpeaking {
            peer: from,
            min: RING_KEYS_VERSION,
        };
        self.transmits
            .push_back((to, Message::WantKeys(ids).encode()));
    }

    /// A peer asks for writers' keys: those we know go back.
    pub(super) fn on_want_keys(&mut self, from: PeerId, ids: &[PeerId]) {
        let keys: Vec<WriterKey> = ids
            .iter()
            .filter_map(|&id| {
                self.verifier
                    .key(id)
                    .map(|public_key| WriterKey { id, public_key })
            })
            .collect();
        if keys.is_empty() {
            return;
        }
        let to = Destination::PeerSpeaking {
            peer: from,
            min: RING_KEYS_VERSION,
        };
        self.transmits.push_back((to, Message::Keys(keys).encode()));
    }

    /// Keys handed over: those that hash to their writer are learned, and
    /// if any was, our digest goes back to the sender, whose ring then
    /// comes again (`anti_entropy.rs`).
    pub(super) fn on_keys(&mut self, from: PeerId, keys: &[WriterKey], now: Instant) {
        let crypto = &*self.cfg.crypto;
        let learned = keys
            .iter()
            .filter(|k| self.verifier.learn_handed_key(crypto, k.id, k.public_key))
            .count();
        if learned == 0 {
            return;
        }
        let asked = self.keys_asked.remove(&from);
        self.refresh_record(now);
        let summary = match (&self.ring, asked) {
            (Some(ring), _) => RingSummary::of(ring),
            (None, Some(asked)) => RingSummary::nothing(asked.genesis),
            (None, None) => return,
        };
        let digest = Message::Digest(summary).encode();
        self.transmits.push_back((Destination::Peer(from), digest));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ipam::MemStore;
    use crate::ipam::signed::TestCrypto;
    use crate::ipam::tests::{allocate_retrying, config, three, voters};

    /// Router 3 leaves (its ranges go to 1 and 2, written by 3) and is gone
    /// from the topology; router 4 starts later and knows every key but 3's.
    fn after_a_leave() -> crate::ipam::tests::Net {
        let mut net = three("10.32.0.0/24");
        let now = net.now;
        net.node(3).set_reachable([PeerId(1), PeerId(2)].into());
        net.node(3).leave(false, now).unwrap();
        net.pump();
        net.nodes.remove(&PeerId(3));
        let cfg = config(4, "10.32.0.0/24", voters(&[1, 2, 3]));
        let mut four = Allocator::new(cfg, MemStore::default(), &[], now).unwrap();
        for id in [1, 2, 4].map(PeerId) {
            four.learn_key(id, TestCrypto::public_key(id));
        }
        net.nodes.insert(PeerId(4), four);
        net
    }

    #[test]
    fn a_router_that_never_met_a_departed_writer_gets_its_key_and_the_ring() {
        let mut net = after_a_leave();
        let now = net.now;
        net.node(1).handle_peer_up(PeerId(4), now);
        net.settle();
        assert!(net.node(4).is_ready(), "errors: {:?}", net.errors);
        assert_eq!(
            net.node(4).verifier.key(PeerId(3)),
            Some(TestCrypto::public_key(PeerId(3)))
        );
        allocate_retrying(&mut net, 4, "pod-on-the-newcomer");
    }

    #[test]
    fn a_handed_over_key_that_does_not_hash_to_the_writer_is_ignored() {
        let mut net = after_a_leave();
        let now = net.now;
        let forged = Message::Keys(vec![WriterKey {
            id: PeerId(3),
            public_key: TestCrypto::public_key(PeerId(2)),
        }]);
        net.node(4)
            .handle_message(PeerId(2), &forged.encode(), now)
            .unwrap();
        assert_eq!(net.node(4).verifier.key(PeerId(3)), None);
        assert!(net.node(4).poll_transmit().is_none());
    }

    #[test]
    fn key_requests_are_bounded_to_one_per_peer_per_interval() {
        let mut net = after_a_leave();
        let now = net.now;
        let ring = net.node(1).ring.clone().unwrap();
        let bytes = Message::Ring(ring).encode();
        for _ in 0..5 {
            assert!(net.node(4).handle_message(PeerId(1), &bytes, now).is_err());
        }
        let asks = std::iter::from_fn(|| net.node(4).poll_transmit())
            .filter(|(_, b)| matches!(Message::decode(b), Ok(Message::WantKeys(_))))
            .count();
        assert_eq!(asks, 1);
    }
}
