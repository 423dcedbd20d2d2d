//! Topology gossip frames: the envelope and the four message bodies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::gossip::Frame;
use weft::gossip::message::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::parse(data) {
        assert_eq!(
            Frame::build(frame.version, frame.channel, frame.kind, frame.body),
            data
        );
    }
    if let Ok(message) = Message::decode(data) {
        if let Message::Update(u) = &message {
            for entry in &u.entries {
                if let Ok(claim) = entry.claim() {
                    let _ = entry.verify(&claim);
                }
            }
        }
        assert_eq!(Message::decode(&message.encode()).ok(), Some(message));
    }
});
