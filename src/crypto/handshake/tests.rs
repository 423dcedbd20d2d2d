#![allow(clippy::unwrap_used)]
use super::keys::derive_keys;
use super::*;
use proptest::prelude::*;
use rand::SeedableRng;

const SECRET_A: &[u8] = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SECRET_B: &[u8] = b"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const RANGE: &str = "10.32.0.0/12";
/// A wall-clock time for message 1.
const T0: std::time::Duration = std::time::Duration::from_secs(1_800_000_000);

fn identity(seed: u64) -> Identity {
    Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
}

fn secrets(lines: &[&[u8]]) -> ClusterSecrets {
    ClusterSecrets::parse(&lines.join(&b'\n')).unwrap()
}

struct Done {
    initiator: SessionKeys,
    responder: SessionKeys,
    payload2: Vec<u8>,
    payload3: Vec<u8>,
}

fn run(i_secrets: &ClusterSecrets, r_secrets: &ClusterSecrets) -> Result<Done, HandshakeError> {
    let (i_id, r_id) = (identity(1), identity(2));
    let p = prologue(RANGE);
    let (mut init, msg1) = Handshake::initiator(&i_id, i_secrets, &p, T0)?;
    assert_eq!(msg1.len(), MSG1_LEN);
    let (mut resp, _) = Handshake::responder(&r_id, r_secrets, &p, &msg1)?;
    assert_eq!(resp.remote_public_key(), None);
    let msg2 = resp.write_message(b"hello from responder")?;
    let payload2 = init.read_message(&msg2)?;
    assert_eq!(init.remote_public_key(), Some(r_id.public_key()));
    let msg3 = init.write_message(b"hello from initiator")?;
    let payload3 = resp.read_message(&msg3)?;
    assert_eq!(resp.remote_public_key(), Some(i_id.public_key()));
    assert!(init.is_finished() && resp.is_finished());
    assert!(init.is_initiator() && !resp.is_initiator());
    Ok(Done {
        initiator: init.finish()?,
        responder: resp.finish()?,
        payload2,
        payload3,
    })
}

fn assert_one_way(from: &mut SessionKeys, to: &mut SessionKeys) {
    let record = from.tcp_send.seal(b"control");
    assert_eq!(to.tcp_recv.open(&record).unwrap(), b"control");
    let header = [9u8; 16];
    let mut buf = b"data".to_vec();
    let tag = from.udp_send.seal_in_place(2, 7, &header, &mut buf);
    to.udp_recv
        .open_in_place(2, 7, &header, &mut buf, &tag)
        .unwrap();
    assert_eq!(buf, b"data");
}

fn assert_keys_match(a: &mut SessionKeys, b: &mut SessionKeys) {
    assert_one_way(a, b);
    assert_one_way(b, a);
    // Directions and channels use different keys.
    let mut buf = b"data".to_vec();
    let tag = a.udp_send.seal_in_place(0, 0, &[], &mut buf);
    assert!(
        a.udp_recv
            .open_in_place(0, 0, &[], &mut buf.clone(), &tag)
            .is_err()
    );
}

/// What each of the four derived keys makes of the same plaintext under
/// the same nonce (counter 0, lane 0, no associated data): equal keys
/// give equal bytes, whatever the channel.
fn first_seals(initiator: &mut SessionKeys, responder: &mut SessionKeys) -> Vec<Vec<u8>> {
    let udp = |key: &DataKey| {
        let mut buf = b"same plaintext".to_vec();
        let tag = key.seal_in_place(0, 0, &[], &mut buf);
        buf.extend_from_slice(&tag);
        buf
    };
    vec![
        initiator.tcp_send.seal(b"same plaintext"),
        udp(&initiator.udp_send),
        responder.tcp_send.seal(b"same plaintext"),
        udp(&responder.udp_send),
    ]
}

