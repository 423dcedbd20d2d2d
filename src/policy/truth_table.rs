//! Conformance by truth table: cases of the upstream netpol e2e suite
//! (kubernetes test/e2e/network/netpol/network_policy.go), namespaces x, y,
//! z with pods a, b, c, ports 80 and 81 over TCP and UDP. Each case states
//! its expected 81-pair matrix the way upstream does (all allowed, then
//! exceptions) and compares it with the compiler's decision: egress of the
//! source's pod AND ingress of the destination's, from the flattened
//! entries nftables is given. Loopback (a pod to itself) never reaches the
//! host and is left out, as upstream ignores it. A mismatch prints both
//! tables.

#![allow(clippy::unwrap_used)]

use super::compile::{Cluster, PodInfo, PodRules, PolicyId, Proto, compile_policy};
use super::conformance::{
    self, Action, Matrix, N, NAMESPACES, names, namespace_object, pod_labels, pod_object,
    policy_object,
};
use super::model::{self, Namespace, NetworkPolicy, Pod};

fn index(name: &str) -> usize {
    conformance::index(name).unwrap()
}

/// 10.32.(namespace+1).(pod+1)
fn ip_of(i: usize) -> crate::policy::addrs::Addr {
    crate::policy::addrs::v4(ip4(i))
}

fn ip4(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 32, (i / 3 + 1) as u8, (i % 3 + 1) as u8)
}

fn ip_text(name: &str) -> String {
    ip4(index(name)).to_string()
}

fn namespace_json(ns: &str, extra: &str) -> Namespace {
    model::parse(namespace_object(ns, extra).as_bytes()).unwrap()
}

/// A pod as the API server shows it, with upstream's four named ports.
fn pod_json(i: usize, labels: &str) -> Pod {
    let node = format!("node-{}", i % 3 + 1);
    model::parse(pod_object(i, ip4(i), &node, labels).as_bytes()).unwrap()
}

/// Nine pods, three namespaces, no policy.
fn cluster() -> Cluster {
    let mut c = Cluster::new();
    for ns in NAMESPACES {
        c.upsert_namespace(&namespace_json(ns, ""));
    }
    for i in 0..N {
        c.upsert_pod(PodInfo::from_api(&pod_json(i, &pod_labels(i))));
    }
    c
}

/// A policy from its `spec` JSON, through the real parser and compiler.
fn add_policy(c: &mut Cluster, ns: &str, name: &str, spec: &str) {
    let policy: NetworkPolicy = model::parse(policy_object(ns, name, spec).as_bytes()).unwrap();
    c.upsert_policy(compile_policy(&policy).unwrap());
}

/// What the compiled rules decide for every pair, and the policy names
/// that decided the drops (for the message).
fn observed(c: &Cluster, proto: Proto, port: u16) -> Matrix {
    observed_at(c, proto, port, ip_of)
}

/// [`observed`] with pod `i` at `ip_of(i)`.
fn observed_at(
    c: &Cluster,
    proto: Proto,
    port: u16,
    ip_of: fn(usize) -> crate::policy::addrs::Addr,
) -> Matrix {
    let rules: Vec<PodRules> = names()
        .iter()
        .map(|n| c.rules_for(c.pod(n).unwrap()))
        .collect();
    let mut m = Matrix::all_allowed();
    let transport = Some((proto, port));
    for (f, row) in m.0.iter_mut().enumerate() {
        for (t, cell) in row.iter_mut().enumerate() {
            *cell = rules[f].egress.decide(ip_of(t), transport).passes()
                && rules[t].ingress.decide(ip_of(f), transport).passes();
        }
    }
    m
}

#[track_caller]
fn check(case: &str, c: &Cluster, proto: Proto, port: u16, expected: &Matrix) {
    let got = observed(c, proto, port);
    assert!(
        !got.differs(expected),
        "{case}, {} {port}: expected\n{}observed\n{}",
        proto.as_str(),
        expected.table(),
        got.table()
    );
}

const TCP: Proto = Proto::Tcp;
const UDP: Proto = Proto::Udp;

