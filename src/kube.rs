//! `--peers-from-kube`: seeds from the Kubernetes Node list (DESIGN.md,
//! "Operator contract"; issue 6, "the step beyond a static list").
//!
//! Every 30 s the router lists the cluster's Nodes, takes each node's
//! InternalIP (else its ExternalIP) of the listen address's family, makes
//! `HOST:PORT` with its own port, and hands the new addresses to the control
//! task as seeds (`Request::Connect`), and forgets (`Request::Forget`) the
//! seeds of nodes that are gone. It goes through the same API channel as
//! `weft connect`, so the control task needs no special path.
//!
//! The parsing ([`parse_node_list`]) and the bookkeeping ([`KubeSeeds`]) are
//! pure and unit-tested against a recorded response; only [`list_nodes`]
//! does I/O (blocking HTTP with `ureq`, so it runs on tokio's blocking pool).
//!
//! NotReady nodes are kept: weft is the CNI, so a new node stays NotReady
//! until its router runs. Dropping them would be a bootstrapping deadlock.

use crate::api::proto::Request;
use crate::api::server::ApiCall;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often the node list is read again.
pub const RESYNC: Duration = Duration::from_secs(30);

/// Where Kubernetes mounts the pod's service-account token and CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The most bytes one page of the node list may have (500 nodes of a few
/// KB each; a larger answer is refused rather than buffered).
const MAX_PAGE: u64 = 16 * 1024 * 1024;

/// Nodes asked for per page; the list is followed with `continue` tokens.
const PAGE_LIMIT: u32 = 500;

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

/// One Node as far as seeding goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeNode {
    /// `metadata.name`.
    pub name: String,
    /// Whether the `Ready` condition is `True` (reported, not used to filter).
    pub ready: bool,
    /// `InternalIP` addresses, in the order listed.
    pub internal: Vec<IpAddr>,
    /// `ExternalIP` addresses, in the order listed.
    pub external: Vec<IpAddr>,
}

impl KubeNode {
    /// The address to dial: the first InternalIP of the wanted family, else
    /// the first ExternalIP of it; `None` when the node has neither.
    pub fn seed_address(&self, ipv4: bool) -> Option<IpAddr> {
        let family = |a: &&IpAddr| a.is_ipv4() == ipv4;
        self.internal
            .iter()
            .find(family)
            .or_else(|| self.external.iter().find(family))
            .copied()
    }
}

/// One page of a node list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePage {
    /// The nodes on this page.
    pub nodes: Vec<KubeNode>,
    /// The `continue` token for the next page, if any.
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct RawList {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: RawListMeta,
    #[serde(default)]
    items: Option<Vec<RawNode>>,
}

#[derive(Deserialize, Default)]
struct RawListMeta {
    #[serde(default, rename = "continue")]
    next: Option<String>,
}

#[derive(Deserialize)]
struct RawNode {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    status: RawStatus,
}

