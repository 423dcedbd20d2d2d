//! The local API server: accepts on the unix socket (mode 0600), reads one
//! bounded request line, hands it to the control task and writes its reply.

use super::proto::{ErrorCode, Reply, Request};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// Largest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request for the control task with the channel for its reply.
pub type ApiCall = (Request, oneshot::Sender<Reply>);

/// Passes API calls on to `next`, handing each `Status` reply to `amend` on
/// its way back: a part of the router that is not the control task (the
/// host firewall, NetworkPolicy) adds its own section to `weft status` and
/// the metrics without the control task knowing about it. Each reply is
/// amended in its own task, so a slow section never holds up other calls.
pub async fn splice_status<F, Fut>(
    mut calls: mpsc::Receiver<ApiCall>,
    next: mpsc::Sender<ApiCall>,
    amend: F,
) where
    F: Fn(Reply) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Reply> + Send + 'static,
{
    let amend = std::sync::Arc::new(amend);
    while let Some((request, reply)) = calls.recv().await {
        if request != Request::Status {
            if next.send((request, reply)).await.is_err() {
                return;
            }
            continue;
        }
        let (tx, rx) = oneshot::channel();
        if next.send((request, tx)).await.is_err() {
            return;
        }
        let amend = amend.clone();
        tokio::spawn(async move {
            if let Ok(answer) = rx.await {
                let _ = reply.send(amend(answer).await);
            }
        });
    }
}

/// Binds the socket at `path` (replacing a stale one; refusing if a live
/// router answers there) with mode 0600 from the first moment it is
/// reachable (DESIGN.md "Security model"): it is bound inside a fresh 0700
/// directory beside `path`, restricted there, then renamed into place, so
/// no other user can ever connect to it. Missing parents are created 0700;
/// an existing parent is left as the operator made it.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {} for the API socket: {e}", dir.display()))?;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another weft router is already serving the API at {} (stop it, or pass a different --api)",
            path.display()
        );
    }
    let private = dir.join(format!(".weft-api.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    let result = bind_privately(&private, path);
    let _ = std::fs::remove_dir_all(&private);
    result.map_err(|e| anyhow::anyhow!("cannot bind the API socket {}: {e}", path.display()))
}

/// Binds in the new 0700 directory `private`, sets 0600, renames to `path`.
fn bind_privately(private: &Path, path: &Path) -> std::io::Result<UnixListener> {
    std::fs::DirBuilder::new().mode(0o700).create(private)?;
    let inside = private.join("sock");
    let listener = UnixListener::bind(&inside)?;
    // Only we can reach `inside`: restricting it here leaves no window.
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&inside, path)?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_socket_appears_0600_in_a_0700_directory_and_replaces_a_stale_one() {
        let base = std::env::temp_dir().join(format!("weft-api-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let path = base.join("run/weft/weft.sock");
        let listener = bind(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&base.join("run")), 0o700);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["weft.sock"], "no private directory left");
        // A live router answers: refused. A stale socket: replaced.
        assert!(bind(&path).is_err());
        drop(listener);
        let _again = bind(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
