//! The `weft` command line: the router daemon and the operator commands.
//! Every error is one line on stderr and a non-zero exit.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weft::api::client;
use weft::api::proto::{Readiness, Reply, Request, Status};
use weft::config::{IpallocInit, RouterConfig, resolve_peer};
use weft::kube::{KubeSettings, KubeSource};
use weft::router::{offload, priority::Priority};

/// weft: an encrypted mesh overlay network for Kubernetes.
#[derive(Parser)]
#[command(name = "weft", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router (one per node).
    Router(Box<RouterArgs>),
    /// Show the router's peers, connections, IPAM and data-plane counters.
    Status(StatusArgs),
    /// Exit 0 when the router can give pods addresses now; otherwise say
    /// why and exit 1 (the DaemonSet's readiness probe).
    Ready {
        /// The router's API socket.
        #[arg(long, env = "WEFT_API", default_value = "/run/weft/weft.sock")]
        api: PathBuf,
    },
    /// Add a seed address to a running router.
    Connect {
        /// HOST:PORT of another router.
        address: String,
        /// The router's API socket.
        #[arg(long, env = "WEFT_API", default_value = weft::api::DEFAULT_SOCKET)]
        api: PathBuf,
    },
    /// Run a whole mesh in network namespaces on this machine (needs root).
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Leave it running and print how to explore it.
        #[arg(long)]
        keep: bool,
        /// Remove everything earlier demos left (also after --keep).
        #[arg(long)]
        clean: bool,
        /// Dual-stack pods: the routers also split an IPv6 ULA range, and
        /// the pods are pinged over both families.
        #[arg(long)]
        ipv6: bool,
    },
    /// Remove weft0, weft's routes and (with --state) the state directory.
    Reset {
        /// Also delete the identity key and all state.
        #[arg(long)]
        state: bool,
        /// The TUN device.
        #[arg(long, env = "WEFT_IFACE", default_value = "weft0")]
        iface: String,
        /// Where the identity key and IPAM state live.
        #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
        state_dir: PathBuf,
    },
    /// Take over a dead router's address space (refused while it is reachable).
    Rmpeer {
        /// The dead router's name, or its hex ID as `weft status ipam` shows it.
        name: String,
        /// Reclaim even though the router looks alive (only if it is really gone).
        #[arg(long)]
        force: bool,
        /// The router's API socket.
        #[arg(long, env = "WEFT_API", default_value = weft::api::DEFAULT_SOCKET)]
        api: PathBuf,
    },
    /// Hand this router's address ranges to live peers, then stop it (on a
    /// drained node, before it is removed for good).
    Leave {
        /// Leave even though pods still hold addresses here (they may be
        /// handed out again elsewhere).
        #[arg(long)]
        force: bool,
        /// The router's API socket.
        #[arg(long, env = "WEFT_API", default_value = weft::api::DEFAULT_SOCKET)]
        api: PathBuf,
    },
    /// Move this router to a new identity key, keeping its name, address
    /// ranges and connections' flows (it restarts itself under the new
    /// key; peers accept the old key for a window, then refuse it).
    RotateIdentity {
        /// The router's API socket.
        #[arg(long, env = "WEFT_API", default_value = weft::api::DEFAULT_SOCKET)]
        api: PathBuf,
    },
    /// Remove a seed address from a running router.
    Forget {
        /// HOST:PORT given earlier.
        address: String,
        /// The router's API socket.
        #[arg(long, env = "WEFT_API", default_value = weft::api::DEFAULT_SOCKET)]
        api: PathBuf,
    },
}

