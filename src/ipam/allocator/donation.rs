//! Donations between routers: an exhausted router asks the reachable peer
//! with the most advertised free space (one request out at a time, a slow
//! donor avoided for a while); a donor gives half of its largest free run,
//! persists, then sends the ring.
//!
//! # Drain limits (issue 15, defect 6)
//!
//! A `DonateRequest` costs its sender nothing, so a donor bounds what one
//! requester can take, and counts every refusal
//! ([`Event::DonationRefused`]):
//!
//! - **Rate**: at most one answered request per requester per
//!   [`Config::donation_interval`](super::Config::donation_interval)
//!   (default twice the request timeout). An honest requester asks one
//!   donor at a time and waits a request timeout before asking anyone
//!   else, so it never meets the limit on a first request; a request inside
//!   the interval gets no answer at all (no full ring for a few bytes). A
//!   requester that received a donation does not ask that donor again
//!   within its own donation interval, so an honest burst is paced, not
//!   ignored.
//! - **Budget**: within a window of [`DONATION_WINDOWS`] intervals, one
//!   requester receives at most three quarters of the free space the donor
//!   had when the window opened (its first donation in a window, half of
//!   one free run, always goes). An honest requester that runs out in a
//!   burst (a new node taking many pods in a two-router cluster) gets a
//!   second donation one interval after the first; a drain takes at most
//!   three quarters per window, so the donor keeps a geometric remainder
//!   and the operator sees the counter long before. Over budget, the requester is answered with the
//!   ring (its free count), so an honest one asks someone else.
//! - The table of recent requesters is pruned every gossip interval and
//!   holds one entry per requester seen within a window.

use super::{Allocator, Destination, DonationRefusal, Event, span};
use crate::id::PeerId;
use crate::ipam::error::IpamError;
use crate::ipam::message::{DonateRequest, Message};
use crate::ipam::store::Store;
use std::time::Instant;

/// How many donation intervals one requester's budget lasts.
pub(super) const DONATION_WINDOWS: u32 = 6;

/// What one requester was given lately (`donation.rs`, drain limits).
#[derive(Clone, Copy, Debug)]
pub(super) struct Grant {
    /// When its last request was answered.
    last: Instant,
    /// When its current window opened.
    window_start: Instant,
    /// Three quarters of our free space then.
    budget: u128,
    /// Addresses given in the window.
    given: u128,
}

impl Grant {
    /// Whether this record still limits anything at `now`.
    pub(super) fn live(&self, now: Instant, interval: std::time::Duration) -> bool {
        now < self.window_start + interval * DONATION_WINDOWS
    }
}

/// What one requester may take in a window when the donor had `free`
/// addresses as it opened: three quarters, rounded up, plus the one reserved
/// address (the range's broadcast) that may go with a block. Rounding down
/// refused the honest second donation of a two-router burst (half, then a
/// quarter) by one address.
fn budget_for(free: u128) -> u128 {
    free - free / 4 + 1
}

impl<S: Store> Allocator<S> {
    /// Asks the reachable router with the most advertised free space for a
    /// donation, unless a request is already out. Returns why we wait.
    pub(super) fn request_donation(&mut self, now: Instant) -> String {
        if let Some((peer, _)) = self.pending {
            return format!("out of addresses; waiting for a donation from {peer}");
        }
        let Some(ring) = &self.ring else {
            return "ring not ready".into();
        };
        let genesis = ring.genesis_id();
        let me = self.cfg.me;
        let donor = ring
            .peer_records()
            .iter()
            .filter(|(p, r)| {
                **p != me
                    && r.free > 0
                    && ring.tombstone_of(**p).is_none()
                    && (self.reachable.is_empty() || self.reachable.contains(p))
                    && self.avoid.get(p).is_none_or(|until| now >= *until)
            })
            .max_by_key(|(p, r)| (r.free, std::cmp::Reverse(**p)))
            .map(|(p, _)| *p)
            .or_else(|| {
                // No record advertises free space yet (records travel with the
                // periodic ring broadcast): ask the reachable router owning
                // the most addresses rather than wait for the next round.
                ring.owners()
                    .into_iter()
                    .filter(|p| {
                        *p != me
                            && ring.tombstone_of(*p).is_none()
                            && !ring.peer_records().contains_key(p)
                            && self.reachable.contains(p)
                            && self.avoid.get(p).is_none_or(|until| now >= *until)
                    })
                    .max_by_key(|p| (span(&ring.ranges_of(*p)), std::cmp::Reverse(*p)))
            });
        let Some(donor) = donor else {
            if let Some(until) = self.avoid.values().filter(|u| **u > now).min() {
                return format!(
                    "out of addresses; the routers with free space were asked lately, asking again in {} ms",
                    until.duration_since(now).as_millis()
                );
            }
            return "out of addresses and no reachable router advertises free space".into();
        };
        let bytes = Message::DonateRequest(DonateRequest { genesis }).encode();
        self.transmits.push_back((Destination::Peer(donor), bytes));
        self.pending = Some((donor, now + self.cfg.request_timeout));
        format!("out of addresses; asked {donor} for a donation")
    }

