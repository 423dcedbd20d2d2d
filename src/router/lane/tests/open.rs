//! The receive path: authentication, replay, relay or deliver, attribution.

use super::*;

#[test]
fn every_data_lane_seals_and_opens_to_the_same_inner_packet() {
    let epoch = Instant::now();
    let (ta, tb) = (table_a(epoch), table_b(epoch, false));
    let mut receiver = any_lane();
    let inner = ipv4(A_POD, B_POD);
    for n in 0..CONTROL_LANE {
        let mut sender = only(n);
        let mut datagram = send_from_a(&mut sender, &ta, to_b(), &inner);
        assert_eq!(datagram[packet::LANE_OFFSET as usize], n);
        let verdict = receiver.handle_datagram(&tb, &mut datagram, from(), epoch);
        let Verdict::Deliver { inner: range } = verdict else {
            panic!("lane {n}: {verdict:?}");
        };
        assert_eq!(range, HEADER_LEN..HEADER_LEN + inner.len());
        assert_eq!(datagram[range], inner[..], "lane {n}");
        assert_eq!(receiver.highest(b_key(&tb), n), Some(0));
    }
}

#[test]
fn a_tampered_header_body_or_tag_is_a_bad_tag_and_marks_nothing() {
    let epoch = Instant::now();
    let tb = table_b(epoch, false);
    let good = a_to_b(2, 7, &ipv4(A_POD, B_POD));
    // hop limit, src, dst, lane, counter; a body byte; a tag byte.
    for at in [1, 2, 3, 4, 5, 9, 10, 15, HEADER_LEN, good.len() - 1] {
        // Of 16 workers, the one for lanes 2 and 18 (the lane byte flipped).
        let mut lane = Lane::new(2, 16);
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        let verdict = lane.handle_datagram(&tb, &mut bad, from(), epoch);
        assert_eq!(
            verdict,
            Verdict::Discard(Discard::Open(OpenError::BadTag)),
            "byte {at}"
        );
        assert!(
            (0..=u8::MAX).all(|l| lane.highest(b_key(&tb), l).is_none()),
            "byte {at}: a window was marked"
        );
        assert_eq!(lane.poll_event(), None);
        // The genuine packet still opens: its counter was not marked.
        let mut genuine = good.clone();
        let verdict = lane.handle_datagram(&tb, &mut genuine, from(), epoch);
        assert!(matches!(verdict, Verdict::Deliver { .. }), "byte {at}");
    }
}

#[test]
fn a_tampered_version_type_or_receiver_index_is_refused_before_any_window() {
    let epoch = Instant::now();
    let tb = table_b(epoch, false);
    let good = a_to_b(0, 1, &ipv4(A_POD, B_POD));
    let cases = [
        (
            0,
            0x30,
            Verdict::Discard(Discard::Open(OpenError::Header(HeaderError::Version))),
        ),
        (
            0,
            0x0f,
            Verdict::Discard(Discard::Open(OpenError::Header(HeaderError::Type))),
        ),
        (0, 0x01, Verdict::Control),
        (
            6,
            0x01,
            Verdict::Discard(Discard::Open(OpenError::UnknownSession)),
        ),
        (
            8,
            0x80,
            Verdict::Discard(Discard::Open(OpenError::UnknownSession)),
        ),
    ];
    for (at, flip, expect) in cases {
        let mut lane = any_lane();
        let mut bad = good.clone();
        bad[at] ^= flip;
        assert_eq!(lane.handle_datagram(&tb, &mut bad, from(), epoch), expect);
        assert!(lane.windows.is_empty(), "byte {at}");
    }
}

#[test]
fn a_forgery_under_a_known_receiver_index_allocates_no_window() {
    let epoch = Instant::now();
    let tb = table_b(epoch, false);
    let mut lane = any_lane();
    for sender_lane in 0..=u8::MAX {
        let mut forged = a_to_b(sender_lane, 0, &ipv4(A_POD, B_POD));
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let verdict = lane.handle_datagram(&tb, &mut forged, from(), epoch);
        assert_eq!(verdict, Verdict::Discard(Discard::Open(OpenError::BadTag)));
    }
    assert!(lane.windows.is_empty(), "{} windows", lane.windows.len());
    let mut genuine = a_to_b(9, 0, &ipv4(A_POD, B_POD));
    lane.handle_datagram(&tb, &mut genuine, from(), epoch);
    assert_eq!(lane.windows.len(), 1);
}