#[derive(Args)]
struct RouterArgs {
    /// Router name (default: $NODE_NAME, else the hostname).
    #[arg(long, env = "WEFT_NAME")]
    name: Option<String>,
    /// TCP control and UDP data address.
    #[arg(long, env = "WEFT_LISTEN", default_value = "0.0.0.0:6783")]
    listen: std::net::SocketAddr,
    /// A seed router, HOST:PORT (repeatable; WEFT_PEERS is comma-separated).
    #[arg(long = "peer", env = "WEFT_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// An address peers can reach this router at besides --listen, ADDR:PORT
    /// (repeatable; WEFT_ADVERTISE is comma-separated): a public address
    /// behind 1:1 NAT or a port forward.
    #[arg(long = "advertise", env = "WEFT_ADVERTISE", value_delimiter = ',')]
    advertise: Vec<std::net::SocketAddr>,
    /// File holding the cluster secret (one or two lines of 32+ bytes).
    #[arg(long, env = "WEFT_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Run without a secret: anyone can join. For experiments only.
    #[arg(long, env = "WEFT_INSECURE")]
    insecure: bool,
    /// The pod address range, once per family (repeatable; WEFT_IPALLOC_RANGE
    /// is comma-separated): an IPv4 CIDR (default 10.32.0.0/12) and, for
    /// dual-stack pods, an IPv6 one, or `ipv6` for a ULA /48 derived from
    /// the cluster secret's ID.
    #[arg(
        long = "ipalloc-range",
        env = "WEFT_IPALLOC_RANGE",
        value_delimiter = ','
    )]
    ipalloc_range: Vec<String>,
    /// How the ring is first initialised: consensus (the routers at the seed
    /// addresses vote), consensus=N, seed=NAME1,NAME2,... or observer.
    #[arg(long, env = "WEFT_IPALLOC_INIT", default_value = "consensus")]
    ipalloc_init: String,
    /// Where the identity key and IPAM state live.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    state_dir: PathBuf,
    /// The local API socket.
    #[arg(long, env = "WEFT_API", default_value = weft::api::DEFAULT_SOCKET)]
    api: PathBuf,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (conventionally :6782).
    #[arg(long, env = "WEFT_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// The TUN device.
    #[arg(long, env = "WEFT_IFACE", default_value = "weft0")]
    iface: String,
    /// Overlay MTU: a number, or `auto` (the underlay interface's MTU minus
    /// 80 bytes of encapsulation; the cluster then uses the smallest any
    /// router announces).
    #[arg(long, env = "WEFT_MTU", default_value = "auto")]
    mtu: String,
    /// Do not masquerade pod traffic leaving the range (WEFT_NO_MASQ takes
    /// 1/0, true/false, yes/no, on/off).
    #[arg(long, env = "WEFT_NO_MASQ", value_parser = clap::builder::BoolishValueParser::new())]
    no_masq: bool,
    /// Masquerade IPv6 pod traffic leaving the IPv6 pod range through a
    /// non-weft interface: `auto` (on for a unique local range, fc00::/7,
    /// which nothing outside the cluster can answer; off for a global
    /// one), `on` or `off`.
    #[arg(long, env = "WEFT_MASQUERADE6", default_value = "auto")]
    masquerade6: weft::config::Masquerade6,
    /// Take over the address ranges of a router that has been unreachable
    /// this long, as `weft rmpeer` would (e.g. 30m; off by default). Only
    /// the side of a partition holding most of the routers does, and only
    /// one router of it.
    #[arg(long, env = "WEFT_RECLAIM_AFTER", value_parser = parse_duration)]
    reclaim_after: Option<Duration>,
    /// Move this router to a new identity key at start (once the address
    /// ring is known) when its key is older than this (e.g. 90d; off by
    /// default), as `weft rotate-identity` does: at most once per start.
    #[arg(long, env = "WEFT_IDENTITY_MAX_AGE", value_parser = parse_duration)]
    identity_max_age: Option<Duration>,
    /// Also take seeds from the Kubernetes Node list (in-cluster API access;
    /// re-listed every 30 s; needs the RBAC in deploy/rbac.yaml).
    #[arg(long, env = "WEFT_PEERS_FROM_KUBE")]
    peers_from_kube: bool,
    /// Enforce Kubernetes NetworkPolicy on this node's pods (lists and
    /// watches pods, namespaces and networkpolicies; needs the RBAC in
    /// deploy/rbac.yaml).
    #[arg(long, env = "WEFT_NETWORK_POLICY", value_parser = clap::builder::BoolishValueParser::new())]
    network_policy: bool,
    /// The Kubernetes API URL for --peers-from-kube and --network-policy
    /// instead of the in-cluster one (http:// sends no token: for tests and
    /// `kubectl proxy`).
    #[arg(long, env = "WEFT_KUBE_API")]
    kube_api: Option<String>,
    #[command(flatten)]
    knobs: Knobs,
    /// Log lines as text (coloured only on a terminal) or json (one object
    /// per line, for log collectors). The level comes from WEFT_LOG, else
    /// RUST_LOG (e.g. `info,weft::kube=debug`), else info.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value_t)]
    log_format: weft::logging::LogFormat,
}

