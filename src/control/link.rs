//! One TCP control connection as a sans-IO state machine (DESIGN.md "Keys
//! and sessions" → "Handshake", "Rekey"; "Sans-IO cores"): the Noise
//! handshake, sealed records both ways with fragmentation and reassembly caps,
//! rekey handshakes on the live connection, the TCP key switch (like TLS
//! 1.3's KeyUpdate) and `Close`. The tokio driver
//! (`super::connection`) only pumps bytes between it and the socket, as
//! quinn's `ConnectionDriver` does for `quinn_proto::Connection`.
//!
//! Owns: the handshake state, the record ciphers (current and pending), the
//! rekey in progress, the reassembly buffer and the two deadlines. Does not
//! own: the socket, the clocks (`now` and the wall clock come in), the
//! message-1 replay guard, the session-index counter shared by all links of
//! a router, or any policy about when to rekey (the control task's).
//!
//! - Input: [`ControlLink::handle_bytes`] (any chunking of the TCP stream),
//!   [`ControlLink::handle_timeout`], [`ControlLink::admit_msg1`], and
//!   [`ControlLink::abort`] for the driver's I/O errors.
//! - Commands: [`ControlLink::send`], [`ControlLink::rekey`],
//!   [`ControlLink::close`].
//! - Output, in this drain order after every input: [`ControlLink::poll_transmit`]
//!   until `None` (write the bytes in order), then [`ControlLink::poll_event`]
//!   until `None` (answering [`LinkEvent::Msg1Authenticated`] may queue bytes:
//!   drain again), then sleep until [`ControlLink::poll_timeout`] while reading
//!   at most [`ControlLink::read_limit`] bytes. After [`LinkEvent::Closed`] or
//!   [`LinkEvent::Failed`] the link ignores every input.
//!
//! **The replay guard stays outside.** A responder's message 1 is read into a
//! fixed [`MSG1_LEN`] buffer and nothing else is copied until it
//! authenticates; then the link asks "admit this stamp?" with
//! [`LinkEvent::Msg1Authenticated`] and does no Diffie-Hellman work until the
//! driver answers with [`ControlLink::admit_msg1`]. The guard is one per
//! router behind a mutex; asking instead of taking `&mut Msg1Guard` keeps
//! `handle_bytes(now, bytes)` free of shared state, lets the driver read its
//! own wall clock for the check, and lets the simulator give each router its
//! own guard.
//!
//! **Session indices** must be unique among all keysets of a router, so
//! they come from a [`SessionIndices`] the driver lends each link (as quinn's
//! endpoint is lent a `ConnectionIdGenerator`).

mod error;
mod handshake;
mod rekey;
#[cfg(test)]
mod tests;

pub use error::{HandshakeFailure, LinkError};

use super::proto::{self, ControlMessage, Hello, MAX_HANDSHAKE_MESSAGE, MAX_RECORD};
use crate::crypto::data::DataKey;
use crate::crypto::frame::{FrameOpener, FrameSealer};
use crate::crypto::freshness::Msg1Refused;
use crate::crypto::handshake::{Handshake, MSG1_LEN, Msg1Stamp};
use crate::crypto::identity::Identity;
use crate::crypto::secret::ClusterSecrets;
use crate::id::PeerId;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Time allowed for a whole handshake (DESIGN.md: 10 s to finish).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a rekey handshake; after it the current keys stay.
pub const REKEY_TIMEOUT: Duration = HANDSHAKE_TIMEOUT;
/// What the driver reads at most per call once message 1 is through.
pub const READ_CHUNK: usize = 16 * 1024;
/// Largest receiver index (24 bits; the low byte of the header's field is
/// the lane).
const MAX_SESSION_INDEX: u32 = 0x00ff_ffff;

/// Hands out receiver indices: 24 bits, never 0, unique among the live
/// keysets of this router (shared by all its links, hence lent by the driver).
pub trait SessionIndices: Send {
    /// The next fresh index.
    fn next_index(&mut self) -> u32;
}