#[derive(Deserialize, Default)]
struct RawMeta {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct RawStatus {
    #[serde(default)]
    addresses: Vec<RawAddress>,
    #[serde(default)]
    conditions: Vec<RawCondition>,
}

#[derive(Deserialize)]
struct RawAddress {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
struct RawCondition {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    status: String,
}

/// Parses the body of `GET /api/v1/nodes` (a `v1.NodeList`). Addresses that
/// are not IP literals (a `Hostname` entry, a typo) are skipped; a body that
/// is not a NodeList is an error.
pub fn parse_node_list(body: &[u8]) -> Result<NodePage, KubeError> {
    let raw: RawList =
        serde_json::from_slice(body).map_err(|e| KubeError::BadList(e.to_string()))?;
    if let Some(kind) = raw.kind.as_deref()
        && kind != "NodeList"
    {
        return Err(KubeError::BadList(format!("kind {kind:?}")));
    }
    let Some(items) = raw.items else {
        return Err(KubeError::BadList("no items".into()));
    };
    let nodes = items
        .into_iter()
        .map(|node| {
            let of_kind = |kind: &str| {
                node.status
                    .addresses
                    .iter()
                    .filter(|a| a.kind == kind)
                    .filter_map(|a| a.address.trim().parse::<IpAddr>().ok())
                    .collect::<Vec<_>>()
            };
            KubeNode {
                internal: of_kind("InternalIP"),
                external: of_kind("ExternalIP"),
                ready: node
                    .status
                    .conditions
                    .iter()
                    .any(|c| c.kind == "Ready" && c.status == "True"),
                name: node.metadata.name,
            }
        })
        .collect();
    Ok(NodePage {
        nodes,
        next: raw.metadata.next.filter(|c| !c.is_empty()),
    })
}

/// The seed addresses for `nodes`: each node's [`KubeNode::seed_address`]
/// with `port`. Nodes with no address of the family are left out.
pub fn seeds_from_nodes(nodes: &[KubeNode], port: u16, ipv4: bool) -> BTreeSet<SocketAddr> {
    nodes
        .iter()
        .filter_map(|n| n.seed_address(ipv4))
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// What to tell the control task after a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedDiff {
    /// New seeds (`Request::Connect`).
    pub add: Vec<SocketAddr>,
    /// Seeds of nodes that are gone (`Request::Forget`).
    pub remove: Vec<SocketAddr>,
}

/// The seeds this task has given the control task, so that a listing turns
/// into the changes only. Static `--peer` seeds are never forgotten.
#[derive(Clone, Debug, Default)]
pub struct KubeSeeds {
    given: BTreeSet<SocketAddr>,
    fixed: BTreeSet<SocketAddr>,
}

impl KubeSeeds {
    /// Starts with nothing given; `fixed` are the `--peer` seeds.
    pub fn new(fixed: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            given: BTreeSet::new(),
            fixed: fixed.into_iter().collect(),
        }
    }

    /// The seeds given so far.
    pub fn given(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.given.iter().copied()
    }

    /// Takes a full listing's seeds and returns what changed. An empty
    /// listing changes nothing: the node running this router is always in a
    /// real list, so an empty one is a glitch, not every node deleted.
    pub fn update(&mut self, listed: BTreeSet<SocketAddr>) -> SeedDiff {
        if listed.is_empty() {
            return SeedDiff::default();
        }
        let diff = SeedDiff {
            add: listed
                .difference(&self.given)
                .filter(|a| !self.fixed.contains(a))
                .copied()
                .collect(),
            remove: self
                .given
                .difference(&listed)
                .filter(|a| !self.fixed.contains(a))
                .copied()
                .collect(),
        };
        self.given = listed
            .into_iter()
            .filter(|a| !self.fixed.contains(a))
            .collect();
        diff
    }
}

/// Where the API server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeSource {
    /// In a pod: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`
    /// with the service-account token and CA.
    InCluster,
    /// `--kube-api URL`: `https://` uses the service-account token and CA
    /// too; plain `http://` (for tests and `kubectl proxy`) sends no token.
    Url(String),
}

