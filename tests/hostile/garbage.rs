//! Random, truncated and oversized input; idle and slow clients.

use super::*;

#[test]
fn random_truncated_and_oversized_input_on_tcp_and_udp_is_dropped_and_counted_while_the_pair_keeps_talking()
 {
    let Some(arena) = Arena::new("hostile_garbage") else {
        return;
    };
    let target = arena.target();
    let ping = arena.ping_during(12);
    let udp_before = sum_dropped(
        &arena.routers[0],
        &["bad_header", "unknown_session", "bad_tag"],
    );
    let refused_before = arena.handshakes("refused") + arena.handshakes("protocol");
    let sources = add_sources(arena.attacker(), 100, 4);
    let seed = arena.seed;
    let (udp_sent, tcp_tries, answered) = in_netns(&arena.attacker().name, move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // UDP: random sizes (empty, shorter than a header, header-sized,
        // typical, maximal), random content, and datagrams that carry our
        // header's version nibble with random indices and counters.
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut sent = 0u64;
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut buf = vec![0u8; 65_507];
        for i in 0..6000u32 {
            if Instant::now() > deadline {
                break;
            }
            let len = match i % 6 {
                0 => rng.gen_range(0..16),
                1 => 16,
                2 => rng.gen_range(17..200),
                3 => rng.gen_range(200..1500),
                4 => 65_507,
                _ => rng.gen_range(32..1452),
            };
            rng.fill_bytes(&mut buf[..len]);
            if i % 2 == 0 && len >= 16 {
                buf[0] = 0x10 | (buf[0] & 0x0f); // version 1, any type
                buf[1] = 8;
            }
            if socket.send_to(&buf[..len], target).is_ok() {
                sent += 1;
            }
            if i % 200 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // TCP: garbage of every interesting length before any handshake:
        // one byte, one short of message 1, exactly message 1, a bit more,
        // and 256 KiB; each connection must be closed without an answer.
        let lengths = [1usize, MSG1_LEN - 1, MSG1_LEN, MSG1_LEN + 7, 256 * 1024];
        let mut tries = 0;
        let mut answered = 0usize;
        let mut open = Vec::new();
        for round in 0..8 {
            for (k, len) in lengths.iter().enumerate() {
                let source = sources[(round + k) % sources.len()];
                let Ok(mut stream) = connect_from(source, target) else {
                    continue;
                };
                tries += 1;
                let mut junk = vec![0u8; *len];
                rng.fill_bytes(&mut junk);
                stream
                    .set_write_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let _ = stream.write_all(&junk);
                if *len < MSG1_LEN {
                    // Truncated: hang up halfway.
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                }
                open.push(stream);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let mut still_open = 0;
        for stream in &mut open {
            if !closed_within(
                stream,
                HANDSHAKE_TIMEOUT + Duration::from_secs(3),
                &mut answered,
            ) {
                still_open += 1;
            }
        }
        assert_eq!(still_open, 0, "connections with garbage were left open");
        (sent, tries, answered)
    })
    .join()
    .unwrap();
    assert_eq!(
        answered, 0,
        "the router answered garbage with {answered} bytes"
    );
    assert!(
        tcp_tries >= 30,
        "only {tcp_tries} garbage connections got through"
    );
    let udp_dropped = sum_dropped(
        &arena.routers[0],
        &["bad_header", "unknown_session", "bad_tag"],
    ) - udp_before;
    eprintln!("udp: {udp_sent} sent, {udp_dropped} counted as dropped");
    // A few may be lost in socket buffers; most must be seen and counted.
    assert!(
        udp_dropped * 2 >= udp_sent,
        "only {udp_dropped} of {udp_sent} garbage datagrams were counted"
    );
    let refused = arena.handshakes("refused") + arena.handshakes("protocol") - refused_before;
    assert!(
        refused as usize * 2 >= tcp_tries,
        "only {refused} of {tcp_tries} garbage connections were counted"
    );
    let log = arena.routers[0].log_tail();
    let refusals = log.matches("refused a handshake").count();
    assert!(
        refusals <= 20,
        "{refusals} refusal lines for a ~15 s attack: not rate-limited"
    );
    arena.assert_unharmed(ping, 2);
}

#[test]
fn idle_and_one_byte_a_second_clients_stay_under_the_half_open_cap_and_time_out() {
    let Some(arena) = Arena::new("hostile_slowloris") else {
        return;
    };
    let target = arena.target();
    let ping = arena.ping_during(20);
    let sources = add_sources(arena.attacker(), 100, 12);
    let node0 = &arena.cluster.nodes[0].ns;
    let attacker = arena.attacker().name.clone();
    // 12 sources × 15 connections = 180 > the cap, each source under the
    // per-source rate limit (20 a second); half send nothing, half one byte
    // a second, never finishing message 1.
    let opener = in_netns(&attacker, move || {
        let mut held = Vec::new();
        let mut refused_at_once = 0usize;
        for round in 0..15 {
            for source in &sources {
                let Ok(stream) = connect_from(*source, target) else {
                    continue;
                };
                held.push((stream, round % 2 == 1));
            }
            std::thread::sleep(Duration::from_millis(60));
        }
        let opened = Instant::now();
        // Drip one byte a second on the slow half for 14 s (more than the
        // handshake timeout), noticing when the router hangs up.
        let mut closed_at: Vec<Option<Duration>> = vec![None; held.len()];
        let mut junk = [0u8; 1];
        for _second in 0..14 {
            for (i, (stream, slow)) in held.iter_mut().enumerate() {
                if closed_at[i].is_some() {
                    continue;
                }
                stream.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 64];
                let gone = match std::io::Read::read(stream, &mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                let gone = gone || (*slow && stream.write(&junk).is_err());
                if gone {
                    closed_at[i] = Some(opened.elapsed());
                    if opened.elapsed() < Duration::from_secs(2) {
                        refused_at_once += 1;
                    }
                }
            }
            junk[0] = junk[0].wrapping_add(1);
            std::thread::sleep(Duration::from_secs(1));
        }
        let never_closed = closed_at.iter().filter(|c| c.is_none()).count();
        (held.len(), refused_at_once, never_closed)
    });
    // While the attack holds its connections: the router's connections on
    // 6783 stay within the cap plus the good peer's.
    std::thread::sleep(Duration::from_secs(3));
    let mut peak = 0;
    for _ in 0..5 {
        peak = peak.max(tcp_connections(node0, 6783));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (held, refused_at_once, never_closed) = opener.join().unwrap();
    eprintln!(
        "{held} attack connections, {refused_at_once} closed at once, peak {peak} sockets on 6783, {never_closed} never closed"
    );
    assert!(
        held > MAX_HALF_OPEN,
        "the attack opened only {held} connections"
    );
    assert!(
        peak <= MAX_HALF_OPEN + 2,
        "{peak} connections on port 6783 with a cap of {MAX_HALF_OPEN}"
    );
    assert!(
        refused_at_once >= held - MAX_HALF_OPEN - 2,
        "only {refused_at_once} of {held} connections were refused at the cap"
    );
    assert_eq!(
        never_closed, 0,
        "half-open connections outlived the handshake timeout"
    );
    assert!(
        arena.handshakes("half_open_cap") > 0,
        "the cap was never counted"
    );
    // The cap frees up: a legitimate router that restarts gets back in.
    let timed_out = wait_until(Duration::from_secs(5), || {
        tcp_connections(&arena.cluster.nodes[0].ns, 6783) <= 2
    });
    assert!(timed_out, "half-open connections did not drain");
    arena.assert_unharmed(ping, 2);
}

#[test]
fn one_source_holding_idle_connections_cannot_lock_a_newcomer_out() {
    let Some(arena) = Arena::new("hostile_lockout") else {
        return;
    };
    let target = arena.target();
    let ping = arena.ping_during(12);
    let sources = add_sources(arena.attacker(), 100, 2);
    let (hog, newcomer) = (sources[0], sources[1]);
    let secrets = ClusterSecrets::load(&arena.cluster.dir.path.join("secret")).unwrap();
    let (held, answered) = in_netns(&arena.attacker().name, move || {
        // One host opens idle connections just under the per-source rate
        // limit for 5 s: more than the global cap if nothing else stops it.
        let mut held = Vec::new();
        for _ in 0..95 {
            if let Ok(stream) = connect_from(hog, target) {
                held.push(stream);
            }
            std::thread::sleep(Duration::from_millis(55));
        }
        // A newcomer holding the secret starts a real handshake from
        // another address: it must get message 2 back.
        let identity = Identity::generate(&mut rand::thread_rng());
        let (_, msg1) =
            Handshake::initiator(&identity, &secrets, &prologue("10.32.0.0/12"), wall_clock()).unwrap();
        let mut answered = 0;
        if let Ok(mut stream) = connect_from(newcomer, target) {
            stream.write_all(&msg1).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut len = [0u8; 2];
            if std::io::Read::read_exact(&mut stream, &mut len).is_ok() {
                answered = usize::from(u16::from_be_bytes(len));
            }
        }
        let mut still_held = 0;
        for stream in &held {
            stream.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            let mut reader: &TcpStream = stream;
            if matches!(std::io::Read::read(&mut reader, &mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            {
                still_held += 1;
            }
        }
        (still_held, answered)
    })
    .join()
    .unwrap();
    eprintln!(
        "one source holds {held} half-open connections; the newcomer got a {answered}-byte message 2"
    );
    assert!(
        held <= 8 + 1,
        "one source holds {held} half-open connections"
    );
    assert!(
        answered > 0,
        "a newcomer was locked out by one host's idle connections"
    );
    arena.assert_unharmed(ping, 2);
}
