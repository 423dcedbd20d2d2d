//! One TCP control connection as a tokio task: a thin driver around the
//! sans-IO [`ControlLink`](super::link) (the quinn `Connection` / driver
//! split). It reads from the socket into the link (at most what the link
//! allows: message 1 alone until it authenticates), writes what the link
//! queues (each write within `WRITE_TIMEOUT`), sleeps until the link's next
//! deadline, answers the message-1 replay question from the shared guard,
//! and forwards the link's events to the control task. Every protocol rule
//! lives in the link.
//!
//! The control task talks to it through `ConnectionEvent` (up) and
//! `ConnectionCommand` (down).

use super::link::{ControlLink, Established, LinkConfig, LinkError, LinkEvent, SessionIndices};
pub use super::link::{HANDSHAKE_TIMEOUT, HandshakeFailure, NewKeys};
use super::proto::{ControlMessage, Hello};
use crate::crypto::freshness::Msg1Guard;
use crate::crypto::identity::Identity;
use crate::crypto::rotation::Rotation;
use crate::crypto::secret::ClusterSecrets;
use crate::id::PeerId;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Time allowed for one write before the connection is considered stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A unique number per connection attempt in this process.
pub type ConnectionId = u64;

/// What every connection task needs, shared.
pub struct ConnectionContext {
    /// Our static identity: swapped by a live identity switch (issue 20),
    /// so a connection starting after it uses the new key (one whose
    /// handshake straddles it is closed before `Up`).
    pub identity: ArcSwap<Identity>,
    /// The cluster secrets (reloadable).
    pub secrets: Arc<ArcSwap<ClusterSecrets>>,
    /// The Noise prologue (binds the cluster range).
    pub prologue: Vec<u8>,
    /// Our hello; `session_index` is filled per handshake.
    pub hello: Hello,
    /// Allocator of 24-bit receiver indices, unique in this process.
    pub session_indices: AtomicU32,
    /// Where events go.
    pub events: mpsc::UnboundedSender<ConnectionEvent>,
    /// The message-1 replay guard shared by all inbound handshakes.
    pub msg1_guard: std::sync::Mutex<Msg1Guard>,
    /// Decoded messages waiting for the control task: over its bound,
    /// connections stop reading (`super::backlog`).
    pub backlog: super::backlog::Backlog,
}

impl ConnectionContext {
    /// A fresh receiver index (24 bits, never 0).
    pub fn next_session_index(&self) -> u32 {
        loop {
            let index = self.session_indices.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
            if index != 0 {
                return index;
            }
        }
    }
}

/// A connection whose first handshake completed.
#[derive(Debug)]
pub struct PeerUp {
    /// Which connection.
    pub id: ConnectionId,
    /// The peer's ID (from its static key).
    pub peer: PeerId,
    /// The peer's static public key.
    pub public_key: [u8; 32],
    /// What the peer said about itself.
    pub hello: Hello,
    /// The address the connection came from or went to.
    pub remote: SocketAddr,
    /// Whether we dialled.
    pub outbound: bool,
    /// The UDP keys.
    pub keys: NewKeys,
    /// How to talk back to the task.
    pub commands: mpsc::UnboundedSender<ConnectionCommand>,
    /// The router the connection runs through end to end, if relayed.
    pub relayed_via: Option<PeerId>,
}

/// Reported by a connection task to the control task.
#[derive(Debug)]
pub enum ConnectionEvent {
    /// The first handshake completed.
    Up(PeerUp),
    /// A rekey handshake completed.
    Rekeyed {
        /// Which connection.
        id: ConnectionId,
        /// The new UDP keys.
        keys: NewKeys,
    },
    /// A control message for the control task.
    Message {
        /// Which connection.
        id: ConnectionId,
        /// The message.
        message: ControlMessage,
    },
    /// A handshake did not complete.
    HandshakeFailed {
        /// Which connection.
        id: ConnectionId,
        /// The remote address.
        remote: SocketAddr,
        /// Whether we dialled.
        outbound: bool,
        /// Why.
        reason: HandshakeFailure,
    },
    /// Stream bytes of a relayed connection, for the control task to send
    /// through its relay (`super::relayed`).
    RelayOut {
        /// Which connection.
        id: ConnectionId,
        /// The next bytes of its stream.
        bytes: Vec<u8>,
    },
    /// The peer switched its static key on this live connection (issue
    /// 20), reported before the rekey's `Rekeyed`: the registry moves its
    /// record from `old` to `new` in place.
    PeerRotated {
        /// Which connection.
        id: ConnectionId,
        /// The ID the connection knew the peer by.
        old: PeerId,
        /// Its ID from now on.
        new: PeerId,
        /// The verified announcement its rekey carried.
        rotation: Rotation,
    },
    /// Our own switch (`ConnectionCommand::SwitchIdentity`) completed on
    /// this connection: the peer knows us by the new key (before the
    /// rekey's `Rekeyed`).
    IdentitySwitched {
        /// Which connection.
        id: ConnectionId,
    },
    /// The connection ended (after `Up`).
    Down {
        /// Which connection.
        id: ConnectionId,
        /// Why, for the log.
        reason: String,
    },
}

