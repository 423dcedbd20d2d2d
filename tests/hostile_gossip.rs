//! A peer that holds the cluster secret but lies in its gossip (in its own
//! name, and forging another router's entry), and a client that never
//! completes a handshake: the router refuses and counts, logs at most once a
//! second, keeps its state and keeps serving its good peers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;
use support::*;
use weft::control::proto::{ControlMessage, encode_message};
use weft::crypto::{Identity, MSG1_LEN, SigningKey};
use weft::gossip::message::{Message, Update};
use weft::gossip::topology::SignedEntry;
use weft::gossip::{ConnectionInfo, TopologyEntry};
use weft::id::{PeerId, ShortId};

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// Completes a real handshake with the router at `to` and returns the stream
/// and a sealer to send records with.
fn handshake(
    to: SocketAddr,
    secret_file: &Path,
    identity: &Identity,
) -> (TcpStream, weft::crypto::FrameSealer) {
    let (stream, _, keys) = attack::intruder_handshake(to, secret_file, identity);
    (stream, keys.tcp_send)
}

fn send_record(
    stream: &mut TcpStream,
    sealer: &mut weft::crypto::FrameSealer,
    plaintext: &[u8],
) -> std::io::Result<()> {
    let record = sealer.seal(plaintext);
    let mut framed = (record.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&record);
    stream.write_all(&framed)
}

/// How a read on a connection the router should close ended.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// EOF or reset: the router closed it.
    Closed,
    /// The router sent bytes.
    Answered,
    /// Nothing happened before the read timeout: the router kept it open.
    TimedOut,
}

fn read_end(stream: &mut TcpStream) -> ReadEnd {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => ReadEnd::Closed,
        Ok(_) => ReadEnd::Answered,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            ReadEnd::TimedOut
        }
        Err(_) => ReadEnd::Closed,
    }
}

/// `entry` signed by `signer` (the owner, or a forger).
fn signed(entry: &TopologyEntry, signer: &Identity) -> SignedEntry {
    SignedEntry::sign(entry, &SigningKey::from_identity(signer))
}

fn entry(identity: &Identity, name: &str, connections: usize) -> TopologyEntry {
    TopologyEntry {
        id: identity.id(),
        version: 5,
        name: name.into(),
        public_key: identity.public_key(),
        addresses: vec!["192.0.2.12:6783".parse().unwrap()],
        short_id: ShortId(7),
        mtu: 1420,
        connections: (0..connections)
            .map(|i| ConnectionInfo {
                peer: PeerId(i as u64 + 1),
                established: true,
                outbound: true,
            })
            .collect(),
    }
}

