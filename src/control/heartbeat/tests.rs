//! The heartbeat core on an in-memory pair with virtual time.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::crypto::data::DataKey;
use std::cell::Cell;

const A: PeerId = PeerId(1);
const B: PeerId = PeerId(2);

fn keyset(local: u32, remote: u32, send: u8, recv: u8, created: Instant) -> Keyset {
    Keyset {
        local_index: local,
        remote_index: remote,
        send: DataKey::from_bytes([send; 32]),
        recv: DataKey::from_bytes([recv; 32]),
        created,
    }
}

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, last], 6783))
}

fn link_keys(short: u16, endpoint: SocketAddr, k: &Keyset) -> LinkKeys<'_> {
    LinkKeys {
        short: ShortId(short),
        endpoint: Some(endpoint),
        current: Some(k),
        receive: vec![k],
    }
}

/// Two cores wired to each other, `a` dialled; one keyset each way.
fn pair(t0: Instant) -> (Heartbeats, Heartbeats) {
    let mut a = Heartbeats::new(t0, ShortId(1), 1420);
    let mut b = Heartbeats::new(t0, ShortId(2), 1420);
    a.add(B, true, t0);
    b.add(A, false, t0);
    let ka = keyset(10, 20, 1, 2, t0);
    let kb = keyset(20, 10, 2, 1, t0);
    a.set_link(B, ShortId(1), link_keys(2, addr(2), &ka), t0);
    b.set_link(A, ShortId(2), link_keys(1, addr(1), &kb), t0);
    (a, b)
}

/// The wire between the pair: which datagrams it loses, and what it carried.
struct Wire<F: Fn(Instant, &[u8]) -> bool> {
    drop: F,
    /// Bytes a sent, with 28 bytes of IP and UDP header each.
    a_bytes: Cell<u64>,
}

impl<F: Fn(Instant, &[u8]) -> bool> Wire<F> {
    fn new(drop: F) -> Self {
        Self {
            drop,
            a_bytes: Cell::new(0),
        }
    }

    fn carry(
        &self,
        from: &mut Heartbeats,
        from_addr: SocketAddr,
        to: &mut Heartbeats,
        now: Instant,
    ) {
        while let Some((_, mut d)) = from.poll_transmit() {
            if from_addr == addr(1) {
                self.a_bytes.set(self.a_bytes.get() + d.len() as u64 + 28);
                if std::env::var("HB_DEBUG").is_ok() {
                    eprintln!("{now:?} a sends {}", d.len());
                }
            }
            if !(self.drop)(now, &d) {
                to.handle_datagram(now, from_addr, &mut d);
            }
        }
    }
}

/// Runs both cores from `from` to `until`, jumping to the earliest
/// deadline; asserts no deadline stays in the past. Returns the
/// establishment changes `a` reported, with their times.
fn run<F: Fn(Instant, &[u8]) -> bool>(
    a: &mut Heartbeats,
    b: &mut Heartbeats,
    wire: &Wire<F>,
    from: Instant,
    until: Instant,
) -> Vec<(Instant, bool)> {
    let mut changes = Vec::new();
    let mut now = from;
    for _ in 0..100_000 {
        a.handle_timeout(now);
        b.handle_timeout(now);
        for _ in 0..3 {
            wire.carry(a, addr(1), b, now);
            wire.carry(b, addr(2), a, now);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
        while let Some(e) = a.poll_event() {
            if let HeartbeatEvent::Established { established, .. } = e {
                changes.push((now, established));
            }
        }
        while b.poll_event().is_some() {}
        let next = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .map(|(t, _)| t)
            .min()
            .unwrap();
        assert!(
            next > now,
            "a deadline stays in the past: {next:?} <= {now:?}"
        );
        if next > until {
            return changes;
        }
        now = next;
    }
    panic!("too many steps");
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn two_links_that_exchange_heartbeats_become_established() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let wire = Wire::new(|_, _| false);
    let changes = run(&mut a, &mut b, &wire, t0, t0 + secs(2.0));
    assert_eq!(changes.last().map(|c| c.1), Some(true));
    let s = a.status(B, t0 + secs(2.0)).unwrap();
    assert_eq!((s.udp, s.pmtu), (UdpState::Ok, PmtuState::Ok));
    assert!(s.rtt.is_some());
}

#[test]
fn an_idle_link_costs_under_100_bytes_a_second_each_way() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let wire = Wire::new(|_, _| false);
    run(&mut a, &mut b, &wire, t0, t0 + secs(60.0));
    wire.a_bytes.set(0);
    let changes = run(&mut a, &mut b, &wire, t0 + secs(60.0), t0 + secs(120.0));
    assert!(changes.is_empty(), "no flapping: {changes:?}");
    let rate = wire.a_bytes.get() as f64 / 60.0;
    assert!(rate < 100.0, "{rate:.0} B/s");
    // Once the probes are spaced out, keepalives are nearly all of it.
    run(&mut a, &mut b, &wire, t0 + secs(120.0), t0 + secs(600.0));
    wire.a_bytes.set(0);
    run(&mut a, &mut b, &wire, t0 + secs(600.0), t0 + secs(1200.0));
    let rate = wire.a_bytes.get() as f64 / 600.0;
    assert!(rate < 70.0, "{rate:.0} B/s in the long run");
}

