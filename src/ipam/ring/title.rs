//! Signed titles (issue 15, docs/ARCHITECTURE.md "Signed titles"): why the
//! writer of an entry held the address it gives away, in signatures, so
//! that a router that missed the history can tell an honest donation it
//! missed from a member giving *another* router's range to a third.
//!
//! A title travels with an entry whose owner is not its writer (a donation
//! or a leave; a reclaim carries its tombstone instead). It is a chain of
//! links, newest first: link 0 is the signed entry that governed the
//! address in the writer's ring when it wrote (same token, or the nearest
//! below for a split), and each further link is the title of the one
//! before, as the writer held it. The writer builds it from its own ring
//! ([`Ring::hand_over`]); the receiver judges it against its own ring
//! ([`Ring::title_proves`]) and, before that, checks every link's
//! signature with the entries' (`sigs.rs`). Bounded: at most
//! [`MAX_TITLE_LINKS`] links, as many as the version jump a receiver
//! accepts; a receiver that missed more refuses the jump as it did before
//! titles.

use super::{Entry, Ring};
use crate::id::PeerId;
use crate::ipam::signed::Signature;
use serde::{Deserialize, Serialize};

/// The most links a title carries; a longer chain is cut by its writer
/// and refused by a receiver. As many as the largest version jump a
/// receiver accepts over another router's range
/// ([`MAX_VERSION_JUMP`](super::MAX_VERSION_JUMP)): every hop raises the
/// version by one, so a title this long proves every jump the bound lets
/// through, and a router that missed more refuses the jump anyway. With 4
/// (the first cut), a router that missed five hands of one range refused
/// it for good once titles were required, since the entries in between
/// were overwritten everywhere (WEFT_SIM_SEED=1 step 4693, seed 11 step
/// 3325).
pub const MAX_TITLE_LINKS: usize = super::validate::MAX_VERSION_JUMP as usize;

/// One link of a title: an entry as its writer signed it (none for a
/// genesis entry, which the receiver recomputes from the founding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The token the entry was at.
    pub token: u128,
    /// The entry.
    pub entry: Entry,
    /// Its writer's signature.
    pub signature: Option<Signature>,
}

/// Why a title does not prove the writer's right to the address. The
/// entry that needed it is refused; nothing changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TitleError {
    /// A jump over another router's range came without a title.
    #[error("no title")]
    Missing,
    /// More than [`MAX_TITLE_LINKS`] links.
    #[error("a title longer than {MAX_TITLE_LINKS} links")]
    TooLong,
    /// A link's version is not below the one it entitles.
    #[error("title versions not descending")]
    NotDescending,
    /// A link's owner is not the writer of the entry it entitles.
    #[error("a title link owned by another router than the writer it entitles")]
    OwnerNotWriter,
    /// A link's token lies above the address.
    #[error("a title link above the address")]
    TokenAbove,
    /// This router holds a token between a link's token and the address
    /// (the range had been cut there), or a newer entry at the link's own
    /// token, that the chain does not account for.
    #[error("the title covers a cut at offset {0} it does not account for")]
    Cut(u128),
    /// The chain never reaches this router's view: no link is written by
    /// the router that owns the address here, at or above our version.
    #[error("the title does not reach this router's view")]
    Unconnected,
}

impl TitleError {
    /// The refusal counter's name.
    pub fn counter(&self) -> &'static str {
        match self {
            Self::Missing => "title_missing",
            Self::TooLong => "title_too_long",
            Self::NotDescending => "title_not_descending",
            Self::OwnerNotWriter => "title_owner_not_writer",
            Self::TokenAbove => "title_token_above",
            Self::Cut(_) => "title_cut",
            Self::Unconnected => "title_unconnected",
        }
    }
}

impl Ring {
    /// The title of the entry `token` this ring holds, if any.
    pub fn title(&self, token: u128) -> Option<&[Link]> {
        self.titles.get(&token).map(Vec::as_slice)
    }

    /// Every title this ring holds, by token.
    pub fn titles(&self) -> &std::collections::BTreeMap<u128, Vec<Link>> {
        &self.titles
    }

    /// The title for an entry written at an address governed here by
    /// `gov` at `token`: that entry with its signature, then its own title,
    /// cut to [`MAX_TITLE_LINKS`].
    pub(super) fn title_from(&self, token: u128, gov: &Entry) -> Vec<Link> {
        let first = Link {
            token,
            entry: *gov,
            signature: self.sigs.entries.get(&token).copied(),
        };
        let mut chain = vec![first];
        if gov.version > 1
            && let Some(more) = self.titles.get(&token)
        {
            chain.extend(more.iter().copied());
        }
        chain.truncate(MAX_TITLE_LINKS);
        chain
    }

    /// Whether `title` proves, to this router (the receiver), that
    /// `entry.writer` held the address `token` when it wrote `entry`.
    /// Signatures were checked before (`sigs.rs`); this judges what they
    /// say. Per link: owned by the writer of the entry it entitles, at a
    /// lower version, at a token at or below the address, and no token we
    /// hold from the link's token up to the address that the chain does not
    /// account for (tokens are never removed: one in between means the
    /// range had been cut there). The walk ends at the first link written
    /// by the router that owns the address in our view, at or above the
    /// version we hold there.
    ///
    /// A link written by a router that `reclaimed` the owner (it holds a
    /// signed tombstone of it) ends the walk too: that is a reclaim this
    /// router would accept as a direct write.
    pub fn title_proves(
        &self,
        token: u128,
        entry: &Entry,
        title: Option<&[Link]>,
        reclaimed: &dyn Fn(PeerId, PeerId) -> bool,
    ) -> Result<(), TitleError> {
        let title = match title {
            None | Some([]) => return Err(TitleError::Missing),
            Some(t) if t.len() > MAX_TITLE_LINKS => return Err(TitleError::TooLong),
            Some(t) => t,
        };
        let Some((_, ours)) = self.governing(token) else {
            return Err(TitleError::Unconnected);
        };
        let in_chain = |t: u128, e: &Entry| title.iter().any(|l| l.token == t && l.entry == *e);
        let mut entitled = entry;
        for link in title {
            // A reclaim is entitled by the entry of the router its writer
            // holds a tombstone of.
            let by_reclaim = entitled.reclaim
                && entitled.owner == entitled.writer
                && reclaimed(link.entry.owner, entitled.writer);
            if link.entry.owner != entitled.writer && !by_reclaim {
                return Err(TitleError::OwnerNotWriter);
            }
            if link.entry.version >= entitled.version {
                return Err(TitleError::NotDescending);
            }
            if link.token > token {
                return Err(TitleError::TokenAbove);
            }
            for (t, mine) in self.entries.range(link.token..=token) {
                let older_here = *t == link.token && mine.rank() <= link.entry.rank();
                if !older_here && !in_chain(*t, mine) {
                    return Err(TitleError::Cut(*t));
                }
            }
            let w = link.entry.writer;
            if (w == ours.owner || reclaimed(ours.owner, w)) && link.entry.rank() >= ours.rank() {
                return Ok(());
            }
            entitled = &link.entry;
        }
        Err(TitleError::Unconnected)
    }
}
