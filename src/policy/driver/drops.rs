//! The drop log's I/O (the lines themselves: [`super::super::droplog`]):
//! the NFLOG reader's thread, naming from the driver's state, and the
//! counter-based lines used when NFLOG cannot be bound.

use super::{Shared, lock};
use crate::policy::droplog::{self, Budget, Names};
use crate::policy::nflog::{self, Logged, Message};
use crate::policy::nft::{Counted, Rendered};
use crate::policy::state::PolicyState;
use crate::policy::status::{DropLogStatus, PodPolicies};
use std::collections::BTreeMap;
use std::time::Instant;
use tokio::sync::mpsc;

/// Binds the NFLOG group and starts the thread reading it; false (said in
/// the log and status) if it cannot, and the drop log falls back to the
/// counters ([`log_drops`]).
pub(super) async fn start_drop_log(tx: mpsc::Sender<Logged>, shared: &Shared) -> bool {
    let bound = tokio::task::spawn_blocking(|| nflog::Socket::bind(nflog::GROUP))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let (source, on) = match bound {
        Ok(socket) => {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("weft-policy-nflog".into())
                .spawn(move || read_drops(socket, &tx, &shared));
            match spawned {
                Ok(_) => (format!("NFLOG group {}", nflog::GROUP), true),
                Err(e) => (format!("counters only: cannot start a thread: {e}"), false),
            }
        }
        Err(e) => {
            tracing::warn!(
                "--network-policy: {e}; the drop log names pods and policies from the counters, without the other end or the port"
            );
            (format!("counters only: {e}"), false)
        }
    };
    lock(shared).status.drop_log.source = source;
    on
}

/// The NFLOG reader's thread: reads logged drops and queues them for the
/// driver until the driver is gone or the socket fails.
fn read_drops(mut socket: nflog::Socket, tx: &mpsc::Sender<Logged>, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match socket.read(&mut buf) {
            Ok(n) => n,
            // The socket's buffer overflowed: packets were lost.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                lock(shared).status.drop_log.lost += 1;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("--network-policy: the NFLOG drop log stopped: {e}");
                lock(shared).status.drop_log.source = format!("counters only: NFLOG failed: {e}");
                return;
            }
        };
        let batch = nflog::parse(&buf[..n]);
        let mut lost = 0;
        for message in batch.messages {
            let Message::Packet(logged) = message else {
                continue;
            };
            match tx.try_send(logged) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => lost += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        if batch.malformed > 0 || lost > 0 {
            let log: &mut DropLogStatus = &mut lock(shared).status.drop_log;
            log.malformed += u64::from(batch.malformed);
            log.lost += lost;
        }
    }
}

/// What the drop log's lines name, from the driver's view.
struct Lookup<'a> {
    state: &'a PolicyState,
    pods: &'a [PodPolicies],
}

impl Names for Lookup<'_> {
    fn pod_with_ip(&self, ip: std::net::IpAddr) -> Option<String> {
        self.state.pod_with_ip(crate::policy::addrs::addr(ip))
    }

    fn isolated_by(&self, pod: &str, dir: &str) -> Vec<String> {
        self.pods
            .iter()
            .find(|p| p.pod == pod)
            .map(|p| {
                if dir == "in" {
                    p.ingress.clone()
                } else {
                    p.egress.clone()
                }
            })
            .unwrap_or_default()
    }
}

/// One logged drop: a line naming both ends, the port and the deciding
/// rule, within the line budget (the next line written says how many were
/// left out).
pub(super) fn log_drop(
    logged: &Logged,
    table: Option<&Rendered>,
    state: &PolicyState,
    shared: &Shared,
    budget: &mut Budget,
) {
    let mut published = lock(shared);
    let Some(left_out) = budget.admit(Instant::now()) else {
        published.status.drop_log.left_out += 1;
        return;
    };
    let names = Lookup {
        state,
        pods: &published.status.pods,
    };
    let Some(line) = droplog::describe(logged, table, &names) else {
        return;
    };
    published.status.drop_log.lines += 1;
    if left_out > 0 {
        tracing::info!("--network-policy: {line} ({left_out} more left out before it)");
    } else {
        tracing::info!("--network-policy: {line}");
    }
}

/// The drop log without NFLOG: reads the default-deny counters back and
/// logs, per pod and direction whose count grew, one line naming the pod,
/// the direction, the namespace's default deny and the policies that
/// isolate it (not the other end or the port: the counters do not know
/// them). At most one line per pod and direction per [`super::DROP_LOG_EVERY`].
pub(super) async fn log_drops(
    table: &Rendered,
    state: &PolicyState,
    seen: &mut BTreeMap<String, u64>,
) {
    let counters = tokio::task::spawn_blocking(crate::policy::status::read_counters)
        .await
        .unwrap_or_default();
    for (name, packets) in counters {
        let Some(Counted::Denied(pod, dir)) = table.counters.get(&name) else {
            continue;
        };
        // A whole replace (start, after a failure) starts counters at 0.
        let before = seen
            .insert(name, packets)
            .filter(|b| *b <= packets)
            .unwrap_or(0);
        if packets == before {
            continue;
        }
        let (namespace, name) = pod.split_once('/').unwrap_or(("", pod));
        let policies = state
            .cluster()
            .pod(pod)
            .map(|p| {
                let rules = state.cluster().rules_for(p);
                let direction = if *dir == "in" {
                    rules.ingress
                } else {
                    rules.egress
                };
                direction
                    .selected_by
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let direction = if *dir == "in" { "to" } else { "from" };
        tracing::info!(
            "--network-policy: dropped {} packets {direction} {namespace}/{name}: default deny of {namespace} (isolated by {policies})",
            packets - before
        );
    }
}