/// Commands from the control task.
#[derive(Debug)]
pub enum ConnectionCommand {
    /// Seal and send a control message.
    Send(ControlMessage),
    /// Start a rekey handshake as initiator.
    Rekey,
    /// Send `Close` and end the connection.
    Close(String),
    /// Move the link to our successor key live (issue 20): a rekey under
    /// `identity` carrying `rotation` starts; a peer too old to follow gets
    /// `Close` and the connection ends (re-dialled under the new key).
    SwitchIdentity {
        /// The new static identity.
        identity: Arc<Identity>,
        /// The announcement moving our current key to it.
        rotation: Box<Rotation>,
    },
}

/// Dials `remote` and runs the connection until it ends.
pub async fn run_outbound(context: Arc<ConnectionContext>, id: ConnectionId, remote: SocketAddr) {
    let stream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(remote)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return fail(
                    &context,
                    id,
                    remote,
                    true,
                    HandshakeFailure::Unreachable(e.to_string()),
                );
            }
            Err(_) => {
                return fail(
                    &context,
                    id,
                    remote,
                    true,
                    HandshakeFailure::Unreachable("connect timed out".into()),
                );
            }
        };
    let _ = stream.set_nodelay(true);
    run(context, id, stream, remote, true, None).await;
}

/// Runs an accepted connection until it ends.
pub async fn run_inbound(
    context: Arc<ConnectionContext>,
    id: ConnectionId,
    stream: TcpStream,
    remote: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    run(context, id, stream, remote, false, None).await;
}

/// Runs a control connection end to end through the router `via` (issue
/// 16): the same link as over TCP, on one end of an in-memory stream whose
/// other end the control task pumps to and from relay messages.
pub async fn run_relayed(
    context: Arc<ConnectionContext>,
    id: ConnectionId,
    stream: tokio::io::DuplexStream,
    remote: SocketAddr,
    outbound: bool,
    via: PeerId,
) {
    run(context, id, stream, remote, outbound, Some(via)).await;
}

fn fail(
    context: &ConnectionContext,
    id: ConnectionId,
    remote: SocketAddr,
    outbound: bool,
    reason: HandshakeFailure,
) {
    let _ = context.events.send(ConnectionEvent::HandshakeFailed {
        id,
        remote,
        outbound,
        reason,
    });
}

/// Time since the Unix epoch, for message 1's timestamp and its check (zero
/// if the clock is before 1970, which the peer then refuses with a clear
/// reason).
fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The router-wide receiver indices, lent to each link.
struct ContextIndices(Arc<ConnectionContext>);

impl SessionIndices for ContextIndices {
    fn next_index(&mut self) -> u32 {
        self.0.next_session_index()
    }
}

/// The driver's state around one link.
struct Driver {
    context: Arc<ConnectionContext>,
    id: ConnectionId,
    remote: SocketAddr,
    outbound: bool,
    relayed_via: Option<PeerId>,
    link: ControlLink,
    /// The secrets the link holds, to notice a reload.
    secrets: Arc<ClusterSecrets>,
    /// Set once the link is up: the control task's commands.
    commands: Option<mpsc::UnboundedReceiver<ConnectionCommand>>,
}

/// What woke the driver.
enum Input {
    Read(std::io::Result<usize>),
    Command(Option<ConnectionCommand>),
    Deadline,
    /// A paused connection looks at the backlog again.
    Resume,
}

/// How the task ended, for the control task.
enum Ending {
    /// Before the link came up.
    HandshakeFailed(HandshakeFailure),
    /// After it came up.
    Down(String),
}

