//! IPAM ring channel messages: ring state, proposals, donation requests,
//! digests (ring version 2), and the bucket exchange (ring version 4:
//! bucket digests and deltas, a delta patched onto a ring of its genesis).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use weft::id::PeerId;
use weft::ipam::message::Message;
use weft::ipam::{AddrRange, Ring};

/// A ring the fuzzed deltas are patched onto when their genesis matches
/// (the seed corpus holds deltas of it).
fn base() -> &'static Ring {
    static BASE: OnceLock<Ring> = OnceLock::new();
    BASE.get_or_init(|| {
        let range = AddrRange::parse("10.32.0.0/12").expect("range");
        let voters = [PeerId(1), PeerId(2), PeerId(3)].into();
        Ring::genesis(range, "voters", &voters)
    })
}

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
        if let Message::Buckets(b) = &message {
            let _ = b.differing(base());
        }
        if let Message::Delta(delta) = &message {
            // Decoding checked the delta; a patch either fails or is a ring.
            if let Ok(ring) = delta.patch(base()) {
                ring.check_invariants()
                    .expect("a patched ring satisfies its invariants");
            }
        }
        assert_eq!(Message::decode(&message.encode()).ok(), Some(message));
    }
});
