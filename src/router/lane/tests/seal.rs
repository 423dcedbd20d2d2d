//! The send path: sealing, counters and routing.

use super::*;

#[test]
fn sealing_needs_a_route_keys_and_counters() {
    let epoch = Instant::now();
    let ta = table_a(epoch);
    let mut lane = only(3);
    let nowhere = Route {
        src: A,
        dst: ShortId(99),
        hop_limit: HOP_LIMIT,
    };
    assert_eq!(lane.sealer(&ta, nowhere, 1).unwrap_err(), Discard::NoRoute);
    let mut keyless = ta.clone();
    keyless.set_link(B, link("192.0.2.2:6783", None, epoch));
    assert_eq!(
        lane.sealer(&keyless, to_b(), 1).unwrap_err(),
        Discard::NoSession
    );
    let key = a_send_key(&ta);
    lane.counters.insert(
        key.id(),
        SendCounter {
            next: COUNTER_LIMIT - 1,
            life: key.life(),
        },
    );
    assert!(lane.sealer(&ta, to_b(), 2).is_ok());
    assert_eq!(lane.sealer(&ta, to_b(), 1).unwrap_err(), Discard::NoSession);
    assert_eq!(
        lane.counters[&key.id()].next,
        COUNTER_LIMIT + 1,
        "nothing reserved"
    );
}

#[test]
fn a_sealer_uses_each_reserved_counter_once_and_no_more() {
    let epoch = Instant::now();
    let ta = table_a(epoch);
    let mut lane = only(4);
    let mut buf = vec![0u8; 256];
    let mut counters = Vec::new();
    for count in [3, 2] {
        let mut sealer = lane.sealer(&ta, to_b(), count).unwrap();
        while let Some(len) = sealer.seal(&mut buf, 20) {
            let header = DataHeader::parse(&buf[..len]).unwrap();
            assert_eq!((header.lane, header.session), (4, B_INDEX));
            counters.push(header.counter);
        }
    }
    assert_eq!(counters, [0, 1, 2, 3, 4]);
    let mut sealer = lane.sealer(&ta, to_b(), 1).unwrap();
    assert_eq!(sealer.seal(&mut buf[..20 + OVERHEAD - 1], 20), None);
    assert_eq!(
        sealer.seal(&mut buf, 20).map(|_| ()),
        Some(()),
        "counter kept"
    );
}

#[test]
fn counters_and_windows_outlive_a_snapshot_without_their_key_and_die_with_it() {
    let epoch = Instant::now();
    let ta = Arc::new(table_a(epoch));
    let tb = Arc::new(table_b(epoch, false));
    let mut lane = any_lane();
    lane.handle_datagram(&tb, &mut a_to_b(0, 5, &ipv4(A_POD, B_POD)), from(), epoch);
    lane.sealer(&ta, to_b(), 3).unwrap();
    // A table without A's keys (a republish, a short-ID clash): the state
    // stays, so when the keys come back the counter goes on from 3 and a
    // replay of counter 5 is still refused.
    let mut empty = Snapshot::new(B, 1420);
    owners(&mut empty);
    lane.handle_snapshot(&Arc::new(empty));
    assert_eq!((lane.windows.len(), lane.counters.len()), (1, 1));
    lane.handle_snapshot(&ta);
    let sealer = lane.sealer(&ta, to_b(), 1).unwrap();
    assert_eq!(sealer.header.counter, 3);
    let replay = lane.handle_datagram(&tb, &mut a_to_b(0, 5, &ipv4(A_POD, B_POD)), from(), epoch);
    assert_eq!(replay, Verdict::Discard(Discard::Open(OpenError::Replay)));
    // Once no clone of the keys exists, the next snapshot forgets them.
    drop((ta, tb));
    let mut empty = Snapshot::new(B, 1420);
    owners(&mut empty);
    lane.handle_snapshot(&Arc::new(empty));
    assert!(lane.windows.is_empty() && lane.counters.is_empty());
}

#[test]
fn a_tun_packet_is_routed_to_the_owner_of_its_destination() {
    let ta = table_a(Instant::now());
    assert_eq!(
        route_from_tun(&ta, ipv4_key(C_POD)),
        Ok(Route {
            src: A,
            dst: C,
            hop_limit: HOP_LIMIT
        })
    );
    assert_eq!(
        route_from_tun(&ta, ipv4_key(A_POD)),
        Err(Discard::OwnedLocally)
    );
    assert_eq!(
        route_from_tun(&ta, ipv4_key(0x0a30_0000)),
        Err(Discard::NoRoute)
    );
    // IPv6 destinations go by the IPv6 ranges in the same table.
    assert_eq!(route_from_tun(&ta, B_POD6).map(|r| r.dst), Ok(B));
    assert_eq!(route_from_tun(&ta, A_POD6), Err(Discard::OwnedLocally));
    assert_eq!(
        route_from_tun(&ta, B_POD6 + (1 << 64)),
        Err(Discard::NoRoute)
    );
}