/// Lists every node (following `continue` pages). Blocking: call it from
/// `spawn_blocking`. The token and CA are read again on every call, since a
/// projected service-account token is rotated by the kubelet.
pub fn list_nodes(source: &KubeSource, sa_dir: &Path) -> Result<Vec<KubeNode>, KubeError> {
    let (base, auth) = match source {
        KubeSource::InCluster => {
            let host =
                std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| KubeError::NotInCluster)?;
            let port =
                std::env::var("KUBERNETES_SERVICE_PORT").map_err(|_| KubeError::NotInCluster)?;
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            (format!("https://{host}:{port}"), Some(credentials(sa_dir)?))
        }
        KubeSource::Url(url) if url.starts_with("https://") => {
            (url.clone(), Some(credentials(sa_dir)?))
        }
        KubeSource::Url(url) if url.starts_with("http://") => (url.clone(), None),
        KubeSource::Url(url) => return Err(KubeError::BadUrl(url.clone())),
    };
    let base = base.trim_end_matches('/').to_string();
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None);
    let mut token = None;
    if let Some((bearer, roots)) = auth {
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .build(),
        );
        token = Some(bearer);
    }
    let agent = config.build().new_agent();
    let mut nodes = Vec::new();
    let mut next: Option<String> = None;
    // A bound on pages: a server that keeps handing out `continue` tokens
    // cannot keep this task busy for ever.
    for _ in 0..1000 {
        let mut url = format!("{base}/api/v1/nodes?limit={PAGE_LIMIT}");
        if let Some(token) = &next {
            url.push_str("&continue=");
            url.push_str(&percent_encode(token));
        }
        let mut request = agent.get(&url).header("Accept", "application/json");
        if let Some(token) = &token {
            request = request.header("Authorization", &format!("Bearer {}", token.0));
        }
        let mut response = request.call().map_err(|e| KubeError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        match response.status().as_u16() {
            200 => {}
            401 => return Err(KubeError::Unauthorized),
            403 => return Err(KubeError::Forbidden),
            status => return Err(KubeError::Status { url, status }),
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_PAGE)
            .read_to_vec()
            .map_err(|e| KubeError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let page = parse_node_list(&body)?;
        nodes.extend(page.nodes);
        next = page.next;
        if next.is_none() {
            return Ok(nodes);
        }
    }
    Err(KubeError::BadList("more than 1000 pages".into()))
}

/// A service-account token: a credential, so it never prints.
struct Bearer(String);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

/// The bearer token and the CA certificates from the service-account dir.
fn credentials(sa_dir: &Path) -> Result<(Bearer, Vec<ureq::tls::Certificate<'static>>), KubeError> {
    let token_path = sa_dir.join("token");
    let token = std::fs::read_to_string(&token_path)
        .map_err(|e| KubeError::NoToken {
            path: token_path.clone(),
            reason: e.to_string(),
        })?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(KubeError::NoToken {
            path: token_path,
            reason: "it is empty".into(),
        });
    }
    let ca_path = sa_dir.join("ca.crt");
    let pem = std::fs::read(&ca_path).map_err(|e| KubeError::BadCa {
        path: ca_path.clone(),
        reason: e.to_string(),
    })?;
    let roots: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
            _ => None,
        })
        .collect();
    if roots.is_empty() {
        return Err(KubeError::BadCa {
            path: ca_path,
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok((Bearer(token), roots))
}

/// Percent-encodes a `continue` token for a query string.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
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
    /// The `--peer` seeds and the router's own address: never given by
    /// this task, never forgotten.
    pub fixed: Vec<SocketAddr>,
    /// How often to list again.
    pub every: Duration,
}

/// The task for a router: its port and family, its `--peer` seeds, and
/// the test hooks `WEFT_KUBE_RESYNC_SECS` (default 30) and
/// `WEFT_KUBE_SA_DIR` (default [`SERVICE_ACCOUNT_DIR`]).
pub fn seed_task(config: &crate::config::RouterConfig, source: KubeSource) -> SeedTask {
    SeedTask {
        source,
        sa_dir: std::env::var_os("WEFT_KUBE_SA_DIR")
            .map_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR), PathBuf::from),
        port: config.listen.port(),
        ipv4: config.listen.is_ipv4(),
        // The router's own address is in the list too (its node is):
        // neither given nor forgotten, like a --peer seed.
        fixed: config
            .seeds
            .iter()
            .copied()
            .chain((!config.listen.ip().is_unspecified()).then_some(config.listen))
            .collect(),
        every: std::env::var("WEFT_KUBE_RESYNC_SECS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map_or(RESYNC, Duration::from_secs),
    }
}

