//! Tests of the peer registry: arbitration, caps and the rekey policy.
#![allow(clippy::unwrap_used)]
use super::rekey::REKEY_RETRY;
use super::tests_support::{arrival, new_keys as keys};
use super::*;
use crate::crypto::session::REJECT_AFTER;

const REKEY: Duration = Duration::from_secs(120);

fn low() -> PeerId {
    PeerId(1)
}
fn high() -> PeerId {
    PeerId(2)
}

fn drain(p: &mut Peers) -> Vec<(ConnectionId, ConnectionCommand)> {
    std::iter::from_fn(|| p.poll_transmit()).collect()
}

fn is_close(c: &ConnectionCommand) -> bool {
    matches!(c, ConnectionCommand::Close(_))
}

#[test]
fn a_simultaneous_dial_keeps_the_connection_the_lower_id_dialled() {
    let now = Instant::now();
    // I am the lower ID: my outbound dial wins over the peer's inbound one.
    let mut p = Peers::new(low(), REKEY);
    assert_eq!(p.handle_up(arrival(high(), 1, true, 7), now), Arrived::New);
    assert_eq!(
        p.handle_up(arrival(high(), 2, false, 7), now),
        Arrived::Refused
    );
    let sent = drain(&mut p);
    assert!(sent.iter().any(|(c, m)| *c == 2 && is_close(m)));
    assert_eq!(p.get(high()).unwrap().connection, 1);

    // I am the higher ID: the peer's dial (inbound here) wins, adopted.
    let mut p = Peers::new(high(), REKEY);
    p.handle_up(arrival(low(), 1, true, 7), now);
    drain(&mut p);
    assert_eq!(
        p.handle_up(arrival(low(), 2, false, 7), now),
        Arrived::Adopted
    );
    let sent = drain(&mut p);
    assert!(sent.iter().any(|(c, m)| *c == 1 && is_close(m)));
    assert!(sent.iter().any(|(c, m)| *c == 2
        && matches!(
            m,
            ConnectionCommand::Send(ControlMessage::KeyConfirm { .. })
        )));
    let peer = p.get(low()).unwrap();
    assert_eq!(peer.connection, 2);
    assert!(peer.keys.next().is_some(), "adopted keys count as a rekey");
}

#[test]
fn the_same_side_dialling_again_replaces_its_old_connection() {
    let now = Instant::now();
    // The peer dialled us again (its NAT rebound and reset its end; ours
    // still looks open): the new connection adopts the record, whichever
    // side leads.
    for me in [low(), high()] {
        let other = if me == low() { high() } else { low() };
        let mut p = Peers::new(me, REKEY);
        p.handle_up(arrival(other, 1, false, 7), now);
        drain(&mut p);
        assert_eq!(
            p.handle_up(arrival(other, 2, false, 7), now),
            Arrived::Adopted
        );
        assert!(drain(&mut p).iter().any(|(c, m)| *c == 1 && is_close(m)));
        assert_eq!(p.get(other).unwrap().connection, 2);
        // And the same for our own second dial.
        assert_eq!(
            p.handle_up(arrival(other, 3, true, 7), now),
            if me == low() {
                Arrived::Adopted
            } else {
                Arrived::Refused
            }
        );
    }
}

#[test]
fn a_restarted_peer_replaces_the_old_record_with_fresh_keys() {
    let now = Instant::now();
    let mut p = Peers::new(low(), REKEY);
    p.handle_up(arrival(high(), 1, true, 7), now);
    assert_eq!(p.handle_up(arrival(high(), 2, false, 8), now), Arrived::New);
    let sent = drain(&mut p);
    assert!(sent.iter().any(|(c, m)| *c == 1 && is_close(m)));
    let peer = p.get(high()).unwrap();
    assert_eq!(peer.connection, 2);
    assert!(peer.keys.next().is_none());
    assert_eq!(
        peer.endpoint,
        Some(peer.hello.listen),
        "inbound: announced listen address"
    );
    // The old connection's end does not remove the new record.
    assert_eq!(p.handle_down(1, "closed"), None);
    assert!(p.contains(high()));
}

#[test]
fn a_second_connection_with_another_key_is_closed() {
    let now = Instant::now();
    let mut p = Peers::new(low(), REKEY);
    p.handle_up(arrival(high(), 1, true, 7), now);
    drain(&mut p);
    let mut other = arrival(high(), 2, false, 8);
    other.public_key = [9; 32];
    assert_eq!(p.handle_up(other, now), Arrived::Refused);
    assert_eq!(p.get(high()).unwrap().connection, 1);
}

#[test]
fn only_the_leader_starts_a_timer_rekey_and_retries_are_spaced() {
    let t0 = Instant::now();
    let mut p = Peers::new(low(), REKEY);
    p.handle_up(arrival(high(), 1, true, 7), t0);
    drain(&mut p);
    let (due, why) = p.poll_timeout().unwrap();
    assert_eq!((due, why), (t0 + REKEY, PeersTimer::Rekey));
    p.handle_timeout(due);
    assert!(matches!(drain(&mut p)[..], [(1, ConnectionCommand::Rekey)]));
    let (next, _) = p.poll_timeout().unwrap();
    assert_eq!(next, due + REKEY_RETRY, "the retry waits");
    p.handle_timeout(due + Duration::from_secs(1));
    assert!(drain(&mut p).is_empty());
    p.handle_timeout(next);
    assert!(matches!(drain(&mut p)[..], [(1, ConnectionCommand::Rekey)]));
}

