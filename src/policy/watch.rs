//! List + watch of one Kubernetes resource, sans-IO (DESIGN.md
//! "NetworkPolicy"; issue 18, "Source of truth" and "Failure").
//!
//! The driver asks [`Watcher::poll_request`] which GET to make, feeds the
//! answer back (`handle_list_page` for each page of a list,
//! `handle_watch_line` for each line of a chunked watch stream,
//! `handle_stream_end` when a watch ends cleanly, `handle_failure` for
//! anything else) and drains [`Watcher::poll_change`]. It sleeps until
//! [`Watcher::poll_timeout`]. Drain order after each input: changes, then
//! the next request, then the timeout.
//!
//! - A list is read in pages (`limit`, `continue`) and handed on as one
//!   [`Change::Reset`] once complete, so objects deleted while the watch was
//!   down disappear; its `resourceVersion` starts the watch.
//! - Watch events carry the resource version on; BOOKMARK events only move
//!   it. An ERROR event or a failure with HTTP 410 (Gone: the version is too
//!   old) means list again.
//! - Any other failure waits, doubling from [`BACKOFF_MIN`] to
//!   [`BACKOFF_MAX`], then resumes (watch from the last version if there is
//!   one). Since the first failure the data is stale ([`Watcher::stale_since`]);
//!   nothing is dropped meanwhile: the last rules stay (never fail open,
//!   never fail closed).
//!
//! No clock, no socket: `now` comes in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The first wait after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Objects per list page.
pub const PAGE_LIMIT: u32 = 500;
/// How long the API server keeps one watch open before we open another.
pub const WATCH_TIMEOUT_SECS: u32 = 300;
/// The longest line (one event) accepted from a watch stream.
pub const MAX_EVENT_BYTES: usize = super::model::MAX_OBJECT_BYTES + 4096;

/// Something learned from the API server, for the cluster state.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A complete list: these objects, and no others, exist.
    Reset(Vec<serde_json::Value>),
    /// Added or modified.
    Upsert(serde_json::Value),
    /// Deleted (the object as it was).
    Delete(serde_json::Value),
}

/// Why input was not taken. The watcher's state is unchanged unless said.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    /// A page or an event that is not what the API sends; the page is
    /// dropped and the list starts again (state changed: list again).
    #[error("malformed answer from the API server: {0}")]
    Malformed(String),
    /// Input the watcher was not waiting for (a driver bug); ignored.
    #[error("unexpected {0} (no such request outstanding)")]
    Unexpected(&'static str),
}

/// Why the driver should wake up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The back-off after a failure is over.
    Retry,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// A list (page) should be requested.
    List,
    /// A list page is outstanding.
    Listing,
    /// A watch should be opened.
    Watch,
    /// A watch stream is open.
    Watching,
    /// Waiting until the instant before trying again.
    Backoff(Instant),
}

/// One GET for the driver to make: `path` is the resource's collection
/// path, `query` its query string (without `?`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Get {
    /// E.g. `/api/v1/pods`.
    pub path: &'static str,
    /// E.g. `watch=1&resourceVersion=42&allowWatchBookmarks=true`.
    pub query: String,
    /// Whether the answer is a watch stream (read line by line).
    pub stream: bool,
}

/// The list + watch state of one resource.
#[derive(Debug)]
pub struct Watcher {
    path: &'static str,
    phase: Phase,
    version: Option<String>,
    next_page: Option<String>,
    pages: Vec<serde_json::Value>,
    backoff: Duration,
    stale_since: Option<Instant>,
    changes: VecDeque<Change>,
}

#[derive(serde::Deserialize)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
    #[serde(default, rename = "continue")]
    next: String,
}

#[derive(serde::Deserialize)]
struct List {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

impl Watcher {
    /// A watcher of the collection at `path` (e.g. `/api/v1/namespaces`),
    /// starting with a list. Stale until the first list completes.
    pub fn new(path: &'static str, now: Instant) -> Self {
        Self {
            path,
            phase: Phase::List,
            version: None,
            next_page: None,
            pages: Vec::new(),
            backoff: BACKOFF_MIN,
            stale_since: Some(now),
            changes: VecDeque::new(),
        }
    }

    /// Since when the data may be out of date (`None`: in sync).
    pub fn stale_since(&self) -> Option<Instant> {
        self.stale_since
    }

    /// The next GET to make, if one is due.
    pub fn poll_request(&mut self, now: Instant) -> Option<Get> {
        if let Phase::Backoff(until) = self.phase {
            if now < until {
                return None;
            }
            self.phase = if self.version.is_some() {
                Phase::Watch
            } else {
                Phase::List
            };
        }
        match self.phase {
            Phase::List => {
                self.phase = Phase::Listing;
                let mut query = format!("limit={PAGE_LIMIT}");
                if let Some(token) = &self.next_page {
                    query.push_str("&continue=");
                    query.push_str(&escape(token));
                }
                Some(Get {
                    path: self.path,
                    query,
                    stream: false,
                })
            }
            Phase::Watch => {
                self.phase = Phase::Watching;
                let version = self.version.as_deref().unwrap_or("");
                Some(Get {
                    path: self.path,
                    query: format!(
                        "watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_SECS}&resourceVersion={}",
                        escape(version)
                    ),
                    stream: true,
                })
            }
            _ => None,
        }
    }

