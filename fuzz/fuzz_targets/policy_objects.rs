//! The API server's objects as the NetworkPolicy compiler reads them
//! (`policy::model::parse` of NetworkPolicy, Pod and Namespace JSON, then
//! `compile_policy` and `Cluster::rules_for`) and the watch stream
//! (`policy::watch::Watcher`, list pages and watch event lines): hostile
//! bytes never panic, and whatever is accepted compiles or is refused with
//! a reason.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::Instant;
use weft::policy::model::{Namespace, NetworkPolicy, Pod, parse};
use weft::policy::watch::Watcher;
use weft::policy::{Cluster, PodInfo, compile_policy};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    match selector % 3 {
        0 => {
            let mut cluster = Cluster::new();
            if let Ok(policy) = parse::<NetworkPolicy>(body)
                && let Ok(compiled) = compile_policy(&policy)
            {
                cluster.upsert_policy(compiled);
            }
            if let Ok(pod) = parse::<Pod>(body) {
                let info = PodInfo::from_api(&pod);
                cluster.upsert_pod(info.clone());
                let rules = cluster.rules_for(&info);
                let _ = rules.ingress.decide(0x0a20_0001, None);
                let _ = rules.egress.decide(0x0a20_0001, None);
            }
            if let Ok(namespace) = parse::<Namespace>(body) {
                cluster.upsert_namespace(&namespace);
            }
        }
        1 => {
            let mut watcher = Watcher::new("/api/v1/pods", now);
            let _ = watcher.poll_request(now);
            let _ = watcher.handle_list_page(body, now);
            while watcher.poll_change().is_some() {}
        }
        _ => {
            let mut watcher = Watcher::new("/api/v1/pods", now);
            let _ = watcher.poll_request(now);
            let _ = watcher
                .handle_list_page(br#"{"metadata":{"resourceVersion":"1"},"items":[]}"#, now);
            let _ = watcher.poll_request(now);
            for line in body.split(|b| *b == b'\n') {
                let _ = watcher.handle_watch_line(line, now);
            }
            while watcher.poll_change().is_some() {}
        }
    }
});
