//! Every manifest in deploy/ against `kubernetes-validate --strict`, and
//! what the DaemonSet wires.

use super::*;

#[test]
fn every_manifest_passes_kubernetes_validate_strict() {
    if !have(
        "kubernetes-validate",
        "every_manifest_passes_kubernetes_validate_strict",
    ) {
        return;
    }
    let files = manifests();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "configmap.yaml",
        "daemonset.yaml",
        "rbac.yaml",
        "secret.example.yaml",
        "serviceaccount.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "deploy/{expected} is missing"
        );
    }
    for file in &files {
        let out = validate(file);
        let said = text(&out);
        assert!(out.status.success(), "{}:\n{said}", file.display());
        // An unknown kind or apiVersion only warns: count the resources
        // that were really checked against a schema.
        let documents = fs::read_to_string(file)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("kind:"))
            .count();
        assert_eq!(
            said.matches("passed for resource").count(),
            documents,
            "{}: not every resource was checked:\n{said}",
            file.display()
        );
        assert!(!said.contains("WARN"), "{}:\n{said}", file.display());
    }
}

#[test]
fn a_broken_manifest_fails_kubernetes_validate() {
    if !have(
        "kubernetes-validate",
        "a_broken_manifest_fails_kubernetes_validate",
    ) {
        return;
    }
    let dir = TempDir::new("broken-manifest");
    let good = fs::read_to_string(root().join("deploy/daemonset.yaml")).unwrap();
    for (label, from, to, complaint) in [
        (
            "typo",
            "hostNetwork: true",
            "hostNetwrk: true",
            "hostNetwrk",
        ),
        (
            "type",
            "maxUnavailable: 1",
            "maxUnavailable: [1]",
            "maxUnavailable",
        ),
    ] {
        assert!(good.contains(from));
        let path = dir.path.join(format!("{label}.yaml"));
        fs::write(&path, good.replacen(from, to, 1)).unwrap();
        let out = validate(&path);
        assert!(!out.status.success(), "{label} passed:\n{}", text(&out));
        assert!(text(&out).contains(complaint), "{}", text(&out));
    }
}