#[test]
fn a_replayed_counter_is_dropped_after_the_first_copy() {
    let epoch = Instant::now();
    let tb = table_b(epoch, false);
    let mut lane = only(1);
    let good = a_to_b(1, 42, &ipv4(A_POD, B_POD));
    let mut first = good.clone();
    assert!(matches!(
        lane.handle_datagram(&tb, &mut first, from(), epoch),
        Verdict::Deliver { .. }
    ));
    for _ in 0..3 {
        let mut again = good.clone();
        let verdict = lane.handle_datagram(&tb, &mut again, from(), epoch);
        assert_eq!(verdict, Verdict::Discard(Discard::Open(OpenError::Replay)));
        assert_eq!(Discard::Open(OpenError::Replay).as_str(), "replay");
    }
}

#[test]
fn a_counter_older_than_the_window_is_dropped_and_one_inside_it_is_not() {
    let epoch = Instant::now();
    let tb = table_b(epoch, false);
    let mut lane = any_lane();
    let inner = ipv4(A_POD, B_POD);
    let high = 3 * WINDOW;
    let mut top = a_to_b(0, high, &inner);
    assert!(matches!(
        lane.handle_datagram(&tb, &mut top, from(), epoch),
        Verdict::Deliver { .. }
    ));
    let mut too_old = a_to_b(0, high - WINDOW - 1, &inner);
    let verdict = lane.handle_datagram(&tb, &mut too_old, from(), epoch);
    assert_eq!(verdict, Verdict::Discard(Discard::Open(OpenError::Replay)));
    let mut oldest_fresh = a_to_b(0, high - WINDOW, &inner);
    assert!(matches!(
        lane.handle_datagram(&tb, &mut oldest_fresh, from(), epoch),
        Verdict::Deliver { .. }
    ));
}

#[test]
fn an_unknown_receiver_index_changes_nothing() {
    let epoch = Instant::now();
    let tb = table_b(epoch, true);
    let mut lane = any_lane();
    let mut header = DataHeader::parse(&a_to_b(0, 0, &[0; 20])).unwrap();
    header.session = 0x00ff_fff0;
    let mut datagram = sealed(header, &key(0xab), &ipv4(A_POD, B_POD));
    let verdict = lane.handle_datagram(&tb, &mut datagram, from(), epoch);
    assert_eq!(
        verdict,
        Verdict::Discard(Discard::Open(OpenError::UnknownSession))
    );
    assert!(lane.windows.is_empty());
    assert_eq!(lane.poll_event(), None);
    assert!(tb.link(A).unwrap().liveness.last_rx().is_none());
}

#[test]
fn truncated_datagrams_of_every_length_are_dropped_without_panic() {
    let epoch = Instant::now();
    let tb = table_b(epoch, false);
    let good = a_to_b(0, 0, &ipv4(A_POD, B_POD));
    let mut lane = any_lane();
    for len in 0..OVERHEAD {
        let mut short = good[..len].to_vec();
        let verdict = lane.handle_datagram(&tb, &mut short, from(), epoch);
        assert_eq!(
            verdict,
            Verdict::Discard(Discard::Open(OpenError::Header(HeaderError::Truncated))),
            "{len} bytes"
        );
    }
    // Longer truncations parse but cannot authenticate.
    for len in OVERHEAD..good.len() {
        let mut short = good[..len].to_vec();
        let verdict = lane.handle_datagram(&tb, &mut short, from(), epoch);
        assert_eq!(
            verdict,
            Verdict::Discard(Discard::Open(OpenError::BadTag)),
            "{len} bytes"
        );
    }
    assert_eq!(lane.highest(b_key(&tb), 0), None);
}