#[test]
fn the_follower_asks_for_a_rekey_only_when_overdue() {
    let t0 = Instant::now();
    let rekey = Duration::from_secs(20);
    let mut p = Peers::new(high(), rekey);
    p.handle_up(arrival(low(), 1, true, 7), t0);
    drain(&mut p);
    p.handle_timeout(t0 + rekey);
    assert!(drain(&mut p).is_empty(), "due, but the leader rekeys");
    let (at, _) = p.poll_timeout().unwrap();
    assert_eq!(at, t0 + rekey * 5 / 4, "no wake-up until overdue");
    p.handle_timeout(at);
    assert!(matches!(
        drain(&mut p)[..],
        [(1, ConnectionCommand::Send(ControlMessage::RekeyRequest))]
    ));
}

#[test]
fn a_new_peer_over_the_connection_cap_is_closed_but_a_known_one_reconnects() {
    let now = Instant::now();
    let mut p = Peers::new(PeerId(0), REKEY);
    for i in 1..=MAX_CONNECTIONS as u64 {
        assert_eq!(
            p.handle_up(arrival(PeerId(i), i, true, 7), now),
            Arrived::New
        );
    }
    drain(&mut p);
    let extra = 10_000;
    assert_eq!(
        p.handle_up(arrival(PeerId(extra), extra, false, 7), now),
        Arrived::OverCap
    );
    assert!(matches!(&drain(&mut p)[..], [(c, close)] if *c == extra && is_close(close)));
    assert_eq!(p.len(), MAX_CONNECTIONS);
    // A restarted known peer still replaces its record.
    assert_eq!(
        p.handle_up(arrival(PeerId(1), extra + 1, false, 8), now),
        Arrived::New
    );
}

/// Every deadline the follower's registry arms for one keyset, in order,
/// until nothing answers its requests.
fn follower_deadlines(rekey: Duration) -> (Instant, Vec<(Duration, PeersTimer)>) {
    let t0 = Instant::now();
    let mut p = Peers::new(high(), rekey);
    p.handle_up(arrival(low(), 1, true, 7), t0);
    drain(&mut p);
    let mut seen = Vec::new();
    while let Some((at, why)) = p.poll_timeout() {
        seen.push((at - t0, why));
        p.handle_timeout(at);
        drain(&mut p);
        if seen.len() > 20 {
            break;
        }
    }
    (t0, seen)
}

#[test]
fn the_followers_rekey_requests_all_come_before_its_keys_are_rejected() {
    for rekey in [REKEY, Duration::from_secs(5), Duration::from_secs(140)] {
        let (_, seen) = follower_deadlines(rekey);
        let reject = seen
            .iter()
            .position(|(_, why)| *why == PeersTimer::KeyExpiry)
            .unwrap();
        assert_eq!(seen[reject].0, REJECT_AFTER, "{rekey:?}: {seen:?}");
        let asks: Vec<Duration> = seen[..reject]
            .iter()
            .filter(|(_, why)| *why == PeersTimer::Rekey)
            .map(|(at, _)| *at)
            .collect();
        assert!(asks.len() >= 2, "{rekey:?}: {seen:?}");
        assert!(asks[0] >= rekey.min(REJECT_AFTER - REKEY_RETRY * 2));
        assert!(asks.iter().all(|at| *at < REJECT_AFTER), "{seen:?}");
    }
    // The defaults: leader due at 120 s; the follower asks at 150 s,
    // retries at 160 s and 170 s; the keys die at 180 s.
    let (_, seen) = follower_deadlines(REKEY);
    let secs: Vec<u64> = seen.iter().map(|(at, _)| at.as_secs()).collect();
    assert_eq!(&secs[..4], &[150, 160, 170, 180], "{seen:?}");
}

#[test]
fn a_rekey_request_is_honoured_by_the_leader_only_when_its_keys_are_not_fresh() {
    let t0 = Instant::now();
    let mut p = Peers::new(low(), REKEY);
    p.handle_up(arrival(high(), 1, true, 7), t0);
    drain(&mut p);
    p.handle_message(1, ControlMessage::RekeyRequest, t0 + Duration::from_secs(1));
    assert!(drain(&mut p).is_empty(), "fresh keys");
    p.handle_message(1, ControlMessage::RekeyRequest, t0 + REKEY);
    assert!(matches!(drain(&mut p)[..], [(1, ConnectionCommand::Rekey)]));

    let mut f = Peers::new(high(), REKEY);
    f.handle_up(arrival(low(), 1, true, 7), t0);
    drain(&mut f);
    f.handle_message(1, ControlMessage::RekeyRequest, t0 + REKEY);
    assert!(drain(&mut f).is_empty(), "the follower never starts one");
}