#[test]
fn with_no_policy_every_pair_is_allowed() {
    let c = cluster();
    for (proto, port) in [(TCP, 80), (TCP, 81), (UDP, 80), (UDP, 81)] {
        check("no policy", &c, proto, port, &Matrix::all_allowed());
    }
}

#[test]
fn a_default_deny_ingress_policy_closes_its_namespace_to_everyone() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "deny-ingress",
        r#"{"podSelector":{},"policyTypes":["Ingress"]}"#,
    );
    let expected = Matrix::all_allowed().expect("", "x", false);
    for (proto, port) in [(TCP, 80), (UDP, 81)] {
        check("default-deny-ingress", &c, proto, port, &expected);
    }
}

#[test]
fn a_default_deny_all_policy_closes_its_namespace_both_ways() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "deny-all",
        r#"{"podSelector":{},"policyTypes":["Ingress","Egress"]}"#,
    );
    let expected = Matrix::all_allowed()
        .expect("", "x", false)
        .expect("x", "", false);
    check("default-deny-all", &c, TCP, 80, &expected);
}

#[test]
fn a_pod_selector_allows_only_that_pod_of_the_policy_namespace() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "x-a-allows-x-b",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"pod":"b"}}}]}]}"#,
    );
    let expected = Matrix::all_allowed()
        .expect("", "x/a", false)
        .expect("x/b", "x/a", true);
    check("pod selector", &c, TCP, 80, &expected);
    // The same with matchExpressions In.
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "x-a-allows-x-b",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"podSelector":{"matchExpressions":[{"key":"pod","operator":"In","values":["b"]}]}}]}]}"#,
    );
    check("pod selector, matchExpressions", &c, TCP, 80, &expected);
}

#[test]
fn an_allow_policy_opens_its_target_through_a_namespace_default_deny() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "deny-all",
        r#"{"podSelector":{},"policyTypes":["Ingress"]}"#,
    );
    add_policy(
        &mut c,
        "x",
        "allow-all-to-a",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"podSelector":{},"namespaceSelector":{}}]}]}"#,
    );
    let expected = Matrix::all_allowed()
        .expect("", "x/b", false)
        .expect("", "x/c", false);
    check("allow ingress to a target", &c, TCP, 80, &expected);
}

#[test]
fn a_namespace_selector_allows_only_the_selected_namespaces() {
    let expected = Matrix::all_allowed()
        .expect("x", "x/a", false)
        .expect("z", "x/a", false);
    for from in [
        r#"{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"y"}}}"#,
        r#"{"namespaceSelector":{"matchExpressions":[{"key":"ns","operator":"In","values":["y"]}]}}"#,
    ] {
        let mut c = cluster();
        add_policy(
            &mut c,
            "x",
            "allow-client-a-via-ns-selector",
            &format!(
                r#"{{"podSelector":{{"matchLabels":{{"pod":"a"}}}},"ingress":[{{"from":[{from}]}}]}}"#
            ),
        );
        check(from, &c, TCP, 80, &expected);
    }
    // An empty namespace selector: every namespace.
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-from-another-ns",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"namespaceSelector":{}}]}]}"#,
    );
    check("all namespaces", &c, TCP, 80, &Matrix::all_allowed());
}

#[test]
fn two_peers_are_a_union_and_one_peer_with_both_selectors_an_intersection() {
    let not_x = r#"{"matchExpressions":[{"key":"kubernetes.io/metadata.name","operator":"NotIn","values":["x"]}]}"#;
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "or",
        &format!(
            r#"{{"podSelector":{{"matchLabels":{{"pod":"a"}}}},"ingress":[{{"from":[{{"namespaceSelector":{not_x}}},{{"podSelector":{{"matchLabels":{{"pod":"b"}}}}}}]}}]}}"#
        ),
    );
    let expected = Matrix::all_allowed().expect("x/c", "x/a", false);
    check("podSelector OR namespaceSelector", &c, TCP, 80, &expected);

    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "and",
        &format!(
            r#"{{"podSelector":{{"matchLabels":{{"pod":"a"}}}},"ingress":[{{"from":[{{"namespaceSelector":{not_x},"podSelector":{{"matchLabels":{{"pod":"b"}}}}}}]}}]}}"#
        ),
    );
    let expected = Matrix::all_allowed()
        .expect("", "x/a", false)
        .expect("y/b", "x/a", true)
        .expect("z/b", "x/a", true);
    check("podSelector AND namespaceSelector", &c, TCP, 80, &expected);
}

