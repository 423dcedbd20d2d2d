//! Handshake floods and replayed handshake messages.

use super::*;

#[test]
fn a_flood_of_handshake_initiations_from_many_ports_is_rate_limited_and_costs_bounded_memory() {
    let Some(arena) = Arena::new("hostile_flood") else {
        return;
    };
    let target = arena.target();
    let secrets = ClusterSecrets::load(&arena.cluster.dir.path.join("secret")).unwrap();
    // The real secret's ID, so that each message 1 gets as far as the
    // responder's DH and tag check (the expensive path).
    let identity = Identity::generate(&mut rand::thread_rng());
    let (_, real) =
        Handshake::initiator(&identity, &secrets, &prologue("10.32.0.0/12"), wall_clock()).unwrap();
    let secret_id: [u8; 4] = real[..4].try_into().unwrap();
    let ping = arena.ping_during(15);
    let before = (
        arena.handshakes("rate_limited"),
        arena.handshakes("refused"),
    );
    let sources = add_sources(arena.attacker(), 100, 8);
    let seed = arena.seed;
    let pid = arena.pid;
    let (attempts, peak_rss) = in_netns(&arena.attacker().name, move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut attempts = 0usize;
        let mut peak_rss = 0;
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut live: Vec<TcpStream> = Vec::new();
        // One source sends as fast as it can (rate-limited per source); the
        // others each stay just under the limit.
        for i in 0..3000usize {
            if Instant::now() > deadline {
                break;
            }
            let source = if i % 2 == 0 {
                sources[0]
            } else {
                sources[1 + (i / 2) % (sources.len() - 1)]
            };
            let Ok(mut stream) = connect_from(source, target) else {
                continue;
            };
            attempts += 1;
            let mut msg1 = [0u8; MSG1_LEN];
            rng.fill_bytes(&mut msg1);
            msg1[..4].copy_from_slice(&secret_id);
            let _ = stream.write_all(&msg1);
            live.push(stream);
            // Hold a bounded number of sockets open; drop the oldest.
            if live.len() > 200 {
                live.remove(0);
            }
            if i % 50 == 0 {
                peak_rss = peak_rss.max(rss_kb(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        drop(live);
        (attempts, peak_rss)
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let rate_limited = arena.handshakes("rate_limited") - before.0;
    let refused = arena.handshakes("refused") - before.1;
    eprintln!(
        "{attempts} initiations: {rate_limited} rate-limited, {refused} refused, peak VmRSS {peak_rss} KiB"
    );
    assert!(
        attempts >= 300,
        "the flood made only {attempts} connections"
    );
    assert!(rate_limited > 0, "no initiation was rate-limited");
    assert!(refused > 0, "no initiation reached the tag check");
    assert!(
        refused as usize <= attempts,
        "more refusals than attempts: double counting"
    );
    assert!(peak_rss < RSS_LIMIT_KB, "VmRSS peaked at {peak_rss} KiB");
    arena.assert_unharmed(ping, 2);
}

#[test]
fn replayed_handshake_messages_never_yield_a_session_and_time_out() {
    let Some(arena) = Arena::new("hostile_replay") else {
        return;
    };
    let target = arena.target();
    // Capture a real handshake: n1 restarts and dials n0 again.
    let pcap = arena.cluster.dir.path.join("handshake.pcap");
    let capture = Capture::start(
        &arena.cluster.nodes[0].ns,
        "eth0",
        "tcp port 6783",
        pcap.clone(),
        400,
    );
    let mut routers = arena.routers;
    routers[1].kill9();
    routers[1].start();
    assert!(
        wait_until(Duration::from_secs(15), || routers
            .iter()
            .all(|r| r.established_peers() == 1)),
        "the pair did not reconnect"
    );
    std::thread::sleep(Duration::from_secs(1));
    let _ = capture.finish();
    let segments = tcp_segments(&std::fs::read(&pcap).unwrap());
    // Whoever dialled: a message 1 is bound to the secret and the range,
    // not to the responder, so any router of the cluster would take it.
    let streams = client_streams(&segments, 6783);
    let dialled = streams
        .iter()
        .find(|s| s.len() >= MSG1_LEN)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no client stream to n0 in the capture: {} segments",
                segments.len()
            )
        });
    let arena = Arena { routers, ..arena };
    // A fresh router process: compare against its RSS now.
    let arena = Arena {
        rss_before: rss_kb(arena.pid).max(arena.rss_before),
        ..arena
    };
    let peers_before = arena.routers[0].status().unwrap()["peers"].clone();
    let ping = arena.ping_during(16);
    let before = arena.handshakes("protocol") + arena.handshakes("refused");
    let replayed_before = arena.handshakes("replayed");
    let sources = add_sources(arena.attacker(), 100, 4);
    let stale_source = sources[0];
    let (replays, answered_msg1, closed) = in_netns(&arena.attacker().name, move || {
        let msg1 = dialled[..MSG1_LEN].to_vec();
        let mut streams = Vec::new();
        // Message 1 alone (the router answers at most the first copy, if the
        // capture is of its own dial and it never saw that message 1, and can
        // never get a valid message 3), and the whole recorded client side
        // (message 1, message 3 and records) in one go, several times each.
        for i in 0..12 {
            let source = sources[i % sources.len()];
            let Ok(mut stream) = connect_from(source, target) else {
                continue;
            };
            let bytes = if i % 2 == 0 { &msg1 } else { &dialled };
            let _ = stream.write_all(bytes);
            streams.push(stream);
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut answered = 0;
        let mut closed = 0;
        for stream in &mut streams {
            let mut got = 0;
            if closed_within(stream, HANDSHAKE_TIMEOUT + Duration::from_secs(3), &mut got) {
                closed += 1;
            }
            if got > 0 {
                answered += 1;
            }
        }
        (streams.len(), answered, closed)
    })
    .join()
    .unwrap();
    eprintln!("{replays} replays: {answered_msg1} got a message 2, {closed} closed");
    assert!(replays >= 10, "only {replays} replays connected");
    assert_eq!(
        closed, replays,
        "a replayed handshake stayed open past the timeout"
    );
    let replayed = arena.handshakes("replayed") - replayed_before;
    let failed = arena.handshakes("protocol") + arena.handshakes("refused") - before + replayed;
    assert!(
        failed as usize >= replays,
        "only {failed} of {replays} replays were counted as failed handshakes"
    );
    // The replay guard: no copy of a message 1 it admitted before gets a
    // message 2 (no DH work); only a first sighting could.
    assert!(
        answered_msg1 <= 1,
        "{answered_msg1} replays of one message 1 got a message 2"
    );
    assert!(
        replayed as usize >= replays - 1,
        "only {replayed} of {replays} replays were refused as replayed"
    );
    // A message 1 that authenticates but is timestamped 400 s ago (an old
    // replay, or a node whose clock is off): refused before any DH work, and
    // the log says what to fix.
    let secrets = ClusterSecrets::load(&arena.cluster.dir.path.join("secret")).unwrap();
    let identity = Identity::generate(&mut rand::thread_rng());
    let stale = wall_clock() - Duration::from_secs(400);
    let (_, msg1) =
        Handshake::initiator(&identity, &secrets, &prologue("10.32.0.0/12"), stale).unwrap();
    let skew_before = arena.handshakes("clock_skew");
    let source = stale_source;
    let stale_answered = in_netns(&arena.attacker().name, move || {
        let mut stream = connect_from(source, target).unwrap();
        stream.write_all(&msg1).unwrap();
        let mut got = 0;
        assert!(closed_within(&mut stream, Duration::from_secs(5), &mut got));
        got
    })
    .join()
    .unwrap();
    assert_eq!(stale_answered, 0, "a stale message 1 got an answer");
    assert!(
        wait_until(Duration::from_secs(5), || arena.handshakes("clock_skew")
            > skew_before),
        "the stale message 1 was not counted as clock_skew"
    );
    let log = arena.routers[0].log_tail();
    assert!(
        log.contains("behind our clock") && log.contains("NTP"),
        "no clock-skew line in the log:\n{log}"
    );
    let peers_after = arena.routers[0].status().unwrap()["peers"].clone();
    assert_eq!(
        peers_before.as_array().map(Vec::len),
        peers_after.as_array().map(Vec::len),
        "a replay changed the peer list"
    );
    arena.assert_unharmed_after_restart(ping);
}
