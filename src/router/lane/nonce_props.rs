//! Property: whatever the control plane does — publish, omit a peer from a
//! snapshot, give two peers one short ID, rekey with a reused receiver
//! index, forget keys — no lane ever seals two datagrams with the same
//! (key, lane, counter) (issue 15, defect 2: a nonce is never reused).

#![allow(clippy::unwrap_used)]
use super::*;
use crate::router::packet::HEADER_LEN;
use crate::router::snapshot::{Link, Liveness, SendKeys};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

const PEERS: u8 = 3;
const LANES: u8 = 2;

#[derive(Clone, Debug)]
enum Op {
    /// A new keyset becomes the peer's current one; with `reuse_index` it
    /// carries the receiver index of the one before.
    Rekey { peer: u8, reuse_index: bool },
    /// The control plane drops the peer's older keysets (or all of them).
    Forget { peer: u8, all: bool },
    /// A new snapshot, maybe without one peer, maybe with peer 1 published
    /// under peer 0's short ID (a clash the publisher failed to refuse).
    Publish { omit: Option<u8>, clash: bool },
    /// `count` datagrams toward the peer's short ID on one lane.
    Send { peer: u8, lane: u8, count: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..PEERS, any::<bool>()).prop_map(|(peer, reuse_index)| Op::Rekey { peer, reuse_index }),
        (0..PEERS, any::<bool>()).prop_map(|(peer, all)| Op::Forget { peer, all }),
        (proptest::option::of(0..PEERS), any::<bool>())
            .prop_map(|(omit, clash)| Op::Publish { omit, clash }),
        (0..PEERS, 0..LANES, 1..5u8).prop_map(|(peer, lane, count)| Op::Send { peer, lane, count }),
    ]
}

/// The control plane's keys: per peer, oldest first, the last is current.
struct Control {
    keys: Vec<Vec<(u32, DataKey)>>,
    minted: u64,
    /// Which minted key a live identity is (identities of dead keys may be
    /// reused by new ones, so this is updated at every mint).
    number: HashMap<KeyId, u64>,
    next_index: u32,
}

impl Control {
    fn rekey(&mut self, peer: usize, reuse_index: bool) {
        self.minted += 1;
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&self.minted.to_le_bytes());
        let key = DataKey::from_bytes(bytes);
        self.number.insert(key.id(), self.minted);
        let index = match self.keys[peer].last() {
            Some((index, _)) if reuse_index => *index,
            _ => {
                self.next_index += 1;
                self.next_index
            }
        };
        self.keys[peer].push((index, key));
    }

    fn snapshot(&self, omit: Option<u8>, clash: bool, epoch: Instant) -> Snapshot {
        let mut table = Snapshot::new(ShortId(100), 1420);
        for peer in 0..PEERS {
            if omit == Some(peer) {
                continue;
            }
            let short = if clash && peer == 1 {
                ShortId(1)
            } else {
                ShortId(u16::from(peer) + 1)
            };
            let send = self.keys[usize::from(peer)]
                .last()
                .map(|(index, key)| SendKeys {
                    remote_index: *index,
                    key: key.clone(),
                });
            table.set_link(
                short,
                Link {
                    endpoint: Some("192.0.2.9:6783".parse().unwrap()),
                    send,
                    liveness: Arc::new(Liveness::new(epoch)),
                },
            );
            table.set_next_hop(short, short);
        }
        table
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn no_key_lane_and_counter_is_ever_sealed_twice(ops in proptest::collection::vec(op(), 1..120)) {
        let epoch = Instant::now();
        let mut control = Control {
            keys: vec![Vec::new(); usize::from(PEERS)],
            minted: 0,
            number: HashMap::new(),
            next_index: 0,
        };
        let mut lanes: Vec<Lane> = (0..LANES).map(|l| Lane::new(l, LANES)).collect();
        let mut table = Arc::new(control.snapshot(None, false, epoch));
        let mut sealed: HashSet<(u64, u8, u64)> = HashSet::new();
        let mut buf = vec![0u8; 128];
        for op in ops {
            match op {
                Op::Rekey { peer, reuse_index } => control.rekey(usize::from(peer), reuse_index),
                Op::Forget { peer, all } => {
                    let keys = &mut control.keys[usize::from(peer)];
                    let keep = if all { 0 } else { keys.len().min(1) };
                    keys.drain(..keys.len() - keep);
                }
                Op::Publish { omit, clash } => {
                    table = Arc::new(control.snapshot(omit, clash, epoch));
                    for lane in &mut lanes {
                        lane.handle_snapshot(&table);
                    }
                }
                Op::Send { peer, lane, count } => {
                    let route = Route { src: ShortId(100), dst: ShortId(u16::from(peer) + 1), hop_limit: 8 };
                    let lane = &mut lanes[usize::from(lane)];
                    let Ok(mut sealer) = lane.sealer(&table, route, usize::from(count)) else {
                        continue;
                    };
                    let number = control.number[&sealer.key.id()];
                    while let Some(len) = sealer.seal(&mut buf, 8) {
                        let header = DataHeader::parse(&buf[..len]).unwrap();
                        prop_assert!(
                            sealed.insert((number, header.lane, header.counter)),
                            "key {} lane {} counter {} sealed twice", number, header.lane, header.counter
                        );
                        prop_assert!(len > HEADER_LEN);
                    }
                }
            }
        }
    }
}
