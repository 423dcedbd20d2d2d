//! Punch offers where the punch core takes them: end to end on a relayed
//! control connection (issue 16, "a flood of punch requests is
//! rate-limited"). A secret holder connected to n1 only opens a relayed
//! connection with n0 through n1 (a real Noise handshake inside `RelayTo`
//! and `RelayFrom`), then floods n0 with punch offers, packed many to a
//! relay message, naming addresses of the test bridge where nobody
//! listens. n0 must probe no more than its punch core allows: at most one
//! attempt at a time, at most 64 rounds of at most 8 candidates each, and
//! after an unanswered window no offer answered for half the quiet period;
//! the attempts and ignored offers are counted in status and the probes
//! with an nftables counter in n0's namespace.
//!
//! Bounded: 8 s of flood, at most 400 relay messages of 50 offers; every address is on
//! the test's bridge.

use super::*;
use std::io::Read;
use std::net::SocketAddr;
use weft::control::proto::{ControlMessage, decode_message, encode_message};
use weft::id::PeerId;

/// The punch core's bounds (src/control/punch.rs `PunchConfig::default`,
/// `MAX_CANDIDATES`): rounds per attempt, candidates per round, and the
/// shortest time from one attempt's start to the next one answered for an
/// offer (a 5 s window, then half the 35 s quiet period).
const MAX_ROUNDS: u64 = 64;
const MAX_CANDIDATES: u64 = 8;
const ATTEMPT_SPACING: Duration = Duration::from_millis(5_000 + 17_500);

/// A direct control connection: seals and frames records, reads and opens
/// the peer's in order.
struct Link {
    stream: TcpStream,
    sealer: weft::crypto::FrameSealer,
    opener: weft::crypto::FrameOpener,
}

impl Link {
    fn send(&mut self, message: &ControlMessage) -> std::io::Result<()> {
        let record = self.sealer.seal(&encode_message(message));
        let mut framed = (record.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&record);
        self.stream.write_all(&framed)
    }

    /// The next control message from the router (None on a timeout).
    fn recv(&mut self) -> Option<ControlMessage> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut record = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut record).ok()?;
        let plaintext = self.opener.open(&record).expect("the router's record");
        decode_message(&plaintext).ok()
    }

    /// Stream bytes `from` relays to us, until `want` bytes are there.
    fn relayed_bytes(&mut self, from: PeerId, buffer: &mut Vec<u8>, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while buffer.len() < want {
            assert!(Instant::now() < deadline, "no relayed bytes from {from}");
            if let Some(ControlMessage::RelayFrom { peer, bytes }) = self.recv()
                && peer == from
            {
                buffer.extend_from_slice(&bytes);
            }
        }
    }
}

fn frame_records(
    sealer: &mut weft::crypto::FrameSealer,
    message: &ControlMessage,
    n: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        let record = sealer.seal(&encode_message(message));
        out.extend_from_slice(&(record.len() as u32).to_be_bytes());
        out.extend_from_slice(&record);
    }
    out
}