async fn run<S: AsyncRead + AsyncWrite + Send + 'static>(
    context: Arc<ConnectionContext>,
    id: ConnectionId,
    stream: S,
    remote: SocketAddr,
    outbound: bool,
    relayed_via: Option<PeerId>,
) {
    Driver::new(context, id, remote, outbound, relayed_via)
        .run(stream)
        .await;
}

impl Driver {
    /// The driver of a new link under the identity the context holds now.
    fn new(
        context: Arc<ConnectionContext>,
        id: ConnectionId,
        remote: SocketAddr,
        outbound: bool,
        relayed_via: Option<PeerId>,
    ) -> Self {
        let secrets = context.secrets.load_full();
        let config = LinkConfig {
            identity: (**context.identity.load()).clone(),
            secrets: (*secrets).clone(),
            prologue: context.prologue.clone(),
            hello: context.hello.clone(),
            seed: None,
        };
        let indices = Box::new(ContextIndices(context.clone()));
        let now = std::time::Instant::now();
        let link = if outbound {
            ControlLink::initiator(config, indices, now, wall_clock())
        } else {
            ControlLink::responder(config, indices, now)
        };
        Self {
            context,
            id,
            remote,
            outbound,
            relayed_via,
            link,
            secrets,
            commands: None,
        }
    }

    /// Serves the link on `stream` until it ends, then tells the control task.
    async fn run<S: AsyncRead + AsyncWrite>(mut self, stream: S) {
        let event = match self.serve(stream).await {
            Ending::HandshakeFailed(reason) => ConnectionEvent::HandshakeFailed {
                id: self.id,
                remote: self.remote,
                outbound: self.outbound,
                reason,
            },
            Ending::Down(reason) => ConnectionEvent::Down {
                id: self.id,
                reason,
            },
        };
        let _ = self.context.events.send(event);
    }
}

impl Driver {
    async fn serve<S: AsyncRead + AsyncWrite>(&mut self, stream: S) -> Ending {
        let (mut read, mut write) = tokio::io::split(stream);
        let mut buffer = vec![0u8; super::link::READ_CHUNK];
        loop {
            if let Some(ending) = self.pump(&mut write).await {
                return ending;
            }
            let limit = self.link.read_limit().min(buffer.len());
            let deadline = self.link.poll_timeout().map(|(at, _)| at);
            // The control task is behind: leave the socket unread for now.
            let paused = self.context.backlog.full();
            let input = tokio::select! {
                // `read` is cancel-safe: nothing is lost if another branch wins.
                read = read.read(&mut buffer[..limit]), if limit > 0 && !paused => Input::Read(read),
                () = tokio::time::sleep(super::backlog::PAUSE), if paused => Input::Resume,
                command = recv(&mut self.commands), if self.commands.is_some() => {
                    Input::Command(command)
                }
                () = sleep_until(deadline), if deadline.is_some() => Input::Deadline,
            };
            let now = std::time::Instant::now();
            match input {
                Input::Read(Ok(0)) => self.link.abort(LinkError::PeerHungUp),
                Input::Read(Ok(n)) => {
                    self.refresh_secrets();
                    self.link.handle_bytes(now, &buffer[..n]);
                }
                Input::Read(Err(e)) => self.link.abort(LinkError::Io(e)),
                Input::Command(Some(ConnectionCommand::Send(message))) => {
                    // Refused only before `Up`, when no command can exist yet.
                    let _ = self.link.send(&message);
                }
                Input::Command(Some(ConnectionCommand::Rekey)) => {
                    self.refresh_secrets();
                    let _ = self.link.rekey(now, wall_clock());
                }
                Input::Command(Some(ConnectionCommand::Close(reason))) => self.link.close(&reason),
                Input::Command(Some(ConnectionCommand::SwitchIdentity { identity, rotation })) => {
                    self.switch_identity(now, &identity, *rotation);
                }
                Input::Command(None) => return Ending::Down("control task gone".into()),
                Input::Deadline => self.link.handle_timeout(now),
                Input::Resume => {}
            }
        }
    }

