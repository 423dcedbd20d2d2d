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

/// Lists every node (following `continue` pages). Blocking: call it from
/// `spawn_blocking`. The token and CA are read again on every call, since a
/// projected service-account token is rotated by the kubelet.
pub fn list_nodes(source: &KubeSource, sa_dir: &Path) -> Result<Vec<KubeNode>, KubeError> {
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
