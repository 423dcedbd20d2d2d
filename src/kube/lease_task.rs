//! The I/O half of the router's Lease (see [`super::lease`]): every
//! `every` it renews its own coordination.k8s.io/v1 Lease (GET, then POST
//! to create or PUT with the `resourceVersion` it holds; a 409 reads the
//! Lease again and retries), reads the Leases of the deleted Nodes (the
//! node list comes from the seed task, [`super::run`], not listed again)
//! and tells the control task which routers are gone
//! (`Request::NodesGone`). The control task decides whether to reclaim.

use super::lease::{LABEL, LeaseObserver, LeaseView, lease_body, parse_lease, parse_lease_list};
use super::{KubeError, KubeSource, client::ApiServer};
use crate::api::proto::Request;
use crate::api::server::ApiCall;
use crate::id::PeerId;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};

/// How often the Lease is renewed (its duration is [`DURATION_FACTOR`]
/// times this).
pub const RENEW: Duration = Duration::from_secs(10);

/// A Lease lasts this many renewal periods: three renewals may fail in a
/// row (an API server restart) before anyone calls the router gone.
pub const DURATION_FACTOR: u32 = 4;

/// Where the router's namespace is unless the service-account directory
/// says (`namespace`): the one deploy/ installs into.
pub const DEFAULT_NAMESPACE: &str = "kube-system";

/// The weft Leases are listed at the first round and every this many
/// rounds after (a router started after a Node was deleted finds that
/// router's Lease there); one list per router per few minutes keeps the
/// API server's load from growing with the square of the cluster.
const LIST_EVERY: u32 = 30;

/// The most bytes of one Lease or Lease list read.
const MAX_BODY: u64 = 4 * 1024 * 1024;

/// The Lease task's settings.
#[derive(Clone, Debug)]
pub struct LeaseTask {
    /// Where the API server is.
    pub source: KubeSource,
    /// The service-account directory (its `namespace` file names the
    /// Lease's namespace).
    pub sa_dir: PathBuf,
    /// The router's (and its node's, and its Lease's) name.
    pub name: String,
    /// The router's ID, annotated on its Lease: a watch, as a live
    /// identity switch changes it while the task runs.
    pub id: watch::Receiver<PeerId>,
    /// How often to renew.
    pub every: Duration,
}

