//! Where the allocator keeps its state: the [`Store`] trait (two records,
//! the ring and the allocation table, each written whole and atomically),
//! an in-memory [`MemStore`] for tests and the simulator, and a
//! [`FileStore`] on `crate::persist::write_atomic` (fsync, rename).
//!
//! The on-disk format is versioned: a 4-byte magic, then a bincode body that
//! starts with a format number (DESIGN.md "Wire rules": the state-dir format
//! is versioned too). Two records rather than one so that an allocation
//! rewrites only the small table, not the ring.
//!
//! Fields are only ever appended to a record, and an appended field does
//! not change [`STATE_FORMAT`]: an older weft reads the fields it knows and
//! ignores the rest (so a node can be rolled back), and this one reads a
//! record that ends before a field was added as having it empty. The format
//! number changes only for a change an older weft must refuse.

use super::ring::{Marks, RingWire, TitlesWire, decode_titles_and_marks};
use super::space::{AllocKey, PodName};
use crate::id::PeerId;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// The on-disk format of the allocation record written by this version.
pub const STATE_FORMAT: u16 = 1;
/// The ring record's format: 2 holds the signed ring (ring wire version 3).
/// A format-1 ring (unsigned) is refused with [`StateError::UnsignedRing`].
///
/// The ring's signed titles (issue 15, `ring/title.rs`) are a field
/// appended after the quarantined ranges, not a new format: a build
/// before them reads the ring and ignores the rest, so a node can still
/// be rolled back; a record that ends before them has none.
pub const RING_FORMAT: u16 = 2;
const RING_MAGIC: &[u8; 4] = b"WFRG";
const ALLOC_MAGIC: &[u8; 4] = b"WFAL";

/// Durable storage for the allocator. `save_*` returns only once the bytes
/// are durable (fsynced): the allocator relies on it for "persist, then send"
/// and "persist, then answer" (DESIGN.md invariant 5).
pub trait Store {
    /// Both records, if present.
    fn load(&mut self) -> io::Result<Stored>;
    /// Replaces the ring record.
    fn save_ring(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Replaces the allocation record.
    fn save_allocations(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// The raw records read from a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// The ring record.
    pub ring: Option<Vec<u8>>,
    /// The allocation record.
    pub allocations: Option<Vec<u8>>,
}

impl Stored {
    /// The router these records belong to (the ring's, else the
    /// allocations'), unchecked: a start resuming an identity rotation
    /// asks whether the hand-over was written under the new ID.
    pub fn owner(&self) -> Option<PeerId> {
        let of = |bytes: &Option<Vec<u8>>, magic: &[u8; 4]| {
            let body = bytes.as_deref()?.strip_prefix(magic.as_slice())?;
            let (head, _): (OwnerHead, usize) =
                bincode::serde::decode_from_slice(body, crate::wire::config()).ok()?;
            Some(head.me)
        };
        of(&self.ring, RING_MAGIC).or_else(|| of(&self.allocations, ALLOC_MAGIC))
    }
}

/// What both records start with.
#[derive(Deserialize)]
struct OwnerHead {
    _format: u16,
    me: PeerId,
}

/// The ring record: the ring plus the offsets still quarantined (their
/// quarantine restarts in full after a restart, which errs on the safe side).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PersistedRing {
    /// [`STATE_FORMAT`].
    pub format: u16,
    /// The router this state belongs to.
    pub me: PeerId,
    /// The ring.
    pub ring: RingWire,
    /// Quarantined `(start, end)` offsets.
    pub quarantined: Vec<(u128, u128)>,
    /// The ring's titles (none in a record written before them).
    pub titles: TitlesWire,
    /// The ring's marks (all false in a record written before them).
    pub marks: Marks,
}

/// The ring record's fields before titles: what every ring record starts
/// with. [`PersistedRing::decode`] reads this, then the titles from what
/// follows, if anything does.
#[derive(Deserialize)]
struct RingHead {
    format: u16,
    me: PeerId,
    ring: RingWire,
    quarantined: Vec<(u128, u128)>,
}

/// The allocation record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PersistedAllocations {
    /// [`STATE_FORMAT`].
    pub format: u16,
    /// The router this state belongs to.
    pub me: PeerId,
    /// Who holds which offset.
    pub allocations: Vec<(AllocKey, u128)>,
    /// Appended (issue 17): the pods behind pod keys, as kubelet named
    /// them. Empty in a record written before it was added.
    pub pods: Vec<(AllocKey, PodName)>,
}