#[test]
fn a_broken_link_is_down_within_the_liveness_timeout() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let broken = t0 + secs(30.0);
    let wire = Wire::new(|now, _| now >= broken);
    let changes = run(&mut a, &mut b, &wire, t0, t0 + secs(40.0));
    let down = changes.iter().find(|(_, up)| !up).unwrap().0;
    assert!(
        down - broken <= LIVENESS_TIMEOUT,
        "down after {:?}",
        down - broken
    );
    let s = a.status(B, t0 + secs(40.0)).unwrap();
    assert_eq!(s.udp, UdpState::Blocked);
}

#[test]
fn a_lost_keepalive_costs_a_ping_not_the_link() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    // Lose the first datagram b sends after 20 s (a keepalive).
    let from = t0 + secs(20.0);
    let lost = Cell::new(false);
    let wire = Wire::new(|now, d: &[u8]| {
        let drop = d[2..4] == [0, 2] && now >= from && !lost.get();
        lost.set(lost.get() || drop);
        drop
    });
    let changes = run(&mut a, &mut b, &wire, t0, t0 + secs(30.0));
    assert_eq!(changes.len(), 1, "{changes:?}");
}

#[test]
fn a_link_healing_is_established_again_at_once() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let (from, to) = (t0 + secs(10.0), t0 + secs(20.0));
    let wire = Wire::new(move |now, _| now >= from && now < to);
    let changes = run(&mut a, &mut b, &wire, t0, t0 + secs(30.0));
    let back = changes.iter().rev().find(|(_, up)| *up).unwrap().0;
    assert!(back - to <= secs(2.0), "back after {:?}", back - to);
}

#[test]
fn a_path_that_drops_full_size_probes_is_udp_ok_but_pmtu_too_small() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let wire = Wire::new(|_, d: &[u8]| d.len() > 1000);
    let end = t0 + secs(6.0);
    let changes = run(&mut a, &mut b, &wire, t0, end);
    assert!(changes.iter().all(|(_, up)| !up), "{changes:?}");
    let s = a.status(B, end).unwrap();
    assert_eq!((s.udp, s.pmtu), (UdpState::Ok, PmtuState::TooSmall));
}

#[test]
fn a_black_hole_for_full_size_packets_after_establishment_is_found_by_the_next_probe() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let hole = t0 + secs(3.0);
    let wire = Wire::new(move |now, d: &[u8]| now >= hole && d.len() > 1000);
    let changes = run(&mut a, &mut b, &wire, t0, t0 + secs(12.0));
    let down = changes.iter().find(|(_, up)| !up).unwrap().0;
    // Probes at +2 s and +6 s; three tries 0.7 s apart.
    assert!(down - hole < secs(6.0), "found after {:?}", down - hole);
}

