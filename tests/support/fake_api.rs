//! A test API server that speaks Kubernetes list/watch over plain http
//! (tests/policy.rs): collections of real objects with resource versions,
//! lists as one page, watches as chunked streams of JSON event lines from
//! a version on. Faults on demand: `gone` (the next watch answers a 410
//! ERROR event), `disconnect` (every open watch is cut), `stop`/`start`
//! (the server is killed: its port refuses, then it comes back with the
//! same objects and versions). Nodes are listed and watched the same way;
//! Leases (tests/node_reclaim.rs) are also read, created and replaced one
//! by one under `/apis/coordination.k8s.io/v1/namespaces/NS/leases[/NAME]`
//! as the real API does it: a PUT whose `resourceVersion` is not the
//! current one answers 409 Conflict, a POST of an existing name 409 too.

use super::in_netns;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The collections served.
pub const COLLECTIONS: [&str; 5] = [
    "/api/v1/namespaces",
    "/api/v1/pods",
    "/apis/networking.k8s.io/v1/networkpolicies",
    NODES,
    LEASES,
];

/// The Nodes (keys `/NAME`).
pub const NODES: &str = "/api/v1/nodes";

/// The Leases of every namespace (keys `NS/NAME`).
pub const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";

/// Where one namespace's Leases are read and written.
const LEASES_IN: &str = "/apis/coordination.k8s.io/v1/namespaces/";

#[derive(Default)]
struct Store {
    version: u64,
    /// path → key → object.
    objects: BTreeMap<&'static str, BTreeMap<String, serde_json::Value>>,
    /// (version, path, type, object), oldest first.
    events: Vec<(u64, &'static str, &'static str, serde_json::Value)>,
    /// The next watch of each kind answers 410.
    gone: bool,
    /// Bumped by `disconnect`: streams of an older epoch end.
    epoch: u64,
}