/// The allocation record's fields as format 1 first had them: what every
/// record starts with. [`PersistedAllocations::decode`] reads this, then
/// each appended field from whatever follows.
#[derive(Deserialize)]
struct AllocationsHead {
    format: u16,
    me: PeerId,
    allocations: Vec<(AllocKey, u128)>,
}

/// A state record that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not a weft IPAM record.
    #[error("not a weft ipam state file (bad magic)")]
    Magic,
    /// Written by a newer weft.
    #[error("state format {0} is newer than this weft understands ({STATE_FORMAT})")]
    Format(u16),
    /// Written under another router ID.
    #[error("state belongs to router {found}, this router is {me}; run `weft reset --state`")]
    OtherRouter {
        /// Our ID.
        me: PeerId,
        /// The ID in the file.
        found: PeerId,
    },
    /// A ring saved before rings were signed: its entries cannot be proven
    /// to peers. The allocation record is kept; the ring is learned again.
    #[error(
        "the saved IPAM ring predates signed rings; move ipam-ring out of the state dir (ipam-allocations stays) and restart to learn the ring from the cluster"
    )]
    UnsignedRing,
    /// Corrupt body.
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

fn encode_record<T: Serialize>(magic: &[u8; 4], value: &T) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend(crate::wire::encode(value).unwrap_or_default());
    out
}

fn decode_record<T: serde::de::DeserializeOwned>(
    magic: &[u8; 4],
    bytes: &[u8],
) -> Result<T, StateError> {
    let body = bytes
        .strip_prefix(magic.as_slice())
        .ok_or(StateError::Magic)?;
    crate::wire::decode(body).map_err(|e| StateError::Corrupt(e.to_string()))
}

fn check(format: u16, me: PeerId, found: PeerId) -> Result<(), StateError> {
    if format > STATE_FORMAT {
        return Err(StateError::Format(format));
    }
    if me != found {
        return Err(StateError::OtherRouter { me, found });
    }
    Ok(())
}

impl PersistedRing {
    /// Encodes with magic and format.
    pub fn encode(&self) -> Vec<u8> {
        encode_record(RING_MAGIC, self)
    }

    /// Decodes and checks the format and the owner ID. A record that ends
    /// after the quarantined ranges (written before titles) has none;
    /// titles that are there must decode.
    pub fn decode(bytes: &[u8], me: PeerId) -> Result<Self, StateError> {
        // The format leads the body: read it alone first, so that an
        // unsigned ring gets its own answer rather than "corrupt".
        let format: u16 = decode_record(RING_MAGIC, bytes)?;
        if format < RING_FORMAT {
            return Err(StateError::UnsignedRing);
        }
        if format > RING_FORMAT {
            return Err(StateError::Format(format));
        }
        let body = bytes
            .strip_prefix(RING_MAGIC.as_slice())
            .ok_or(StateError::Magic)?;
        let corrupt = |e: &dyn std::fmt::Display| StateError::Corrupt(e.to_string());
        let (head, read): (RingHead, usize) =
            crate::wire::decode_prefix(body).map_err(|e| corrupt(&e))?;
        check(0, me, head.me)?;
        let (titles, marks) = decode_titles_and_marks(body.get(read..).unwrap_or_default())
            .map_err(|e| corrupt(&e))?
            .unwrap_or_default();
        Ok(Self {
            format: head.format,
            me: head.me,
            ring: head.ring,
            quarantined: head.quarantined,
            titles,
            marks,
        })
    }
}

