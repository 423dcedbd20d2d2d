//! A blocking client for the local API (used by `weft status` and the CNI
//! plugin, which have no async runtime).

use super::proto::{Reply, Request};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Why the router could not be asked; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the path.
    #[error(
        "cannot reach the weft router at {path}: {source} (is `weft router` running, and is --api the same path?)"
    )]
    Unreachable {
        /// The socket path.
        path: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("the weft router at {path} did not answer: {reason}")]
    NoAnswer {
        /// The socket path.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Sends one request and waits (at most `timeout`) for the reply.
pub fn call(path: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let display = path.display().to_string();
    let no_answer = |reason: String| ClientError::NoAnswer {
        path: display.clone(),
        reason,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Unreachable {
        path: display.clone(),
        source,
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| no_answer(e.to_string()))?;
    let mut line = serde_json::to_vec(request).map_err(|e| no_answer(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| no_answer(e.to_string()))?;
    let mut reply = String::new();
    BufReader::new(stream.take_limited())
        .read_line(&mut reply)
        .map_err(|e| no_answer(e.to_string()))?;
    serde_json::from_str(&reply).map_err(|e| no_answer(format!("malformed reply: {e}")))
}

/// Replies are bounded: a status of a large cluster is far below this.
const MAX_REPLY: u64 = 64 << 20;

trait TakeLimited {
    fn take_limited(self) -> std::io::Take<UnixStream>;
}

impl TakeLimited for UnixStream {
    fn take_limited(self) -> std::io::Take<UnixStream> {
        std::io::Read::take(self, MAX_REPLY)
    }
}