#[test]
fn a_packet_for_another_router_is_relayed_with_one_hop_less() {
    let epoch = Instant::now();
    let (ta, tb) = (table_a(epoch), table_b(epoch, false));
    let inner = ipv4(A_POD, C_POD);
    let to_c = Route {
        src: A,
        dst: C,
        hop_limit: HOP_LIMIT,
    };
    let mut datagram = send_from_a(&mut any_lane(), &ta, to_c, &inner);
    let mut relay = any_lane();
    let verdict = relay.handle_datagram(&tb, &mut datagram, from(), epoch);
    let Verdict::Relay {
        route,
        inner: range,
    } = verdict
    else {
        panic!("{verdict:?}");
    };
    assert_eq!(
        route,
        Route {
            src: A,
            dst: C,
            hop_limit: HOP_LIMIT - 1
        }
    );
    assert_eq!(datagram[range.clone()], inner[..]);
    // B seals it again for C under B's own keys and lane.
    let mut buf = vec![0u8; 2048];
    buf[HEADER_LEN..HEADER_LEN + range.len()].copy_from_slice(&datagram[range.clone()]);
    let mut sealer = relay.sealer(&tb, route, 1).unwrap();
    assert_eq!(sealer.endpoint(), "192.0.2.3:6783".parse().unwrap());
    let len = sealer.seal(&mut buf, range.len()).unwrap();
    let header = DataHeader::parse(&buf[..len]).unwrap();
    assert_eq!((header.hop_limit, header.session), (HOP_LIMIT - 1, C_INDEX));
    assert_eq!((header.src, header.dst), (A, C));
}

#[test]
fn a_spent_hop_limit_is_dropped_after_authentication() {
    let epoch = Instant::now();
    let (ta, tb) = (table_a(epoch), table_b(epoch, false));
    for hop_limit in [0, 1] {
        let to_c = Route {
            src: A,
            dst: C,
            hop_limit,
        };
        let mut datagram = send_from_a(&mut any_lane(), &ta, to_c, &ipv4(A_POD, C_POD));
        let mut relay = any_lane();
        let verdict = relay.handle_datagram(&tb, &mut datagram, from(), epoch);
        assert_eq!(verdict, Verdict::Discard(Discard::HopLimit));
        assert_eq!(
            relay.highest(b_key(&tb), 0),
            Some(0),
            "marked: it authenticated"
        );
    }
    let mut two = send_from_a(
        &mut any_lane(),
        &ta,
        Route {
            src: A,
            dst: C,
            hop_limit: 2,
        },
        &ipv4(A_POD, C_POD),
    );
    let verdict = any_lane().handle_datagram(&tb, &mut two, from(), epoch);
    assert!(matches!(verdict, Verdict::Relay { route, .. } if route.hop_limit == 1));
}

#[test]
fn heartbeats_go_to_the_control_task_untouched() {
    let epoch = Instant::now();
    let tb = table_b(epoch, true);
    let mut lane = any_lane();
    let header = DataHeader {
        kind: PacketType::Heartbeat,
        hop_limit: 1,
        src: A,
        dst: B,
        session: B_INDEX,
        lane: CONTROL_LANE,
        counter: 0,
    };
    let mut datagram = sealed(header, &key(0xab), &[1; 10]);
    let before = datagram.clone();
    assert_eq!(
        lane.handle_datagram(&tb, &mut datagram, from(), epoch),
        Verdict::Control
    );
    assert_eq!(datagram, before, "not decrypted");
    assert!(lane.windows.is_empty());
    assert_eq!(lane.poll_event(), None);
}

#[test]
fn the_first_packet_under_a_next_keyset_confirms_it_once() {
    let epoch = Instant::now();
    let tb = Arc::new(table_b(epoch, true));
    let mut lane = any_lane();
    for counter in 0..3 {
        let mut d = a_to_b(0, counter, &ipv4(A_POD, B_POD));
        lane.handle_datagram(&tb, &mut d, from(), epoch);
    }
    assert_eq!(
        lane.poll_event(),
        Some(WorkerEvent::KeysetConfirmed {
            local_index: B_INDEX
        })
    );
    assert_eq!(lane.poll_event(), None);
    // A new snapshot where the keyset is current: nothing more to report.
    lane.handle_snapshot(&Arc::new(table_b(epoch, false)));
    assert!(lane.reported_confirmations.is_empty());
}

#[test]
fn only_a_newest_packet_from_a_new_address_moves_the_endpoint_once() {
    let epoch = Instant::now();
    let tb = table_b(epoch, false);
    let mut lane = any_lane();
    let inner = ipv4(A_POD, B_POD);
    let known: SocketAddr = "192.0.2.1:6783".parse().unwrap();
    let moved: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let stale: SocketAddr = "203.0.113.9:1".parse().unwrap();
    let later = epoch + std::time::Duration::from_millis(300);
    lane.handle_datagram(&tb, &mut a_to_b(0, 5, &inner), known, epoch);
    assert_eq!(lane.poll_event(), None, "same address as the link");
    lane.handle_datagram(&tb, &mut a_to_b(0, 6, &inner), moved, later);
    lane.handle_datagram(&tb, &mut a_to_b(0, 7, &inner), moved, later);
    assert_eq!(
        lane.poll_event(),
        Some(WorkerEvent::EndpointMoved {
            peer: A,
            address: moved
        })
    );
    assert_eq!(lane.poll_event(), None, "reported once");
    lane.handle_datagram(&tb, &mut a_to_b(0, 3, &inner), stale, later);
    assert_eq!(lane.poll_event(), None, "an older packet moves nothing");
    let seen = tb.link(A).unwrap().liveness.last_rx().unwrap();
    assert_eq!(seen.duration_since(epoch).as_millis(), 300);
}

