//! The `weft` command line: the router daemon and the operator commands.
//! Every error is one line on stderr and a non-zero exit.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weft::api::client;
use weft::api::proto::{Readiness, Reply, Request, Status};
use weft::cidr::Ipv4Cidr;
use weft::config::{IpallocInit, RouterConfig, resolve_peer};
use weft::kube::KubeSource;

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
        #[arg(long, env = "WEFT_API", default_value = "/run/weft/weft.sock")]
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
        #[arg(long, env = "WEFT_API", default_value = "/run/weft/weft.sock")]
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
        #[arg(long, env = "WEFT_API", default_value = "/run/weft/weft.sock")]
        api: PathBuf,
    },
    /// Remove a seed address from a running router.
    Forget {
        /// HOST:PORT given earlier.
        address: String,
        /// The router's API socket.
        #[arg(long, env = "WEFT_API", default_value = "/run/weft/weft.sock")]
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
    /// File holding the cluster secret (one or two lines of 32+ bytes).
    #[arg(long, env = "WEFT_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Run without a secret: anyone can join. For experiments only.
    #[arg(long, env = "WEFT_INSECURE")]
    insecure: bool,
    /// The pod address range.
    #[arg(long, env = "WEFT_IPALLOC_RANGE", default_value = "10.32.0.0/12")]
    ipalloc_range: String,
    /// How the ring is first initialised: consensus (the routers at the seed
    /// addresses vote), consensus=N, seed=NAME1,NAME2,... or observer.
    #[arg(long, env = "WEFT_IPALLOC_INIT", default_value = "consensus")]
    ipalloc_init: String,
    /// Where the identity key and IPAM state live.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    state_dir: PathBuf,
    /// The local API socket.
    #[arg(long, env = "WEFT_API", default_value = "/run/weft/weft.sock")]
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
    /// Also take seeds from the Kubernetes Node list (in-cluster API access;
    /// re-listed every 30 s; needs the RBAC in deploy/rbac.yaml).
    #[arg(long, env = "WEFT_PEERS_FROM_KUBE")]
    peers_from_kube: bool,
    /// The Kubernetes API URL for --peers-from-kube instead of the in-cluster
    /// one (http:// sends no token: for tests and `kubectl proxy`).
    #[arg(long, env = "WEFT_KUBE_API")]
    kube_api: Option<String>,
    /// Log lines as text (coloured only on a terminal) or json (one object
    /// per line, for log collectors). The level comes from WEFT_LOG, else
    /// RUST_LOG (e.g. `info,weft::kube=debug`), else info.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value_t)]
    log_format: weft::logging::LogFormat,
}

#[derive(Args)]
struct StatusArgs {
    /// peers, connections or ipam (default: a summary of all).
    #[arg(value_parser = ["peers", "connections", "ipam"])]
    section: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The router's API socket.
    #[arg(long, env = "WEFT_API", default_value = "/run/weft/weft.sock")]
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
        Command::Demo { nodes, keep, .. } => weft::demo::run(nodes, keep),
        Command::Reset {
            state,
            iface,
            state_dir,
        } => reset(&iface, state.then_some(state_dir.as_path())),
        Command::Connect { address, api } => {
            print_reply(call(&api, &Request::Connect { address })?)
        }
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
    if args.kube_api.is_some() && !args.peers_from_kube {
        anyhow::bail!("--kube-api is only used with --peers-from-kube: add --peers-from-kube");
    }
    let range: Ipv4Cidr = args
        .ipalloc_range
        .parse()
        .map_err(|e| anyhow::anyhow!("--ipalloc-range: {e}"))?;
    let name = match args.name {
        Some(name) => name,
        None => std::env::var("NODE_NAME").or_else(|_| {
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string())
        })?,
    };
    let init = IpallocInit::parse(&args.ipalloc_init)?;
    let seeds = args
        .peers
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| resolve_peer(p.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rekey_after = std::env::var("WEFT_REKEY_INTERVAL_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(weft::crypto::session::REKEY_AFTER, Duration::from_secs);
    let workers = std::env::var("WEFT_WORKERS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok(RouterConfig {
        name,
        listen: args.listen,
        seeds,
        secret_file: args.secret_file,
        range,
        init,
        state_dir: args.state_dir,
        api: args.api,
        iface: args.iface,
        mtu: parse_mtu(&args.mtu)?,
        rekey_after,
        workers,
        metrics_addr: args.metrics_addr.map(|a| {
            if a.starts_with(':') {
                format!("0.0.0.0{a}")
            } else {
                a
            }
        }),
        peers_from_kube: args.peers_from_kube.then_some(match args.kube_api {
            Some(url) => KubeSource::Url(url),
            None => KubeSource::InCluster,
        }),
        masquerade: !args.no_masq,
    })
}

fn reset(iface: &str, state_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut removed = runtime.block_on(weft::netlink::reset(iface))?;
    match weft::nftables::remove() {
        Ok(true) => removed.push(format!("nftables table {}", weft::nftables::TABLE)),
        Ok(false) | Err(weft::nftables::NftError::Spawn(_)) => {}
        Err(e) => eprintln!(
            "weft: cannot remove nftables table {}: {e}",
            weft::nftables::TABLE
        ),
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

/// `--mtu`: `auto` or a number of bytes.
fn parse_mtu(text: &str) -> anyhow::Result<Option<u32>> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        anyhow::anyhow!("--mtu {text:?} is not a number: pass bytes (e.g. 1420) or auto")
    })
}
