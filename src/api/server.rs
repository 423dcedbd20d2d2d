//! The local API server: accepts on the unix socket (mode 0600), reads one
//! bounded request line, hands it to the control task and writes its reply.

use super::proto::{ErrorCode, Reply, Request};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// Largest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request for the control task with the channel for its reply.
pub type ApiCall = (Request, oneshot::Sender<Reply>);

/// Binds the socket at `path` (replacing a stale one; refusing if a live
/// router answers there) with mode 0600.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create {} for the API socket: {e}", dir.display())
        })?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another weft router is already serving the API at {} (stop it, or pass a different --api)",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind the API socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves until the control task goes away.
pub async fn serve(listener: UnixListener, path: PathBuf, calls: mpsc::Sender<ApiCall>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if calls.is_closed() {
            let _ = std::fs::remove_file(&path);
            return;
        }
        let calls = calls.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let reply = match tokio::time::timeout(
                Duration::from_secs(5),
                BufReader::new(read.take(MAX_REQUEST)).read_line(&mut line),
            )
            .await
            {
                Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                    Ok(request) => {
                        let (tx, rx) = oneshot::channel();
                        if calls.send((request, tx)).await.is_err() {
                            Reply::err(ErrorCode::NotReady, "the router is shutting down")
                        } else {
                            rx.await
                                .unwrap_or_else(|_| Reply::err(ErrorCode::Internal, "no reply"))
                        }
                    }
                    Err(e) => Reply::err(ErrorCode::BadRequest, format!("malformed request: {e}")),
                },
                _ => Reply::err(ErrorCode::BadRequest, "no request line within 5 s"),
            };
            let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
            bytes.push(b'\n');
            let _ = write.write_all(&bytes).await;
        });
    }
}