#[test]
fn an_mtu_change_is_probed_at_once() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let wire = Wire::new(|_, _| false);
    run(&mut a, &mut b, &wire, t0, t0 + secs(100.0));
    let now = t0 + secs(100.0);
    a.set_mtu(1400, now);
    a.handle_timeout(now);
    let (_, d) = a.poll_transmit().unwrap();
    assert_eq!(d.len(), 16 + 1400 + 16, "a full-size probe");
}

#[test]
fn an_older_routers_ping_and_probe_are_answered_with_pongs() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    a.send(B, Body::Probe { stamp: 5 }, t0);
    let wire = Wire::new(|_, _| false);
    wire.carry(&mut a, addr(1), &mut b, t0);
    let (_, mut pong) = b.poll_transmit().unwrap();
    assert!(pong.len() < 100, "a short pong");
    let later = t0 + secs(0.01);
    a.handle_datagram(later, addr(2), &mut pong);
    assert_eq!(a.links[&B].pmtu.verdict, Some(true));
    a.send(
        B,
        Body::Ping {
            stamp: 6,
            rtt_us: 0,
        },
        later,
    );
    wire.carry(&mut a, addr(1), &mut b, later);
    assert!(b.poll_transmit().is_some(), "a ping is answered");
}

#[test]
fn keepalives_echo_stamps_so_both_sides_learn_the_rtt() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let ka = a.keepalive(B, 100, t0);
    a.send(B, ka, t0);
    let wire = Wire::new(|_, _| false);
    let arrive = t0 + secs(0.010);
    while let Some((_, mut d)) = a.poll_transmit() {
        b.handle_datagram(arrive, addr(1), &mut d);
    }
    // b holds the stamp 500 ms, then echoes it.
    let echo_at = arrive + secs(0.5);
    let kb = b.keepalive(A, 600, echo_at);
    assert!(matches!(
        kb,
        Body::Keepalive {
            echo: 100,
            held_ms: 500,
            ..
        }
    ));
    b.send(A, kb, echo_at);
    let _ = wire;
    while let Some((_, mut d)) = b.poll_transmit() {
        a.handle_datagram(echo_at + secs(0.010), addr(2), &mut d);
    }
    // Sent at t0 + 100 ms (the stamp), back at t0 + 520 ms, held 500 ms.
    let rtt = a.status(B, echo_at).unwrap().rtt.unwrap();
    assert!(rtt < secs(0.05), "{rtt:?}");
}

#[test]
fn a_replayed_or_forged_heartbeat_is_dropped_without_effect() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    a.handle_timeout(t0);
    let (_, d) = a.poll_transmit().unwrap();
    let mut first = d.clone();
    b.handle_datagram(t0, addr(1), &mut first);
    assert!(b.poll_event().is_some());
    let mut again = d.clone();
    b.handle_datagram(t0, addr(1), &mut again);
    assert!(b.poll_event().is_none(), "replay");
    let mut forged = d;
    let last = forged.len() - 1;
    forged[last] ^= 1;
    b.handle_datagram(t0, addr(1), &mut forged);
    assert!(b.poll_event().is_none(), "bad tag");
    b.handle_datagram(t0, addr(1), &mut [0u8; 3]);
    assert!(b.poll_event().is_none(), "truncated");
}

#[test]
fn data_traffic_counts_as_liveness() {
    let t0 = Instant::now();
    let (mut a, _b) = pair(t0);
    assert_eq!(a.status(B, t0).unwrap().udp, UdpState::Unverified);
    a.observe_data(B, Some(t0));
    assert_eq!(a.status(B, t0).unwrap().udp, UdpState::Ok);
}

