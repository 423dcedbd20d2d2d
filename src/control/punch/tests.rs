//! The punch core on a virtual clock: two routers A and B behind NAT and a
//! rendezvous R that forwards their requests as offers.

#![allow(clippy::unwrap_used)]

use super::*;

mod nats;
mod order;

const A: PeerId = PeerId(0xa);
const B: PeerId = PeerId(0xb);
const R: PeerId = PeerId(0xc);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A behind masquerade in site 1: listen address, then its observed one.
fn a_eps() -> Vec<SocketAddr> {
    vec![addr("198.51.100.10:6783"), addr("203.0.113.1:40001")]
}

/// B behind masquerade in site 2.
fn b_eps() -> Vec<SocketAddr> {
    vec![addr("198.51.100.70:6783"), addr("203.0.113.2:50002")]
}

fn transmits(p: &mut Punch) -> Vec<PunchTransmit> {
    std::iter::from_fn(|| p.poll_transmit()).collect()
}

fn events(p: &mut Punch) -> Vec<PunchEvent> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

fn probes_to(ts: &[PunchTransmit]) -> Vec<SocketAddr> {
    ts.iter()
        .filter_map(|t| match t {
            PunchTransmit::Probe { addr, .. } => Some(*addr),
            PunchTransmit::Request { .. } => None,
        })
        .collect()
}

/// A asks through R, B answers through R; both are probing afterwards.
/// Returns A's and B's first transmits after the offers.
fn exchange(a: &mut Punch, b: &mut Punch, t0: Instant) -> (Vec<PunchTransmit>, Vec<PunchTransmit>) {
    a.want(B, Some(R), &a_eps(), &b_eps(), t0);
    let request = transmits(a);
    let [
        PunchTransmit::Request {
            via,
            to,
            candidates,
        },
    ] = request.as_slice()
    else {
        panic!("one request expected, got {request:?}");
    };
    assert_eq!((*via, *to), (R, B));
    assert_eq!(
        candidates,
        &a_eps(),
        "the request carries A's list as advertised"
    );
    b.handle_offer(A, R, &b_eps(), candidates, t0);
    let from_b = transmits(b);
    let Some(PunchTransmit::Request { candidates, .. }) = from_b.first() else {
        panic!("B answers through R first, got {from_b:?}");
    };
    a.handle_offer(B, R, &a_eps(), &candidates.clone(), t0);
    (transmits(a), from_b)
}

#[test]
fn both_sides_probe_the_others_public_endpoint_once_offers_crossed_the_rendezvous() {
    let t0 = Instant::now();
    let (mut a, mut b) = (Punch::new(A, 1), Punch::new(B, 2));
    let (from_a, from_b) = exchange(&mut a, &mut b, t0);
    assert_eq!(probes_to(&from_a), vec![addr("203.0.113.2:50002")]);
    assert_eq!(probes_to(&from_b), vec![addr("203.0.113.1:40001")]);
    assert!(
        from_a
            .iter()
            .all(|t| matches!(t, PunchTransmit::Probe { .. })),
        "the requester does not answer the answer: {from_a:?}"
    );
    assert_eq!(a.state(B), Some(PunchState::Probing));
    assert_eq!(a.counters().attempts, 1);
    assert_eq!(b.counters().attempts, 1);
}