impl PersistedAllocations {
    /// Encodes with magic and format.
    pub fn encode(&self) -> Vec<u8> {
        encode_record(ALLOC_MAGIC, self)
    }

    /// Decodes and checks the format and the owner ID. A record written
    /// before `pods` was appended has none.
    pub fn decode(bytes: &[u8], me: PeerId) -> Result<Self, StateError> {
        let body = bytes
            .strip_prefix(ALLOC_MAGIC.as_slice())
            .ok_or(StateError::Magic)?;
        let corrupt = |e: &dyn std::fmt::Display| StateError::Corrupt(e.to_string());
        let (head, read): (AllocationsHead, usize) =
            bincode::serde::decode_from_slice(body, crate::wire::config())
                .map_err(|e| corrupt(&e))?;
        check(head.format, me, head.me)?;
        let pods = match body.get(read..) {
            Some(rest) if !rest.is_empty() => crate::wire::decode(rest).map_err(|e| corrupt(&e))?,
            _ => Vec::new(),
        };
        Ok(Self {
            format: head.format,
            me: head.me,
            allocations: head.allocations,
            pods,
        })
    }
}

/// An in-memory store. `fail` makes every save fail (to test that a failed
/// persist changes nothing and sends nothing).
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    /// The records as last saved.
    pub stored: Stored,
    /// When true, saves fail with an I/O error.
    pub fail: bool,
    /// Number of successful saves.
    pub saves: u64,
}

impl Store for MemStore {
    fn load(&mut self) -> io::Result<Stored> {
        Ok(self.stored.clone())
    }

    fn save_ring(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other("injected failure"));
        }
        self.saves += 1;
        self.stored.ring = Some(bytes.to_vec());
        Ok(())
    }

    fn save_allocations(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other("injected failure"));
        }
        self.saves += 1;
        self.stored.allocations = Some(bytes.to_vec());
        Ok(())
    }
}

/// Files `ipam-ring` and `ipam-allocations` (mode 0600) in the state dir;
/// the IPv6 pod range's ring has its own pair, `ipam6-*` (issue 19).
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: PathBuf,
    prefix: &'static str,
}

