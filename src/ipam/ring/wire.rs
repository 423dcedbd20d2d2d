//! The ring's wire and disk form (bincode via `crate::wire`), checked on
//! the way in: sorted, starting at the range start, versions non-zero and
//! under the ceiling, the founding hashing to the genesis ID. Each item
//! travels with its writer's signature (none for genesis entries); whether those verify is the allocator's check
//! (`sigs.rs`), which needs the writers' keys.

use super::title::{Link, MAX_TITLE_LINKS};
use super::{Entry, Founding, GenesisId, MAX_VERSION, PeerRecord, Ring, RingError, Sigs};
use crate::id::PeerId;
use crate::ipam::range::AddrRange;
use crate::ipam::signed::Signature;
use serde::{Deserialize, Serialize};

/// The wire and disk form of a ring (bincode via `crate::wire`; append
/// fields only). Ring wire version 3: signed items and the founding.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RingWire {
    /// The cluster range.
    pub range: AddrRange,
    /// Which initialisation this ring descends from.
    pub genesis: GenesisId,
    /// The genesis split's mode and owners.
    pub founding: Founding,
    /// `(token, entry, writer's signature)`, strictly ascending by token,
    /// starting at 0.
    pub entries: Vec<(u128, Entry, Option<Signature>)>,
    /// `(dead, reclaimer, reclaimer's signature)`, strictly ascending.
    pub tombstones: Vec<(PeerId, PeerId, Option<Signature>)>,
    /// Free-space records with their router's signature, strictly
    /// ascending by peer.
    pub peers: Vec<(PeerId, PeerRecord, Option<Signature>)>,
}

impl Ring {
    /// The wire form.
    pub fn to_wire(&self) -> RingWire {
        let sig = |s: Option<&Signature>| s.copied();
        RingWire {
            range: self.range,
            genesis: self.genesis,
            founding: self.founding.clone(),
            entries: self
                .entries
                .iter()
                .map(|(t, e)| (*t, *e, sig(self.sigs.entries.get(t))))
                .collect(),
            tombstones: self
                .tombstones
                .iter()
                .map(|t| (t.0, t.1, sig(self.sigs.tombstones.get(t))))
                .collect(),
            peers: self
                .peers
                .iter()
                .map(|(p, r)| (*p, *r, sig(self.sigs.records.get(p))))
                .collect(),
        }
    }

    /// Builds a ring from its wire form, checking order, invariants and the
    /// founding (signatures are checked against keys by the allocator).
    pub fn from_wire(wire: RingWire) -> Result<Self, RingError> {
        fn ascending<K: Ord + Copy>(keys: &[K], at: impl Fn(&K) -> u128) -> Result<(), RingError> {
            for pair in keys.windows(2) {
                if pair[0] >= pair[1] {
                    return Err(RingError::NotSorted(at(&pair[1])));
                }
            }
            Ok(())
        }
        let tokens: Vec<u128> = wire.entries.iter().map(|e| e.0).collect();
        ascending(&tokens, |t| *t)?;
        let peers: Vec<PeerId> = wire.peers.iter().map(|p| p.0).collect();
        ascending(&peers, |p| u128::from(p.0))?;
        let tombs: Vec<(PeerId, PeerId)> = wire.tombstones.iter().map(|t| (t.0, t.1)).collect();
        ascending(&tombs, |t| u128::from(t.0.0))?;
        ascending(&wire.founding.owners, |p| u128::from(p.0))?;
        let owners = wire.founding.owners.iter().copied().collect();
        if !matches!(wire.founding.mode.as_str(), "voters" | "seed")
            || GenesisId::derive(&wire.range, &wire.founding.mode, &owners) != wire.genesis
        {
            return Err(RingError::BadFounding);
        }
        let mut sigs = Sigs::default();
        for (token, _, s) in &wire.entries {
            if let Some(s) = s {
                sigs.entries.insert(*token, *s);
            }
        }
        for (dead, by, s) in &wire.tombstones {
            if let Some(s) = s {
                sigs.tombstones.insert((*dead, *by), *s);
            }
        }
        for (peer, _, s) in &wire.peers {
            if let Some(s) = s {
                sigs.records.insert(*peer, *s);
            }
        }
        let ring = Self {
            range: wire.range,
            genesis: wire.genesis,
            founding: wire.founding,
            entries: wire.entries.into_iter().map(|(t, e, _)| (t, e)).collect(),
            tombstones: tombs.into_iter().collect(),
            peers: wire.peers.into_iter().map(|(p, r, _)| (p, r)).collect(),
            sigs,
            titles: Default::default(),
            untitled: false,
            titles_required: false,
        };
        ring.check_invariants()?;
        Ok(ring)
    }
}

