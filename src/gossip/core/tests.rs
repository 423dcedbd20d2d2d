//! The topology core against refused, forged and hostile input (issue 15):
//! nothing is believed in another router's name, every refusal is counted per
//! reason, and the cluster view does not move.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::crypto::Identity;
use crate::gossip::message::{Digest, Message, Update};
use crate::gossip::topology::{MAX_VERSION, MAX_VERSION_JUMP};
use crate::sim::gossip::clashing_identities;
use proptest::prelude::*;
use rand::SeedableRng;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

/// A router as a test sees it: who it says it is, and its key.
struct Owner {
    info: PeerInfo,
    identity: Identity,
}

impl Owner {
    fn new(seed: u64, name: &str) -> Self {
        Self::from_identity(Identity::generate(&mut StdRng::seed_from_u64(seed)), name)
    }

    fn from_identity(identity: Identity, name: &str) -> Self {
        let info = PeerInfo {
            id: identity.id(),
            name: name.into(),
            public_key: identity.public_key(),
            addresses: vec!["192.0.2.1:6783".parse().unwrap()],
        };
        Self { info, identity }
    }

    fn key(&self) -> SigningKey {
        SigningKey::from_identity(&self.identity)
    }

    fn entry(&self, version: u64) -> TopologyEntry {
        TopologyEntry {
            id: self.info.id,
            version,
            name: self.info.name.clone(),
            public_key: self.info.public_key,
            addresses: self.info.addresses.clone(),
            short_id: ShortId::preferred(self.info.id),
            mtu: 1420,
            connections: vec![],
        }
    }

    /// `entry` signed by this router.
    fn sign(&self, entry: &TopologyEntry) -> SignedEntry {
        SignedEntry::sign(entry, &self.key())
    }

    fn core(&self, seed: u64, now: Instant) -> Gossip {
        Gossip::new(
            self.info.clone(),
            self.key(),
            GossipConfig::default(),
            seed,
            now,
        )
    }
}

/// A core ("me", seed 1) with one neighbour (seed 2), drained.
fn core_with_neighbour() -> (Gossip, Owner, Instant) {
    let now = Instant::now();
    let mut g = Owner::new(1, "me").core(9, now);
    let n = Owner::new(2, "neighbour");
    g.connection_up(n.info.clone(), true, now);
    while g.poll_transmit().is_some() {}
    while g.poll_event().is_some() {}
    (g, n, now)
}

fn refusals(g: &mut Gossip) -> Vec<RefusedReason> {
    let mut out = Vec::new();
    while let Some(e) = g.poll_event() {
        if let GossipEvent::EntryRefused { reason, .. } = e {
            out.push(reason);
        }
    }
    out
}

fn counts(g: &Gossip) -> BTreeMap<&'static str, u64> {
    g.refused_counts().collect()
}

fn update(entries: Vec<SignedEntry>) -> Vec<u8> {
    Message::Update(Update { entries }).encode()
}

#[test]
fn entries_that_break_the_rules_are_refused_even_when_signed_by_their_owner() {
    let (mut g, n, now) = core_with_neighbour();
    let before = g.summary();
    // Another key under my own name.
    let clash = Owner::new(3, "me");
    let clash = clash.sign(&clash.entry(1));
    let many = Owner::new(4, "many");
    let mut e = many.entry(1);
    e.connections = crate::gossip::topology::connections_to(MAX_CONNECTIONS + 1);
    let many = many.sign(&e);
    let addrs = Owner::new(5, "addrs");
    let mut e = addrs.entry(1);
    e.addresses = vec!["192.0.2.9:1".parse().unwrap(); 17];
    let addrs = addrs.sign(&e);
    let long = Owner::new(6, &"n".repeat(300));
    let long = long.sign(&long.entry(1));
    // An id that is not its key's.
    let forged = Owner::new(7, "forged");
    let mut e = forged.entry(1);
    e.id = n.info.id;
    let forged = forged.sign(&e);
    g.handle_message(
        n.info.id,
        &update(vec![clash, many, addrs, long, forged]),
        now,
    )
    .unwrap();
    assert_eq!(g.summary(), before);
    let reasons = refusals(&mut g);
    assert_eq!(reasons.len(), 5);
    assert!(matches!(reasons[0], RefusedReason::NameClash { .. }));
    assert!(matches!(reasons[1], RefusedReason::TooManyConnections(_)));
    assert!(matches!(reasons[2], RefusedReason::TooManyAddresses(_)));
    assert!(matches!(reasons[3], RefusedReason::NameTooLong(_)));
    assert_eq!(reasons[4], RefusedReason::IdMismatch);
}