/// Settings that only come from the environment (README "Data path", "Test
/// knobs"; deploy/README.md): read here, once, like the flags, and passed
/// down through `RouterConfig`. Hidden flags, so `--help` shows the operator
/// contract only. Values that do not parse keep the default, as before.
#[derive(Args)]
struct Knobs {
    /// The Kubernetes node name (downward API), the name without --name.
    #[arg(long, env = "NODE_NAME", hide = true)]
    node_name: Option<String>,
    /// Rekey interval in seconds instead of 120 (tests).
    #[arg(long, env = "WEFT_REKEY_INTERVAL_SECS", hide = true)]
    rekey_interval_secs: Option<String>,
    /// Data-plane workers instead of one per core.
    #[arg(long, env = "WEFT_WORKERS", hide = true)]
    workers: Option<String>,
    /// Anything but empty, 0 or false: the plain data path, no offloads.
    #[arg(long, env = offload::DISABLE_ENV, hide = true)]
    disable_offload: Option<String>,
    /// rt (default), a nice value -20..19, or off.
    #[arg(long, env = weft::router::priority::PRIORITY_ENV, hide = true)]
    worker_priority: Option<String>,
    /// The TUN queue length on the offload path.
    #[arg(long, env = "WEFT_TUN_TXQUEUELEN", hide = true)]
    tun_txqueuelen: Option<String>,
    /// The service-account directory for --peers-from-kube (tests).
    #[arg(long, env = "WEFT_KUBE_SA_DIR", hide = true)]
    kube_sa_dir: Option<PathBuf>,
    /// Seconds between node listings instead of 30 (tests).
    #[arg(long, env = "WEFT_KUBE_RESYNC_SECS", hide = true)]
    kube_resync_secs: Option<String>,
    /// Seconds between renewals of the router's Lease instead of 10 (tests).
    #[arg(long, env = "WEFT_KUBE_LEASE_SECS", hide = true)]
    kube_lease_secs: Option<String>,
    /// Seconds a peer's retired identity key stays accepted after a
    /// rotation instead of 600 (tests).
    #[arg(long, env = "WEFT_IDENTITY_ROTATION_WINDOW_SECS", hide = true)]
    identity_rotation_window_secs: Option<String>,
    /// The in-cluster API server's address (set by Kubernetes in every pod).
    #[arg(long, env = "KUBERNETES_SERVICE_HOST", hide = true)]
    kubernetes_service_host: Option<String>,
    /// The in-cluster API server's port.
    #[arg(long, env = "KUBERNETES_SERVICE_PORT", hide = true)]
    kubernetes_service_port: Option<String>,
}

/// A knob's value, or `None` when unset or not a `T` (the default applies).
fn knob<T: std::str::FromStr>(value: Option<&str>) -> Option<T> {
    value.and_then(|v| v.parse().ok())
}

