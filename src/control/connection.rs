//! One TCP control connection, as a tokio task: the Noise handshake (DESIGN.md
//! "Keys and sessions"), then sealed records both ways, rekey handshakes on
//! the live connection, and the switch of the TCP keys after each rekey.
//!
//! The task owns the Noise state and the record ciphers; the control task
//! owns everything else. They talk through `ConnectionEvent` (up) and
//! `ConnectionCommand` (down).

use super::proto::{self, ControlMessage, Hello, MAX_HANDSHAKE_MESSAGE, MAX_RECORD, RekeyHello};
use crate::crypto::data::DataKey;
use crate::crypto::frame::{FrameOpener, FrameSealer};
use crate::crypto::freshness::{Msg1Guard, Msg1Refused};
use crate::crypto::handshake::{Handshake, MSG1_LEN, SessionKeys};
use crate::crypto::identity::Identity;
use crate::crypto::secret::ClusterSecrets;
use crate::id::PeerId;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// Time allowed for a whole handshake (DESIGN.md: 10 s to finish).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one write before the connection is considered stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A unique number per connection attempt in this process.
pub type ConnectionId = u64;

/// What every connection task needs, shared.
pub struct ConnectionContext {
    /// Our static identity.
    pub identity: Arc<Identity>,
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

/// UDP keys from one handshake, with the indices that name them.
#[derive(Debug)]
pub struct NewKeys {
    /// Our receiver index for this keyset.
    pub local_index: u32,
    /// The peer's receiver index for it.
    pub remote_index: u32,
    /// Our UDP send key.
    pub send: DataKey,
    /// Our UDP receive key.
    pub recv: DataKey,
    /// Whether we were the handshake's initiator.
    pub initiator: bool,
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
    /// The connection ended (after `Up`).
    Down {
        /// Which connection.
        id: ConnectionId,
        /// Why, for the log.
        reason: String,
    },
}

/// Why a handshake failed, as counted in status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Could not connect at all.
    Unreachable(String),
    /// The peer does not hold our cluster secret (or we not theirs).
    Refused,
    /// Malformed or truncated messages, or a timeout.
    Protocol(String),
    /// We dialled ourselves.
    SelfConnection,
    /// The peer speaks no common version on some channel, or another range.
    Incompatible(String),
    /// An authenticated message 1 we admitted before: a replay.
    Replayed,
    /// An authenticated message 1 timestamped too far from our clock: an old
    /// replay, or a peer whose clock is off (the text says how far).
    ClockSkew(String),
}

impl HandshakeFailure {
    /// The label in status and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Refused => "refused",
            Self::Protocol(_) => "protocol",
            Self::SelfConnection => "self",
            Self::Incompatible(_) => "incompatible",
            Self::Replayed => "replayed",
            Self::ClockSkew(_) => "clock_skew",
        }
    }
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
    run(context, id, stream, remote, true).await;
}