impl FileStore {
    /// A store in `dir`, created (mode 0700) if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::open_prefixed(dir, "ipam")
    }

    /// A store whose files are `PREFIX-ring` and `PREFIX-allocations`.
    pub fn open_prefixed(dir: &Path, prefix: &'static str) -> io::Result<Self> {
        crate::persist::ensure_private_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            prefix,
        })
    }

    fn file(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{}-{what}", self.prefix))
    }

    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.file(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Store for FileStore {
    fn load(&mut self) -> io::Result<Stored> {
        Ok(Stored {
            ring: self.read("ring")?,
            allocations: self.read("allocations")?,
        })
    }

    fn save_ring(&mut self, bytes: &[u8]) -> io::Result<()> {
        crate::persist::write_atomic(&self.file("ring"), bytes, 0o600)
    }

    fn save_allocations(&mut self, bytes: &[u8]) -> io::Result<()> {
        crate::persist::write_atomic(&self.file("allocations"), bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn file_store_round_trips_both_records() {
        let dir = std::env::temp_dir().join(format!("weft-ipam-store-{}", std::process::id()));
        let mut store = FileStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), Stored::default());
        store.save_ring(b"ring").unwrap();
        store.save_allocations(b"allocs").unwrap();
        let loaded = FileStore::open(&dir).unwrap().load().unwrap();
        assert_eq!(loaded.ring.as_deref(), Some(&b"ring"[..]));
        assert_eq!(loaded.allocations.as_deref(), Some(&b"allocs"[..]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_ipv6_store_keeps_its_own_files_beside_the_ipv4_one() {
        let dir = std::env::temp_dir().join(format!("weft-ipam6-store-{}", std::process::id()));
        let mut v4 = FileStore::open(&dir).unwrap();
        let mut v6 = FileStore::open_prefixed(&dir, "ipam6").unwrap();
        v4.save_ring(b"four").unwrap();
        v6.save_ring(b"six").unwrap();
        assert_eq!(v4.load().unwrap().ring.as_deref(), Some(&b"four"[..]));
        assert_eq!(v6.load().unwrap().ring.as_deref(), Some(&b"six"[..]));
        assert!(dir.join("ipam-ring").exists() && dir.join("ipam6-ring").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_of_another_router_or_a_newer_format_are_refused() {
        let rec = PersistedAllocations {
            format: STATE_FORMAT,
            me: PeerId(1),
            allocations: vec![],
            pods: vec![],
        };
        let bytes = rec.encode();
        assert!(PersistedAllocations::decode(&bytes, PeerId(1)).is_ok());
        assert!(matches!(
            PersistedAllocations::decode(&bytes, PeerId(2)),
            Err(StateError::OtherRouter { .. })
        ));
        let newer = PersistedAllocations {
            format: STATE_FORMAT + 1,
            ..rec
        };
        assert!(matches!(
            PersistedAllocations::decode(&newer.encode(), PeerId(1)),
            Err(StateError::Format(_))
        ));
        assert!(matches!(
            PersistedAllocations::decode(b"junk", PeerId(1)),
            Err(StateError::Magic)
        ));
    }

    #[test]
    fn the_owner_of_stored_records_is_read_without_a_check() {
        let rec = |me| PersistedAllocations {
            format: STATE_FORMAT,
            me,
            allocations: vec![],
            pods: vec![],
        };
        let stored = |allocations: Option<Vec<u8>>| Stored {
            ring: None,
            allocations,
        };
        assert_eq!(
            stored(Some(rec(PeerId(9)).encode())).owner(),
            Some(PeerId(9))
        );
        assert_eq!(
            stored(Some(rec(PeerId(4)).encode())).owner(),
            Some(PeerId(4))
        );
        assert_eq!(stored(None).owner(), None);
        assert_eq!(stored(Some(b"junk".to_vec())).owner(), None);
        assert_eq!(stored(Some(b"WFAL".to_vec())).owner(), None);
    }

    #[test]
    fn a_ring_record_keeps_its_titles_and_reads_both_ways_with_a_build_before_them() {
        use crate::ipam::range::AddrRange;
        use crate::ipam::ring::Ring;
        let range = AddrRange::parse("10.32.0.0/12").unwrap();
        let mut ring = Ring::genesis(range, "voters", &[PeerId(1), PeerId(2)].into());
        let (lo, hi) = ring.ranges_of(PeerId(1))[0];
        assert!(ring.donate(PeerId(1), lo + 8, hi, PeerId(3)));
        assert!(ring.require_titles());
        let me = PeerId(1);
        let rec = PersistedRing {
            format: RING_FORMAT,
            me,
            ring: ring.to_wire(),
            quarantined: vec![(1, 2)],
            titles: ring.titles_wire(),
            marks: ring.marks(),
        };
        let bytes = rec.encode();
        let back = PersistedRing::decode(&bytes, me).unwrap();
        assert!(!back.titles.is_empty());
        assert!(back.marks.titles_required);
        assert_eq!(back.quarantined, [(1, 2)]);
        let loaded = Ring::from_wire(back.ring).unwrap();
        let loaded = loaded.with_titles(Some(back.titles)).unwrap();
        assert_eq!(loaded.with_marks(back.marks), ring);
        // A record written before the marks (titles, nothing after): none.
        let marks_len = crate::wire::encode(&ring.marks()).unwrap().len();
        let before_marks = PersistedRing::decode(&bytes[..bytes.len() - marks_len], me).unwrap();
        assert_eq!(before_marks.marks, Marks::default());
        assert!(!before_marks.titles.is_empty());
        // Titles cut short are corrupt, not absent.
        assert!(matches!(
            PersistedRing::decode(&bytes[..bytes.len() - marks_len - 1], me),
            Err(StateError::Corrupt(_))
        ));
        // A record as a build before titles wrote it (the same fields,
        // none after), and such a build reading ours: it takes the ring
        // and ignores the titles, so a node can be rolled back.
        #[derive(Serialize, Deserialize)]
        struct BeforeTitles {
            format: u16,
            me: PeerId,
            ring: RingWire,
            quarantined: Vec<(u128, u128)>,
        }
        let old = encode_record(
            RING_MAGIC,
            &BeforeTitles {
                format: RING_FORMAT,
                me,
                ring: ring.to_wire(),
                quarantined: vec![(1, 2)],
            },
        );
        let back = PersistedRing::decode(&old, me).unwrap();
        assert_eq!((back.format, back.titles.len()), (RING_FORMAT, 0));
        assert_eq!(back.quarantined, [(1, 2)]);
        assert_eq!(
            Ring::from_wire(back.ring).unwrap().entries(),
            ring.entries()
        );
        let read_by_old: BeforeTitles = decode_record(RING_MAGIC, &bytes).unwrap();
        assert_eq!(read_by_old.format, RING_FORMAT);
        assert_eq!(
            Ring::from_wire(read_by_old.ring).unwrap().entries(),
            ring.entries()
        );
        assert!(matches!(
            PersistedRing::decode(&bytes, PeerId(2)),
            Err(StateError::OtherRouter { .. })
        ));
        let newer = PersistedRing {
            format: RING_FORMAT + 1,
            ..rec
        };
        assert!(matches!(
            PersistedRing::decode(&newer.encode(), me),
            Err(StateError::Format(3))
        ));
    }

    /// An allocation record as weft wrote it before pod names were
    /// appended (produced by that version: the node, a pod `c0ffee/eth0`
    /// at offset 5 and a kernel hold at 9, router 0x0123456789abcdef).
    const FORMAT_1_WITHOUT_PODS: &str =
        "5746414c01fdefcdab89674523010300010106633066666565046574683005020909";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn an_allocation_record_from_before_pod_names_still_loads_with_none() {
        let me = PeerId(0x0123_4567_89ab_cdef);
        let old = PersistedAllocations::decode(&unhex(FORMAT_1_WITHOUT_PODS), me).unwrap();
        assert_eq!(old.format, 1);
        assert_eq!(
            old.allocations,
            vec![
                (AllocKey::Node, 1),
                (AllocKey::pod("c0ffee", "eth0").unwrap(), 5),
                (AllocKey::Held(9), 9),
            ]
        );
        assert!(old.pods.is_empty());
    }

    #[test]
    fn pod_names_round_trip_and_an_older_reader_sees_the_old_fields() {
        let me = PeerId(0x0123_4567_89ab_cdef);
        let old = PersistedAllocations::decode(&unhex(FORMAT_1_WITHOUT_PODS), me).unwrap();
        let key = AllocKey::pod("c0ffee", "eth0").unwrap();
        let pod = PodName::new("default", "web-0", Some("0b6e-41")).unwrap();
        let new = PersistedAllocations {
            pods: vec![(key, pod)],
            ..old.clone()
        };
        let bytes = new.encode();
        let back = PersistedAllocations::decode(&bytes, me).unwrap();
        assert_eq!(back.pods, new.pods);
        assert_eq!(back.allocations, old.allocations);
        // What an older weft reads: the same head, the appended bytes ignored.
        let head: AllocationsHead = decode_record(ALLOC_MAGIC, &bytes).unwrap();
        assert_eq!((head.format, head.allocations), (1, old.allocations));
    }

    #[test]
    fn a_truncated_pod_list_is_corrupt_not_empty() {
        let me = PeerId(7);
        let rec = PersistedAllocations {
            format: STATE_FORMAT,
            me,
            allocations: vec![(AllocKey::pod("a", "eth0").unwrap(), 3)],
            pods: vec![(
                AllocKey::pod("a", "eth0").unwrap(),
                PodName::new("ns", "p", None).unwrap(),
            )],
        };
        let bytes = rec.encode();
        assert!(matches!(
            PersistedAllocations::decode(&bytes[..bytes.len() - 1], me),
            Err(StateError::Corrupt(_))
        ));
    }
}
