//! `--peers-from-kube`: seeds from the Kubernetes Node list (DESIGN.md,
//! "Operator contract"; issue 6, "the step beyond a static list").
//!
//! Every 30 s the router lists the cluster's Nodes, takes each node's
//! addresses of the listen address's family (annotated, InternalIP,
//! ExternalIP: [`KubeNode::candidates`]), makes `HOST:PORT` with its own
//! port, and hands each new node to the control task as one seed with its
//! other addresses beside it (`Request::Connect` with `also`: dialled at
//! whichever works, one voter slot), and forgets (`Request::Forget`) the
//! seeds of nodes that are gone. It goes through the same API channel as
//! `weft connect`, so the control task needs no special path.
//!
//! [`nodes`] is pure (parse a NodeList, pick addresses, diff listings) and
//! tested against recorded responses; [`client`] does the I/O (blocking
//! HTTPS with `ureq`, run on tokio's blocking pool); this module holds the
//! error type and the task that feeds the control task.

pub mod client;
pub mod lease;
pub mod lease_task;
pub mod nodes;

pub use client::{KubeSource, list_nodes};
pub use nodes::{KubeNode, KubeSeeds, NodePage, Seed, SeedDiff, parse_node_list, seeds_from_nodes};

use crate::api::proto::Request;
use crate::api::server::ApiCall;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often the node list is read again.
pub const RESYNC: Duration = Duration::from_secs(30);

/// Where Kubernetes mounts the pod's service-account token and CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What goes wrong while listing nodes. Each message ends with what to fix.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KubeError {
    /// Not in a pod and no `--kube-api`.
    #[error(
        "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set: run weft in a Kubernetes pod, or pass --kube-api URL"
    )]
    NotInCluster,
    /// The service-account token cannot be read.
    #[error(
        "cannot read the service-account token {path}: {reason} (set serviceAccountName: weft and leave automountServiceAccountToken on; see deploy/rbac.yaml)"
    )]
    NoToken {
        /// The token file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The cluster CA cannot be read or holds no certificate.
    #[error(
        "cannot use the cluster CA {path}: {reason} (it comes with the service-account token: leave automountServiceAccountToken on)"
    )]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `--kube-api` is not an http(s) URL.
    #[error("--kube-api {0:?} is not an http:// or https:// URL (e.g. https://10.96.0.1:443)")]
    BadUrl(String),
    /// No answer, TLS failure, timeout.
    #[error(
        "cannot reach the Kubernetes API at {url}: {reason} (check that this node reaches the API server and that its certificate is signed by the cluster CA)"
    )]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// HTTP 401.
    #[error(
        "the Kubernetes API rejected the service-account token (HTTP 401): the token is stale or from another cluster; restart the pod"
    )]
    Unauthorized,
    /// HTTP 403.
    #[error(
        "the Kubernetes API forbids listing nodes (HTTP 403): apply deploy/rbac.yaml (ClusterRole weft: get/list/watch nodes, bound to the weft service account)"
    )]
    Forbidden,
    /// HTTP 403 on the router's Lease.
    #[error(
        "the Kubernetes API forbids the router's Lease (HTTP 403): apply deploy/rbac.yaml (Role weft: get/list/create/update leases in the router's namespace)"
    )]
    LeaseForbidden,
    /// Any other HTTP status.
    #[error("the Kubernetes API answered HTTP {status} to {url}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The body is not a NodeList.
    #[error("the Kubernetes API answered something that is not a NodeList: {0}")]
    BadList(String),
}

/// `--peers-from-kube` as configured, read once at start (`main.rs` into
/// `RouterConfig`): the kube module reads no environment and knows nothing
/// of the router's configuration type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeSettings {
    /// Where the API server is.
    pub source: KubeSource,
    /// The service-account directory (test hook `WEFT_KUBE_SA_DIR`,
    /// normally [`SERVICE_ACCOUNT_DIR`]).
    pub sa_dir: PathBuf,
    /// How often to list again (test hook `WEFT_KUBE_RESYNC_SECS`,
    /// normally [`RESYNC`]).
    pub every: Duration,
    /// How often the router's Lease is renewed (test hook
    /// `WEFT_KUBE_LEASE_SECS`, normally [`lease_task::RENEW`]).
    pub lease_every: Duration,
}