#[test]
fn a_neighbour_sending_from_two_addresses_in_turn_is_reported_at_most_every_interval() {
    let epoch = Instant::now();
    let tb = table_b(epoch, false);
    let mut lane = any_lane();
    let inner = ipv4(A_POD, B_POD);
    let one: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let two: SocketAddr = "198.51.100.7:40001".parse().unwrap();
    // 1,000 packets in 100 ms, alternating: one report, not one per packet.
    let mut reports = 0;
    for counter in 0..1000u64 {
        let at = epoch + std::time::Duration::from_micros(counter * 100);
        let address = if counter % 2 == 0 { one } else { two };
        lane.handle_datagram(&tb, &mut a_to_b(0, counter + 10, &inner), address, at);
        while lane.poll_event().is_some() {
            reports += 1;
        }
    }
    assert_eq!(reports, 1);
    // Once the interval has passed, a packet from the other address is news.
    let later =
        epoch + crate::router::lane::ENDPOINT_REPORT_EVERY + std::time::Duration::from_millis(1);
    lane.handle_datagram(&tb, &mut a_to_b(0, 2000, &inner), two, later);
    assert_eq!(
        lane.poll_event(),
        Some(WorkerEvent::EndpointMoved {
            peer: A,
            address: two
        })
    );
}

#[test]
fn an_inner_source_outside_the_senders_ranges_is_spoofed() {
    let epoch = Instant::now();
    let tb = table_b(epoch, false);
    let mut lane = any_lane();
    let mut spoofed = a_to_b(0, 0, &ipv4(C_POD, B_POD));
    let verdict = lane.handle_datagram(&tb, &mut spoofed, from(), epoch);
    assert_eq!(verdict, Verdict::Discard(Discard::SpoofedSource));
    let mut not_ip = a_to_b(0, 1, &[0x50; 40]);
    let verdict = lane.handle_datagram(&tb, &mut not_ip, from(), epoch);
    assert_eq!(verdict, Verdict::Discard(Discard::NotIp));
    // IPv6 sources are held to the sender's IPv6 ranges the same way, and
    // an IPv4 range never covers an IPv6 source (nor the reverse).
    let mut spoofed6 = a_to_b(0, 2, &ipv6(B_POD6, B_POD6));
    let verdict = lane.handle_datagram(&tb, &mut spoofed6, from(), epoch);
    assert_eq!(verdict, Verdict::Discard(Discard::SpoofedSource));
    let mut mapped = a_to_b(0, 3, &ipv6(ipv4_key(A_POD), B_POD6));
    let verdict = lane.handle_datagram(&tb, &mut mapped, from(), epoch);
    assert_eq!(verdict, Verdict::Discard(Discard::SpoofedSource));
    let mut honest6 = a_to_b(0, 4, &ipv6(A_POD6, B_POD6));
    let verdict = lane.handle_datagram(&tb, &mut honest6, from(), epoch);
    assert!(matches!(verdict, Verdict::Deliver { .. }), "{verdict:?}");
    assert_eq!(lane.highest(b_key(&tb), 0), Some(4), "all authenticated");
}

#[test]
fn discard_labels_are_todays_drop_reason_labels() {
    let all = [
        (
            Discard::Open(OpenError::Header(HeaderError::Truncated)),
            "bad_header",
        ),
        (Discard::Open(OpenError::UnknownSession), "unknown_session"),
        (Discard::Open(OpenError::Replay), "replay"),
        (Discard::Open(OpenError::BadTag), "bad_tag"),
        (Discard::HopLimit, "hop_limit"),
        (Discard::NotIp, "not_ip"),
        (Discard::SpoofedSource, "spoofed_source"),
        (Discard::NoRoute, "no_route"),
        (Discard::NoSession, "no_session"),
        (Discard::OwnedLocally, "owned_locally"),
    ];
    for (discard, label) in all {
        assert_eq!(discard.as_str(), label);
    }
}

