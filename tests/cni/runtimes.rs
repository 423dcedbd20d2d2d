//! Real container runtimes: podman with its CNI backend, containerd's `ctr`.

use super::*;
use support::dual_pods::{RANGE6, dual_stack_mesh};

#[test]
fn podman_containers_on_two_nodes_get_weft_addresses_reach_each_other_and_release_them() {
    if !require_root("cni_podman") || !require_tools("cni_podman", &["podman", "runc", "nsenter"]) {
        return;
    }
    let m = mesh(2);
    let dir = TempDir::new("podman");
    let rootfs = busybox_rootfs_tar(&dir.path);
    let podmans = podman_per_node(&m, &dir, &rootfs);
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

/// Pings `to` (either family) from inside a container: `exec` is the
/// runtime's own way in (`podman exec NAME` or `ctr task exec ...`).
fn container_pings(exec: &dyn Fn(&[&str]) -> std::process::Output, to: &str) -> bool {
    let ping = if to.contains(':') { "ping6" } else { "ping" };
    wait_until(Duration::from_secs(10), || {
        exec(&[ping, "-c", "1", "-W", "1", to]).status.success()
    })
}

/// `GET /index.html` from inside a container to `to`:8080 with busybox's
/// `nc` (Debian's static busybox `wget` crashes before connecting): the
/// whole reply, or what failed.
fn http_get_in(exec: &dyn Fn(&[&str]) -> std::process::Output, to: &str) -> String {
    let script = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc {to} 8080");
    let mut last = String::new();
    wait_until(Duration::from_secs(10), || {
        let out = exec(&["sh", "-c", &script]);
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.status.success() && last.contains("200 OK")
    });
    last
}

/// `head` followed by `tail`, as one argument list.
fn prefixed<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(tail).copied().collect()
}

/// Whether `addr` lies in `RANGE6`.
fn in_range6(addr: std::net::Ipv6Addr) -> bool {
    let base: std::net::Ipv6Addr = "fd00:32::".parse().unwrap();
    u128::from(addr) >> 16 == u128::from(base) >> 16
}