/// The server: objects survive `stop`/`start`.
pub struct FakeApi {
    ns: String,
    addr: SocketAddr,
    store: Arc<(Mutex<Store>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    /// Request lines seen (`GET /api/v1/pods?watch=1…`).
    pub requests: Arc<Mutex<Vec<String>>>,
}

fn key_of(object: &serde_json::Value) -> String {
    let field = |f: &str| object["metadata"][f].as_str().unwrap_or("").to_string();
    format!("{}/{}", field("namespace"), field("name"))
}

impl FakeApi {
    /// Serves on `addr` inside namespace `ns`.
    pub fn start(ns: &str, addr: SocketAddr) -> Self {
        let mut api = Self {
            ns: ns.into(),
            addr,
            store: Arc::new((Mutex::new(Store::default()), Condvar::new())),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            streams: Arc::new(Mutex::new(Vec::new())),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        api.resume();
        api
    }

    /// Starts serving again after [`Self::stop`].
    pub fn resume(&mut self) {
        self.stop.store(false, Ordering::SeqCst);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (store, stop, streams, requests, addr) = (
            self.store.clone(),
            self.stop.clone(),
            self.streams.clone(),
            self.requests.clone(),
            self.addr,
        );
        self.thread = Some(in_netns(&self.ns, move || {
            let listener = TcpListener::bind(addr).expect("bind the test API server");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(900);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                if let Ok(clone) = stream.try_clone() {
                    streams.lock().unwrap().push(clone);
                }
                let (store, stop, requests) = (store.clone(), stop.clone(), requests.clone());
                std::thread::spawn(move || serve(stream, &store, &stop, &requests));
            }
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("test API server ready");
    }

    /// Kills the server: the port refuses and every connection is cut.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.store.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.disconnect();
    }

    /// Cuts every open connection (watches end with an error).
    pub fn disconnect(&self) {
        {
            let mut store = self.store.0.lock().unwrap();
            store.epoch += 1;
        }
        self.store.1.notify_all();
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// The next watch answers `410 Gone` (as an ERROR event, the way the
    /// API server does when the version is too old).
    pub fn gone(&self) {
        self.store.0.lock().unwrap().gone = true;
        self.disconnect();
    }

    /// Creates or replaces an object (JSON text) in `path`.
    pub fn put(&self, path: &'static str, object: &str) {
        let object: serde_json::Value = serde_json::from_str(object).expect("object JSON");
        let (lock, cvar) = &*self.store;
        store_put(&mut lock.lock().unwrap(), path, object);
        cvar.notify_all();
    }

    /// The object `key` (`namespace/name`) in `path`, if any.
    pub fn get(&self, path: &'static str, key: &str) -> Option<serde_json::Value> {
        let store = self.store.0.lock().unwrap();
        store.objects.get(path)?.get(key).cloned()
    }

    /// The keys in `path` (`namespace/name`).
    pub fn keys(&self, path: &'static str) -> Vec<String> {
        let store = self.store.0.lock().unwrap();
        store
            .objects
            .get(path)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Deletes `namespace/name` (`/name` for a namespace) from `path`.
    pub fn delete(&self, path: &'static str, key: &str) {
        let (lock, cvar) = &*self.store;
        let mut store = lock.lock().unwrap();
        let Some(mut object) = store.objects.entry(path).or_default().remove(key) else {
            return;
        };
        store.version += 1;
        object["metadata"]["resourceVersion"] = store.version.to_string().into();
        let version = store.version;
        store.events.push((version, path, "DELETED", object));
        cvar.notify_all();
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stores `object` in `path` at the next version (its key from its
/// metadata) and records the event; returns it as stored.
fn store_put(
    store: &mut Store,
    path: &'static str,
    mut object: serde_json::Value,
) -> serde_json::Value {
    store.version += 1;
    let version = store.version;
    object["metadata"]["resourceVersion"] = version.to_string().into();
    let key = key_of(&object);
    let kind = if store.objects.entry(path).or_default().contains_key(&key) {
        "MODIFIED"
    } else {
        "ADDED"
    };
    store
        .objects
        .entry(path)
        .or_default()
        .insert(key, object.clone());
    store.events.push((version, path, kind, object.clone()));
    object
}

/// A Lease request under [`LEASES_IN`] (`rest`: `NS/leases[/NAME]`): the
/// status and body to answer.
fn serve_lease(
    method: &str,
    rest: &str,
    body: &[u8],
    store: &(Mutex<Store>, Condvar),
) -> (u16, String) {
    let status = |code: u16, reason: &str| {
        let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code});
        (code, body.to_string())
    };
    let mut parts = rest.split('/');
    let (Some(ns), Some("leases")) = (parts.next(), parts.next()) else {
        return status(404, "NotFound");
    };
    let name = parts.next();
    let (lock, cvar) = store;
    let mut guard = lock.lock().unwrap();
    let current = |guard: &Store, name: &str| {
        guard
            .objects
            .get(LEASES)
            .and_then(|o| o.get(&format!("{ns}/{name}")))
            .cloned()
    };
    let object: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let answer = match (method, name) {
        ("GET", None) => {
            let items: Vec<serde_json::Value> = guard
                .objects
                .get(LEASES)
                .map(|o| {
                    o.values()
                        .filter(|l| l["metadata"]["namespace"] == ns)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let list = serde_json::json!({"kind": "LeaseList", "metadata": {"resourceVersion": guard.version.to_string()}, "items": items});
            (200, list.to_string())
        }
        ("GET", Some(name)) => match current(&guard, name) {
            Some(lease) => (200, lease.to_string()),
            None => status(404, "NotFound"),
        },
        ("POST", None) => match object {
            Some(o) if o["metadata"]["namespace"] == ns && o["metadata"]["name"].is_string() => {
                let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
                if current(&guard, &name).is_some() {
                    status(409, "AlreadyExists")
                } else {
                    (201, store_put(&mut guard, LEASES, o).to_string())
                }
            }
            _ => status(400, "BadRequest"),
        },
        ("PUT", Some(name)) => match (object, current(&guard, name)) {
            (Some(o), Some(now)) if o["metadata"]["name"] == name => {
                if o["metadata"]["resourceVersion"] == now["metadata"]["resourceVersion"] {
                    (200, store_put(&mut guard, LEASES, o).to_string())
                } else {
                    status(409, "Conflict")
                }
            }
            (Some(_), None) => status(404, "NotFound"),
            _ => status(400, "BadRequest"),
        },
        _ => status(405, "MethodNotAllowed"),
    };
    drop(guard);
    cvar.notify_all();
    answer
}

/// One connection: a list (answered and closed) or a watch (streamed until
/// the server stops, a disconnect, or its timeout).
fn serve(
    stream: TcpStream,
    store: &(Mutex<Store>, Condvar),
    stop: &AtomicBool,
    requests: &Mutex<Vec<String>>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    if reader.read_line(&mut first).unwrap_or(0) == 0 {
        return;
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    // Bounded: a Lease is small.
    let mut body = vec![0u8; length.min(1 << 20)];
    if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
        return;
    }
    requests.lock().unwrap().push(first.trim().to_string());
    let mut stream = reader.into_inner();
    let method = first.split(' ').next().unwrap_or("");
    let target = first.split(' ').nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(rest) = path.strip_prefix(LEASES_IN) {
        let (code, body) = serve_lease(method, rest, &body, store);
        let _ = write!(
            stream,
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let Some(path) = COLLECTIONS.iter().copied().find(|c| *c == path) else {
        let _ = write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    };
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    if param("watch").is_none() {
        let body = {
            let store = store.0.lock().unwrap();
            let items: Vec<&serde_json::Value> = store
                .objects
                .get(path)
                .map(|o| o.values().collect())
                .unwrap_or_default();
            let kind = if path == NODES { "NodeList" } else { "List" };
            serde_json::json!({"kind": kind, "metadata": {"resourceVersion": store.version.to_string()}, "items": items})
                .to_string()
        };
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let mut since: u64 = param("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let chunk = |stream: &mut TcpStream, line: &str| {
        let line = format!("{line}\n");
        write!(stream, "{:x}\r\n{line}\r\n", line.len()).and_then(|()| stream.flush())
    };
    let (lock, cvar) = store;
    let mut guard = lock.lock().unwrap();
    if guard.gone {
        guard.gone = false;
        drop(guard);
        let _ = chunk(
            &mut stream,
            r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#,
        );
        let _ = write!(stream, "0\r\n\r\n");
        return;
    }
    let epoch = guard.epoch;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if stop.load(Ordering::SeqCst) || guard.epoch != epoch {
            // Cut, not ended: no final chunk.
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        if Instant::now() >= deadline {
            let _ = write!(stream, "0\r\n\r\n");
            return;
        }
        let pending: Vec<String> = guard
            .events
            .iter()
            .filter(|(v, p, _, _)| *v > since && *p == path)
            .map(|(_, _, kind, object)| {
                serde_json::json!({"type": kind, "object": object}).to_string()
            })
            .collect();
        since = guard.version;
        if !pending.is_empty() {
            drop(guard);
            for line in pending {
                if chunk(&mut stream, &line).is_err() {
                    return;
                }
            }
            guard = lock.lock().unwrap();
            continue;
        }
        guard = cvar
            .wait_timeout(guard, Duration::from_millis(200))
            .unwrap()
            .0;
    }
}
