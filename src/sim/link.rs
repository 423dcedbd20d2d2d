//! TCP control links in the simulator (DESIGN.md "Sans-IO cores", "Rekey").
//!
//! [`LinkPair`] joins two [`ControlLink`]s by two byte pipes that model TCP:
//! each direction keeps order and loses nothing, but cuts the stream into
//! chunks anywhere ([`Chunking`]) and delays them by a random amount, with
//! now and then a long stall (a lost segment waiting for its retransmission).
//! The clock is virtual and jumps to the next delivery or deadline; each
//! responder answers message 1 from its own `Msg1Guard` with a virtual wall
//! clock. The unit tests of `control::link` drive single pairs.
//!
//! [`run_links`] runs many pairs (independent routers) with rekeys from both
//! sides every few virtual seconds and a steady stream of messages both
//! ways, some large enough to be fragmented, and checks after every step that
//! no link failed, that every message arrived exactly once and in order, and
//! that the UDP keysets both sides installed match (one side's send key is
//! the other's receive key, under the same pair of indices). A failure names
//! the seed.

use crate::control::link::{ControlLink, LinkConfig, LinkEvent, NewKeys, SessionIndices};
use crate::control::proto::{ControlMessage, FRAGMENT_PIECE, Hello, Versions};
use crate::crypto::freshness::Msg1Guard;
use crate::crypto::handshake::prologue;
use crate::crypto::identity::Identity;
use crate::crypto::secret::ClusterSecrets;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The cluster range every simulated router uses.
pub const RANGE: &str = "10.32.0.0/12";
/// A wall-clock time for the start of a run (2027).
pub const WALL_START: Duration = Duration::from_secs(1_800_000_000);

/// A link configuration for a simulated router: identity and handshake
/// randomness from `seed`, the cluster secret from `secret`.
pub fn link_config(seed: u64, secret: &[u8]) -> LinkConfig {
    let identity = Identity::generate(&mut StdRng::seed_from_u64(seed));
    LinkConfig {
        hello: Hello {
            versions: Versions::OURS,
            name: format!("router-{seed}"),
            short_id: seed as u16,
            listen: ([192, 0, 2, 1], 6783).into(),
            mtu: 1420,
            incarnation: seed,
            session_index: 0,
            cluster_range: RANGE.into(),
        },
        identity,
        secrets: cluster_secrets(secret),
        prologue: prologue(RANGE),
        seed: Some(seed.wrapping_mul(31).wrapping_add(7)),
    }
}

/// Parses one secret line (at least 32 bytes); a bad one is a harness bug.
fn cluster_secrets(secret: &[u8]) -> ClusterSecrets {
    match ClusterSecrets::parse(secret) {
        Ok(secrets) => secrets,
        Err(e) => panic!("simulator secret: {e}"),
    }
}

/// Receiver indices counting up from a base, so that the links of a run
/// never share one.
#[derive(Debug)]
pub struct CountingIndices(pub u32);

impl SessionIndices for CountingIndices {
    fn next_index(&mut self) -> u32 {
        self.0 = (self.0 + 1) & 0x00ff_ffff;
        self.0.max(1)
    }
}

/// Where the byte stream is cut into the chunks `handle_bytes` sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunking {
    /// As the link queued them.
    Whole,
    /// One byte at a time.
    Bytes,
    /// At random points, chunks of 1 to this many bytes.
    Random(usize),
}

/// How one direction of a TCP connection behaves.
#[derive(Clone, Copy, Debug)]
pub struct PipeConfig {
    /// Shortest delay.
    pub min_delay: Duration,
    /// Longest delay (without stalls).
    pub max_delay: Duration,
    /// Probability that a chunk stalls (a lost segment being retransmitted).
    pub stall: f64,
    /// How long a stall adds.
    pub stall_delay: Duration,
    /// Where the stream is cut.
    pub chunking: Chunking,
}

impl PipeConfig {
    /// Immediate delivery of whole writes.
    pub const INSTANT: Self = Self {
        min_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        stall: 0.0,
        stall_delay: Duration::ZERO,
        chunking: Chunking::Whole,
    };
}

/// One direction: chunks in order with their delivery times.
#[derive(Debug)]
struct Pipe {
    config: PipeConfig,
    queue: VecDeque<(Instant, Vec<u8>)>,
    last: Instant,
}

impl Pipe {
    fn push(&mut self, rng: &mut StdRng, now: Instant, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let take = match self.config.chunking {
                Chunking::Whole => rest.len(),
                Chunking::Bytes => 1,
                Chunking::Random(max) => rng.gen_range(1..=max.max(1)).min(rest.len()),
            };
            let (lo, hi) = (self.config.min_delay, self.config.max_delay);
            let mut delay = lo + hi.saturating_sub(lo).mul_f64(rng.gen_range(0.0..1.0));
            if rng.gen_bool(self.config.stall.clamp(0.0, 1.0)) {
                delay += self.config.stall_delay;
            }
            // TCP keeps order: nothing overtakes what went before.
            let at = (now + delay).max(self.last);
            self.last = at;
            self.queue.push_back((at, rest[..take].to_vec()));
            rest = &rest[take..];
        }
    }
}

