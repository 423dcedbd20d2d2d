//! The upstream netpol conformance vocabulary, shared by the compiler's
//! truth tables (`truth_table`, over the compiled rules) and tests/policy.rs
//! (over real packets through real routers): namespaces x, y, z with pods a,
//! b, c, the API objects as the API server shows them, upstream's
//! `Reachability` matrix, and the cases both run with their expected
//! matrices. Test vocabulary only; nothing in the router uses it.

use super::compile::Proto;
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The namespaces, in matrix order.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// Nine pods.
pub const N: usize = 9;

/// `x/a` … `z/c`, in matrix order.
pub fn names() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// The matrix index of `x/a`.
pub fn index(name: &str) -> Option<usize> {
    names().iter().position(|n| n == name)
}

/// A namespace object with the labels upstream gives (`ns`, the name label)
/// plus `extra` (`,"k":"v"` JSON members).
pub fn namespace_object(ns: &str, extra: &str) -> String {
    format!(
        r#"{{"kind":"Namespace","metadata":{{"name":"{ns}","labels":{{"ns":"{ns}","kubernetes.io/metadata.name":"{ns}"{extra}}}}}}}"#
    )
}

/// The labels of pod `i` (`"pod":"a"`).
pub fn pod_labels(i: usize) -> String {
    format!(r#""pod":"{}""#, PODS[i % 3])
}

/// Pod `i` as the API server shows it, on `node` at `ip`, with `labels`
/// (JSON members) and upstream's four named ports (`serve-80-tcp` …).
pub fn pod_object(i: usize, ip: Ipv4Addr, node: &str, labels: &str) -> String {
    let (ns, pod) = (NAMESPACES[i / 3], PODS[i % 3]);
    let mut ports = Vec::new();
    for port in [80, 81] {
        for proto in ["TCP", "UDP"] {
            ports.push(format!(
                r#"{{"name":"serve-{port}-{}","containerPort":{port},"protocol":"{proto}"}}"#,
                proto.to_lowercase()
            ));
        }
    }
    format!(
        r#"{{"kind":"Pod","metadata":{{"name":"{pod}","namespace":"{ns}","labels":{{{labels}}}}},"spec":{{"nodeName":"{node}","containers":[{{"name":"c","ports":[{}]}}]}},"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#,
        ports.join(",")
    )
}

/// A NetworkPolicy object from its `spec` JSON.
pub fn policy_object(ns: &str, name: &str, spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{spec}}}"#
    )
}

/// Replaces `{ip:x/b}` in a spec with that pod's address.
pub fn expand(spec: &str, ip_of: impl Fn(usize) -> Ipv4Addr) -> String {
    let mut out = spec.to_string();
    for (i, name) in names().iter().enumerate() {
        out = out.replace(&format!("{{ip:{name}}}"), &ip_of(i).to_string());
    }
    out
}

/// Upstream's `Reachability`: `0[from][to]`, a pod to itself ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix(pub [[bool; N]; N]);

/// Which pods a filter picks: `""` all, `"x"` a namespace, `"x/a"` a pod.
fn picks(filter: &str, i: usize) -> bool {
    let name = &names()[i];
    filter.is_empty() || filter == name || name.split('/').next() == Some(filter)
}

impl Matrix {
    /// Every pair allowed.
    pub fn all_allowed() -> Self {
        Self([[true; N]; N])
    }

    /// Upstream's `ExpectPeer` (and `Expect`, `ExpectAllIngress`,
    /// `ExpectAllEgress` as filters).
    pub fn expect(mut self, from: &str, to: &str, allowed: bool) -> Self {
        for (f, row) in self.0.iter_mut().enumerate() {
            for (t, cell) in row.iter_mut().enumerate() {
                if picks(from, f) && picks(to, t) {
                    *cell = allowed;
                }
            }
        }
        self
    }

    /// Upstream's printed form: `.` allowed, `X` denied, `-` itself.
    pub fn table(&self) -> String {
        let names = names();
        let mut out = String::from("-\t");
        out.push_str(&names.join("\t"));
        out.push('\n');
        for (f, row) in self.0.iter().enumerate() {
            out.push_str(&names[f]);
            for (t, allowed) in row.iter().enumerate() {
                let cell = if f == t {
                    "-"
                } else if *allowed {
                    "."
                } else {
                    "X"
                };
                let _ = write!(out, "\t{cell}");
            }
            out.push('\n');
        }
        out
    }

    /// Whether some pair (not a pod to itself) differs.
    pub fn differs(&self, other: &Self) -> bool {
        (0..N).any(|f| (0..N).any(|t| f != t && self.0[f][t] != other.0[f][t]))
    }
}