#[test]
fn a_second_key_under_a_known_name_is_refused_while_the_first_is_known() {
    let (mut g, n, now) = core_with_neighbour();
    let alice = Owner::new(3, "alice");
    g.handle_message(n.info.id, &update(vec![alice.sign(&alice.entry(1))]), now)
        .unwrap();
    let before = g.summary();
    let other = Owner::new(4, "alice");
    g.handle_message(n.info.id, &update(vec![other.sign(&other.entry(9))]), now)
        .unwrap();
    assert_eq!(g.summary(), before);
    assert_eq!(g.name_holder("alice"), Some(alice.info.id));
}

#[test]
fn an_entry_changes_only_to_a_newer_version() {
    let (mut g, n, now) = core_with_neighbour();
    let p = Owner::new(3, "p");
    let mut e = p.entry(5);
    g.handle_message(n.info.id, &update(vec![p.sign(&e)]), now)
        .unwrap();
    e.mtu = 1300;
    g.handle_message(n.info.id, &update(vec![p.sign(&e)]), now)
        .unwrap();
    assert_eq!(
        g.entry(p.info.id).unwrap().mtu,
        1420,
        "same version, other content: ignored"
    );
    e.version = 4;
    g.handle_message(n.info.id, &update(vec![p.sign(&e)]), now)
        .unwrap();
    assert_eq!(g.entry(p.info.id).unwrap().version, 5);
    e.version = 6;
    g.handle_message(n.info.id, &update(vec![p.sign(&e)]), now)
        .unwrap();
    assert_eq!(g.entry(p.info.id).unwrap().mtu, 1300);
    assert_eq!(g.cluster_mtu(), 1300);
}

#[test]
fn a_neighbour_cannot_speak_for_another_router() {
    let (mut g, n, now) = core_with_neighbour();
    let victim = Owner::new(3, "victim");
    let honest = victim.entry(5);
    g.handle_message(n.info.id, &update(vec![victim.sign(&honest)]), now)
        .unwrap();
    while g.poll_event().is_some() {}
    while g.poll_transmit().is_some() {}
    let before = (g.summary(), g.entry(victim.info.id).unwrap().clone());
    let cluster_mtu = g.cluster_mtu();

    // MTU 576, connections rewritten, and a jump to u64::MAX, each signed by
    // the neighbour (the hostile secret holder) instead of the victim.
    let mut mtu = honest.clone();
    mtu.version = 6;
    mtu.mtu = 576;
    let mut rewired = honest.clone();
    rewired.version = 6;
    rewired.connections = vec![ConnectionInfo {
        peer: n.info.id,
        established: true,
        outbound: true,
    }];
    let mut frozen = honest.clone();
    frozen.version = u64::MAX;
    let forged: Vec<SignedEntry> = [&mtu, &rewired, &frozen]
        .into_iter()
        .map(|e| n.sign(e))
        .collect();
    // The victim's own signature moved onto altered bytes.
    let mut moved = victim.sign(&honest);
    moved.bytes = n.sign(&mtu).bytes;
    // Bytes that are not an entry at all.
    let garbage = SignedEntry {
        bytes: vec![0xff; 7],
        signature: crate::crypto::Signature::ZERO,
    };
    let mut all = forged;
    all.push(moved);
    all.push(garbage);
    g.handle_message(n.info.id, &update(all), now).unwrap();

    assert_eq!(
        (g.summary(), g.entry(victim.info.id).unwrap().clone()),
        before
    );
    assert_eq!(g.cluster_mtu(), cluster_mtu);
    let reasons = refusals(&mut g);
    assert_eq!(
        reasons,
        vec![
            RefusedReason::BadSignature,
            RefusedReason::BadSignature,
            RefusedReason::VersionOutOfRange(u64::MAX),
            RefusedReason::BadSignature,
            RefusedReason::Malformed,
        ]
    );
    let counts = counts(&g);
    assert_eq!(counts.get("bad_signature"), Some(&3));
    assert_eq!(counts.get("version_out_of_range"), Some(&1));
    assert_eq!(counts.get("malformed"), Some(&1));
    // Nothing was relayed in the victim's name.
    let frames: Vec<_> = std::iter::from_fn(|| g.poll_transmit()).collect();
    assert!(frames.is_empty(), "{frames:?}");
}

