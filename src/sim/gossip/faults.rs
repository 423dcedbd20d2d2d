//! The simulation's faults (crashes, restarts, partitions, blocked UDP,
//! hostile bytes) and what a test reads of its routers.

use super::GossipSim;
use crate::crypto::SigningKey;
use crate::gossip::{ConnectionMaker, Gossip};
use crate::id::PeerId;
use rand::Rng;

impl GossipSim {
    /// Crashes router `i`: its connections go down at the other ends.
    pub fn kill(&mut self, i: usize) {
        self.routers[i].gossip = None;
        self.net.drop_node(i);
        let links: Vec<(usize, usize)> = self
            .links
            .iter()
            .copied()
            .filter(|(a, b)| *a == i || *b == i)
            .collect();
        for (a, b) in links {
            self.link_down(a, b);
        }
    }

    /// Restarts router `i` with the same identity and empty state.
    pub fn restart(&mut self, i: usize) {
        if self.routers[i].gossip.is_some() {
            self.kill(i);
        }
        let info = self.routers[i].info.clone();
        self.routers[i].maker = ConnectionMaker::with_config(
            info.addresses.clone(),
            self.seeds.clone(),
            self.rng.r#gen(),
            self.config.maker.clone(),
        );
        self.routers[i].gossip = Some(Gossip::new(
            info,
            SigningKey::from_identity(&self.routers[i].identity),
            self.config.gossip.clone(),
            self.rng.r#gen(),
            self.now,
        ));
        self.drain(i, true);
    }

    /// Splits the network; connections across the cut go down.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        self.net.partition(groups);
        let cut: Vec<(usize, usize)> = self
            .links
            .iter()
            .copied()
            .filter(|(a, b)| !self.net.can_talk(*a, *b))
            .collect();
        for (a, b) in cut {
            self.link_down(a, b);
        }
    }

    /// Heals every partition (the connection makers redial).
    pub fn heal(&mut self) {
        self.net.heal();
    }

    /// Blocks or unblocks UDP between `a` and `b`: the connection stays up
    /// but is not established.
    pub fn set_udp_blocked(&mut self, a: usize, b: usize, blocked: bool) {
        let key = (a.min(b), a.max(b));
        if blocked {
            self.udp_blocked.insert(key);
        } else {
            self.udp_blocked.remove(&key);
        }
        if self.links.contains(&key) {
            self.set_established(key.0, key.1, !blocked);
        }
    }

    /// Sets the share of dials that fail although the target is up (1.0:
    /// a cluster-wide outage of the underlay).
    pub fn set_dial_failure(&mut self, share: f64) {
        self.config.dial_failure = share;
    }

    /// The longest one-way delay of the network.
    pub fn net_max_delay(&self) -> std::time::Duration {
        self.config.net.max_delay
    }

    /// Router `i`'s gossip core (panics if crashed: a test bug).
    pub fn gossip(&self, i: usize) -> &Gossip {
        self.routers[i]
            .gossip
            .as_ref()
            .unwrap_or_else(|| panic!("router {i} is down"))
    }

    /// Router `i`'s id.
    pub fn id(&self, i: usize) -> PeerId {
        self.routers[i].info.id
    }

    /// The number of connections router `i` holds (its connection maker's view).
    pub fn connections_of(&self, i: usize) -> usize {
        self.routers[i].maker.connection_count()
    }

    /// Number of live connections.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Delivers raw bytes to router `to` as if from `from` (which must be
    /// connected): for hostile-input tests.
    pub fn inject(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let from_id = self.id(from);
        if let Some(g) = self.routers[to].gossip.as_mut() {
            let _ = g.handle_message(from_id, bytes, self.now);
        }
        self.drain(to, false);
    }
}