#[test]
fn the_four_derived_keys_differ_pairwise_tcp_from_udp_and_each_direction() {
    let s = secrets(&[SECRET_A]);
    let mut done = run(&s, &s).unwrap();
    let sealed = first_seals(&mut done.initiator, &mut done.responder);
    // The TCP record nonce and the UDP lane-0 nonce are the same bytes,
    // so this compares the keys themselves.
    for i in 0..4 {
        for j in i + 1..4 {
            assert_ne!(sealed[i], sealed[j], "derived keys {i} and {j} are equal");
        }
    }
    let keys = derive_keys(&[1; 32], &[2; 32], b"transcript");
    let all = [keys.tcp_i2r, keys.tcp_r2i, keys.udp_i2r, keys.udp_r2i];
    for i in 0..4 {
        for j in i + 1..4 {
            assert_ne!(all[i], all[j], "HKDF outputs {i} and {j} are equal");
        }
    }
}

#[test]
fn a_full_handshake_yields_matching_oriented_keys_both_ways() {
    let s = secrets(&[SECRET_A]);
    let mut done = run(&s, &s).unwrap();
    assert_eq!(done.payload2, b"hello from responder");
    assert_eq!(done.payload3, b"hello from initiator");
    assert_keys_match(&mut done.initiator, &mut done.responder);
}

#[test]
fn message_1_carries_the_initiators_clock_and_ephemeral_key_authenticated() {
    let s = secrets(&[SECRET_A]);
    let p = prologue(RANGE);
    let sent = T0 + std::time::Duration::from_nanos(123_456_789);
    let (_, msg1) = Handshake::initiator(&identity(1), &s, &p, sent).unwrap();
    let (_, stamp) = Handshake::responder(&identity(2), &s, &p, &msg1).unwrap();
    assert_eq!(stamp.sent_at, sent);
    assert_eq!(&stamp.ephemeral[..], &msg1[4..36]);
    // The timestamp is inside the AEAD: changing any of its bytes fails.
    for i in 36..48 {
        let mut tampered = msg1.clone();
        tampered[i] ^= 1;
        let err = Handshake::responder(&identity(2), &s, &p, &tampered).unwrap_err();
        assert!(
            matches!(err, HandshakeError::Authentication),
            "byte {i}: {err:?}"
        );
    }
}

#[test]
fn a_responder_with_a_different_secret_returns_unknown_secret() {
    let err = run(&secrets(&[SECRET_A]), &secrets(&[SECRET_B]))
        .err()
        .unwrap();
    assert!(matches!(err, HandshakeError::UnknownSecret(_)), "{err:?}");
}

#[test]
fn a_matching_id_with_a_different_psk_fails_authentication() {
    // Forge msg1 with B's PSK but A's ID: the ID matches, the tag does not.
    let (a, b) = (secrets(&[SECRET_A]), secrets(&[SECRET_B]));
    let p = prologue(RANGE);
    let (_, mut msg1) = Handshake::initiator(&identity(1), &b, &p, T0).unwrap();
    msg1[..4].copy_from_slice(&a.primary_id().0);
    let err = Handshake::responder(&identity(2), &a, &p, &msg1).unwrap_err();
    assert!(matches!(err, HandshakeError::Authentication), "{err:?}");
}

#[test]
fn a_different_cluster_range_fails_authentication() {
    let s = secrets(&[SECRET_A]);
    let (_, msg1) = Handshake::initiator(&identity(1), &s, &prologue(RANGE), T0).unwrap();
    let err = Handshake::responder(&identity(2), &s, &prologue("10.0.0.0/8"), &msg1).unwrap_err();
    assert!(matches!(err, HandshakeError::Authentication), "{err:?}");
}

#[test]
fn with_two_secrets_a_responder_accepts_either() {
    let both = secrets(&[SECRET_A, SECRET_B]);
    let both_reversed = secrets(&[SECRET_B, SECRET_A]);
    for initiator in [secrets(&[SECRET_A]), secrets(&[SECRET_B]), both_reversed] {
        let mut done = run(&initiator, &both).unwrap();
        assert_keys_match(&mut done.initiator, &mut done.responder);
    }
}

#[test]
fn the_initiator_uses_its_primary_secret() {
    let both = secrets(&[SECRET_B, SECRET_A]);
    let (_, msg1) = Handshake::initiator(&identity(1), &both, &prologue(RANGE), T0).unwrap();
    assert_eq!(msg1[..4], both.primary_id().0);
    assert!(run(&both, &secrets(&[SECRET_B])).is_ok());
    assert!(run(&both, &secrets(&[SECRET_A])).is_err());
}

