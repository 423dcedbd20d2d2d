//! The one implementation of the data plane's datagram framing (DESIGN.md
//! "The data header"): `[16-byte header][ciphertext][16-byte tag]`, the
//! header being the AEAD's associated data and its lane ‖ counter the nonce.
//! Sealing and opening both work in the caller's buffer and allocate
//! nothing (DESIGN.md "The fast data path"; boringtun's `TunnResult`).
//!
//! Owns: the byte layout, the checked view ([`Datagram`]), and the order of
//! the replay checks around the AEAD — "would accept" before decrypting,
//! "mark" only after the tag verified (DESIGN.md "Keys and sessions" →
//! "Lanes"; `crypto::replay`). Does not own: which key or window belongs to
//! a receiver index, counters, routing or verdicts (see `lane` for the
//! data workers; the control task's heartbeats keep their own).
//!
//! Two users, one framing:
//! - the data-plane worker (`lane::Lane`) parses with [`Datagram::parse`],
//!   looks the session up itself and calls [`Datagram::open`]; it seals
//!   through [`seal_datagram`] straight into its send arena;
//! - heartbeats on the control lane call [`seal_datagram`] into a buffer of
//!   their own and [`open_datagram`], which parses, asks the caller for the
//!   key and window of the header's receiver index, and opens.

use super::packet::{DataHeader, HEADER_LEN, HeaderError};
use crate::crypto::data::{DataKey, TAG_LEN};
use crate::crypto::replay::ReplayWindow;
use std::ops::Range;

/// Bytes a datagram adds around its body: the header and the tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Why [`seal_datagram`] refused. Nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The buffer cannot hold the header, `body_len` bytes of body and the
    /// tag: a caller's bug (its buffer is sized from the body it wrote).
    /// The buffer is untouched.
    #[error("a {have}-byte buffer cannot hold a sealed datagram of {need} bytes")]
    BufferTooSmall {
        /// Bytes the sealed datagram needs.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
}

/// Why a datagram was not opened. Never fatal: the caller drops the
/// datagram and counts the reason (DESIGN.md invariant 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Malformed: shorter than header + tag, another data-plane version, or
    /// an unknown type. Nothing changed.
    #[error("malformed data header: {0:?}")]
    Header(HeaderError),
    /// No key is known for the header's receiver index. Nothing changed:
    /// the caller may look again in newer keys.
    #[error("no keyset for this receiver index")]
    UnknownSession,
    /// The counter was seen before, is older than the window, or is above
    /// the 48-bit limit. Nothing changed: no decryption was spent.
    #[error("replayed or too old counter")]
    Replay,
    /// The tag did not verify (wrong key, or any header, body or tag byte
    /// changed). The window is unchanged; the body now holds garbage.
    #[error("data packet failed authentication")]
    BadTag,
}

/// Seals one datagram in place: `buf[HEADER_LEN..HEADER_LEN + body_len]`
/// holds the plaintext body; writes `header` before it, encrypts the body
/// under `key` with nonce `header.lane ‖ header.counter` and the header as
/// associated data, and writes the tag after it. Returns the datagram's
/// length, `body_len + OVERHEAD`; bytes of `buf` past it are untouched.
///
/// The caller owns the counter: it must never seal two datagrams with the
/// same (lane, counter) under one key, and keep `header.counter` at most
/// [`crate::crypto::data::COUNTER_LIMIT`] (DESIGN.md "Keys and sessions").
/// Use [`super::packet::CONTROL_LANE`] and `PacketType::Heartbeat` for
/// heartbeats, a worker's own lane and `PacketType::Data` for data.
pub fn seal_datagram(
    header: &DataHeader,
    key: &DataKey,
    buf: &mut [u8],
    body_len: usize,
) -> Result<usize, SealError> {
    let need = body_len.saturating_add(OVERHEAD);
    let have = buf.len();
    let Some(datagram) = buf.get_mut(..need) else {
        return Err(SealError::BufferTooSmall { need, have });
    };
    let (head, rest) = datagram.split_at_mut(HEADER_LEN);
    let (body, tag) = rest.split_at_mut(body_len);
    let mut header_bytes = [0u8; HEADER_LEN];
    header.emit(&mut header_bytes);
    head.copy_from_slice(&header_bytes);
    tag.copy_from_slice(&key.seal_in_place(header.lane, header.counter, head, body));
    Ok(need)
}