/// A change at the API server.
#[derive(Clone, Debug)]
pub enum Action {
    /// Create or replace policy `namespace/name` with this spec (which may
    /// hold `{ip:x/b}`, see [`expand`]).
    Policy(&'static str, &'static str, &'static str),
    /// Delete policy `namespace/name`.
    DeletePolicy(&'static str, &'static str),
    /// Set pod `x/b`'s labels to its own plus these JSON members.
    PodLabels(&'static str, &'static str),
    /// Set namespace `y`'s labels to upstream's plus these JSON members.
    NamespaceLabels(&'static str, &'static str),
}

/// Changes, then what must hold.
#[derive(Clone, Debug)]
pub struct Step {
    /// Applied in order.
    pub actions: Vec<Action>,
    /// Protocol, port and the expected matrix.
    pub probes: Vec<(Proto, u16, Matrix)>,
}

/// One upstream case; each starts from no policy and upstream's labels.
#[derive(Clone, Debug)]
pub struct Case {
    /// Upstream's name for it.
    pub name: &'static str,
    /// In order.
    pub steps: Vec<Step>,
}

fn step(actions: Vec<Action>, probes: Vec<(Proto, u16, Matrix)>) -> Step {
    Step { actions, probes }
}

const TCP: Proto = Proto::Tcp;
const UDP: Proto = Proto::Udp;

/// The cases probed over the real mesh (and checked on the compiled rules).
pub fn cases() -> Vec<Case> {
    use Action::*;
    let all = Matrix::all_allowed;
    vec![
        Case {
            name: "should support a 'default-deny-ingress' policy",
            steps: vec![step(
                vec![Policy(
                    "x",
                    "deny-ingress",
                    r#"{"podSelector":{},"policyTypes":["Ingress"]}"#,
                )],
                vec![
                    (TCP, 80, all().expect("", "x", false)),
                    (UDP, 81, all().expect("", "x", false)),
                ],
            )],
        },
        Case {
            name: "should enforce policy to allow traffic from pods within server namespace based on PodSelector / ns selector",
            steps: vec![step(
                vec![Policy(
                    "x",
                    "allow-client-a-via-ns-selector",
                    r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"ns":"y"}}}]}]}"#,
                )],
                vec![(
                    TCP,
                    80,
                    all().expect("x", "x/a", false).expect("z", "x/a", false),
                )],
            )],
        },
        Case {
            name: "should enforce policy based on PodSelector and NamespaceSelector",
            steps: vec![step(
                vec![Policy(
                    "x",
                    "allow-ns-y-pod-b",
                    r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"ns":"y"}},"podSelector":{"matchLabels":{"pod":"b"}}}]}]}"#,
                )],
                vec![(
                    TCP,
                    80,
                    all().expect("", "x/a", false).expect("y/b", "x/a", true),
                )],
            )],
        },
        Case {
            name: "should enforce except clause while egress access to server in CIDR block",
            steps: vec![step(
                vec![Policy(
                    "x",
                    "deny-client-a-via-except-cidr-egress-rule",
                    r#"{"podSelector":{"matchLabels":{"pod":"a"}},"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"{ip:x/b}/4","except":["{ip:x/b}/32"]}}]}]}"#,
                )],
                vec![(TCP, 80, all().expect("x/a", "x/b", false))],
            )],
        },
        Case {
            name: "should allow ingress access on one named port",
            steps: vec![step(
                vec![Policy(
                    "x",
                    "allow-all",
                    r#"{"podSelector":{},"ingress":[{"ports":[{"port":"serve-81-tcp"}]}]}"#,
                )],
                vec![
                    (TCP, 81, all()),
                    (TCP, 80, all().expect("", "x", false)),
                    (UDP, 81, all().expect("", "x", false)),
                ],
            )],
        },
        Case {
            name: "should allow egress access to server in CIDR block",
            steps: vec![step(
                vec![Policy(
                    "x",
                    "allow-client-a-via-cidr-egress-rule",
                    r#"{"podSelector":{"matchLabels":{"pod":"a"}},"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"{ip:y/b}/32"}}]}]}"#,
                )],
                vec![
                    (
                        TCP,
                        80,
                        all().expect("x/a", "", false).expect("x/a", "y/b", true),
                    ),
                    (
                        UDP,
                        80,
                        all().expect("x/a", "", false).expect("x/a", "y/b", true),
                    ),
                ],
            )],
        },
        Case {
            name: "should support allow-all policy, updated to deny-all, then deleted",
            steps: vec![
                step(
                    vec![Policy(
                        "x",
                        "allow-all-mutate-to-deny-all",
                        r#"{"podSelector":{},"ingress":[{}]}"#,
                    )],
                    vec![(TCP, 81, all())],
                ),
                step(
                    vec![Policy(
                        "x",
                        "allow-all-mutate-to-deny-all",
                        r#"{"podSelector":{},"ingress":[]}"#,
                    )],
                    vec![(TCP, 81, all().expect("", "x", false))],
                ),
                step(
                    vec![DeletePolicy("x", "allow-all-mutate-to-deny-all")],
                    vec![(TCP, 81, all())],
                ),
            ],
        },
        Case {
            name: "should allow ingress access from updated pod",
            steps: vec![
                step(
                    vec![Policy(
                        "x",
                        "allow-client-a-via-pod-selector",
                        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"pod2":"updated"}}}]}]}"#,
                    )],
                    vec![(TCP, 80, all().expect("", "x/a", false))],
                ),
                step(
                    vec![PodLabels("x/b", r#","pod2":"updated""#)],
                    vec![(
                        TCP,
                        80,
                        all().expect("", "x/a", false).expect("x/b", "x/a", true),
                    )],
                ),
            ],
        },
        Case {
            name: "should allow ingress access from updated namespace",
            steps: vec![
                step(
                    vec![Policy(
                        "x",
                        "allow-client-a-via-ns-selector",
                        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"ns2":"updated"}}}]}]}"#,
                    )],
                    vec![(TCP, 80, all().expect("", "x/a", false))],
                ),
                step(
                    vec![NamespaceLabels("y", r#","ns2":"updated""#)],
                    vec![(
                        TCP,
                        80,
                        all().expect("", "x/a", false).expect("y", "x/a", true),
                    )],
                ),
            ],
        },
    ]
}
