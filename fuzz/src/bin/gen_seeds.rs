//! Writes the valid seed inputs under `corpus/<target>/seed-*`. Run from the
//! fuzz directory: `cargo run --release --features gen-seeds --bin gen_seeds`.
//! Deterministic: re-running rewrites the same bytes.

use std::collections::BTreeSet;
use std::path::Path;
use weft::control::proto::{ControlMessage, Hello, RekeyHello, Versions, encode_message};
use weft::crypto::SigningKey;
use weft::crypto::{FrameSealer, Handshake};
use weft::gossip::message::{Digest, Message as GossipMessage, Request, Summary, Update};
use weft::gossip::topology::SignedEntry;
use weft::gossip::{ConnectionInfo, TopologyEntry};
use weft::id::{PeerId, ShortId};
use weft::ipam::digest::RingSummary;
use weft::ipam::message::{DonateRequest, Message as IpamMessage, Proposal};
use weft::ipam::{AddrRange, Ring};
use weft::router::packet::{DataHeader, HEADER_LEN, PacketType};

#[path = "../../fuzz_targets/common.rs"]
mod common;
// The seeds of the data path's targets (lane, segmentation, coalescing)
// and of the CNI plugin's.
#[path = "gen_seeds/cni.rs"]
mod cni;
#[path = "gen_seeds/packets.rs"]
mod packets;
use cni::{cni_config, cni_reply};
use packets::{coalesce, lane_open, segment};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

/// `[op][u16 len LE][chunk]`, the layout `common::Bytes::chunk` reads.
fn op_chunk(out: &mut Vec<u8>, op: u8, chunk: &[u8]) {
    out.push(op);
    out.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
    out.extend_from_slice(chunk);
}

/// Router `n`'s entry, signed by `n` (the fuzz targets' `common::identity`).
fn entry(n: u8, version: u64, connections: &[u8]) -> SignedEntry {
    let identity = common::identity(n);
    let public_key = identity.public_key();
    let id = PeerId::from_public_key(&public_key);
    let mut connections: Vec<ConnectionInfo> = connections
        .iter()
        .map(|&p| ConnectionInfo {
            peer: common::identity(p).id(),
            established: true,
            outbound: p > n,
        })
        .collect();
    connections.sort_by_key(|c| c.peer);
    let entry = TopologyEntry {
        id,
        version,
        name: format!("node-{n}"),
        public_key,
        addresses: vec![std::net::SocketAddr::from(([192, 0, 2, n], 6783))],
        short_id: ShortId::preferred(id),
        mtu: 1420,
        connections,
    };
    SignedEntry::sign(&entry, &SigningKey::from_identity(&identity))
}

/// Router `n`'s entry on a dual-stack underlay (issue 19): IPv6 first.
fn entry_v6(n: u8) -> SignedEntry {
    let identity = common::identity(n);
    let public_key = identity.public_key();
    let id = PeerId::from_public_key(&public_key);
    let entry = TopologyEntry {
        id,
        version: 1,
        name: format!("node-{n}"),
        public_key,
        addresses: vec![
            format!("[2001:db8::{n}]:6783").parse().expect("addr"),
            std::net::SocketAddr::from(([192, 0, 2, n], 6783)),
        ],
        short_id: ShortId::preferred(id),
        mtu: 1420,
        connections: Vec::new(),
    };
    SignedEntry::sign(&entry, &SigningKey::from_identity(&identity))
}

fn id_of(n: u8) -> PeerId {
    common::identity(n).id()
}