#[test]
fn a_numeric_port_allows_that_port_only_and_a_second_policy_adds_another() {
    let mut c = cluster();
    let allow = |port: u16| {
        format!(
            r#"{{"podSelector":{{"matchLabels":{{"pod":"a"}}}},"ingress":[{{"from":[{{"namespaceSelector":{{"matchLabels":{{"ns":"y"}}}}}}],"ports":[{{"protocol":"TCP","port":{port}}}]}}]}}"#
        )
    };
    add_policy(&mut c, "x", "allow-81", &allow(81));
    let allowed_from_y = Matrix::all_allowed()
        .expect("", "x/a", false)
        .expect("y", "x/a", true);
    let closed = Matrix::all_allowed().expect("", "x/a", false);
    check("port 81", &c, TCP, 81, &allowed_from_y);
    check("port 81, probing 80", &c, TCP, 80, &closed);
    check("port 81 TCP, probing UDP 81", &c, UDP, 81, &closed);
    add_policy(&mut c, "x", "allow-80", &allow(80));
    check("ports 80 and 81 stacked", &c, TCP, 80, &allowed_from_y);
    check("ports 80 and 81 stacked", &c, TCP, 81, &allowed_from_y);
}

#[test]
fn end_port_allows_the_whole_range_of_its_protocol() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "range",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"ns":"y"}}}],"ports":[{"protocol":"TCP","port":80,"endPort":81}]}]}"#,
    );
    let from_y = Matrix::all_allowed()
        .expect("", "x/a", false)
        .expect("y", "x/a", true);
    check("endPort", &c, TCP, 80, &from_y);
    check("endPort", &c, TCP, 81, &from_y);
    check(
        "endPort TCP, probing UDP",
        &c,
        UDP,
        80,
        &Matrix::all_allowed().expect("", "x/a", false),
    );
}

#[test]
fn a_named_ingress_port_is_the_destination_pods_port_of_that_name() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-all",
        r#"{"podSelector":{},"ingress":[{"ports":[{"port":"serve-81-tcp"}]}]}"#,
    );
    check("named port 81", &c, TCP, 81, &Matrix::all_allowed());
    check(
        "named port 81, probing 80",
        &c,
        TCP,
        80,
        &Matrix::all_allowed().expect("", "x", false),
    );
    // A named port from one namespace on one port.
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-client-a-via-ns-selector-80",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"ns":"y"}}}],"ports":[{"protocol":"TCP","port":"serve-80-tcp"}]}]}"#,
    );
    let expected = Matrix::all_allowed()
        .expect("x", "x/a", false)
        .expect("z", "x/a", false);
    check("named port from y", &c, TCP, 80, &expected);
    check(
        "named port from y, probing 81",
        &c,
        TCP,
        81,
        &Matrix::all_allowed().expect("", "x/a", false),
    );
}

#[test]
fn a_named_egress_port_is_looked_up_in_each_destination_pod() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-egress",
        r#"{"podSelector":{},"policyTypes":["Egress"],"egress":[{"ports":[{"port":"serve-80-tcp"}]}]}"#,
    );
    check("egress named port", &c, TCP, 80, &Matrix::all_allowed());
    check(
        "egress named port, probing 81",
        &c,
        TCP,
        81,
        &Matrix::all_allowed().expect("x", "", false),
    );
}