/// Runs until the control task goes away; `nodes` is the seed task's last
/// successful node listing. Errors are logged once per change of error,
/// never fatal.
pub async fn run(
    task: LeaseTask,
    calls: mpsc::Sender<ApiCall>,
    nodes: watch::Receiver<Option<BTreeSet<String>>>,
) {
    let namespace = std::fs::read_to_string(task.sa_dir.join("namespace"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let duration = task.every * DURATION_FACTOR;
    tracing::info!(
        namespace,
        lease = task.name,
        every = ?task.every,
        ?duration,
        "--peers-from-kube: holding a Lease; a deleted Node whose Lease expires and whose router is unreachable is reclaimed"
    );
    let mut observer = LeaseObserver::new(duration);
    let mut version: Option<String> = None;
    let mut last_error: Option<KubeError> = None;
    let mut last_gone: Vec<String> = Vec::new();
    let mut rounds: u32 = 0;
    // Name → the router ID its Lease last named.
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut tick = tokio::time::interval(task.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if calls.is_closed() {
            return;
        }
        let listed = nodes.borrow().clone();
        if let Some(listed) = listed {
            observer.observe_nodes(listed);
        }
        let list = rounds.is_multiple_of(LIST_EVERY);
        rounds = rounds.wrapping_add(1);
        let id = task.id.borrow().to_string();
        let (me, ns, held, candidates) = (
            task.clone(),
            namespace.clone(),
            version.clone(),
            observer.candidates(&task.name),
        );
        let round = tokio::task::spawn_blocking(move || {
            round(&me, &id, &ns, held, duration, &candidates, list)
        })
        .await
        .unwrap_or_else(|e| Round {
            version: None,
            listed: None,
            leases: Vec::new(),
            error: Some(KubeError::Unreachable {
                url: String::new(),
                reason: e.to_string(),
            }),
        });
        let now = Instant::now();
        version = round.version;
        match round.listed {
            Some(names) => observer.observe_lease_list(names),
            // Listed again next round.
            None if list => rounds = 0,
            None => {}
        }
        for (name, lease) in &round.leases {
            observer.observe_lease(name, lease.as_ref(), now);
            if let Some(id) = lease.as_ref().and_then(|l| l.id.clone()) {
                ids.insert(name.clone(), id);
            }
        }
        match round.error {
            Some(error) if last_error.as_ref() != Some(&error) => {
                tracing::warn!("--peers-from-kube Lease: {error}");
                last_error = Some(error);
            }
            Some(_) => {}
            None => {
                if last_error.take().is_some() {
                    tracing::info!("--peers-from-kube Lease: renewed again");
                }
            }
        }
        let gone = observer.gone(&task.name, now);
        let candidates = observer.candidates(&task.name);
        ids.retain(|name, _| gone.contains(name) || candidates.contains(name));
        if gone != last_gone {
            tracing::info!(
                "--peers-from-kube: routers whose Node is deleted and whose Lease expired: [{}]",
                gone.join(", ")
            );
            last_gone.clone_from(&gone);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if calls
            .send((
                Request::NodesGone {
                    ids: gone
                        .iter()
                        .filter_map(|n| Some((n.clone(), ids.get(n)?.clone())))
                        .collect(),
                    names: gone,
                },
                tx,
            ))
            .await
            .is_err()
        {
            return;
        }
        let _ = rx.await;
    }
}

/// What one round learned: the Lease's version now held, the names in the
/// weft Lease list (when listed), the Leases of the candidates read
/// (`None`: it does not exist), the first error.
struct Round {
    version: Option<String>,
    listed: Option<BTreeSet<String>>,
    leases: Vec<(String, Option<LeaseView>)>,
    error: Option<KubeError>,
}

/// Renews, lists the weft Leases if `list`, then reads the `candidates`'
/// Leases. Blocking.
fn round(
    me: &LeaseTask,
    id: &str,
    namespace: &str,
    held: Option<String>,
    duration: Duration,
    candidates: &[String],
    list: bool,
) -> Round {
    let mut error = None;
    let server = match ApiServer::new(&me.source, &me.sa_dir, false) {
        Ok(server) => server,
        Err(e) => {
            return Round {
                version: held,
                listed: None,
                leases: Vec::new(),
                error: Some(e),
            };
        }
    };
    let collection = format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases");
    let version = match renew(
        &server,
        &collection,
        namespace,
        (&me.name, id),
        held,
        duration,
    ) {
        Ok(version) => Some(version),
        Err(e) => {
            error = Some(e);
            None
        }
    };
    let mut listed = None;
    if list {
        let path = format!(
            "{collection}?labelSelector={}%3D{}",
            LABEL.0.replace('/', "%2F"),
            LABEL.1
        );
        let read = server.get(&path, MAX_BODY).and_then(|(status, body)| {
            check(&server, &path, status)?;
            parse_lease_list(&body)
        });
        match read {
            Ok(views) => listed = Some(views.into_iter().map(|v| v.name).collect()),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    let mut leases = Vec::new();
    for candidate in candidates {
        let path = format!("{collection}/{candidate}");
        let read = server
            .get(&path, MAX_BODY)
            .and_then(|(status, body)| match status {
                404 => Ok(None),
                status => {
                    check(&server, &path, status)?;
                    parse_lease(&body).map(Some)
                }
            });
        match read {
            Ok(lease) => leases.push((candidate.clone(), lease)),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    Round {
        version,
        listed,
        leases,
        error,
    }
}

/// Writes this router's Lease with a fresh `renewTime`: PUT over the
/// version held, or (none held, or the Lease is gone) POST; a conflict
/// reads the current version and tries again. Returns the new version.
fn renew(
    server: &ApiServer,
    collection: &str,
    namespace: &str,
    (name, id): (&str, &str),
    mut held: Option<String>,
    duration: Duration,
) -> Result<String, KubeError> {
    let item = format!("{collection}/{name}");
    for _ in 0..3 {
        let now = SystemTime::now();
        let (status, body) = match &held {
            Some(version) => server.send(
                "PUT",
                &item,
                &lease_body(namespace, name, id, Some(version), duration, now),
                MAX_BODY,
            )?,
            None => {
                let (status, body) = server.get(&item, MAX_BODY)?;
                match status {
                    200 => {
                        held = Some(parse_lease(&body)?.version);
                        continue;
                    }
                    404 => server.send(
                        "POST",
                        collection,
                        &lease_body(namespace, name, id, None, duration, now),
                        MAX_BODY,
                    )?,
                    status => (status, body),
                }
            }
        };
        match status {
            200 | 201 => return Ok(parse_lease(&body)?.version),
            // Someone else's write came first (or our version is stale,
            // or it was created meanwhile): read it again.
            409 | 404 => held = None,
            status => {
                check(server, &item, status)?;
            }
        }
    }
    Err(KubeError::Status {
        url: server.url(&item),
        status: 409,
    })
}

/// The error of a status other than 200.
fn check(server: &ApiServer, path: &str, status: u16) -> Result<(), KubeError> {
    match status {
        200 | 201 => Ok(()),
        401 => Err(KubeError::Unauthorized),
        403 => Err(KubeError::LeaseForbidden),
        status => Err(KubeError::Status {
            url: server.url(path),
            status,
        }),
    }
}
