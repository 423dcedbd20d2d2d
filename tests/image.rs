//! The image as Kubernetes runs it (issue 17, "What the tests must show"):
//! the Dockerfile's runtime stage rebuilt as a root filesystem (debootstrap
//! of its Debian base with its packages, slimmed as the `-slim` image is,
//! cached outside the repo under a key of the Dockerfile's hash; the
//! binaries from scripts/build-dist.sh; the entrypoint), run with runc on
//! three netns nodes as the kubelet would run the DaemonSet's pod: only the
//! capabilities it lists, no-new-privs, read-only root, read-only `/sys`
//! and `/proc/sys`, its own PID namespace, the node's network namespace
//! (hostNetwork), the volumes where it mounts them, the ConfigMap's and a
//! Secret's environment — all read from deploy/, so that the manifest and
//! this test cannot drift.
//!
//! Checked: the DaemonSet's init container, run privileged as the manifest
//! says before the router, turns the node's IPv6 forwarding on (the
//! router's own container cannot: read-only `/proc/sys`), and the routers
//! then report `dataplane.forwarding6: on`; the plugin and conflist land on
//! each node; the routers mesh with the shipped ConfigMap, its
//! ipalloc-range made dual-stack (`,ipv6`) and nothing else edited; the
//! DaemonSet's readiness probe (`runc exec`, as the kubelet's exec probe)
//! fails until the ring can allocate and passes after; dual-stack pods
//! plugged in by the installed plugin with the installed conflist reach
//! each other across nodes over IPv4 and IPv6 with forwarding initially
//! off, and `weft status ipam` names them; SIGTERM stops a
//! router in well under the grace period and a restarted container keeps
//! the pods reachable; the image and the binaries are under their size
//! goals (printed).
//!
//! Differences from a kubelet, on purpose: the in-cluster API server is a
//! fake on n0 over plain http (`WEFT_KUBE_API`, as tests/deploy.rs does;
//! the kubelet would inject `KUBERNETES_SERVICE_HOST` and a token), and the
//! chain's second plugin (portmap) is not run, there being no hostPort.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod support;