#[test]
fn truncated_or_oversized_msg1_is_rejected() {
    let s = secrets(&[SECRET_A]);
    let p = prologue(RANGE);
    let (_, msg1) = Handshake::initiator(&identity(1), &s, &p, T0).unwrap();
    for bad in [
        &msg1[..MSG1_LEN - 1],
        &[msg1.as_slice(), b"x"].concat(),
        &[],
    ] {
        let err = Handshake::responder(&identity(2), &s, &p, bad).unwrap_err();
        assert!(matches!(err, HandshakeError::Msg1Length { .. }), "{err:?}");
    }
    for i in SECRET_ID_LEN..MSG1_LEN {
        let mut bad = msg1.clone();
        bad[i] ^= 1;
        let err = Handshake::responder(&identity(2), &s, &p, &bad).unwrap_err();
        assert!(
            matches!(err, HandshakeError::Authentication),
            "byte {i}: {err:?}"
        );
    }
}

#[test]
fn tampered_truncated_or_oversized_msg2_and_msg3_are_rejected() {
    let s = secrets(&[SECRET_A]);
    let p = prologue(RANGE);
    let (i_id, r_id) = (identity(1), identity(2));
    let start = || {
        let (init, msg1) = Handshake::initiator_seeded(&i_id, &s, &p, T0, 1).unwrap();
        let (mut resp, _) = Handshake::responder_seeded(&r_id, &s, &p, &msg1, 2).unwrap();
        let msg2 = resp.write_message(b"two").unwrap();
        (init, resp, msg2)
    };
    let (_, _, msg2) = start();
    let mut bad2 = vec![
        msg2[..msg2.len() - 1].to_vec(),
        msg2[..10].to_vec(),
        Vec::new(),
    ];
    bad2.push(vec![0u8; MAX_MESSAGE_LEN + 1]);
    for i in [0, 40, msg2.len() - 1] {
        let mut m = msg2.clone();
        m[i] ^= 1;
        bad2.push(m);
    }
    for bad in bad2 {
        let (mut init, _, _) = start();
        assert!(init.read_message(&bad).is_err());
        assert!(matches!(
            init.write_message(b""),
            Err(HandshakeError::Failed)
        ));
        assert!(matches!(init.finish(), Err(HandshakeError::Failed)));
    }
    let (mut init, _, msg2) = start();
    init.read_message(&msg2).unwrap();
    let msg3 = init.write_message(b"three").unwrap();
    for bad in [
        &msg3[..msg3.len() - 1],
        &msg3[..5],
        &[][..],
        &vec![1u8; MAX_MESSAGE_LEN + 1],
    ] {
        let (_, mut resp, _) = start();
        assert!(resp.read_message(bad).is_err());
        assert!(matches!(resp.finish(), Err(HandshakeError::Failed)));
    }
}

#[test]
fn seeded_handshakes_are_reproducible() {
    let s = secrets(&[SECRET_A]);
    let p = prologue(RANGE);
    let (_, a) = Handshake::initiator_seeded(&identity(1), &s, &p, T0, 42).unwrap();
    let (_, b) = Handshake::initiator_seeded(&identity(1), &s, &p, T0, 42).unwrap();
    let (_, c) = Handshake::initiator_seeded(&identity(1), &s, &p, T0, 43).unwrap();
    let (_, d) = Handshake::initiator(&identity(1), &s, &p, T0).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, d);
}

#[test]
fn calls_out_of_turn_are_refused_without_breaking_the_handshake() {
    let s = secrets(&[SECRET_A]);
    let p = prologue(RANGE);
    let (mut init, msg1) = Handshake::initiator(&identity(1), &s, &p, T0).unwrap();
    assert!(matches!(
        init.write_message(b""),
        Err(HandshakeError::OutOfTurn)
    ));
    let (mut resp, _) = Handshake::responder(&identity(2), &s, &p, &msg1).unwrap();
    assert!(matches!(
        resp.read_message(b"x"),
        Err(HandshakeError::OutOfTurn)
    ));
    assert!(matches!(
        resp.write_message(&vec![0; MAX_PAYLOAD_LEN + 1]),
        Err(HandshakeError::PayloadTooLarge { .. })
    ));
    let msg2 = resp.write_message(&vec![7; MAX_PAYLOAD_LEN]).unwrap();
    assert!(msg2.len() <= MAX_MESSAGE_LEN);
    assert_eq!(init.read_message(&msg2).unwrap().len(), MAX_PAYLOAD_LEN);
    let msg3 = init.write_message(b"").unwrap();
    resp.read_message(&msg3).unwrap();
    assert!(matches!(
        resp.write_message(b""),
        Err(HandshakeError::OutOfTurn)
    ));
    let (unfinished, _) = Handshake::initiator(&identity(1), &s, &p, T0).unwrap();
    assert!(matches!(
        unfinished.finish(),
        Err(HandshakeError::NotFinished)
    ));
}

