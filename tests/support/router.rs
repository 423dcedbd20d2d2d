//! Real `weft router` processes: the secret file, one router per node with
//! its own state dir, socket and log, its status read over the local API,
//! and a cluster's routers started together.

use super::*;

/// Writes a secret file (44 base64-ish characters of random bytes).
pub fn write_secret(path: &Path) {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    fs::write(path, format!("{hex}\n")).unwrap();
    // As an operator should: the router warns about a secret others can read.
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// A real `weft router` process in a node's namespace.
pub struct Router {
    pub bin: PathBuf,
    pub name: String,
    pub ns_name: String,
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A command the router process is started through (it must exec the
    /// router, so that the PID stays the router's); empty by default.
    pub wrapper: Vec<String>,
    child: Option<Child>,
    starts: u32,
}

impl Router {
    /// Prepares (does not start) a router for `node` with `peers` and the
    /// static split over `names`. Its files live under `dir/<name>`.
    pub fn new(bin: &Path, node: &Node, dir: &Path, peers: &[Ipv4Addr], names: &[&str]) -> Self {
        let own = dir.join(&node.name);
        fs::create_dir_all(&own).unwrap();
        if !own.join("secret").exists() {
            let shared = dir.join("secret");
            if !shared.exists() {
                write_secret(&shared);
            }
            fs::copy(&shared, own.join("secret")).unwrap();
        }
        let mut args = vec![
            "router".to_string(),
            "--name".into(),
            node.name.clone(),
            "--listen".into(),
            format!("{}:6783", node.underlay),
            "--secret-file".into(),
            own.join("secret").display().to_string(),
            "--state-dir".into(),
            own.join("state").display().to_string(),
            "--api".into(),
            own.join("weft.sock").display().to_string(),
            "--ipalloc-init".into(),
            format!("seed={}", names.join(",")),
        ];
        for p in peers {
            args.push("--peer".into());
            args.push(format!("{p}:6783"));
        }
        Self {
            bin: bin.to_path_buf(),
            name: node.name.clone(),
            ns_name: node.ns.name.clone(),
            dir: own,
            args,
            env: Vec::new(),
            wrapper: Vec::new(),
            child: None,
            starts: 0,
        }
    }

    pub fn api(&self) -> PathBuf {
        self.dir.join("weft.sock")
    }

    /// `weft rotate-identity` against this router's API, with this
    /// router's binary (20 s at most).
    pub fn rotate_identity(&self) -> std::process::Output {
        super::run_timeout(
            std::process::Command::new(&self.bin)
                .args(["rotate-identity", "--api"])
                .arg(self.api()),
            20,
        )
        .unwrap()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("router.log")
    }

    pub fn start(&mut self) {
        self.starts += 1;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns_name])
            .args(&self.wrapper)
            .arg(&self.bin)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("WEFT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start weft router"));
        let started = wait_until(Duration::from_secs(10), || self.status().is_some());
        assert!(
            started,
            "router {} did not start:\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// Waits up to `timeout` for the router to exit on its own; its exit
    /// status, or `None` if it is still running (or was never started).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.child.as_mut()?.try_wait().ok().flatten();
            if let Some(status) = status {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as the kubelet stops a pod, and waits up to `timeout` for
    /// the router to exit; its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.as_ref()?.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let status = self.wait_exit(timeout);
        if status.is_none() {
            self.kill9();
        }
        status
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `weft status --json`, or None when the router does not answer.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = run_timeout(
            Command::new(&self.bin)
                .args(["status", "--json", "--api"])
                .arg(self.api()),
            10,
        )
        .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The first owned range's start, once the IPAM ring is ready (waits up
    /// to 20 s: the ring needs the seed routers to know each other).
    pub fn range_start(&self) -> Ipv4Addr {
        let mut start = None;
        let ready = wait_until(Duration::from_secs(20), || {
            start = self.status().and_then(|s| {
                s["ipam"]["owned_ranges"][0]["start"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
            });
            start.is_some()
        });
        assert!(
            ready,
            "router {} owns no range after 20 s: {:?}",
            self.name,
            self.status().map(|s| s["ipam"].clone())
        );
        start.unwrap()
    }

    /// The cluster MTU in `weft status`.
    pub fn mtu(&self) -> Option<u64> {
        self.status()?["dataplane"]["mtu"].as_u64()
    }

    pub fn established_peers(&self) -> usize {
        self.status()
            .map(|s| {
                s["connections"]
                    .as_array()
                    .map(|c| c.iter().filter(|c| c["established"] == true).count())
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    pub fn dropped(&self, reason: &str) -> u64 {
        self.status()
            .and_then(|s| s["dataplane"]["dropped"][reason].as_u64())
            .unwrap_or(0)
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(200)..].join("\n")
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of router {} ----\n{}", self.name, self.log_tail());
        }
        self.kill9();
    }
}

/// Starts one router on each of nodes `0..count` (node i seeded with the
/// nodes `seeds(i)`, the range split over n0..n{count-1}), letting `tweak`
/// adjust each before it starts, then plugs one pod at its range start + 10
/// into each node.
pub fn start_routers(
    bin: &Path,
    cluster: &mut Cluster,
    count: usize,
    seeds: impl Fn(usize) -> Vec<usize>,
    tweak: impl Fn(usize, &mut Router),
) -> Vec<Router> {
    let mut routers = new_routers(bin, cluster, count, seeds, tweak);
    for r in &mut routers {
        r.start();
    }
    for (i, r) in routers.iter().enumerate() {
        let start = r.range_start();
        cluster.add_pod(i, Ipv4Addr::from(u32::from(start) + 10));
    }
    routers
}

/// Routers (not started) on nodes `0..count`, node i seeded with the nodes
/// `seeds(i)`, the range split by name over n0..n{count-1}; `tweak` adjusts each.
pub fn new_routers(
    bin: &Path,
    cluster: &Cluster,
    count: usize,
    seeds: impl Fn(usize) -> Vec<usize>,
    tweak: impl Fn(usize, &mut Router),
) -> Vec<Router> {
    let names: Vec<String> = (0..count).map(|i| format!("n{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    (0..count)
        .map(|i| {
            let peers: Vec<Ipv4Addr> = seeds(i)
                .into_iter()
                .map(|s| cluster.nodes[s].underlay)
                .collect();
            let mut r = Router::new(
                bin,
                &cluster.nodes[i],
                &cluster.dir.path,
                &peers,
                &name_refs,
            );
            tweak(i, &mut r);
            r
        })
        .collect()
}
