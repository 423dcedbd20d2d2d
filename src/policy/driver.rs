//! `--network-policy`: the thin driver around the pure policy core (issue
//! 18). It runs the three [`Watcher`]s (namespaces, pods, networkpolicies)
//! over HTTP, feeds [`PolicyState`], and applies the rendered table with
//! `nft -f -`, one transaction per update.
//!
//! Requests run on threads of their own, not tokio's blocking pool: a watch
//! stream lasts minutes, and a runtime waits for its blocking tasks when it
//! shuts down. Each resource's requests carry a generation; a stream whose
//! watcher has moved on (a 410, a relist) is told to stop at its next line
//! and its leftovers are ignored.
//!
//! Nothing is applied before all three resources have been listed once: a
//! table built from pods without their policies would open them. Then the
//! first apply replaces whatever table a previous run left (atomically: the
//! old rules hold until the new ones are in); later applies are only what
//! differs from the table last applied ([`Rendered::update_from`]: map
//! elements, and the chains, maps and counters of pods and policies that
//! come or go), so the named counters keep their numbers. If one fails (the
//! table was deleted or changed by someone else), the table is replaced
//! whole at once; if that fails too, again after [`APPLY_RETRY`]. The table is not removed when the
//! router stops: a restarting router never leaves its pods open, and no pod
//! can get a reused address meanwhile (addresses come from this router).
//! `weft reset` removes it.

use super::droplog::Budget;
use super::local::LocalUpdate;
use super::nflog::Logged;
use super::nft::{Rendered, TABLE};
use super::state::{PolicyState, Resource};
use super::status::{PodPolicies, PolicyStatus};
use super::watch::{Get, MAX_EVENT_BYTES, Watcher};
use crate::kube::client::{ApiServer, StreamEnd};
use crate::kube::{KubeError, KubeSource};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// The largest list page taken (500 pods of a few KB each).
const MAX_PAGE: u64 = 32 * 1024 * 1024;

/// How long before a failed apply is tried again.
const APPLY_RETRY: Duration = Duration::from_secs(5);

mod drops;
use drops::{log_drop, log_drops, start_drop_log};

/// How often the default-deny counters are read back for the drop log
/// when NFLOG is not available.
const DROP_LOG_EVERY: Duration = Duration::from_secs(5);
/// The applied table is checked for being still in place (a table someone
/// deleted leaves every pod open until the next change would put it back)
/// when the ruleset changed ([`crate::nft_changes`]), at most once per
/// [`TABLE_CHECK_GAP`]. Not on a timer: a check is three `nft list chain`
/// runs, and each reads the whole table into nft's cache (nft 1.0.6): with
/// 10,000 pods in the sets, ~75 ms of CPU for the three; every 2 s that
/// was ~4 % of a core taken from the data path (`perf` in the bench).
const TABLE_CHECK_GAP: Duration = Duration::from_secs(1);

/// How often the table is checked when the change notifications are
/// refused or stop.
const TABLE_CHECK_POLL: Duration = Duration::from_secs(2);

/// Logged drops queued between the NFLOG reader and the driver (more are
/// counted as lost: the line budget would leave them out anyway).
const DROP_QUEUE: usize = 256;

/// What the driver needs.
#[derive(Clone, Debug)]
pub struct PolicyTask {
    /// Where the API server is.
    pub source: KubeSource,
    /// The service-account directory.
    pub sa_dir: PathBuf,
    /// This node's name (pods whose `spec.nodeName` it is are local).
    pub node: String,
}

/// The driver's status, shared with the API's status splice.
pub type Shared = Arc<Mutex<Published>>;

/// What the driver publishes: the status and the table as last applied
/// (its counter names, for reading counters back).
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// For `weft status policy` and metrics (counters filled in on read).
    pub status: PolicyStatus,
    /// The table in the kernel, if one was applied.
    pub applied: Option<Rendered>,
}

enum Event {
    Open,
    Page(Result<(u16, Vec<u8>), KubeError>),
    Line(Vec<u8>),
    End(Result<StreamEnd, KubeError>),
}

