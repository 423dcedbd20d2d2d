//! IPAM ring channel messages: ring state, proposals, donation requests,
//! digests (ring version 2).
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::ipam::message::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        if let Message::Ring(ring) = &message {
            // Decoding checked the structure; the invariants must hold.
            ring.check_invariants()
                .expect("a decoded ring satisfies its invariants");
            let _ = ring.owners();
            for owner in ring.owners() {
                let _ = ring.ranges_of(owner);
            }
            let _ = ring.owner_at(0);
            let _ = ring.owner_at(ring.range().size().saturating_sub(1));
        }
        assert_eq!(Message::decode(&message.encode()).ok(), Some(message));
    }
});
