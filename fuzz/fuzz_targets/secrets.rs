//! The cluster secret file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::crypto::ClusterSecrets;

fuzz_target!(|data: &[u8]| {
    if let Ok(secrets) = ClusterSecrets::parse(data) {
        let ids: Vec<_> = secrets.ids().collect();
        assert!(!ids.is_empty() && ids.len() <= 2, "{} secrets", ids.len());
        assert_eq!(ids[0], secrets.primary_id());
        if ids.len() == 2 {
            assert_ne!(ids[0], ids[1]);
        }
        // Debug must show IDs only; it must not panic either.
        let _ = format!("{secrets:?}");
    }
});
