//! `CNI_ARGS`: the `KEY=VALUE;...` list a runtime passes besides the
//! `CNI_*` variables (CNI spec, "Parameters"). kubelet (through its CRI
//! runtime) names the pod there: `K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
//! `K8S_POD_UID` (and `K8S_POD_INFRA_CONTAINER_ID`, `IgnoreUnknown`, which
//! weft does not need). The plugin forwards the pod to the router with its
//! `allocate` request (issue 17: the allocation names its pod); the router
//! checks it.

use weft_api::proto::PodRef;

/// Longest `CNI_ARGS` looked at: kubelet's are a few hundred bytes; the
/// rest of a longer one is ignored.
const MAX_CNI_ARGS: usize = 4096;

/// The pod named in `CNI_ARGS`, if both its namespace and its name are
/// there and not empty. Keys weft does not know, and malformed entries,
/// are ignored (`IgnoreUnknown` is the runtime's promise that it does not
/// mind): the pod name is a label, and a pod is plugged in without one.
pub fn pod(cni_args: &str) -> Option<PodRef> {
    let (mut namespace, mut name, mut uid) = (None, None, None);
    let bounded = cni_args.get(..MAX_CNI_ARGS).unwrap_or(cni_args);
    for entry in bounded.split(';') {
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let slot = match key.trim() {
            "K8S_POD_NAMESPACE" => &mut namespace,
            "K8S_POD_NAME" => &mut name,
            "K8S_POD_UID" => &mut uid,
            _ => continue,
        };
        if !value.is_empty() {
            *slot = Some(value.to_string());
        }
    }
    Some(PodRef {
        namespace: namespace?,
        name: name?,
        uid,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kubelets_cni_args_name_the_pod() {
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                    K8S_POD_INFRA_CONTAINER_ID=4f1c;K8S_POD_UID=0b6e1c2d-41aa-4c3b-9d2e-7f00aa11bb22";
        assert_eq!(
            pod(args).unwrap(),
            PodRef {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: Some("0b6e1c2d-41aa-4c3b-9d2e-7f00aa11bb22".into()),
            }
        );
    }

    #[test]
    fn a_pod_needs_both_namespace_and_name_and_the_uid_is_optional() {
        assert_eq!(pod(""), None);
        assert_eq!(pod("IgnoreUnknown=1"), None);
        assert_eq!(pod("K8S_POD_NAME=web"), None);
        assert_eq!(pod("K8S_POD_NAMESPACE=ns;K8S_POD_NAME="), None);
        let p = pod("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web").unwrap();
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str(), p.uid),
            ("ns", "web", None)
        );
    }

    #[test]
    fn malformed_entries_and_unknown_keys_are_skipped() {
        let p = pod(";;garbage;=x;FOO=bar;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a=b").unwrap();
        assert_eq!(p.name, "a=b", "the value is everything after the first '='");
        let long = format!(
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;{}",
            "x".repeat(10_000)
        );
        assert!(pod(&long).is_some());
    }
}