/// Runs until the process ends. Never returns an error: problems are logged
/// once per change and shown in status. `local` brings this node's pod
/// allocations ([`super::local`]); each new one is answered once the table
/// in force covers it.
pub async fn run(task: PolicyTask, shared: Shared, mut local: mpsc::Receiver<LocalUpdate>) {
    let (tx, mut rx) = mpsc::channel::<(usize, u64, Event)>(256);
    let start = Instant::now();
    let mut watchers = Resource::ALL.map(|r| Watcher::new(r.path(), start));
    let generations: [Arc<AtomicU64>; 3] = Default::default();
    let mut errors: [Option<String>; 3] = Default::default();
    let mut state = PolicyState::new(&task.node);
    let mut listed = [false; 3];
    let mut applied: Option<Rendered> = None;
    let mut dirty = false;
    let mut retry_at: Option<Instant> = None;
    let mut stale_since = [Some(SystemTime::now()); 3];
    let mut drop_tick = tokio::time::interval(DROP_LOG_EVERY);
    let mut changes = match crate::nft_changes::watch() {
        Ok(changes) => Some(changes),
        Err(e) => {
            tracing::warn!(
                error = %e,
                every = ?TABLE_CHECK_POLL,
                "--network-policy: cannot subscribe to nftables changes; checking {TABLE} periodically instead"
            );
            None
        }
    };
    let mut table_tick = tokio::time::interval(TABLE_CHECK_POLL);
    let mut table_check: Option<Instant> = None;
    let mut last_table_check = Instant::now();
    let mut drops_seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut local_open = true;
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let (drop_tx, mut drops) = mpsc::channel::<Logged>(DROP_QUEUE);
    let mut nflog_on = start_drop_log(drop_tx, &shared).await;
    let mut budget = Budget::default();
    loop {
        let now = Instant::now();
        for (i, watcher) in watchers.iter_mut().enumerate() {
            if let Some(get) = watcher.poll_request(now) {
                let generation = generations[i].fetch_add(1, Ordering::SeqCst) + 1;
                spawn_request(&task, i, get, generation, &generations[i], tx.clone());
            }
        }
        let mut wake = watchers
            .iter()
            .filter_map(|w| w.poll_timeout().map(|(at, _)| at))
            .chain(retry_at)
            .chain(table_check)
            .min()
            .unwrap_or(now + Duration::from_secs(60));
        if wake < now {
            wake = now;
        }
        let first = tokio::select! {
            event = rx.recv() => event,
            update = local.recv(), if local_open => {
                match update {
                    Some(update) => dirty |= take_local(&mut state, update, &mut waiting),
                    None => local_open = false,
                }
                None
            }
            () = tokio::time::sleep_until(wake.into()) => None,
            logged = drops.recv(), if nflog_on => {
                match logged {
                    Some(logged) => log_drop(&logged, applied.as_ref(), &state, &shared, &mut budget),
                    None => nflog_on = false,
                }
                None
            }
            changed = async { changes.as_mut()?.recv().await }, if changes.is_some() => {
                match changed {
                    Some(()) => {
                        let earliest = last_table_check + TABLE_CHECK_GAP;
                        table_check.get_or_insert(earliest.max(Instant::now()));
                    }
                    None => {
                        tracing::warn!(
                            every = ?TABLE_CHECK_POLL,
                            "--network-policy: nftables change notifications stopped; checking {TABLE} periodically instead"
                        );
                        changes = None;
                    }
                }
                None
            }
            _ = table_tick.tick(), if changes.is_none() => {
                table_check = Some(Instant::now());
                None
            }
            _ = drop_tick.tick() => {
                if !nflog_on && let Some(table) = &applied {
                    log_drops(table, &state, &mut drops_seen).await;
                }
                None
            }
        };
        let mut events: Vec<_> = first.into_iter().collect();
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        while let Ok(update) = local.try_recv() {
            dirty |= take_local(&mut state, update, &mut waiting);
        }
        if table_check.is_some_and(|at| at <= Instant::now()) {
            // Nothing applied: nothing to check (the next apply is whole).
            table_check = None;
            last_table_check = Instant::now();
            if applied.is_some() && !table_in_place().await {
                tracing::warn!(
                    "--network-policy: {TABLE} was deleted or emptied by someone else (nft flush ruleset? a firewall reload?); putting it back"
                );
                lock(&shared).status.repaired += 1;
                applied = None;
                dirty = true;
            }
        }
        let now = Instant::now();
        for (i, generation, event) in events {
            if generation != generations[i].load(Ordering::SeqCst) {
                continue;
            }
            let error = handle(&mut watchers[i], event, now);
            note_error(Resource::ALL[i], &mut errors[i], error);
        }
        for (i, watcher) in watchers.iter_mut().enumerate() {
            while let Some(change) = watcher.poll_change() {
                listed[i] |= matches!(change, super::watch::Change::Reset(_));
                for (name, error) in state.apply(Resource::ALL[i], change) {
                    tracing::warn!("--network-policy: skipping {name}: {error}");
                }
                dirty = true;
            }
            stale_since[i] = match (watcher.stale_since(), stale_since[i]) {
                (None, _) => None,
                (Some(_), Some(since)) => Some(since),
                (Some(_), None) => Some(SystemTime::now()),
            };
        }
        let render = listed.iter().all(|l| *l) && (dirty || retry_at.is_some_and(|at| at <= now));
        if render {
            dirty = false;
            retry_at = None;
            let rendered = state.render();
            let text = match &applied {
                Some(previous) => rendered.update_from(previous),
                None => rendered.text(),
            };
            if !text.is_empty() {
                let mut outcome = apply(text).await;
                if let (Err(error), Some(_)) = (&outcome.0, &applied) {
                    // The table is not what was last applied (deleted or
                    // changed by someone else), or nft refused the diff:
                    // replace it whole, now.
                    tracing::warn!(
                        "--network-policy: updating {TABLE} failed ({error}); replacing it whole"
                    );
                    lock(&shared).status.apply_failures += 1;
                    outcome = apply(rendered.text()).await;
                }
                let (result, took) = outcome;
                let mut published = lock(&shared);
                match result {
                    Ok(()) => {
                        tracing::debug!(?took, "--network-policy: {TABLE} updated");
                        published.status.applies += 1;
                        published.status.last_apply_ms = took.as_secs_f64() * 1000.0;
                        published.status.error = None;
                        applied = Some(rendered);
                    }
                    Err(error) => {
                        tracing::warn!("--network-policy: cannot apply {TABLE}: {error}");
                        published.status.apply_failures += 1;
                        published.status.error = Some(error);
                        // The next try replaces the table whole.
                        applied = None;
                        retry_at = Some(now + APPLY_RETRY);
                    }
                }
                published.applied.clone_from(&applied);
            }
        }
        publish(&shared, &state, &stale_since, &listed, &errors, render);
        // Covered now: applied in this pass, or nothing this driver can
        // apply yet (not listed; a previous run's table, if any, stays), or
        // refused (logged and retried; the pod is not kept waiting for it).
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Runs one `nft -f -` transaction off the runtime: how it went, how long
/// it took.
async fn apply(text: String) -> (Result<(), String>, Duration) {
    let began = Instant::now();
    let result = tokio::task::spawn_blocking(move || crate::nftables::run(&text))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    (result, began.elapsed())
}

/// Whether the table's base chain and the family chains it jumps to are
/// in the kernel with their rules (one `nft list chain` each: nft 1.0.6
/// cannot list several chains in one `nft -f`). An `nft` that cannot run
/// counts as in place: the apply path reports that, and a check must not
/// turn into an apply loop.
async fn table_in_place() -> bool {
    let (family, name) = TABLE.split_once(' ').unwrap_or(("inet", TABLE));
    tokio::task::spawn_blocking(move || {
        let mut listing = String::new();
        for chain in super::nft::FIXED_CHAINS {
            match crate::nftables::listing(&["list", "chain", family, name, chain]) {
                Ok(Some(text)) => listing.push_str(&text),
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
        super::nft::base_chain_whole(&listing)
    })
    .await
    .unwrap_or(true)
}

/// Takes an allocation update; returns whether the table must be rendered.
fn take_local(
    state: &mut PolicyState,
    update: LocalUpdate,
    waiting: &mut Vec<oneshot::Sender<()>>,
) -> bool {
    match update {
        LocalUpdate::All(all) => state.set_allocations(all),
        LocalUpdate::Added { pod, ips, done } => {
            for ip in ips {
                state.add_allocation(&pod, ip);
            }
            waiting.push(done);
        }
        LocalUpdate::Released(ip) => state.release_allocation(ip),
    }
    true
}

/// Hands one event to its watcher; returns the error to report, if any
/// (`Some("")`: recovered).
fn handle(watcher: &mut Watcher, event: Event, now: Instant) -> Option<String> {
    match event {
        Event::Page(Ok((200, body))) => match watcher.handle_list_page(&body, now) {
            Ok(()) => Some(String::new()),
            Err(e) => Some(e.to_string()),
        },
        Event::Page(Ok((status, _))) | Event::End(Ok(StreamEnd::Status(status))) => {
            watcher.handle_failure(Some(status), now);
            (status != 410).then(|| http_error(status))
        }
        Event::Page(Err(e)) | Event::End(Err(e)) => {
            watcher.handle_failure(None, now);
            Some(e.to_string())
        }
        Event::Open => {
            watcher.handle_stream_open();
            Some(String::new())
        }
        Event::Line(line) => match watcher.handle_watch_line(&line, now) {
            Ok(()) => Some(String::new()),
            // Lines of a stream the watcher already left (after an ERROR).
            Err(super::watch::WatchError::Unexpected(_)) => None,
            Err(e) => Some(e.to_string()),
        },
        Event::End(Ok(StreamEnd::Closed)) => {
            watcher.handle_stream_end();
            None
        }
        Event::End(Ok(StreamEnd::Stopped)) => None,
    }
}

fn http_error(status: u16) -> String {
    match status {
        401 => "the service-account token was rejected (401: stale, or from another cluster); restart the pod".into(),
        403 => "forbidden (403): apply deploy/rbac.yaml (get/list/watch on pods, namespaces and networkpolicies)".into(),
        status => format!("HTTP {status}"),
    }
}

/// Logs an error once per change, and once when it clears.
fn note_error(resource: Resource, last: &mut Option<String>, error: Option<String>) {
    match error {
        Some(e) if e.is_empty() && last.is_some() => {
            *last = None;
            tracing::info!("--network-policy: {} are readable again", resource.path());
        }
        Some(e) if !e.is_empty() && last.as_ref() != Some(&e) => {
            tracing::warn!(
                "--network-policy: {}: {e} (the rules in force stay)",
                resource.path()
            );
            *last = Some(e);
        }
        _ => {}
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Published> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn publish(
    shared: &Shared,
    state: &PolicyState,
    stale_since: &[Option<SystemTime>; 3],
    listed: &[bool; 3],
    errors: &[Option<String>; 3],
    pods_changed: bool,
) {
    let mut published = lock(shared);
    let status = &mut published.status;
    status.stale_since = stale_since.iter().flatten().min().map(|t| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    status.synced = listed.iter().all(|l| *l);
    status.skipped = state.skipped().clone();
    status.api_errors = Resource::ALL
        .iter()
        .zip(errors)
        .filter_map(|(r, e)| Some(format!("{}: {}", r.path(), e.as_ref()?)))
        .collect();
    status.policies = state.cluster().policy_count();
    if !pods_changed {
        return;
    }
    let mut cache = super::compile::PeerCache::default();
    status.pods = state
        .local_pods()
        .iter()
        .map(|pod| {
            let rules = state.cluster().rules_for_cached(pod, &mut cache);
            PodPolicies {
                pod: pod.key(),
                ips: pod
                    .ips
                    .iter()
                    .map(|ip| super::addrs::ip(*ip).to_string())
                    .collect(),
                ingress: rules
                    .ingress
                    .selected_by
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
                egress: rules
                    .egress
                    .selected_by
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
                ..PodPolicies::default()
            }
        })
        .collect();
}

/// Makes one GET on a thread of its own, sending what comes back.
fn spawn_request(
    task: &PolicyTask,
    index: usize,
    get: Get,
    generation: u64,
    current: &Arc<AtomicU64>,
    tx: mpsc::Sender<(usize, u64, Event)>,
) {
    let (source, sa_dir, current) = (task.source.clone(), task.sa_dir.clone(), current.clone());
    let spawned = std::thread::Builder::new()
        .name("weft-policy-api".into())
        .spawn(move || {
            let path = format!("{}?{}", get.path, get.query);
            let server = match ApiServer::new(&source, &sa_dir, get.stream) {
                Ok(server) => server,
                Err(e) => {
                    let event = if get.stream {
                        Event::End(Err(e))
                    } else {
                        Event::Page(Err(e))
                    };
                    let _ = tx.blocking_send((index, generation, event));
                    return;
                }
            };
            if !get.stream {
                let page = server.get(&path, MAX_PAGE);
                let _ = tx.blocking_send((index, generation, Event::Page(page)));
                return;
            }
            let opened = tx.clone();
            let on_open = move || {
                let _ = opened.blocking_send((index, generation, Event::Open));
            };
            let end = server.watch(&path, MAX_EVENT_BYTES, on_open, |line| {
                current.load(Ordering::SeqCst) == generation
                    && tx
                        .blocking_send((index, generation, Event::Line(line.to_vec())))
                        .is_ok()
            });
            let _ = tx.blocking_send((index, generation, Event::End(end)));
        });
    if let Err(e) = spawned {
        tracing::warn!("--network-policy: cannot start a request thread: {e}");
    }
}
