//! The plugin driven directly with the CNI environment: every spec version,
//! errors in CNI JSON, an ADD that fails halfway, GC.

use super::*;

#[test]
fn add_check_del_work_in_every_spec_version_and_repeat_safely() {
    if !require_root("cni_versions") {
        return;
    }
    let b = bench();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let pod = Netns::new(&format!("pod{i}"));
        let cid = format!("ctr-{i}");
        let conf = net_conf(version, &b.fake.socket);
        let add = Call::new("ADD", &cid, &netns_path(&pod));
        let result = invoke(&b.node, &add, &conf).ok();
        assert_eq!(result["cniVersion"], *version);
        let ip = &result["ips"][0];
        assert_eq!(ip["address"], format!("10.32.0.{}/32", 10 + i));
        assert_eq!(ip["gateway"], "169.254.1.1");
        assert_eq!(ip["interface"], 1);
        assert_eq!(ip.get("version").is_some(), version.starts_with('0'));
        assert_eq!(result["interfaces"][1]["name"], "eth0");
        assert_eq!(result["interfaces"][1]["sandbox"], netns_path(&pod));
        assert_eq!(
            result["interfaces"][1].get("mtu").is_some(),
            *version == "1.1.0"
        );
        assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");

        // The pod's side as DESIGN.md draws it.
        let addr = pod.ok(&["ip", "-o", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains(&format!("10.32.0.{}/32", 10 + i)), "{addr}");
        let routes = pod.ok(&["ip", "route"]);
        assert!(
            routes.contains("default via 169.254.1.1 dev eth0") && routes.contains("onlink"),
            "{routes}"
        );
        let neigh = pod.ok(&["ip", "neigh", "show", "169.254.1.1"]);
        let host_mac = result["interfaces"][0]["mac"].as_str().unwrap();
        assert!(
            neigh.contains(host_mac) && neigh.contains("PERMANENT"),
            "{neigh}"
        );
        let mtu = pod.ok(&["cat", "/sys/class/net/eth0/mtu"]);
        // ip netns exec remounts /sys for the pod, so this is the pod's eth0.
        assert_eq!(mtu.trim(), "1420");
        // The host's side: veth up with proxy ARP, a proto-87 /32 route.
        let host = result["interfaces"][0]["name"].as_str().unwrap();
        assert_eq!(weft_veths(&b.node), vec![host.to_string()]);
        let routes = pod_routes(&b.node);
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert!(routes[0].starts_with(&format!("10.32.0.{} dev {host}", 10 + i)));
        let proxy = b
            .node
            .ok(&["cat", &format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp")]);
        assert_eq!(proxy.trim(), "1");
        let forwarding = b
            .node
            .ok(&["cat", &format!("/proc/sys/net/ipv4/conf/{host}/forwarding")]);
        assert_eq!(forwarding.trim(), "1", "the plugin left forwarding off");
        assert!(pod_ping(&pod, "192.0.2.1"), "pod cannot reach its node");

        // A repeated ADD answers the same result and still works.
        let again = invoke(&b.node, &add, &conf).ok();
        assert_eq!(again, result, "repeated ADD changed the result");
        assert!(pod_ping(&pod, "192.0.2.1"));

        if *version >= "0.4.0" {
            let mut with_prev = conf.clone();
            with_prev["prevResult"] = result.clone();
            let check = Call::new("CHECK", &cid, &netns_path(&pod));
            invoke(&b.node, &check, &with_prev).ok();
            // CHECK notices a missing route.
            pod.ok(&["ip", "route", "del", "default"]);
            let e = invoke(&b.node, &check, &with_prev).err(104);
            assert!(e["msg"].as_str().unwrap().contains("default route"), "{e}");
        } else {
            let check = Call::new("CHECK", &cid, &netns_path(&pod));
            invoke(&b.node, &check, &conf).err(1);
        }

        let del = Call::new("DEL", &cid, &netns_path(&pod));
        invoke(&b.node, &del, &conf).ok();
        invoke(&b.node, &del, &conf).ok();
        assert!(weft_veths(&b.node).is_empty());
        assert!(pod_routes(&b.node).is_empty());
        let links = pod.ok(&["ip", "-o", "link"]);
        assert!(!links.contains("eth0"), "{links}");
        assert_eq!(b.fake.allocated(), 0);
    }
}

#[test]
fn version_status_and_errors_answer_in_cni_json_with_distinct_codes() {
    if !require_root("cni_errors") {
        return;
    }
    let b = bench();
    let pod = Netns::new("pod");
    let conf = net_conf("1.1.0", &b.fake.socket);

    let v = invoke(
        &b.node,
        &Call::new("VERSION", "", ""),
        &json!({"cniVersion": "0.4.0"}),
    )
    .ok();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    invoke(&b.node, &Call::new("STATUS", "", ""), &conf).ok();
    b.fake.state.lock().unwrap().ready = false;
    let e = invoke(&b.node, &Call::new("STATUS", "", ""), &conf).err(50);
    assert!(e["msg"].as_str().unwrap().contains("ring not known"), "{e}");
    // Not ready: ADD says try again later at once, and leaves nothing.
    let add = Call::new("ADD", "c1", &netns_path(&pod));
    invoke(&b.node, &add, &conf).err(11);
    assert!(weft_veths(&b.node).is_empty());
    b.fake.state.lock().unwrap().ready = true;

    // Router down: 11 for ADD, 50 for STATUS.
    let down = net_conf("1.0.0", &b.dir.path.join("nobody.sock"));
    let e = invoke(&b.node, &add, &down).err(11);
    assert!(e["msg"].as_str().unwrap().contains("weft router"), "{e}");
    invoke(
        &b.node,
        &Call::new("STATUS", "", ""),
        &net_conf("1.1.0", &b.dir.path.join("nobody.sock")),
    )
    .err(50);

    // Bad config, undecodable config, unsupported version, missing netns,
    // missing environment: distinct codes.
    let mut bad = conf.clone();
    bad["mtu"] = json!(12);
    let e = invoke(&b.node, &add, &bad).err(7);
    assert!(e["msg"].as_str().unwrap().contains("mtu"), "{e}");
    let mut bad = conf.clone();
    bad["cniVersion"] = json!("0.2.0");
    invoke(&b.node, &add, &bad).err(1);
    invoke(&b.node, &add, &json!("not a config")).err(6);
    let gone = Call::new("ADD", "c1", "/run/netns/weft-no-such-namespace");
    let e = invoke(&b.node, &gone, &conf).err(3);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("weft-no-such-namespace")
    );
    let mut no_id = add.clone();
    no_id.container_id.clear();
    invoke(&b.node, &no_id, &conf).err(4);
    assert_eq!(b.fake.allocated(), 0, "a refused ADD allocated");
    // STATUS and GC need 1.1.0.
    invoke(
        &b.node,
        &Call::new("STATUS", "", ""),
        &net_conf("1.0.0", &b.fake.socket),
    )
    .err(1);

    // DEL with an empty CNI_NETNS (containerd after the sandbox is gone),
    // and of something never added, succeeds.
    invoke(&b.node, &add, &conf).ok();
    invoke(&b.node, &Call::new("DEL", "c1", ""), &conf).ok();
    assert!(weft_veths(&b.node).is_empty());
    assert_eq!(b.fake.allocated(), 0);
    invoke(&b.node, &Call::new("DEL", "never", ""), &conf).ok();
}

#[test]
fn an_add_that_fails_halfway_leaves_no_veth_route_or_allocation() {
    if !require_root("cni_failed_add") {
        return;
    }
    let b = bench();
    let conf = net_conf("1.0.0", &b.fake.socket);
    // Fails after the veth exists (fault injected in the test-only build).
    let pod = Netns::new("pod");
    let mut add = Call::new("ADD", "c1", &netns_path(&pod));
    add.extra_env
        .push(("WEFT_CNI_FAULT".into(), "after-veth".into()));
    add.faulty = true;
    let e = invoke(&b.node, &add, &conf).err(103);
    assert!(e["msg"].as_str().unwrap().contains("injected"), "{e}");
    // Fails at the veth: the pod already has an eth0.
    let taken = Netns::new("taken");
    taken.ip(&["link", "add", "eth0", "type", "bridge"]);
    let add = Call::new("ADD", "c2", &netns_path(&taken));
    let e = invoke(&b.node, &add, &conf).err(103);
    assert!(e["msg"].as_str().unwrap().contains("veth"), "{e}");
    for ns in [&pod, &taken] {
        let links = ns.ok(&["ip", "-o", "link"]);
        assert!(
            !links.contains("@"),
            "a veth end is left in the pod: {links}"
        );
    }
    assert!(weft_veths(&b.node).is_empty(), "{:?}", weft_veths(&b.node));
    assert!(pod_routes(&b.node).is_empty());
    assert_eq!(b.fake.allocated(), 0, "the allocation was not released");
    let released = b
        .fake
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|r| r["op"] == "release")
        .count();
    assert_eq!(released, 2);

    // The shipped plugin has no fault injection: the same ADD succeeds.
    let shipped = Netns::new("shipped");
    let mut add = Call::new("ADD", "c3", &netns_path(&shipped));
    add.extra_env
        .push(("WEFT_CNI_FAULT".into(), "after-veth".into()));
    invoke(&b.node, &add, &conf).ok();
    invoke(
        &b.node,
        &Call::new("DEL", "c3", &netns_path(&shipped)),
        &conf,
    )
    .ok();
    assert!(weft_veths(&b.node).is_empty());
}

#[test]
fn gc_releases_attachments_missing_from_valid_attachments() {
    if !require_root("cni_gc") {
        return;
    }
    let b = bench();
    let conf = net_conf("1.1.0", &b.fake.socket);
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("p{i}"))).collect();
    for (i, pod) in pods.iter().enumerate() {
        invoke(
            &b.node,
            &Call::new("ADD", &format!("c{i}"), &netns_path(pod)),
            &conf,
        )
        .ok();
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    invoke(&b.node, &Call::new("GC", "", ""), &gc).ok();
    assert_eq!(b.fake.allocated(), 1);
    assert_eq!(weft_veths(&b.node).len(), 1, "GC left the veths of c0, c2");
    assert!(pod_ping(&pods[1], "192.0.2.1"), "GC broke the kept pod");
    // Without the list GC refuses rather than releasing everything.
    invoke(&b.node, &Call::new("GC", "", ""), &conf).err(7);
    assert_eq!(b.fake.allocated(), 1);
}