/// The spec of upstream's allow-client-a-via-cidr-egress-rule: x/a may
/// send only to `cidr` (minus `except`).
fn egress_of_a_to(cidr: &str, except: Option<&str>) -> String {
    let except = except
        .map(|e| format!(r#","except":["{e}"]"#))
        .unwrap_or_default();
    format!(
        r#"{{"podSelector":{{"matchLabels":{{"pod":"a"}}}},"policyTypes":["Egress"],"egress":[{{"to":[{{"ipBlock":{{"cidr":"{cidr}"{except}}}}}]}}]}}"#
    )
}

#[test]
fn egress_to_a_cidr_allows_that_block_only_and_except_carves_it_out() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-client-a-via-cidr-egress-rule",
        &egress_of_a_to(&format!("{}/32", ip_text("y/b")), None),
    );
    let expected = Matrix::all_allowed()
        .expect("x/a", "", false)
        .expect("x/a", "y/b", true);
    check("egress to CIDR", &c, TCP, 80, &expected);

    // A large block around x/b (host bits masked), except x/b.
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-client-a-via-cidr-egress-rule",
        &egress_of_a_to(
            &format!("{}/4", ip_text("x/b")),
            Some(&format!("{}/32", ip_text("x/b"))),
        ),
    );
    check(
        "except",
        &c,
        TCP,
        80,
        &Matrix::all_allowed().expect("x/a", "x/b", false),
    );
    // A second policy that allows x/b itself: the union wins.
    add_policy(
        &mut c,
        "x",
        "allow-b",
        &egress_of_a_to(&format!("{}/32", ip_text("x/b")), None),
    );
    check(
        "except then allowed by another",
        &c,
        TCP,
        80,
        &Matrix::all_allowed(),
    );
}

/// Upstream's helpers always set policyTypes; without it, egress rules
/// make a policy apply to ingress too (and isolate it with no ingress rule).
#[test]
fn without_policy_types_egress_rules_also_isolate_ingress() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "egress-rules-only",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"egress":[{}]}"#,
    );
    check(
        "implicit policyTypes",
        &c,
        TCP,
        80,
        &Matrix::all_allowed().expect("", "x/a", false),
    );
}

#[test]
fn ingress_and_egress_are_controlled_independently() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-egress-for-target",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"policyTypes":["Egress"],"egress":[{}]}"#,
    );
    check("egress allow-all", &c, TCP, 80, &Matrix::all_allowed());
    add_policy(
        &mut c,
        "x",
        "deny-ingress-via-label-selector",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"policyTypes":["Ingress"]}"#,
    );
    check(
        "then deny ingress",
        &c,
        TCP,
        80,
        &Matrix::all_allowed().expect("", "x/a", false),
    );
}

#[test]
fn sctp_is_never_mistaken_for_tcp() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "deny-ingress",
        r#"{"podSelector":{},"policyTypes":["Ingress"]}"#,
    );
    add_policy(
        &mut c,
        "x",
        "allow-only-sctp-ingress-on-port-81",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"ports":[{"protocol":"SCTP","port":81}]}]}"#,
    );
    check(
        "SCTP allow, TCP probe",
        &c,
        TCP,
        81,
        &Matrix::all_allowed().expect("", "x", false),
    );
    check(
        "SCTP allow, SCTP probe",
        &c,
        Proto::Sctp,
        81,
        &Matrix::all_allowed()
            .expect("", "x/b", false)
            .expect("", "x/c", false),
    );
}

#[test]
fn a_protocol_without_a_port_allows_every_port_of_that_protocol_only() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-ingress-by-proto",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"ports":[{"protocol":"TCP"}]}]}"#,
    );
    check("TCP any port", &c, TCP, 80, &Matrix::all_allowed());
    check(
        "TCP any port, probing UDP",
        &c,
        UDP,
        80,
        &Matrix::all_allowed().expect("", "x/a", false),
    );
}

