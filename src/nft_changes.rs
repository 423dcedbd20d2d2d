//! The kernel's nftables change notifications (netlink `NFNLGRP_NFTABLES`,
//! what `nft monitor` reads), for the drivers that keep one of weft's tables
//! in place ([`crate::host_firewall`], [`crate::policy::driver`]): they check
//! their table when the ruleset changed, not on a timer.
//!
//! A check is an `nft list`, and nft 1.0.6 reads the whole ruleset into its
//! cache for any listing, set elements included: with 1,000 policies over
//! 10,000 pods a check of three listings took ~75 ms of CPU, ~4 % of a core
//! taken from the data path when it ran every 2 s.

use rtnetlink::sys::protocols::NETLINK_NETFILTER;
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use std::time::Duration;
use tokio::sync::mpsc;

/// The nfnetlink multicast group of nftables ruleset changes
/// (`NFNLGRP_NFTABLES` in linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;

/// How long changes may keep coming before a burst counts as over (a
/// firewall reload, or one of our own transactions, is many messages).
const SETTLE: Duration = Duration::from_millis(200);

/// A netlink socket on the nftables change group.
pub fn subscribe() -> std::io::Result<TokioSocket> {
    let mut socket = TokioSocket::new(NETLINK_NETFILTER)?;
    socket.socket_mut().bind(&SocketAddr::new(0, 0))?;
    socket.socket_ref().add_membership(NFNLGRP_NFTABLES)?;
    Ok(socket)
}

/// Lets a burst of changes finish: drains messages until none came for
/// [`SETTLE`] (at most a few seconds' worth).
pub async fn settle(socket: &TokioSocket) {
    for _ in 0..1000 {
        if tokio::time::timeout(SETTLE, socket.recv_from_full())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Subscribes and spawns a task that sends one `()` per settled burst of
/// ruleset changes (bursts while the receiver is behind fold into one; an
/// error reading the socket, such as ENOBUFS when changes were lost, counts
/// as a change). The task ends when the receiver is dropped or the socket
/// fails for good; the receiver then reads `None`. Call inside a runtime.
pub fn watch() -> std::io::Result<mpsc::Receiver<()>> {
    let socket = subscribe()?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            match socket.recv_from_full().await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures > 10 {
                        tracing::warn!(error = %e, "nftables change notifications failed ten times in a row; no longer read");
                        return;
                    }
                }
            }
            settle(&socket).await;
            match tx.try_send(()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                Err(mpsc::error::TrySendError::Closed(())) => return,
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change made by `nft` arrives as one signal, and none comes while
    /// nothing changes. Runs on a thread of its own moved into a fresh
    /// network namespace (`unshare(CLONE_NEWNET)` moves only the calling
    /// thread; `nft` forked from it inherits it; the namespace is gone when
    /// the thread ends, even on failure). Needs root and nft: skipped
    /// loudly otherwise, as the kernel nft tests are.
    #[test]
    #[allow(unsafe_code)] // one unshare(2) on the test's own thread
    fn a_ruleset_change_is_signalled_once_and_quiet_sends_nothing() {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !root {
            eprintln!("SKIPPED nft_changes: needs root (a network namespace and nft)");
            return;
        }
        let outcome = std::thread::spawn(|| {
            // SAFETY: unshare with a flag only changes this thread's
            // namespaces; no memory is passed.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!("unshare: {}", std::io::Error::last_os_error()));
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut changes = watch().map_err(|e| format!("subscribe: {e}"))?;
                let quiet = Duration::from_millis(600);
                if tokio::time::timeout(quiet, changes.recv()).await.is_ok() {
                    return Err("a signal with no change".to_string());
                }
                crate::nftables::run("table inet weft_nft_changes_test {\n chain c {\n }\n}\n")?;
                let signal = tokio::time::timeout(Duration::from_secs(3), changes.recv()).await;
                if signal != Ok(Some(())) {
                    return Err(format!("no signal after a change: {signal:?}"));
                }
                if tokio::time::timeout(quiet, changes.recv()).await.is_ok() {
                    return Err("one change signalled twice".to_string());
                }
                Ok(())
            })
        })
        .join()
        .expect("the test thread");
        if let Err(e) = outcome {
            panic!("{e}");
        }
    }
}