/// Parses, looks up and opens one datagram in place: the heartbeat's entry
/// point (the data workers use [`Datagram`] directly). `find` is given the
/// parsed header and returns the receive key and replay window of its
/// receiver index, or `None` for an unknown one; it may reject a header by
/// returning `None` too (a wrong type or lane), and may create the window.
/// The order is the one every opener must keep: would-accept, decrypt,
/// mark.
pub fn open_datagram<'b, 'k>(
    buf: &'b mut [u8],
    find: impl FnOnce(&DataHeader) -> Option<(&'k DataKey, &'k mut ReplayWindow)>,
) -> Result<Opened<'b>, OpenError> {
    let datagram = Datagram::parse(buf).map_err(OpenError::Header)?;
    let (key, window) = find(datagram.header()).ok_or(OpenError::UnknownSession)?;
    datagram.open(key, window)
}

/// A checked view of a received datagram: at least header + tag long, its
/// header parsed. Construct with [`Datagram::parse`]; nothing in it can
/// index out of bounds.
#[derive(Debug)]
pub struct Datagram<'b> {
    header: DataHeader,
    buf: &'b mut [u8],
}

impl<'b> Datagram<'b> {
    /// Checks the length and parses the header of `buf` (the whole datagram,
    /// one segment of a GRO train). No state anywhere changes.
    pub fn parse(buf: &'b mut [u8]) -> Result<Self, HeaderError> {
        let header = DataHeader::parse(buf)?;
        Ok(Self { header, buf })
    }

    /// The parsed header (not yet authenticated).
    pub fn header(&self) -> &DataHeader {
        &self.header
    }

    /// Where the body lies in the buffer.
    fn body_range(&self) -> Range<usize> {
        HEADER_LEN..self.buf.len() - TAG_LEN
    }

    /// Opens the datagram in place under `key`, checking `window` (the
    /// replay window of this header's receiver index and lane) before
    /// decrypting and marking it only once the tag verified. On success the
    /// body holds the plaintext.
    pub fn open(self, key: &DataKey, window: &mut ReplayWindow) -> Result<Opened<'b>, OpenError> {
        let header = self.header;
        if !window.would_accept(header.counter) {
            return Err(OpenError::Replay);
        }
        let body = self.body_range();
        let (head, rest) = self.buf.split_at_mut(HEADER_LEN);
        let (ciphertext, tag) = rest.split_at_mut(body.len());
        let Some(tag) = tag.first_chunk::<TAG_LEN>() else {
            // `parse` guarantees the tag's 16 bytes; a short one cannot verify.
            return Err(OpenError::BadTag);
        };
        key.open_in_place(header.lane, header.counter, head, ciphertext, tag)
            .map_err(|_| OpenError::BadTag)?;
        // The window's highest before this mark: "newer than any seen"
        // (DESIGN.md "Endpoints behind NAT").
        let newest = window.highest().is_none_or(|h| header.counter > h);
        if !window.mark(header.counter) {
            return Err(OpenError::Replay);
        }
        Ok(Opened {
            header,
            newest,
            buf: self.buf,
            body,
        })
    }
}

/// A datagram that authenticated and was marked in its window.
#[derive(Debug)]
pub struct Opened<'b> {
    header: DataHeader,
    newest: bool,
    buf: &'b mut [u8],
    body: Range<usize>,
}

