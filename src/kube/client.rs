//! The I/O half of `--peers-from-kube`: one blocking HTTP client call per
//! page of `GET /api/v1/nodes`, with the pod's service-account token and
//! cluster CA (rustls via `ureq`). Run it on tokio's blocking pool.

use super::KubeError;
use super::nodes::{KubeNode, parse_node_list};
use std::path::Path;
use std::time::Duration;

/// The most bytes one page of the node list may have (500 nodes of a few
/// KB each; a larger answer is refused rather than buffered).
const MAX_PAGE: u64 = 16 * 1024 * 1024;

/// Nodes asked for per page; the list is followed with `continue` tokens.
const PAGE_LIMIT: u32 = 500;

/// Where the API server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeSource {
    /// In a pod: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`
    /// with the service-account token and CA. The two variables are read
    /// once at start (`main.rs`); either missing is
    /// [`KubeError::NotInCluster`] at every listing, not a refusal to start.
    InCluster {
        /// `$KUBERNETES_SERVICE_HOST`.
        host: Option<String>,
        /// `$KUBERNETES_SERVICE_PORT`.
        port: Option<String>,
    },
    /// `--kube-api URL`: `https://` uses the service-account token and CA
    /// too; plain `http://` (for tests and `kubectl proxy`) sends no token.
    Url(String),
}

/// How long one read of a watch stream may wait: the API server ends a
/// watch after its `timeoutSeconds` (300 s) and sends bookmarks meanwhile;
/// a silent connection this long is dead (a partition, a lost server).
pub const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(330);

/// One API server as configured: the HTTP agent, the base URL and the
/// token. Built per request (the projected token is rotated by the kubelet,
/// so it is read again each time). Blocking: use it off the async runtime.
pub struct ApiServer {
    agent: ureq::Agent,
    base: String,
    token: Option<Bearer>,
}

/// How a watch stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server closed it (its timeout): watch again.
    Closed,
    /// The server answered this HTTP status instead of a stream.
    Status(u16),
    /// The line callback asked to stop.
    Stopped,
}

impl ApiServer {
    /// The server at `source`. `stream`: for watches (no overall time
    /// limit, [`WATCH_READ_TIMEOUT`] per read instead of 10 s per call).
    pub fn new(source: &KubeSource, sa_dir: &Path, stream: bool) -> Result<Self, KubeError> {
        let (base, auth) = match source {
            KubeSource::InCluster { host, port } => {
                let (Some(host), Some(port)) = (host, port) else {
                    return Err(KubeError::NotInCluster);
                };
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                (format!("https://{host}:{port}"), Some(credentials(sa_dir)?))
            }
            KubeSource::Url(url) if url.starts_with("https://") => {
                (url.clone(), Some(credentials(sa_dir)?))
            }
            KubeSource::Url(url) if url.starts_with("http://") => (url.clone(), None),
            KubeSource::Url(url) => return Err(KubeError::BadUrl(url.clone())),
        };
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None);
        config = if stream {
            config
                .timeout_connect(Some(Duration::from_secs(10)))
                .timeout_recv_response(Some(Duration::from_secs(10)))
                .timeout_per_read(Some(WATCH_READ_TIMEOUT))
        } else {
            config.timeout_global(Some(Duration::from_secs(10)))
        };
        let mut token = None;
        if let Some((bearer, roots)) = auth {
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                    .build(),
            );
            token = Some(bearer);
        }
        Ok(Self {
            agent: config.build().new_agent(),
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// The full URL of `path_query` (`/api/v1/pods?limit=500`).
    pub fn url(&self, path_query: &str) -> String {
        format!("{}{path_query}", self.base)
    }

    fn call(&self, url: &str) -> Result<ureq::http::Response<ureq::Body>, KubeError> {
        let mut request = self.agent.get(url).header("Accept", "application/json");
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {}", token.0));
        }
        request.call().map_err(|e| KubeError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    /// `method path` with a JSON `body` (`POST`/`PUT` of one object): the
    /// status and at most `limit` bytes of the answer.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        limit: u64,
    ) -> Result<(u16, Vec<u8>), KubeError> {
        let url = self.url(path);
        let unreachable = |e: ureq::Error| KubeError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        };
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {}", token.0));
        }
        let request = request
            .body(body.to_vec())
            .map_err(|e| unreachable(ureq::Error::Http(e)))?;
        let response = self.agent.run(request).map_err(unreachable)?;
        read(response, url, limit)
    }

    /// `GET path_query`: the status and at most `limit` bytes of body (a
    /// longer body is an error, not buffered).
    pub fn get(&self, path_query: &str, limit: u64) -> Result<(u16, Vec<u8>), KubeError> {
        let url = self.url(path_query);
        let response = self.call(&url)?;
        read(response, url, limit)
    }

    /// `GET path_query` as a stream of lines (a watch: one JSON event per
    /// line, chunked): `on_open` once the server accepted it, then each
    /// line to `on_line` without its newline until it returns `false` or
    /// the stream ends. A line longer than `max_line` is handed over cut at `max_line + 1` bytes (so the callback can tell)
    /// and ends the stream: memory stays bounded whatever the server sends.
    pub fn watch(
        &self,
        path_query: &str,
        max_line: usize,
        on_open: impl FnOnce(),
        mut on_line: impl FnMut(&[u8]) -> bool,
    ) -> Result<StreamEnd, KubeError> {
        use std::io::{BufRead, Read};
        let url = self.url(path_query);
        let response = self.call(&url)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Ok(StreamEnd::Status(status));
        }
        on_open();
        let mut reader = std::io::BufReader::new(response.into_body().into_reader());
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader)
                .take(max_line as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| KubeError::Unreachable {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            if read == 0 {
                return Ok(StreamEnd::Closed);
            }
            let complete = line.last() == Some(&b'\n');
            if complete {
                line.pop();
            }
            if !on_line(&line) {
                return Ok(StreamEnd::Stopped);
            }
            if !complete && line.len() > max_line {
                return Ok(StreamEnd::Stopped);
            }
        }
    }
}

/// The status and at most `limit` bytes of the body of `response` (from
/// `url`): a longer body is an error, not buffered.
fn read(
    mut response: ureq::http::Response<ureq::Body>,
    url: String,
    limit: u64,
) -> Result<(u16, Vec<u8>), KubeError> {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| KubeError::Unreachable {
            url,
            reason: e.to_string(),
        })?;
    Ok((status, body))
}

/// Lists every node (following `continue` pages). Blocking: call it from
/// `spawn_blocking`. The token and CA are read again on every call, since a
/// projected service-account token is rotated by the kubelet.
pub fn list_nodes(source: &KubeSource, sa_dir: &Path) -> Result<Vec<KubeNode>, KubeError> {
    let server = ApiServer::new(source, sa_dir, false)?;
    let mut nodes = Vec::new();
    let mut next: Option<String> = None;
    // A bound on pages: a server that keeps handing out `continue` tokens
    // cannot keep this task busy for ever.
    for _ in 0..1000 {
        let mut path = format!("/api/v1/nodes?limit={PAGE_LIMIT}");
        if let Some(token) = &next {
            path.push_str("&continue=");
            path.push_str(&percent_encode(token));
        }
        let (status, body) = server.get(&path, MAX_PAGE)?;
        match status {
            200 => {}
            401 => return Err(KubeError::Unauthorized),
            403 => return Err(KubeError::Forbidden),
            status => {
                return Err(KubeError::Status {
                    url: server.url(&path),
                    status,
                });
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
