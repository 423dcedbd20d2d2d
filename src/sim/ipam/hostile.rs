//! A hostile member in the IPAM simulator (issue 15, defects 1 and 6): a
//! router of the cluster, with its own key, that besides its honest
//! allocator forges ring messages from the receiver's own ring (it can
//! learn it by gossip) and floods donation requests. Every forgery must be
//! refused and change nothing at the receiver; the simulator's invariants
//! keep being checked after every step.
//!
//! The give-away (issue 15's last hole, closed by signed titles): the
//! member writes an entry giving a victim's range to a third router, a
//! bounded jump (2 to `MAX_VERSION_JUMP` versions) above the receiver's,
//! with no title or with one it signed itself. Titles are required by
//! default, so every honest router refuses it, counted by its title
//! counter (`title_missing`, `title_unconnected`), and the victim keeps
//! its range.

use super::{Sim, TestCrypto};
use crate::id::PeerId;
use crate::ipam::message::{DonateRequest, Message};
use crate::ipam::ring::{Entry, Link, MAX_VERSION_JUMP, PeerRecord, RingError};
use crate::ipam::signed::{RingCrypto, entry_message};
use crate::ipam::{Event, IpamError, Ring};
use rand::Rng;

/// The forgeries, one per attack of the issue.
#[derive(Clone, Copy, Debug)]
enum Forgery {
    /// An entry over the victim's range with the victim named as writer.
    Impersonation,
    /// The victim's range taken for the forger, one version up.
    Takeover,
    /// The same with a version jump.
    Jump,
    /// A version at the ceiling, to win every later merge.
    Saturate,
    /// A tombstone of the live victim and a reclaim of its ranges.
    TombstoneOfLive,
    /// The victim's free-space record rewritten (a donor-choice lure).
    Record,
    /// The victim's range given to a third router, a bounded jump up,
    /// without a title.
    GiveAway,
    /// The same with a title the forger signed itself (its own entry one
    /// version below), which does not reach the receiver's view.
    GiveAwayTitled,
}

const FORGERIES: [Forgery; 8] = [
    Forgery::GiveAway,
    Forgery::GiveAwayTitled,
    Forgery::Impersonation,
    Forgery::Takeover,
    Forgery::Jump,
    Forgery::Saturate,
    Forgery::TombstoneOfLive,
    Forgery::Record,
];

impl Sim {
    /// One hostile act by the hostile member, if it is alive: a forged
    /// ring to a reachable router about another reachable one, or a burst
    /// of donation requests to one.
    pub(super) fn hostile_step(&mut self) {
        let Some(m) = self.hostile.filter(|m| self.nodes.contains_key(m)) else {
            return;
        };
        let honest: Vec<PeerId> = self
            .nodes
            .keys()
            .copied()
            .filter(|p| *p != m && self.connected(m, *p))
            .collect();
        if honest.is_empty() {
            return;
        }
        let receiver = honest[self.rng.gen_range(0..honest.len())];
        if self.rng.gen_bool(0.2) {
            self.drain_attempt(m, receiver);
            return;
        }
        let kind = FORGERIES[self.rng.gen_range(0..FORGERIES.len())];
        let Some(base) = self.nodes[&receiver].ipam.ring().cloned() else {
            return;
        };
        // The victim: a router the receiver sees alive and owning addresses.
        let victims: Vec<PeerId> = base
            .owners()
            .into_iter()
            .filter(|v| *v != m && *v != receiver && self.connected(receiver, *v))
            .collect();
        if victims.is_empty() {
            return;
        }
        let victim = victims[self.rng.gen_range(0..victims.len())];
        // The third router a give-away names: any other than the victim
        // and the forger.
        let third = honest
            .iter()
            .copied()
            .filter(|p| *p != victim)
            .nth(self.rng.gen_range(0..honest.len().saturating_sub(1).max(1)))
            .unwrap_or(receiver);
        let jump = self.rng.gen_range(2..=MAX_VERSION_JUMP);
        let Some(forged) = forge(&base, kind, m, victim, (third, jump)) else {
            return;
        };
        let now = self.now;
        let bytes = Message::Ring(forged).encode();
        let node = self.nodes.get_mut(&receiver).unwrap();
        match node.ipam.handle_message(m, &bytes, now) {
            Ok(()) => self.fail(format!(
                "{receiver} accepted a forged ring ({kind:?}) from {m} about {victim}"
            )),
            Err(e) => {
                if node.ipam.ring() != Some(&base) || node.ipam.poll_transmit().is_some() {
                    self.fail(format!("{receiver} refused {kind:?} but changed: {e}"));
                }
                if let IpamError::Misbehaved(RingError::Title { reason, .. }) = &e {
                    *self
                        .stats
                        .title_refused
                        .entry(reason.counter().to_string())
                        .or_default() += 1;
                } else if matches!(kind, Forgery::GiveAway | Forgery::GiveAwayTitled) {
                    self.fail(format!("{receiver} refused {kind:?} but not by title: {e}"));
                }
                *self
                    .stats
                    .forged_refused
                    .entry(format!("{kind:?}"))
                    .or_default() += 1;
            }
        }
    }

