//! Real container runtimes: podman with its CNI backend, containerd's `ctr`.

use super::*;

#[test]
fn podman_containers_on_two_nodes_get_weft_addresses_reach_each_other_and_release_them() {
    if !require_root("cni_podman") || !require_tools("cni_podman", &["podman", "runc", "nsenter"]) {
        return;
    }
    let m = mesh(2);
    let dir = TempDir::new("podman");
    let rootfs = busybox_rootfs_tar(&dir.path);
    let podmans: Vec<Podman> = (0..2)
        .map(|i| {
            Podman::new(
                &dir.path.join(format!("n{i}")),
                &m.cluster.nodes[i].ns,
                &m.routers[i].api(),
                &rootfs,
            )
        })
        .collect();
    let mut addrs = Vec::new();
    for (i, p) in podmans.iter().enumerate() {
        p.ok(&[
            "run",
            "-d",
            "--name",
            &format!("c{i}"),
            "--network",
            "weft",
            "--cap-add",
            "NET_RAW",
            "weft-busybox",
            "sleep",
            "300",
        ]);
        let addr = p.address(&format!("c{i}"));
        let held = allocations(&m.routers[i]);
        assert!(
            held.iter().any(|a| a.address == addr.to_string()),
            "container c{i} has {addr}, the router holds {held:?}"
        );
        addrs.push(addr);
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let target = addrs[to].to_string();
        let ok = wait_until(Duration::from_secs(10), || {
            podmans[from]
                .run(&[
                    "exec",
                    &format!("c{from}"),
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    &target,
                ])
                .status
                .success()
        });
        assert!(ok, "c{from} cannot reach c{to} at {target}");
        podmans[from].ok(&[
            "exec",
            &format!("c{from}"),
            "ping",
            "-c",
            "3",
            "-W",
            "2",
            &target,
        ]);
    }
    // A short-lived --rm container works too, and leaves nothing.
    let out = podmans[1].ok(&[
        "run",
        "--rm",
        "--network",
        "weft",
        "--cap-add",
        "NET_RAW",
        "weft-busybox",
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        &addrs[0].to_string(),
    ]);
    assert!(out.contains("2 packets received"), "{out}");
    for (i, p) in podmans.iter().enumerate() {
        p.ok(&["rm", "--force", "--time", "0", &format!("c{i}")]);
        assert!(
            allocations(&m.routers[i]).is_empty(),
            "{:?}",
            allocations(&m.routers[i])
        );
        assert!(weft_veths(&m.cluster.nodes[i].ns).is_empty());
        assert!(pod_routes(&m.cluster.nodes[i].ns).is_empty());
    }
}

#[test]
fn containerd_ctr_run_with_cni_gets_weft_addresses_on_two_nodes_and_releases_them() {
    if !require_root("cni_ctr")
        || !require_tools(
            "cni_ctr",
            &["containerd", "ctr", "podman", "runc", "unshare"],
        )
    {
        return;
    }
    let m = mesh(2);
    let dir = TempDir::new("ctr");
    let archive = busybox_oci_archive(&dir.path, &m.cluster.nodes[0].ns, &m.routers[0].api());
    let image = "localhost/weft-busybox:latest";
    let ctrds: Vec<Containerd> = (0..2)
        .map(|i| {
            Containerd::start(
                &dir.path.join(format!("ctrd{i}")),
                &m.cluster.nodes[i].ns,
                &m.routers[i].api(),
                &archive,
            )
        })
        .collect();
    // A long-running container per node, each in the background.
    let runners: Vec<_> = (0..2)
        .map(|i| {
            let (d, ns) = (ctrds[i].dir.clone(), ctrds[i].node_ns.clone());
            std::thread::spawn(move || {
                ctr_run_cni(&d, &ns, image, &format!("k{i}"), &["sleep", "60"])
            })
        })
        .collect();
    let mut addrs = Vec::new();
    for i in 0..2 {
        let mut found = None;
        let ok = wait_until(Duration::from_secs(20), || {
            found = allocations(&m.routers[i])
                .into_iter()
                .find(|a| a.container_id.ends_with(&format!("k{i}")));
            found.is_some()
        });
        assert!(ok, "ctr container k{i} got no address");
        addrs.push(found.unwrap().address);
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let ok = wait_until(Duration::from_secs(10), || {
            ctrds[from]
                .ctr(&[
                    "task",
                    "exec",
                    "--exec-id",
                    &format!("p{to}"),
                    &format!("k{from}"),
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    &addrs[to],
                ])
                .status
                .success()
        });
        assert!(ok, "k{from} cannot reach k{to} at {}", addrs[to]);
    }
    for (i, c) in ctrds.iter().enumerate() {
        let _ = c.ctr(&["task", "kill", "-s", "KILL", &format!("k{i}")]);
    }
    for r in runners {
        let _ = r.join();
    }
    for i in 0..2 {
        let released = wait_until(Duration::from_secs(10), || {
            allocations(&m.routers[i]).is_empty()
        });
        assert!(released, "ctr --rm left {:?}", allocations(&m.routers[i]));
        assert!(weft_veths(&m.cluster.nodes[i].ns).is_empty());
        assert!(pod_routes(&m.cluster.nodes[i].ns).is_empty());
    }
}
