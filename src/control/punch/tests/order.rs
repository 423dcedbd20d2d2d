//! Who probes first (module docs of `punch`, "Who probes first"): the
//! first attempt's requester is the side that leads, its peer answers and
//! probes first; an unanswered window swaps the sides after a quiet period
//! longer than a NAT's UDP timeout; a side left waiting requests itself.

use super::*;

/// A leads B (the lower ID).
#[test]
fn the_leader_requests_and_its_peer_waits_answers_and_probes_first() {
    assert!(A.leads(B));
    let t0 = Instant::now();
    let (mut a, mut b) = (Punch::new(A, 1), Punch::new(B, 2));
    // Both want it at once (their relayed connection came up).
    a.want(B, Some(R), &a_eps(), &b_eps(), t0);
    b.want(A, Some(R), &b_eps(), &a_eps(), t0);
    let from_a = transmits(&mut a);
    assert!(matches!(from_a.as_slice(), [PunchTransmit::Request { .. }]));
    assert!(transmits(&mut b).is_empty(), "B waits for A's request");
    assert_eq!(b.state(A), Some(PunchState::Awaiting));
    // A's request reaches B: B answers and probes at once.
    b.handle_offer(A, R, &b_eps(), &a_eps(), t0);
    let from_b = transmits(&mut b);
    assert!(matches!(
        from_b.first(),
        Some(PunchTransmit::Request { .. })
    ));
    assert_eq!(probes_to(&from_b), vec![addr("203.0.113.1:40001")]);
    // B's answer reaches A: A probes, and answers nothing.
    a.handle_offer(B, R, &a_eps(), &b_eps(), t0);
    let from_a = transmits(&mut a);
    assert_eq!(probes_to(&from_a), vec![addr("203.0.113.2:50002")]);
    assert_eq!(from_a.len(), 1);
    assert_eq!((a.counters().attempts, b.counters().attempts), (1, 1));
}

/// Runs both cores' timers until neither is probing any more (the window
/// ends unanswered); returns when.
fn run_out(a: &mut Punch, b: &mut Punch, mut now: Instant) -> Instant {
    while [a.state(B), b.state(A)].contains(&Some(PunchState::Probing)) {
        now = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .map(|(at, _)| at)
            .min()
            .unwrap();
        a.handle_timeout(now);
        b.handle_timeout(now);
        transmits(a);
        transmits(b);
    }
    for (core, peer) in [(&mut *a, B), (&mut *b, A)] {
        assert_eq!(
            core.state(peer),
            Some(PunchState::Failed(PunchFailure::NoAnswer))
        );
        events(core);
    }
    now
}

#[test]
fn an_unanswered_window_swaps_who_probes_first_after_a_quiet_period_longer_than_conntrack_keeps_it()
{
    let t0 = Instant::now();
    let (mut a, mut b) = (Punch::new(A, 1), Punch::new(B, 2));
    let config = PunchConfig::default();
    // The first attempt: A requests, B probes first; nothing gets through.
    exchange(&mut a, &mut b, t0);
    let failed = run_out(&mut a, &mut b, t0);
    // Nothing is sent by either side for the quiet period, longer than
    // Linux's 30 s for an unanswered UDP flow.
    assert!(config.quiet > Duration::from_secs(30));
    let mut now = failed;
    let mut first_request = None;
    while first_request.is_none() {
        let (at, _) = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
            .unwrap();
        now = at;
        for (core, peer, mine, theirs, name) in [
            (&mut a, B, a_eps(), b_eps(), "A"),
            (&mut b, A, b_eps(), a_eps(), "B"),
        ] {
            core.handle_timeout(now);
            for e in events(core) {
                if e == (PunchEvent::RetryDue { peer }) {
                    core.want(peer, Some(R), &mine, &theirs, now);
                }
            }
            let sent = transmits(core);
            assert!(
                probes_to(&sent).is_empty(),
                "{name} probed at {:?}",
                now - failed
            );
            if !sent.is_empty() {
                first_request = Some(name);
            }
        }
    }
    // B, which probed first, now requests: A will probe first. Not before
    // the quiet period, and within its jitter.
    assert_eq!(first_request, Some("B"));
    let quiet = now - failed;
    assert!(
        quiet >= config.quiet && quiet <= config.quiet.mul_f64(1.15),
        "{quiet:?}"
    );
    assert_eq!(
        a.poll_timeout().map(|(_, why)| why),
        Some(PunchTimer::Retry)
    );
    // B's request reaches A while A still waits: A answers and probes.
    a.handle_offer(B, R, &a_eps(), &b_eps(), now);
    let from_a = transmits(&mut a);
    assert!(matches!(
        from_a.first(),
        Some(PunchTransmit::Request { .. })
    ));
    assert_eq!(probes_to(&from_a), vec![addr("203.0.113.2:50002")]);
    // B gets A's answer and probes; once more unanswered, the order
    // swaps back: A requests first.
    b.handle_offer(A, R, &b_eps(), &a_eps(), now);
    assert_eq!(probes_to(&transmits(&mut b)).len(), 1);
    let failed = run_out(&mut a, &mut b, now);
    let (a_at, _) = a.poll_timeout().unwrap();
    let (b_at, _) = b.poll_timeout().unwrap();
    assert!(a_at < b_at, "A requests first");
    assert!(a_at - failed >= config.quiet);
}

#[test]
fn a_side_whose_peer_never_requests_requests_itself() {
    let t0 = Instant::now();
    let mut b = Punch::new(B, 2);
    b.want(A, Some(R), &b_eps(), &a_eps(), t0);
    assert!(transmits(&mut b).is_empty());
    let (at, why) = b.poll_timeout().unwrap();
    assert_eq!(why, PunchTimer::Deadline);
    // Twice the wait: B does not lead, so a leader also left waiting
    // requests first.
    assert_eq!(at - t0, PunchConfig::default().await_request * 2);
    b.handle_timeout(at);
    assert!(matches!(
        transmits(&mut b).as_slice(),
        [PunchTransmit::Request { .. }]
    ));
    assert_eq!(b.state(A), Some(PunchState::Requested));
    assert_eq!(b.counters().attempts, 1);
}

#[test]
fn a_lost_path_is_punched_again_at_once_by_either_side() {
    let t0 = Instant::now();
    let (mut a, mut b) = (Punch::new(A, 1), Punch::new(B, 2));
    exchange(&mut a, &mut b, t0);
    b.handle_answer(A, addr("203.0.113.1:40001"), Duration::from_millis(5));
    events(&mut b);
    // B (whose turn is to answer) loses the path: it requests at once.
    b.handle_path_lost(A, t0);
    b.handle_timeout(t0);
    assert_eq!(
        events(&mut b).last(),
        Some(&PunchEvent::RetryDue { peer: A })
    );
    b.want(A, Some(R), &b_eps(), &a_eps(), t0);
    assert!(matches!(
        transmits(&mut b).as_slice(),
        [PunchTransmit::Request { .. }]
    ));
}