#[test]
fn the_daemonset_gives_the_router_the_node_and_what_it_needs() {
    if !have(
        "python3",
        "the_daemonset_gives_the_router_the_node_and_what_it_needs",
    ) {
        return;
    }
    let docs = yaml(&root().join("deploy/daemonset.yaml"));
    let ds = find(&docs, "DaemonSet");
    let spec = &ds["spec"];
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
    let template = &spec["template"];
    assert_eq!(
        template["metadata"]["labels"], spec["selector"]["matchLabels"],
        "the selector matches the pods"
    );
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "6782");
    let pod = &template["spec"];
    assert_eq!(pod["hostNetwork"], true);
    // Cluster DNS runs in pods that need this router first.
    assert_ne!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["serviceAccountName"], "weft");
    // Tolerates every taint: control planes and not-yet-ready nodes too.
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())
    );
    let container = &pod["containers"][0];
    let caps = container["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap();
    assert!(caps.iter().any(|c| c == "NET_ADMIN"));
    let probe = container["readinessProbe"]["exec"]["command"]
        .as_array()
        .unwrap();
    // Readiness is the router's own "can a pod get an address?", not merely
    // "does the socket answer".
    assert_eq!(probe[..2], [Value::from("weft"), Value::from("ready")]);
    // The one privileged part: the init container that sets IPv6
    // forwarding, same image, no volumes, the router's pod ranges.
    let inits = pod["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 1, "{inits:?}");
    let init = &inits[0];
    assert_eq!(init["image"], container["image"]);
    assert_eq!(init["args"], serde_json::json!(["node-sysctls"]));
    assert_eq!(init["securityContext"]["privileged"], true);
    assert!(init.get("volumeMounts").is_none(), "{init}");
    let range_of = |c: &Value| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "WEFT_IPALLOC_RANGE")
            .map(|e| e["valueFrom"].clone())
    };
    assert!(range_of(init).is_some());
    assert_eq!(range_of(init), range_of(container));
    assert_eq!(container["securityContext"]["privileged"], false);

    // Host paths, and where they are mounted.
    let volumes = pod["volumes"].as_array().unwrap();
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mounted_at = |host: &str| -> String {
        let volume = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == host)
            .unwrap_or_else(|| panic!("no hostPath {host}"));
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("hostPath {host} is not mounted"));
        mount["mountPath"].as_str().unwrap().to_string()
    };
    let env = container["env"].as_array().unwrap();
    let value = |name: &str| -> &Value {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(
        mounted_at("/opt/cni/bin"),
        value("WEFT_CNI_BIN_DIR")["value"]
    );
    assert_eq!(
        mounted_at("/etc/cni/net.d"),
        value("WEFT_CNI_CONF_DIR")["value"]
    );
    assert_eq!(
        mounted_at("/var/lib/weft"),
        value("WEFT_STATE_DIR")["value"]
    );
    // The socket's path is the same inside and on the host, where the
    // kubelet runs the plugin.
    assert_eq!(mounted_at("/run/weft"), "/run/weft");
    assert_eq!(value("WEFT_API")["value"], "/run/weft/weft.sock");
    assert_eq!(probe.last().unwrap(), "/run/weft/weft.sock");
    assert_eq!(mounted_at("/dev/net/tun"), "/dev/net/tun");

    // The name from the downward API; the secret file inside the Secret
    // volume (a directory, not a subPath, so rotation is seen).
    assert_eq!(
        value("WEFT_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let secret_volume = volumes.iter().find(|v| v["secret"].is_object()).unwrap();
    let secret_mount = mounts
        .iter()
        .find(|m| m["name"] == secret_volume["name"])
        .unwrap();
    assert!(secret_mount.get("subPath").is_none());
    let secret_file = value("WEFT_SECRET_FILE")["value"].as_str().unwrap();
    let secret_dir = secret_mount["mountPath"].as_str().unwrap();
    let key = secret_file
        .strip_prefix(&format!("{secret_dir}/"))
        .expect("the secret file lies in the Secret volume");
    let secret_docs = yaml(&root().join("deploy/secret.example.yaml"));
    let secret = find(&secret_docs, "Secret");
    assert_eq!(
        secret_volume["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    assert!(
        secret["stringData"][key].is_string(),
        "the Secret has key {key}"
    );

    // Every ConfigMap reference exists; the seeds come from it.
    let config_docs = yaml(&root().join("deploy/configmap.yaml"));
    let config = find(&config_docs, "ConfigMap");
    for e in env {
        if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
            assert_eq!(r["name"], config["metadata"]["name"]);
            let k = r["key"].as_str().unwrap();
            assert!(
                config["data"][k].is_string(),
                "{} reads ConfigMap key {k}, which is missing",
                e["name"]
            );
        }
    }
    assert!(
        value("WEFT_PEERS")["valueFrom"]["configMapKeyRef"].is_object(),
        "the seeds come from the ConfigMap"
    );

    // The RBAC lets exactly this service account list nodes.
    let rbac = yaml(&root().join("deploy/rbac.yaml"));
    let role = find(&rbac, "ClusterRole");
    let rule = &role["rules"][0];
    assert_eq!(rule["resources"], serde_json::json!(["nodes"]));
    assert!(rule["verbs"].as_array().unwrap().contains(&"list".into()));
    // --network-policy (in the args) watches pods, namespaces and
    // networkpolicies; every rule is read-only.
    let container = &pod["containers"][0];
    assert!(
        support::manifest::strings(&container["args"]).contains(&"--network-policy".to_string())
    );
    let granted: Vec<String> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let group = r["apiGroups"][0].as_str().unwrap_or("").to_string();
            support::manifest::strings(&r["resources"])
                .into_iter()
                .map(move |res| format!("{group}/{res}"))
        })
        .collect();
    for needed in ["/pods", "/namespaces", "networking.k8s.io/networkpolicies"] {
        assert!(granted.contains(&needed.to_string()), "{granted:?}");
    }
    for r in role["rules"].as_array().unwrap() {
        assert_eq!(
            r["verbs"],
            serde_json::json!(["get", "list", "watch"]),
            "read-only: {r}"
        );
    }
    let binding = find(&rbac, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], pod["serviceAccountName"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        ds["metadata"]["namespace"]
    );
    // The one write: the router's Lease, in its own namespace only.
    let lease_role = find(&rbac, "Role");
    assert_eq!(
        lease_role["metadata"]["namespace"],
        ds["metadata"]["namespace"]
    );
    assert_eq!(
        lease_role["rules"],
        serde_json::json!([{
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "create", "update"],
        }])
    );
    let lease_binding = find(&rbac, "RoleBinding");
    assert_eq!(
        lease_binding["metadata"]["namespace"],
        ds["metadata"]["namespace"]
    );
    assert_eq!(lease_binding["roleRef"]["kind"], "Role");
    assert_eq!(
        lease_binding["roleRef"]["name"],
        lease_role["metadata"]["name"]
    );
    assert_eq!(
        lease_binding["subjects"][0]["name"],
        pod["serviceAccountName"]
    );
    let sa = yaml(&root().join("deploy/serviceaccount.yaml"));
    assert_eq!(
        find(&sa, "ServiceAccount")["metadata"]["name"],
        pod["serviceAccountName"]
    );
}

/// Every `WEFT_*` variable the DaemonSet sets is one the router reads
/// (`[env: ...]` in `weft router --help`) or one the entrypoint reads.
#[test]
fn every_weft_variable_in_the_daemonset_is_read_by_someone() {
    let help = Command::new(BIN)
        .args(["router", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let entrypoint = fs::read_to_string(root().join("docker/entrypoint.sh")).unwrap();
    let manifest = fs::read_to_string(root().join("deploy/daemonset.yaml")).unwrap();
    let mut checked = 0;
    for line in manifest.lines() {
        let Some(name) = line.trim().strip_prefix("- name: WEFT_") else {
            continue;
        };
        let var = format!("WEFT_{name}");
        let by_router = help.contains(&format!("[env: {var}"));
        let by_entrypoint = entrypoint.contains(&format!("${{{var}"));
        assert!(
            by_router || by_entrypoint,
            "{var} is set in deploy/daemonset.yaml but read by nobody"
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} WEFT_ variables found");
}

#[test]
fn the_example_secret_is_refused_by_the_router() {
    let text = fs::read_to_string(root().join("deploy/secret.example.yaml")).unwrap();
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret: "))
        .expect("a secret: line")
        .trim_matches('"');
    assert!(
        weft::crypto::ClusterSecrets::parse(value.as_bytes()).is_err(),
        "the example secret {value:?} would work as a real secret"
    );
}

// ---- the Dockerfile ----