impl KubeSettings {
    /// The settings for `source` with the test hooks' values when given
    /// (a resync of zero or a value that is not a number of seconds keeps
    /// the default).
    pub fn new(source: KubeSource, sa_dir: Option<PathBuf>, resync_secs: Option<&str>) -> Self {
        Self {
            source,
            sa_dir: sa_dir.unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR)),
            every: resync_secs
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|s| *s > 0)
                .map_or(RESYNC, Duration::from_secs),
            lease_every: lease_task::RENEW,
        }
    }

    /// With the Lease renewed every `secs` seconds when that is a number
    /// above zero (the test hook).
    pub fn with_lease_secs(mut self, secs: Option<&str>) -> Self {
        if let Some(secs) = secs.and_then(|s| s.parse::<u64>().ok()).filter(|s| *s > 0) {
            self.lease_every = Duration::from_secs(secs);
        }
        self
    }

    /// The Lease task of the router `name`.
    pub fn lease_task(
        &self,
        name: &str,
        id: tokio::sync::watch::Receiver<crate::id::PeerId>,
    ) -> lease_task::LeaseTask {
        lease_task::LeaseTask {
            source: self.source.clone(),
            sa_dir: self.sa_dir.clone(),
            name: name.to_string(),
            id,
            every: self.lease_every,
        }
    }
}

/// The seed task's settings.
#[derive(Clone, Debug)]
pub struct SeedTask {
    /// Where the API server is.
    pub source: KubeSource,
    /// The service-account directory (normally [`SERVICE_ACCOUNT_DIR`]).
    pub sa_dir: PathBuf,
    /// The router's port, for `HOST:PORT`.
    pub port: u16,
    /// Whether the router listens on IPv4 (picks the address family).
    pub ipv4: bool,
    /// The `--peer` seeds: never forgotten by this task.
    pub fixed: Vec<SocketAddr>,
    /// The router's own address, if it listens on one: a node listing it
    /// is this router's.
    pub own: Option<SocketAddr>,
    /// How often to list again.
    pub every: Duration,
    /// This router's name, which is its Node's name in a DaemonSet
    /// (`spec.nodeName`): that Node's ExternalIPs and annotation are what
    /// the router advertises besides its listen address.
    pub node_name: String,
}

/// The task for the router `name` listening on `listen` with the `--peer`
/// `seeds`: its port and family come from `listen`.
pub fn seed_task(
    settings: &KubeSettings,
    name: &str,
    listen: SocketAddr,
    seeds: &[SocketAddr],
) -> SeedTask {
    SeedTask {
        source: settings.source.clone(),
        sa_dir: settings.sa_dir.clone(),
        port: listen.port(),
        ipv4: listen.is_ipv4(),
        fixed: seeds.to_vec(),
        // The router's own address is in the list too (its node is).
        own: (!listen.ip().is_unspecified()).then_some(listen),
        every: settings.every,
        node_name: name.to_string(),
    }
}

