//! Signing this router's own ring items and checking a peer's
//! (`crate::ipam::signed` has the scheme and the rules). Only the items
//! that would change our ring are checked: the rest are dropped by the join
//! anyway, and a ring equal to ours costs nothing.

#[cfg(any(test, feature = "sim"))]
use super::Entry;
use super::{Ring, RingError};
use crate::id::PeerId;
use crate::ipam::signed::{
    RingCrypto, SignError, Signature, entry_message, record_message, tombstone_message,
};

/// Checks one writer's signature over one message (the allocator's
/// [`crate::ipam::signed::Verifier`] with its keys and cache).
pub(crate) type Check<'a> = dyn FnMut(PeerId, Vec<u8>, &Signature) -> Result<(), RingError> + 'a;

impl Ring {
    /// Signs every item written by `me` that has no signature yet (the
    /// local changes `donate`, `reclaim` and `set_record` leave them
    /// unsigned). Version-1 entries stay unsigned: they are the genesis.
    pub fn sign_own(&mut self, me: PeerId, crypto: &dyn RingCrypto) {
        let genesis = self.genesis;
        for (token, e) in &self.entries {
            if e.writer == me && e.version > 1 && !self.sigs.entries.contains_key(token) {
                let sig = crypto.sign(&entry_message(genesis, *token, e));
                self.sigs.entries.insert(*token, sig);
            }
        }
        for (dead, by) in &self.tombstones {
            if *by == me && !self.sigs.tombstones.contains_key(&(*dead, *by)) {
                let sig = crypto.sign(&tombstone_message(genesis, *dead, *by));
                self.sigs.tombstones.insert((*dead, *by), sig);
            }
        }
        // A title link is one of our entries that was not signed yet when
        // the title was built (two changes between sends).
        for links in self.titles.values_mut() {
            for link in links.iter_mut() {
                if link.entry.writer == me && link.entry.version > 1 && link.signature.is_none() {
                    let message = entry_message(genesis, link.token, &link.entry);
                    link.signature = Some(crypto.sign(&message));
                }
            }
        }
        if let Some(r) = self.peers.get(&me)
            && !self.sigs.records.contains_key(&me)
        {
            let sig = crypto.sign(&record_message(genesis, me, r));
            self.sigs.records.insert(me, sig);
        }
    }

    /// Checks the signature of every item of `self` (a peer's ring) that
    /// would change `base` (ours; `None` when we have none and all of it
    /// counts). A version-1 entry must be the genesis entry its founding
    /// gives; every other item must verify under its writer's key. Changes
    /// nothing.
    pub fn check_signatures(
        &self,
        base: Option<&Self>,
        check: &mut Check<'_>,
    ) -> Result<(), RingError> {
        let genesis = self.genesis;
        let founded = self.genesis_ring();
        let sig = |s: Option<&Signature>| s.copied().unwrap_or(Signature::ZERO);
        for (token, e) in &self.entries {
            if base.is_some_and(|b| b.entries.get(token).is_some_and(|m| m.rank() >= e.rank())) {
                continue;
            }
            if e.version == 1 {
                if founded.entries.get(token) != Some(e) {
                    return Err(RingError::NotOwner {
                        token: *token,
                        writer: e.writer,
                        owner: founded.owner_at(*token).unwrap_or(e.writer),
                    });
                }
                continue;
            }
            check(
                e.writer,
                entry_message(genesis, *token, e),
                &sig(self.sigs.entries.get(token)),
            )?;
            for link in self.titles.get(token).into_iter().flatten() {
                if link.entry.version == 1 {
                    if founded.entries.get(&link.token) != Some(&link.entry) {
                        return Err(SignError::BadSignature(link.entry.writer).into());
                    }
                    continue;
                }
                check(
                    link.entry.writer,
                    entry_message(genesis, link.token, &link.entry),
                    &sig(link.signature.as_ref()),
                )?;
            }
        }
        for t in &self.tombstones {
            if base.is_some_and(|b| b.tombstones.contains(t)) {
                continue;
            }
            check(
                t.1,
                tombstone_message(genesis, t.0, t.1),
                &sig(self.sigs.tombstones.get(t)),
            )?;
        }
        for (peer, r) in &self.peers {
            if base.is_some_and(|b| b.peers.get(peer).is_some_and(|m| m.rank() >= r.rank())) {
                continue;
            }
            check(
                *peer,
                record_message(genesis, *peer, r),
                &sig(self.sigs.records.get(peer)),
            )?;
        }
        Ok(())
    }

    /// An entry as `writer` signed it, for tests and the simulator's
    /// hostile router: inserts it with its signature, bypassing the rules.
    #[cfg(any(test, feature = "sim"))]
    pub fn insert_signed(&mut self, token: u128, entry: Entry, crypto: &dyn RingCrypto) {
        let sig = crypto.sign(&entry_message(self.genesis, token, &entry));
        self.entries.insert(token, entry);
        self.sigs.entries.insert(token, sig);
    }

    /// Sets (or, with `None`, drops) the title of the entry at `token`
    /// (tests and the hostile router).
    #[cfg(any(test, feature = "sim"))]
    pub fn set_title(&mut self, token: u128, title: Option<Vec<super::title::Link>>) {
        match title {
            Some(links) => self.titles.insert(token, links),
            None => self.titles.remove(&token),
        };
    }

    /// A record as `crypto`'s owner signed it (tests and the hostile router).
    #[cfg(any(test, feature = "sim"))]
    pub fn insert_record_signed(
        &mut self,
        peer: PeerId,
        record: super::PeerRecord,
        crypto: &dyn RingCrypto,
    ) {
        let sig = crypto.sign(&record_message(self.genesis, peer, &record));
        self.peers.insert(peer, record);
        self.sigs.records.insert(peer, sig);
    }

    /// A tombstone as `by` signed it (tests and the hostile router).
    #[cfg(any(test, feature = "sim"))]
    pub fn insert_tombstone_signed(&mut self, dead: PeerId, by: PeerId, crypto: &dyn RingCrypto) {
        let sig = crypto.sign(&tombstone_message(self.genesis, dead, by));
        self.tombstones.insert((dead, by));
        self.sigs.tombstones.insert((dead, by), sig);
    }
}
