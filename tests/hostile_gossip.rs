//! A peer that holds the cluster secret but lies in its gossip, and a client
//! that never completes a handshake: the router refuses and counts, logs at
//! most once a second, keeps its state and keeps serving its good peers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;
use support::*;
use weft::control::proto::{ControlMessage, Hello, Versions, encode_message};
use weft::crypto::{ClusterSecrets, Handshake, Identity, MSG1_LEN, prologue};
use weft::gossip::message::{Message, Update};
use weft::gossip::{ConnectionInfo, TopologyEntry};
use weft::id::{PeerId, ShortId};

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// Completes a real handshake with the router at `to` and returns the stream
/// and a closure-free sealer to send records with.
fn handshake(
    to: SocketAddr,
    secret_file: &Path,
    identity: &Identity,
) -> (TcpStream, weft::crypto::FrameSealer) {
    let secrets = ClusterSecrets::load(secret_file).unwrap();
    let (mut hs, msg1) = Handshake::initiator(
        identity,
        &secrets,
        &prologue("10.32.0.0/12"),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(msg1.len(), MSG1_LEN);
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(&msg1).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut msg2 = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg2).unwrap();
    hs.read_message(&msg2).unwrap();
    let hello = Hello {
        versions: Versions::OURS,
        name: "intruder".into(),
        short_id: 7,
        listen: "192.0.2.12:6783".parse().unwrap(),
        mtu: 1420,
        incarnation: 1,
        session_index: 77,
        cluster_range: "10.32.0.0/12".into(),
    };
    let msg3 = hs
        .write_message(&weft::wire::encode(&hello).unwrap())
        .unwrap();
    let mut framed = (msg3.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&msg3);
    stream.write_all(&framed).unwrap();
    let keys = hs.finish().unwrap();
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
    let mut cluster = Cluster::new(3);
    let dir = cluster.dir.path.clone();
    let routers = start_routers(Path::new(BIN), &mut cluster, 2, |i| vec![1 - i], |_, _| {});
    assert!(wait_until(Duration::from_secs(10), || routers
        .iter()
        .all(|r| r.established_peers() == 1)));
    let target = SocketAddr::from((cluster.nodes[0].underlay, 6783));
    let secret = dir.join("secret");

    let outcome = in_netns(&cluster.nodes[2].ns.name, move || {
        // 1. Bytes before any handshake: never answered, the connection is dropped.
        let mut raw = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        raw.write_all(&[0x42; MSG1_LEN]).unwrap();
        // A timeout is a failure, not "closed": the router must close it.
        let mut raw_answer = 0;
        let raw_closed = attack::closed_within(&mut raw, Duration::from_secs(12), &mut raw_answer);

        // 2. A client that connects and sends nothing is timed out.
        let mut idle = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        let mut idle_answer = 0;
        let idle_closed =
            attack::closed_within(&mut idle, Duration::from_secs(15), &mut idle_answer);

        // 3. A secret holder that lies.
        let evil = Identity::generate(&mut rand::thread_rng());
        let (mut stream, mut sealer) = handshake(target, &secret, &evil);
        let lies = [
            // Claims the router's own name with another key.
            Message::Update(Update {
                entries: vec![entry(&evil, "n0", 0)],
            })
            .encode(),
            // Far more connections than any entry may have.
            Message::Update(Update {
                entries: vec![entry(&evil, "intruder", 2000)],
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
                payload: vec![1, 1, 4, 0xff, 0xff, 0xff],
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
        let mut sink = [0u8; 4096];
        let mut closed = false;
        for _ in 0..100 {
            match stream.read(&mut sink) {
                Ok(0) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(_) => {}
            }
        }
        (
            raw_answer,
            idle_answer,
            closed,
            evil.id(),
            raw_closed,
            idle_closed,
        )
    })
    .join()
    .unwrap();
    let (raw_answer, idle_answer, closed, evil_id, raw_closed, idle_closed) = outcome;
    assert!(
        raw_closed,
        "garbage before a handshake did not close the connection within 12 s"
    );
    assert!(
        idle_closed,
        "an idle half-open connection was not closed within 15 s"
    );
    assert_eq!(
        raw_answer, 0,
        "the router answered a handshake it could not authenticate"
    );
    assert_eq!(idle_answer, 0, "an idle half-open connection was answered");
    assert!(closed, "an oversized record did not close the connection");

    let status = routers[0].status().expect("router n0 went down");
    let refused = status["handshakes"]["gossip_refused"].as_u64().unwrap_or(0);
    assert!(refused >= 2, "lies not counted: {}", status["handshakes"]);
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
