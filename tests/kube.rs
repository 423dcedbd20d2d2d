//! `--peers-from-kube`: the node-list parser against a recorded kubeadm
//! response, and a router that finds its peers from a fake Kubernetes API
//! served over plain http inside the test's namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::fake_kube::FakeApi;
use support::*;
use weft::kube::{KubeSeeds, parse_node_list, seeds_from_nodes};

const BIN: &str = env!("CARGO_BIN_EXE_weft");

/// `kubectl get --raw /api/v1/nodes` of a three-node kubeadm cluster: a
/// tainted control plane, a worker with both address kinds, and a NotReady
/// worker that has only an ExternalIP.
const THREE_NODES: &[u8] = include_bytes!("data/nodes-kubeadm-3.json");
/// The same cluster after `kubectl delete node worker-2`.
const TWO_NODES: &[u8] = include_bytes!("data/nodes-kubeadm-2.json");
/// The API's answer when the service account may not list nodes.
const FORBIDDEN: &[u8] = include_bytes!("data/nodes-forbidden.json");

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn the_recorded_kubeadm_node_list_yields_one_seed_per_node() {
    let page = parse_node_list(THREE_NODES).unwrap();
    assert_eq!(page.next, None);
    let names: Vec<&str> = page.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["cp-1", "worker-1", "worker-2"]);
    let ready: Vec<bool> = page.nodes.iter().map(|n| n.ready).collect();
    assert_eq!(ready, [true, true, false]);
    // InternalIP first, then ExternalIP (worker-1); worker-2 has only an
    // ExternalIP; the NotReady node is kept (its router may be what makes
    // it Ready); the Hostname entries are not addresses.
    let seeds = seeds_from_nodes(&page.nodes, 6783, true);
    assert_eq!(
        seeds,
        vec![
            vec![addr("192.0.2.10:6783")],
            vec![addr("192.0.2.11:6783"), addr("198.51.100.11:6783")],
            vec![addr("192.0.2.12:6783")],
        ]
    );
    assert!(seeds_from_nodes(&page.nodes, 6783, false).is_empty());
}

#[test]
fn a_deleted_node_turns_into_one_forget() {
    let mut seeds = KubeSeeds::new([], []);
    let three = seeds_from_nodes(&parse_node_list(THREE_NODES).unwrap().nodes, 6783, true);
    assert_eq!(seeds.update(three).add.len(), 3);
    let two = seeds_from_nodes(&parse_node_list(TWO_NODES).unwrap().nodes, 6783, true);
    let diff = seeds.update(two);
    assert!(diff.add.is_empty());
    assert_eq!(diff.remove, vec![addr("192.0.2.12:6783")]);
}

#[test]
fn a_forbidden_status_is_not_a_node_list() {
    assert!(parse_node_list(FORBIDDEN).is_err());
}

fn log_of(r: &Router) -> String {
    std::fs::read_to_string(r.log_path()).unwrap_or_default()
}