    pub(super) fn on_donate_request(
        &mut self,
        from: PeerId,
        request: DonateRequest,
        now: Instant,
    ) -> Result<(), IpamError> {
        let me = self.cfg.me;
        let Some(ring) = &self.ring else {
            return Ok(());
        };
        if request.genesis != ring.genesis_id() {
            return Err(IpamError::GenesisMismatch {
                ours: ring.genesis_id(),
                theirs: request.genesis,
                peer: from,
            });
        }
        if self.tombstoned.is_some() || ring.tombstone_of(from).is_some() || from == me {
            return Ok(());
        }
        let interval = self.cfg.donation_interval;
        if self
            .donated_to
            .get(&from)
            .is_some_and(|g| now < g.last + interval)
        {
            self.events.push_back(Event::DonationRefused {
                requester: from,
                reason: DonationRefusal::RateLimited,
            });
            return Ok(());
        }
        let free = self.free(now);
        let grant = self
            .donated_to
            .entry(from)
            .and_modify(|g| g.last = now)
            .or_insert(Grant {
                last: now,
                window_start: now,
                budget: budget_for(free),
                given: 0,
            });
        if !grant.live(now, interval) {
            *grant = Grant {
                last: now,
                window_start: now,
                budget: budget_for(free),
                given: 0,
            };
        }
        // The window's first donation always goes (half of one free run,
        // at most one address over half of the free space).
        let left = if grant.given == 0 {
            u128::MAX
        } else {
            grant.budget.saturating_sub(grant.given)
        };
        let Some(ring) = &self.ring else {
            return Ok(());
        };
        let range = self.cfg.range;
        let run = self
            .allocs
            .largest_free_run(&self.allocatable(now), |o| range.is_reserved(o));
        let Some((lo, hi)) = run else {
            // Nothing to give: our ring carries our (now zero) free count.
            self.send_ring(Destination::Peer(from), now);
            return Ok(());
        };
        // A reserved last address of the range (never allocated) goes with
        // the block, so the donor is not left owning a lone broadcast address.
        // Not from quarantine: a quarantined address may already be someone else's.
        let allocatable = self.allocatable(now);
        let hi = if range.is_reserved(hi + 1) && allocatable.iter().any(|r| r.0 <= hi && hi < r.1) {
            hi + 1
        } else {
            hi
        };
        let len = hi - lo + 1;
        let give = if len == 1 { 1 } else { len / 2 };
        let start_wanted = hi + 1 - give;
        // The run may span several of our entries; donate within the last one.
        let entry_start = ring
            .entries()
            .range(..=hi)
            .next_back()
            .map_or(lo, |(t, _)| *t);
        let start = start_wanted.max(entry_start);
        let given = hi - start + 1;
        if given > left {
            self.events.push_back(Event::DonationRefused {
                requester: from,
                reason: DonationRefusal::OverBudget,
            });
            self.send_ring(Destination::Peer(from), now);
            return Ok(());
        }
        let old_ring = ring.clone();
        let donated = self
            .ring
            .as_mut()
            .is_some_and(|r| r.donate(me, start, hi, from));
        if !donated {
            return Ok(());
        }
        self.refresh_mine();
        if let Err(e) = self.persist_ring() {
            self.ring = Some(old_ring);
            self.refresh_mine();
            return Err(IpamError::Persist(e));
        }
        if let Some(g) = self.donated_to.get_mut(&from) {
            g.given += given;
        }
        self.events.push_back(Event::RangeDonated {
            to: from,
            addresses: given,
        });
        self.send_ring(Destination::Peer(from), now);
        self.send_ring(Destination::Broadcast, now);
        Ok(())
    }
}