#[test]
fn the_first_authenticated_answer_fixes_the_path_and_a_faster_one_moves_it() {
    let t0 = Instant::now();
    let (mut a, mut b) = (Punch::new(A, 1), Punch::new(B, 2));
    exchange(&mut a, &mut b, t0);
    let slow = addr("203.0.113.2:50002");
    let fast = addr("198.51.100.70:6783");
    a.handle_answer(B, slow, Duration::from_millis(30));
    a.handle_answer(B, slow, Duration::from_millis(25));
    a.handle_answer(B, fast, Duration::from_millis(40));
    a.handle_answer(B, fast, Duration::from_millis(2));
    assert_eq!(
        events(&mut a),
        vec![
            PunchEvent::Punched {
                peer: B,
                addr: slow,
                rtt: Duration::from_millis(30)
            },
            PunchEvent::Improved {
                peer: B,
                addr: fast,
                rtt: Duration::from_millis(2)
            },
        ]
    );
    a.handle_timeout(t0 + PunchConfig::default().window);
    assert_eq!(
        a.state(B),
        Some(PunchState::Punched {
            addr: fast,
            rtt: Duration::from_millis(2)
        })
    );
    assert_eq!(a.counters().successes, 1);
    // The path is fixed: no more probes, no more timers for it.
    assert!(probes_to(&transmits(&mut a)).is_empty());
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn probe_rounds_are_fifty_to_two_hundred_ms_apart_and_bounded() {
    let t0 = Instant::now();
    let config = PunchConfig {
        window: Duration::from_secs(3600),
        ..PunchConfig::default()
    };
    let mut a = Punch::with_config(A, config.clone(), 7);
    a.handle_offer(B, R, &a_eps(), &b_eps(), t0);
    transmits(&mut a);
    let (mut now, mut rounds, mut last) = (t0, 1, t0);
    while let Some((at, PunchTimer::Probe)) = a.poll_timeout() {
        let gap = at - last;
        assert!(
            (config.probe_min..=config.probe_max).contains(&gap),
            "{gap:?}"
        );
        now = at;
        a.handle_timeout(now);
        assert_eq!(probes_to(&transmits(&mut a)).len(), 1);
        (rounds, last) = (rounds + 1, at);
        assert!(rounds <= config.max_rounds, "rounds are bounded");
    }
    assert_eq!(rounds, config.max_rounds);
    // Out of rounds: the last probes get one gap, then the attempt fails,
    // long before the window's end.
    let (at, why) = a.poll_timeout().unwrap();
    assert_eq!(why, PunchTimer::Deadline);
    assert!(at - now <= config.probe_max);
    a.handle_timeout(at);
    assert_eq!(a.state(B), Some(PunchState::Failed(PunchFailure::NoAnswer)));
    assert!(at < t0 + Duration::from_secs(64 * 200 / 1000 + 1));
}

#[test]
fn an_unanswered_offer_retries_with_a_doubling_jittered_wait_capped_at_thirty_seconds() {
    let t0 = Instant::now();
    let mut a = Punch::new(A, 3);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        a.want(B, Some(R), &a_eps(), &b_eps(), now);
        assert!(matches!(
            transmits(&mut a).as_slice(),
            [PunchTransmit::Request { .. }]
        ));
        now += PunchConfig::default().offer_timeout;
        a.handle_timeout(now);
        assert!(events(&mut a).contains(&PunchEvent::Failed {
            peer: B,
            reason: PunchFailure::NoOffer
        }));
        // Wanting again during the back-off changes nothing.
        a.want(B, Some(R), &a_eps(), &b_eps(), now);
        assert!(transmits(&mut a).is_empty());
        let (at, why) = a.poll_timeout().unwrap();
        assert_eq!(why, PunchTimer::Retry);
        waits.push(at - now);
        now = at;
        a.handle_timeout(now);
        assert_eq!(events(&mut a), vec![PunchEvent::RetryDue { peer: B }]);
    }
    let secs: Vec<f64> = waits.iter().map(Duration::as_secs_f64).collect();
    assert!((3.75..=5.0).contains(&secs[0]), "{secs:?}");
    assert!((7.5..=10.0).contains(&secs[1]), "{secs:?}");
    assert!(secs.iter().all(|s| *s <= 30.0), "capped: {secs:?}");
    assert!(secs[4..].iter().all(|s| *s >= 22.5), "at the cap: {secs:?}");
    assert!(
        secs[4..].windows(2).any(|w| w[0] != w[1]),
        "jittered: {secs:?}"
    );
    assert_eq!(a.counters().failures[PunchFailure::NoOffer as usize], 8);
    assert_eq!(a.counters().attempts, 8);
}

