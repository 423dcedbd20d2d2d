#![allow(clippy::unwrap_used)]
use super::*;
use rand::SeedableRng;

fn identities(n: u64) -> Vec<Identity> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(n);
    (0..3).map(|_| Identity::generate(&mut rng)).collect()
}

#[test]
fn a_rotation_verifies_to_both_ids_and_round_trips_through_its_fixed_size_form() {
    let ids = identities(1);
    let r = Rotation::sign(&ids[0], &ids[1], 1_796_228_061);
    assert_eq!(r.verify(), Ok((ids[0].id(), ids[1].id())));
    let bytes = r.encode();
    assert_eq!(bytes.len(), ROTATION_LEN);
    assert_eq!(Rotation::decode(&bytes), Ok(r));
    assert_eq!(Rotation::decode(&bytes[1..]), Err(RotationError::Malformed));
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert_eq!(Rotation::decode(&longer), Err(RotationError::Malformed));
    let mut other_version = bytes;
    other_version[0] = ROTATION_VERSION + 1;
    assert_eq!(
        Rotation::decode(&other_version),
        Err(RotationError::Malformed)
    );
}

#[test]
fn a_rotation_is_refused_unless_both_keys_signed_this_pair_and_time() {
    let ids = identities(2);
    let good = Rotation::sign(&ids[0], &ids[1], 7);
    // Every byte of the body matters: flip each, none verifies.
    let bytes = good.encode();
    for i in 1..ROTATION_LEN {
        let mut bad = bytes;
        bad[i] ^= 0x01;
        let decoded = Rotation::decode(&bad).unwrap();
        assert!(decoded.verify().is_err(), "byte {i} flipped still verifies");
    }
    // A third router cannot name someone else's key as its successor:
    // the successor's own signature is missing.
    let mut stolen = Rotation::sign(&ids[0], &ids[2], 7);
    stolen.new = ids[1].public_key();
    assert_eq!(stolen.verify(), Err(RotationError::BadSignature));
    // Nor claim a key as its predecessor.
    let mut claimed = Rotation::sign(&ids[2], &ids[1], 7);
    claimed.old = ids[0].public_key();
    assert_eq!(claimed.verify(), Err(RotationError::BadSignature));
    assert_eq!(
        Rotation::sign(&ids[0], &ids[0], 7).verify(),
        Err(RotationError::SameKey)
    );
    // A signature of another kind over the same bytes does not pass.
    let other_domain = SigningKey::from_identity(&ids[0]).sign(
        Domain::TopologyEntry,
        ROTATION_VERSION,
        &message(b'n', &ids[1].public_key(), 7),
    );
    let mut mixed = good;
    mixed.by_old = other_domain;
    assert_eq!(mixed.verify(), Err(RotationError::BadSignature));
}

#[test]
fn peers_accept_the_old_key_for_the_window_then_refuse_it() {
    let ids = identities(3);
    let (a, b) = (ids[0].id(), ids[1].id());
    let t0 = Instant::now();
    let w = Duration::from_secs(600);
    let mut s = Successors::new(w);
    assert_eq!(s.admit(a, t0), Admit::Unrotated);
    assert_eq!(s.poll_timeout(t0), None);
    let r = Rotation::sign(&ids[0], &ids[1], 1);
    assert_eq!(s.learn(&r, t0), Ok((a, b)));
    assert_eq!(s.admit(a, t0), Admit::Retiring { successor: b });
    assert_eq!(s.admit(b, t0), Admit::Unrotated);
    assert_eq!(s.current(a), b);
    assert_eq!(s.poll_timeout(t0), Some(t0 + w));
    // A replay later does not extend the window.
    assert!(s.learn(&r, t0 + w / 2).is_ok());
    assert_eq!(s.poll_timeout(t0), Some(t0 + w));
    let mut ended = Vec::new();
    s.handle_timeout(t0 + w - Duration::from_millis(1), &mut ended);
    assert!(ended.is_empty());
    assert_eq!(
        s.admit(a, t0 + w - Duration::from_millis(1)),
        Admit::Retiring { successor: b }
    );
    s.handle_timeout(t0 + w, &mut ended);
    assert_eq!(ended, vec![a]);
    assert_eq!(s.admit(a, t0 + w), Admit::Retired);
    // Reported once; refused for good, even when announced again.
    s.handle_timeout(t0 + w * 3, &mut ended);
    assert_eq!(ended, vec![a]);
    assert_eq!(s.poll_timeout(t0 + w), None);
    assert!(s.learn(&r, t0 + w * 3).is_ok());
    assert_eq!(s.admit(a, t0 + w * 3), Admit::Retired);
}

#[test]
fn one_old_key_has_one_successor_and_chains_lead_to_the_latest() {
    let ids = identities(4);
    let t0 = Instant::now();
    let mut s = Successors::new(Duration::from_secs(60));
    s.learn(&Rotation::sign(&ids[0], &ids[1], 1), t0).unwrap();
    assert_eq!(
        s.learn(&Rotation::sign(&ids[0], &ids[2], 2), t0),
        Err(RotationError::Conflict)
    );
    s.learn(&Rotation::sign(&ids[1], &ids[2], 2), t0).unwrap();
    assert_eq!(s.current(ids[0].id()), ids[2].id());
    // A loop (c back to a) ends instead of spinning.
    s.learn(&Rotation::sign(&ids[2], &ids[0], 3), t0).unwrap();
    let _ = s.current(ids[0].id());
}

#[test]
fn the_table_is_bounded() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let t0 = Instant::now();
    let mut s = Successors::new(Duration::from_secs(60));
    // Filling it takes MAX_TRACKED signatures; check the bound by its
    // effect with the table pre-filled through learn's own path.
    let new = Identity::generate(&mut rng);
    // Every window still open: nothing may go, the new one is refused.
    let open = t0 + Duration::from_secs(60);
    for i in 0..MAX_TRACKED as u64 {
        s.by_old.insert(
            PeerId(i),
            (PeerId(u64::MAX), open + Duration::from_secs(i), false),
        );
    }
    let old = Identity::generate(&mut rng);
    assert_eq!(
        s.learn(&Rotation::sign(&old, &new, 1), t0),
        Err(RotationError::Full)
    );
    assert_eq!(s.by_old.len(), MAX_TRACKED);
    // Once some windows ended, the one that ended first makes room, and
    // only it.
    let later = open + Duration::from_secs(2);
    assert!(s.learn(&Rotation::sign(&old, &new, 1), later).is_ok());
    assert_eq!(s.by_old.len(), MAX_TRACKED);
    assert!(!s.contains(PeerId(0)));
    assert!(s.contains(PeerId(1)) && s.contains(PeerId(2)));
    assert!(s.contains(old.id()));
}
