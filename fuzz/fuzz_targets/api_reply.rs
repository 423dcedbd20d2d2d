//! A reply line read from the router's socket by `weft status` and the CNI
//! plugin (`api::proto::Reply` and the result types inside it): decoding
//! never panics, and a decoded reply round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_api::proto::{Allocation, AllocationList, Readiness, Reclaimed, Reply};

fuzz_target!(|data: &[u8]| {
    let Ok(reply) = serde_json::from_slice::<Reply>(data) else {
        return;
    };
    let line = serde_json::to_vec(&reply).expect("encode what we decoded");
    assert_eq!(
        serde_json::from_slice::<Reply>(&line).ok(),
        Some(reply.clone())
    );
    if let Some(result) = reply.result {
        let _ = serde_json::from_value::<Allocation>(result.clone());
        let _ = serde_json::from_value::<AllocationList>(result.clone());
        let _ = serde_json::from_value::<Readiness>(result.clone());
        let _ = serde_json::from_value::<Reclaimed>(result);
    }
});