#[test]
fn a_request_the_peer_never_answers_fails_as_no_offer() {
    let t0 = Instant::now();
    let mut a = Punch::new(A, 4);
    a.want(B, Some(R), &a_eps(), &b_eps(), t0);
    assert_eq!(
        a.poll_timeout().map(|(_, why)| why),
        Some(PunchTimer::Deadline)
    );
    a.handle_timeout(t0 + PunchConfig::default().offer_timeout);
    assert_eq!(a.state(B), Some(PunchState::Failed(PunchFailure::NoOffer)));
}

#[test]
fn without_a_common_router_or_a_public_endpoint_the_pair_stays_relayed_with_the_reason() {
    let t0 = Instant::now();
    let mut a = Punch::new(A, 5);
    a.want(B, None, &a_eps(), &b_eps(), t0);
    assert_eq!(
        events(&mut a),
        vec![PunchEvent::Failed {
            peer: B,
            reason: PunchFailure::NoRendezvous
        }]
    );
    // C behind symmetric NAT advertises only its listen address.
    let c = PeerId(0xd);
    a.want(c, Some(R), &a_eps(), &[addr("198.51.100.130:6783")], t0);
    assert_eq!(
        a.state(c),
        Some(PunchState::Failed(PunchFailure::SymmetricNat))
    );
    assert_eq!(PunchFailure::SymmetricNat.as_str(), "symmetric NAT");
    assert!(
        transmits(&mut a).is_empty(),
        "nothing is sent for a pair that cannot be punched"
    );
    // And C itself, wanting A, names the same reason at once and sends
    // nothing (A would refuse its offer).
    let mut sym = Punch::new(c, 7);
    sym.want(A, Some(R), &[addr("198.51.100.130:6783")], &a_eps(), t0);
    assert_eq!(
        sym.state(A),
        Some(PunchState::Failed(PunchFailure::SymmetricNat))
    );
    assert!(transmits(&mut sym).is_empty());
    // Offered by C, A neither answers nor probes.
    let mut fresh = Punch::new(A, 6);
    fresh.handle_offer(c, R, &a_eps(), &[addr("198.51.100.130:6783")], t0);
    assert!(transmits(&mut fresh).is_empty());
    assert_eq!(
        fresh.state(c),
        Some(PunchState::Failed(PunchFailure::SymmetricNat))
    );
}

#[test]
fn a_flood_of_offers_while_probing_sends_nothing_more() {
    let t0 = Instant::now();
    let (mut a, mut b) = (Punch::new(A, 1), Punch::new(B, 2));
    exchange(&mut a, &mut b, t0);
    for _ in 0..10_000 {
        b.handle_offer(A, R, &b_eps(), &a_eps(), t0);
    }
    assert!(transmits(&mut b).is_empty());
    assert_eq!(b.counters().attempts, 1);
}

#[test]
fn a_lost_punched_path_is_counted_and_punched_again_after_the_back_off() {
    let t0 = Instant::now();
    let (mut a, mut b) = (Punch::new(A, 1), Punch::new(B, 2));
    exchange(&mut a, &mut b, t0);
    a.handle_answer(B, addr("203.0.113.2:50002"), Duration::from_millis(5));
    let mut now = t0 + PunchConfig::default().window;
    a.handle_timeout(now);
    events(&mut a);
    a.handle_path_lost(B, now);
    assert_eq!(a.state(B), Some(PunchState::Failed(PunchFailure::PathLost)));
    // A lost path (a NAT that rebound) is tried again at once.
    let (at, _) = a.poll_timeout().unwrap();
    assert_eq!(at, now);
    now = at;
    a.handle_timeout(now);
    a.want(B, Some(R), &a_eps(), &b_eps(), now);
    assert!(matches!(
        transmits(&mut a).as_slice(),
        [PunchTransmit::Request { .. }]
    ));
    assert_eq!(a.counters().failures[PunchFailure::PathLost as usize], 1);
    // A direct link or a departure forgets the pair.
    a.forget(B);
    assert_eq!(a.state(B), None);
}

#[test]
fn an_answer_from_a_router_never_offered_changes_nothing() {
    let mut a = Punch::new(A, 1);
    a.handle_answer(B, addr("203.0.113.2:50002"), Duration::from_millis(1));
    assert_eq!(a.state(B), None);
    assert!(events(&mut a).is_empty());
    assert_eq!(a.counters().successes, 0);
}