impl Opened<'_> {
    /// The header, now authenticated.
    pub fn header(&self) -> &DataHeader {
        &self.header
    }

    /// Whether its counter is the highest its window has accepted: only such
    /// a packet may move a peer's endpoint (DESIGN.md "Endpoints behind NAT").
    pub fn is_newest(&self) -> bool {
        self.newest
    }

    /// The plaintext body.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }

    /// Where the body lies in the buffer given to `parse`: the header's 16
    /// bytes before it are free for the caller (a virtio header, say).
    pub fn body_range(&self) -> Range<usize> {
        self.body.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::data::COUNTER_LIMIT;
    use crate::id::ShortId;
    use crate::router::packet::{CONTROL_LANE, PacketType};

    fn heartbeat(counter: u64) -> DataHeader {
        DataHeader {
            kind: PacketType::Heartbeat,
            hop_limit: 1,
            src: ShortId(1),
            dst: ShortId(2),
            session: 0x00ab_cdef,
            lane: CONTROL_LANE,
            counter,
        }
    }

    fn sealed(key: &DataKey, header: &DataHeader, body: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; body.len() + OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        assert_eq!(
            seal_datagram(header, key, &mut buf, body.len()),
            Ok(buf.len())
        );
        buf
    }

    #[test]
    fn a_sealed_heartbeat_opens_to_its_body_once() {
        let key = DataKey::from_bytes([3; 32]);
        let mut window = ReplayWindow::new();
        let mut buf = sealed(&key, &heartbeat(7), b"ping 123");
        assert_ne!(&buf[HEADER_LEN..HEADER_LEN + 8], b"ping 123");
        let copy = buf.clone();
        let opened = open_datagram(&mut buf, |h| {
            assert_eq!(*h, heartbeat(7));
            Some((&key, &mut window))
        })
        .unwrap();
        assert_eq!(opened.body(), b"ping 123");
        assert_eq!(opened.body_range(), HEADER_LEN..HEADER_LEN + 8);
        assert_eq!(*opened.header(), heartbeat(7));
        assert!(opened.is_newest());
        let mut again = copy;
        let replayed = open_datagram(&mut again, |_| Some((&key, &mut window)));
        assert_eq!(replayed.unwrap_err(), OpenError::Replay);
    }

    #[test]
    fn sealing_into_a_short_buffer_writes_nothing() {
        let key = DataKey::from_bytes([3; 32]);
        let mut buf = vec![0xaa; 10 + OVERHEAD - 1];
        assert_eq!(
            seal_datagram(&heartbeat(0), &key, &mut buf, 10),
            Err(SealError::BufferTooSmall {
                need: 10 + OVERHEAD,
                have: 10 + OVERHEAD - 1
            })
        );
        assert!(buf.iter().all(|&b| b == 0xaa));
        assert!(seal_datagram(&heartbeat(0), &key, &mut [], usize::MAX).is_err());
    }

    #[test]
    fn sealing_leaves_the_rest_of_a_longer_buffer_alone() {
        let key = DataKey::from_bytes([3; 32]);
        let mut buf = vec![0x55; 100];
        assert_eq!(
            seal_datagram(&heartbeat(0), &key, &mut buf, 4),
            Ok(4 + OVERHEAD)
        );
        assert!(buf[4 + OVERHEAD..].iter().all(|&b| b == 0x55));
    }

    #[test]
    fn an_empty_body_round_trips() {
        let key = DataKey::from_bytes([4; 32]);
        let mut window = ReplayWindow::new();
        let mut buf = sealed(&key, &heartbeat(COUNTER_LIMIT), b"");
        let opened = open_datagram(&mut buf, |_| Some((&key, &mut window))).unwrap();
        assert!(opened.body().is_empty());
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_and_leaves_the_window_unmarked() {
        let key = DataKey::from_bytes([5; 32]);
        let good = sealed(&key, &heartbeat(9), b"0123456789");
        // Every byte except the version/type nibbles (a header error instead).
        for at in 1..good.len() {
            let mut window = ReplayWindow::new();
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            let result = open_datagram(&mut bad, |_| Some((&key, &mut window)));
            assert_eq!(result.unwrap_err(), OpenError::BadTag, "byte {at}");
            assert_eq!(window.highest(), None, "byte {at}");
        }
    }

    #[test]
    fn truncated_and_foreign_datagrams_are_header_errors_without_a_lookup() {
        let key = DataKey::from_bytes([6; 32]);
        let good = sealed(&key, &heartbeat(1), b"");
        for len in 0..OVERHEAD {
            let mut short = good[..len].to_vec();
            let result = open_datagram(&mut short, |_| panic!("no lookup for {len} bytes"));
            assert_eq!(
                result.unwrap_err(),
                OpenError::Header(HeaderError::Truncated)
            );
        }
        let mut other_version = good.clone();
        other_version[0] = 0x21;
        let result = open_datagram(&mut other_version, |_| panic!("no lookup"));
        assert_eq!(result.unwrap_err(), OpenError::Header(HeaderError::Version));
    }

    #[test]
    fn an_unknown_receiver_index_is_reported_as_such() {
        let key = DataKey::from_bytes([6; 32]);
        let mut buf = sealed(&key, &heartbeat(1), b"x");
        let result = open_datagram(&mut buf, |_| None);
        assert_eq!(result.unwrap_err(), OpenError::UnknownSession);
    }

    #[test]
    fn only_the_highest_counter_so_far_is_newest() {
        let key = DataKey::from_bytes([7; 32]);
        let mut window = ReplayWindow::new();
        for (counter, newest) in [(5, true), (3, false), (6, true), (4, false)] {
            let mut buf = sealed(&key, &heartbeat(counter), b"");
            let opened = open_datagram(&mut buf, |_| Some((&key, &mut window))).unwrap();
            assert_eq!(opened.is_newest(), newest, "counter {counter}");
        }
    }
}
