//! Which of a peer's advertised endpoints to probe, and in what order
//! (DESIGN.md "Endpoints, NAT and paths": private first where the sites
//! match, then public).

use super::MAX_CANDIDATES;
use crate::gossip::connection_maker::common_prefix;
use std::net::SocketAddr;

/// The longest prefix `candidate` shares with one of `mine` (0 across
/// families).
fn likeness(mine: &[SocketAddr], candidate: SocketAddr) -> u32 {
    mine.iter()
        .filter_map(|m| common_prefix(m.ip(), candidate.ip()))
        .max()
        .unwrap_or(0)
}

/// `theirs`, deduplicated, at most [`MAX_CANDIDATES`], the most alike to one
/// of `mine` first (the longest common prefix: a private address of my own
/// site before public ones), in their advertised order otherwise.
pub fn order(mine: &[SocketAddr], theirs: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for c in theirs {
        if !out.contains(c) {
            out.push(*c);
        }
    }
    out.sort_by_key(|c| std::cmp::Reverse(likeness(mine, *c)));
    out.truncate(MAX_CANDIDATES);
    out
}

/// What to probe of a peer whose advertised list is `theirs`, from a router
/// with endpoints `mine`, ordered by [`order`]; empty when the peer has no
/// public endpoint.
///
/// The first advertised address is the peer's listen address (listen, then
/// the operator's, then the observed ones; ARCHITECTURE.md "Endpoints, NAT
/// and paths"); the others are public by construction. A router that
/// listens on a public address is dialled, not punched, and one of my own
/// site is reached at its listen address by TCP, so a peer that advertises
/// only its listen address has no NAT mapping anyone believed: a symmetric
/// NAT (a port per destination, never believed) or none observed yet. Its
/// listen address is still probed, first, when it looks at least as much
/// like my site as any of its public ones, or when it is behind my own
/// gateway (two routers of one site that found no direct TCP path).
pub fn usable(mine: &[SocketAddr], theirs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some((listen, public)) = theirs.split_first() else {
        return Vec::new();
    };
    if public.is_empty() {
        return Vec::new();
    }
    let best_public = public.iter().map(|c| likeness(mine, *c)).max();
    // Behind my own gateway (one of my public addresses, another port) is
    // my site, and a gateway without hairpin only lets the private address
    // work: it goes first. A tie counts for the listen address too: 1:1
    // NAT gives a site's routers neighbouring public addresses (issue 16's
    // NAT simulation).
    let my_gateway = public
        .iter()
        .any(|p| mine.iter().skip(1).any(|m| m.ip() == p.ip()));
    let mut all = Vec::with_capacity(theirs.len());
    if my_gateway || Some(likeness(mine, *listen)) >= best_public {
        all.push(*listen);
    }
    all.extend_from_slice(public);
    let mut ordered = order(mine, &all);
    if my_gateway && let Some(i) = ordered.iter().position(|c| c == listen) {
        ordered[..=i].rotate_right(1);
    }
    ordered
}
