#![allow(clippy::unwrap_used)]
use super::*;

const PEER: PeerId = PeerId(7);

fn v4() -> SocketAddr {
    "192.0.2.11:6783".parse().unwrap()
}

fn v6() -> SocketAddr {
    "[2001:db8::11]:6783".parse().unwrap()
}

fn ms(n: f64) -> Duration {
    Duration::from_secs_f64(n / 1000.0)
}

/// Drives the core as the control task does: its probes are "sent" with
/// a fresh stamp and answered after the family's RTT (`None`: lost); a
/// switch moves the registry's endpoint, which `track` then reports.
struct Driver {
    core: FamilyChoice,
    now: Instant,
    stamp: u64,
    endpoint: SocketAddr,
    switches: Vec<(SocketAddr, String, Instant)>,
    probes: Vec<SocketAddr>,
}

impl Driver {
    fn new(endpoint: SocketAddr) -> Self {
        let mut d = Self {
            core: FamilyChoice::default(),
            now: Instant::now(),
            stamp: 0,
            endpoint,
            switches: Vec::new(),
            probes: Vec::new(),
        };
        d.track();
        d
    }

    fn track(&mut self) {
        self.core
            .track(PEER, self.endpoint, &[v4(), v6()], self.now);
    }

    /// Runs for `secs` seconds with these RTTs.
    fn run(&mut self, secs: f64, rtt_v4: Option<Duration>, rtt_v6: Option<Duration>) {
        let end = self.now + Duration::from_secs_f64(secs);
        while self.now < end {
            let mut pongs = Vec::new();
            self.core.handle_timeout(self.now);
            self.drain(&mut pongs, rtt_v4, rtt_v6);
            pongs.sort_by_key(|(at, _, _)| *at);
            for (at, addr, stamp) in pongs {
                self.core.handle_pong(PEER, addr, stamp, at);
                self.drain(&mut Vec::new(), None, None);
            }
            let next = self.core.poll_timeout().unwrap();
            assert!(next > self.now, "a deadline stayed in the past");
            self.now = next;
        }
    }

    fn drain(
        &mut self,
        pongs: &mut Vec<(Instant, SocketAddr, u64)>,
        rtt_v4: Option<Duration>,
        rtt_v6: Option<Duration>,
    ) {
        while let Some(event) = self.core.poll_event() {
            match event {
                FamilyEvent::Probe { peer, addr } => {
                    assert_eq!(peer, PEER);
                    self.stamp += 1;
                    self.probes.push(addr);
                    self.core.probe_sent(peer, addr, self.stamp, self.now);
                    let rtt = if Family::of(addr) == Family::V4 {
                        rtt_v4
                    } else {
                        rtt_v6
                    };
                    if let Some(rtt) = rtt {
                        pongs.push((self.now + rtt, addr, self.stamp));
                    }
                }
                FamilyEvent::Switch { to, reason, .. } => {
                    self.switches.push((to, reason, self.now));
                    self.endpoint = to;
                    self.track();
                }
            }
        }
    }
}

#[test]
fn a_peer_that_advertises_one_family_is_not_tracked_nor_probed() {
    let mut core = FamilyChoice::default();
    let now = Instant::now();
    core.track(PEER, v4(), &[v4()], now);
    assert!(!core.tracks(PEER));
    core.handle_timeout(now);
    assert_eq!(core.poll_event(), None);
    assert_eq!(core.poll_timeout(), None);
    assert_eq!(core.describe(PEER), None);
}

#[test]
fn a_clearly_faster_family_takes_the_path_after_several_samples() {
    let mut d = Driver::new(v4());
    d.run(2.5, Some(ms(30.0)), Some(ms(0.4)));
    assert!(d.probes.contains(&v4()) && d.probes.contains(&v6()));
    assert!(d.switches.is_empty(), "moved before {MIN_SAMPLES} samples");
    d.run(10.0, Some(ms(30.0)), Some(ms(0.4)));
    assert_eq!(d.switches.len(), 1, "{:?}", d.switches);
    assert_eq!(d.switches[0].0, v6());
    assert!(d.switches[0].1.contains("on ipv4"), "{}", d.switches[0].1);
    assert_eq!(d.core.switches(), 1);
    let status = d.core.describe(PEER).unwrap();
    assert!(
        status.starts_with("ipv6: rtt 0.4 ms vs ipv4 30.0 ms"),
        "{status}"
    );
}

#[test]
fn similar_families_never_move_the_path() {
    // 1.0 vs 1.1 ms: neither 20 % nor 2 ms better; 0.5 vs 2.0 ms: 75 %
    // but only 1.5 ms; 10 vs 11.5 ms: 1.5 ms and 13 %.
    for (a, b) in [(1.1, 1.0), (2.0, 0.5), (11.5, 10.0)] {
        let mut d = Driver::new(v4());
        d.run(120.0, Some(ms(a)), Some(ms(b)));
        assert!(d.switches.is_empty(), "{a} vs {b}: {:?}", d.switches);
        assert_eq!(d.core.switches(), 0);
    }
}