/// What a link needs to know about this router.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Our static identity.
    pub identity: Identity,
    /// The cluster secrets (the driver refreshes them with
    /// [`ControlLink::set_secrets`] when the file is reloaded).
    pub secrets: ClusterSecrets,
    /// The Noise prologue (binds the cluster range).
    pub prologue: Vec<u8>,
    /// Our hello; `session_index` is filled per handshake.
    pub hello: Hello,
    /// Draws the ephemeral keys from this seed instead of the OS RNG
    /// (simulator and tests only).
    pub seed: Option<u64>,
}

/// UDP keys from one handshake, with the indices that name them.
#[derive(Debug)]
pub struct NewKeys {
    /// Our receiver index for this keyset.
    pub local_index: u32,
    /// The peer's receiver index for it.
    pub remote_index: u32,
    /// Our UDP send key.
    pub send: DataKey,
    /// Our UDP receive key.
    pub recv: DataKey,
    /// Whether we were the handshake's initiator.
    pub initiator: bool,
}

/// The peer of a link whose first handshake completed.
#[derive(Debug)]
pub struct Established {
    /// The peer's ID (from its static key).
    pub peer: PeerId,
    /// The peer's static public key.
    pub public_key: [u8; 32],
    /// What the peer said about itself.
    pub hello: Hello,
    /// The UDP keys.
    pub keys: NewKeys,
}

/// Who closed a link in order, and the reason given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// We sent `Close` ([`ControlLink::close`]).
    ByUs(String),
    /// The peer sent `Close`.
    ByPeer(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ByUs(reason) => write!(f, "closed: {reason}"),
            Self::ByPeer(reason) => write!(f, "peer closed: {reason}"),
        }
    }
}

/// What the link reports, in order.
#[derive(Debug)]
pub enum LinkEvent {
    /// Responder only: message 1 authenticated. Check the stamp against the
    /// replay guard and answer with [`ControlLink::admit_msg1`].
    Msg1Authenticated {
        /// Its time and ephemeral key.
        stamp: Msg1Stamp,
    },
    /// The first handshake completed.
    Up(Established),
    /// A rekey handshake completed: new UDP keys.
    Rekeyed(NewKeys),
    /// A control message for the control task.
    Message(ControlMessage),
    /// The link ended in order (final).
    Closed(CloseReason),
    /// The link failed (final).
    Failed(LinkError),
}

/// Why the link wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The handshake's deadline.
    Handshake = 0,
    /// The rekey in progress's deadline.
    Rekey = 1,
}

/// Where the link is.
enum Phase {
    /// Responder: collecting message 1 in a fixed buffer.
    AwaitMsg1 { buf: [u8; MSG1_LEN], have: usize },
    /// Responder: message 1 authenticated; waiting for the driver's verdict.
    AwaitAdmission { handshake: Box<Handshake> },
    /// Initiator: message 1 sent.
    AwaitMsg2 { handshake: Box<Handshake> },
    /// Responder: message 2 sent.
    AwaitMsg3 {
        handshake: Box<Handshake>,
        local_index: u32,
    },
    /// Sealed records both ways.
    Up(Box<Records>),
    /// Closed or failed.
    Ended,
}

/// The established connection's record state.
struct Records {
    peer: PeerId,
    peer_key: [u8; 32],
    sealer: FrameSealer,
    opener: FrameOpener,
    /// The receive key of the last rekey, until the peer's `TcpKeySwitch`.
    pending_opener: Option<FrameOpener>,
    rekey: Option<Rekey>,
    reassembly: proto::Reassembly,
}

/// A rekey handshake in progress.
struct Rekey {
    handshake: Handshake,
    local_index: u32,
    initiator: bool,
}

/// How handling a record or command ends the link.
enum Stop {
    Failed(LinkError),
    Closed(CloseReason),
}

impl From<LinkError> for Stop {
    fn from(error: LinkError) -> Self {
        Self::Failed(error)
    }
}

/// One TCP control connection. See the module docs.
pub struct ControlLink {
    config: LinkConfig,
    indices: Box<dyn SessionIndices>,
    me: PeerId,
    initiator: bool,
    phase: Phase,
    /// Received bytes not yet parsed (never message 1's).
    inbuf: Vec<u8>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<LinkEvent>,
    timers: [Option<Instant>; 2],
    /// Handshakes started, to derive per-handshake seeds.
    handshakes: u64,
}

