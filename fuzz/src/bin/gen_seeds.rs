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
                slots: voters.len() as u32,
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

    cni_config();
    cni_reply();
    segment();
    coalesce();
    lane_open();
}

/// `lane_open`: honest data for this router and for a relay, a replay, a
/// flipped bit, a truncation and raw bytes (record layout in the target).
fn lane_open() {
    // IPv4/UDP from 10.32.0.5 (the sender's range) to 10.32.1.5; the lane
    // reads only the version and the addresses.
    let packet: [u8; 28] = [
        0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 32, 0, 5, 10, 32, 1, 5, 0xc0, 0x01, 0x14,
        0xb5, 0, 8, 0, 0,
    ];
    // `[op][lane][u16 counter][dst][hop][u16 len][packet]`
    let honest = |op: u8, lane: u8, counter: u16, dst: u8, hop: u8| {
        let mut r = vec![op, lane];
        r.extend_from_slice(&counter.to_le_bytes());
        r.extend_from_slice(&[dst, hop]);
        r.extend_from_slice(&(packet.len() as u16).to_le_bytes());
        r.extend_from_slice(&packet);
        r
    };
    write("lane_open", "deliver", &honest(1, 0, 0, 0, 8));
    write("lane_open", "relay", &honest(1, 1, 0, 1, 8));
    let replay = [honest(1, 0, 5, 0, 8), honest(0x81, 0, 0, 0, 8)].concat();
    write("lane_open", "replay", &replay);
    let flip = [honest(2, 0, 0, 0, 8), vec![200, 0], honest(1, 0, 0, 0, 8)].concat();
    write("lane_open", "flip", &flip);
    write(
        "lane_open",
        "truncated",
        &[honest(3, 2, 0, 0, 8), vec![20, 0]].concat(),
    );
    let mut raw = vec![0u8, 32, 0, 0x10, 8, 0, 1, 0, 2, 0, 0x0b, 0x0b, 0];
    raw.resize(3 + 32, 0);
    write("lane_open", "raw", &raw);
}