#[test]
fn an_allow_all_policy_takes_precedence_over_a_narrower_one_in_both_directions() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-ingress-port-80",
        r#"{"podSelector":{},"ingress":[{"ports":[{"port":80}]}]}"#,
    );
    check(
        "ingress 80 only",
        &c,
        TCP,
        81,
        &Matrix::all_allowed().expect("", "x", false),
    );
    add_policy(
        &mut c,
        "x",
        "allow-ingress",
        r#"{"podSelector":{},"ingress":[{}]}"#,
    );
    check("plus allow-all", &c, TCP, 81, &Matrix::all_allowed());

    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-egress-port-80",
        r#"{"podSelector":{},"policyTypes":["Egress"],"egress":[{"ports":[{"port":80}]}]}"#,
    );
    check(
        "egress 80 only",
        &c,
        TCP,
        81,
        &Matrix::all_allowed().expect("x", "", false),
    );
    add_policy(
        &mut c,
        "x",
        "allow-egress",
        r#"{"podSelector":{},"policyTypes":["Egress"],"egress":[{}]}"#,
    );
    check("plus allow-all", &c, TCP, 81, &Matrix::all_allowed());
}

#[test]
fn updates_and_deletes_of_policies_take_effect() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-all-mutate-to-deny-all",
        r#"{"podSelector":{},"ingress":[{}]}"#,
    );
    check("allow all", &c, TCP, 81, &Matrix::all_allowed());
    add_policy(
        &mut c,
        "x",
        "allow-all-mutate-to-deny-all",
        r#"{"podSelector":{},"ingress":[]}"#,
    );
    check(
        "updated to deny all",
        &c,
        TCP,
        81,
        &Matrix::all_allowed().expect("", "x", false),
    );
    c.remove_policy(&PolicyId {
        namespace: "x".into(),
        name: "allow-all-mutate-to-deny-all".into(),
    });
    check("deleted", &c, TCP, 81, &Matrix::all_allowed());
}