#[test]
fn even_the_owner_cannot_jump_a_known_entry_past_the_bound_or_to_the_top() {
    let (mut g, n, now) = core_with_neighbour();
    let p = Owner::new(3, "p");
    g.handle_message(n.info.id, &update(vec![p.sign(&p.entry(5))]), now)
        .unwrap();
    let far = p.sign(&p.entry(5 + MAX_VERSION_JUMP + 1));
    let top = p.sign(&p.entry(MAX_VERSION + 1));
    g.handle_message(n.info.id, &update(vec![far, top]), now)
        .unwrap();
    assert_eq!(g.entry(p.info.id).unwrap().version, 5);
    assert_eq!(
        refusals(&mut g),
        vec![
            RefusedReason::VersionJump {
                known: 5,
                offered: 5 + MAX_VERSION_JUMP + 1
            },
            RefusedReason::VersionOutOfRange(MAX_VERSION + 1),
        ]
    );
    let within = p.sign(&p.entry(5 + MAX_VERSION_JUMP));
    g.handle_message(n.info.id, &update(vec![within]), now)
        .unwrap();
    assert_eq!(g.entry(p.info.id).unwrap().version, 5 + MAX_VERSION_JUMP);
}

#[test]
fn a_forged_copy_of_my_entry_is_refused_and_my_version_does_not_move() {
    let (mut g, n, now) = core_with_neighbour();
    let mine = g.my_entry().clone();
    let mut fake = mine.clone();
    fake.version = mine.version + 10;
    fake.mtu = 600;
    fake.addresses.clear();
    g.handle_message(n.info.id, &update(vec![n.sign(&fake)]), now)
        .unwrap();
    assert_eq!(*g.my_entry(), mine);
    assert_eq!(refusals(&mut g), vec![RefusedReason::BadSignature]);
}

#[test]
fn a_digest_claiming_my_entry_is_newer_makes_me_ask_for_it_never_jump() {
    let (mut g, n, now) = core_with_neighbour();
    let me = g.id();
    let version = g.my_entry().version;
    let digest = Digest {
        first: me,
        last: me,
        items: vec![(me, u64::MAX)],
    };
    g.handle_message(n.info.id, &Message::Digest(digest).encode(), now)
        .unwrap();
    assert_eq!(g.my_entry().version, version);
    let asked = std::iter::from_fn(|| g.poll_transmit()).any(|(to, bytes)| {
        to == n.info.id
            && matches!(Message::decode(&bytes), Ok(Message::Request(r)) if r.ids == vec![me])
    });
    assert!(asked);
}

#[test]
fn a_copy_of_my_entry_that_i_signed_before_a_restart_moves_me_above_it() {
    let (mut g, n, now) = core_with_neighbour();
    let me = Owner::new(1, "me");
    let mut old = g.my_entry().clone();
    old.version = 41;
    old.short_id = ShortId(7);
    g.handle_message(n.info.id, &update(vec![me.sign(&old)]), now)
        .unwrap();
    assert_eq!(g.my_entry().version, 42);
    assert_eq!(g.short_id(), ShortId(7), "keeps its old short ID");
    // The re-signed entry verifies.
    let signed = g.table.signed(g.id()).unwrap();
    signed.verify(&signed.claim().unwrap()).unwrap();
}

#[test]
fn a_restarted_router_recovers_from_the_highest_version_it_could_have_signed() {
    let (mut g, n, now) = core_with_neighbour();
    let me = Owner::new(1, "me");
    let mut old = g.my_entry().clone();
    old.version = MAX_VERSION;
    g.handle_message(n.info.id, &update(vec![me.sign(&old)]), now)
        .unwrap();
    assert_eq!(g.my_entry().version, MAX_VERSION + 1, "no saturation");
}

#[test]
fn frames_from_a_router_without_a_connection_are_rejected() {
    let (mut g, _n, now) = core_with_neighbour();
    let stranger = Owner::new(9, "stranger");
    let r = g.handle_message(
        stranger.info.id,
        &update(vec![stranger.sign(&stranger.entry(1))]),
        now,
    );
    assert!(r.is_err());
    assert!(g.entry(stranger.info.id).is_none());
}

/// Two routers with the same preferred short ID, the lower ID first.
fn clashing_owners() -> (Owner, Owner) {
    let (a, b) = clashing_identities();
    let (a, b) = (Owner::from_identity(a, "a"), Owner::from_identity(b, "b"));
    if a.info.id < b.info.id {
        (a, b)
    } else {
        (b, a)
    }
}

