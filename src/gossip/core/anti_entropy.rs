//! Spreading entries and forgetting dead ones: relays of newly learned
//! entries, anti-entropy summaries and digests, requests, batching of
//! updates, and reaping unreachable routers (see the protocol in the parent
//! module's docs). Everything sent here is an owner's signed bytes, forwarded
//! untouched.

use super::{Gossip, GossipEvent, Tombstone};
use crate::gossip::message::{
    Digest, MAX_DIGEST_ITEMS, MAX_UPDATE_ENTRIES, Message, Request, Summary, UPDATE_TARGET_BYTES,
    Update,
};
use crate::gossip::topology::SignedEntry;
use crate::id::PeerId;
use rand::seq::SliceRandom;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

impl Gossip {
    /// Relays newly learned entries to neighbours their owner is not
    /// connected to (the owner pushed to its own neighbours already).
    pub(super) fn flush_relays(&mut self) {
        if self.relays.is_empty() {
            return;
        }
        let relays = std::mem::take(&mut self.relays);
        let mut batches: BTreeMap<PeerId, Vec<SignedEntry>> = BTreeMap::new();
        let neighbours: Vec<PeerId> = self.neighbours.keys().copied().collect();
        for (id, source) in relays {
            let (Some(entry), Some(signed)) = (self.table.get(id), self.table.signed(id)) else {
                continue;
            };
            let mut candidates: Vec<PeerId> = neighbours
                .iter()
                .copied()
                .filter(|n| *n != source && *n != id && entry.connection(*n).is_none())
                .collect();
            candidates.shuffle(&mut self.rng);
            candidates.truncate(self.config.relay_fanout);
            for n in candidates {
                batches.entry(n).or_default().push(signed.clone());
            }
        }
        for (to, entries) in batches {
            self.send_entries(to, entries);
        }
    }

    pub(super) fn anti_entropy(&mut self) {
        let mut neighbours: Vec<PeerId> = self.neighbours.keys().copied().collect();
        neighbours.shuffle(&mut self.rng);
        neighbours.truncate(self.config.anti_entropy_fanout);
        let (count, hash) = self.table.summary();
        let frame = Message::Summary(Summary { count, hash }).encode();
        for n in neighbours {
            self.transmits.push_back((n, frame.clone()));
        }
    }

    /// Sends `to` my `(id, version)` pairs in `[first, last]`, split into
    /// chunks that each name the id range they cover.
    pub(super) fn send_digest(&mut self, to: PeerId, first: PeerId, last: PeerId) {
        let items: Vec<(PeerId, u64)> = self
            .table
            .range(first, last)
            .map(|(e, _)| (e.id, e.version))
            .collect();
        let mut start = first;
        let mut chunks = items.chunks(MAX_DIGEST_ITEMS).peekable();
        if chunks.peek().is_none() {
            let digest = Digest {
                first,
                last,
                items: Vec::new(),
            };
            self.transmits
                .push_back((to, Message::Digest(digest).encode()));
            return;
        }
        while let Some(chunk) = chunks.next() {
            let end = match (chunks.peek(), chunk.last()) {
                (Some(_), Some((id, _))) => *id,
                _ => last,
            };
            let digest = Digest {
                first: start,
                last: end,
                items: chunk.to_vec(),
            };
            self.transmits
                .push_back((to, Message::Digest(digest).encode()));
            start = PeerId(end.0.saturating_add(1));
        }
    }

    /// Push-pull against a neighbour's digest: send what it lacks or has
    /// older, request what I lack or have older. A digest is unsigned, so a
    /// higher version of my own entry in it is only a reason to ask for the
    /// signed copy ([`Gossip::merge`] decides), never to jump.
    pub(super) fn handle_digest(&mut self, from: PeerId, d: Digest) {
        if d.first > d.last {
            return;
        }
        let theirs: HashMap<PeerId, u64> = d
            .items
            .iter()
            .filter(|(id, _)| *id >= d.first && *id <= d.last)
            .copied()
            .collect();
        let mut wanted = Vec::new();
        for (&id, &version) in &theirs {
            let mine = self.table.get(id).map(|e| e.version);
            let buried = self
                .tombstones
                .get(&id)
                .is_some_and(|t| t.version >= version);
            if mine.is_none_or(|m| m < version) && !buried {
                wanted.push(id);
            }
        }
        let to_send: Vec<SignedEntry> = self
            .table
            .range(d.first, d.last)
            .filter(|(e, _)| theirs.get(&e.id).is_none_or(|v| *v < e.version))
            .map(|(_, s)| s.clone())
            .collect();
        self.send_entries(from, to_send);
        wanted.sort();
        for chunk in wanted.chunks(MAX_DIGEST_ITEMS) {
            let request = Request {
                ids: chunk.to_vec(),
            };
            self.transmits
                .push_back((from, Message::Request(request).encode()));
        }
    }

    /// Sends signed entries, split so that each frame stays well under one
    /// 64 KiB Noise record.
    pub(super) fn send_entries(&mut self, to: PeerId, entries: Vec<SignedEntry>) {
        let mut batch = Vec::new();
        let mut size = 0;
        for e in entries {
            // The bytes, their length prefix and the 64-byte signature.
            let estimate = e.bytes.len() + 3 + 64;
            if !batch.is_empty()
                && (size + estimate > UPDATE_TARGET_BYTES || batch.len() >= MAX_UPDATE_ENTRIES)
            {
                let full = std::mem::take(&mut batch);
                self.transmits
                    .push_back((to, Message::Update(Update { entries: full }).encode()));
                size = 0;
            }
            size += estimate;
            batch.push(e);
        }
        if !batch.is_empty() {
            self.transmits
                .push_back((to, Message::Update(Update { entries: batch }).encode()));
        }
    }

    /// Marks entries unreachable (nobody reachable claims a connection to
    /// them), drops those unreachable for `gc_timeout`, expires tombstones.
    pub(super) fn reap(&mut self, now: Instant) {
        self.tombstones.retain(|_, t| t.expiry > now);
        if self.reach_dirty {
            self.reach_dirty = false;
            let reachable = self.reachable();
            for e in self.table.iter() {
                if reachable.contains(&e.id) {
                    self.unreachable_since.remove(&e.id);
                } else {
                    self.unreachable_since.entry(e.id).or_insert(now);
                }
            }
        }
        let expired: Vec<PeerId> = self
            .unreachable_since
            .iter()
            .filter(|(_, since)| **since + self.config.gc_timeout <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.unreachable_since.remove(&id);
            let Some((old, signed)) = self.table.remove(id) else {
                continue;
            };
            self.names.remove(&old.name);
            let tombstone = Tombstone {
                version: old.version,
                expiry: now + 3 * self.config.gc_timeout,
                signed,
            };
            self.tombstones.insert(id, tombstone);
            self.emit(GossipEvent::PeerRemoved { id, name: old.name });
            self.changed();
        }
    }

    /// Routers reachable from me by following the connections that
    /// reachable routers claim. A dead router's own stale claims are never
    /// followed unless someone live claims it.
    fn reachable(&self) -> HashSet<PeerId> {
        let aliases = self.aliases();
        let mut seen = HashSet::from([self.me]);
        let mut stack: Vec<PeerId> = self
            .neighbours
            .keys()
            .map(|n| aliases.canonical(*n))
            .collect();
        seen.extend(stack.iter().copied());
        while let Some(id) = stack.pop() {
            let Some(entry) = self.table.get(id) else {
                continue;
            };
            for c in &entry.connections {
                let peer = aliases.canonical(c.peer);
                if seen.insert(peer) {
                    stack.push(peer);
                }
            }
        }
        seen
    }
}