fn established_with(r: &Router) -> BTreeSet<String> {
    r.status()
        .and_then(|s| {
            Some(
                s["connections"]
                    .as_array()?
                    .iter()
                    .filter(|c| c["established"] == true)
                    .map(|c| c["peer"].as_str().unwrap_or("").to_string())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// n0 is started with no `--peer` at all, only `--peers-from-kube` against
/// a fake API on n1's underlay address; n1 and n2 have no seeds either, so
/// every connection in this mesh exists because n0 dialled what the node
/// list named (n0's own address, cp-1's, is recognised and not dialled).
#[test]
fn a_router_dials_the_nodes_the_kubernetes_api_lists() {
    if !require_root("a_router_dials_the_nodes_the_kubernetes_api_lists") {
        return;
    }
    let cluster = Cluster::new(3);
    let api_addr = SocketAddr::from((cluster.nodes[1].underlay, 8080));
    let api = FakeApi::start(&cluster.nodes[1].ns.name, api_addr, 403, FORBIDDEN);
    // No pods: the ring (split by name) waits until the routers know each
    // other, which is what the node list is for.
    let mut routers = new_routers(
        Path::new(BIN),
        &cluster,
        3,
        |_| vec![],
        |i, r| {
            if i == 0 {
                r.args.extend([
                    "--peers-from-kube".to_string(),
                    "--kube-api".into(),
                    format!("http://{api_addr}"),
                ]);
                r.env.push(("WEFT_KUBE_RESYNC_SECS".into(), "1".into()));
            }
        },
    );
    for r in &mut routers {
        r.start();
    }

    // 403: one log line naming the RBAC fix, however many times it is
    // retried; the router stays up and dials nothing.
    let retried = wait_until(Duration::from_secs(10), || {
        api.requests()
            .iter()
            .filter(|h| h.starts_with("GET /api/v1/nodes"))
            .count()
            >= 3
    });
    assert!(retried, "the router did not keep listing nodes");
    let log = log_of(&routers[0]);
    assert_eq!(
        log.matches("forbids listing nodes (HTTP 403)").count(),
        1,
        "the 403 is logged once per change:\n{log}"
    );
    // The Lease task (same RBAC file) says so once too.
    assert_eq!(
        log.matches("forbids the router's Lease (HTTP 403)").count(),
        1,
        "{log}"
    );
    assert!(log.contains("deploy/rbac.yaml"), "{log}");
    assert!(established_with(&routers[0]).is_empty());

    // The RBAC is fixed: n0 dials worker-1's InternalIP and worker-2's
    // ExternalIP.
    api.answer(200, THREE_NODES);
    let meshed = wait_until(Duration::from_secs(20), || {
        established_with(&routers[0]) == BTreeSet::from(["n1".to_string(), "n2".to_string()])
    });
    assert!(
        meshed,
        "n0 did not connect to the listed nodes: {:?}\n{}",
        established_with(&routers[0]),
        routers[0].log_tail()
    );
    assert!(log_of(&routers[0]).contains("readable again"));
    // Its own address (cp-1's) is not even handed over as a seed.
    assert!(
        log_of(&routers[0]).contains("seeds added [192.0.2.11:6783, 192.0.2.12:6783] removed []"),
        "{}",
        routers[0].log_tail()
    );
    // n1 and n2 learn each other through n0's gossip: a full mesh.
    let full = wait_until(Duration::from_secs(20), || {
        routers.iter().all(|r| r.established_peers() == 2)
    });
    assert!(
        full,
        "the mesh did not complete:\n{}",
        routers[1].log_tail()
    );
    let requests = api.requests();
    // The node list and, besides, the router's Lease.
    let lease = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    assert!(
        requests.iter().all(|h| {
            h.starts_with("GET /api/v1/nodes?limit=500 HTTP/1.1\r\n") || h.contains(lease)
        }),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .all(|h| !h.to_ascii_lowercase().contains("authorization")),
        "a token went out over plain http: {requests:?}"
    );

    // `kubectl delete node worker-2`: its seed is forgotten.
    api.answer(200, TWO_NODES);
    let forgotten = wait_until(Duration::from_secs(10), || {
        log_of(&routers[0]).contains("removed [192.0.2.12:6783]")
    });
    assert!(forgotten, "{}", routers[0].log_tail());
    assert!(routers[0].status().is_some(), "the router stays up");

    // n0's own Node gets an ExternalIP (a node behind 1:1 NAT, issue 16):
    // n0 advertises it, in its signed entry, so that n1 lists it for n0;
    // its own node is never a seed of its own.
    api.answer(200, OWN_NODE_WITH_EXTERNAL_IP);
    let external = "203.0.113.70:6783";
    let advertised = wait_until(Duration::from_secs(10), || {
        routers[0]
            .status()
            .is_some_and(|s| s["advertised"] == serde_json::json!(["192.0.2.10:6783", external]))
    });
    assert!(
        advertised,
        "n0 does not advertise its Node's ExternalIP: {:?}\n{}",
        routers[0].status().map(|s| s["advertised"].clone()),
        routers[0].log_tail()
    );
    let gossiped = wait_until(Duration::from_secs(10), || {
        routers[1].status().is_some_and(|s| {
            s["peers"].as_array().is_some_and(|peers| {
                peers.iter().any(|p| {
                    p["name"] == "n0"
                        && p["addresses"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|a| a == external))
                })
            })
        })
    });
    assert!(gossiped, "n1 never learned n0's ExternalIP endpoint");
    assert!(
        !log_of(&routers[0]).contains("seeds added [192.0.2.10"),
        "n0 took its own node as a seed"
    );
}

/// Node n0 itself, with an ExternalIP beside its InternalIP, and worker-1.
const OWN_NODE_WITH_EXTERNAL_IP: &[u8] = br#"{"kind":"NodeList","apiVersion":"v1",
  "metadata":{"resourceVersion":"9"},"items":[
  {"metadata":{"name":"n0"},"status":{"addresses":[
    {"type":"InternalIP","address":"192.0.2.10"},
    {"type":"ExternalIP","address":"203.0.113.70"}]}},
  {"metadata":{"name":"worker-1"},"status":{"addresses":[
    {"type":"InternalIP","address":"192.0.2.11"}]}}]}"#;

/// A certificate authority and a server certificate for `ip`, made with
/// the openssl command line in `dir`: (ca.crt, server.crt, server.key).
fn make_pki(dir: &Path, ip: &str, label: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join(format!("{label}-ca.key"));
    let ca = dir.join(format!("{label}-ca.crt"));
    let key = dir.join(format!("{label}-server.key"));
    let csr = dir.join(format!("{label}-server.csr"));
    let cert = dir.join(format!("{label}-server.crt"));
    let ext = dir.join(format!("{label}-server.ext"));
    let openssl = |args: &[&str]| {
        let out = run_timeout(Command::new("openssl").args(args), 30).unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |p: &Path| p.display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
        "-days",
        "2",
        "-subj",
        &format!("/CN={label}-kubernetes-ca"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
        "-subj",
        "/CN=kube-apiserver",
    ]);
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=IP:{ip},DNS:kubernetes.default.svc\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"
        ),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-out",
        &p(&cert),
        "-days",
        "2",
        "-extfile",
        &p(&ext),
    ]);
    (ca, cert, key)
}

