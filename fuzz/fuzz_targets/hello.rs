//! The handshake payloads: `Hello` (messages 2 and 3) and `RekeyHello`,
//! with the identity rotation a live key switch appends to it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft::control::proto::{Hello, RekeyHello, Versions};

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = weft::wire::decode::<Hello>(data) {
        let _ = hello.versions.incompatible_channel(&Versions::OURS);
        let _ = Versions::OURS.incompatible_channel(&hello.versions);
        let _ = hello.cluster_range.parse::<weft::cidr::Ipv4Cidr>();
        let bytes = weft::wire::encode(&hello).expect("encode what we decoded");
        assert_eq!(weft::wire::decode::<Hello>(&bytes).ok(), Some(hello));
    }
    if let Ok(rekey) = weft::wire::decode::<RekeyHello>(data) {
        let bytes = weft::wire::encode(&rekey).expect("encode what we decoded");
        assert_eq!(weft::wire::decode::<RekeyHello>(&bytes).ok(), Some(rekey));
    }
    if let Ok((rekey, rotation)) = weft::control::proto::decode_rekey_hello(data) {
        let _ = rotation.map(|r| r.verify());
        let bytes =
            weft::control::proto::encode_rekey_hello(rekey.session_index, rotation.as_ref());
        assert_eq!(
            weft::control::proto::decode_rekey_hello(&bytes).ok(),
            Some((rekey, rotation))
        );
    }
});