#[test]
fn a_move_for_rtt_waits_for_the_hold_time_after_the_last_move() {
    let mut d = Driver::new(v4());
    d.run(8.0, Some(ms(30.0)), Some(ms(0.4)));
    assert_eq!(d.switches.len(), 1);
    let first = d.switches[0].2;
    // Now IPv4 is the fast one: the path goes back, but not within HOLD.
    d.run(30.0, Some(ms(0.4)), Some(ms(30.0)));
    assert_eq!(d.switches.len(), 2, "{:?}", d.switches);
    assert_eq!(d.switches[1].0, v4());
    assert!(d.switches[1].2 >= first + HOLD);
}

#[test]
fn a_family_that_stops_answering_is_left_within_a_few_seconds() {
    let mut d = Driver::new(v4());
    d.run(8.0, Some(ms(30.0)), Some(ms(0.4)));
    assert_eq!(d.endpoint, v6());
    let broken = d.now;
    d.run(5.0, Some(ms(30.0)), None);
    assert_eq!(d.endpoint, v4(), "{:?}", d.switches);
    let (_, reason, at) = d.switches.last().unwrap().clone();
    assert_eq!(reason, "ipv6 stopped answering");
    // Two probes lost, probing every second while unsettled.
    assert!(
        at - broken <= PROBE_EVERY * 2 + PROBE_LOST_AFTER,
        "{:?}",
        at - broken
    );
    assert!(
        d.core
            .describe(PEER)
            .unwrap()
            .ends_with("ipv6 not answering")
    );
    // IPv6 is back, and better: moved again, but only after the hold.
    d.run(30.0, Some(ms(30.0)), Some(ms(0.4)));
    assert_eq!(d.endpoint, v6());
    assert_eq!(d.core.switches(), 3);
}

#[test]
fn the_heartbeats_verdict_moves_the_path_at_once_if_the_other_family_answers() {
    let mut d = Driver::new(v4());
    d.run(3.0, Some(ms(1.0)), Some(ms(1.0)));
    d.core.current_down(PEER, d.now);
    d.drain(&mut Vec::new(), None, None);
    assert_eq!(d.endpoint, v6());
    // With nothing answering on the other side either, nothing moves.
    d.run(3.0, None, None);
    d.core.current_down(PEER, d.now);
    d.drain(&mut Vec::new(), None, None);
    assert_eq!(d.switches.len(), 1, "{:?}", d.switches);
}

#[test]
fn only_the_answer_to_its_own_probe_is_a_sample() {
    let mut core = FamilyChoice::default();
    let now = Instant::now();
    core.track(PEER, v4(), &[v4(), v6()], now);
    core.handle_timeout(now);
    while core.poll_event().is_some() {}
    core.probe_sent(PEER, v6(), 41, now);
    // A pong of some other ping (another stamp) says nothing.
    core.handle_pong(PEER, v6(), 40, now + ms(5.0));
    assert!(
        core.describe(PEER)
            .unwrap()
            .ends_with("ipv6 not measured yet")
    );
    core.handle_pong(PEER, v6(), 41, now + ms(0.3));
    assert!(core.describe(PEER).unwrap().ends_with("ipv6 0.3 ms"));
}

#[test]
fn the_registry_endpoint_decides_the_current_family_without_a_switch() {
    let mut core = FamilyChoice::default();
    let now = Instant::now();
    core.track(PEER, v4(), &[v4(), v6()], now);
    core.track(PEER, v6(), &[v4(), v6()], now);
    assert!(core.describe(PEER).unwrap().starts_with("ipv6:"));
    assert_eq!(core.switches(), 0);
    core.track(PEER, v6(), &[v6()], now);
    assert!(!core.tracks(PEER));
}

#[test]
fn an_other_family_that_never_answers_is_probed_at_the_steady_pace() {
    let mut d = Driver::new(v4());
    d.run(STEADY_AFTER.as_secs_f64() + 5.0, Some(ms(1.0)), None);
    let before = d.probes.iter().filter(|a| **a == v6()).count();
    d.run(30.0, Some(ms(1.0)), None);
    let probes = d.probes.iter().filter(|a| **a == v6()).count() - before;
    assert!((5..=7).contains(&probes), "{probes} probes in 30 s");
    assert!(d.switches.is_empty());
    assert!(
        d.core
            .describe(PEER)
            .unwrap()
            .ends_with("ipv6 not answering")
    );
}

#[test]
fn the_peers_data_over_the_other_family_makes_a_steady_pair_look_at_once() {
    let mut d = Driver::new(v4());
    d.run(8.0, Some(ms(30.0)), Some(ms(0.4)));
    assert_eq!(d.endpoint, v6());
    d.run(
        STEADY_AFTER.as_secs_f64() + 5.0,
        Some(ms(30.0)),
        Some(ms(0.4)),
    );
    // IPv6 breaks; the peer saw it first and its data now comes over IPv4.
    let hinted = d.now;
    d.core.peer_data_elsewhere(PEER, d.now);
    d.run(4.0, Some(ms(30.0)), None);
    let (to, _, at) = d.switches.last().unwrap().clone();
    assert_eq!(to, v4());
    assert!(
        at - hinted <= PROBE_EVERY + PROBE_LOST_AFTER,
        "{:?}",
        at - hinted
    );
}
