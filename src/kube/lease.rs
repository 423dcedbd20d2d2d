//! The sans-IO half of the router's Lease (issue 20, "Node deletion
//! reclaims its space"): each router holds a coordination.k8s.io/v1 Lease
//! named after its node and renews it; a router whose Node was deleted and
//! whose Lease nobody renewed for its duration is *gone*, and the control
//! task may reclaim its ranges (`control::ipam::node_reclaim` decides who,
//! and only while the mesh cannot reach it).
//!
//! Expiry is judged on this router's own clock, the way client-go's leader
//! election does: a Lease is expired when its holder and `renewTime` have
//! not changed for `leaseDurationSeconds` since this router first saw them
//! so. Clock skew between nodes never makes a live Lease look old, and a
//! router that starts (or restarts) waits a whole duration before it calls
//! anything expired.

use super::KubeError;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

/// The label on every Lease a router writes: the Lease list is read with
/// it as selector, so that a router finds the Leases of routers whose Node
/// was deleted before it started (it never listed those Nodes).
pub const LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "weft");

/// The annotation naming the router ID (16 hex digits) that holds a Lease.
pub const ID_ANNOTATION: &str = "weft.dev/router-id";

/// The most a Lease's `leaseDurationSeconds` counts for (a larger value
/// is read as this: a typo must not keep a dead node's space for ever).
const MAX_DURATION: Duration = Duration::from_secs(3600);

/// One Lease as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// `metadata.name`: the node (and router) name.
    pub name: String,
    /// `metadata.resourceVersion`.
    pub version: String,
    /// `spec.holderIdentity` and `spec.renewTime`, as written: what a
    /// renewal changes.
    pub marker: String,
    /// `spec.leaseDurationSeconds`, if given.
    pub duration: Option<Duration>,
    /// The router ID the [`ID_ANNOTATION`] names, if any.
    pub id: Option<String>,
}

/// The Lease object this router writes: `version` is the
/// `resourceVersion` it replaces (`None` to create it).
pub fn lease_body(
    namespace: &str,
    name: &str,
    id: &str,
    version: Option<&str>,
    duration: Duration,
    now: SystemTime,
) -> Vec<u8> {
    let mut metadata = serde_json::json!({
        "name": name,
        "namespace": namespace,
        "labels": { LABEL.0: LABEL.1 },
        "annotations": { ID_ANNOTATION: id },
    });
    if let Some(version) = version {
        metadata["resourceVersion"] = version.into();
    }
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": duration.as_secs().max(1),
            "renewTime": micro_time(now),
        },
    })
    .to_string()
    .into_bytes()
}

/// One Lease object (a GET, POST or PUT answer).
pub fn parse_lease(body: &[u8]) -> Result<LeaseView, KubeError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| KubeError::BadList(format!("a Lease: {e}")))?;
    view(&value).ok_or_else(|| KubeError::BadList("a Lease without a name".into()))
}

/// A Lease list (`LeaseList`): the Leases in it that have a name.
pub fn parse_lease_list(body: &[u8]) -> Result<Vec<LeaseView>, KubeError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| KubeError::BadList(format!("a Lease list: {e}")))?;
    let items = value["items"]
        .as_array()
        .ok_or_else(|| KubeError::BadList("a Lease list without items".into()))?;
    Ok(items.iter().filter_map(view).collect())
}

fn view(value: &serde_json::Value) -> Option<LeaseView> {
    let metadata = &value["metadata"];
    let spec = &value["spec"];
    Some(LeaseView {
        name: metadata["name"].as_str()?.to_string(),
        version: metadata["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        marker: format!(
            "{}|{}",
            spec["holderIdentity"].as_str().unwrap_or_default(),
            spec["renewTime"].as_str().unwrap_or_default()
        ),
        duration: spec["leaseDurationSeconds"]
            .as_u64()
            .map(|s| Duration::from_secs(s).min(MAX_DURATION)),
        id: metadata["annotations"][ID_ANNOTATION]
            .as_str()
            .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string),
    })
}

/// The most deleted nodes whose Lease is read in one round (the rest wait
/// for the next: a mass deletion must not turn into a burst of GETs).
pub const MAX_CANDIDATES: usize = 16;

/// The Nodes and Leases seen so far, and which routers are gone. Only the
/// Leases of deleted Nodes are read (one GET each), never the whole list:
/// the load on the API server grows with deletions, not with the cluster.
#[derive(Debug)]
pub struct LeaseObserver {
    /// Counted for a deleted node that has no Lease (a router too old to
    /// hold one).
    default_duration: Duration,
    /// Name → (marker, seen unchanged since, duration). `None` marker: no
    /// Lease.
    leases: BTreeMap<String, (Option<String>, Instant, Duration)>,
    /// Every node name listed since this router started.
    ever_listed: BTreeSet<String>,
    /// The names holding a weft Lease in the last Lease listing. One
    /// without a Node is a candidate too, so that a router started after a
    /// Node was deleted still counts it; unlike a Node it saw, such a name
    /// counts only while its Lease exists (a router that never held a
    /// Lease, e.g. one outside Kubernetes, is never gone by this rule).
    with_lease: BTreeSet<String>,
    /// The last successful node listing.
    listed: Option<BTreeSet<String>>,
}