#[test]
fn a_private_address_that_looks_like_my_site_is_probed_first_and_only_public_ones_count() {
    let mine = [addr("198.51.100.10:6783"), addr("203.0.113.1:40001")];
    // Same /26 site: the listen address goes first.
    let same_site = [addr("198.51.100.11:6783"), addr("203.0.113.9:1234")];
    assert_eq!(usable(&mine, &same_site), same_site.to_vec());
    // Same site behind 1:1 NAT: public addresses neighbour like the
    // private ones; a tie keeps the listen address, first.
    let one_to_one = [addr("198.51.100.10:6783"), addr("203.0.113.11:6783")];
    let neighbour = [addr("198.51.100.11:6783"), addr("203.0.113.12:6783")];
    assert_eq!(usable(&one_to_one, &neighbour), neighbour.to_vec());
    // Same masquerade gateway (my public address, another port): the
    // listen address, first, although the public one is more alike.
    let behind_mine = [addr("198.51.100.11:6783"), addr("203.0.113.1:40002")];
    assert_eq!(usable(&mine, &behind_mine), behind_mine.to_vec());
    // Another site with a public endpoint: the public one is alike enough.
    let other = [addr("10.1.2.3:6783"), addr("203.0.113.9:1234")];
    assert_eq!(usable(&mine, &other), vec![addr("203.0.113.9:1234")]);
    // Only a listen address: nothing.
    assert!(usable(&mine, &same_site[..1]).is_empty());
    assert!(usable(&mine, &[]).is_empty());
    // Deduplicated and bounded.
    let many: Vec<SocketAddr> = (0..20)
        .map(|i| SocketAddr::from(([203, 0, 113, i % 12], 7000)))
        .collect();
    let ordered = order(&mine, &many);
    assert_eq!(ordered.len(), MAX_CANDIDATES);
    assert_eq!(ordered[0], addr("203.0.113.1:7000"), "most alike first");
}

#[test]
fn offers_in_the_first_half_of_the_quiet_period_are_ignored_and_counted() {
    let t0 = Instant::now();
    let (mut a, mut b) = (Punch::new(A, 1), Punch::new(B, 2));
    exchange(&mut a, &mut b, t0);
    // Nobody answers: B's window ends unanswered.
    let config = PunchConfig::default();
    let failed_at = t0 + config.window;
    b.handle_timeout(failed_at);
    assert_eq!(b.state(A), Some(PunchState::Failed(PunchFailure::NoAnswer)));
    transmits(&mut b);
    // A relayed peer that floods offers gets nothing probed for half the
    // quiet period.
    let mut now = failed_at;
    while now < failed_at + config.quiet / 2 {
        b.handle_offer(A, R, &b_eps(), &a_eps(), now);
        now += Duration::from_millis(100);
    }
    assert!(transmits(&mut b).is_empty(), "nothing sent while quiet");
    assert_eq!(b.counters().offers_early, 175);
    assert_eq!(b.counters().attempts, 1);
    // From then on an offer is answered: the peer's swapped attempt.
    b.handle_offer(A, R, &b_eps(), &a_eps(), failed_at + config.quiet / 2);
    let sent = transmits(&mut b);
    assert!(matches!(sent.first(), Some(PunchTransmit::Request { .. })));
    assert!(!probes_to(&sent).is_empty());
    assert_eq!(b.counters().attempts, 2);
}

#[test]
fn an_offer_after_a_failure_that_was_not_an_unanswered_window_is_answered_at_once() {
    let t0 = Instant::now();
    let mut a = Punch::new(A, 1);
    a.want(B, Some(R), &a_eps(), &b_eps(), t0);
    transmits(&mut a);
    let failed_at = t0 + PunchConfig::default().offer_timeout;
    a.handle_timeout(failed_at);
    assert_eq!(a.state(B), Some(PunchState::Failed(PunchFailure::NoOffer)));
    a.handle_offer(B, R, &a_eps(), &b_eps(), failed_at);
    assert!(!probes_to(&transmits(&mut a)).is_empty());
    assert_eq!(a.counters().offers_early, 0);
}