/// Runs until the control task goes away: lists the nodes, feeds the
/// changes as `Connect`/`Forget` calls, sleeps `every`. Errors are logged
/// once per change of error (and once when it recovers), never fatal.
/// Each successful listing's node names go to `names` (the Lease task's
/// view of which Nodes exist).
pub async fn run(
    task: SeedTask,
    calls: mpsc::Sender<ApiCall>,
    names: tokio::sync::watch::Sender<Option<std::collections::BTreeSet<String>>>,
) {
    let mut seeds = KubeSeeds::new(task.fixed.iter().copied(), task.own);
    let mut last_error: Option<KubeError> = None;
    let mut advertised: Option<Vec<SocketAddr>> = None;
    let mut tick = tokio::time::interval(task.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if calls.is_closed() {
            return;
        }
        let (source, sa_dir) = (task.source.clone(), task.sa_dir.clone());
        let listed = tokio::task::spawn_blocking(move || list_nodes(&source, &sa_dir))
            .await
            .unwrap_or_else(|e| {
                Err(KubeError::Unreachable {
                    url: String::new(),
                    reason: e.to_string(),
                })
            });
        let nodes = match listed {
            Ok(nodes) => nodes,
            Err(error) => {
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!("--peers-from-kube: {error}");
                    last_error = Some(error);
                }
                continue;
            }
        };
        names.send_replace(Some(nodes.iter().map(|n| n.name.clone()).collect()));
        // Its own Node's endpoints first: a peer behind another NAT may
        // only reach it there (issue 16). Sent on every change, and again
        // after an empty answer (the router may have restarted meanwhile:
        // the call is idempotent).
        if let Some(own) = nodes.iter().find(|n| n.name == task.node_name) {
            let endpoints = own.endpoints(task.port, task.ipv4);
            if advertised.as_ref() != Some(&endpoints) {
                let addresses = endpoints.iter().map(ToString::to_string).collect();
                if call(&calls, Request::Advertise { addresses }).await {
                    tracing::info!(
                        "--peers-from-kube: node {} gives endpoints {}",
                        task.node_name,
                        list(&endpoints)
                    );
                    advertised = Some(endpoints);
                }
            }
        }
        let others: Vec<KubeNode> = nodes
            .iter()
            .filter(|n| n.name != task.node_name)
            .cloned()
            .collect();
        let listed = seeds_from_nodes(&others, task.port, task.ipv4);
        if last_error.take().is_some() {
            tracing::info!(
                nodes = nodes.len(),
                "--peers-from-kube: the node list is readable again"
            );
        }
        let diff = seeds.update(listed);
        if !diff.add.is_empty() || !diff.remove.is_empty() {
            // The addresses go in the message, not in fields, so that the
            // line reads (and greps) the same with or without colours.
            let added: Vec<SocketAddr> = diff.add.iter().map(|s| s.address).collect();
            let also: Vec<String> = diff
                .add
                .iter()
                .filter(|s| !s.also.is_empty())
                .map(|s| format!("{} also at {}", s.address, list(&s.also)))
                .collect();
            tracing::info!(
                nodes = nodes.len(),
                not_ready = nodes.iter().filter(|n| !n.ready).count(),
                "--peers-from-kube: seeds added {} removed {}{}",
                list(&added),
                list(&diff.remove),
                if also.is_empty() {
                    String::new()
                } else {
                    format!("; {}", also.join("; "))
                }
            );
        }
        for seed in diff.add {
            call(
                &calls,
                Request::Connect {
                    address: seed.address.to_string(),
                    also: Some(seed.also.iter().map(ToString::to_string).collect()),
                },
            )
            .await;
        }
        for addr in diff.remove {
            call(
                &calls,
                Request::Forget {
                    address: addr.to_string(),
                },
            )
            .await;
        }
        // The seeds are in: a router waiting for them may vote now.
        call(&calls, Request::SeedsListed).await;
    }
}

/// `[a, b]` for a log line.
fn list(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// Sends one call to the control task and waits for its answer: true
/// when it was taken.
async fn call(calls: &mpsc::Sender<ApiCall>, request: Request) -> bool {
    let (tx, rx) = oneshot::channel();
    if calls.send((request, tx)).await.is_err() {
        return false;
    }
    match rx.await {
        Ok(reply) => match reply.error {
            Some(error) => {
                tracing::warn!("--peers-from-kube: the router refused: {}", error.message);
                false
            }
            None => true,
        },
        Err(_) => false,
    }
}