#[test]
fn dual_stack_podman_and_ctr_containers_get_both_addresses_and_reach_each_other_across_nodes() {
    const TEST: &str = "cni_dual_stack_runtimes";
    if !require_root(TEST)
        || !require_tools(
            TEST,
            &["podman", "runc", "nsenter", "containerd", "ctr", "unshare"],
        )
    {
        return;
    }
    let started = Instant::now();
    let m = dual_stack_mesh(2, |_| {});
    let dir = TempDir::new("dual-rt");
    let rootfs = busybox_rootfs_tar(&dir.path);
    let podmans = podman_per_node(&m, &dir, &rootfs);
    // d0 on n0 pings; d1 on n1 serves HTTP on both families ([::]:8080).
    let web = "echo weft-dual >/tmp/index.html && exec httpd -f -p 8080 -h /tmp";
    let mut addrs: Vec<(String, String)> = Vec::new();
    for (i, p) in podmans.iter().enumerate() {
        let name = format!("d{i}");
        let command: &[&str] = if i == 1 {
            &["sh", "-c", web]
        } else {
            &["sleep", "300"]
        };
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "weft",
            "--cap-add",
            "NET_RAW",
            "weft-busybox",
        ];
        args.extend_from_slice(command);
        p.ok(&args);
        let (v4, v6) = (p.address(&name), p.address6(&name));
        assert!(in_range6(v6), "d{i} has {v6}, outside {RANGE6}");
        // podman took both addresses from the plugin's result.
        let inspected = p.ok(&[
            "inspect",
            "--format",
            r#"{{with index .NetworkSettings.Networks "weft"}}{{.IPAddress}} {{.GlobalIPv6Address}}{{end}}"#,
            &name,
        ]);
        assert_eq!(inspected, format!("{v4} {v6}"), "podman inspect d{i}");
        let held = allocations(&m.routers[i]);
        assert!(
            held.iter().any(|a| a.address == v4.to_string()
                && a.ipv6.as_ref().is_some_and(|x| x.address == v6.to_string())),
            "d{i} has {v4} and {v6}, the router holds {held:?}"
        );
        addrs.push((v4.to_string(), v6.to_string()));
    }
    // Both families, both ways, ICMP; then TCP from d0 to d1's web server.
    for (from, to) in [(0, 1), (1, 0)] {
        let name = format!("d{from}");
        let exec = |args: &[&str]| podmans[from].run(&prefixed(&["exec", &name], args));
        for target in [&addrs[to].0, &addrs[to].1] {
            assert!(
                container_pings(&exec, target),
                "d{from} cannot ping d{to} at {target}"
            );
        }
    }
    let exec_d0 = |args: &[&str]| podmans[0].run(&prefixed(&["exec", "d0"], args));
    for target in [&addrs[1].0, &addrs[1].1] {
        let got = http_get_in(&exec_d0, target);
        assert!(
            got.contains("weft-dual"),
            "GET from d0 to d1 at {target}: {got:?}"
        );
    }
    let podman_done = started.elapsed();

    // containerd's ctr on n1, on the same installed conflist: k1 gets both
    // addresses and reaches podman's d0 on n0 over both families.
    let archive = busybox_oci_archive(&dir.path, &m.cluster.nodes[0].ns, &m.routers[0].api());
    let ctrd = Containerd::start(
        &dir.path.join("ctrd1"),
        &m.cluster.nodes[1].ns,
        &m.routers[1].api(),
        &archive,
    );
    let runner = {
        let (d, ns) = (ctrd.dir.clone(), ctrd.node_ns.clone());
        std::thread::spawn(move || {
            ctr_run_cni(
                &d,
                &ns,
                "localhost/weft-busybox:latest",
                "k1",
                &["sleep", "60"],
            )
        })
    };
    let mut k1 = None;
    let ok = wait_until(Duration::from_secs(20), || {
        k1 = allocations(&m.routers[1])
            .into_iter()
            .find(|a| a.container_id.ends_with("k1"));
        k1.is_some()
    });
    assert!(ok, "ctr container k1 got no address");
    let k1 = k1.unwrap();
    let k1_v6 = k1
        .ipv6
        .as_ref()
        .expect("k1 has an IPv6 address")
        .address
        .clone();
    let exec_k1 =
        |args: &[&str]| ctrd.ctr(&prefixed(&["task", "exec", "--exec-id", "x", "k1"], args));
    // Inside k1, eth0 holds what the router handed out (ctr shows no IPs).
    let wait_eth0 = wait_until(Duration::from_secs(10), || {
        exec_k1(&["ip", "-o", "addr", "show", "eth0"])
            .status
            .success()
    });
    assert!(wait_eth0, "ctr task exec k1 never worked");
    let shown = String::from_utf8_lossy(&exec_k1(&["ip", "-o", "addr", "show", "eth0"]).stdout)
        .into_owned();
    assert!(
        shown.contains(&format!("{}/32", k1.address)) && shown.contains(&format!("{k1_v6}/128")),
        "k1's eth0 lacks {} or {k1_v6}: {shown}",
        k1.address
    );
    for target in [&addrs[0].0, &addrs[0].1] {
        assert!(
            container_pings(&exec_k1, target),
            "k1 cannot ping d0 at {target}"
        );
    }
    for target in [&k1.address, &k1_v6] {
        assert!(
            container_pings(&exec_d0, target),
            "d0 cannot ping k1 at {target}"
        );
    }
    for target in [&addrs[1].0, &addrs[1].1] {
        let got = http_get_in(&exec_k1, target);
        assert!(
            got.contains("weft-dual"),
            "GET from k1 to d1 at {target}: {got:?}"
        );
    }
    let _ = ctrd.ctr(&["task", "kill", "-s", "KILL", "k1"]);
    let _ = runner.join();
    for (i, p) in podmans.iter().enumerate() {
        p.ok(&["rm", "--force", "--time", "0", &format!("d{i}")]);
    }
    for i in 0..2 {
        let ns = &m.cluster.nodes[i].ns;
        let released = wait_until(Duration::from_secs(10), || {
            allocations(&m.routers[i]).is_empty()
        });
        assert!(released, "n{i} holds {:?}", allocations(&m.routers[i]));
        assert!(weft_veths(ns).is_empty(), "{:?}", weft_veths(ns));
        assert!(pod_routes(ns).is_empty(), "{:?}", pod_routes(ns));
        assert!(pod_routes6(ns).is_empty(), "{:?}", pod_routes6(ns));
    }
    eprintln!(
        "dual-stack runtimes: podman part {:.1} s, whole test {:.1} s",
        podman_done.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// One podman per node of `m`, each under its own directory of `dir`, on
/// that node's router.
fn podman_per_node(m: &Mesh, dir: &TempDir, rootfs: &std::path::Path) -> Vec<Podman> {
    (0..m.routers.len())
        .map(|i| {
            Podman::new(
                &dir.path.join(format!("n{i}")),
                &m.cluster.nodes[i].ns,
                &m.routers[i].api(),
                rootfs,
            )
        })
        .collect()
}