    /// When to call [`Self::poll_request`] again.
    pub fn poll_timeout(&self) -> Option<(Instant, Reason)> {
        match self.phase {
            Phase::Backoff(until) => Some((until, Reason::Retry)),
            _ => None,
        }
    }

    /// The next change for the cluster state.
    pub fn poll_change(&mut self) -> Option<Change> {
        self.changes.pop_front()
    }

    /// One page of a list answer.
    pub fn handle_list_page(&mut self, body: &[u8], now: Instant) -> Result<(), WatchError> {
        if self.phase != Phase::Listing {
            return Err(WatchError::Unexpected("list page"));
        }
        let list: List = match serde_json::from_slice(body) {
            Ok(list) => list,
            Err(e) => {
                self.restart_list(now);
                return Err(WatchError::Malformed(e.to_string()));
            }
        };
        self.pages.extend(list.items);
        if list.metadata.next.is_empty() {
            self.next_page = None;
            self.version = Some(list.metadata.resource_version);
            self.changes
                .push_back(Change::Reset(std::mem::take(&mut self.pages)));
            self.phase = Phase::Watch;
            self.succeeded();
        } else {
            self.next_page = Some(list.metadata.next);
            self.phase = Phase::List;
        }
        Ok(())
    }

    /// One line of a watch stream (one JSON event).
    pub fn handle_watch_line(&mut self, line: &[u8], now: Instant) -> Result<(), WatchError> {
        if self.phase != Phase::Watching {
            return Err(WatchError::Unexpected("watch event"));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if line.len() > MAX_EVENT_BYTES {
            self.restart_list(now);
            return Err(WatchError::Malformed(format!(
                "an event of {} bytes",
                line.len()
            )));
        }
        let event: Event = match serde_json::from_slice(line) {
            Ok(event) => event,
            Err(e) => {
                self.restart_list(now);
                return Err(WatchError::Malformed(e.to_string()));
            }
        };
        let version = event
            .object
            .pointer("/metadata/resourceVersion")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        match event.kind.as_str() {
            "ADDED" | "MODIFIED" => self.changes.push_back(Change::Upsert(event.object)),
            "DELETED" => self.changes.push_back(Change::Delete(event.object)),
            "BOOKMARK" => {}
            // A Status object: 410 Gone (the version expired) or worse.
            "ERROR" => {
                self.version = None;
                self.phase = Phase::List;
                return Ok(());
            }
            other => {
                return Err(WatchError::Malformed(format!("event type {other:?}")));
            }
        }
        if let Some(version) = version {
            self.version = Some(version);
        }
        self.succeeded();
        Ok(())
    }

    /// The watch stream was accepted (HTTP 200): the server answers again,
    /// and the stream carries every change since the version it resumes
    /// from, so the data is no longer stale.
    pub fn handle_stream_open(&mut self) {
        if self.phase == Phase::Watching {
            self.succeeded();
        }
    }

    /// The watch stream ended cleanly (the server's timeout): watch again
    /// from the last version.
    pub fn handle_stream_end(&mut self) {
        if self.phase == Phase::Watching {
            self.phase = Phase::Watch;
        }
    }

    /// The request failed: `status` is the HTTP status if there was one.
    /// 410 lists again at once; anything else backs off.
    pub fn handle_failure(&mut self, status: Option<u16>, now: Instant) {
        if status == Some(410) {
            self.version = None;
            self.next_page = None;
            self.pages.clear();
            self.phase = Phase::List;
            return;
        }
        self.stale_since.get_or_insert(now);
        self.phase = Phase::Backoff(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn restart_list(&mut self, now: Instant) {
        self.version = None;
        self.next_page = None;
        self.pages.clear();
        self.stale_since.get_or_insert(now);
        self.phase = Phase::Backoff(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn succeeded(&mut self) {
        self.backoff = BACKOFF_MIN;
        self.stale_since = None;
    }
}

/// Percent-encodes a query value (versions and continue tokens are opaque).
fn escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PATH: &str = "/api/v1/namespaces";

    fn ns(name: &str, version: &str) -> String {
        format!(r#"{{"metadata":{{"name":"{name}","resourceVersion":"{version}"}}}}"#)
    }

    /// A watcher that has listed `x` at version 10 and is watching.
    fn watching(now: Instant) -> Watcher {
        let mut w = Watcher::new(PATH, now);
        w.poll_request(now).unwrap();
        w.handle_list_page(
            format!(
                r#"{{"metadata":{{"resourceVersion":"10"}},"items":[{}]}}"#,
                ns("x", "9")
            )
            .as_bytes(),
            now,
        )
        .unwrap();
        assert!(matches!(w.poll_change(), Some(Change::Reset(items)) if items.len() == 1));
        let get = w.poll_request(now).unwrap();
        assert!(get.stream);
        assert!(get.query.contains("resourceVersion=10"), "{}", get.query);
        w
    }

    #[test]
    fn a_paged_list_is_one_reset_and_the_watch_starts_at_its_version() {
        let now = Instant::now();
        let mut w = Watcher::new(PATH, now);
        assert!(w.stale_since().is_some());
        assert_eq!(w.poll_request(now).unwrap().query, "limit=500");
        w.handle_list_page(
            format!(
                r#"{{"metadata":{{"continue":"a b"}},"items":[{}]}}"#,
                ns("x", "1")
            )
            .as_bytes(),
            now,
        )
        .unwrap();
        assert_eq!(w.poll_change(), None);
        assert_eq!(
            w.poll_request(now).unwrap().query,
            "limit=500&continue=a%20b"
        );
        w.handle_list_page(
            format!(
                r#"{{"metadata":{{"resourceVersion":"7"}},"items":[{}]}}"#,
                ns("y", "2")
            )
            .as_bytes(),
            now,
        )
        .unwrap();
        assert!(matches!(w.poll_change(), Some(Change::Reset(items)) if items.len() == 2));
        assert_eq!(w.stale_since(), None);
        assert!(
            w.poll_request(now)
                .unwrap()
                .query
                .ends_with("resourceVersion=7")
        );
    }

    #[test]
    fn events_become_changes_and_move_the_version_bookmarks_included() {
        let now = Instant::now();
        let mut w = watching(now);
        for (kind, version) in [
            ("ADDED", "11"),
            ("MODIFIED", "12"),
            ("DELETED", "13"),
            ("BOOKMARK", "20"),
        ] {
            let line = format!(r#"{{"type":"{kind}","object":{}}}"#, ns("y", version));
            w.handle_watch_line(line.as_bytes(), now).unwrap();
        }
        assert!(matches!(w.poll_change(), Some(Change::Upsert(_))));
        assert!(matches!(w.poll_change(), Some(Change::Upsert(_))));
        assert!(matches!(w.poll_change(), Some(Change::Delete(_))));
        assert_eq!(w.poll_change(), None);
        w.handle_stream_end();
        assert!(
            w.poll_request(now)
                .unwrap()
                .query
                .ends_with("resourceVersion=20")
        );
    }

    #[test]
    fn gone_lists_again_whether_as_status_or_as_an_error_event() {
        let now = Instant::now();
        let mut w = watching(now);
        w.handle_failure(Some(410), now);
        assert_eq!(w.poll_request(now).unwrap().query, "limit=500");

        let mut w = watching(now);
        w.handle_watch_line(
            br#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}"#,
            now,
        )
        .unwrap();
        assert_eq!(w.poll_request(now).unwrap().query, "limit=500");
    }

    #[test]
    fn failures_back_off_doubling_and_mark_the_data_stale_until_it_recovers() {
        let t0 = Instant::now();
        let mut w = watching(t0);
        w.handle_failure(None, t0);
        assert_eq!(w.stale_since(), Some(t0));
        assert_eq!(w.poll_request(t0), None);
        assert_eq!(w.poll_timeout(), Some((t0 + BACKOFF_MIN, Reason::Retry)));
        let t1 = t0 + BACKOFF_MIN;
        let get = w.poll_request(t1).unwrap();
        assert!(get.stream, "resumes the watch from the last version");
        w.handle_failure(Some(503), t1);
        assert_eq!(w.stale_since(), Some(t0), "stale since the first failure");
        assert_eq!(
            w.poll_timeout(),
            Some((t1 + BACKOFF_MIN * 2, Reason::Retry))
        );
        for _ in 0..20 {
            w.handle_failure(None, t1);
        }
        assert_eq!(w.poll_timeout(), Some((t1 + BACKOFF_MAX, Reason::Retry)));
        w.poll_request(t1 + BACKOFF_MAX).unwrap();
        w.handle_watch_line(
            format!(r#"{{"type":"ADDED","object":{}}}"#, ns("z", "30")).as_bytes(),
            t1,
        )
        .unwrap();
        assert_eq!(w.stale_since(), None);
    }

    #[test]
    fn an_accepted_watch_ends_the_staleness_without_waiting_for_an_event() {
        let t0 = Instant::now();
        let mut w = watching(t0);
        w.handle_failure(None, t0);
        assert!(w.stale_since().is_some());
        w.poll_request(t0 + BACKOFF_MIN).unwrap();
        w.handle_stream_open();
        assert_eq!(w.stale_since(), None);
    }

    #[test]
    fn garbage_is_refused_and_the_list_starts_again_after_a_pause() {
        let now = Instant::now();
        let mut w = watching(now);
        assert!(matches!(
            w.handle_watch_line(b"{not json", now),
            Err(WatchError::Malformed(_))
        ));
        assert!(w.stale_since().is_some());
        let (at, _) = w.poll_timeout().unwrap();
        assert_eq!(w.poll_request(at).unwrap().query, "limit=500");
        assert!(matches!(
            w.handle_watch_line(b"{}", now),
            Err(WatchError::Unexpected(_))
        ));
        assert_eq!(
            w.handle_watch_line(b"  \r", now),
            Err(WatchError::Unexpected("watch event"))
        );
    }
}
