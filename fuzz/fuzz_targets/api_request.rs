//! A request line on the local API socket.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_api::proto::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        let line = serde_json::to_vec(&request).expect("encode what we decoded");
        assert_eq!(serde_json::from_slice::<Request>(&line).ok(), Some(request));
    }
});
