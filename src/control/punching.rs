//! Driving the punch core (`super::punch`) in the control loop (issue 16):
//! a peer whose control connection is relayed (`super::relayed`) gets its
//! data path punched. Offers go end to end on the relayed connection,
//! probes are authenticated heartbeats to the peer's candidates
//! ([`Heartbeats::probe`](super::heartbeat::Heartbeats::probe)), and the
//! answer that fixes the path sets the peer's UDP endpoint, which the
//! heartbeats then keep proven and the snapshot gives the data plane. An
//! `impl Control` block: every rule is in the core.

use super::Control;
use super::proto::ControlMessage;
use super::punch::{PunchEvent, PunchState, PunchTransmit};
use crate::id::PeerId;
use std::net::SocketAddr;
use std::time::Instant;

impl Control {
    /// Starts punching to the relayed peer `peer` (a no-op while an attempt
    /// is in progress, fixed or backing off).
    pub(super) fn start_punch(&mut self, peer: PeerId, now: Instant) {
        let Some(via) = self.peers.get(peer).and_then(|p| p.relayed_via) else {
            return;
        };
        let theirs = self
            .gossip
            .entry(peer)
            .map(|e| e.addresses.clone())
            .unwrap_or_default();
        let mine = self.endpoints.advertised().to_vec();
        self.punch.want(peer, Some(via), &mine, &theirs, now);
    }

    /// The relayed peer `from` offered its candidates.
    pub(super) fn handle_punch_offer(
        &mut self,
        from: PeerId,
        candidates: &[SocketAddr],
        now: Instant,
    ) {
        let Some(via) = self.peers.get(from).and_then(|p| p.relayed_via) else {
            // Offers come only end to end on a relayed connection: one on a
            // direct connection is a peer misbehaving; nothing is probed.
            self.relayed.count("punch_offer_unexpected");
            return;
        };
        let mine = self.endpoints.advertised().to_vec();
        self.punch.handle_offer(from, via, &mine, candidates, now);
    }

    /// An authenticated heartbeat from the relayed peer `peer` came from
    /// `from`: a probe answer for the core (its RTT is the heartbeat's).
    pub(super) fn punch_answer(&mut self, peer: PeerId, from: SocketAddr, now: Instant) {
        if !self.is_relayed(peer) {
            return;
        }
        if let Some(rtt) = self.heartbeats.status(peer, now).and_then(|l| l.rtt) {
            self.punch.handle_answer(peer, from, rtt);
        }
    }

    /// A relayed peer's UDP stopped being established: a punched path that
    /// is lost is retried after the back-off.
    pub(super) fn punch_path_down(&mut self, peer: PeerId, now: Instant) {
        if self.is_relayed(peer) {
            self.punch.handle_path_lost(peer, now);
        }
    }

    /// Runs the core's timers and sends what it asks for; a fixed path
    /// becomes the peer's endpoint.
    pub(super) fn drive_punch(&mut self, now: Instant) {
        if self.punch.poll_timeout().is_some_and(|(at, _)| at <= now) {
            self.punch.handle_timeout(now);
        }
        while let Some(transmit) = self.punch.poll_transmit() {
            match transmit {
                // The connection with `to` is already end to end through
                // the rendezvous: the offer goes on it.
                PunchTransmit::Request { to, candidates, .. } => {
                    self.send_to_peer(to, ControlMessage::PunchOffer { candidates });
                }
                PunchTransmit::Probe { peer, addr } => {
                    self.heartbeats.probe(peer, addr, now);
                }
            }
        }
        while let Some(event) = self.punch.poll_event() {
            match event {
                PunchEvent::Punched { peer, addr, rtt }
                | PunchEvent::Improved { peer, addr, rtt } => {
                    tracing::info!(peer = %self.name_of(peer), %addr, ?rtt, "punched a direct UDP path");
                    self.peers.set_endpoint(peer, addr);
                }
                PunchEvent::Failed { peer, reason } => {
                    tracing::info!(peer = %self.name_of(peer), reason = reason.as_str(), "punching failed; data stays relayed");
                }
                PunchEvent::RetryDue { peer } => self.start_punch(peer, now),
            }
        }
    }

    /// Why the relayed peer `peer` has no punched path, if punching said.
    pub(super) fn punch_failure(&self, peer: PeerId) -> Option<&'static str> {
        match self.punch.state(peer)? {
            PunchState::Failed(reason) => Some(reason.as_str()),
            _ => None,
        }
    }

    /// The punch and relay counters for status and metrics (bounded
    /// labels: the failure and drop reasons are fixed sets).
    pub(super) fn path_counters(&self) -> std::collections::BTreeMap<String, u64> {
        let punch = self.punch.counters();
        let mut out = std::collections::BTreeMap::new();
        out.insert("punch_attempts".to_string(), punch.attempts);
        out.insert("punch_successes".to_string(), punch.successes);
        out.insert("punch_offer_early".to_string(), punch.offers_early);
        out.insert("family_switches".to_string(), self.family_choice.switches());
        for (reason, n) in punch.failures() {
            out.insert(format!("punch_failed/{reason}"), n);
        }
        let (records, bytes) = self.relay_budget.forwarded();
        out.insert("relay_forwarded".to_string(), records);
        out.insert("relay_forwarded_bytes".to_string(), bytes);
        for (reason, n) in self.endpoints.refused() {
            out.insert(reason.to_string(), n);
        }
        // Drop reasons are `relay_*` labels (`relay::RelayDrop`, and the
        // ends' own in `relayed.rs`).
        let ends = self.relayed.dropped.iter().map(|(r, n)| (*r, *n));
        for (reason, n) in self.relay_budget.dropped().chain(ends) {
            *out.entry(reason.to_string()).or_default() += n;
        }
        out
    }

    fn is_relayed(&self, peer: PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.relayed_via.is_some())
    }

    fn name_of(&self, peer: PeerId) -> String {
        self.peers
            .get(peer)
            .map_or_else(|| peer.to_string(), |p| p.hello.name.clone())
    }
}