    /// Ten donation requests at once: at most the first is served.
    fn drain_attempt(&mut self, m: PeerId, donor: PeerId) {
        let Some(genesis) = self.nodes[&donor].ipam.ring().map(Ring::genesis_id) else {
            return;
        };
        let now = self.now;
        let bytes = Message::DonateRequest(DonateRequest { genesis }).encode();
        let mut donated: u64 = 0;
        for _ in 0..10 {
            let node = self.nodes.get_mut(&donor).unwrap();
            if let Err(e) = node.ipam.handle_message(m, &bytes, now) {
                self.fail(format!("{donor} failed on a donation request: {e}"));
            }
            let events: Vec<Event> = std::iter::from_fn(|| node.ipam.poll_event()).collect();
            for event in events {
                match event {
                    Event::RangeDonated { .. } => donated += 1,
                    Event::DonationRefused { .. } => self.stats.donation_refusals += 1,
                    Event::Alarm(a) => self.fail(format!("{donor}: alarm {a:?}")),
                    _ => {}
                }
            }
        }
        if donated > 1 {
            self.fail(format!("{donor} donated {donated} times to one burst"));
        }
        self.stats.donations += donated;
        // What the donor sends (its ring, to the forger and to everyone) is honest.
        self.drain(donor);
    }
}

/// `base` (the receiver's ring) with one forged item, signed by `m`; a
/// give-away names `(third, jump)`.
fn forge(
    base: &Ring,
    kind: Forgery,
    m: PeerId,
    victim: PeerId,
    (third, jump): (PeerId, u64),
) -> Option<Ring> {
    let crypto = TestCrypto::new(m);
    let (token, gov) = base
        .entries()
        .iter()
        .find(|(_, e)| e.owner == victim)
        .map(|(t, e)| (*t, *e))?;
    let mut ring = base.clone();
    let taken = |version: u64, writer: PeerId| Entry {
        owner: m,
        version,
        writer,
        reclaim: false,
    };
    match kind {
        Forgery::Impersonation => {
            ring.insert_signed(token, taken(gov.version + 1, victim), &crypto);
        }
        Forgery::Takeover => ring.insert_signed(token, taken(gov.version + 1, m), &crypto),
        Forgery::Jump => ring.insert_signed(token, taken(gov.version + 5, m), &crypto),
        Forgery::Saturate => ring.insert_signed(token, taken(u64::MAX - 1, m), &crypto),
        Forgery::TombstoneOfLive => {
            ring.insert_tombstone_signed(victim, m, &crypto);
            for (t, e) in base.entries().iter().filter(|(_, e)| e.owner == victim) {
                let entry = Entry {
                    reclaim: true,
                    ..taken(e.version + 1, m)
                };
                ring.insert_signed(*t, entry, &crypto);
            }
        }
        Forgery::GiveAway | Forgery::GiveAwayTitled => {
            let given = Entry {
                owner: third,
                version: gov.version + jump,
                writer: m,
                reclaim: false,
            };
            ring.insert_signed(token, given, &crypto);
            let title = matches!(kind, Forgery::GiveAwayTitled).then(|| {
                let mine = taken(given.version - 1, m);
                let signature = crypto.sign(&entry_message(base.genesis_id(), token, &mine));
                vec![Link {
                    token,
                    entry: mine,
                    signature: Some(signature),
                }]
            });
            ring.set_title(token, title);
        }
        Forgery::Record => {
            let old = base
                .peer_records()
                .get(&victim)
                .copied()
                .unwrap_or_default();
            let record = PeerRecord {
                version: old.version + 1,
                free: u128::from(u32::MAX),
                pods: 0,
            };
            ring.insert_record_signed(victim, record, &crypto);
        }
    }
    Some(ring)
}
