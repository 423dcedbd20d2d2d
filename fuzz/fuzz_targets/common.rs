//! Shared helpers for the fuzz targets: a byte reader that turns the fuzzer's
//! input into a sequence of operations without ever failing (short input just
//! yields zeros / empty slices, and the target stops when it runs out).
#![allow(dead_code)]

/// Reads little pieces off the front of the fuzz input.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut out = [0u8; 8];
        for b in &mut out {
            *b = self.u8();
        }
        u64::from_le_bytes(out)
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// A chunk whose length is a u16 prefix.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.take(n)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }
}

/// The per-lane replay window's model (targets `replay_window`,
/// `lane_open`): the marked counters and the highest one; a counter is
/// fresh iff it is at most `COUNTER_LIMIT`, not marked, and not more than
/// `WINDOW` behind the highest.
#[derive(Default)]
pub struct ReplayModel {
    pub marked: std::collections::BTreeSet<u64>,
    pub highest: Option<u64>,
}

impl ReplayModel {
    pub fn fresh(&self, c: u64) -> bool {
        use weft::crypto::{COUNTER_LIMIT, replay::WINDOW};
        if c > COUNTER_LIMIT || self.marked.contains(&c) {
            return false;
        }
        match self.highest {
            None => true,
            Some(h) => c > h || c + WINDOW >= h,
        }
    }

    pub fn mark(&mut self, c: u64) {
        self.marked.insert(c);
        let h = self.highest.map_or(c, |h| h.max(c));
        self.highest = Some(h);
        // Forget what is out of the window for good, to keep the model small.
        if let Some(low) = h.checked_sub(weft::crypto::replay::WINDOW + 1) {
            self.marked = self.marked.split_off(&low);
        }
    }
}

use rand::SeedableRng;
use weft::crypto::{ClusterSecrets, Identity};

/// The fixed cluster the handshake target (and its seed generator) uses:
/// two identities from fixed seeds, one secret, the default range's prologue.
pub struct Cluster {
    pub initiator: Identity,
    pub responder: Identity,
    pub secrets: ClusterSecrets,
    pub prologue: Vec<u8>,
}

pub fn cluster() -> Cluster {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    Cluster {
        initiator: Identity::generate(&mut rng),
        responder: Identity::generate(&mut rng),
        secrets: ClusterSecrets::parse(b"fuzzing-cluster-secret-0123456789abcdef\n")
            .expect("a valid secret"),
        prologue: weft::crypto::prologue("10.32.0.0/12"),
    }
}