#[test]
fn a_relayed_peer_flooding_punch_offers_gets_no_more_probes_than_the_punch_core_allows() {
    let Some(arena) = Arena::new("hostile_punch_flood") else {
        return;
    };
    let dir = arena.cluster.dir.path.clone();
    let n0 = Identity::load_or_create(&dir.join("n0").join("state"))
        .unwrap()
        .0
        .id();
    // Only a router that leads n0 may open a relayed connection with it.
    let evil = loop {
        let id = Identity::generate(&mut rand::thread_rng());
        if id.id().leads(n0) {
            break id;
        }
    };
    let victim = &arena.cluster.nodes[0].ns;
    super::flood::count_probes(victim);
    let before = super::flood::paths(&arena.routers[0]);
    let ping = arena.ping_during(14);
    let n1_addr = SocketAddr::from((arena.cluster.nodes[1].underlay, 6783));
    let secret = dir.join("secret");
    let started = Instant::now();
    let attacker = in_netns(&arena.attacker().name, move || {
        let (stream, _, keys) = intruder_handshake(n1_addr, &secret, &evil);
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut link = Link {
            stream,
            sealer: keys.tcp_send,
            opener: keys.tcp_recv,
        };
        // The Noise handshake with n0, end to end through n1.
        let secrets = ClusterSecrets::load(&secret).unwrap();
        let (mut hs, msg1) =
            Handshake::initiator(&evil, &secrets, &prologue("10.32.0.0/12"), wall_clock()).unwrap();
        link.send(&ControlMessage::RelayTo {
            peer: n0,
            bytes: msg1,
        })
        .unwrap();
        let mut stream_in = Vec::new();
        link.relayed_bytes(n0, &mut stream_in, 2);
        let len = usize::from(u16::from_be_bytes([stream_in[0], stream_in[1]]));
        link.relayed_bytes(n0, &mut stream_in, 2 + len);
        hs.read_message(&stream_in[2..2 + len])
            .expect("n0's message 2");
        let framed = intruder_msg3(&mut hs, "intruder2", 9);
        link.send(&ControlMessage::RelayTo {
            peer: n0,
            bytes: framed,
        })
        .unwrap();
        let mut relayed = hs.finish().unwrap();
        // What n0 and n1 send from now on is read and dropped, so that no
        // write of theirs stalls.
        super::flood::drain_in_background(
            link.stream.try_clone().unwrap(),
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        );
        std::thread::sleep(Duration::from_millis(500));
        // The flood: offers packed 50 to a relay message (about 5 KB), 10
        // messages a second (under n1's budget for the pair, 50 records and
        // 128 KiB a second: a piece it dropped would break the stream), 8 s.
        let mut candidates = vec![SocketAddr::from(([192, 0, 2, 12], 6783))];
        candidates.extend((200..=206).map(|h| SocketAddr::from(([192, 0, 2, h], 6783))));
        let offer = ControlMessage::PunchOffer { candidates };
        let until = Instant::now() + Duration::from_secs(8);
        let mut offers = 0u64;
        for _ in 0..400 {
            if Instant::now() > until {
                break;
            }
            let bytes = frame_records(&mut relayed.tcp_send, &offer, 50);
            if link
                .send(&ControlMessage::RelayTo { peer: n0, bytes })
                .is_err()
            {
                break;
            }
            offers += 50;
            std::thread::sleep(Duration::from_millis(100));
        }
        (offers, link.stream)
    });
    let (offers, stream) = attacker.join().unwrap();
    let flooded = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let after = super::flood::paths(&arena.routers[0]);
    let delta =
        |key: &str| super::flood::counter(&after, key) - super::flood::counter(&before, key);
    let probes = super::flood::probes_sent(victim);
    let attempts = delta("punch_attempts");
    let window = started.elapsed();
    eprintln!(
        "{offers} offers in {flooded:?}; n0: {attempts} punch attempts, {probes} probes to the named candidates over {window:?}; paths {after}"
    );
    assert!(offers >= 3_000, "the flood sent only {offers} offers");
    assert!(probes > 0, "the offers never reached the punch core");
    // One attempt at a time, each at most MAX_ROUNDS rounds of at most
    // MAX_CANDIDATES, the next offer answered only ATTEMPT_SPACING after
    // an attempt started: one window in this test's time.
    let windows = 1 + (window.as_secs_f64() / ATTEMPT_SPACING.as_secs_f64()) as u64;
    let allowed = windows * MAX_ROUNDS * MAX_CANDIDATES;
    eprintln!("allowed: {allowed} probes ({windows} windows)");
    assert!(
        probes <= allowed,
        "{probes} probes in {window:?}: the punch core allows {allowed}"
    );
    let early = delta("punch_offer_early");
    assert!(
        early > 0,
        "no offer was ignored as early after the unanswered window: {after}"
    );
    arena.assert_unharmed(ping, 2);
    drop(stream);
}