/// A TLS API server (Python's http.server behind ssl): 401 unless the
/// bearer token matches, else the recorded node list.
const TLS_API: &str = r#"
import http.server, ssl, sys
host, port, cert, key, token, body = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], open(sys.argv[6], 'rb').read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get('Authorization') == 'Bearer ' + token and self.path.startswith('/api/v1/nodes?')
        data = body if ok else b'{"kind":"Status","code":401}'
        self.send_response(200 if ok else 401)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((host, port), H)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print('ready', flush=True)
server.serve_forever()
"#;

/// The in-cluster path, for real: KUBERNETES_SERVICE_HOST/PORT, a bearer
/// token and the cluster CA from the service-account directory, HTTPS with
/// an IP-address certificate. A CA that did not sign the server's
/// certificate is refused (one log line); the CA file is read again at
/// every listing, so fixing it is enough.
#[test]
fn a_router_lists_nodes_in_cluster_over_https_with_the_cluster_ca_and_token() {
    let test = "a_router_lists_nodes_in_cluster_over_https_with_the_cluster_ca_and_token";
    if !require_root(test) {
        return;
    }
    let cluster = Cluster::new(3);
    let pki = TempDir::new("pki");
    let api_ip = cluster.nodes[1].underlay.to_string();
    let (ca, cert, key) = make_pki(&pki.path, &api_ip, "real");
    let (other_ca, _, _) = make_pki(&pki.path, &api_ip, "other");
    let sa = pki.path.join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), "eyJhbGciOiJSUzI1NiJ9.test-token\n").unwrap();
    std::fs::copy(&other_ca, sa.join("ca.crt")).unwrap();
    let nodes = pki.path.join("nodes.json");
    std::fs::write(&nodes, THREE_NODES).unwrap();
    let script = pki.path.join("api.py");
    std::fs::write(&script, TLS_API).unwrap();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &cluster.nodes[1].ns.name,
            "timeout",
            "120",
            "python3",
        ])
        .arg(&script)
        .args([&api_ip, "6443"])
        .args([&cert, &key])
        .arg("eyJhbGciOiJSUzI1NiJ9.test-token")
        .arg(&nodes)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");

    // No pods: the ring (split by name) waits until the routers know each
    // other, which is what the node list is for.
    let mut routers = new_routers(
        Path::new(BIN),
        &cluster,
        3,
        |_| vec![],
        |i, r| {
            if i == 0 {
                r.args.push("--peers-from-kube".into());
                r.env.extend([
                    ("KUBERNETES_SERVICE_HOST".to_string(), api_ip.clone()),
                    ("KUBERNETES_SERVICE_PORT".into(), "6443".into()),
                    ("WEFT_KUBE_SA_DIR".into(), sa.display().to_string()),
                    ("WEFT_KUBE_RESYNC_SECS".into(), "1".into()),
                ]);
            }
        },
    );
    for r in &mut routers {
        r.start();
    }
    let refused = wait_until(Duration::from_secs(10), || {
        log_of(&routers[0]).contains("cannot reach the Kubernetes API")
    });
    assert!(refused, "{}", routers[0].log_tail());
    assert!(
        log_of(&routers[0]).contains("invalid peer certificate"),
        "{}",
        routers[0].log_tail()
    );
    std::thread::sleep(Duration::from_secs(2));
    // The node list's line (the Lease task says so once too, apart).
    assert_eq!(
        log_of(&routers[0])
            .matches("--peers-from-kube: cannot reach the Kubernetes API")
            .count(),
        1,
        "logged once per change:\n{}",
        routers[0].log_tail()
    );
    assert!(established_with(&routers[0]).is_empty());

    std::fs::copy(&ca, sa.join("ca.crt")).unwrap();
    let meshed = wait_until(Duration::from_secs(20), || {
        established_with(&routers[0]) == BTreeSet::from(["n1".to_string(), "n2".to_string()])
    });
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        meshed,
        "n0 did not connect to the listed nodes:\n{}",
        routers[0].log_tail()
    );
    assert!(log_of(&routers[0]).contains("readable again"));
}

#[test]
fn kube_api_without_peers_from_kube_is_one_clear_line() {
    let dir = TempDir::new("kubeflag");
    let out = confined_command(BIN)
        .args([
            "router",
            "--insecure",
            "--kube-api",
            "http://192.0.2.1:8080",
        ])
        .arg("--state-dir")
        .arg(dir.path.join("state"))
        .arg("--api")
        .arg(dir.path.join("weft.sock"))
        .env_remove("WEFT_PEERS_FROM_KUBE")
        .env_remove("WEFT_NETWORK_POLICY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.contains("add --peers-from-kube"), "{said}");
}