/// Two links joined by two pipes on a virtual clock. Side 0 dialled.
pub struct LinkPair {
    /// The virtual time.
    pub now: Instant,
    start: Instant,
    /// The links: 0 the initiator, 1 the responder.
    pub links: [ControlLink; 2],
    /// Each side's replay guard.
    pub guards: [Msg1Guard; 2],
    /// What each side reported (admission questions are answered, not kept).
    pub events: [Vec<LinkEvent>; 2],
    /// Bytes each side wrote, in total.
    pub written: [usize; 2],
    /// `pipes[i]` carries what side `i` writes.
    pipes: [Pipe; 2],
    rng: StdRng,
}

impl LinkPair {
    /// A pair whose side 0 dials side 1 at once; `pipes[i]` describes what
    /// side `i` sends.
    pub fn new(seed: u64, configs: [LinkConfig; 2], pipes: [PipeConfig; 2]) -> Self {
        let now = Instant::now();
        let [a, b] = configs;
        let base = (seed as u32 & 0xff) << 16;
        let initiator = ControlLink::initiator(a, Box::new(CountingIndices(base)), now, WALL_START);
        let responder = ControlLink::responder(b, Box::new(CountingIndices(base | 0x8000)), now);
        let pipe = |config| Pipe {
            config,
            queue: VecDeque::new(),
            last: now,
        };
        let mut pair = Self {
            now,
            start: now,
            links: [initiator, responder],
            guards: [Msg1Guard::new(), Msg1Guard::new()],
            events: [Vec::new(), Vec::new()],
            written: [0, 0],
            pipes: pipes.map(pipe),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
        };
        pair.flush();
        pair
    }

    /// The virtual wall clock (since the Unix epoch).
    pub fn wall(&self) -> Duration {
        WALL_START + (self.now - self.start)
    }

