//! Two connection tasks over an in-memory stream: the live identity switch
//! (issue 20) as the control task sees it, in events and commands.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::control::proto::ControlMessage;
use crate::sim::link::{keysets_match, link_config};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::timeout;

const SECRET: &[u8] = b"the cluster secret of these tests, 32+ bytes";
const REMOTE: ([u8; 4], u16) = ([192, 0, 2, 9], 6783);
/// Far longer than anything here takes; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(20);

/// One side: its context (identity `seed`) and the events it reports.
struct Side {
    context: Arc<ConnectionContext>,
    events: mpsc::UnboundedReceiver<ConnectionEvent>,
}

fn side(seed: u64) -> Side {
    let config = link_config(seed, SECRET);
    let (events_tx, events) = mpsc::unbounded_channel();
    let context = Arc::new(ConnectionContext {
        identity: ArcSwap::from_pointee(config.identity),
        secrets: Arc::new(ArcSwap::from_pointee(config.secrets)),
        prologue: config.prologue,
        hello: config.hello,
        session_indices: AtomicU32::new(u32::try_from(seed).unwrap() << 16),
        events: events_tx,
        msg1_guard: std::sync::Mutex::new(Msg1Guard::new()),
        backlog: Default::default(),
    });
    Side { context, events }
}

impl Side {
    fn driver(&self, outbound: bool) -> Driver {
        Driver::new(
            self.context.clone(),
            u64::from(outbound),
            REMOTE.into(),
            outbound,
            None,
        )
    }

    async fn next(&mut self) -> ConnectionEvent {
        let event = timeout(PATIENCE, self.events.recv())
            .await
            .unwrap()
            .unwrap();
        if let ConnectionEvent::Message { message, .. } = &event {
            self.context.backlog.done(message);
        }
        event
    }

    async fn up(&mut self) -> PeerUp {
        match self.next().await {
            ConnectionEvent::Up(up) => up,
            other => panic!("not up: {other:?}"),
        }
    }
}

/// A dials B over an in-memory stream; both up.
async fn linked(a: &mut Side, b: &mut Side) -> (PeerUp, PeerUp) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(a.driver(true).run(ours));
    tokio::spawn(b.driver(false).run(theirs));
    (a.up().await, b.up().await)
}

fn gossip(byte: u8) -> ControlMessage {
    ControlMessage::Gossip {
        channel: 1,
        payload: vec![byte; 3000],
    }
}

/// A successor for side 1 (A) whose ID leads side 2's (B) or not: the
/// lower-ID rule may flip at the switch.
fn successor(leads: bool) -> Identity {
    let b = link_config(2, SECRET).identity.id();
    (100..)
        .map(|seed| Identity::generate(&mut StdRng::seed_from_u64(seed)))
        .find(|new| new.id().leads(b) == leads)
        .unwrap()
}

/// The next keys `side` reports, after the rekeys it completes first
/// (`skip`, at most `allowed` of them) until `stop` matches.
async fn keys_after(
    side: &mut Side,
    allowed: usize,
    stop: impl Fn(&ConnectionEvent) -> bool,
) -> (NewKeys, ConnectionEvent) {
    let mut skipped = 0;
    let found = loop {
        match side.next().await {
            event if stop(&event) => break event,
            ConnectionEvent::Rekeyed { .. } if skipped < allowed => skipped += 1,
            other => panic!("unexpected before the switch completed: {other:?}"),
        }
    };
    match side.next().await {
        ConnectionEvent::Rekeyed { keys, .. } => (keys, found),
        other => panic!("no rekey after the switch: {other:?}"),
    }
}