use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::cni::output_text as text;
use support::daemonset_pod::*;
use support::manifest;
use support::rootfs;
use support::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Three nodes n0..n2 at 192.0.2.10..12 as the API server lists them.
const THREE_NODES: &[u8] = br#"{"kind":"NodeList","apiVersion":"v1","metadata":{},"items":[
{"metadata":{"name":"n0"},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.10"}]}},
{"metadata":{"name":"n1"},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.11"}]}},
{"metadata":{"name":"n2"},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.12"}]}}]}"#;

const FORBIDDEN: &[u8] = include_bytes!("data/nodes-forbidden.json");

/// Runs the installed plugin on node `i` as the runtime would for the
/// first plugin of the installed conflist, with `/run/weft` being the
/// node's (a private mount namespace binds it there).
fn installed_cni(pod_runner: &PodRunner, env: &[(&str, &str)]) -> Output {
    let conflist: Value = serde_json::from_slice(
        &fs::read(pod_runner.host.join("etc/cni/net.d/10-weft.conflist")).unwrap(),
    )
    .unwrap();
    let mut conf = conflist["plugins"][0].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    let plugin = pod_runner.host.join("opt/cni/bin/weft");
    let script = format!(
        "mount --bind '{}' /run/weft\nexec nsenter --net=/run/netns/{} '{}'",
        pod_runner.host.join("run/weft").display(),
        pod_runner.node_ns,
        plugin.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-ec"])
        .arg(script)
        .env("CNI_PATH", pod_runner.host.join("opt/cni/bin"))
        .env("CNI_IFNAME", "eth0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cni::run_with_stdin(&mut cmd, conf.to_string().as_bytes())
}

#[test]
fn the_image_runs_as_the_daemonset_says_and_pods_reach_each_other() {
    let test = "the_image_runs_as_the_daemonset_says_and_pods_reach_each_other";
    let Some(dist) = rootfs::shipped_binaries(test) else {
        return;
    };
    if !require_root(test) || !cni::require_tools(test, &["runc", "python3", "nsenter", "unshare"])
    {
        return;
    }
    let stage = runtime_stage();
    let packages: Vec<&str> = stage.packages.iter().map(String::as_str).collect();
    let started = Instant::now();
    let Some(rootfs) = rootfs::debian_slim(test, &stage.suite, &rootfs_key(), &packages) else {
        return;
    };
    eprintln!(
        "{test}: root filesystem {} ready in {:?}",
        rootfs.display(),
        started.elapsed()
    );

    let dir = TempDir::new("image");
    // The image's /usr/local/bin.
    let image_bin = dir.path.join("image-bin");
    fs::create_dir_all(&image_bin).unwrap();
    for bin in ["weft", "weft-cni"] {
        fs::copy(dist.join(bin), image_bin.join(bin)).unwrap();
    }
    let entry_name = Path::new(&stage.entrypoint).file_name().unwrap();
    assert_eq!(
        Path::new(&stage.entrypoint).parent().unwrap(),
        Path::new("/usr/local/bin")
    );
    fs::copy(
        repo().join("docker/entrypoint.sh"),
        image_bin.join(entry_name),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        image_bin.join(entry_name),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    // Sizes: the image as a registry stores it (one gzipped tar of the
    // root filesystem and of what the Dockerfile copies in).
    let plugin_size = fs::metadata(dist.join("weft-cni")).unwrap().len();
    let router_size = fs::metadata(dist.join("weft")).unwrap().len();
    let image_size = gzipped_size(&[(&rootfs, "."), (&image_bin, ".")]);
    eprintln!(
        "{test}: sizes: plugin {:.1} MB, weft {:.1} MB, image {:.1} MiB compressed (goals: plugin < 5 MB, image < 40 MiB)",
        plugin_size as f64 / 1e6,
        router_size as f64 / 1e6,
        image_size as f64 / (1 << 20) as f64
    );
    assert!(plugin_size < 5_000_000, "plugin {plugin_size} bytes");
    assert!(image_size < 40 << 20, "image {image_size} bytes compressed");

    let spec = manifest::pod_spec();
    let container = &spec["containers"][0];
    let secret_key = {
        let docs = manifest::yaml(&repo().join("deploy/secret.example.yaml"));
        let secret = manifest::find(&docs, "Secret");
        secret["stringData"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone()
    };
    let probe = manifest::strings(&container["readinessProbe"]["exec"]["command"]);
    let mut argv = vec![stage.entrypoint.clone()];
    argv.extend(manifest::strings(&container["args"]));
    assert_eq!(container["securityContext"]["privileged"], false);
    // The shipped ConfigMap with its ipalloc-range made dual-stack as
    // deploy/README.md says (`,ipv6`: a ULA /48 derived from the secret).
    let mut data = manifest::config_data();
    let ranges = format!("{},ipv6", data["ipalloc-range"].as_str().unwrap());
    data["ipalloc-range"] = ranges.into();
    // The init container that turns IPv6 forwarding on, privileged.
    let init = &spec["initContainers"][0];
    assert_eq!(init["securityContext"]["privileged"], true);
    let mut init_argv = vec![stage.entrypoint.clone()];
    init_argv.extend(manifest::strings(&init["args"]));

    let cluster = Cluster::new(3);
    let kube = fake_kube::FakeApi::start(
        &cluster.nodes[0].ns.name,
        "192.0.2.10:8080".parse().unwrap(),
        403,
        FORBIDDEN,
    );
    // A secret for the Secret volume (the example's is refused on purpose).
    let secret_dir = dir.path.join("secret");
    fs::create_dir_all(&secret_dir).unwrap();
    write_secret(&secret_dir.join(&secret_key));
    fs::set_permissions(
        secret_dir.join(&secret_key),
        fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    fs::create_dir_all("/run/weft").unwrap();

    let mut pods: Vec<PodRunner> = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let host = dir.path.join(format!("host-{i}"));
        let mut volumes = vec![("secret".to_string(), secret_dir.clone())];
        for v in spec["volumes"].as_array().unwrap() {
            if let Some(path) = v["hostPath"]["path"].as_str() {
                if path == "/dev/net/tun" {
                    continue;
                }
                let local = host.join(path.trim_start_matches('/'));
                fs::create_dir_all(&local).unwrap();
                volumes.push((v["name"].as_str().unwrap().to_string(), local));
            }
        }
        // The kubelet runs the init container to completion first. The
        // node's IPv6 forwarding starts off; the router's container could
        // not change it (read-only /proc/sys).
        node.ns.sysctl("net.ipv6.conf.all.forwarding", "0");
        let init_id = format!("weft-t{}-{}-init-{}", std::process::id(), i, node.name);
        let init_bundle = dir.path.join(format!("init-bundle-{i}"));
        fs::create_dir_all(&init_bundle).unwrap();
        let init_env = manifest::env_of(init, &node.name, &node.underlay.to_string(), &data);
        let init_config = oci_config(
            &spec,
            init,
            &init_env,
            &init_argv,
            &rootfs,
            &image_bin,
            &[],
            &format!("/{init_id}"),
        );
        fs::write(
            init_bundle.join("config.json"),
            serde_json::to_vec_pretty(&init_config).unwrap(),
        )
        .unwrap();
        let mut init_runner = PodRunner {
            id: init_id,
            node_ns: node.ns.name.clone(),
            state: dir.path.join("runc"),
            bundle: init_bundle,
            host: host.clone(),
            log: dir.path.join(format!("init-{i}.log")),
            child: None,
        };
        init_runner.start();
        let exited = init_runner.wait(Duration::from_secs(20));
        assert!(
            exited.is_some_and(|s| s.success()),
            "init container on {}: {exited:?}\n{}",
            node.name,
            init_runner.said()
        );
        assert!(
            init_runner
                .said()
                .contains("set net.ipv6.conf.all.forwarding=1"),
            "{}",
            init_runner.said()
        );
        let forwarding6 = node
            .ns
            .ok(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]);
        assert_eq!(forwarding6.trim(), "1", "after the init container");

        let mut env = manifest::env_of(container, &node.name, &node.underlay.to_string(), &data);
        env.push(("WEFT_KUBE_API".into(), "http://192.0.2.10:8080".into()));
        env.push(("WEFT_KUBE_RESYNC_SECS".into(), "1".into()));
        let id = format!("weft-t{}-{}-{}", std::process::id(), i, node.name);
        let bundle = dir.path.join(format!("bundle-{i}"));
        fs::create_dir_all(&bundle).unwrap();
        let config = oci_config(
            &spec,
            container,
            &env,
            &argv,
            &rootfs,
            &image_bin,
            &volumes,
            &format!("/{id}"),
        );
        fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        let mut runner = PodRunner {
            id,
            node_ns: node.ns.name.clone(),
            state: dir.path.join("runc"),
            bundle,
            host,
            log: dir.path.join(format!("pod-{i}.log")),
            child: None,
        };
        runner.start();
        pods.push(runner);
    }

    // Installed on each node's host, and not ready while the node list is
    // forbidden (the router does not vote alone).
    for p in &pods {
        let up = wait_until(Duration::from_secs(20), || p.status().is_some());
        assert!(up, "{} never answered:\n{}", p.id, p.said());
        assert_eq!(
            fs::read(p.host.join("opt/cni/bin/weft")).unwrap(),
            fs::read(dist.join("weft-cni")).unwrap(),
            "the installed plugin is not the shipped one"
        );
        let conflist: Value = serde_json::from_slice(
            &fs::read(p.host.join("etc/cni/net.d/10-weft.conflist")).unwrap(),
        )
        .unwrap();
        assert_eq!(conflist["plugins"][0]["type"], "weft");
        let out = p.exec(&probe);
        assert!(
            !out.status.success(),
            "ready before the node list: {}",
            text(&out)
        );
        assert!(text(&out).contains("not ready"), "{}", text(&out));
    }
    let mode = pods[0].status().unwrap()["ipam"]["mode"].clone();
    eprintln!("{test}: ipam mode {mode} from the shipped ConfigMap");

    // The node list becomes readable: the three mesh and turn ready.
    kube.answer(200, THREE_NODES);
    for p in &pods {
        let ready = wait_until(Duration::from_secs(40), || p.exec(&probe).status.success());
        assert!(
            ready,
            "{} never ready: {}\n{}",
            p.id,
            text(&p.exec(&probe)),
            p.said()
        );
    }
    for p in &pods {
        let meshed = wait_until(Duration::from_secs(20), || {
            p.status().is_some_and(|s| {
                s["connections"]
                    .as_array()
                    .is_some_and(|c| c.iter().filter(|c| c["established"] == true).count() == 2)
            })
        });
        assert!(meshed, "{} not meshed: {:?}", p.id, p.status());
    }
    eprintln!("{test}: meshed and ready at {:?}", started.elapsed());
    // The routers see the IPv6 forwarding the init container set.
    for p in &pods {
        let status = p.status().unwrap();
        assert_eq!(
            status["dataplane"]["forwarding6"], "on",
            "{}: {}",
            p.id, status["dataplane"]
        );
    }

    // Pods, plugged in by the installed plugin, named as kubelet names them.
    let mut pod_ns = Vec::new();
    let mut pod_ips = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let ns = Netns::new(&format!("pod{i}"));
        let netns = format!("/run/netns/{}", ns.name);
        let cni_args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{i}");
        let cid = format!("image-pod-{i}");
        let out = installed_cni(
            p,
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", &cid),
                ("CNI_NETNS", &netns),
                ("CNI_ARGS", &cni_args),
            ],
        );
        assert!(out.status.success(), "ADD on {}: {}", p.id, text(&out));
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        let address = |k: usize| {
            result["ips"][k]["address"]
                .as_str()
                .unwrap_or_else(|| panic!("no address {k} in {result}"))
                .split('/')
                .next()
                .unwrap()
                .to_string()
        };
        let (ip, ip6) = (address(0), address(1));
        assert!(ip6.contains(':'), "a dual-stack pod: {result}");
        let named = p.status().unwrap()["ipam"]["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| {
                a["address"] == ip.as_str() && a["pod"]["name"] == format!("web-{i}").as_str()
            });
        assert!(named, "weft status ipam does not name web-{i} at {ip}");
        pod_ns.push(ns);
        pod_ips.push([ip, ip6]);
    }
    // Both families: IPv6 between nodes needs the node's forwarding.
    let ping = |from: usize, to: usize, within: Duration| {
        pod_ips[to].iter().all(|target| {
            wait_until(within, || {
                pod_ns[from]
                    .exec(&["ping", "-c", "1", "-W", "1", target])
                    .status
                    .success()
            })
        })
    };
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        assert!(
            ping(a, b, Duration::from_secs(10)),
            "pod {a} cannot reach pod {b}"
        );
    }

    // SIGTERM, as the kubelet stops the pod for an upgrade: the router
    // stops well within the grace period, the pods keep their addresses
    // and routes, and once the container is back they are reachable again.
    let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap());
    let took = pods[1].stop(grace);
    let took = took.unwrap_or_else(|| panic!("n1 did not stop on SIGTERM:\n{}", pods[1].said()));
    eprintln!("{test}: SIGTERM stopped n1's router in {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    pods[1].start();
    let ready = wait_until(Duration::from_secs(30), || {
        pods[1].exec(&probe).status.success()
    });
    assert!(ready, "n1 not ready after its restart:\n{}", pods[1].said());
    for (a, b) in [(0, 1), (1, 2), (2, 1)] {
        assert!(
            ping(a, b, Duration::from_secs(20)),
            "after the restart pod {a} cannot reach pod {b}"
        );
    }
    eprintln!("{test}: done in {:?}", started.elapsed());
}
