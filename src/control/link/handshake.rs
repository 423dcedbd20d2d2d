//! The link's first handshake (DESIGN.md "Keys and sessions" → "Handshake"):
//! message 1 authenticated before anything else is read, the hello checks,
//! and the switch to sealed records. Ephemeral keys come from the OS, or
//! from the configured seed in the simulator.

use super::{
    ControlLink, Established, LinkError, LinkEvent, NewKeys, Phase, Records, Stop, Timer,
    check_index,
};
use crate::control::proto::{self, Hello};
use crate::crypto::handshake::{Handshake, HandshakeError, Msg1Stamp, SessionKeys};
use crate::id::PeerId;
use std::time::{Duration, Instant};

impl ControlLink {
    pub(super) fn handle_msg1(&mut self, msg1: &[u8]) {
        match self.new_responder(msg1) {
            Ok((handshake, stamp)) => {
                self.phase = Phase::AwaitAdmission {
                    handshake: Box::new(handshake),
                };
                self.events
                    .push_back(LinkEvent::Msg1Authenticated { stamp });
            }
            // Nothing goes back to a router without the secret.
            Err(e) => self.stop(Stop::Failed(LinkError::Refused(e))),
        }
    }

    pub(super) fn handle_msg2(&mut self, handshake: Handshake, now: Instant, msg2: &[u8]) {
        if let Err(e) = self.answer_msg2(handshake, now, msg2) {
            self.stop(Stop::Failed(e));
        }
    }

    pub(super) fn answer_msg2(
        &mut self,
        mut handshake: Handshake,
        now: Instant,
        msg2: &[u8],
    ) -> Result<(), LinkError> {
        // Message 2 failing to authenticate: the responder has another secret.
        let payload = handshake.read_message(msg2).map_err(LinkError::Refused)?;
        let hello = self.read_hello(&payload)?;
        let local_index = self.indices.next_index();
        let msg3 = handshake
            .write_message(&self.hello_bytes(local_index))
            .map_err(LinkError::Local)?;
        self.queue_short_frame(&msg3);
        self.establish(handshake, hello, local_index, now)
    }

    pub(super) fn handle_msg3(
        &mut self,
        mut handshake: Handshake,
        local_index: u32,
        now: Instant,
        msg3: &[u8],
    ) {
        let result = handshake
            .read_message(msg3)
            .map_err(LinkError::BadHandshakeMessage)
            .and_then(|payload| self.read_hello(&payload))
            .and_then(|hello| self.establish(handshake, hello, local_index, now));
        if let Err(e) = result {
            self.stop(Stop::Failed(e));
        }
    }

    /// Decodes and checks the peer's hello (before the keys are derived).
    pub(super) fn read_hello(&self, payload: &[u8]) -> Result<Hello, LinkError> {
        let hello: Hello = crate::wire::decode(payload).map_err(LinkError::BadHello)?;
        let ours = &self.config.hello.cluster_range;
        if hello.cluster_range != *ours {
            return Err(LinkError::Incompatible(format!(
                "{} uses cluster range {}, we use {ours}",
                hello.name, hello.cluster_range
            )));
        }
        check_index(hello.session_index)?;
        Ok(hello)
    }

    pub(super) fn establish(
        &mut self,
        handshake: Handshake,
        hello: Hello,
        local_index: u32,
        now: Instant,
    ) -> Result<(), LinkError> {
        let public_key = handshake
            .remote_public_key()
            .ok_or(LinkError::BadHandshakeMessage(HandshakeError::Malformed))?;
        let keys = handshake.finish().map_err(LinkError::Local)?;
        if public_key == self.config.identity.public_key() {
            return Err(LinkError::SelfConnection);
        }
        if let Some(channel) = self
            .config
            .hello
            .versions
            .incompatible_channel(&hello.versions)
        {
            return Err(LinkError::Incompatible(format!(
                "no common {channel} version with {}",
                hello.name
            )));
        }
        let SessionKeys {
            tcp_send,
            tcp_recv,
            udp_send,
            udp_recv,
        } = keys;
        let peer = PeerId::from_public_key(&public_key);
        let records = Records {
            peer,
            peer_key: public_key,
            sealer: tcp_send,
            sealer_created: now,
            opener: tcp_recv,
            opener_created: now,
            pending_opener: None,
            rekey: None,
            reassembly: proto::Reassembly::default(),
            live_rotation: hello.versions.control.max >= proto::CONTROL_LIVE_ROTATION_VERSION,
        };
        self.timers[Timer::Handshake as usize] = None;
        self.arm_key_expiry(&records);
        self.phase = Phase::Up(Box::new(records));
        let keys = NewKeys {
            local_index,
            remote_index: hello.session_index,
            send: udp_send,
            recv: udp_recv,
            initiator: self.initiator,
        };
        self.events.push_back(LinkEvent::Up(Established {
            peer,
            public_key,
            hello,
            keys,
        }));
        Ok(())
    }

    pub(super) fn next_seed(&mut self) -> Option<u64> {
        self.handshakes += 1;
        let n = self.handshakes;
        self.config
            .seed
            .map(|seed| seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    pub(super) fn new_initiator(
        &mut self,
        wall_clock: Duration,
    ) -> Result<(Handshake, Vec<u8>), HandshakeError> {
        let seed = self.next_seed();
        let c = &self.config;
        match seed {
            Some(seed) => {
                Handshake::initiator_seeded(&c.identity, &c.secrets, &c.prologue, wall_clock, seed)
            }
            None => Handshake::initiator(&c.identity, &c.secrets, &c.prologue, wall_clock),
        }
    }

    pub(super) fn new_responder(
        &mut self,
        msg1: &[u8],
    ) -> Result<(Handshake, Msg1Stamp), HandshakeError> {
        let seed = self.next_seed();
        let c = &self.config;
        match seed {
            Some(seed) => {
                Handshake::responder_seeded(&c.identity, &c.secrets, &c.prologue, msg1, seed)
            }
            None => Handshake::responder(&c.identity, &c.secrets, &c.prologue, msg1),
        }
    }

    pub(super) fn hello_bytes(&self, session_index: u32) -> Vec<u8> {
        let mut hello = self.config.hello.clone();
        hello.session_index = session_index;
        crate::wire::encode(&hello).unwrap_or_default()
    }

    /// Queues a handshake message 2 or 3 behind its u16 length.
    pub(super) fn queue_short_frame(&mut self, message: &[u8]) {
        // `Handshake::write_message` never makes more than 65535 bytes.
        let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
        let mut out = Vec::with_capacity(2 + message.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(message);
        self.transmit.push_back(out);
    }
}