impl LeaseObserver {
    /// `default_duration`: how long a deleted node without a Lease must
    /// stay so before it counts as gone.
    pub fn new(default_duration: Duration) -> Self {
        Self {
            default_duration,
            leases: BTreeMap::new(),
            ever_listed: BTreeSet::new(),
            with_lease: BTreeSet::new(),
            listed: None,
        }
    }

    /// A successful listing of the Nodes.
    pub fn observe_nodes(&mut self, names: BTreeSet<String>) {
        self.ever_listed.extend(names.iter().cloned());
        self.leases.retain(|name, _| !names.contains(name));
        self.listed = Some(names);
    }

    /// A successful listing of the weft Leases (their names).
    pub fn observe_lease_list(&mut self, names: BTreeSet<String>) {
        let ever_listed = &self.ever_listed;
        self.leases
            .retain(|name, _| ever_listed.contains(name) || names.contains(name));
        self.with_lease = names;
    }

    /// The routers whose Lease to read: listed once as a Node or holding a
    /// Lease, not in the last Node listing, never `me`; at most
    /// [`MAX_CANDIDATES`], those counted the longest first.
    pub fn candidates(&self, me: &str) -> Vec<String> {
        let Some(listed) = &self.listed else {
            return Vec::new();
        };
        let mut names: Vec<&String> = self
            .ever_listed
            .union(&self.with_lease)
            .filter(|name| *name != me && !listed.contains(*name))
            .collect();
        names.sort_by_key(|name| self.leases.get(*name).map(|(_, since, _)| *since));
        names.into_iter().take(MAX_CANDIDATES).cloned().collect()
    }

    /// A read of `name`'s Lease: `None` when it does not exist (then a
    /// name known only by its Lease stops being a candidate).
    pub fn observe_lease(&mut self, name: &str, lease: Option<&LeaseView>, now: Instant) {
        if lease.is_none() && !self.ever_listed.contains(name) {
            self.with_lease.remove(name);
            self.leases.remove(name);
            return;
        }
        let marker = lease.map(|l| l.marker.clone());
        let duration = lease
            .and_then(|l| l.duration)
            .unwrap_or(self.default_duration);
        let entry = self
            .leases
            .entry(name.to_string())
            .or_insert((marker.clone(), now, duration));
        if entry.0 != marker {
            *entry = (marker, now, duration);
        }
    }

