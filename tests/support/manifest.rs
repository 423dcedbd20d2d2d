//! deploy/ read as the kubelet reads it, so that tests run the router the
//! way the manifests say and cannot drift from them: the YAML documents as
//! JSON (PyYAML, which comes with kubernetes-validate), the DaemonSet's
//! container, and its environment resolved for one node (downward API
//! fields, ConfigMap keys, `$(VAR)` references in order).

use super::run_timeout;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The documents of a YAML file as JSON.
pub fn yaml(path: &Path) -> Vec<Value> {
    let out = run_timeout(
        Command::new("python3")
            .args([
                "-c",
                "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
            ])
            .arg(path),
        60,
    )
    .unwrap();
    assert!(
        out.status.success(),
        "reading {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The first document of `kind`.
pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn deploy(file: &str) -> Vec<Value> {
    yaml(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(file),
    )
}

/// The DaemonSet's pod spec (`spec.template.spec`).
pub fn pod_spec() -> Value {
    find(&deploy("daemonset.yaml"), "DaemonSet")["spec"]["template"]["spec"].clone()
}

/// The ConfigMap's `data`.
pub fn config_data() -> Value {
    find(&deploy("configmap.yaml"), "ConfigMap")["data"].clone()
}

/// The strings of a JSON array (empty when absent).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The weft container's environment as the kubelet makes it on node
/// `node_name` whose address is `host_ip`.
pub fn container_env(node_name: &str, host_ip: &str) -> Vec<(String, String)> {
    env_of(
        &pod_spec()["containers"][0],
        node_name,
        host_ip,
        &config_data(),
    )
}

/// `container`'s environment as the kubelet makes it on node `node_name`
/// whose address is `host_ip`, with the ConfigMap's `data`.
pub fn env_of(
    container: &Value,
    node_name: &str,
    host_ip: &str,
    data: &Value,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            let mut v = v.to_string();
            for (k, earlier) in &env {
                v = v.replace(&format!("$({k})"), earlier);
            }
            v
        } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match field {
                "spec.nodeName" => node_name.into(),
                "status.hostIP" => host_ip.into(),
                other => panic!("the test does not know the field {other}"),
            }
        } else if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
            match data[r["key"].as_str().unwrap()].as_str() {
                Some(v) => v.to_string(),
                // An optional key the ConfigMap leaves out: no variable.
                None if r["optional"] == true => continue,
                None => panic!("the ConfigMap has no {r}"),
            }
        } else {
            panic!("unknown env source {e}");
        };
        env.push((name, value));
    }
    env
}

/// The Dockerfile's instructions, continuation lines joined, comments out.
pub fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((keyword.to_ascii_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}
