//! The connection maker on a virtual clock: retry cadence, address order,
//! own and seed addresses, the connection cap.

#![allow(clippy::unwrap_used)]
use super::*;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i], 6783))
}

/// Fails every dial of `a` and returns the gaps between attempts.
fn retry_gaps(
    maker: &mut ConnectionMaker,
    a: SocketAddr,
    mut now: Instant,
    tries: usize,
) -> Vec<Duration> {
    let mut gaps = Vec::new();
    let mut last = now;
    for _ in 0..tries {
        while maker.poll_dial(now) != Some(a) {
            now = maker.poll_timeout().unwrap();
        }
        gaps.push(now - last);
        last = now;
        maker.dial_failed(a, now);
    }
    gaps
}

#[test]
fn my_own_address_in_the_seed_list_is_never_dialled() {
    let now = Instant::now();
    let mut m = ConnectionMaker::new(vec![addr(1)], vec![addr(1), addr(2)], 1);
    assert_eq!(m.poll_dial(now), Some(addr(2)));
    assert_eq!(m.poll_dial(now), None);
    assert_eq!(m.seeds().collect::<Vec<_>>(), vec![addr(2)]);
}

#[test]
fn a_dead_seed_is_retried_forever_with_growing_capped_back_off() {
    let now = Instant::now();
    let mut m = ConnectionMaker::new(vec![], vec![addr(2)], 7);
    let gaps = retry_gaps(&mut m, addr(2), now, 12);
    // Early retries come within a few seconds.
    assert!(gaps[1] <= Duration::from_millis(1250), "{gaps:?}");
    assert!(gaps[2] <= Duration::from_millis(2500), "{gaps:?}");
    assert!(gaps[3] > gaps[1]);
    // Capped at 30 s (+25 % jitter) for seeds.
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_millis(37_500)),
        "{gaps:?}"
    );
    assert!(gaps[11] >= Duration::from_millis(22_500), "{gaps:?}");
}

#[test]
fn a_router_without_a_connection_is_tried_at_least_every_thirty_seconds_with_jitter() {
    let now = Instant::now();
    let mut m = ConnectionMaker::new(vec![], vec![], 7);
    m.learn(PeerId(9), &[addr(9)], now);
    let gaps = retry_gaps(&mut m, addr(9), now, 40);
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(30)),
        "{gaps:?}"
    );
    // Capped waits are spread over 22.5–30 s, not all the same.
    let capped = &gaps[10..];
    assert!(
        capped.iter().all(|g| *g >= Duration::from_millis(22_500)),
        "{gaps:?}"
    );
    let (lo, hi) = (capped.iter().min().unwrap(), capped.iter().max().unwrap());
    assert!(*hi - *lo >= Duration::from_secs(2), "no jitter: {gaps:?}");
}

#[test]
fn a_private_address_in_my_subnet_is_tried_before_a_public_one_then_the_next() {
    let now = Instant::now();
    let me = SocketAddr::from(([198, 51, 100, 2], 6783));
    let private = SocketAddr::from(([198, 51, 100, 3], 6783));
    let public = SocketAddr::from(([203, 0, 113, 12], 6783));
    let mut m = ConnectionMaker::new(vec![me], vec![], 1);
    m.learn(PeerId(9), &[public, private], now);
    let mut t = now + Duration::from_secs(1);
    assert_eq!(m.poll_dial(t), Some(private));
    m.dial_failed(private, t);
    t = m.poll_timeout().unwrap();
    assert_eq!(m.poll_dial(t), Some(public));
    // The one that worked is tried first after a disconnection.
    m.connected(PeerId(9), Some(public), t);
    m.disconnected(PeerId(9), t + Duration::from_secs(1));
    let t = m.poll_timeout().unwrap();
    assert_eq!(m.poll_dial(t), Some(public));
}

#[test]
fn an_address_learned_to_be_mine_is_never_dialled_as_a_seed_or_candidate() {
    let now = Instant::now();
    let mut m = ConnectionMaker::new(vec![addr(1)], vec![addr(11), addr(12)], 1);
    m.add_own(addr(11));
    assert_eq!(m.poll_dial(now), Some(addr(12)));
    assert_eq!(m.poll_dial(now), None);
    m.learn(PeerId(5), &[addr(11), addr(5)], now);
    let later = now + Duration::from_secs(2);
    assert_eq!(m.poll_dial(later), Some(addr(5)));
}