#[test]
fn label_changes_of_namespaces_and_pods_take_effect() {
    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-client-a-via-ns-selector",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"ns2":"updated"}}}]}]}"#,
    );
    check(
        "before",
        &c,
        TCP,
        80,
        &Matrix::all_allowed().expect("", "x/a", false),
    );
    c.upsert_namespace(&namespace_json("y", r#","ns2":"updated""#));
    let expected = Matrix::all_allowed()
        .expect("", "x/a", false)
        .expect("y", "", true);
    check("namespace y labelled", &c, TCP, 80, &expected);

    let mut c = cluster();
    add_policy(
        &mut c,
        "x",
        "allow-client-a-via-pod-selector",
        r#"{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"pod2":"updated"}}}]}]}"#,
    );
    check(
        "before",
        &c,
        TCP,
        80,
        &Matrix::all_allowed().expect("", "x/a", false),
    );
    let b = index("x/b");
    c.upsert_pod(PodInfo::from_api(&pod_json(
        b,
        &format!(r#"{},"pod2":"updated""#, pod_labels(b)),
    )));
    let expected = Matrix::all_allowed()
        .expect("", "x/a", false)
        .expect("x/b", "x/a", true);
    check("pod x/b labelled", &c, TCP, 80, &expected);
}

/// The cases tests/policy.rs probes over the real mesh hold on the
/// compiled rules too, with the same expected matrices.
#[test]
fn the_shared_conformance_cases_hold() {
    for case in conformance::cases() {
        let mut c = cluster();
        for step in &case.steps {
            for action in &step.actions {
                match action {
                    Action::Policy(ns, name, spec) => {
                        let spec = conformance::expand(spec, ip4);
                        add_policy(&mut c, ns, name, &spec);
                    }
                    Action::DeletePolicy(ns, name) => c.remove_policy(&PolicyId {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                    }),
                    Action::PodLabels(pod, extra) => {
                        let i = index(pod);
                        let labels = format!("{}{extra}", pod_labels(i));
                        c.upsert_pod(PodInfo::from_api(&pod_json(i, &labels)));
                    }
                    Action::NamespaceLabels(ns, extra) => {
                        c.upsert_namespace(&namespace_json(ns, extra));
                    }
                }
            }
            for (proto, port, expected) in &step.probes {
                check(case.name, &c, *proto, *port, expected);
            }
        }
    }
}

#[test]
fn a_mismatch_prints_both_tables() {
    let c = cluster();
    let wrong = Matrix::all_allowed().expect("x/a", "y/b", false);
    let result = std::panic::catch_unwind(|| check("demo", &c, TCP, 80, &wrong));
    let message = *result.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("expected\n-\tx/a\tx/b"), "{message}");
    assert!(message.contains("x/a\t-\t.\t.\t.\tX"), "{message}");
}

/// fd00:32::(namespace+1):(pod+1), the IPv6 address of pod `i` in
/// [`dual_cluster`].
fn ip6_of(i: usize) -> crate::policy::addrs::Addr {
    let ip = std::net::Ipv6Addr::new(
        0xfd00,
        0x32,
        0,
        0,
        0,
        0,
        (i / 3 + 1) as u16,
        (i % 3 + 1) as u16,
    );
    crate::policy::addrs::Addr::from(ip)
}

/// [`cluster`] with dual-stack pods: each also has [`ip6_of`].
fn dual_cluster() -> Cluster {
    let mut c = cluster();
    for name in names() {
        let mut pod = c.pod(&name).unwrap().clone();
        pod.ips.push(ip6_of(index(&name)));
        c.upsert_pod(pod);
    }
    c
}

#[track_caller]
fn check_both(case: &str, c: &Cluster, v4: &Matrix, v6: &Matrix) {
    check(case, c, TCP, 80, v4);
    let got = observed_at(c, TCP, 80, ip6_of);
    assert!(
        !got.differs(v6),
        "{case} over IPv6: expected\n{}observed\n{}",
        v6.table(),
        got.table()
    );
}

#[test]
fn pod_selectors_select_both_addresses_of_dual_stack_pods() {
    let mut c = dual_cluster();
    add_policy(
        &mut c,
        "x",
        "deny-ingress",
        r#"{"podSelector":{},"policyTypes":["Ingress"]}"#,
    );
    add_policy(
        &mut c,
        "x",
        "allow-from-y-b",
        r#"{"podSelector":{},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"ns":"y"}},"podSelector":{"matchLabels":{"pod":"b"}}}]}]}"#,
    );
    let expected = Matrix::all_allowed()
        .expect("", "x", false)
        .expect("y/b", "x", true);
    check_both("allow from y/b, dual-stack", &c, &expected, &expected);
}

#[test]
fn an_ipblock_applies_only_to_its_own_family() {
    // x/a may send only to y/b's IPv4 /32: over IPv6 it reaches no one.
    let mut c = dual_cluster();
    add_policy(
        &mut c,
        "x",
        "to-y-b-v4",
        &egress_of_a_to(&format!("{}/32", ip_text("y/b")), None),
    );
    let only_v4 = Matrix::all_allowed()
        .expect("x/a", "", false)
        .expect("x/a", "y/b", true);
    let nowhere = Matrix::all_allowed().expect("x/a", "", false);
    check_both("IPv4 block", &c, &only_v4, &nowhere);

    // The same with y/b's IPv6 /128: the other way round.
    let mut c = dual_cluster();
    let six = crate::policy::addrs::ip(ip6_of(index("y/b")));
    add_policy(
        &mut c,
        "x",
        "to-y-b-v6",
        &egress_of_a_to(&format!("{six}/128"), None),
    );
    check_both("IPv6 block", &c, &nowhere, &only_v4);

    // 0.0.0.0/0 is every IPv4 address and no IPv6 one; ::/0 except y/b the
    // reverse.
    let mut c = dual_cluster();
    add_policy(&mut c, "x", "all-v4", &egress_of_a_to("0.0.0.0/0", None));
    check_both("0.0.0.0/0", &c, &Matrix::all_allowed(), &nowhere);
    let mut c = dual_cluster();
    add_policy(
        &mut c,
        "x",
        "all-v6-but-y-b",
        &egress_of_a_to("::/0", Some(&format!("{six}/128"))),
    );
    let all_but = Matrix::all_allowed().expect("x/a", "y/b", false);
    check_both("::/0 except y/b", &c, &nowhere, &all_but);
}
