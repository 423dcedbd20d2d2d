//! The IPAM state files in the state dir (`ipam::store::PersistedRing`,
//! `PersistedAllocations`): a router must refuse a corrupt or truncated file
//! with an error, never panic or allocate without bound, and whatever it
//! accepts must encode back to something it accepts again (DESIGN.md "Wire
//! rules": the state-dir format is versioned too).
//!
//! Input: `[selector][8 bytes: the reading router's ID][file bytes…]`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::id::PeerId;
use weft::ipam::store::{PersistedAllocations, PersistedRing};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if rest.len() < 8 {
        return;
    }
    let (id, file) = rest.split_at(8);
    let me = PeerId(u64::from_le_bytes(id.try_into().expect("8 bytes")));
    if selector & 1 == 0 {
        if let Ok(ring) = PersistedRing::decode(file, me) {
            let again = ring.encode();
            let back = PersistedRing::decode(&again, me).expect("re-decode what we encoded");
            assert_eq!(back.encode(), again);
        }
    } else if let Ok(allocations) = PersistedAllocations::decode(file, me) {
        let again = allocations.encode();
        let back = PersistedAllocations::decode(&again, me).expect("re-decode what we encoded");
        assert_eq!(back.encode(), again);
    }
});
