//! The NFLOG messages the router reads for the policy drop log
//! (`policy::nflog::parse`, `parse_ip`: IPv4, IPv6 with its extension
//! headers) and the line made of each
//! (`policy::droplog::describe`): hostile bytes never panic, a batch holds
//! no more messages than 16-byte headers fit, a prefix is at most 63
//! printable characters, ports come only with TCP, UDP and SCTP.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use weft::policy::droplog::{Names, describe};
use weft::policy::nflog::{MAX_PREFIX, Message, parse, parse_ip};

struct Anyone;

impl Names for Anyone {
    fn pod_with_ip(&self, ip: IpAddr) -> Option<String> {
        let pod = match ip {
            IpAddr::V4(v4) => v4.octets()[0] == 10,
            IpAddr::V6(v6) => v6.octets()[0] == 0xfd,
        };
        pod.then(|| format!("ns/{ip}"))
    }
    fn isolated_by(&self, pod: &str, dir: &str) -> Vec<String> {
        vec![format!("{pod}-{dir}")]
    }
}

fuzz_target!(|data: &[u8]| {
    let batch = parse(data);
    assert!(batch.messages.len() <= data.len() / 16);
    for message in &batch.messages {
        let Message::Packet(logged) = message else {
            continue;
        };
        assert!(logged.prefix.len() <= MAX_PREFIX);
        assert!(logged.prefix.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
        if let Some(line) = describe(logged, None, &Anyone) {
            assert!(!line.contains('\n'));
        }
    }
    if let Some(header) = parse_ip(data) {
        assert!(header.ports.is_none() || matches!(header.protocol, 6 | 17 | 132));
    }
});
