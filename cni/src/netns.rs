//! A netlink handle inside the pod's network namespace.
//!
//! A netlink socket belongs to the namespace of the thread that created it,
//! and stays there whatever thread uses it afterwards. So we create it on a
//! dedicated short-lived thread that has `setns`-ed into the pod's namespace
//! (setns moves only the calling thread), and hand the socket back to the
//! plugin's runtime: every pod-side operation then goes through it from the
//! host namespace, and no thread of ours is ever left in the wrong namespace.
//!
//! `unsafe` lives here only: `setns(2)` has no safe wrapper in our
//! dependencies. It is sound because the descriptor is a live `File` we own
//! for the duration of the call, and the thread that changed namespace ends
//! right after creating the socket.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Why the pod namespace cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetnsError {
    /// The path does not open.
    #[error("cannot open the pod's network namespace {path}: {source}")]
    Open {
        /// `CNI_NETNS`.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// setns refused it.
    #[error("{path} is not a network namespace: {source}")]
    NotNetns {
        /// `CNI_NETNS`.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The netlink socket could not be made.
    #[error("cannot open netlink in {path}: {source}")]
    Socket {
        /// `CNI_NETNS`.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Opens `path` as a namespace file (kept open while we work in it).
pub(crate) fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// A rtnetlink handle whose socket lives in namespace `ns`; its connection
/// task is spawned on `rt`.
pub(crate) fn netlink_in(
    ns: &File,
    path: &Path,
    rt: &tokio::runtime::Handle,
) -> Result<rtnetlink::Handle, NetnsError> {
    let display = path.display().to_string();
    let ns = ns.try_clone().map_err(|source| NetnsError::Open {
        path: display.clone(),
        source,
    })?;
    let rt = rt.clone();
    let worker = std::thread::spawn(move || -> Result<rtnetlink::Handle, NetnsError> {
        // SAFETY: `ns` is an open descriptor owned by this closure; setns
        // only changes this thread's network namespace, and this thread ends
        // when the closure returns.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(NetnsError::NotNetns {
                path: display,
                source: std::io::Error::last_os_error(),
            });
        }
        let _guard = rt.enter();
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetnsError::Socket {
                path: display,
                source,
            })?;
        rt.spawn(connection);
        Ok(handle)
    });
    worker.join().unwrap_or_else(|_| {
        Err(NetnsError::Socket {
            path: path.display().to_string(),
            source: std::io::Error::other("the namespace thread panicked"),
        })
    })
}