/// Runs an accepted connection until it ends.
pub async fn run_inbound(
    context: Arc<ConnectionContext>,
    id: ConnectionId,
    stream: TcpStream,
    remote: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    run(context, id, stream, remote, false).await;
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

struct Established {
    keys: SessionKeys,
    public_key: [u8; 32],
    hello: Hello,
    local_index: u32,
}

async fn run(
    context: Arc<ConnectionContext>,
    id: ConnectionId,
    mut stream: TcpStream,
    remote: SocketAddr,
    outbound: bool,
) {
    let handshake = if outbound {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, initiate(&context, &mut stream)).await
    } else {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, respond(&context, &mut stream)).await
    };
    let established = match handshake {
        Ok(Ok(established)) => established,
        Ok(Err(reason)) => return fail(&context, id, remote, outbound, reason),
        Err(_) => {
            return fail(
                &context,
                id,
                remote,
                outbound,
                HandshakeFailure::Protocol("handshake timed out".into()),
            );
        }
    };
    if established.public_key == context.identity.public_key() {
        return fail(
            &context,
            id,
            remote,
            outbound,
            HandshakeFailure::SelfConnection,
        );
    }
    if let Some(channel) = context
        .hello
        .versions
        .incompatible_channel(&established.hello.versions)
    {
        let reason = format!(
            "no common {channel} version with {}",
            established.hello.name
        );
        return fail(
            &context,
            id,
            remote,
            outbound,
            HandshakeFailure::Incompatible(reason),
        );
    }
    let peer = PeerId::from_public_key(&established.public_key);
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let Established {
        keys,
        public_key,
        hello,
        local_index,
    } = established;
    let SessionKeys {
        tcp_send,
        tcp_recv,
        udp_send,
        udp_recv,
    } = keys;
    let new_keys = NewKeys {
        local_index,
        remote_index: hello.session_index,
        send: udp_send,
        recv: udp_recv,
        initiator: outbound,
    };
    let public_key_copy = public_key;
    let _ = context.events.send(ConnectionEvent::Up(PeerUp {
        id,
        peer,
        public_key,
        hello,
        remote,
        outbound,
        keys: new_keys,
        commands: commands_tx,
    }));
    let (read, write) = stream.into_split();
    let mut link = Link {
        context: context.clone(),
        id,
        me: context.identity.id(),
        peer,
        peer_key: public_key_copy,
        reader: FrameReader::new(read),
        writer: write,
        sealer: tcp_send,
        opener: tcp_recv,
        pending_opener: None,
        rekey: None,
        reassembly: proto::Reassembly::default(),
    };
    let reason = link.serve(commands).await;
    let _ = context.events.send(ConnectionEvent::Down { id, reason });
}

/// Time since the Unix epoch, for message 1's timestamp (zero if the clock
/// is before 1970, which the peer then refuses with a clear reason).
fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

fn hello_bytes(context: &ConnectionContext, session_index: u32) -> Vec<u8> {
    let mut hello = context.hello.clone();
    hello.session_index = session_index;
    crate::wire::encode(&hello).unwrap_or_default()
}

async fn initiate(
    context: &ConnectionContext,
    stream: &mut TcpStream,
) -> Result<Established, HandshakeFailure> {
    let secrets = context.secrets.load_full();
    let (mut handshake, msg1) =
        Handshake::initiator(&context.identity, &secrets, &context.prologue, wall_clock())
            .map_err(|e| HandshakeFailure::Protocol(e.to_string()))?;
    write_all(stream, &msg1).await?;
    let msg2 = read_short_frame(stream).await?;
    let payload = handshake
        .read_message(&msg2)
        .map_err(|_| HandshakeFailure::Refused)?;
    let hello: Hello =
        crate::wire::decode(&payload).map_err(|e| HandshakeFailure::Protocol(e.to_string()))?;
    check_hello(context, &hello)?;
    let local_index = context.next_session_index();
    let msg3 = handshake
        .write_message(&hello_bytes(context, local_index))
        .map_err(|e| HandshakeFailure::Protocol(e.to_string()))?;
    write_short_frame(stream, &msg3).await?;
    finish(handshake, hello, local_index)
}