#[test]
fn on_a_short_id_clash_the_lower_id_keeps_its_value() {
    let (low, high) = clashing_owners();
    let mut now = Instant::now();
    let mut g_low = low.core(1, now);
    let mut g_high = high.core(2, now);
    let shared = g_low.short_id();
    assert_eq!(shared, g_high.short_id());
    g_low.connection_up(high.info.clone(), true, now);
    g_high.connection_up(low.info.clone(), false, now);
    // Exchange, letting rate-limited pushes run.
    for _ in 0..20 {
        now += SECOND;
        g_low.handle_timeout(now);
        g_high.handle_timeout(now);
        while let Some((_, bytes)) = g_low.poll_transmit() {
            g_high.handle_message(low.info.id, &bytes, now).unwrap();
        }
        while let Some((_, bytes)) = g_high.poll_transmit() {
            g_low.handle_message(high.info.id, &bytes, now).unwrap();
        }
    }
    assert_eq!(g_low.short_id(), shared);
    assert_ne!(g_high.short_id(), shared);
    assert_eq!(
        g_high.short_id(),
        ShortId::candidate(high.info.id, 1),
        "the first candidate derived from the id"
    );
    assert_eq!(
        g_low.entry(high.info.id).unwrap().short_id,
        g_high.short_id()
    );
    assert_eq!(g_high.peer_by_short(shared), Some(low.info.id));
    for g in [&g_low, &g_high] {
        assert!(g.short_id_clashes().is_empty());
        assert!(g.holds_short_id(low.info.id) && g.holds_short_id(high.info.id));
    }
}

#[test]
fn during_a_clash_the_higher_id_is_never_named_by_the_shared_short_id() {
    let (low, high) = clashing_owners();
    let (mut g, n, now) = core_with_neighbour();
    g.handle_message(
        n.info.id,
        &update(vec![high.sign(&high.entry(1)), low.sign(&low.entry(1))]),
        now,
    )
    .unwrap();
    let shared = ShortId::preferred(low.info.id);
    assert_eq!(g.peer_by_short(shared), Some(low.info.id));
    assert!(g.holds_short_id(low.info.id));
    assert!(!g.holds_short_id(high.info.id));
    assert_eq!(
        g.short_id_clashes(),
        vec![(shared, {
            let mut ids = vec![low.info.id, high.info.id];
            ids.sort();
            ids
        })]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_bytes_never_panic_and_change_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (mut g, n, now) = core_with_neighbour();
        let before = g.summary();
        let _ = g.handle_message(n.info.id, &bytes, now);
        prop_assert_eq!(g.summary(), before);
    }

    #[test]
    fn random_bodies_behind_a_valid_envelope_never_panic(
        kind in 1u8..=4,
        body in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let (mut g, n, now) = core_with_neighbour();
        let before = g.summary();
        let mut frame = vec![crate::gossip::message::TOPOLOGY_VERSION, 1, kind];
        frame.extend_from_slice(&body);
        let _ = g.handle_message(n.info.id, &frame, now);
        // Random bodies cannot carry an entry signed by its owner.
        prop_assert_eq!(g.summary(), before);
    }
}

/// Times of the anti-entropy summaries `g` sends from `from` to `until`,
/// driven by its own deadlines.
fn summary_times(g: &mut Gossip, from: Instant, until: Instant) -> Vec<Instant> {
    let mut times = Vec::new();
    let mut now = from;
    for _ in 0..10_000 {
        let Some((next, _)) = g.poll_timeout() else {
            break;
        };
        now = next.max(now);
        if now > until {
            break;
        }
        g.handle_timeout(now);
        while let Some((_, frame)) = g.poll_transmit() {
            if matches!(Message::decode(&frame), Ok(Message::Summary(_))) {
                times.push(now);
            }
        }
        while g.poll_event().is_some() {}
    }
    times
}

#[test]
fn quiet_anti_entropy_backs_off_to_its_longest_wait_and_a_change_brings_it_back() {
    let (mut g, _n, t0) = core_with_neighbour();
    let max = GossipConfig::default().anti_entropy_max;
    let quiet = summary_times(&mut g, t0, t0 + 120 * SECOND);
    let gaps: Vec<Duration> = quiet.windows(2).map(|w| w[1] - w[0]).collect();
    // Doubling from 1 s, jittered ±25 %, never past the longest wait.
    assert!(gaps.iter().all(|g| *g <= max.mul_f64(1.25)), "{gaps:?}");
    assert!(gaps.last().unwrap() >= &max.mul_f64(0.75), "{gaps:?}");
    assert!(
        quiet.len() < 25,
        "{} rounds in two quiet minutes",
        quiet.len()
    );
    // A change of my own entry: the next round comes at the base rate.
    let changed = t0 + 120 * SECOND;
    g.set_mtu(1400, changed);
    while g.poll_transmit().is_some() {}
    let after = summary_times(&mut g, changed, changed + 10 * SECOND);
    assert!(
        after[0] - changed <= GossipConfig::default().anti_entropy_interval.mul_f64(1.25),
        "first round {:?} after the change",
        after[0] - changed
    );
}