/// An IPv4 packet: 20-byte header (or more, with `ip_options`), then
/// `l4`, header checksum set. The L4 checksum is left to the caller.
fn ipv4(proto: u8, ip_options: &[u8], l4: &[u8]) -> Vec<u8> {
    use weft::router::checksum::ipv4_header;
    let ihl = 20 + ip_options.len();
    let len = ihl + l4.len();
    let mut p = vec![0u8; ihl];
    p[0] = 0x40 | (ihl / 4) as u8;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1c46u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&[10, 32, 0, 5]);
    p[16..20].copy_from_slice(&[10, 33, 1, 7]);
    p[20..].copy_from_slice(ip_options);
    let c = ipv4_header(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

/// An IPv6 packet around `l4`.
fn ipv6(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    p[6] = proto;
    p[7] = 64;
    p[8..24].copy_from_slice(&[0xfd, 0, 0, 0x32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
    p[24..40].copy_from_slice(&[0xfd, 0, 0, 0x33, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 7]);
    p.extend_from_slice(l4);
    p
}

/// A TCP header (+ `options`, a multiple of 4) and payload.
fn tcp(seq: u32, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let thl = 20 + options.len();
    let mut t = vec![0u8; thl];
    t[0..2].copy_from_slice(&43_512u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&0x5eed_0001u32.to_be_bytes());
    t[12] = ((thl / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&502u16.to_be_bytes());
    t[20..].copy_from_slice(options);
    t.extend_from_slice(payload);
    t
}

/// A UDP header and payload.
fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&51_820u16.to_be_bytes());
    u[2..4].copy_from_slice(&4789u16.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

/// Writes the L4 checksum of `p` (IPv4 or IPv6, header length `l4`) at
/// `l4 + offset`: complete, or as the kernel leaves it for checksum
/// offload (`partial`: the folded pseudo-header sum only).
fn l4_checksum(p: &mut [u8], l4: usize, proto: u8, offset: usize, partial: bool) {
    use weft::router::checksum::{finish, fold, pseudo_header, sum};
    p[l4 + offset..l4 + offset + 2].fill(0);
    let pseudo = pseudo_header(p, proto, p.len() - l4).expect("ip header");
    let c = if partial {
        fold(pseudo)
    } else {
        finish(sum(&p[l4..], pseudo))
    };
    p[l4 + offset..l4 + offset + 2].copy_from_slice(&c.to_be_bytes());
}

fn payload(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
}

/// TCP options as Linux sends them on an established flow: NOP NOP TS.
const TS_OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78];

/// `segment`: a virtio-net header then the packet, as the kernel writes a
/// GSO super-packet (checksum offload: `csum_start` at L4, the L4 field
/// holding the pseudo-header sum) to a TUN with IFF_VNET_HDR.
fn segment() {
    use weft::router::vnet::{
        F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN, VnetHdr,
    };
    let seed = |name: &str,
                gso_type: u8,
                gso_size: u16,
                l4: usize,
                csum_offset: u16,
                p: &[u8],
                hlen: usize| {
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: hlen as u16,
            gso_size,
            csum_start: l4 as u16,
            csum_offset,
        };
        let mut out = [0u8; VNET_HDR_LEN];
        hdr.emit(&mut out);
        let mut input = out.to_vec();
        input.extend_from_slice(p);
        write("segment", name, &input);
    };
    // TCP/IPv4: three full segments and a short one, PSH on the last.
    let mut p = ipv4(
        6,
        &[],
        &tcp(1_000_000, 0x18, &TS_OPTIONS, &payload(3 * 1388 + 500, 1)),
    );
    l4_checksum(&mut p, 20, 6, 16, true);
    seed("tcp4-tso", GSO_TCPV4, 1388, 20, 16, &p, 52);
    // ECN (CWR on the first segment only), no options, exact multiple.
    let mut p = ipv4(6, &[], &tcp(7, 0x90, &[], &payload(4 * 1448, 2)));
    p[1] = 0x02; // ECT(0)
    let c = weft::router::checksum::ipv4_header(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    l4_checksum(&mut p, 20, 6, 16, true);
    seed("tcp4-ecn", GSO_TCPV4 | GSO_ECN, 1448, 20, 16, &p, 40);
    // IP options (router alert), one segment only.
    let mut p = ipv4(
        6,
        &[0x94, 0x04, 0, 0],
        &tcp(u32::MAX - 100, 0x10, &[], &payload(300, 3)),
    );
    l4_checksum(&mut p, 24, 6, 16, true);
    seed("tcp4-ipopt", GSO_TCPV4, 1400, 24, 16, &p, 44);
    // A 16 KB burst: the sequence number wraps inside it.
    let mut p = ipv4(
        6,
        &[],
        &tcp(u32::MAX - 5000, 0x10, &TS_OPTIONS, &payload(16_000, 4)),
    );
    l4_checksum(&mut p, 20, 6, 16, true);
    seed("tcp4-wrap", GSO_TCPV4, 1388, 20, 16, &p, 52);
    // UDP GSO (QUIC, WireGuard): 1200-byte datagrams.
    let mut p = ipv4(17, &[], &udp(&payload(3 * 1200 + 77, 5)));
    l4_checksum(&mut p, 20, 17, 6, true);
    seed("udp4-gso", GSO_UDP_L4, 1200, 20, 6, &p, 28);
    // IPv6: TCP and UDP.
    let mut p = ipv6(6, &tcp(42, 0x18, &TS_OPTIONS, &payload(2 * 1368 + 10, 6)));
    l4_checksum(&mut p, 40, 6, 16, true);
    seed("tcp6-tso", GSO_TCPV6, 1368, 40, 16, &p, 72);
    let mut p = ipv6(17, &udp(&payload(2 * 1180 + 3, 7)));
    l4_checksum(&mut p, 40, 17, 6, true);
    seed("udp6-gso", GSO_UDP_L4, 1180, 40, 6, &p, 48);
    // No GSO: a single packet with checksum offload, and an ICMP echo.
    let mut p = ipv4(17, &[], &udp(b"\x01\x00\x00\x01dns query"));
    l4_checksum(&mut p, 20, 17, 6, true);
    seed("udp4-csum", GSO_NONE, 0, 20, 6, &p, 0);
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(&payload(56, 8));
    let c = weft::router::checksum::finish(weft::router::checksum::sum(&icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let p = ipv4(1, &[], &icmp);
    let mut input = [0u8; VNET_HDR_LEN].to_vec();
    input.extend_from_slice(&p);
    write("segment", "icmp4-plain", &input);
}

/// `coalesce`: a mode byte (`0x80` set: raw packets, each led by a length
/// byte n for n*8+1 bytes; else 4-byte records `flow, seq step, length/8,
/// flags`, see the target) and what follows.
fn coalesce() {
    // Structured: an in-order bulk flow of 1448-byte segments (181*8) with
    // a PSH, interleaved flows, a gap, a retransmission, FIN and SYN.
    let mut s = vec![3u8]; // four flows
    for i in 0..12u8 {
        s.extend_from_slice(&[0, 0, 181, if i == 11 { 2 } else { 0 }]);
        s.extend_from_slice(&[1 + i % 3, 1, 171, 1]);
    }
    s.extend_from_slice(&[0, 2, 181, 0]); // a gap
    s.extend_from_slice(&[0, 3, 181, 0]); // out of order
    s.extend_from_slice(&[2, 0, 10, 3]); // FIN
    s.extend_from_slice(&[3, 0, 0, 4]); // SYN
    s.extend_from_slice(&[1, 0, 181, 5]); // CWR
    write("coalesce", "structured-bulk", &s);
    let mut s = vec![0u8]; // one flow: a short segment ends the run
    for len in [181u8, 181, 181, 100, 181, 181] {
        s.extend_from_slice(&[0, 0, len, 0]);
    }
    write("coalesce", "structured-short", &s);

    // Raw: real decrypted TCP/IPv4 segments of 8n+1 bytes, in order, then
    // others the coalescer must pass through.
    let mut raw = vec![0x80u8 | 1];
    let mut push = |p: &[u8]| {
        assert_eq!(p.len() % 8, 1, "raw records are 8n+1 bytes");
        raw.push((p.len() / 8) as u8);
        raw.extend_from_slice(p);
    };
    let mut seq = 5_000u32;
    for (i, n) in [1397usize, 1397, 1397, 1397, 997].into_iter().enumerate() {
        let flags = if i == 4 { 0x18 } else { 0x10 };
        let mut p = ipv4(6, &[], &tcp(seq, flags, &TS_OPTIONS, &payload(n, i as u8)));
        l4_checksum(&mut p, 20, 6, 16, false);
        push(&p);
        seq = seq.wrapping_add(n as u32);
    }
    let mut p = ipv4(17, &[], &udp(&payload(1381, 9)));
    l4_checksum(&mut p, 20, 17, 6, false);
    push(&p);
    let mut p = ipv6(6, &tcp(1, 0x10, &[], &payload(1381, 10)));
    l4_checksum(&mut p, 40, 6, 16, false);
    push(&p);
    write("coalesce", "raw-tcp4", &raw);
}

/// `cni_config`: `KEY=VALUE` lines, an empty line, then stdin, as a
/// container runtime runs the plugin for cni/weft.conflist (the runtime
/// injects `cniVersion` and `name` into each plugin's entry, and adds
/// `runtimeConfig`, `args` and, when chained, `prevResult`).
fn cni_config() {
    use serde_json::{Value, json};
    fn input(env: &[(&str, &str)], conf: &Value) -> Vec<u8> {
        let mut out = String::new();
        for (k, v) in env {
            out.push_str(&format!("{k}={v}\n"));
        }
        out.push('\n');
        out.push_str(&serde_json::to_string_pretty(conf).expect("json"));
        out.into_bytes()
    }
    let conflist: Value =
        serde_json::from_str(include_str!("../../../cni/weft.conflist")).expect("weft.conflist");
    let entry = |version: &str| {
        let mut e = conflist["plugins"][0].clone();
        e["cniVersion"] = json!(version);
        e["name"] = conflist["name"].clone();
        e
    };
    let pod = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "3f2a9c0d1e5b"),
        ("CNI_NETNS", "/var/run/netns/cni-1f0e6a2b"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IgnoreUnknown=1",
        ),
    ];
    let with = |command: &'static str| {
        let mut env = pod;
        env[0].1 = command;
        env
    };
    // A bridge-style earlier plugin's result, in each version's shape.
    let prev = |version: &str| {
        let mut ip = json!({"address": "10.88.0.7/16", "gateway": "10.88.0.1", "interface": 2});
        if version < "1.0.0" {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": "cni0", "mac": "5a:1c:7e:00:00:01"},
                {"name": "veth1a2b3c4d", "mac": "5a:1c:7e:00:00:02"},
                {"name": "net1", "mac": "5a:1c:7e:00:00:03", "sandbox": "/var/run/netns/cni-1f0e6a2b"}
            ],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
        })
    };
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let tag = version.replace('.', "");
        write(
            "cni_config",
            &format!("add-{tag}"),
            &input(&pod, &entry(version)),
        );
        write(
            "cni_config",
            &format!("del-{tag}"),
            &input(&with("DEL"), &entry(version)),
        );
        // Runtime additions: portmap's capability and Kubernetes' args.
        let mut full = entry(version);
        full["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
        full["args"] = json!({"cni": {"ips": ["10.32.0.9"]}});
        full["prevResult"] = prev(version);
        write(
            "cni_config",
            &format!("add-chained-{tag}"),
            &input(&pod, &full),
        );
        if version >= "0.4.0" {
            // CHECK with the chain's final result, ours last.
            let mut ours = prev(version);
            ours["interfaces"].as_array_mut().expect("array").extend([
                json!({"name": "weftd4c1e0a9b27", "mac": "0a:11:22:33:44:55"}),
                json!({"name": "eth0", "mac": "0e:11:22:33:44:55", "sandbox": "/var/run/netns/cni-1f0e6a2b"}),
            ]);
            let mut ip =
                json!({"address": "10.32.0.5/32", "gateway": "169.254.1.1", "interface": 4});
            if version < "1.0.0" {
                ip["version"] = json!("4");
            }
            ours["ips"].as_array_mut().expect("array").push(ip);
            let mut check = entry(version);
            check["prevResult"] = ours;
            write(
                "cni_config",
                &format!("check-{tag}"),
                &input(&with("CHECK"), &check),
            );
        }
    }
    let mut gc = entry("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "3f2a9c0d1e5b", "ifname": "eth0"}, {"containerID": "77aa", "ifname": "eth0"}]);
    write(
        "cni_config",
        "gc-110",
        &input(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc),
    );
    write(
        "cni_config",
        "status-110",
        &input(&[("CNI_COMMAND", "STATUS")], &entry("1.1.0")),
    );
    write(
        "cni_config",
        "version",
        &input(
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": "1.0.0"}),
        ),
    );
    let mut empty_netns = with("DEL");
    empty_netns[2].1 = "";
    write(
        "cni_config",
        "del-no-netns",
        &input(&empty_netns, &entry("1.0.0")),
    );
    let mut mtu = entry("1.0.0");
    mtu["mtu"] = json!(1400);
    mtu["socket"] = json!("/var/run/weft/api.sock");
    write("cni_config", "add-mtu", &input(&pod, &mtu));
}

/// `cni_reply`: a selector byte (reply type, version, configured MTU; see
/// the target), then a reply line as the router writes it.
fn cni_reply() {
    macro_rules! json_of {
        ($v:expr) => {
            serde_json::to_value($v).expect("json")
        };
    }
    use weft_api::proto::{
        Allocation, AllocationList, ApiError, ErrorCode, Readiness, Released, Reply,
    };
    let alloc = Allocation {
        container_id: "3f2a9c0d1e5b".into(),
        ifname: "eth0".into(),
        address: "10.32.0.5".into(),
        prefix_len: 32,
        gateway: "169.254.1.1".into(),
        mtu: 1420,
        range: "10.32.0.0/12".into(),
    };
    let ok = |v: serde_json::Value| Reply {
        ok: true,
        result: Some(v),
        error: None,
    };
    let line = |sel: u8, r: &Reply| {
        let mut out = vec![sel];
        out.extend(serde_json::to_vec(r).expect("json"));
        out
    };
    for (name, sel) in [
        ("allocation-030", 0u8),
        ("allocation-110", 16),
        ("allocation-mtu", 0x84),
    ] {
        write("cni_reply", name, &line(sel, &ok(json_of!(&alloc))));
    }
    write(
        "cni_reply",
        "ready",
        &line(
            1,
            &ok(json_of!(&Readiness {
                ready: true,
                reason: None,
                mtu: 1420
            })),
        ),
    );
    write(
        "cni_reply",
        "not-ready",
        &line(
            1,
            &ok(json_of!(&Readiness {
                ready: false,
                reason: Some("ring unknown".into()),
                mtu: 1420
            })),
        ),
    );
    write(
        "cni_reply",
        "gc",
        &line(
            2,
            &ok(json_of!(&AllocationList {
                allocations: vec![alloc.clone()]
            })),
        ),
    );
    // Selector bit 0x40: the allocation's numbers as bytes.
    let mut numbers = vec![0x40u8, 32];
    numbers.extend_from_slice(&1420u32.to_le_bytes());
    numbers.extend_from_slice(&[10, 32, 0, 5, 169, 254, 1, 1]);
    write("cni_reply", "allocation-numbers", &numbers);
    write(
        "cni_reply",
        "released",
        &line(
            3,
            &ok(json_of!(&Released {
                address: "10.32.0.5".into()
            })),
        ),
    );
    for (name, code) in [
        ("bad-request", ErrorCode::BadRequest),
        ("refused", ErrorCode::Refused),
        ("not-found", ErrorCode::NotFound),
        ("not-ready", ErrorCode::NotReady),
        ("internal", ErrorCode::Internal),
    ] {
        let r = Reply {
            ok: false,
            result: None,
            error: Some(ApiError {
                code,
                message: format!("{name} (one line)"),
            }),
        };
        write("cni_reply", &format!("error-{name}"), &line(0, &r));
    }
}
