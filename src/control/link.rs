//! One TCP control connection as a sans-IO state machine (DESIGN.md "Keys
//! and sessions" → "Handshake", "Rekey"; "Sans-IO cores"): the Noise
//! handshake, sealed records both ways with fragmentation and reassembly caps,
//! rekey handshakes on the live connection, the TCP key switch (like TLS
//! 1.3's KeyUpdate) and `Close`. The tokio driver
//! (`super::connection`) only pumps bytes between it and the socket, as
//! quinn's `ConnectionDriver` does for `quinn_proto::Connection`.
//!
//! Owns: the handshake state, the record ciphers (current and pending) with
//! the instant each was derived, the rekey in progress, the reassembly buffer
//! and the three deadlines. No record key outlives [`REJECT_AFTER`]: the link
//! fails with [`LinkError::KeysExpired`] first (DESIGN.md "Security model":
//! a router whose secret was rotated out must not keep its TCP channel), and
//! a rekey the peer cannot answer under our secrets fails it at once
//! ([`LinkError::RekeyRefused`]). Does not
//! own: the socket, the clocks (`now` and the wall clock come in), the
//! message-1 replay guard, the session-index counter shared by all links of
//! a router, or any policy about when to rekey (the control task's).
//!
//! - Input: [`ControlLink::handle_bytes`] (any chunking of the TCP stream),
//!   [`ControlLink::handle_timeout`], [`ControlLink::admit_msg1`], and
//!   [`ControlLink::abort`] for the driver's I/O errors.
//! - Commands: [`ControlLink::send`], [`ControlLink::rekey`],
//!   [`ControlLink::switch_identity`], [`ControlLink::close`].
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
mod interface;
mod rekey;
mod switch;
#[cfg(test)]
mod tests;

pub use error::{HandshakeFailure, LinkError};
pub use interface::{
    CloseReason, Established, HANDSHAKE_TIMEOUT, LinkConfig, LinkEvent, NewKeys, READ_CHUNK,
    REKEY_TIMEOUT, SessionIndices, SwitchOutcome, Timer,
};

use super::proto::{self, ControlMessage, MAX_HANDSHAKE_MESSAGE, MAX_RECORD};
use crate::crypto::frame::{FrameOpener, FrameSealer};
use crate::crypto::freshness::Msg1Refused;
use crate::crypto::handshake::{Handshake, MSG1_LEN};
use crate::crypto::secret::ClusterSecrets;
pub use crate::crypto::session::REJECT_AFTER;
use crate::id::PeerId;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Largest receiver index (24 bits; the low byte of the header's field is
/// the lane).
const MAX_SESSION_INDEX: u32 = 0x00ff_ffff;

/// How many [`Timer`]s there are.
const TIMERS: usize = 3;

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
    /// When the handshake that derived `sealer` finished.
    sealer_created: Instant,
    opener: FrameOpener,
    /// When the handshake that derived `opener` finished.
    opener_created: Instant,
    /// The receive key of the last rekey (and when it was derived), until
    /// the peer's `TcpKeySwitch`.
    pending_opener: Option<(FrameOpener, Instant)>,
    rekey: Option<Rekey>,
    reassembly: proto::Reassembly,
    /// Whether the peer's build follows a live identity switch.
    live_rotation: bool,
}

/// A rekey handshake in progress.
struct Rekey {
    handshake: Handshake,
    local_index: u32,
    initiator: bool,
    /// Made under the identity of a switch in progress: its hello carries
    /// the announcement and its completion completes the switch.
    switching: bool,
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
    timers: [Option<Instant>; TIMERS],
    /// Handshakes started, to derive per-handshake seeds.
    handshakes: u64,
    /// Our identity switch, from its start until a rekey under the new key
    /// completes.
    switch: Option<switch::Switch>,
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
        let mut timers = [None; TIMERS];
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
            switch: None,
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
        if self.timers[Timer::KeyExpiry as usize].is_some_and(|t| now >= t) {
            if let Phase::Up(records) = &self.phase {
                tracing::warn!(peer = %records.peer, "record keys reached their reject age without a rekey; closing");
            }
            self.stop(Stop::Failed(LinkError::KeysExpired));
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
        [Timer::Handshake, Timer::Rekey, Timer::KeyExpiry]
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
                Phase::AwaitMsg2 { handshake } => self.handle_msg2(*handshake, now, &frame),
                Phase::AwaitMsg3 {
                    handshake,
                    local_index,
                } => self.handle_msg3(*handshake, local_index, now, &frame),
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
                let (opener, created) = records
                    .pending_opener
                    .take()
                    .ok_or(LinkError::KeySwitchWithoutRekey)?;
                records.opener = opener;
                records.opener_created = created;
                self.arm_key_expiry(records);
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

    /// Arms [`Timer::KeyExpiry`] for the older of the two record keys in
    /// use (a pending receive key is younger than both).
    fn arm_key_expiry(&mut self, records: &Records) {
        let oldest = records.sealer_created.min(records.opener_created);
        self.timers[Timer::KeyExpiry as usize] = Some(oldest + REJECT_AFTER);
    }

    /// Ends the link: final event, no more timers, no more input.
    fn stop(&mut self, stop: Stop) {
        self.phase = Phase::Ended;
        self.timers = [None; TIMERS];
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