#[test]
fn a_seed_address_in_a_learned_entry_is_not_dialled_while_its_router_is_connected() {
    let now = Instant::now();
    let private = SocketAddr::from(([198, 51, 100, 3], 6783));
    let me = SocketAddr::from(([198, 51, 100, 2], 6783));
    let mut m = ConnectionMaker::new(vec![me], vec![addr(12)], 1);
    assert_eq!(m.poll_dial(now), Some(addr(12)));
    m.dial_failed(addr(12), now);
    m.learn(PeerId(7), &[private, addr(12)], now);
    let t = now + Duration::from_secs(1);
    assert_eq!(m.poll_dial(t), Some(private));
    m.connected(PeerId(7), Some(private), t);
    let later = t + Duration::from_secs(60);
    assert_eq!(m.poll_dial(later), None);
}

#[test]
fn back_off_resets_after_a_minute_of_health_but_not_after_a_flap() {
    let t0 = Instant::now();
    let mut m = ConnectionMaker::new(vec![], vec![], 3);
    m.learn(PeerId(9), &[addr(9)], t0);
    let gaps = retry_gaps(&mut m, addr(9), t0, 8);
    let mut now = t0 + gaps.iter().sum::<Duration>();
    while m.poll_dial(now).is_none() {
        now = m.poll_timeout().unwrap();
    }
    m.connected(PeerId(9), Some(addr(9)), now);
    assert_eq!(m.poll_timeout(), None, "nothing to do while connected");
    // A flap: retry stays slow.
    m.disconnected(PeerId(9), now + Duration::from_secs(5));
    let slow = m.poll_timeout().unwrap() - (now + Duration::from_secs(5));
    assert!(slow >= Duration::from_millis(22_500), "{slow:?}");
    // Healthy for a minute: retry fast.
    let now = m.poll_timeout().unwrap();
    assert_eq!(m.poll_dial(now), Some(addr(9)));
    m.connected(PeerId(9), Some(addr(9)), now);
    m.disconnected(PeerId(9), now + Duration::from_secs(61));
    let fast = m.poll_timeout().unwrap() - (now + Duration::from_secs(61));
    assert!(fast <= Duration::from_millis(1250), "{fast:?}");
}

#[test]
fn forget_stops_dialling_a_seed_and_connect_adds_one() {
    let now = Instant::now();
    let mut m = ConnectionMaker::new(vec![], vec![addr(2)], 1);
    m.forget(addr(2));
    assert_eq!(m.poll_dial(now), None);
    m.add_seed(addr(3), now);
    assert_eq!(m.poll_dial(now), Some(addr(3)));
}

#[test]
fn a_seed_whose_router_is_already_connected_is_not_dialled_again() {
    let now = Instant::now();
    let mut m = ConnectionMaker::new(vec![], vec![addr(2)], 1);
    assert_eq!(m.poll_dial(now), Some(addr(2)));
    m.connected(PeerId(2), Some(addr(2)), now);
    m.learn(PeerId(2), &[addr(2)], now);
    assert_eq!(m.poll_dial(now + Duration::from_secs(5)), None);
}

#[test]
fn dials_stop_at_the_connection_cap() {
    let now = Instant::now();
    let config = ConnectionMakerConfig {
        max_connections: 3,
        ..ConnectionMakerConfig::default()
    };
    let mut m = ConnectionMaker::with_config(vec![], vec![], 1, config);
    for i in 10..20 {
        m.learn(PeerId(i), &[addr(i as u8)], now);
    }
    let later = now + Duration::from_secs(2);
    let mut dialled = 0;
    while m.poll_dial(later).is_some() {
        dialled += 1;
    }
    assert_eq!(dialled, 3);
}

#[test]
fn an_ipv6_only_router_dials_only_the_ipv6_addresses_of_a_dual_stack_one() {
    let now = Instant::now();
    let v6: SocketAddr = "[2001:db8::2]:6783".parse().unwrap();
    let config = ConnectionMakerConfig {
        families: crate::underlay::Families::of_listen("[2001:db8::1]:6783".parse().unwrap()),
        ..ConnectionMakerConfig::default()
    };
    let own = vec!["[2001:db8::1]:6783".parse().unwrap()];
    let mut m = ConnectionMaker::with_config(own, vec![], 1, config);
    m.learn(PeerId(2), &[addr(2), v6], now);
    let mut dialled = Vec::new();
    let mut at = now;
    for _ in 0..4 {
        while let Some(a) = m.poll_dial(at) {
            dialled.push(a);
            m.dial_failed(a, at);
        }
        at = m.poll_timeout().unwrap();
    }
    assert!(!dialled.is_empty());
    assert!(dialled.iter().all(|a| *a == v6), "dialled {dialled:?}");
}

