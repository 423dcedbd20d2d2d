//! The four session keys a finished handshake derives from snow's raw split
//! (DESIGN.md "Keys and sessions" → "Key separation").

use zeroize::{Zeroize, Zeroizing};

/// The four HKDF outputs; wiped on drop once the ciphers hold them.
pub(super) struct DerivedKeys {
    pub(super) tcp_i2r: [u8; 32],
    pub(super) tcp_r2i: [u8; 32],
    pub(super) udp_i2r: [u8; 32],
    pub(super) udp_r2i: [u8; 32],
}

impl Drop for DerivedKeys {
    fn drop(&mut self) {
        for key in [
            &mut self.tcp_i2r,
            &mut self.tcp_r2i,
            &mut self.udp_i2r,
            &mut self.udp_r2i,
        ] {
            key.zeroize();
        }
    }
}

/// HKDF-BLAKE2s: IKM = both raw split keys, salt = the handshake hash (binds
/// the transcript), one distinct label per key (DESIGN "Key separation").
pub(super) fn derive_keys(
    k_i2r: &[u8; 32],
    k_r2i: &[u8; 32],
    handshake_hash: &[u8],
) -> DerivedKeys {
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(k_i2r);
    ikm[32..].copy_from_slice(k_r2i);
    let hkdf = hkdf::SimpleHkdf::<blake2::Blake2s256>::new(Some(handshake_hash), &*ikm);
    let expand = |label: &[u8]| {
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF's 255 × 32-byte limit, so this cannot fail.
        if hkdf.expand(label, &mut out).is_err() {
            unreachable!("HKDF output length is fixed and valid");
        }
        out
    };
    DerivedKeys {
        tcp_i2r: expand(b"weft v1 tcp initiator->responder"),
        tcp_r2i: expand(b"weft v1 tcp responder->initiator"),
        udp_i2r: expand(b"weft v1 udp initiator->responder"),
        udp_r2i: expand(b"weft v1 udp responder->initiator"),
    }
}