#[test]
fn windows_go_with_their_keysets() {
    let t0 = Instant::now();
    let (mut a, _b) = pair(t0);
    let old = keyset(10, 20, 1, 2, t0);
    let new = keyset(11, 21, 3, 4, t0);
    let link = |receive| LinkKeys {
        short: ShortId(2),
        endpoint: Some(addr(2)),
        current: Some(&new),
        receive,
    };
    a.set_link(B, ShortId(1), link(vec![&new, &old]), t0);
    assert_eq!(a.windows(), 2);
    a.set_link(B, ShortId(1), link(vec![&new]), t0);
    assert_eq!(a.windows(), 1, "the old keyset's window is pruned");
    // Many rekeys: the windows never pile up.
    for i in 0..100u32 {
        let k = keyset(100 + i, 200 + i, 5, 6, t0);
        a.set_link(B, ShortId(1), link_keys(2, addr(2), &k), t0);
    }
    assert_eq!(a.windows(), 1);
    a.remove(B);
    assert_eq!(a.windows(), 0);
}

#[test]
fn a_link_without_keys_reports_no_send_deadline() {
    let t0 = Instant::now();
    let mut a = Heartbeats::new(t0, ShortId(1), 1420);
    a.add(B, true, t0);
    assert_eq!(a.poll_timeout(), None, "nothing to send with: no wake-ups");
}

/// The counter in the header of `a`'s next transmit.
fn next_counter(a: &mut Heartbeats, now: Instant) -> u64 {
    a.send(
        B,
        Body::Ping {
            stamp: 1,
            rtt_us: 0,
        },
        now,
    );
    let (_, d) = a.poll_transmit().unwrap();
    DataHeader::parse(&d).unwrap().counter
}

#[test]
fn a_send_key_that_leaves_a_sync_and_returns_goes_on_with_its_counter() {
    let t0 = Instant::now();
    let (mut a, _b) = pair(t0);
    let k = keyset(10, 20, 1, 2, t0);
    assert_eq!(next_counter(&mut a, t0), 0);
    assert_eq!(next_counter(&mut a, t0), 1);
    // A sync without a current keyset, then with it again: no restart.
    let none = LinkKeys {
        short: ShortId(2),
        endpoint: Some(addr(2)),
        current: None,
        receive: vec![&k],
    };
    a.set_link(B, ShortId(1), none, t0);
    a.set_link(B, ShortId(1), link_keys(2, addr(2), &k), t0);
    // The pair's own keyset object was replaced by `k` (another key): a
    // new key starts at 0; the same key object would have gone on.
    assert_eq!(next_counter(&mut a, t0), 0);
    a.set_link(B, ShortId(1), link_keys(2, addr(2), &k), t0);
    assert_eq!(next_counter(&mut a, t0), 1, "same key, same counter");
    // A new key under the same remote index does not inherit it.
    let reused = keyset(11, 20, 7, 8, t0);
    a.set_link(B, ShortId(1), link_keys(2, addr(2), &reused), t0);
    assert_eq!(next_counter(&mut a, t0), 0);
    drop(k);
    a.set_link(B, ShortId(1), link_keys(2, addr(2), &reused), t0);
    assert_eq!(a.links[&B].counters.len(), 1, "the dead key's counter went");
}

#[test]
fn a_new_key_at_a_reused_receiver_index_gets_a_new_window() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    a.handle_timeout(t0);
    let (_, mut d) = a.poll_transmit().unwrap();
    b.handle_datagram(t0, addr(1), &mut d);
    assert!(b.poll_event().is_some());
    // B's index 20 now names another key (A's side rekeyed with new keys).
    let kb = keyset(20, 11, 9, 8, t0);
    let ka = keyset(11, 20, 8, 9, t0);
    b.set_link(A, ShortId(2), link_keys(1, addr(1), &kb), t0);
    a.set_link(B, ShortId(1), link_keys(2, addr(2), &ka), t0);
    a.send(
        B,
        Body::Ping {
            stamp: 1,
            rtt_us: 0,
        },
        t0,
    );
    let (_, mut d) = a.poll_transmit().unwrap();
    assert_eq!(DataHeader::parse(&d).unwrap().counter, 0);
    b.handle_datagram(t0, addr(1), &mut d);
    assert!(
        matches!(
            b.poll_event(),
            Some(HeartbeatEvent::Authenticated {
                local_index: 20,
                ..
            })
        ),
        "counter 0 under the new key is not a replay of the old key's"
    );
}