#[derive(Args)]
struct StatusArgs {
    /// peers, connections, ipam or policy (default: a summary of all).
    #[arg(value_parser = ["peers", "connections", "ipam", "policy"])]
    section: Option<String>,
    /// With `policy`: only this pod (NAMESPACE/NAME).
    pod: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The router's API socket.
    #[arg(long, env = "WEFT_API", default_value = weft::api::DEFAULT_SOCKET)]
    api: PathBuf,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.trim_start_matches("error: ");
            eprintln!("weft: {first} (see weft --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Router(args) => {
            weft::logging::init(args.log_format);
            weft::daemon::run(router_config(*args)?)
        }
        Command::Status(args) => status(args),
        Command::Ready { api } => ready(&api),
        Command::Demo { clean: true, .. } => {
            weft::demo::remove_all();
            Ok(())
        }
        Command::Demo {
            nodes, keep, ipv6, ..
        } => weft::demo::run(nodes, keep, ipv6),
        Command::Reset {
            state,
            iface,
            state_dir,
        } => reset(&iface, state.then_some(state_dir.as_path())),
        Command::Connect { address, api } => print_reply(call(
            &api,
            &Request::Connect {
                address,
                also: None,
            },
        )?),
        Command::Forget { address, api } => print_reply(call(&api, &Request::Forget { address })?),
        Command::Leave { force, api } => {
            let reply = call(&api, &Request::Leave { force })?;
            if let Some(error) = reply.error {
                anyhow::bail!("{}", error.message);
            }
            let result = reply.result.unwrap_or_default();
            println!(
                "handed {} addresses to the other routers; the router stops in a moment",
                result["addresses"]
            );
            Ok(())
        }
        Command::RotateIdentity { api } => {
            let reply = call(&api, &Request::RotateIdentity)?;
            if let Some(error) = reply.error {
                anyhow::bail!("{}", error.message);
            }
            let result = reply.result.unwrap_or_default();
            println!(
                "moved from identity {} to {}; the router restarts under the new key in a moment",
                result["old"].as_str().unwrap_or("?"),
                result["new"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        Command::Rmpeer { name, force, api } => {
            let reply = call(&api, &Request::Rmpeer { name, force })?;
            if let Some(error) = reply.error {
                anyhow::bail!("{}", error.message);
            }
            let result = reply.result.unwrap_or_default();
            println!(
                "reclaimed {} addresses of {}",
                result["addresses"], result["peer"]
            );
            Ok(())
        }
    }
}

fn router_config(args: RouterArgs) -> anyhow::Result<RouterConfig> {
    if args.secret_file.is_none() && !args.insecure {
        anyhow::bail!(
            "no cluster secret: pass --secret-file PATH (create one with: head -c 32 /dev/urandom | base64 > PATH), or --insecure for an experiment"
        );
    }
    if args.kube_api.is_some() && !args.peers_from_kube && !args.network_policy {
        anyhow::bail!(
            "--kube-api is only used with --peers-from-kube or --network-policy: add --peers-from-kube or --network-policy"
        );
    }
    if let Some(url) = &args.kube_api
        && !url.starts_with("http://")
        && !url.starts_with("https://")
    {
        anyhow::bail!(
            "--kube-api {url:?} is not an http:// or https:// URL (e.g. https://10.96.0.1:443)"
        );
    }
    let (range, range6) = weft::config::parse_ranges(&args.ipalloc_range)?;
    let knobs = args.knobs;
    let name = match args.name.or(knobs.node_name) {
        Some(name) => name,
        None => {
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string())?
        }
    };
    let init = IpallocInit::parse(&args.ipalloc_init)?;
    let seeds = args
        .peers
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| resolve_peer(p.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rekey_after = knob::<u64>(knobs.rekey_interval_secs.as_deref())
        .map_or(weft::crypto::session::REKEY_AFTER, Duration::from_secs);
    let source = match args.kube_api {
        Some(url) => KubeSource::Url(url),
        None => KubeSource::InCluster {
            host: knobs.kubernetes_service_host,
            port: knobs.kubernetes_service_port,
        },
    };
    let kube = KubeSettings::new(source, knobs.kube_sa_dir, knobs.kube_resync_secs.as_deref())
        .with_lease_secs(knobs.kube_lease_secs.as_deref());
    let workers = knob::<usize>(knobs.workers.as_deref())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok(RouterConfig {
        name,
        listen: args.listen,
        seeds,
        advertise: args.advertise,
        secret_file: args.secret_file,
        range,
        range6,
        init,
        state_dir: args.state_dir,
        api: args.api,
        iface: args.iface,
        mtu: parse_mtu(&args.mtu)?,
        rekey_after,
        reclaim_after: args.reclaim_after,
        workers,
        metrics_addr: args.metrics_addr.map(|a| {
            if a.starts_with(':') {
                format!("0.0.0.0{a}")
            } else {
                a
            }
        }),
        peers_from_kube: args.peers_from_kube.then(|| kube.clone()),
        network_policy: args.network_policy.then_some(kube),
        masquerade: !args.no_masq,
        masquerade6: args.masquerade6,
        offload: !offload::disabled_by(knobs.disable_offload.as_deref()),
        worker_priority: Priority::parse_or_default(knobs.worker_priority.as_deref()),
        tun_txqueuelen: knob::<i32>(knobs.tun_txqueuelen.as_deref()),
        identity_max_age: args.identity_max_age,
        rotation_window: knob::<u64>(knobs.identity_rotation_window_secs.as_deref())
            .map_or(weft::crypto::rotation::DEFAULT_WINDOW, Duration::from_secs),
    })
}

fn reset(iface: &str, state_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut removed = runtime.block_on(weft::netlink::reset(iface))?;
    match weft::nftables::remove() {
        Ok(tables) => removed.extend(tables.iter().map(|t| format!("nftables table {t}"))),
        Err(weft::nftables::NftError::Spawn(_)) => {}
        Err(e) => eprintln!(
            "weft: cannot remove nftables table {}: {e}",
            weft::nftables::TABLE
        ),
    }
    for table in [weft::policy::nft::TABLE, weft::policy::nft::OLD_TABLE] {
        match weft::nftables::run(&format!("delete table {table}\n")) {
            Ok(()) => removed.push(format!("nftables table {table} (NetworkPolicy)")),
            Err(e) if e.contains("No such file") || e.contains("cannot run") => {}
            Err(e) => eprintln!("weft: cannot remove nftables table {table}: {e}"),
        }
    }
    match weft::forward_policy::close() {
        Ok(0) | Err(weft::forward_policy::ForwardPolicyError::Spawn(_)) => {}
        Ok(n) => removed.push(format!("{n} iptables FORWARD rules for the pod range")),
        Err(e) => eprintln!("weft: cannot remove weft's iptables FORWARD rules: {e}"),
    }
    for item in &removed {
        println!("removed {item}");
    }
    if let Some(dir) = state_dir
        && dir.exists()
    {
        std::fs::remove_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", dir.display()))?;
        println!("removed state {}", dir.display());
    }
    if removed.is_empty() && state_dir.is_none() {
        println!("nothing to remove");
    }
    Ok(())
}

fn call(api: &std::path::Path, request: &Request) -> anyhow::Result<Reply> {
    Ok(client::call(api, request, Duration::from_secs(5))?)
}

fn print_reply(reply: Reply) -> anyhow::Result<()> {
    if let Some(error) = reply.error {
        anyhow::bail!("{}", error.message);
    }
    println!("{}", reply.result.unwrap_or_default());
    Ok(())
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let reply = call(&args.api, &Request::Status)?;
    if let Some(error) = reply.error {
        anyhow::bail!("{}", error.message);
    }
    let value = reply.result.unwrap_or_default();
    if args.pod.is_some() && args.section.as_deref() != Some("policy") {
        anyhow::bail!("a pod is only given with `weft status policy NAMESPACE/NAME`");
    }
    if args.section.as_deref() == Some("policy") && !args.json {
        let Some(policy) = value.get("policy") else {
            anyhow::bail!(
                "this router does not enforce NetworkPolicy: start it with --network-policy"
            );
        };
        let policy: weft::policy::status::PolicyStatus = serde_json::from_value(policy.clone())?;
        print!(
            "{}",
            weft::policy::status::render_text(&policy, args.pod.as_deref())
        );
        return Ok(());
    }
    if args.json {
        let shown = match args.section.as_deref() {
            Some(section) => value.get(section).cloned().unwrap_or_default(),
            None => value,
        };
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    let status: Status = serde_json::from_value(value)?;
    print!(
        "{}",
        weft::status_text::render(&status, args.section.as_deref())
    );
    Ok(())
}
/// `weft ready`: the router's own answer to "can a pod get an address?".
fn ready(api: &std::path::Path) -> anyhow::Result<()> {
    let reply = call(api, &Request::Ready)?;
    if let Some(error) = reply.error {
        anyhow::bail!("{}", error.message);
    }
    let readiness: Readiness = serde_json::from_value(reply.result.unwrap_or_default())?;
    if !readiness.ready {
        anyhow::bail!(
            "not ready: {}",
            readiness.reason.as_deref().unwrap_or("no reason given")
        );
    }
    println!("ready");
    Ok(())
}

/// A duration flag: a number with `s`, `m` or `h` (no unit: seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration: use e.g. 90s, 30m, 2h or 90d"
            ));
        }
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n.saturating_mul(scale))),
        _ => Err(format!(
            "{text:?} is not a duration: use e.g. 90s, 30m, 2h or 90d"
        )),
    }
}