impl fmt::Debug for ControlLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlLink")
            .field("me", &self.me)
            .field("initiator", &self.initiator)
            .field("established", &self.is_established())
            .field("rekeying", &self.is_rekeying())
            .finish_non_exhaustive()
    }
}

impl ControlLink {
    /// A link that dialled: message 1 (timestamped `wall_clock`, the time
    /// since the Unix epoch) is queued at once.
    pub fn initiator(
        config: LinkConfig,
        indices: Box<dyn SessionIndices>,
        now: Instant,
        wall_clock: Duration,
    ) -> Self {
        let mut link = Self::new(config, indices, now, true);
        match link.new_initiator(wall_clock) {
            Ok((handshake, msg1)) => {
                link.transmit.push_back(msg1);
                link.phase = Phase::AwaitMsg2 {
                    handshake: Box::new(handshake),
                };
            }
            Err(e) => link.stop(Stop::Failed(LinkError::Local(e))),
        }
        link
    }

    /// A link that was accepted: it waits for message 1.
    pub fn responder(config: LinkConfig, indices: Box<dyn SessionIndices>, now: Instant) -> Self {
        let mut link = Self::new(config, indices, now, false);
        link.phase = Phase::AwaitMsg1 {
            buf: [0; MSG1_LEN],
            have: 0,
        };
        link
    }

    fn new(
        config: LinkConfig,
        indices: Box<dyn SessionIndices>,
        now: Instant,
        initiator: bool,
    ) -> Self {
        let mut timers = [None; 2];
        timers[Timer::Handshake as usize] = Some(now + HANDSHAKE_TIMEOUT);
        Self {
            me: config.identity.id(),
            config,
            indices,
            initiator,
            phase: Phase::Ended,
            inbuf: Vec::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            timers,
            handshakes: 0,
        }
    }

    /// Replaces the cluster secrets for the handshakes started from now on.
    pub fn set_secrets(&mut self, secrets: ClusterSecrets) {
        self.config.secrets = secrets;
    }