#[test]
fn prologue_binds_name_version_and_range() {
    assert_eq!(prologue("10.32.0.0/12"), b"weft\x0210.32.0.0/12");
}

/// Whether `printed` shows `key` (or its first 8 bytes) in any of the
/// forms Rust prints bytes in: decimal lists (`{:?}` of an array or
/// slice), lower- and upper-case hex, hex lists (`{:x?}`).
fn shows(printed: &str, key: &[u8]) -> bool {
    let head = &key[..8];
    let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
    let forms = [
        format!("{head:?}").trim_end_matches(']').to_string(),
        format!("{head:x?}").trim_end_matches(']').to_string(),
        format!("{head:#x?}"),
        hex.clone(),
        hex.to_uppercase(),
        head.iter()
            .map(|b| format!("{b}"))
            .collect::<Vec<_>>()
            .join(", "),
    ];
    forms.iter().any(|form| printed.contains(form.as_str()))
}

#[test]
fn no_key_type_prints_its_key_bytes_in_any_form() {
    // Distinctive bytes, so that a match cannot be chance.
    let raw: [u8; 32] = std::array::from_fn(|i| 0xa0 ^ (i as u8 * 7));
    assert!(shows(&format!("{raw:?}"), &raw), "the check itself works");
    assert!(shows(&format!("{:02x?}", &raw[..]), &raw));
    let printed = [
        format!("{:?}", DataKey::from_bytes(raw)),
        format!("{:?}", FrameSealer::from_bytes(raw)),
        format!("{:?}", FrameOpener::from_bytes(raw)),
        format!("{:#?}", DataKey::from_bytes(raw)),
    ];
    for p in &printed {
        assert!(!shows(p, &raw), "{p}");
    }
    // Real keys: the identity, the PSK and everything a handshake makes.
    let s = secrets(&[SECRET_A]);
    let id = identity(1);
    let private = id.private_key();
    let psk = s.primary().psk;
    let mut done = run(&s, &s).unwrap();
    let (init, _) = Handshake::initiator(&id, &s, &prologue(RANGE), T0).unwrap();
    let printed = [
        format!("{id:?}"),
        format!("{id:#?}"),
        format!("{s:?}"),
        format!("{s:#?}"),
        format!("{init:?}"),
        format!("{:?}", done.initiator),
        format!("{:#?}", done.responder),
    ];
    for p in &printed {
        assert!(!shows(p, &private), "identity key in {p}");
        assert!(!shows(p, &psk), "PSK in {p}");
        assert!(!shows(p, SECRET_A), "secret text in {p}");
    }
    // The derived keys are not reachable from outside; what they seal
    // is, and it must not equal what their Debug shows either.
    let sealed = first_seals(&mut done.initiator, &mut done.responder);
    assert!(printed.iter().all(|p| !sealed.iter().any(|c| shows(p, c))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_msg1_is_rejected_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100), use_real_id: bool) {
        let s = secrets(&[SECRET_A]);
        let mut bytes = bytes;
        if use_real_id && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&s.primary_id().0);
        }
        prop_assert!(Handshake::responder(&identity(2), &s, &prologue(RANGE), &bytes).is_err());
    }

    #[test]
    fn random_msg2_and_msg3_are_rejected_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let s = secrets(&[SECRET_A]);
        let p = prologue(RANGE);
        let (mut init, msg1) = Handshake::initiator(&identity(1), &s, &p, T0).unwrap();
        let (mut resp, _) = Handshake::responder(&identity(2), &s, &p, &msg1).unwrap();
        prop_assert!(init.read_message(&bytes).is_err());
        let _ = resp.write_message(b"").unwrap();
        prop_assert!(resp.read_message(&bytes).is_err());
    }
}