    /// Writes what the link queued and forwards its events, until both are
    /// drained; returns how the connection ended, if it did.
    async fn pump<W: AsyncWrite + Unpin>(&mut self, write: &mut W) -> Option<Ending> {
        loop {
            while let Some(bytes) = self.link.poll_transmit() {
                let error = match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&bytes)).await
                {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => LinkError::Io(e),
                    Err(_) => LinkError::WriteTimeout,
                };
                self.link.abort(error);
                // Nothing more goes out of a dead connection.
                while self.link.poll_transmit().is_some() {}
            }
            let event = self.link.poll_event()?;
            if let Some(ending) = self.handle_event(event) {
                return Some(ending);
            }
        }
    }

    fn handle_event(&mut self, event: LinkEvent) -> Option<Ending> {
        let up = self.commands.is_some();
        match event {
            LinkEvent::Msg1Authenticated { stamp } => {
                // Before any DH work: a replayed message 1 costs one lookup.
                let verdict = self
                    .context
                    .msg1_guard
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .admit(&stamp, wall_clock());
                self.link.admit_msg1(std::time::Instant::now(), verdict);
            }
            LinkEvent::Up(_) if self.context.identity.load().id() != self.link.me() => {
                // Our key was switched while this handshake ran under the
                // old one: the control task has moved on to the new ID and
                // would send this link no switch. Closed before `Up`; the
                // dialler re-dials under the new key.
                self.link
                    .close("identity key switched during the handshake; re-dial");
            }
            LinkEvent::Up(established) => {
                let (commands_tx, commands) = mpsc::unbounded_channel();
                self.commands = Some(commands);
                let Established {
                    peer,
                    public_key,
                    hello,
                    keys,
                } = established;
                let _ = self.context.events.send(ConnectionEvent::Up(PeerUp {
                    id: self.id,
                    peer,
                    public_key,
                    hello,
                    remote: self.remote,
                    outbound: self.outbound,
                    keys,
                    commands: commands_tx,
                    relayed_via: self.relayed_via,
                }));
            }
            LinkEvent::Rekeyed(keys) => {
                let _ = self
                    .context
                    .events
                    .send(ConnectionEvent::Rekeyed { id: self.id, keys });
            }
            LinkEvent::PeerRotated { old, new, rotation } => {
                let _ = self.context.events.send(ConnectionEvent::PeerRotated {
                    id: self.id,
                    old,
                    new,
                    rotation,
                });
            }
            LinkEvent::IdentitySwitched => {
                tracing::debug!(
                    connection = self.id,
                    "our identity switch completed on this connection"
                );
                let _ = self
                    .context
                    .events
                    .send(ConnectionEvent::IdentitySwitched { id: self.id });
            }
            LinkEvent::Message(message) => {
                self.context.backlog.add(&message);
                let _ = self.context.events.send(ConnectionEvent::Message {
                    id: self.id,
                    message,
                });
            }
            LinkEvent::Closed(reason) => {
                return Some(if up {
                    Ending::Down(reason.to_string())
                } else {
                    Ending::HandshakeFailed(HandshakeFailure::Protocol(reason.to_string()))
                });
            }
            LinkEvent::Failed(error) => {
                return Some(if up {
                    Ending::Down(error.to_string())
                } else {
                    Ending::HandshakeFailed(error.handshake_failure())
                });
            }
        }
        None
    }

    /// Starts the link's live switch to `identity`. A refusal (an earlier
    /// switch incomplete, an announcement for another key) would leave the
    /// link on a key the control task no longer names: it is closed, to be
    /// re-dialled under the new key.
    fn switch_identity(
        &mut self,
        now: std::time::Instant,
        identity: &Identity,
        rotation: Rotation,
    ) {
        self.refresh_secrets();
        match self
            .link
            .switch_identity(now, wall_clock(), identity.clone(), rotation)
        {
            Ok(outcome) => {
                tracing::debug!(connection = self.id, ?outcome, "identity switch started");
            }
            Err(e) => {
                tracing::warn!(connection = self.id, error = %e, "identity switch refused on this connection; closing it to be re-dialled");
                self.link
                    .close("identity key switched; re-dial under the new key");
            }
        }
    }

    /// Hands the link the reloaded secrets, if the file changed.
    fn refresh_secrets(&mut self) {
        let current = self.context.secrets.load();
        if !Arc::ptr_eq(&current, &self.secrets) {
            self.secrets = Arc::clone(&current);
            self.link.set_secrets((**current).clone());
        }
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn recv(
    commands: &mut Option<mpsc::UnboundedReceiver<ConnectionCommand>>,
) -> Option<ConnectionCommand> {
    match commands {
        Some(commands) => commands.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