    /// Moves what the links queued into the pipes and collects their
    /// events, answering admission questions, until nothing is left.
    pub fn flush(&mut self) {
        loop {
            let mut moved = false;
            for side in 0..2 {
                while let Some(bytes) = self.links[side].poll_transmit() {
                    moved = true;
                    self.written[side] += bytes.len();
                    self.pipes[side].push(&mut self.rng, self.now, &bytes);
                }
                while let Some(event) = self.links[side].poll_event() {
                    moved = true;
                    match event {
                        LinkEvent::Msg1Authenticated { stamp } => {
                            let verdict = self.guards[side].admit(&stamp, self.wall());
                            self.links[side].admit_msg1(self.now, verdict);
                        }
                        other => self.events[side].push(other),
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// When something happens next: a delivery or a deadline.
    pub fn next_time(&self) -> Option<Instant> {
        let deliveries = self
            .pipes
            .iter()
            .filter_map(|p| p.queue.front().map(|c| c.0));
        let timers = self
            .links
            .iter()
            .filter_map(|l| l.poll_timeout().map(|t| t.0));
        deliveries.chain(timers).min()
    }

    /// Advances to `at` (no further than the next event), delivering what
    /// is due and firing deadlines.
    pub fn advance_to(&mut self, at: Instant) {
        self.now = self.now.max(at);
        for side in 0..2 {
            // Random chunking also coalesces: what is due arrives in one read.
            let coalesce = matches!(self.pipes[side].config.chunking, Chunking::Random(_));
            let mut due = Vec::new();
            while self.pipes[side]
                .queue
                .front()
                .is_some_and(|c| c.0 <= self.now)
            {
                if let Some((_, chunk)) = self.pipes[side].queue.pop_front() {
                    if coalesce {
                        due.extend_from_slice(&chunk);
                    } else {
                        self.links[1 - side].handle_bytes(self.now, &chunk);
                    }
                }
            }
            if !due.is_empty() {
                self.links[1 - side].handle_bytes(self.now, &due);
            }
        }
        for link in &mut self.links {
            if link.poll_timeout().is_some_and(|(due, _)| due <= self.now) {
                link.handle_timeout(self.now);
            }
        }
        self.flush();
    }

    /// One step to the next event; false when nothing is pending.
    pub fn step(&mut self) -> bool {
        match self.next_time() {
            Some(at) => {
                self.advance_to(at);
                true
            }
            None => false,
        }
    }

    /// Steps until `until` (or nothing is left), then sets the clock to it.
    pub fn run_until(&mut self, until: Instant) {
        while let Some(at) = self.next_time().filter(|at| *at <= until) {
            self.advance_to(at);
        }
        self.advance_to(until);
    }

    /// Steps until no byte is in flight and no deadline is armed, at most
    /// `max_steps` times; returns the steps taken.
    pub fn settle(&mut self, max_steps: usize) -> usize {
        let mut steps = 0;
        while steps < max_steps && self.step() {
            steps += 1;
        }
        steps
    }

    /// Whether any byte is still in flight.
    pub fn in_flight(&self) -> bool {
        self.pipes.iter().any(|p| !p.queue.is_empty())
    }

    /// Takes the events side `side` reported so far.
    pub fn take_events(&mut self, side: usize) -> Vec<LinkEvent> {
        std::mem::take(&mut self.events[side])
    }
}

/// Whether `a` and `b` are the two halves of one keyset: the same indices
/// crossed, and what one side seals the other opens (both directions).
pub fn keysets_match(a: &NewKeys, b: &NewKeys) -> bool {
    let one_way = |from: &NewKeys, to: &NewKeys| {
        let mut buffer = *b"keyset check";
        let tag = from.send.seal_in_place(3, 9, b"header", &mut buffer);
        to.recv
            .open_in_place(3, 9, b"header", &mut buffer, &tag)
            .is_ok()
            && &buffer == b"keyset check"
    };
    a.local_index == b.remote_index
        && a.remote_index == b.local_index
        && a.initiator != b.initiator
        && one_way(a, b)
        && one_way(b, a)
}

/// What [`run_links`] saw.
#[derive(Debug, Default)]
pub struct LinkRunReport {
    /// Pairs run.
    pub pairs: usize,
    /// Messages delivered (both directions, all pairs).
    pub messages: u64,
    /// Of which large enough to be fragmented.
    pub fragmented: u64,
    /// Keysets installed and matched (per pair: both sides agree).
    pub keysets: u64,
    /// Simulation steps.
    pub steps: u64,
}

/// One side's bookkeeping in [`run_links`].
#[derive(Default)]
struct SideLog {
    sent: u64,
    received: u64,
    keysets: Vec<NewKeys>,
    /// How many keysets (on both sides) were checked already.
    matched: usize,
}

/// Runs `pairs` link pairs for `duration` of virtual time each, as the
/// module docs say, with `large_share` of the messages big enough to be
/// fragmented (slow in debug builds: bincode and the record cipher run
/// unoptimised there); returns what it saw or, on the first broken invariant,
/// a message that names the seed.
pub fn run_links(
    seed: u64,
    pairs: usize,
    duration: Duration,
    large_share: f64,
) -> Result<LinkRunReport, String> {
    let mut report = LinkRunReport {
        pairs,
        ..LinkRunReport::default()
    };
    let mut rng = StdRng::seed_from_u64(seed);
    for index in 0..pairs {
        let pair_seed = rng.r#gen::<u64>();
        run_pair(pair_seed, duration, large_share, &mut report)
            .map_err(|e| format!("seed {seed} (pair {index}, pair seed {pair_seed}): {e}"))?;
    }
    Ok(report)
}

fn random_pipe(rng: &mut StdRng) -> PipeConfig {
    let min_delay = Duration::from_millis(rng.gen_range(0..20));
    PipeConfig {
        min_delay,
        max_delay: min_delay + Duration::from_millis(rng.gen_range(0..300)),
        stall: rng.gen_range(0.0..0.05),
        stall_delay: Duration::from_millis(rng.gen_range(200..1500)),
        chunking: match rng.gen_range(0..4) {
            0 => Chunking::Whole,
            1 => Chunking::Random(64),
            _ => Chunking::Random(3000),
        },
    }
}

fn run_pair(
    seed: u64,
    duration: Duration,
    large_share: f64,
    report: &mut LinkRunReport,
) -> Result<(), String> {
    const SECRET: &[u8] = b"simulated cluster secret, at least 32 bytes";
    let mut rng = StdRng::seed_from_u64(seed);
    let configs = [
        link_config(rng.r#gen(), SECRET),
        link_config(rng.r#gen(), SECRET),
    ];
    let pipes = [random_pipe(&mut rng), random_pipe(&mut rng)];
    let mut pair = LinkPair::new(seed, configs, pipes);
    let mut logs = [SideLog::default(), SideLog::default()];
    let end = pair.now + duration;
    let rekey_every = |rng: &mut StdRng| Duration::from_millis(rng.gen_range(2000..4000));
    let message_every = |rng: &mut StdRng| Duration::from_millis(rng.gen_range(5..150));
    let mut next_rekey = [
        pair.now + rekey_every(&mut rng),
        pair.now + rekey_every(&mut rng),
    ];
    let mut next_message = [pair.now, pair.now];
    let mut steps = 0u64;
    loop {
        steps += 1;
        if steps > 200_000 {
            return Err("step bound reached".into());
        }
        let actions = (0..2)
            .filter(|side| pair.links[*side].is_established())
            .flat_map(|side| [next_rekey[side], next_message[side]])
            .filter(|t| *t < end);
        let Some(at) = pair.next_time().into_iter().chain(actions).min() else {
            break;
        };
        pair.advance_to(at);
        for side in 0..2 {
            if !pair.links[side].is_established() {
                continue;
            }
            if next_rekey[side] <= pair.now && next_rekey[side] < end {
                next_rekey[side] = pair.now + rekey_every(&mut rng);
                let wall = pair.wall();
                pair.links[side]
                    .rekey(pair.now, wall)
                    .map_err(|e| format!("rekey: {e}"))?;
            }
            if next_message[side] <= pair.now && next_message[side] < end {
                next_message[side] = pair.now + message_every(&mut rng);
                let large = rng.gen_bool(large_share);
                let message = numbered(logs[side].sent, large);
                logs[side].sent += 1;
                report.fragmented += u64::from(large);
                pair.links[side]
                    .send(&message)
                    .map_err(|e| format!("send: {e}"))?;
            }
        }
        pair.flush();
        check(&mut pair, &mut logs)?;
    }
    report.steps += steps;
    if pair.in_flight() {
        return Err("bytes still in flight at the end".into());
    }
    for side in 0..2 {
        let (sent, received) = (logs[side].sent, logs[1 - side].received);
        if sent != received {
            return Err(format!(
                "side {side} sent {sent} messages, {received} arrived"
            ));
        }
        report.messages += received;
    }
    let [a, b] = &logs;
    if a.keysets.len() != b.keysets.len() || a.keysets.len() < 2 {
        return Err(format!(
            "keysets: {} on the initiator, {} on the responder",
            a.keysets.len(),
            b.keysets.len()
        ));
    }
    report.keysets += a.keysets.len() as u64;
    Ok(())
}

/// A gossip message carrying its sequence number (and, if `large`, enough
/// padding to need several records).
fn numbered(seq: u64, large: bool) -> ControlMessage {
    let mut payload = seq.to_be_bytes().to_vec();
    if large {
        payload.resize(FRAGMENT_PIECE + 1000, (seq % 251) as u8);
    }
    ControlMessage::Gossip {
        channel: 7,
        payload,
    }
}

/// The invariants after one step: no failure, messages in order and once,
/// keysets that both sides hold match.
fn check(pair: &mut LinkPair, logs: &mut [SideLog; 2]) -> Result<(), String> {
    for (side, log) in logs.iter_mut().enumerate() {
        for event in pair.take_events(side) {
            match event {
                LinkEvent::Up(up) => log.keysets.push(up.keys),
                LinkEvent::Rekeyed(keys) => log.keysets.push(keys),
                LinkEvent::Message(ControlMessage::Gossip { payload, .. }) => {
                    let seq = payload
                        .first_chunk::<8>()
                        .map(|b| u64::from_be_bytes(*b))
                        .ok_or("empty payload")?;
                    let expected = log.received;
                    if seq != expected {
                        return Err(format!(
                            "side {side} got message {seq}, expected {expected}"
                        ));
                    }
                    log.received += 1;
                }
                other => return Err(format!("side {side}: {other:?}")),
            }
        }
    }
    // Keysets complete in the same order on both sides (rekeys never
    // overlap), so the i-th of one side pairs with the i-th of the other.
    let [a, b] = &*logs;
    let paired = a.keysets.len().min(b.keysets.len());
    for i in a.matched.max(b.matched)..paired {
        let (x, y) = (&a.keysets[i], &b.keysets[i]);
        if !keysets_match(x, y) {
            return Err(format!("keyset {i} differs: {x:?} / {y:?}"));
        }
    }
    logs[0].matched = paired;
    logs[1].matched = paired;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pairs_rekey_from_both_sides_under_delay_and_lose_nothing() {
        let started = std::time::Instant::now();
        let report =
            run_links(1, 10, Duration::from_secs(6), 0.0).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.keysets >= 10 * 2, "{report:?}");
        assert!(report.messages > 500, "{report:?}");
        eprintln!("{report:?} in {:?}", started.elapsed());
    }

    /// The full run: 50 pairs for 12 virtual seconds, three seeds. Slow in
    /// debug (each handshake is a few ms of X25519 there); run with
    /// `cargo test --release --lib sim::link -- --ignored`.
    #[test]
    #[ignore]
    fn fifty_link_pairs_for_three_seeds() {
        for seed in [1, 2, 3] {
            let report = run_links(seed, 50, Duration::from_secs(12), 0.01)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                report.keysets >= 50 * 4 && report.fragmented > 0,
                "{report:?}"
            );
        }
    }
}