#[test]
fn a_flood_of_forged_heartbeats_with_known_indexes_leaves_no_state() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    // A small heartbeat (a probe is padded to the MTU).
    a.send(
        B,
        Body::Ping {
            stamp: 1,
            rtt_us: 0,
        },
        t0,
    );
    let (_, template) = a.poll_transmit().unwrap();
    let windows = b.windows();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..100_000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut forged = template.clone();
        forged[10..16].copy_from_slice(&rng.to_be_bytes()[2..]);
        let tag = forged.len() - 16;
        forged[tag..tag + 8].copy_from_slice(&rng.to_le_bytes());
        b.handle_datagram(t0, addr(9), &mut forged);
    }
    assert_eq!(b.windows(), windows);
    assert_eq!(b.links.len(), 1);
    assert!(b.links[&A].counters.is_empty(), "b has sent nothing");
    assert_eq!(b.poll_event(), None);
    assert_eq!(b.poll_transmit(), None);
    assert_eq!(b.status(A, t0).unwrap().udp, UdpState::Unverified);
}

/// Datagram lengths each side sent in `[from, until)`: `(a's, b's)`.
fn lengths_sent(
    a: &mut Heartbeats,
    b: &mut Heartbeats,
    from: Instant,
    until: Instant,
) -> (Vec<usize>, Vec<usize>) {
    let seen = std::cell::RefCell::new((Vec::new(), Vec::new()));
    let wire = Wire::new(|now, d: &[u8]| {
        if now >= from {
            let mut s = seen.borrow_mut();
            if d[2..4] == [0, 1] {
                s.0.push(d.len());
            } else {
                s.1.push(d.len());
            }
        }
        false
    });
    run(a, b, &wire, from, until);
    seen.into_inner()
}

/// Sealed lengths: header, body, tag.
const PING_LEN: usize = 16 + 14 + 16;
const PONG_LEN: usize = 16 + 10 + 16;
const KEEPALIVE_LEN: usize = 16 + 21 + 16;

#[test]
fn at_idle_the_dialler_pings_and_the_other_side_only_answers() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    // Path-MTU probes go at about 2, 6, 22, 86, 342 and 942 s: measure
    // a minute between two of them.
    let (from, until) = (t0 + secs(360.0), t0 + secs(420.0));
    run(&mut a, &mut b, &Wire::new(|_, _| false), t0, from);
    let (from_a, from_b) = lengths_sent(&mut a, &mut b, from, until);
    assert!(from_a.iter().all(|l| *l == PING_LEN), "{from_a:?}");
    assert!(from_b.iter().all(|l| *l == PONG_LEN), "{from_b:?}");
    // One datagram each way per keepalive interval, no more.
    let expected = (60.0 / KEEPALIVE_INTERVAL.as_secs_f64()).ceil() as usize;
    assert!(from_a.len() <= expected && from_b.len() <= expected);
    assert!(from_a.len() + 2 >= expected, "{} pings", from_a.len());
    // The answering side knows the RTT from the pings.
    assert!(b.status(A, until).unwrap().rtt.is_some());
    assert!(a.status(B, until).unwrap().established);
    assert!(b.status(A, until).unwrap().established);
}

#[test]
fn a_peer_from_before_passive_keepalives_gets_keepalives_as_it_expects() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    run(
        &mut a,
        &mut b,
        &Wire::new(|_, _| false),
        t0,
        t0 + secs(10.0),
    );
    // An older dialler sends a keepalive (kind 3): b answers in kind.
    let at = t0 + secs(10.0);
    let ka = a.keepalive(B, 5, at);
    a.send(B, ka, at);
    let wire = Wire::new(|_, _| false);
    wire.carry(&mut a, addr(1), &mut b, at);
    let (_, from_b) = lengths_sent(&mut a, &mut b, at, at + secs(10.0));
    assert!(from_b.contains(&KEEPALIVE_LEN), "{from_b:?}");
}

