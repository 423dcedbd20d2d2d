//! Rekey handshakes on the live connection (DESIGN.md "Keys and sessions"
//! → "Rekey"): a fresh XXpsk0 handshake inside sealed `Rekey` records, the
//! leader's rekey winning a race, and the TCP key switch after it.

use super::{
    ControlLink, LinkError, LinkEvent, NewKeys, REKEY_TIMEOUT, Records, Rekey, Stop, Timer,
    check_index, queue_records,
};
use crate::control::proto::{ControlMessage, RekeyHello};
use crate::crypto::handshake::{Handshake, SessionKeys};
use std::time::{Duration, Instant};

impl ControlLink {
    pub(super) fn start_rekey(
        &mut self,
        records: &mut Records,
        now: Instant,
        wall_clock: Duration,
    ) -> Result<(), Stop> {
        if records.rekey.is_some() {
            return Ok(());
        }
        let (handshake, msg1) = self.new_initiator(wall_clock).map_err(LinkError::Local)?;
        records.rekey = Some(Rekey {
            handshake,
            local_index: 0,
            initiator: true,
        });
        self.timers[Timer::Rekey as usize] = Some(now + REKEY_TIMEOUT);
        let step1 = ControlMessage::Rekey {
            step: 1,
            message: msg1,
        };
        queue_records(&mut self.transmit, records, &step1);
        Ok(())
    }

    /// One rekey message (DESIGN.md "Rekey"). A message for a handshake we
    /// no longer hold (ours timed out, or we answered the peer's instead) is
    /// stale and ignored.
    pub(super) fn handle_rekey(
        &mut self,
        records: &mut Records,
        now: Instant,
        step: u8,
        message: &[u8],
    ) -> Result<(), Stop> {
        match step {
            1 => {
                if let Some(ours) = &records.rekey {
                    // Both sides started: the leader's rekey wins. A rekey we
                    // only answered is one the peer has given up on, since it
                    // starts no second one while the first is in progress.
                    if ours.initiator && self.me.leads(records.peer) {
                        tracing::debug!(peer = %records.peer, "both sides started a rekey; ours wins");
                        return Ok(());
                    }
                    records.rekey = None;
                }
                // No replay guard here: the TCP channel is already sealed with
                // counters, so its records cannot be replayed, and a clock that
                // drifts must not break a live connection's rekeys.
                let Ok((mut handshake, _)) = self.new_responder(message) else {
                    // Where "a refused rekey closes the connection" (DESIGN.md
                    // "Security model") would go: return a `Refused` error.
                    tracing::warn!(peer = %records.peer, "rekey message 1 refused");
                    self.timers[Timer::Rekey as usize] = None;
                    return Ok(());
                };
                let local_index = self.indices.next_index();
                let msg2 = handshake
                    .write_message(&rekey_hello_bytes(local_index))
                    .map_err(LinkError::Local)?;
                records.rekey = Some(Rekey {
                    handshake,
                    local_index,
                    initiator: false,
                });
                self.timers[Timer::Rekey as usize] = Some(now + REKEY_TIMEOUT);
                let step2 = ControlMessage::Rekey {
                    step: 2,
                    message: msg2,
                };
                queue_records(&mut self.transmit, records, &step2);
                Ok(())
            }
            2 => {
                let Some(mut rekey) = records.rekey.take_if(|r| r.initiator) else {
                    tracing::debug!(peer = %records.peer, "stale rekey message 2");
                    return Ok(());
                };
                self.timers[Timer::Rekey as usize] = None;
                let theirs = read_rekey_hello(&mut rekey.handshake, message)?;
                rekey.local_index = self.indices.next_index();
                let msg3 = rekey
                    .handshake
                    .write_message(&rekey_hello_bytes(rekey.local_index))
                    .map_err(LinkError::Local)?;
                let step3 = ControlMessage::Rekey {
                    step: 3,
                    message: msg3,
                };
                queue_records(&mut self.transmit, records, &step3);
                self.complete_rekey(records, rekey, theirs.session_index)
            }
            3 => {
                let Some(mut rekey) = records.rekey.take_if(|r| !r.initiator) else {
                    tracing::debug!(peer = %records.peer, "stale rekey message 3");
                    return Ok(());
                };
                self.timers[Timer::Rekey as usize] = None;
                let theirs = read_rekey_hello(&mut rekey.handshake, message)?;
                self.complete_rekey(records, rekey, theirs.session_index)
            }
            _ => Err(LinkError::UnknownRekeyStep { step }.into()),
        }
    }

    /// Installs a rekey's keys: the UDP keys go out as an event; our TCP
    /// send key switches after our `TcpKeySwitch` marker, the receive key
    /// when the peer's marker arrives (TLS 1.3 KeyUpdate).
    pub(super) fn complete_rekey(
        &mut self,
        records: &mut Records,
        rekey: Rekey,
        remote_index: u32,
    ) -> Result<(), Stop> {
        check_index(remote_index)?;
        if rekey.handshake.remote_public_key() != Some(records.peer_key) {
            return Err(LinkError::RekeyUnderOtherKey.into());
        }
        let SessionKeys {
            tcp_send,
            tcp_recv,
            udp_send,
            udp_recv,
        } = rekey.handshake.finish().map_err(LinkError::Local)?;
        self.events.push_back(LinkEvent::Rekeyed(NewKeys {
            local_index: rekey.local_index,
            remote_index,
            send: udp_send,
            recv: udp_recv,
            initiator: rekey.initiator,
        }));
        queue_records(&mut self.transmit, records, &ControlMessage::TcpKeySwitch);
        records.sealer = tcp_send;
        records.pending_opener = Some(tcp_recv);
        Ok(())
    }
}

fn rekey_hello_bytes(session_index: u32) -> Vec<u8> {
    crate::wire::encode(&RekeyHello { session_index }).unwrap_or_default()
}

fn read_rekey_hello(handshake: &mut Handshake, message: &[u8]) -> Result<RekeyHello, LinkError> {
    let payload = handshake
        .read_message(message)
        .map_err(|e| LinkError::BadRekey(e.to_string()))?;
    crate::wire::decode(&payload).map_err(|e| LinkError::BadRekey(e.to_string()))
}
