//! Rekey handshakes on the live connection (DESIGN.md "Keys and sessions"
//! → "Rekey"): a fresh XXpsk0 handshake inside sealed `Rekey` records, the
//! leader's rekey winning a race, and the TCP key switch after it.

use super::{
    ControlLink, LinkError, LinkEvent, NewKeys, REKEY_TIMEOUT, Records, Rekey, Stop, Timer,
    check_index, queue_records,
};
use crate::control::proto::{self, ControlMessage, RekeyHello};
use crate::crypto::handshake::{Handshake, SessionKeys};
use crate::crypto::rotation::Rotation;
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
            switching: self.switch.is_some(),
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
                    if ours.initiator && self.leads(records.peer) {
                        tracing::debug!(peer = %records.peer, "both sides started a rekey; ours wins");
                        return Ok(());
                    }
                    records.rekey = None;
                }
                // No replay guard here: the TCP channel is already sealed with
                // counters, so its records cannot be replayed, and a clock that
                // drifts must not break a live connection's rekeys.
                let mut handshake = match self.new_responder(message) {
                    Ok((handshake, _)) => handshake,
                    Err(e) => {
                        // DESIGN.md "Security model": a refused rekey closes
                        // the connection, so a router whose secret was
                        // rotated out loses it at its next rekey. The peer
                        // is told why before the link fails.
                        tracing::warn!(peer = %records.peer, error = %e, "rekey refused: the peer's secret is not one we hold; closing");
                        let close = ControlMessage::Close {
                            reason: format!("rekey refused: {e}"),
                        };
                        queue_records(&mut self.transmit, records, &close);
                        return Err(LinkError::RekeyRefused(e).into());
                    }
                };
                // Made under the current identity: the new one during a switch.
                let switching = self.switch.is_some();
                let local_index = self.indices.next_index();
                let hello = proto::encode_rekey_hello(local_index, self.rotation_for(switching));
                let msg2 = handshake.write_message(&hello).map_err(LinkError::Local)?;
                records.rekey = Some(Rekey {
                    handshake,
                    local_index,
                    initiator: false,
                    switching,
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
                let (theirs, rotation) = read_rekey_hello(&mut rekey.handshake, message)?;
                // The responder's static key came in message 2: checked
                // before we answer.
                let remote = rekey.handshake.remote_public_key();
                let moved = self.check_rekey_key(records, remote, rotation)?;
                rekey.local_index = self.indices.next_index();
                let hello = proto::encode_rekey_hello(
                    rekey.local_index,
                    self.rotation_for(rekey.switching),
                );
                let msg3 = rekey
                    .handshake
                    .write_message(&hello)
                    .map_err(LinkError::Local)?;
                let step3 = ControlMessage::Rekey {
                    step: 3,
                    message: msg3,
                };
                queue_records(&mut self.transmit, records, &step3);
                self.complete_rekey(records, rekey, theirs.session_index, moved, now)
            }
            3 => {
                let Some(mut rekey) = records.rekey.take_if(|r| !r.initiator) else {
                    tracing::debug!(peer = %records.peer, "stale rekey message 3");
                    return Ok(());
                };
                self.timers[Timer::Rekey as usize] = None;
                let (theirs, rotation) = read_rekey_hello(&mut rekey.handshake, message)?;
                let remote = rekey.handshake.remote_public_key();
                let moved = self.check_rekey_key(records, remote, rotation)?;
                self.complete_rekey(records, rekey, theirs.session_index, moved, now)
            }
            _ => Err(LinkError::UnknownRekeyStep { step }.into()),
        }
    }

    /// Installs a rekey's keys: the UDP keys go out as an event; our TCP
    /// send key switches after our `TcpKeySwitch` marker, the receive key
    /// when the peer's marker arrives (TLS 1.3 KeyUpdate). The peer's key
    /// was checked (`check_rekey_key`): `moved` is its switch, if any.
    pub(super) fn complete_rekey(
        &mut self,
        records: &mut Records,
        rekey: Rekey,
        remote_index: u32,
        moved: Option<super::switch::Moved>,
        now: Instant,
    ) -> Result<(), Stop> {
        check_index(remote_index)?;
        if let Some(moved) = moved {
            self.apply_move(records, moved);
        }
        let switching = rekey.switching;
        if switching {
            self.end_switch();
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
        records.sealer_created = now;
        records.pending_opener = Some((tcp_recv, now));
        self.arm_key_expiry(records);
        if switching {
            Ok(())
        } else {
            self.start_waiting_switch(records, now)
        }
    }
}

fn read_rekey_hello(
    handshake: &mut Handshake,
    message: &[u8],
) -> Result<(RekeyHello, Option<Rotation>), LinkError> {
    let payload = handshake
        .read_message(message)
        .map_err(|e| LinkError::BadRekey(e.to_string()))?;
    proto::decode_rekey_hello(&payload).map_err(|e| LinkError::BadRekey(e.to_string()))
}