    /// The candidates whose Lease (or the lack of one) has not changed for
    /// its duration since this router first read it so.
    pub fn gone(&self, me: &str, now: Instant) -> Vec<String> {
        let Some(listed) = &self.listed else {
            return Vec::new();
        };
        self.leases
            .iter()
            .filter(|(name, _)| *name != me && !listed.contains(*name))
            .filter(|(_, (_, since, duration))| now.saturating_duration_since(*since) >= *duration)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// `t` as a Kubernetes MicroTime: RFC 3339, UTC, six fractional digits
/// (the calendar from `policy::status::utc`).
pub fn micro_time(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let utc = crate::policy::status::utc(since.as_secs());
    format!(
        "{}.{:06}Z",
        utc.trim_end_matches(" UTC").replacen(' ', "T", 1),
        since.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const D: Duration = Duration::from_secs(40);

    fn lease(name: &str, renew: &str) -> LeaseView {
        LeaseView {
            name: name.into(),
            version: "1".into(),
            marker: format!("{name}|{renew}"),
            duration: Some(D),
            id: None,
        }
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn micro_time_is_rfc3339_utc_with_microseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_796_228_061, 123_456_789);
        assert_eq!(micro_time(t), "2026-12-02T16:14:21.123456Z");
        assert_eq!(
            micro_time(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn the_lease_written_parses_back_with_its_version_and_duration() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_228_061);
        let body = lease_body("kube-system", "n1", "00000000000000aa", Some("42"), D, now);
        let view = parse_lease(&body).unwrap();
        assert_eq!(view.name, "n1");
        assert_eq!(view.version, "42");
        assert_eq!(view.marker, "n1|2026-12-02T16:14:21.000000Z");
        assert_eq!(view.duration, Some(D));
        assert_eq!(view.id.as_deref(), Some("00000000000000aa"));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["metadata"]["resourceVersion"], "42");
        assert_eq!(value["metadata"]["namespace"], "kube-system");
        assert!(parse_lease(b"not json").is_err());
    }

    #[test]
    fn a_deleted_node_is_gone_only_once_its_lease_went_unrenewed_for_its_duration() {
        let t0 = Instant::now();
        let mut o = LeaseObserver::new(D);
        // Nothing before a node listing.
        assert!(o.candidates("a").is_empty());
        o.observe_nodes(names(&["a", "b"]));
        assert!(o.candidates("a").is_empty());
        // b's Node is deleted but b keeps renewing: not gone.
        o.observe_nodes(names(&["a"]));
        assert_eq!(o.candidates("a"), vec!["b".to_string()]);
        o.observe_lease("b", Some(&lease("b", "1")), t0);
        o.observe_lease("b", Some(&lease("b", "2")), t0 + D);
        assert!(
            o.gone("a", t0 + D * 2 - Duration::from_millis(1))
                .is_empty()
        );
        // b stops renewing: gone a whole duration after its last change.
        o.observe_lease(
            "b",
            Some(&lease("b", "2")),
            t0 + D * 2 - Duration::from_millis(1),
        );
        assert_eq!(o.gone("a", t0 + D * 2), vec!["b".to_string()]);
        // Never itself, even with its Node gone and its Lease stale.
        o.observe_nodes(names(&[]));
        assert_eq!(o.candidates("a"), vec!["b".to_string()]);
        o.observe_lease("a", Some(&lease("a", "1")), t0);
        assert_eq!(o.gone("a", t0 + D * 5), vec!["b".to_string()]);
    }

    #[test]
    fn a_listed_node_is_never_gone_and_a_missing_lease_counts_from_when_it_went() {
        let t0 = Instant::now();
        let mut o = LeaseObserver::new(D);
        o.observe_nodes(names(&["a", "b"]));
        // b's router is dead (Lease stale) but its Node is still there.
        o.observe_lease("b", Some(&lease("b", "1")), t0);
        o.observe_nodes(names(&["a", "b"]));
        assert!(o.gone("a", t0 + D * 10).is_empty());
        // b's Node is deleted and its Lease removed: counted afresh from
        // the removal, with the default duration.
        o.observe_nodes(names(&["a"]));
        o.observe_lease("b", Some(&lease("b", "1")), t0 + D * 9);
        o.observe_lease("b", None, t0 + D * 10);
        assert!(
            o.gone("a", t0 + D * 11 - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(o.gone("a", t0 + D * 11), vec!["b".to_string()]);
        // b's Node comes back (a new node under the old name): not gone.
        o.observe_nodes(names(&["a", "b"]));
        assert!(o.gone("a", t0 + D * 20).is_empty());
        assert!(o.candidates("a").is_empty());
    }

    #[test]
    fn a_node_deleted_before_this_router_started_counts_by_its_lease_only_while_it_exists() {
        let t0 = Instant::now();
        let mut o = LeaseObserver::new(D);
        // Started after b's Node was deleted: the Node list never named b.
        o.observe_nodes(names(&["a", "c"]));
        assert!(o.candidates("a").is_empty());
        // The Lease list names b (and the listed c, and a itself).
        o.observe_lease_list(names(&["a", "b", "c"]));
        assert_eq!(o.candidates("a"), vec!["b".to_string()]);
        o.observe_lease("b", Some(&lease("b", "1")), t0);
        assert!(o.gone("a", t0 + D - Duration::from_millis(1)).is_empty());
        assert_eq!(o.gone("a", t0 + D), vec!["b".to_string()]);
        // Its Lease is deleted: no Lease, no verdict (a router that never
        // held one, outside Kubernetes, is never gone by this rule).
        o.observe_lease("b", None, t0 + D);
        assert!(o.gone("a", t0 + D * 10).is_empty());
        assert!(o.candidates("a").is_empty());
        // Listed again, then missing from the next Lease list: forgotten.
        o.observe_lease_list(names(&["b"]));
        o.observe_lease("b", Some(&lease("b", "1")), t0 + D * 10);
        o.observe_lease_list(names(&[]));
        assert!(o.gone("a", t0 + D * 20).is_empty());
        // A Node this router saw keeps the old rule: its missing Lease
        // counts from when it went.
        o.observe_nodes(names(&["a"]));
        assert_eq!(o.candidates("a"), vec!["c".to_string()]);
        o.observe_lease("c", None, t0 + D * 20);
        assert_eq!(o.gone("a", t0 + D * 21), vec!["c".to_string()]);
    }

    #[test]
    fn a_lease_list_parses_to_its_named_leases_and_the_lease_written_carries_the_label() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_228_061);
        let one: serde_json::Value = serde_json::from_slice(&lease_body(
            "kube-system",
            "n1",
            "00000000000000aa",
            None,
            D,
            now,
        ))
        .unwrap();
        assert_eq!(one["metadata"]["labels"][LABEL.0], LABEL.1);
        let list = serde_json::json!({"kind": "LeaseList", "items": [one, {"metadata": {}}]});
        let views = parse_lease_list(list.to_string().as_bytes()).unwrap();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].name, "n1");
        assert!(parse_lease_list(b"{}").is_err());
    }

    #[test]
    fn at_most_a_bounded_number_of_leases_is_read_per_round() {
        let mut o = LeaseObserver::new(D);
        let many: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        o.observe_nodes(many.iter().cloned().collect());
        o.observe_nodes(names(&["n0"]));
        assert_eq!(o.candidates("n0").len(), MAX_CANDIDATES);
    }
}
