//! The live key switch in the topology (issue 20): a running router moves
//! to its new key without dropping a connection ([`Gossip::rotate`]), and
//! its neighbours move their link to it under the new ID
//! ([`Gossip::neighbour_rotated`]) instead of a connection down and up
//! (which bumps both entries twice and re-runs the new-neighbour exchange:
//! a digest each way and every tombstone held).
//!
//! Routes never lose the router: until a router holds the successor's
//! entry it keeps the old one, and a connection listed under either ID
//! leads to the one the table holds (`gossip::aliases`).

use super::rotation::{Retirement, tombstone};
use super::{Gossip, PeerInfo};
use crate::crypto::SigningKey;
use crate::crypto::rotation::Rotation;
use crate::gossip::aliases::Aliases;
use crate::gossip::message::{Message, Update};
use crate::gossip::topology::{RefusedReason, TopologyEntry};
use crate::id::PeerId;
use std::cell::OnceCell;
use std::time::Instant;

impl Gossip {
    /// This router switches to the key `rotation` moved it to, live: `me`
    /// (the new ID, its key and addresses) and `signer` replace the old
    /// ones; my entry moves to the new ID with the same name, short ID, MTU
    /// and connections, one version above the old entry's, carrying the
    /// announcement; the old ID is retired with its tombstone (signed with
    /// `old_key`, as [`Gossip::with_rotation`] makes it). Both go to every
    /// neighbour at once, not at the next rate-limited push. The
    /// neighbours keep their IDs. Refused, changing nothing, if the
    /// announcement does not verify or names other keys than mine and
    /// `me`'s, or if the table of retirements is full.
    pub fn rotate(
        &mut self,
        me: PeerInfo,
        signer: SigningKey,
        rotation: Rotation,
        old_key: &SigningKey,
        now: Instant,
    ) -> Result<(), RefusedReason> {
        let (old, new) = rotation.verify().map_err(|_| RefusedReason::BadRotation)?;
        let keys_match = old == self.me
            && new == me.id
            && signer.verifying_key().x25519_public_key() == me.public_key
            && old_key.verifying_key().x25519_public_key() == rotation.old;
        if !keys_match {
            return Err(RefusedReason::BadRotation);
        }
        self.clock = self.clock.max(now);
        self.make_room_for_retirement()?;
        let was = self.my_entry().clone();
        let (_, grave) = tombstone(&rotation, &was.name, was.mtu, old_key);
        let addresses = if me.addresses.is_empty() {
            was.addresses.clone()
        } else {
            me.addresses
        };
        let entry = TopologyEntry {
            id: new,
            version: was.version + 1,
            name: was.name.clone(),
            public_key: me.public_key,
            addresses,
            short_id: was.short_id,
            mtu: was.mtu,
            connections: self.capped_connections(),
        };
        self.table.remove(old);
        self.me = new;
        self.signer = signer;
        self.my_rotation = Some(rotation);
        self.names.insert(was.name, new);
        self.tombstones.remove(&new);
        self.unreachable_since.remove(&new);
        self.retired.insert(
            old,
            Retirement {
                successor: new,
                rotation,
                tombstone: Some(grave.clone()),
                learned: now,
            },
        );
        self.retirement_changes += 1;
        self.neighbours_dirty = false;
        self.install_mine(entry);
        self.self_dirty = false;
        self.routes = OnceCell::new();
        if let Some(mine) = self.table.signed(new).cloned() {
            let frame = Message::Update(Update {
                entries: vec![mine, grave],
            })
            .encode();
            for peer in self.neighbours.keys() {
                self.transmits.push_back((*peer, frame.clone()));
            }
        }
        self.after_input(now);
        Ok(())
    }

    /// The link to neighbour `old` now runs under `new`, the key `rotation`
    /// moved it to (its rekey verified it; the announcement may reach this
    /// core before or after the successor's entry does). The neighbour
    /// moves to the new ID as it was (established, direction), with no
    /// digest, no tombstones and no down/up of my entry; the rotation is
    /// learned as if from the network (an event the first time). Refused,
    /// changing nothing, if the announcement does not name `old` → `new`
    /// or contradicts a known one.
    pub fn neighbour_rotated(
        &mut self,
        old: PeerId,
        new: PeerId,
        rotation: Rotation,
        now: Instant,
    ) -> Result<(), RefusedReason> {
        let verified = rotation.verify().map_err(|_| RefusedReason::BadRotation)?;
        if verified != (old, new) || old == self.me || new == self.me {
            return Err(RefusedReason::BadRotation);
        }
        self.clock = self.clock.max(now);
        self.retire(old, new, rotation, None)?;
        if let Some(was) = self.neighbours.remove(&old) {
            let moved = self.neighbours.entry(new).or_insert_with(|| was.clone());
            moved.established |= was.established;
            self.neighbours_changed();
        }
        self.after_input(now);
        Ok(())
    }

    /// A rotated router's IDs, each mapped to the one my table holds it
    /// under: the successor once its entry is here, the old ID until then.
    pub(super) fn aliases(&self) -> Aliases {
        Aliases::new(self.retired.iter().filter_map(|(old, r)| {
            if self.table.get(r.successor).is_some() {
                Some((*old, r.successor))
            } else if self.table.get(*old).is_some() {
                Some((r.successor, *old))
            } else {
                None
            }
        }))
    }
}