#[test]
fn a_rekey_installs_next_and_confirms_after_which_current_switches() {
    let t0 = Instant::now();
    let mut p = Peers::new(low(), REKEY);
    p.handle_up(arrival(high(), 1, true, 7), t0);
    drain(&mut p);
    assert!(p.take_changed());
    p.handle_rekeyed(1, keys(50), t0);
    assert!(p.take_changed());
    assert!(matches!(
        drain(&mut p)[..],
        [(
            1,
            ConnectionCommand::Send(ControlMessage::KeyConfirm {
                session_index: 1050
            })
        )]
    ));
    p.confirm(Some(high()), 50, t0);
    assert!(p.take_changed());
    assert_eq!(
        p.get(high()).unwrap().keys.current().unwrap().local_index,
        50
    );
}

#[test]
fn no_deadline_lies_in_the_past_after_a_timeout_pass() {
    // A busy loop would follow from a deadline that handle_timeout
    // does not move past.
    let t0 = Instant::now();
    for me in [low(), high()] {
        let other = if me == low() { high() } else { low() };
        let mut p = Peers::new(me, REKEY);
        p.handle_up(arrival(other, 1, true, 7), t0);
        let mut now = t0;
        for _ in 0..50 {
            let Some((at, _)) = p.poll_timeout() else {
                break;
            };
            now = now.max(at);
            p.handle_timeout(now);
            drain(&mut p);
            if let Some((next, _)) = p.poll_timeout() {
                assert!(next > now, "{me:?}: deadline {next:?} not after {now:?}");
            }
        }
    }
}

#[test]
fn gossip_is_handed_back_with_its_sender() {
    let t0 = Instant::now();
    let mut p = Peers::new(low(), REKEY);
    p.handle_up(arrival(high(), 1, true, 7), t0);
    let got = p.handle_message(
        1,
        ControlMessage::Gossip {
            channel: 2,
            payload: vec![1, 2],
        },
        t0,
    );
    assert_eq!(got, Some((high(), 2, vec![1, 2])));
    assert_eq!(p.handle_message(9, ControlMessage::RekeyRequest, t0), None);
}

#[test]
fn a_direct_connection_outranks_a_relayed_one_both_ways() {
    let now = Instant::now();
    let relayed = |connection, outbound| {
        let mut a = arrival(high(), connection, outbound, 7);
        a.relayed_via = Some(PeerId(3));
        a
    };
    // Relayed first, then a direct one of the same process: adopted, and
    // its UDP goes where the direct connection says.
    let mut p = Peers::new(low(), REKEY);
    assert_eq!(p.handle_up(relayed(1, true), now), Arrived::New);
    assert_eq!(
        p.get(high()).unwrap().endpoint,
        None,
        "no UDP path until punched"
    );
    drain(&mut p);
    assert_eq!(
        p.handle_up(arrival(high(), 2, false, 7), now),
        Arrived::Adopted
    );
    let sent = drain(&mut p);
    assert!(
        sent.iter().any(|(c, m)| *c == 1 && is_close(m)),
        "relayed one closed"
    );
    let peer = p.get(high()).unwrap();
    assert_eq!((peer.connection, peer.relayed_via), (2, None));
    assert_eq!(peer.endpoint, Some(peer.hello.listen));
    assert!(p.is_direct(high()));

    // Direct first: a relayed one of the same process is refused, whoever
    // opened it, and the direct one stays.
    let mut p = Peers::new(high(), REKEY);
    p.handle_up(arrival(low(), 1, false, 7), now);
    drain(&mut p);
    let mut late = arrival(low(), 2, true, 7);
    late.relayed_via = Some(PeerId(3));
    assert_eq!(p.handle_up(late, now), Arrived::Refused);
    assert!(drain(&mut p).iter().any(|(c, m)| *c == 2 && is_close(m)));
    assert_eq!(p.get(low()).unwrap().connection, 1);

    // Two relayed ones through the same relay: the usual rule (the
    // leading side's opening wins).
    let mut p = Peers::new(low(), REKEY);
    p.handle_up(relayed(1, true), now);
    drain(&mut p);
    assert_eq!(p.handle_up(relayed(2, false), now), Arrived::Refused);

    // Through another relay (the first one went): the new one takes over
    // the record, keys and UDP path, with no peer-down.
    p.set_endpoint(high(), SocketAddr::from(([203, 0, 113, 40], 6783)));
    let mut moved = relayed(3, true);
    moved.relayed_via = Some(PeerId(4));
    assert_eq!(p.handle_up(moved, now), Arrived::Adopted);
    assert!(drain(&mut p).iter().any(|(c, m)| *c == 1 && is_close(m)));
    let peer = p.get(high()).unwrap();
    assert_eq!((peer.connection, peer.relayed_via), (3, Some(PeerId(4))));
    assert_eq!(
        peer.endpoint,
        Some(SocketAddr::from(([203, 0, 113, 40], 6783)))
    );
    assert!(std::iter::from_fn(|| p.poll_event()).all(|e| !matches!(e, PeerEvent::Down { .. })));
}