/// `--mtu`: `auto` or a number of bytes.
fn parse_mtu(text: &str) -> anyhow::Result<Option<u32>> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        anyhow::anyhow!("--mtu {text:?} is not a number: pass bytes (e.g. 1420) or auto")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_take_seconds_minutes_hours_or_days_and_refuse_the_rest() {
        assert_eq!(config(&[]).reclaim_after, None);
        let c = config(&["--reclaim-after", "30m"]);
        assert_eq!(c.reclaim_after, Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("10d"), Ok(Duration::from_secs(864_000)));
        for bad in ["", "0s", "10w", "m", "-5s", "1.5h"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("e.g. 90s, 30m, 2h or 90d"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn identity_max_age_is_off_by_default_and_the_window_knob_shortens_the_window() {
        let c = config(&[]);
        assert_eq!(c.identity_max_age, None);
        assert_eq!(c.rotation_window, weft::crypto::rotation::DEFAULT_WINDOW);
        let c = config(&["--identity-max-age", "90d"]);
        assert_eq!(c.identity_max_age, Some(Duration::from_secs(90 * 86_400)));
        let c = config(&["--identity-rotation-window-secs", "8"]);
        assert_eq!(c.rotation_window, Duration::from_secs(8));
    }

    fn config(args: &[&str]) -> RouterConfig {
        let argv = ["weft", "router", "--insecure", "--name", "a"];
        let cli = Cli::try_parse_from(argv.iter().chain(args)).unwrap();
        let Command::Router(args) = cli.command else {
            panic!("not the router command");
        };
        router_config(*args).unwrap()
    }

    #[test]
    fn advertise_is_repeatable_and_comma_separated() {
        let c = config(&[
            "--advertise",
            "203.0.113.11:6783",
            "--advertise=203.0.113.12:443,192.0.2.1:6783",
        ]);
        let want: Vec<std::net::SocketAddr> =
            ["203.0.113.11:6783", "203.0.113.12:443", "192.0.2.1:6783"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect();
        assert_eq!(c.advertise, want);
        assert!(config(&[]).advertise.is_empty());
    }

    #[test]
    fn environment_only_settings_reach_the_config_and_default_when_unparsable() {
        // The same values as their variables would give (clap `env`).
        let c = config(&[
            "--disable-offload=1",
            "--worker-priority=off",
            "--tun-txqueuelen=64",
            "--workers=3",
            "--rekey-interval-secs=2",
        ]);
        assert!(!c.offload);
        assert_eq!(c.worker_priority, Priority::Unchanged);
        assert_eq!(c.tun_txqueuelen, Some(64));
        assert_eq!(c.workers, 3);
        assert_eq!(c.rekey_after, Duration::from_secs(2));
        let c = config(&[
            "--disable-offload=0",
            "--worker-priority=fast",
            "--tun-txqueuelen=x",
            "--rekey-interval-secs=soon",
        ]);
        assert!(c.offload);
        assert_eq!(c.worker_priority, Priority::Realtime);
        assert_eq!(c.tun_txqueuelen, None);
        assert_eq!(c.rekey_after, weft::crypto::session::REKEY_AFTER);
    }

    #[test]
    fn peers_from_kube_carries_the_in_cluster_address_and_test_hooks() {
        let c = config(&[
            "--peers-from-kube",
            "--kubernetes-service-host=192.0.2.1",
            "--kubernetes-service-port=6443",
            "--kube-resync-secs=1",
        ]);
        let kube = c.peers_from_kube.unwrap();
        assert_eq!(
            kube.source,
            KubeSource::InCluster {
                host: Some("192.0.2.1".into()),
                port: Some("6443".into())
            }
        );
        assert_eq!(kube.every, Duration::from_secs(1));
        assert_eq!(kube.sa_dir, PathBuf::from(weft::kube::SERVICE_ACCOUNT_DIR));
    }
}