    /// Whether the first handshake completed and the link has not ended.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Up(_))
    }

    /// Whether a rekey handshake is in progress.
    pub fn is_rekeying(&self) -> bool {
        matches!(&self.phase, Phase::Up(records) if records.rekey.is_some())
    }

    /// Whether the link closed or failed.
    pub fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }

    /// How many bytes the driver may read next: exactly what is left of
    /// message 1 until it authenticates (DESIGN.md: read at most its fixed
    /// size), nothing while its admission is pending or after the end.
    pub fn read_limit(&self) -> usize {
        match &self.phase {
            Phase::AwaitMsg1 { have, .. } => MSG1_LEN - have,
            Phase::AwaitAdmission { .. } | Phase::Ended => 0,
            _ => READ_CHUNK,
        }
    }

    /// Feeds bytes read from the socket, in any chunking.
    pub fn handle_bytes(&mut self, now: Instant, mut bytes: &[u8]) {
        if let Phase::AwaitMsg1 { buf, have } = &mut self.phase {
            let take = (MSG1_LEN - *have).min(bytes.len());
            buf[*have..*have + take].copy_from_slice(&bytes[..take]);
            *have += take;
            bytes = &bytes[take..];
            if *have < MSG1_LEN {
                return;
            }
            let msg1 = *buf;
            self.handle_msg1(&msg1);
        }
        if self.is_ended() || bytes.is_empty() {
            return;
        }
        self.inbuf.extend_from_slice(bytes);
        self.process(now);
    }

    /// The driver's verdict on the stamp of [`LinkEvent::Msg1Authenticated`]
    /// (from `Msg1Guard::admit`). Admitted: message 2 is queued. Ignored in
    /// any other phase.
    pub fn admit_msg1(&mut self, now: Instant, verdict: Result<(), Msg1Refused>) {
        let mut handshake = match std::mem::replace(&mut self.phase, Phase::Ended) {
            Phase::AwaitAdmission { handshake } => handshake,
            other => {
                self.phase = other;
                return;
            }
        };
        match verdict {
            Err(Msg1Refused::Replayed) => self.stop(Stop::Failed(LinkError::Replayed)),
            Err(skew) => self.stop(Stop::Failed(LinkError::ClockSkew(skew))),
            Ok(()) => {
                let local_index = self.indices.next_index();
                match handshake.write_message(&self.hello_bytes(local_index)) {
                    Ok(msg2) => {
                        self.phase = Phase::AwaitMsg3 {
                            handshake,
                            local_index,
                        };
                        self.queue_short_frame(&msg2);
                        self.process(now);
                    }
                    Err(e) => self.stop(Stop::Failed(LinkError::Local(e))),
                }
            }
        }
    }

    /// Seals and queues a control message (in fragments if it is large).
    pub fn send(&mut self, message: &ControlMessage) -> Result<(), LinkError> {
        let Phase::Up(records) = &mut self.phase else {
            return Err(LinkError::NotEstablished);
        };
        queue_records(&mut self.transmit, records, message);
        Ok(())
    }

    /// Starts a rekey handshake as initiator, its message 1 timestamped
    /// `wall_clock`; does nothing while one is in progress.
    pub fn rekey(&mut self, now: Instant, wall_clock: Duration) -> Result<(), LinkError> {
        self.with_records(|link, records| link.start_rekey(records, now, wall_clock))
    }

    /// Sends `Close` (when established) and ends the link in order.
    pub fn close(&mut self, reason: &str) {
        if let Phase::Up(records) = &mut self.phase {
            let close = ControlMessage::Close {
                reason: reason.to_string(),
            };
            queue_records(&mut self.transmit, records, &close);
        }
        if !self.is_ended() {
            self.stop(Stop::Closed(CloseReason::ByUs(reason.to_string())));
        }
    }

    /// Ends the link with an error the driver met (I/O, a write timeout).
    pub fn abort(&mut self, error: LinkError) {
        if !self.is_ended() {
            self.stop(Stop::Failed(error));
        }
    }

    /// Fires the deadlines that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers[Timer::Handshake as usize].is_some_and(|t| now >= t) {
            self.stop(Stop::Failed(LinkError::HandshakeTimeout));
            return;
        }
        if self.timers[Timer::Rekey as usize].is_some_and(|t| now >= t) {
            self.timers[Timer::Rekey as usize] = None;
            if let Phase::Up(records) = &mut self.phase
                && records.rekey.take().is_some()
            {
                tracing::warn!(peer = %records.peer, "rekey handshake timed out; keeping the current keys");
            }
        }
    }

    /// The next bytes to write to the socket, in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline and what it is for.
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        [Timer::Handshake, Timer::Rekey]
            .into_iter()
            .filter_map(|timer| self.timers[timer as usize].map(|at| (at, timer)))
            .min_by_key(|(at, _)| *at)
    }

    /// Parses whole frames from `inbuf` until none is left or the link ends.
    fn process(&mut self, now: Instant) {
        loop {
            let short = match &self.phase {
                Phase::AwaitMsg2 { .. } | Phase::AwaitMsg3 { .. } => true,
                Phase::Up(_) => false,
                Phase::AwaitAdmission { .. } => {
                    if !self.inbuf.is_empty() {
                        let len = self.inbuf.len();
                        self.stop(Stop::Failed(LinkError::UnexpectedBytes { len }));
                    }
                    return;
                }
                Phase::AwaitMsg1 { .. } | Phase::Ended => return,
            };
            let frame = match self.next_frame(short) {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => return self.stop(Stop::Failed(e)),
            };
            match std::mem::replace(&mut self.phase, Phase::Ended) {
                Phase::AwaitMsg2 { handshake } => self.handle_msg2(*handshake, &frame),
                Phase::AwaitMsg3 {
                    handshake,
                    local_index,
                } => self.handle_msg3(*handshake, local_index, &frame),
                Phase::Up(mut records) => match self.handle_record(&mut records, now, &frame) {
                    Ok(()) => self.phase = Phase::Up(records),
                    Err(stop) => self.stop(stop),
                },
                other => self.phase = other,
            }
        }
    }

    /// Takes one frame off `inbuf`: a u16 length prefix during the
    /// handshake, u32 for records; the length is checked before anything
    /// more is buffered for it.
    fn next_frame(&mut self, short: bool) -> Result<Option<Vec<u8>>, LinkError> {
        let (prefix, len) = if short {
            let Some(len) = self.inbuf.first_chunk::<2>() else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes(*len));
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(LinkError::HandshakeMessageTooLong { len });
            }
            (2, len)
        } else {
            let Some(len) = self.inbuf.first_chunk::<4>() else {
                return Ok(None);
            };
            let len = u32::from_be_bytes(*len) as usize;
            if len > MAX_RECORD {
                return Err(LinkError::RecordTooLong { len });
            }
            (4, len)
        };
        if self.inbuf.len() < prefix + len {
            return Ok(None);
        }
        let frame = self.inbuf[prefix..prefix + len].to_vec();
        self.inbuf.drain(..prefix + len);
        Ok(Some(frame))
    }

    fn handle_record(
        &mut self,
        records: &mut Records,
        now: Instant,
        record: &[u8],
    ) -> Result<(), Stop> {
        let plaintext = records.opener.open(record).map_err(LinkError::BadRecord)?;
        let mut message = proto::decode_message(&plaintext).map_err(LinkError::BadMessage)?;
        if let ControlMessage::Fragment { last, bytes } = &message {
            match records
                .reassembly
                .push(*last, bytes)
                .map_err(LinkError::BadFragments)?
            {
                Some(whole) => message = whole,
                None => return Ok(()),
            }
        }
        match message {
            ControlMessage::Rekey { step, message } => {
                self.handle_rekey(records, now, step, &message)
            }
            ControlMessage::TcpKeySwitch => {
                records.opener = records
                    .pending_opener
                    .take()
                    .ok_or(LinkError::KeySwitchWithoutRekey)?;
                Ok(())
            }
            ControlMessage::Close { reason } => Err(Stop::Closed(CloseReason::ByPeer(reason))),
            other => {
                self.events.push_back(LinkEvent::Message(other));
                Ok(())
            }
        }
    }

    /// Runs a command on the established link's records.
    fn with_records(
        &mut self,
        f: impl FnOnce(&mut Self, &mut Records) -> Result<(), Stop>,
    ) -> Result<(), LinkError> {
        let mut records = match std::mem::replace(&mut self.phase, Phase::Ended) {
            Phase::Up(records) => records,
            other => {
                self.phase = other;
                return Err(LinkError::NotEstablished);
            }
        };
        match f(self, &mut records) {
            Ok(()) => self.phase = Phase::Up(records),
            Err(stop) => self.stop(stop),
        }
        Ok(())
    }

    /// Ends the link: final event, no more timers, no more input.
    fn stop(&mut self, stop: Stop) {
        self.phase = Phase::Ended;
        self.timers = [None; 2];
        self.inbuf = Vec::new();
        self.events.push_back(match stop {
            Stop::Failed(e) => LinkEvent::Failed(e),
            Stop::Closed(reason) => LinkEvent::Closed(reason),
        });
    }
}

/// Seals `message` into records (fragments when large), each behind its
/// u32 length, and queues them.
fn queue_records(
    transmit: &mut VecDeque<Vec<u8>>,
    records: &mut Records,
    message: &ControlMessage,
) {
    for plaintext in proto::encode_records(message) {
        let sealed = records.sealer.seal(&plaintext);
        let mut out = Vec::with_capacity(4 + sealed.len());
        // A record is at most MAX_RECORD bytes, far below u32::MAX.
        out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        out.extend_from_slice(&sealed);
        transmit.push_back(out);
    }
}

fn check_index(index: u32) -> Result<(), LinkError> {
    if index == 0 || index > MAX_SESSION_INDEX {
        return Err(LinkError::InvalidSessionIndex { index });
    }
    Ok(())
}