/// The titles that follow a ring in ring wire version 6: `(token, links)`,
/// strictly ascending by token, each token one of the ring's, each title
/// 1 to [`MAX_TITLE_LINKS`] links (`title.rs`). Appended after the
/// [`RingWire`] so that older decoders, which ignore trailing bytes, read
/// the ring as before.
pub type TitlesWire = Vec<(u128, Vec<Link>)>;

impl Ring {
    /// The titles' wire form.
    pub fn titles_wire(&self) -> TitlesWire {
        self.titles
            .iter()
            .map(|(t, links)| (*t, links.clone()))
            .collect()
    }

    /// This ring with the titles a version-6 sender sent (`Some`), checked
    /// for shape, or marked as from a sender that sends none (`None`).
    pub fn with_titles(mut self, titles: Option<TitlesWire>) -> Result<Self, RingError> {
        let Some(titles) = titles else {
            self.titles.clear();
            self.untitled = true;
            return Ok(self);
        };
        let mut last = None;
        for (token, links) in &titles {
            if last.is_some_and(|l| l >= *token) || !self.entries.contains_key(token) {
                return Err(RingError::NotSorted(*token));
            }
            last = Some(*token);
            if links.is_empty() || links.len() > MAX_TITLE_LINKS {
                return Err(RingError::BadTitle(*token));
            }
            for link in links {
                let v = link.entry.version;
                if link.token >= self.range.size() || v == 0 || v > MAX_VERSION {
                    return Err(RingError::BadTitle(*token));
                }
            }
        }
        self.titles = titles.into_iter().collect();
        self.untitled = false;
        Ok(self)
    }

    /// True if this ring came from a sender that sends no titles.
    pub fn untitled(&self) -> bool {
        self.untitled
    }

    /// This ring as a sender below ring version 6 sends it: no titles.
    pub fn without_titles(mut self) -> Self {
        self.titles.clear();
        self.untitled = true;
        self
    }

    /// True once the cluster requires titles of every member
    /// (`allocator/titles_latch.rs`).
    pub fn titles_required(&self) -> bool {
        self.titles_required
    }

    /// Requires titles of every member from now on; nothing clears it.
    /// Returns true if it was not required before.
    pub fn require_titles(&mut self) -> bool {
        !std::mem::replace(&mut self.titles_required, true)
    }

    /// This ring with the latch as its sender sent it (`Marks`).
    pub fn with_marks(mut self, marks: Marks) -> Self {
        self.titles_required = marks.titles_required;
        self
    }

    /// The marks that follow this ring's titles.
    pub fn marks(&self) -> Marks {
        Marks {
            titles_required: self.titles_required,
        }
    }
}

/// What follows a ring's titles on the wire and on disk (appended after
/// [`TitlesWire`], so that a decoder from before it, which ignores
/// trailing bytes, reads the ring and titles as before; absent, all
/// false). Append fields only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    /// [`Ring::titles_required`].
    pub titles_required: bool,
}

/// Reads what follows a ring's body, a delta's, or the ring record's
/// fields (ring version 6): the titles, then the [`Marks`]. Nothing at all
/// is `None` (a sender or record from before titles); titles with nothing
/// after them carry default marks (a build before the latch).
pub fn decode_titles_and_marks(
    rest: &[u8],
) -> Result<Option<(TitlesWire, Marks)>, crate::wire::DecodeError> {
    if rest.is_empty() {
        return Ok(None);
    }
    let (titles, read) = crate::wire::decode_prefix::<TitlesWire>(rest)?;
    let marks = match rest.get(read..).unwrap_or_default() {
        [] => Marks::default(),
        marks => crate::wire::decode(marks)?,
    };
    Ok(Some((titles, marks)))
}