fn main() {
    // data_header
    let header = DataHeader {
        kind: PacketType::Data,
        hop_limit: 8,
        src: ShortId(0x0102),
        dst: ShortId(0x0304),
        session: 0x00ab_cdef,
        lane: 3,
        counter: 0x1122_3344_5566,
    };
    let mut h = [0u8; HEADER_LEN];
    header.emit(&mut h);
    let mut datagram = h.to_vec();
    let mut ipv4 = [0u8; 20];
    ipv4[0] = 0x45;
    ipv4[12..16].copy_from_slice(&[10, 32, 0, 1]);
    ipv4[16..20].copy_from_slice(&[10, 33, 0, 2]);
    datagram.extend_from_slice(&ipv4);
    datagram.extend_from_slice(&[0xee; 16]);
    write("data_header", "data", &datagram);
    let heartbeat = DataHeader {
        kind: PacketType::Heartbeat,
        lane: 255,
        ..header
    };
    heartbeat.emit(&mut h);
    write("data_header", "heartbeat", &[&h[..], &[0u8; 16]].concat());
    write("data_header", "ipv4", &ipv4);

    // control_message
    let messages = [
        (
            "gossip",
            ControlMessage::Gossip {
                channel: 1,
                payload: vec![1, 1, 1, 2, 3],
            },
        ),
        (
            "rekey",
            ControlMessage::Rekey {
                step: 1,
                message: vec![7; 52],
            },
        ),
        ("confirm", ControlMessage::KeyConfirm { session_index: 300 }),
        ("switch", ControlMessage::TcpKeySwitch),
        ("request", ControlMessage::RekeyRequest),
        (
            "close",
            ControlMessage::Close {
                reason: "bye".into(),
            },
        ),
    ];
    for (name, m) in &messages {
        write("control_message", name, &encode_message(m));
    }
    // Issue 19: IPv6 underlay addresses (and a v4/v6 mix) in every
    // message that carries a socket address.
    let v6: std::net::SocketAddr = "[2001:db8::1]:6783".parse().expect("addr");
    let v4 = std::net::SocketAddr::from(([192, 0, 2, 1], 6783));
    write(
        "control_message",
        "observed-v6",
        &encode_message(&ControlMessage::Observed {
            dialled: Some(v6),
            udp_from: Some(v4),
        }),
    );
    write(
        "control_message",
        "punch-offer-v6",
        &encode_message(&ControlMessage::PunchOffer {
            candidates: vec![v6, v4],
        }),
    );

    // hello
    let hello = Hello {
        versions: Versions::OURS,
        name: "node-a".into(),
        short_id: 0x1234,
        listen: "192.0.2.1:6783".parse().expect("addr"),
        mtu: 1420,
        incarnation: 0xdead_beef,
        session_index: 77,
        cluster_range: "10.32.0.0/12".into(),
    };
    write(
        "hello",
        "hello",
        &weft::wire::encode(&hello).expect("encode"),
    );
    let v6 = Hello {
        listen: "[2001:db8::1]:6783".parse().expect("addr"),
        ..hello
    };
    write(
        "hello",
        "hello-v6",
        &weft::wire::encode(&v6).expect("encode"),
    );
    write(
        "hello",
        "rekey",
        &weft::wire::encode(&RekeyHello {
            session_index: 0x00ff_ffff,
        })
        .expect("encode"),
    );

    // handshake: [mode][seed][bytes]
    let c = common::cluster();
    for seed in [0u8, 1] {
        let (mut init, msg1) = Handshake::initiator_seeded(
            &c.initiator,
            &c.secrets,
            &c.prologue,
            std::time::Duration::from_secs(1_800_000_000),
            u64::from(seed),
        )
        .expect("initiator");
        write(
            "handshake",
            &format!("msg1-{seed}"),
            &[&[0, seed][..], &msg1].concat(),
        );
        write(
            "handshake",
            &format!("msg1-noise-{seed}"),
            &[&[1, seed][..], &msg1[4..]].concat(),
        );
        let (mut resp, _) = Handshake::responder_seeded(
            &c.responder,
            &c.secrets,
            &c.prologue,
            &msg1,
            u64::from(seed),
        )
        .expect("responder");
        let msg2 = resp.write_message(b"hello").expect("msg2");
        write(
            "handshake",
            &format!("msg2-{seed}"),
            &[&[3, seed][..], &msg2].concat(),
        );
        init.read_message(&msg2).expect("read msg2");
        let msg3 = init.write_message(b"hi there").expect("msg3");
        write(
            "handshake",
            &format!("msg3-{seed}"),
            &[&[2, seed][..], &msg3].concat(),
        );
        write(
            "handshake",
            &format!("full-{seed}"),
            &[&[4, seed][..], b"payload2payload3"].concat(),
        );
    }

    // frame_open: honest, tampered, hostile.
    let mut ops = Vec::new();
    op_chunk(&mut ops, 1, b"first record");
    op_chunk(&mut ops, 1, &encode_message(&messages[2].1));
    op_chunk(&mut ops, 2, b"tampered");
    ops.extend_from_slice(&[3, 0, 0]);
    write("frame_open", "ops", &ops);
    let mut sealer = FrameSealer::from_bytes([0x42; 32]);
    let mut ops = Vec::new();
    op_chunk(&mut ops, 0, &sealer.seal(b"sealed by the same key"));
    op_chunk(&mut ops, 0, &[0u8; 15]);
    write("frame_open", "hostile", &ops);

    // replay_window: [op][args]
    let mut ops = vec![1];
    ops.extend_from_slice(&100u64.to_le_bytes());
    ops.extend_from_slice(&[
        2, 5, 0, 3, 5, 0, 3, 5, 0, 0x83, 5, 0, 4, 128, 4, 129, 5, 127,
    ]);
    ops.extend_from_slice(&[2, 0xff, 0xff, 4, 128, 4, 127, 4, 129, 3, 0xc0, 0x1f]);
    write("replay_window", "ops", &ops);

    // gossip_message
    let update = GossipMessage::Update(Update {
        entries: vec![entry(2, 3, &[1, 3]), entry(3, 1, &[2])],
    });
    let gossip = [
        (
            "summary",
            GossipMessage::Summary(Summary { count: 2, hash: 99 }),
        ),
        (
            "digest",
            GossipMessage::Digest(Digest {
                first: PeerId(0),
                last: PeerId(u64::MAX),
                items: vec![(id_of(2), 2), (id_of(3), 1)],
            }),
        ),
        (
            "request",
            GossipMessage::Request(Request {
                ids: vec![id_of(1)],
            }),
        ),
        ("update", update.clone()),
        (
            "update-v6",
            GossipMessage::Update(Update {
                entries: vec![entry_v6(4)],
            }),
        ),
    ];
    for (name, m) in &gossip {
        write("gossip_message", name, &m.encode());
    }

    // gossip_core: raw frames from peer 2 (op 0 | who<<4), timers, links.
    let mut ops = Vec::new();
    for (_, m) in &gossip {
        op_chunk(&mut ops, 0x00, &m.encode());
    }
    ops.extend_from_slice(&[0x15, 1]); // connection_up peer 3
    op_chunk(
        &mut ops,
        0x10,
        &GossipMessage::Update(Update {
            entries: vec![entry(4, 2, &[3])],
        })
        .encode(),
    );
    ops.extend_from_slice(&[0x02, 0xff, 0x01]); // a timer
    ops.extend_from_slice(&[0x0d]); // established
    ops.extend_from_slice(&[0x04]); // peer 2 down
    ops.extend_from_slice(&[0x02, 0xff, 0x7f]); // long timer: reap
    write("gossip_core", "ops", &ops);
    let mut ops = Vec::new();
    let body = &update.encode()[3..];
    ops.push(0x01);
    ops.push(4);
    ops.extend_from_slice(&(body.len() as u16).to_le_bytes());
    ops.extend_from_slice(body);
    write("gossip_core", "enveloped", &ops);

    // ipam_message
    let range = AddrRange::parse("10.32.0.0/12").expect("range");
    let voters: BTreeSet<PeerId> = [PeerId(1), PeerId(2), PeerId(3)].into();
    let ring = Ring::genesis(range, "voters", &voters);
    let mut donated = ring.clone();
    let (lo, hi) = donated.ranges_of(PeerId(2))[0];
    donated.donate(PeerId(2), lo + 16, hi, PeerId(4));
    donated.set_record(PeerId(2), 10, 3);
    let mut reclaimed = donated.clone();
    reclaimed.reclaim(PeerId(2), PeerId(3));
    let ipam = [
        ("ring", IpamMessage::Ring(ring.clone())),
        ("ring-donated", IpamMessage::Ring(donated.clone())),
        ("ring-reclaimed", IpamMessage::Ring(reclaimed.clone())),
        (
            "propose",
            IpamMessage::Propose(Proposal {
                range,
                voters: voters.iter().copied().collect(),
                slots: u32::try_from(voters.len()).expect("a few voters"),
                locked: false,
            }),
        ),
        (
            "donate",
            IpamMessage::DonateRequest(DonateRequest {
                genesis: ring.genesis_id(),
            }),
        ),
        ("digest", IpamMessage::Digest(RingSummary::of(&donated))),
    ];
    for (name, m) in &ipam {
        write("ipam_message", name, &m.encode());
    }

    // ipam_allocator: mode 0 = 10.32.0.0/12 with voters {1,2,3}.
    let mut ops = vec![0];
    op_chunk(&mut ops, 0x00, &ipam[3].1.encode()); // proposal from 2
    op_chunk(&mut ops, 0x20, &ipam[3].1.encode()); // proposal from 3
    ops.extend_from_slice(&[0x02, 0x10, 0x00]); // timer
    ops.extend_from_slice(&[0x03, 1, 0x03, 2, 0x05, 0x04, 1]); // allocate, node, release
    op_chunk(&mut ops, 0x00, &ipam[0].1.encode()); // the ring from 2
    op_chunk(&mut ops, 0x00, &ipam[1].1.encode()); // a donation
    op_chunk(&mut ops, 0x20, &ipam[2].1.encode()); // a reclaim by 3
    op_chunk(&mut ops, 0x00, &ipam[4].1.encode()); // donate request
    ops.extend_from_slice(&[0x07, 0x01, 0x28, 0x06, 0x02, 0xff, 0xff]);
    write("ipam_allocator", "voters", &ops);
    // mode 4 = seed {1, 2}: ring exists at once.
    let seeded = Ring::genesis(range, "seed", &[PeerId(1), PeerId(2)].into());
    let mut ops = vec![4, 0x03, 1, 0x05];
    op_chunk(&mut ops, 0x00, &IpamMessage::Ring(seeded.clone()).encode());
    op_chunk(
        &mut ops,
        0x00,
        &IpamMessage::DonateRequest(DonateRequest {
            genesis: seeded.genesis_id(),
        })
        .encode(),
    );
    ops.extend_from_slice(&[0x02, 0x10, 0x00, 0x06, 0x08, 0x07, 0x00, 0x18]);
    write("ipam_allocator", "seed", &ops);
    // mode 8 = observer; learns a ring and asks for a donation.
    let mut ops = vec![8];
    op_chunk(&mut ops, 0x00, &IpamMessage::Ring(ring.clone()).encode());
    ops.extend_from_slice(&[0x07, 0x07, 0x03, 5, 0x02, 0x10, 0x00, 0x03, 6]);
    write("ipam_allocator", "observer", &ops);

    // secrets
    write(
        "secrets",
        "one",
        b"fuzzing-cluster-secret-0123456789abcdef\n",
    );
    write(
        "secrets",
        "two",
        b"  new-secret-new-secret-new-secret-0001  \n\nold-secret-old-secret-old-secret-0002\n",
    );
    write(
        "secrets",
        "crlf",
        b"fuzzing-cluster-secret-0123456789abcdef\r\n",
    );

    // cidr
    for (name, text) in [
        ("default", "10.32.0.0/12"),
        ("all", "0.0.0.0/0"),
        ("host", "192.0.2.7/32"),
        ("hostbits", "10.32.0.1/12"),
    ] {
        write("cidr", name, text.as_bytes());
    }

    // api_request
    write("api_request", "status", br#"{"op":"status"}"#);
    write(
        "api_request",
        "connect",
        br#"{"op":"connect","address":"192.0.2.1:6783"}"#,
    );
    write(
        "api_request",
        "forget",
        br#"{"op":"forget","address":"node-b:6783"}"#,
    );

    // ipam_state: `[selector][me: 8 bytes LE][file]`
    let me = PeerId(2);
    let persisted_ring = weft::ipam::store::PersistedRing {
        format: weft::ipam::store::RING_FORMAT,
        me,
        ring: donated.to_wire(),
        quarantined: vec![(1, 2)],
    };
    let persisted_allocations = weft::ipam::store::PersistedAllocations {
        format: weft::ipam::store::STATE_FORMAT,
        me,
        allocations: vec![
            (weft::ipam::space::AllocKey::Node, 0x0a20_0001),
            (
                weft::ipam::space::AllocKey::Pod {
                    container_id: "c0ffee".into(),
                    ifname: "eth0".into(),
                },
                0x0a20_0005,
            ),
            (weft::ipam::space::AllocKey::Held(0x0a20_0009), 0x0a20_0009),
        ],
        pods: vec![(
            weft::ipam::space::AllocKey::Pod {
                container_id: "c0ffee".into(),
                ifname: "eth0".into(),
            },
            weft::ipam::space::PodName::new("default", "web-0", Some("0b6e1c2d")).unwrap(),
        )],
    };
    for (name, selector, file) in [
        ("ring", 0u8, persisted_ring.encode()),
        ("allocations", 1u8, persisted_allocations.encode()),
    ] {
        let mut input = vec![selector];
        input.extend_from_slice(&me.0.to_le_bytes());
        input.extend_from_slice(&file);
        write("ipam_state", name, &input);
    }

    // api_reply
    write(
        "api_reply",
        "ok",
        br#"{"ok":true,"result":{"ready":true,"mtu":1420}}"#,
    );
    write(
        "api_reply",
        "allocation",
        br#"{"ok":true,"result":{"container_id":"c0ffee","ifname":"eth0","address":"10.32.0.5","prefix_len":32,"gateway":"169.254.1.1","mtu":1420,"range":"10.32.0.0/12"}}"#,
    );
    write(
        "api_reply",
        "error",
        br#"{"ok":false,"error":{"code":"not_ready","message":"the ring is not known yet"}}"#,
    );

    // ipam_range
    for (name, text) in [
        ("v4", "10.32.0.0/12"),
        ("v6", "fd00:32::/64"),
        ("host", "192.0.2.7/32"),
        ("unaligned", "10.32.0.1/12"),
    ] {
        write("ipam_range", name, text.as_bytes());
    }

    // identity_rotation
    {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(20);
        let old = weft::crypto::Identity::generate(&mut rng);
        let new = weft::crypto::Identity::generate(&mut rng);
        let rotation = weft::crypto::rotation::Rotation::sign(&old, &new, 1_796_228_061);
        let bytes = rotation.encode();
        write("identity_rotation", "valid", &bytes);
        let mut bad = bytes;
        bad[100] ^= 1;
        write("identity_rotation", "bad-signature", &bad);

        // retired_keys: a file with a tombstone, one without, and empty.
        use weft::control::retired_keys::{Record, encode};
        use weft::control::rotation::Kept;
        let (_, grave) = weft::gossip::core::tombstone(
            &rotation,
            "node-a",
            1420,
            &weft::crypto::SigningKey::from_identity(&old),
        );
        let kept = Kept {
            rotation,
            learned_unix: 1_796_228_100,
            ended: false,
        };
        let records = [
            Record {
                kept,
                tombstone: Some(grave),
            },
            Record {
                kept: Kept {
                    ended: true,
                    ..kept
                },
                tombstone: None,
            },
        ];
        write("retired_keys", "two", &encode(&records));
        write("retired_keys", "empty", &encode(&[]));
    }

    cni_config();
    cni_reply();
    segment();
    coalesce();
    lane_open();
}