#[test]
fn lies_in_gossip_and_half_open_connections_are_refused_and_the_router_keeps_serving() {
    if !require_root("hostile_gossip") {
        return;
    }
    let (cluster, routers) = attack::meshed_pair_and_an_intruder_node(Path::new(BIN));
    let dir = cluster.dir.path.clone();
    let target = SocketAddr::from((cluster.nodes[0].underlay, 6783));
    let secret = dir.join("secret");
    // n1's public key (what any router learns from gossip); not its secret.
    let (victim, _) = Identity::load_or_create(&dir.join("n1").join("state")).unwrap();
    let victim_key = victim.public_key();
    let mtu_before = routers[0].status().expect("status")["dataplane"]["mtu"].clone();

    let outcome = in_netns(&cluster.nodes[2].ns.name, move || {
        // 1. Bytes before any handshake: never answered, the connection is dropped.
        let mut raw = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
        raw.write_all(&[0x42; MSG1_LEN]).unwrap();
        let raw_answer = read_end(&mut raw);

        // 2. A client that connects and sends nothing is timed out.
        let mut idle = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let idle_answer = read_end(&mut idle);

        // 3. A secret holder that lies.
        let evil = Identity::generate(&mut rand::thread_rng());
        let (mut stream, mut sealer) = handshake(target, &secret, &evil);
        // n1's entry as the intruder would like it: MTU 576, a far version,
        // connections rewritten to go through the intruder; signed by the
        // intruder, since it does not hold n1's key.
        let mut forged = entry(&evil, "n1", 0);
        forged.id = PeerId::from_public_key(&victim_key);
        forged.public_key = victim_key;
        forged.version = 1 << 40;
        forged.mtu = 576;
        forged.connections = vec![ConnectionInfo {
            peer: evil.id(),
            established: true,
            outbound: true,
        }];
        let lies = [
            // Claims the router's own name with another key.
            Message::Update(Update {
                entries: vec![signed(&entry(&evil, "n0", 0), &evil)],
            })
            .encode(),
            // Far more connections than any entry may have.
            Message::Update(Update {
                entries: vec![signed(&entry(&evil, "intruder", 2000), &evil)],
            })
            .encode(),
            // Speaks in n1's name.
            Message::Update(Update {
                entries: vec![signed(&forged, &evil)],
            })
            .encode(),
        ];
        for lie in &lies {
            send_record(
                &mut stream,
                &mut sealer,
                &encode_message(&ControlMessage::Gossip {
                    channel: 1,
                    payload: lie.clone(),
                }),
            )
            .unwrap();
        }
        // Garbage inside a well-sealed record.
        send_record(
            &mut stream,
            &mut sealer,
            &encode_message(&ControlMessage::Gossip {
                channel: 1,
                payload: vec![
                    weft::gossip::message::TOPOLOGY_VERSION,
                    1,
                    4,
                    0xff,
                    0xff,
                    0xff,
                ],
            }),
        )
        .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        // An oversized record: the router closes the connection.
        let mut big = (1u32 << 24).to_be_bytes().to_vec();
        big.extend_from_slice(&[0u8; 1024]);
        let _ = stream.write_all(&big);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // Records already in flight may arrive first; a timeout is not a close.
        let mut closed = false;
        for _ in 0..100 {
            match read_end(&mut stream) {
                ReadEnd::Closed => {
                    closed = true;
                    break;
                }
                ReadEnd::TimedOut => break,
                ReadEnd::Answered => {}
            }
        }
        (raw_answer, idle_answer, closed, evil.id())
    })
    .join()
    .unwrap();
    let (raw_answer, idle_answer, closed, evil_id) = outcome;
    assert_eq!(
        raw_answer,
        ReadEnd::Closed,
        "the router did not drop a handshake it could not authenticate"
    );
    assert_eq!(
        idle_answer,
        ReadEnd::Closed,
        "an idle half-open connection was not closed"
    );
    assert!(closed, "an oversized record did not close the connection");

    let status = routers[0].status().expect("router n0 went down");
    let refused = |reason: &str| {
        status["handshakes"][format!("gossip_refused_{reason}")]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        refused("name_clash") >= 1
            && refused("too_many_connections") >= 1
            && refused("bad_signature") >= 1,
        "lies not counted per reason: {}",
        status["handshakes"]
    );
    assert_eq!(
        status["dataplane"]["mtu"], mtu_before,
        "a forged entry moved the cluster MTU"
    );
    assert!(
        status["handshakes"]["refused"].as_u64().unwrap_or(0) >= 1,
        "{}",
        status["handshakes"]
    );
    let peers = status["peers"].as_array().unwrap();
    assert!(
        peers
            .iter()
            .all(|p| p["id"] != evil_id.to_string() || p["name"] != "n0"),
        "the name clash was accepted: {peers:?}"
    );
    assert!(
        !peers
            .iter()
            .any(|p| p["connections"].as_u64().unwrap_or(0) > 1024),
        "an oversized entry was accepted"
    );
    let log = routers[0].log_tail();
    assert!(
        log.contains("refused a topology entry") || log.contains("dropped a gossip frame"),
        "refusal not logged"
    );
    // The good pair never noticed.
    assert_eq!(routers[0].established_peers(), 1);
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(a.ping(b.addr, 3), "the good peers lost traffic");
}
