//! One link's heartbeat state: its send key and counters, its receive
//! keysets and replay windows, its path-MTU probe schedule, and the
//! timing rules that read them (when a keepalive, probe or suspect ping is
//! due). Owned by [`super::Heartbeats`]; split out of it by concern.

use super::{
    KEEPALIVE_INTERVAL, LIVENESS_TIMEOUT, PMTU_RECHECK_FIRST, PMTU_RECHECK_GROWTH,
    PMTU_RECHECK_MAX, PROBE_WAIT, SUSPECT_AFTER, SUSPECT_PING_EVERY,
};
use crate::crypto::data::{DataKey, KeyId, KeyLife};
use crate::crypto::replay::ReplayWindow;
use crate::id::ShortId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub(super) struct Sender {
    pub(super) remote_index: u32,
    pub(super) key: DataKey,
}

/// A send key's next heartbeat counter, kept while the key exists.
pub(super) struct Counter {
    pub(super) next: u64,
    pub(super) life: KeyLife,
}

pub(super) struct Receiver {
    pub(super) key: DataKey,
    pub(super) window: ReplayWindow,
}

/// The path-MTU probe schedule of one link.
pub(super) struct Pmtu {
    /// `Some(true)`: a probe was answered and none lost since.
    pub(super) verdict: Option<bool>,
    /// An unanswered probe: when the last try went, and how many went.
    pub(super) outstanding: Option<(Instant, u32)>,
    /// When the next probe goes (none outstanding).
    pub(super) next: Instant,
    /// The wait after the next answered probe.
    pub(super) interval: Duration,
}

impl Pmtu {
    pub(super) fn new(first: Instant) -> Self {
        Self {
            verdict: None,
            outstanding: None,
            next: first,
            interval: PMTU_RECHECK_FIRST,
        }
    }

    /// Something changed that may change the path MTU: probe now.
    pub(super) fn recheck(&mut self, now: Instant) {
        self.outstanding = None;
        self.next = now;
        self.interval = PMTU_RECHECK_FIRST;
    }

    pub(super) fn answered(&mut self, now: Instant) {
        self.verdict = Some(true);
        self.outstanding = None;
        self.next = now + self.interval;
        let growth = if self.interval < PMTU_RECHECK_FIRST * 2 {
            2
        } else {
            PMTU_RECHECK_GROWTH
        };
        self.interval = (self.interval * growth).min(PMTU_RECHECK_MAX);
    }

    pub(super) fn deadline(&self) -> Instant {
        match self.outstanding {
            Some((sent, _)) => sent + PROBE_WAIT,
            None => self.next,
        }
    }
}

pub(super) struct Link {
    pub(super) short: ShortId,
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) sender: Option<Sender>,
    /// Heartbeat counters per send key (the current one and any older one
    /// the key schedule still holds).
    pub(super) counters: HashMap<KeyId, Counter>,
    /// Receive keysets by our receiver index.
    pub(super) receivers: HashMap<u32, Receiver>,
    /// When this side may first send (the dialler at once).
    pub(super) first_tx: Instant,
    /// This side dialled: it pings the idle link, the other side answers
    /// (passive keepalive, see the module docs of `heartbeat`).
    pub(super) pinger: bool,
    /// The peer sends keepalives (a router from before passive
    /// keepalives): send ours as it expects.
    pub(super) legacy: bool,
    pub(super) last_tx: Option<Instant>,
    pub(super) last_rx: Option<Instant>,
    pub(super) last_ping: Option<Instant>,
    /// The peer's last stamp and when it arrived, to echo.
    pub(super) peer_stamp: Option<(u64, Instant)>,
    pub(super) udp_ok: bool,
    /// UDP worked at some point (so its return is a change worth a probe).
    pub(super) was_up: bool,
    pub(super) established: bool,
    pub(super) rtt: Option<Duration>,
    pub(super) pmtu: Pmtu,
}

impl Link {
    pub(super) fn can_send(&self) -> bool {
        self.sender.is_some() && self.endpoint.is_some()
    }

    pub(super) fn udp_ok_at(&self, now: Instant) -> bool {
        self.last_rx
            .is_some_and(|t| now.saturating_duration_since(t) < LIVENESS_TIMEOUT)
    }

    /// Probes go before the first packet arrives (they open the path) and
    /// while UDP works; not while it is down (losses would say nothing
    /// about the MTU).
    pub(super) fn may_probe(&self) -> bool {
        self.last_rx.is_none() || self.udp_ok
    }

    /// When this side next proves the idle link: the pinging side (and
    /// either side with a legacy peer) once it has sent nothing for
    /// [`KEEPALIVE_INTERVAL`]; the answering side never on its own (its
    /// pongs are its keepalives; a silent link is pinged by the suspect
    /// rule).
    pub(super) fn keepalive_at(&self) -> Option<Instant> {
        (self.pinger || self.legacy).then(|| {
            self.last_tx
                .map_or(self.first_tx, |t| t + KEEPALIVE_INTERVAL)
        })
    }

    /// When the next suspect ping goes, if the link is being suspected.
    pub(super) fn suspect_at(&self) -> Option<Instant> {
        if !self.udp_ok {
            return None;
        }
        let rx = self.last_rx?;
        let at = (rx + SUSPECT_AFTER).max(self.last_ping.map_or(rx, |p| p + SUSPECT_PING_EVERY));
        (at < rx + LIVENESS_TIMEOUT).then_some(at)
    }
}