/// A switches its key live; `peer_rekeys`: B starts a rekey under the old
/// key at the same moment.
async fn switch_case(leads: bool, peer_rekeys: bool) {
    let (mut a, mut b) = (side(1), side(2));
    let (a_up, b_up) = linked(&mut a, &mut b).await;
    let old = a.context.identity.load_full();
    assert_eq!(b_up.peer, old.id());
    let new = successor(leads);
    let rotation = Rotation::sign(&old, &new, 1_800_000_000);
    if peer_rekeys {
        b_up.commands.send(ConnectionCommand::Rekey).unwrap();
    }
    a.context.identity.store(Arc::new(new.clone()));
    a_up.commands
        .send(ConnectionCommand::SwitchIdentity {
            identity: Arc::new(new.clone()),
            rotation: Box::new(rotation),
        })
        .unwrap();

    // A rekey under the old key in flight at the switch completes first
    // (the link waits for it, or answers it under the old key): its
    // `Rekeyed` may come before the switch's events, on both sides.
    let allowed = usize::from(peer_rekeys);
    // The rotating side: its switch completed, then the rekey's keys.
    let (a_keys, _) = keys_after(&mut a, allowed, |e| {
        matches!(e, ConnectionEvent::IdentitySwitched { id: 1 })
    })
    .await;
    // The peer: the move first (for the registry), then the keys.
    let (b_keys, moved) = keys_after(&mut b, allowed, |e| {
        matches!(e, ConnectionEvent::PeerRotated { .. })
    })
    .await;
    let ConnectionEvent::PeerRotated {
        id,
        old: from,
        new: to,
        rotation: carried,
    } = moved
    else {
        unreachable!()
    };
    assert_eq!((id, from, to), (0, old.id(), new.id()));
    assert_eq!(carried, rotation);
    assert!(keysets_match(&a_keys, &b_keys));

    // The same connection carries messages both ways, fragmented ones too.
    for byte in 0..3 {
        a_up.commands
            .send(ConnectionCommand::Send(gossip(byte)))
            .unwrap();
        b_up.commands
            .send(ConnectionCommand::Send(gossip(byte + 10)))
            .unwrap();
    }
    for byte in 0..3 {
        assert!(
            matches!(b.next().await, ConnectionEvent::Message { message, .. } if message == gossip(byte))
        );
        assert!(
            matches!(a.next().await, ConnectionEvent::Message { message, .. } if message == gossip(byte + 10))
        );
    }
    // And rekeys from either side after it, under the new key.
    for commands in [&a_up.commands, &b_up.commands] {
        commands.send(ConnectionCommand::Rekey).unwrap();
        let ConnectionEvent::Rekeyed { keys: a_keys, .. } = a.next().await else {
            panic!("A: no rekey");
        };
        let ConnectionEvent::Rekeyed { keys: b_keys, .. } = b.next().await else {
            panic!("B: no rekey");
        };
        assert!(keysets_match(&a_keys, &b_keys));
    }
}

#[tokio::test]
async fn a_switch_moves_the_peer_live_and_messages_keep_flowing() {
    for leads in [false, true] {
        switch_case(leads, false).await;
    }
}

#[tokio::test]
async fn a_switch_as_the_peer_rekeys_under_the_old_key_follows_that_rekey() {
    for leads in [false, true] {
        switch_case(leads, true).await;
    }
}

#[tokio::test]
async fn a_handshake_that_straddles_the_switch_is_closed_before_up() {
    let (mut a, mut b) = (side(1), side(2));
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    // B's link is made under its old key, then the key is switched.
    let b_driver = b.driver(false);
    b.context.identity.store(Arc::new(successor(true)));
    tokio::spawn(b_driver.run(theirs));
    tokio::spawn(a.driver(true).run(ours));
    match b.next().await {
        ConnectionEvent::HandshakeFailed {
            reason: HandshakeFailure::Protocol(why),
            ..
        } => assert!(why.contains("identity key switched"), "{why}"),
        other => panic!("B: not refused before up: {other:?}"),
    }
    // A may have seen its side complete; the link then ends at once.
    match a.next().await {
        ConnectionEvent::Up(_) => {
            assert!(matches!(a.next().await, ConnectionEvent::Down { .. }));
        }
        ConnectionEvent::HandshakeFailed { .. } => {}
        other => panic!("A: {other:?}"),
    }
}

#[tokio::test]
async fn a_switch_the_link_refuses_closes_the_connection_to_be_redialled() {
    let (mut a, mut b) = (side(1), side(2));
    let (a_up, _b_up) = linked(&mut a, &mut b).await;
    let new = successor(true);
    // An announcement for another key than the link's.
    let stranger = link_config(3, SECRET).identity;
    let rotation = Rotation::sign(&stranger, &new, 1_800_000_000);
    a_up.commands
        .send(ConnectionCommand::SwitchIdentity {
            identity: Arc::new(new),
            rotation: Box::new(rotation),
        })
        .unwrap();
    assert!(matches!(
        a.next().await,
        ConnectionEvent::Down { id: 1, .. }
    ));
    match b.next().await {
        ConnectionEvent::Down { id: 0, reason } => {
            assert!(reason.contains("identity key switched"), "{reason}");
        }
        other => panic!("B: {other:?}"),
    }
}