#[test]
fn a_datagram_replayed_to_every_worker_is_accepted_once() {
    // Four workers; A's lane 6 belongs to worker 2. GRO may hand the same
    // datagram to any of them (a train steered by another lane's first
    // segment), and an attacker may replay it to all.
    let epoch = Instant::now();
    let tb = table_b(epoch, false);
    let good = a_to_b(6, 0, &ipv4(A_POD, B_POD));
    let mut workers: Vec<Lane> = (0..4).map(|w| Lane::new(w, 4)).collect();
    let mut accepted = 0;
    for _round in 0..2 {
        for (w, lane) in workers.iter_mut().enumerate() {
            let verdict = lane.handle_datagram(&tb, &mut good.clone(), from(), epoch);
            match verdict {
                Verdict::Deliver { .. } => accepted += 1,
                Verdict::Discard(Discard::ForeignLane) => {
                    assert_ne!(w, 2);
                    assert!(lane.windows.is_empty(), "worker {w} made a window");
                }
                Verdict::Discard(Discard::Open(OpenError::Replay)) => assert_eq!(w, 2),
                other => panic!("worker {w}: {other:?}"),
            }
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(Discard::ForeignLane.as_str(), "foreign_lane");
}

#[test]
fn a_neighbour_may_speak_for_another_router_only_on_a_path_toward_it() {
    let epoch = Instant::now();
    // A claims C sent this (C's pod, src_short C): B's table has C as a
    // direct neighbour, so A is on no shortest path from B to C.
    let forged = |tb: &Snapshot, counter| {
        let header = DataHeader {
            kind: PacketType::Data,
            hop_limit: HOP_LIMIT - 1,
            src: C,
            dst: B,
            session: B_INDEX,
            lane: 0,
            counter,
        };
        let mut d = sealed(
            header,
            &tb.session(B_INDEX).unwrap().key,
            &ipv4(C_POD, B_POD),
        );
        any_lane().handle_datagram(tb, &mut d, from(), epoch)
    };
    let mut tb = table_b(epoch, false);
    assert_eq!(forged(&tb, 0), Verdict::Discard(Discard::ImplausibleRelay));
    assert_eq!(Discard::ImplausibleRelay.as_str(), "implausible_relay");
    // Once the B–C link is down and the path to C goes through A, A's
    // relayed packets from C's pods are delivered.
    tb.allow_relay(C, A);
    assert!(matches!(forged(&tb, 1), Verdict::Deliver { .. }));
    // And never one of B's own: no router relays for us.
    let header = DataHeader {
        kind: PacketType::Data,
        hop_limit: HOP_LIMIT - 1,
        src: B,
        dst: B,
        session: B_INDEX,
        lane: 0,
        counter: 2,
    };
    let mut d = sealed(
        header,
        &tb.session(B_INDEX).unwrap().key,
        &ipv4(B_POD, B_POD),
    );
    let verdict = any_lane().handle_datagram(&tb, &mut d, from(), epoch);
    assert_eq!(verdict, Verdict::Discard(Discard::ImplausibleRelay));
}

#[test]
fn forged_datagrams_under_every_known_index_and_lane_leave_no_state() {
    // 10^5 forgeries with valid-looking receiver indexes: the lane's maps
    // stay empty (invariant 4; issue 15, defect 5).
    let epoch = Instant::now();
    let tb = table_b(epoch, true);
    let mut lane = Lane::new(0, 2);
    let template = a_to_b(0, 0, &ipv4(A_POD, B_POD));
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..100_000u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut forged = template.clone();
        // Any counter, any even lane (this worker's), a random tag.
        forged[10..16].copy_from_slice(&rng.to_be_bytes()[2..]);
        forged[9] = (i as u8) & 0xfe;
        let tag = forged.len() - 16;
        forged[tag..tag + 8].copy_from_slice(&rng.to_le_bytes());
        let verdict = lane.handle_datagram(&tb, &mut forged, from(), epoch);
        assert!(
            matches!(verdict, Verdict::Discard(Discard::Open(_))),
            "{verdict:?}"
        );
    }
    assert!(lane.windows.is_empty() && lane.counters.is_empty());
    assert!(lane.reported_endpoints.is_empty() && lane.reported_confirmations.is_empty());
    assert_eq!(lane.poll_event(), None);
}
