//! Tests of `crypto::signing`: signatures made and checked, hostile inputs refused.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::crypto::cpu_time::cpu_ns_per_op;
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use rand::SeedableRng;

fn identity(seed: u64) -> Identity {
    Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
}

#[test]
fn a_signature_verifies_under_the_key_derived_from_the_public_key_alone() {
    for seed in 0..32 {
        let id = identity(seed);
        let key = SigningKey::from_identity(&id);
        let verifier = VerifyingKey::from_x25519(&id.public_key()).unwrap();
        assert_eq!(verifier, key.verifying_key());
        assert_eq!(verifier.id(), id.id());
        let sig = key.sign(Domain::TopologyEntry, 2, b"entry bytes");
        verifier
            .verify(Domain::TopologyEntry, 2, b"entry bytes", &sig)
            .unwrap();
    }
}

#[test]
fn a_signature_by_another_key_fails() {
    let sig = SigningKey::from_identity(&identity(1)).sign(Domain::RingEntry, 1, b"m");
    let other = VerifyingKey::from_x25519(&identity(2).public_key()).unwrap();
    assert_eq!(
        other.verify(Domain::RingEntry, 1, b"m", &sig),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn any_flipped_bit_in_message_or_signature_fails() {
    let id = identity(3);
    let key = SigningKey::from_identity(&id);
    let verifier = VerifyingKey::from_x25519(&id.public_key()).unwrap();
    let message = b"version 7, mtu 1420".to_vec();
    let sig = key.sign(Domain::TopologyEntry, 2, &message);
    for bit in 0..message.len() * 8 {
        let mut m = message.clone();
        m[bit / 8] ^= 1 << (bit % 8);
        assert!(verifier.verify(Domain::TopologyEntry, 2, &m, &sig).is_err());
    }
    let bytes = sig.to_bytes();
    for bit in 0..SIGNATURE_LEN * 8 {
        let mut b = bytes;
        b[bit / 8] ^= 1 << (bit % 8);
        let forged = Signature::from_bytes(&b);
        assert!(
            verifier
                .verify(Domain::TopologyEntry, 2, &message, &forged)
                .is_err(),
            "bit {bit}"
        );
    }
}

#[test]
fn the_domain_and_the_version_are_bound() {
    let id = identity(4);
    let key = SigningKey::from_identity(&id);
    let verifier = key.verifying_key();
    let sig = key.sign(Domain::TopologyEntry, 2, b"m");
    assert!(verifier.verify(Domain::RingEntry, 2, b"m", &sig).is_err());
    assert!(verifier.verify(Domain::IpamMessage, 2, b"m", &sig).is_err());
    assert!(
        verifier
            .verify(Domain::TopologyEntry, 3, b"m", &sig)
            .is_err()
    );
}

#[test]
fn signing_is_deterministic() {
    let key = SigningKey::from_identity(&identity(5));
    assert_eq!(
        key.sign(Domain::RingEntry, 1, b"x"),
        key.sign(Domain::RingEntry, 1, b"x")
    );
    assert_ne!(
        key.sign(Domain::RingEntry, 1, b"x"),
        key.sign(Domain::RingEntry, 1, b"y")
    );
}

#[test]
fn small_order_and_non_canonical_public_keys_are_refused() {
    // u = 0 and u = 1 are small order; u = p − 1 (= −1) has no Edwards
    // form; u = p and u = p + 1 are non-canonical encodings of 0 and 1;
    // a set top bit is non-canonical.
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    let mut p_minus_1 = p;
    p_minus_1[0] = 0xec;
    let mut p_plus_1 = p;
    p_plus_1[0] = 0xee;
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut top_bit = identity(6).public_key();
    top_bit[31] |= 0x80;
    // The order-8 point of Curve25519 (u from the libsodium blocklist).
    let order8: [u8; 32] = [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ];
    for bad in [[0u8; 32], one, p_minus_1, p, p_plus_1, top_bit, order8] {
        assert_eq!(
            VerifyingKey::from_x25519(&bad),
            Err(SignatureError::BadPublicKey),
            "{bad:02x?}"
        );
    }
}

#[test]
fn a_small_order_r_or_a_non_canonical_s_is_malformed() {
    let key = SigningKey::from_identity(&identity(7));
    let sig = key.sign(Domain::TopologyEntry, 2, b"m").to_bytes();
    let verdict = |bytes: [u8; SIGNATURE_LEN]| {
        key.verifying_key().verify(
            Domain::TopologyEntry,
            2,
            b"m",
            &Signature::from_bytes(&bytes),
        )
    };
    // R = the identity point (y = 1), small order.
    let mut small_r = sig;
    small_r[..32].fill(0);
    small_r[0] = 1;
    // s + l is the same scalar mod l but non-canonical.
    let l: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut big_s = sig;
    let mut carry = 0u16;
    for (byte, add) in big_s[32..].iter_mut().zip(l) {
        let sum = u16::from(*byte) + u16::from(add) + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
    // R with y = p + 2 (≡ 2, a valid y? either way not canonical).
    let mut big_r = sig;
    big_r[..32].fill(0xff);
    big_r[0] = 0xef;
    big_r[31] = 0x7f;
    for bad in [small_r, big_s, big_r, Signature::ZERO.to_bytes()] {
        assert_eq!(verdict(bad), Err(SignatureError::Malformed));
    }
    assert_eq!(verdict(sig), Ok(()));
}

#[test]
fn signatures_are_valid_ed25519_under_the_edwards_key() {
    // Cross-check against the textbook equation [s]B = R + [k]A computed
    // independently of verify().
    let key = SigningKey::from_identity(&identity(8));
    let sig = key.sign(Domain::IpamMessage, 1, b"donate");
    let a = key.verifying_key().compressed;
    assert_eq!(a.as_bytes()[31] & 0x80, 0, "sign bit is 0");
    let r = CompressedEdwardsY(sig.r).decompress().unwrap();
    let s = Scalar::from_canonical_bytes(sig.s).unwrap();
    let mut h = Sha512::new();
    h.update(sig.r);
    h.update(a.as_bytes());
    h.update(b"weft ipam message\x00\x01donate");
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    assert_eq!(
        ED25519_BASEPOINT_POINT * s,
        r + a.decompress().unwrap() * k,
        "[s]B = R + [k]A"
    );
}

#[test]
fn debug_never_prints_the_scalar() {
    let key = SigningKey::from_identity(&identity(9));
    let dbg = format!("{key:?}");
    let hex: String = key
        .scalar
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!dbg.contains(&hex[..16]));
    assert!(!dbg.contains(&format!("{:?}", key.scalar.as_bytes())[..20]));
}

/// Verification as it was before the inversion-free comparison:
/// recompress `R` and `[s]B − [k]A` and compare bytes. Kept to check the
/// new one against, verdict for verdict, and to measure what it saved.
fn verify_by_compressing(
    key: &VerifyingKey,
    domain: Domain,
    version: u8,
    message: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    let compressed_r = CompressedEdwardsY(signature.r);
    let r = compressed_r.decompress().ok_or(SignatureError::Malformed)?;
    if r.compress() != compressed_r || r.is_small_order() {
        return Err(SignatureError::Malformed);
    }
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(signature.s))
        .ok_or(SignatureError::Malformed)?;
    let k = challenge(&compressed_r, &key.compressed, domain, version, message);
    let expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-key.point, &s);
    if expected.compress() == compressed_r {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Encodings of `R` at the edges of canonical: y = p − 1, p, p + 1,
/// 2²⁵⁵ − 1, each with and without the sign bit, and x = 0 with the
/// sign bit set (y = 1 and y = −1).
fn edge_rs() -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for low in [0xec, 0xed, 0xee, 0xff] {
        let mut y = [0xffu8; 32];
        y[0] = low;
        y[31] = 0x7f;
        out.push(y);
    }
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut minus_one = [0xffu8; 32];
    minus_one[0] = 0xec;
    minus_one[31] = 0x7f;
    out.extend([one, minus_one]);
    let signed: Vec<[u8; 32]> = out
        .iter()
        .map(|y| {
            let mut y = *y;
            y[31] |= 0x80;
            y
        })
        .collect();
    out.extend(signed);
    out
}

#[test]
fn the_inversion_free_check_agrees_with_compressing_on_edge_encodings_of_r() {
    let key = SigningKey::from_identity(&identity(11));
    let sig = key.sign(Domain::RingEntry, 3, b"edge").to_bytes();
    for r in edge_rs() {
        let mut bad = sig;
        bad[..32].copy_from_slice(&r);
        let bad = Signature::from_bytes(&bad);
        let verifier = key.verifying_key();
        assert_eq!(
            verifier.verify(Domain::RingEntry, 3, b"edge", &bad),
            verify_by_compressing(&verifier, Domain::RingEntry, 3, b"edge", &bad),
            "R = {r:02x?}"
        );
    }
}

proptest::proptest! {
    /// The patched verification gives the old verdict on honest
    /// signatures, on every single-bit change to one, and on signatures
    /// checked under another key or for another message.
    #[test]
    fn the_inversion_free_check_agrees_with_compressing(
        seed in 0u64..1_000,
        message in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        flip in proptest::option::of(0usize..SIGNATURE_LEN * 8),
        other_key in proptest::prelude::any::<bool>(),
    ) {
        let key = SigningKey::from_identity(&identity(seed));
        let mut bytes = key.sign(Domain::TopologyEntry, 2, &message).to_bytes();
        if let Some(bit) = flip {
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        let sig = Signature::from_bytes(&bytes);
        let verifier = if other_key {
            SigningKey::from_identity(&identity(seed + 1)).verifying_key()
        } else {
            key.verifying_key()
        };
        let new = verifier.verify(Domain::TopologyEntry, 2, &message, &sig);
        let old = verify_by_compressing(&verifier, Domain::TopologyEntry, 2, &message, &sig);
        proptest::prop_assert_eq!(new, old);
        proptest::prop_assert_eq!(new.is_ok(), flip.is_none() && !other_key);
    }
}

/// `cargo test --release --lib crypto::signing -- --ignored --nocapture`
#[test]
#[ignore = "timing; run in release"]
fn sign_and_verify_cost() {
    let key = SigningKey::from_identity(&identity(10));
    let verifier = key.verifying_key();
    let msg = [7u8; 200];
    let sig = key.sign(Domain::TopologyEntry, 2, &msg);
    let n = 20_000;
    let sign_ns = cpu_ns_per_op(n, || {
        std::hint::black_box(key.sign(Domain::TopologyEntry, 2, std::hint::black_box(&msg)));
    });
    let verify_ns = cpu_ns_per_op(n, || {
        verifier
            .verify(Domain::TopologyEntry, 2, std::hint::black_box(&msg), &sig)
            .unwrap();
    });
    let old_verify_ns = cpu_ns_per_op(n, || {
        let msg = std::hint::black_box(&msg);
        verify_by_compressing(&verifier, Domain::TopologyEntry, 2, msg, &sig).unwrap();
    });
    let public_key = verifier.x25519_public_key();
    let derive_ns = cpu_ns_per_op(n, || {
        std::hint::black_box(VerifyingKey::from_x25519(&public_key).unwrap());
    });
    let mut cache = crate::crypto::VerifyingKeys::default();
    let cached_ns = cpu_ns_per_op(n, || {
        std::hint::black_box(cache.key(std::hint::black_box(&public_key)).unwrap());
    });
    let per_s = |ns: u128| 1e9 / ns.max(1) as f64;
    eprintln!(
        "CPU time per op (200-byte message):\n  sign {sign_ns} ns ({:.0}/s)\n  verify {verify_ns} ns ({:.0}/s); before the inversion-free patch {old_verify_ns} ns ({:.0}/s)\n  verifying key from x25519 {derive_ns} ns ({:.0}/s); from the cache {cached_ns} ns\n  check of an entry by a new signer: {} ns before, {} ns now; by a known one {} ns",
        per_s(sign_ns),
        per_s(verify_ns),
        per_s(old_verify_ns),
        per_s(derive_ns),
        derive_ns + old_verify_ns,
        derive_ns + verify_ns,
        cached_ns + verify_ns,
    );
}