/// Runs until the control task goes away: lists the nodes, feeds the
/// changes as `Connect`/`Forget` calls, sleeps `every`. Errors are logged
/// once per change of error (and once when it recovers), never fatal.
pub async fn run(task: SeedTask, calls: mpsc::Sender<ApiCall>) {
    let mut seeds = KubeSeeds::new(task.fixed.iter().copied());
    let mut last_error: Option<KubeError> = None;
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
        let listed = seeds_from_nodes(&nodes, task.port, task.ipv4);
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
            tracing::info!(
                nodes = nodes.len(),
                not_ready = nodes.iter().filter(|n| !n.ready).count(),
                "--peers-from-kube: seeds added {} removed {}",
                list(&diff.add),
                list(&diff.remove)
            );
        }
        for addr in diff.add {
            call(
                &calls,
                Request::Connect {
                    address: addr.to_string(),
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
    }
}

/// `[a, b]` for a log line.
fn list(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// Sends one call to the control task and waits for its answer.
async fn call(calls: &mpsc::Sender<ApiCall>, request: Request) {
    let (tx, rx) = oneshot::channel();
    if calls.send((request, tx)).await.is_err() {
        return;
    }
    if let Ok(reply) = rx.await
        && let Some(error) = reply.error
    {
        tracing::warn!(
            "--peers-from-kube: the router refused a seed: {}",
            error.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn a_node_without_an_internal_ip_is_dialled_at_its_external_ip() {
        let node = KubeNode {
            name: "edge".into(),
            ready: true,
            internal: vec![],
            external: vec!["203.0.113.7".parse().expect("ip")],
        };
        assert_eq!(node.seed_address(true), "203.0.113.7".parse().ok());
        assert_eq!(node.seed_address(false), None);
    }

    #[test]
    fn the_listen_family_picks_the_address_on_a_dual_stack_node() {
        let node = KubeNode {
            name: "dual".into(),
            ready: true,
            internal: vec![
                "fd00::5".parse().expect("ip"),
                "192.0.2.5".parse().expect("ip"),
            ],
            external: vec![],
        };
        assert_eq!(node.seed_address(true), "192.0.2.5".parse().ok());
        assert_eq!(node.seed_address(false), "fd00::5".parse().ok());
    }

    #[test]
    fn a_listing_turns_into_connects_and_forgets_of_the_changes_only() {
        let mut seeds = KubeSeeds::new([addr("192.0.2.9:6783")]);
        let first = seeds.update([addr("192.0.2.1:6783"), addr("192.0.2.9:6783")].into());
        assert_eq!(first.add, vec![addr("192.0.2.1:6783")]);
        assert!(first.remove.is_empty());
        let same = seeds.update([addr("192.0.2.1:6783"), addr("192.0.2.9:6783")].into());
        assert_eq!(same, SeedDiff::default());
        let moved = seeds.update([addr("192.0.2.2:6783")].into());
        assert_eq!(moved.add, vec![addr("192.0.2.2:6783")]);
        // The --peer seed 192.0.2.9 is not forgotten when its node goes.
        assert_eq!(moved.remove, vec![addr("192.0.2.1:6783")]);
    }

    #[test]
    fn an_empty_listing_forgets_nothing() {
        let mut seeds = KubeSeeds::new([]);
        seeds.update([addr("192.0.2.1:6783")].into());
        assert_eq!(seeds.update(BTreeSet::new()), SeedDiff::default());
        assert_eq!(seeds.given().count(), 1);
    }

    #[test]
    fn a_status_object_or_garbage_is_not_a_node_list() {
        let status = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":403}"#;
        assert!(matches!(
            parse_node_list(status),
            Err(KubeError::BadList(_))
        ));
        assert!(parse_node_list(b"\x00not json").is_err());
        assert!(parse_node_list(b"{}").is_err());
    }

    #[test]
    fn continue_tokens_are_percent_encoded() {
        assert_eq!(percent_encode("eyJ2Ijo+/="), "eyJ2Ijo%2B%2F%3D");
    }

    #[test]
    fn plain_http_is_refused_for_other_schemes() {
        assert_eq!(
            list_nodes(
                &KubeSource::Url("ftp://x".into()),
                Path::new("/nonexistent")
            ),
            Err(KubeError::BadUrl("ftp://x".into()))
        );
    }

    #[test]
    fn https_without_a_token_says_what_to_fix() {
        let error = list_nodes(
            &KubeSource::Url("https://192.0.2.1:6443".into()),
            Path::new("/nonexistent-weft-sa"),
        )
        .expect_err("no token");
        assert!(matches!(error, KubeError::NoToken { .. }));
        assert!(error.to_string().contains("serviceAccountName"));
    }
}