async fn respond(
    context: &ConnectionContext,
    stream: &mut TcpStream,
) -> Result<Established, HandshakeFailure> {
    // Until message 1 authenticates, read exactly its fixed size and nothing more.
    let mut msg1 = [0u8; MSG1_LEN];
    stream
        .read_exact(&mut msg1)
        .await
        .map_err(|e| HandshakeFailure::Protocol(format!("reading message 1: {e}")))?;
    let secrets = context.secrets.load_full();
    let (mut handshake, stamp) =
        Handshake::responder(&context.identity, &secrets, &context.prologue, &msg1)
            .map_err(|_| HandshakeFailure::Refused)?;
    // Before any DH work: a replayed message 1 costs one lookup.
    let admitted = context
        .msg1_guard
        .lock()
        .map_err(|_| HandshakeFailure::Protocol("replay guard poisoned".into()))?
        .admit(&stamp, wall_clock());
    match admitted {
        Ok(()) => {}
        Err(Msg1Refused::Replayed) => return Err(HandshakeFailure::Replayed),
        Err(skew @ Msg1Refused::ClockSkew { .. }) => {
            return Err(HandshakeFailure::ClockSkew(skew.to_string()));
        }
    }
    let local_index = context.next_session_index();
    let msg2 = handshake
        .write_message(&hello_bytes(context, local_index))
        .map_err(|e| HandshakeFailure::Protocol(e.to_string()))?;
    write_short_frame(stream, &msg2).await?;
    let msg3 = read_short_frame(stream).await?;
    let payload = handshake
        .read_message(&msg3)
        .map_err(|e| HandshakeFailure::Protocol(e.to_string()))?;
    let hello: Hello =
        crate::wire::decode(&payload).map_err(|e| HandshakeFailure::Protocol(e.to_string()))?;
    check_hello(context, &hello)?;
    finish(handshake, hello, local_index)
}

fn check_hello(context: &ConnectionContext, hello: &Hello) -> Result<(), HandshakeFailure> {
    if hello.cluster_range != context.hello.cluster_range {
        return Err(HandshakeFailure::Incompatible(format!(
            "{} uses cluster range {}, we use {}",
            hello.name, hello.cluster_range, context.hello.cluster_range
        )));
    }
    if hello.session_index == 0 || hello.session_index > 0x00ff_ffff {
        return Err(HandshakeFailure::Protocol("invalid session index".into()));
    }
    Ok(())
}

fn finish(
    handshake: Handshake,
    hello: Hello,
    local_index: u32,
) -> Result<Established, HandshakeFailure> {
    let public_key = handshake
        .remote_public_key()
        .ok_or_else(|| HandshakeFailure::Protocol("no remote static key".into()))?;
    let keys = handshake
        .finish()
        .map_err(|e| HandshakeFailure::Protocol(e.to_string()))?;
    Ok(Established {
        keys,
        public_key,
        hello,
        local_index,
    })
}

async fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), HandshakeFailure> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| HandshakeFailure::Protocol(format!("write: {e}")))
}

async fn write_short_frame(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), HandshakeFailure> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| HandshakeFailure::Protocol("handshake message too large".into()))?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    write_all(stream, &out).await
}

async fn read_short_frame(stream: &mut TcpStream) -> Result<Vec<u8>, HandshakeFailure> {
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| HandshakeFailure::Protocol(format!("read: {e}")))?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(HandshakeFailure::Protocol(format!(
            "handshake message of {len} bytes"
        )));
    }
    let mut message = vec![0u8; len];
    stream
        .read_exact(&mut message)
        .await
        .map_err(|e| HandshakeFailure::Protocol(format!("read: {e}")))?;
    Ok(message)
}

/// Reads length-prefixed records; `next` is cancel-safe (partial reads stay
/// in the buffer), so it can sit in a `select!`.
struct FrameReader {
    half: OwnedReadHalf,
    buffer: Vec<u8>,
}

impl FrameReader {
    fn new(half: OwnedReadHalf) -> Self {
        Self {
            half,
            buffer: Vec::with_capacity(8192),
        }
    }