#[test]
fn when_the_pings_stop_arriving_the_answering_side_notices_within_the_liveness_timeout() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let broken = t0 + secs(30.0);
    // Only a → b breaks: b hears nothing, a still hears b's suspect pings.
    let wire = Wire::new(|now, d: &[u8]| now >= broken && d[2..4] == [0, 1]);
    let by = broken + LIVENESS_TIMEOUT + secs(0.01);
    run(&mut a, &mut b, &wire, t0, by);
    let s = b.status(A, by).unwrap();
    assert_eq!(s.udp, UdpState::Blocked);
    assert!(!s.established);
}

/// A dual-stack pair whose data takes IPv4: the family choice's ping over
/// IPv6 is answered over IPv6, its pong is reported with its stamp, and
/// neither counts as the IPv4 path's liveness or RTT.
#[test]
fn a_probe_over_the_other_family_is_answered_there_and_proves_nothing_of_the_path() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let b_v6: SocketAddr = "[2001:db8::2]:6783".parse().unwrap();
    let a_v6: SocketAddr = "[2001:db8::1]:6783".parse().unwrap();
    let stamp = a.probe(B, b_v6, t0);
    let (to, mut d) = a.poll_transmit().unwrap();
    assert_eq!(to, b_v6);
    assert!(
        a.links[&B].last_tx.is_none(),
        "not traffic on the IPv4 path"
    );
    b.handle_datagram(t0, a_v6, &mut d);
    assert!(matches!(
        b.poll_event(),
        Some(HeartbeatEvent::Authenticated { from, .. }) if from == a_v6
    ));
    assert_eq!(b.status(A, t0).unwrap().udp, UdpState::Unverified);
    let (to, mut d) = b.poll_transmit().unwrap();
    assert_eq!(to, a_v6, "answered where the ping came from");
    let later = t0 + Duration::from_millis(3);
    a.handle_datagram(later, b_v6, &mut d);
    assert!(matches!(
        a.poll_event(),
        Some(HeartbeatEvent::Authenticated { .. })
    ));
    assert_eq!(
        a.poll_event(),
        Some(HeartbeatEvent::Pong {
            peer: B,
            from: b_v6,
            stamp
        })
    );
    let status = a.status(B, later).unwrap();
    assert_eq!(status.udp, UdpState::Unverified);
    assert_eq!(status.rtt, None);
    // The same over IPv4, the path itself: liveness and RTT as before.
    let stamp = a.probe(B, addr(2), later);
    let (_, mut d) = a.poll_transmit().unwrap();
    b.handle_datagram(later, addr(1), &mut d);
    while b.poll_event().is_some() {}
    let (to, mut d) = b.poll_transmit().unwrap();
    assert_eq!(to, addr(1));
    let end = later + Duration::from_millis(2);
    a.handle_datagram(end, addr(2), &mut d);
    let events: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(events.contains(&HeartbeatEvent::Pong {
        peer: B,
        from: addr(2),
        stamp
    }));
    let status = a.status(B, end).unwrap();
    assert_eq!(status.udp, UdpState::Ok);
    assert!(status.rtt.is_some());
}

#[test]
fn a_link_followed_through_a_rotation_stays_established_under_the_new_id() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    let wire = Wire::new(|_, _| false);
    run(&mut a, &mut b, &wire, t0, t0 + secs(2.0));
    let before = a.status(B, t0 + secs(2.0)).unwrap();
    let b2 = PeerId(3);
    a.follow_rotation(B, b2);
    assert!(a.status(B, t0 + secs(2.0)).is_none());
    let after = a.status(b2, t0 + secs(2.0)).unwrap();
    assert_eq!(
        (after.udp, after.pmtu, after.rtt),
        (before.udp, before.pmtu, before.rtt)
    );
    let changes = run(&mut a, &mut b, &wire, t0 + secs(2.0), t0 + secs(30.0));
    assert!(
        changes.iter().all(|(_, established)| *established),
        "the link went down across the rotation: {changes:?}"
    );
    assert!(a.status(b2, t0 + secs(30.0)).unwrap().established);
}