/// A Node in another site behind 1:1 NAT (`--peers-from-kube`): its
/// InternalIP looks more like mine and fails; its ExternalIP is tried
/// next, and once it answered the router is not dialled at the other.
#[test]
fn a_seed_with_other_addresses_is_one_target_tried_most_alike_first() {
    let now = Instant::now();
    let me = SocketAddr::from(([198, 51, 100, 74], 6783));
    let internal = SocketAddr::from(([198, 51, 100, 10], 6783));
    let external = SocketAddr::from(([203, 0, 113, 11], 6783));
    let mut m = ConnectionMaker::new(vec![me], vec![], 1);
    m.add_seed_with(internal, &[external], now);
    assert_eq!(m.seeds().collect::<Vec<_>>(), vec![internal]);
    // One address at a time: never both dials at once.
    assert_eq!(m.poll_dial(now), Some(internal));
    assert_eq!(m.poll_dial(now), None);
    m.dial_failed(internal, now);
    let t = m.poll_timeout().unwrap();
    assert!(t - now <= Duration::from_secs(1), "{:?}", t - now);
    assert_eq!(m.poll_dial(t), Some(external));
    m.connected(PeerId(7), Some(external), t);
    // Its entry lists its private listen address only: still its seed.
    m.learn(PeerId(7), &[internal], t);
    assert_eq!(m.poll_dial(t + Duration::from_secs(60)), None);
    // It goes: the address that worked is tried first.
    m.disconnected(PeerId(7), t + Duration::from_secs(61));
    let mut dialled = Vec::new();
    let mut at = t + Duration::from_secs(61);
    while dialled.len() < 2 {
        at = m.poll_timeout().unwrap().max(at);
        if let Some(a) = m.poll_dial(at) {
            dialled.push(a);
            m.dial_failed(a, at);
        }
    }
    assert!(dialled.contains(&external), "{dialled:?}");
    assert_eq!(dialled.iter().filter(|a| **a == internal).count(), 1);
}

#[test]
fn a_seed_given_again_with_other_addresses_keeps_its_place_and_a_same_site_one_goes_first() {
    let now = Instant::now();
    let me = SocketAddr::from(([198, 51, 100, 11], 6783));
    let internal = SocketAddr::from(([198, 51, 100, 10], 6783));
    let external = SocketAddr::from(([203, 0, 113, 11], 6783));
    let mut m = ConnectionMaker::new(vec![me], vec![], 1);
    // Named by its ExternalIP, reachable at its InternalIP in my site.
    m.add_seed_with(external, &[internal, me], now);
    assert_eq!(m.poll_dial(now), Some(internal));
    m.dial_failed(internal, now);
    // Given again (the next listing): the next candidate stays next.
    m.add_seed_with(external, &[internal], now);
    let t = m.poll_timeout().unwrap();
    assert_eq!(m.poll_dial(t), Some(external));
    // My own address among them was never a candidate.
    m.dial_failed(external, t);
    let t = m.poll_timeout().unwrap();
    assert_eq!(m.poll_dial(t), Some(internal));
    m.forget(external);
    assert_eq!(m.seeds().count(), 0);
}

#[test]
fn a_router_that_rotated_its_key_on_a_live_link_stays_connected_and_keeps_its_seed() {
    let now = Instant::now();
    let mut m = ConnectionMaker::new(vec![], vec![addr(2)], 1);
    assert_eq!(m.poll_dial(now), Some(addr(2)));
    m.connected(PeerId(2), Some(addr(2)), now);
    m.learn(PeerId(2), &[addr(2)], now);
    m.follow_rotation(PeerId(2), PeerId(5));
    m.unlearn(PeerId(2));
    m.learn(PeerId(5), &[addr(2)], now);
    let later = now + Duration::from_secs(120);
    assert_eq!(
        m.poll_dial(later),
        None,
        "the live link is not dialled again"
    );
    // When the link does go, the seed is the new ID's and is dialled again.
    m.disconnected(PeerId(5), later);
    let mut t = later;
    while m.poll_dial(t) != Some(addr(2)) {
        t = m.poll_timeout().unwrap();
        assert!(
            t < later + Duration::from_secs(60),
            "the seed was not dialled again"
        );
    }
}