    async fn next(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(len) = self
                .buffer
                .first_chunk::<4>()
                .map(|b| u32::from_be_bytes(*b) as usize)
            {
                if len > MAX_RECORD {
                    return Err(format!("record of {len} bytes exceeds the limit"));
                }
                if self.buffer.len() >= 4 + len {
                    let record = self.buffer[4..4 + len].to_vec();
                    self.buffer.drain(..4 + len);
                    return Ok(record);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.half.read(&mut chunk).await {
                Ok(0) => return Err("connection closed by peer".into()),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// A rekey handshake in progress on this connection.
struct RekeyInProgress {
    handshake: Handshake,
    local_index: u32,
    started: tokio::time::Instant,
}

struct Link {
    context: Arc<ConnectionContext>,
    id: ConnectionId,
    me: PeerId,
    peer: PeerId,
    peer_key: [u8; 32],
    reader: FrameReader,
    writer: OwnedWriteHalf,
    sealer: FrameSealer,
    opener: FrameOpener,
    pending_opener: Option<FrameOpener>,
    rekey: Option<RekeyInProgress>,
    reassembly: proto::Reassembly,
}

impl Link {
    async fn serve(&mut self, mut commands: mpsc::UnboundedReceiver<ConnectionCommand>) -> String {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                record = self.reader.next() => {
                    let record = match record {
                        Ok(record) => record,
                        Err(reason) => return reason,
                    };
                    if let Err(reason) = self.handle_record(&record).await {
                        return reason;
                    }
                }
                command = commands.recv() => match command {
                    Some(ConnectionCommand::Send(message)) => {
                        if let Err(reason) = self.send(&message).await {
                            return reason;
                        }
                    }
                    Some(ConnectionCommand::Rekey) => {
                        if let Err(reason) = self.start_rekey().await {
                            return reason;
                        }
                    }
                    Some(ConnectionCommand::Close(reason)) => {
                        let _ = self.send(&ControlMessage::Close { reason: reason.clone() }).await;
                        return format!("closed: {reason}");
                    }
                    None => return "control task gone".into(),
                },
                _ = tick.tick() => {
                    if self.rekey.as_ref().is_some_and(|r| r.started.elapsed() > HANDSHAKE_TIMEOUT) {
                        tracing::warn!(peer = %self.peer, "rekey handshake timed out; keeping the current keys");
                        self.rekey = None;
                    }
                }
            }
        }
    }

    async fn send(&mut self, message: &ControlMessage) -> Result<(), String> {
        for plaintext in proto::encode_records(message) {
            let record = self.sealer.seal(&plaintext);
            match tokio::time::timeout(WRITE_TIMEOUT, proto::write_frame(&mut self.writer, &record))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("write: {e}")),
                Err(_) => return Err("write timed out".into()),
            }
        }
        Ok(())
    }

    async fn handle_record(&mut self, record: &[u8]) -> Result<(), String> {
        let plaintext = self
            .opener
            .open(record)
            .map_err(|e| format!("record failed to authenticate: {e}"))?;
        let mut message =
            proto::decode_message(&plaintext).map_err(|e| format!("malformed record: {e}"))?;
        if let ControlMessage::Fragment { last, bytes } = &message {
            match self
                .reassembly
                .push(*last, bytes)
                .map_err(|e| format!("malformed fragments: {e}"))?
            {
                Some(whole) => message = whole,
                None => return Ok(()),
            }
        }
        match message {
            ControlMessage::Rekey { step, message } => self.handle_rekey(step, &message).await,
            ControlMessage::TcpKeySwitch => {
                self.opener = self
                    .pending_opener
                    .take()
                    .ok_or("key switch without a completed rekey")?;
                Ok(())
            }
            ControlMessage::Close { reason } => Err(format!("peer closed: {reason}")),
            other => {
                let _ = self.context.events.send(ConnectionEvent::Message {
                    id: self.id,
                    message: other,
                });
                Ok(())
            }
        }
    }

    async fn start_rekey(&mut self) -> Result<(), String> {
        if self.rekey.is_some() {
            return Ok(());
        }
        let secrets = self.context.secrets.load_full();
        let (handshake, msg1) = Handshake::initiator(
            &self.context.identity,
            &secrets,
            &self.context.prologue,
            wall_clock(),
        )
        .map_err(|e| format!("rekey: {e}"))?;
        self.rekey = Some(RekeyInProgress {
            handshake,
            local_index: 0,
            started: tokio::time::Instant::now(),
        });
        self.send(&ControlMessage::Rekey {
            step: 1,
            message: msg1,
        })
        .await
    }

    async fn handle_rekey(&mut self, step: u8, message: &[u8]) -> Result<(), String> {
        match step {
            1 => {
                if self.rekey.is_some() {
                    // Both sides started: the lower ID's rekey wins.
                    if self.me < self.peer {
                        return Ok(());
                    }
                    self.rekey = None;
                }
                let secrets = self.context.secrets.load_full();
                // No replay guard here: the TCP channel is already sealed with
                // counters, so its records cannot be replayed, and a clock that
                // drifts must not break a live connection's rekeys.
                let Ok((mut handshake, _)) = Handshake::responder(
                    &self.context.identity,
                    &secrets,
                    &self.context.prologue,
                    message,
                ) else {
                    tracing::warn!(peer = %self.peer, "rekey message 1 refused");
                    return Ok(());
                };
                let local_index = self.context.next_session_index();
                let payload = rekey_hello_bytes(local_index);
                let msg2 = handshake
                    .write_message(&payload)
                    .map_err(|e| format!("rekey: {e}"))?;
                self.rekey = Some(RekeyInProgress {
                    handshake,
                    local_index,
                    started: tokio::time::Instant::now(),
                });
                self.send(&ControlMessage::Rekey {
                    step: 2,
                    message: msg2,
                })
                .await
            }
            2 => {
                let Some(mut rekey) = self.rekey.take() else {
                    return Ok(());
                };
                let theirs = read_rekey_hello(&mut rekey.handshake, message)?;
                rekey.local_index = self.context.next_session_index();
                let ours = rekey_hello_bytes(rekey.local_index);
                let msg3 = rekey
                    .handshake
                    .write_message(&ours)
                    .map_err(|e| format!("rekey: {e}"))?;
                self.send(&ControlMessage::Rekey {
                    step: 3,
                    message: msg3,
                })
                .await?;
                self.complete_rekey(rekey, theirs.session_index, true).await
            }
            3 => {
                let Some(mut rekey) = self.rekey.take() else {
                    return Ok(());
                };
                let theirs = read_rekey_hello(&mut rekey.handshake, message)?;
                self.complete_rekey(rekey, theirs.session_index, false)
                    .await
            }
            _ => Err(format!("unknown rekey step {step}")),
        }
    }

    /// Installs the new keys: UDP keys go to the control task; our TCP send
    /// key switches after a `TcpKeySwitch` marker, the receive key when the
    /// peer's marker arrives.
    async fn complete_rekey(
        &mut self,
        rekey: RekeyInProgress,
        remote_index: u32,
        initiator: bool,
    ) -> Result<(), String> {
        if remote_index == 0 || remote_index > 0x00ff_ffff {
            return Err("rekey with an invalid session index".into());
        }
        if rekey.handshake.remote_public_key() != Some(self.peer_key) {
            return Err("rekey under another static key than the connection's".into());
        }
        let keys = rekey
            .handshake
            .finish()
            .map_err(|e| format!("rekey: {e}"))?;
        let SessionKeys {
            tcp_send,
            tcp_recv,
            udp_send,
            udp_recv,
        } = keys;
        let _ = self.context.events.send(ConnectionEvent::Rekeyed {
            id: self.id,
            keys: NewKeys {
                local_index: rekey.local_index,
                remote_index,
                send: udp_send,
                recv: udp_recv,
                initiator,
            },
        });
        self.send(&ControlMessage::TcpKeySwitch).await?;
        self.sealer = tcp_send;
        self.pending_opener = Some(tcp_recv);
        Ok(())
    }
}

fn rekey_hello_bytes(session_index: u32) -> Vec<u8> {
    crate::wire::encode(&RekeyHello { session_index }).unwrap_or_default()
}

fn read_rekey_hello(handshake: &mut Handshake, message: &[u8]) -> Result<RekeyHello, String> {
    let payload = handshake
        .read_message(message)
        .map_err(|e| format!("rekey: {e}"))?;
    crate::wire::decode(&payload).map_err(|e| format!("rekey: {e}"))
}
