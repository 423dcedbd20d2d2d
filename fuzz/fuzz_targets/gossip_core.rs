//! The topology core fed hostile frames from its neighbours, interleaved with
//! connection changes and timers. Everything it sends must decode.
//!
//! Input: a sequence of `[op][args…]`; see the match below.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};
use weft::crypto::SigningKey;
use weft::gossip::message::{Message, TOPOLOGY_VERSION};
use weft::gossip::{Channel, Frame, Gossip, GossipConfig, PeerInfo};

#[path = "common.rs"]
mod common;

pub fn peer(n: u8) -> PeerInfo {
    let identity = common::identity(n);
    PeerInfo {
        id: identity.id(),
        name: format!("node-{n}"),
        public_key: identity.public_key(),
        addresses: vec![std::net::SocketAddr::from(([192, 0, 2, n], 6783))],
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = common::Bytes::new(data);
    let start = Instant::now();
    let mut now = start;
    let me = peer(1);
    let key = SigningKey::from_identity(&common::identity(1));
    let mut core = Gossip::new(me.clone(), key, GossipConfig::default(), 1, now);
    // Peers 2..=5; 2 and 3 start connected.
    let peers: Vec<PeerInfo> = (2..=5).map(peer).collect();
    core.connection_up(peers[0].clone(), true, now);
    core.connection_up(peers[1].clone(), false, now);
    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        let op = input.u8();
        let who = &peers[usize::from(op >> 4) % peers.len()];
        match op % 6 {
            0 => {
                let _ = core.handle_message(who.id, input.chunk(), now);
            }
            1 => {
                // A frame with a valid envelope so the fuzzer reaches the bodies.
                let kind = input.u8() % 5;
                let frame = Frame::build(TOPOLOGY_VERSION, Channel::Topology, kind, input.chunk());
                let _ = core.handle_message(who.id, &frame, now);
            }
            2 => {
                now += Duration::from_millis(u64::from(input.u16()) * 8);
                core.handle_timeout(now);
            }
            3 => core.connection_up(who.clone(), op & 0x08 != 0, now),
            4 => core.connection_down(who.id, now),
            _ => core.set_established(who.id, op & 0x08 != 0, now),
        }
        while let Some((to, bytes)) = core.poll_transmit() {
            assert_ne!(to, me.id, "sent to myself");
            if let Err(e) = Message::decode(&bytes) {
                panic!("sent a frame that does not decode: {e}");
            }
        }
        while core.poll_event().is_some() {}
        let (t, _) = core.poll_timeout().expect("the core always has a timer");
        assert!(t >= start);
        assert_eq!(core.my_entry().id, me.id);
        assert!(
            core.my_entry().validate().is_ok(),
            "my own entry is invalid"
        );
        for (dst, _route) in core.routes().iter() {
            assert_ne!(dst, me.id);
        }
        for entry in core.peers() {
            if let Some(owner) = core.peer_by_short(entry.short_id) {
                assert!(core.entry(owner).is_some());
            }
        }
        let _ = core.cluster_mtu();
    }
});
