//! `weft router`: builds the cores from the configuration, starts the data
//! plane and the drivers, and owns shutdown (SIGTERM or SIGINT: stop, keep
//! identity and state; SIGTERM never means "leave").

use crate::api;
use crate::config::RouterConfig;
use crate::control::connection::ConnectionContext;
use crate::control::ipam::IpamDriver;
use crate::control::mtu::{self, MtuOrigin};
use crate::control::proto::{Hello, Versions};
use crate::control::{Control, ControlConfig, ControlInputs};
use crate::crypto::carried_short;
use crate::crypto::handshake;
use crate::crypto::identity::Identity;
use crate::crypto::identity_next;
use crate::crypto::secret::ClusterSecrets;
use crate::id::ShortId;
use crate::netlink::{self, InterfacePlan};
use crate::router::snapshot::Snapshot;
use crate::router::{Dataplane, DataplaneConfig};
use arc_swap::ArcSwap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// Where `--insecure` routers get their pre-shared key from: a fixed,
/// public value, so they can talk to each other and to nobody else.
const INSECURE_SECRET: &[u8] = b"weft-insecure-cluster-secret-do-not-use-in-production";

/// Runs the router until SIGTERM/SIGINT.
pub fn run(config: RouterConfig) -> anyhow::Result<()> {
    config.validate()?;
    let secrets = match &config.secret_file {
        Some(path) => {
            let secrets = ClusterSecrets::load(path)?;
            crate::persist::warn_if_exposed(path, "cluster secret file");
            secrets
        }
        None => ClusterSecrets::parse(INSECURE_SECRET)?,
    };
    crate::persist::ensure_private_dir(&config.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the state directory {}: {e} (pass a writable --state-dir)",
            config.state_dir.display()
        )
    })?;
    let (identity, created) = Identity::load_or_create(&config.state_dir)?;
    // An identity rotation a crash interrupted: run under the new key with
    // the old one kept to finish the hand-over, or under the old key.
    let (identity, previous) = match resume_rotation(&config.state_dir, &identity)? {
        Some(pending) => (pending.identity.clone(), Some((identity, pending))),
        None => (identity, None),
    };
    let rotate_at_start = identity_due(&config, created, previous.is_some())?;
    let identity_file = config
        .state_dir
        .join(crate::crypto::identity::IDENTITY_FILE);
    crate::persist::warn_if_exposed(&identity_file, "identity key");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stopped = runtime.block_on(serve(
        config,
        secrets,
        identity,
        previous,
        Start {
            created,
            rotate_at_start,
        },
    ))?;
    drop(runtime);
    if stopped == crate::control::Stopped::Rotated {
        return Err(restart());
    }
    Ok(())
}

/// What the start found about the identity.
struct Start {
    /// `identity.key` was made by this start.
    created: bool,
    /// `--identity-max-age` says the key is due for a rotation.
    rotate_at_start: bool,
}

/// `--identity-max-age`: whether the key is older than the limit (never
/// right after a rotation, so a start rotates at most once). A key made by
/// this start or by the rotation it completes counts from now.
fn identity_due(config: &RouterConfig, created: bool, rotated: bool) -> anyhow::Result<bool> {
    use crate::crypto::identity_age;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let cannot = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot write {} in {}: {e}",
            identity_age::CREATED_FILE,
            config.state_dir.display()
        )
    };
    if created || rotated {
        identity_age::record(&config.state_dir, now).map_err(cannot)?;
        return Ok(false);
    }
    let made = identity_age::created(&config.state_dir, now).map_err(cannot)?;
    let Some(max_age) = config.identity_max_age else {
        return Ok(false);
    };
    let due = identity_age::due(made, now, max_age);
    if due {
        tracing::info!(age_secs = now.saturating_sub(made), max_age = ?max_age,
            "the identity key is older than --identity-max-age: rotating it once the address ring is known");
    }
    Ok(due)
}

/// `weft rotate-identity` wrote `identity.next` and handed the ranges
/// over: this process becomes a fresh start of the same command, which
/// completes the rotation (`resume_rotation`) and runs under the new key.
/// The same PID (a supervisor sees no exit), weft0 and its routes stay, as
/// over any restart. Returns only if the exec failed.
fn restart() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "weft".into());
    tracing::info!("restarting under the new identity key");
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .exec();
    anyhow::anyhow!(
        "cannot restart under the new identity key ({error}); start the router again: it completes the rotation"
    )
}

/// Identity rotation, step 2 (docs/ARCHITECTURE.md): a start that finds
/// `identity.next` completes the rotation when IPAM state was already
/// handed over to the new ID (returned: the caller finishes it once the
/// stores are open), and otherwise discards it, keeping the current key.
fn resume_rotation(
    state_dir: &std::path::Path,
    current: &Identity,
) -> anyhow::Result<Option<identity_next::Pending>> {
    use crate::ipam::store::Store;
    let Some(pending) = identity_next::Pending::load(state_dir)? else {
        return Ok(None);
    };
    let new = pending.identity.id();
    let handed_over = ["ipam", "ipam6"].into_iter().any(|prefix| {
        crate::ipam::FileStore::open_prefixed(state_dir, prefix)
            .and_then(|mut store| store.load())
            .ok()
            .and_then(|stored| stored.owner())
            == Some(new)
    });
    match identity_next::decide(current, &pending, handed_over) {
        identity_next::Resume::Complete if new != current.id() => {
            tracing::info!(from = %current.id(), to = %new, "completing an interrupted identity rotation");
            Ok(Some(pending))
        }
        identity_next::Resume::Complete => {
            identity_next::discard(state_dir)?;
            Ok(None)
        }
        identity_next::Resume::Discard => {
            tracing::warn!(
                kept = %current.id(),
                "discarding an identity rotation interrupted before its hand-over was written"
            );
            identity_next::discard(state_dir)?;
            Ok(None)
        }
    }
}

async fn serve(
    config: RouterConfig,
    secrets: ClusterSecrets,
    identity: Identity,
    previous: Option<(Identity, identity_next::Pending)>,
    start: Start,
) -> anyhow::Result<crate::control::Stopped> {
    let listener = bind_control(config.listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e} (is another router running? pick another --listen)",
            config.listen
        )
    })?;
    let api_listener = api::server::bind(&config.api)?;
    let metrics_listener = match &config.metrics_addr {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let advertised = advertised_address(config.listen, &config.seeds);
    let (mtu, mtu_source, origin) = overlay_mtu(config.mtu, advertised).await;
    // IPv6 turns itself off on weft0 and the pods' veths under 1280.
    if let Some(refusal) = mtu::start_refusal(mtu, origin, config.range6.is_some()) {
        anyhow::bail!(refusal);
    }
    let epoch = Instant::now();
    let (worker_tx, worker_rx) = mpsc::channel(crate::router::WORKER_EVENTS);
    let my_id = identity.id();
    // After a rotation the router keeps the short ID its old key held (the
    // topology entry's announcement is what lets it, `Gossip::with_rotation`).
    // It is saved (`crypto::carried_short`) so a plain restart keeps it.
    let carried = match &previous {
        Some((_, pending)) => {
            let short = pending.carried_short();
            if let Err(e) = carried_short::save(&config.state_dir, my_id, short) {
                tracing::warn!(
                    path = %carried_short::path(&config.state_dir).display(),
                    "cannot save the carried short ID ({e}); the next restart announces the preferred one"
                );
            }
            Some(short)
        }
        None => carried_short::load(&config.state_dir, my_id),
    };
    let short = carried.unwrap_or(ShortId::preferred(my_id));
    let (dataplane, control_socket) = Dataplane::start(
        &DataplaneConfig {
            iface: config.iface.clone(),
            listen: config.listen,
            workers: config.workers,
            offload: config.offload,
            priority: config.worker_priority,
            tun_txqueuelen: config.tun_txqueuelen,
        },
        Snapshot::new(short, mtu as usize),
        worker_tx,
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => anyhow::anyhow!(
            "no permission to create the TUN device {}: run weft router as root or with CAP_NET_ADMIN (in a container under runc 1.2.0 to 1.2.3 the device cgroup refuses tun: upgrade runc to 1.2.4 or later, see deploy/README.md \"/dev/net/tun\")",
            config.iface
        ),
        Some(libc::EADDRINUSE) => anyhow::anyhow!("UDP port {} is already in use: pick another --listen", config.listen),
        _ => anyhow::anyhow!("cannot start the data plane on {} / {}: {e}", config.iface, config.listen),
    })?;
    let range = crate::ipam::AddrRange::new(
        std::net::Ipv4Addr::from(config.range.first()).into(),
        config.range.prefix(),
    )
    .map_err(|e| anyhow::anyhow!("--ipalloc-range {}: {e}", config.range))?;
    // DESIGN.md: "Before an empty-state router claims anything, it rebuilds
    // its in-use set from the kernel."
    let in_use = netlink::addresses_in_use(&config.iface, range).await;
    let mut ipam = IpamDriver::open(
        &config.state_dir,
        "ipam",
        &identity,
        previous.as_ref().map(|p| &p.0),
        range,
        config.init.clone(),
        &in_use,
        Instant::now(),
    )?;
    // Dual-stack pods (issue 19): the IPv6 range gets a second allocator
    // with its own ring, state files and channel, and the same rebuild from
    // the kernel (the /128 routes of pods that outlived the router's state).
    let mut ipam6 = match config.range6 {
        Some(range6) => {
            let range6 =
                crate::pod_ranges::resolve(range6, secrets.primary_id(), &config.state_dir)?;
            tracing::info!(range = %range6, "IPv6 pod range");
            let in_use6 = netlink::addresses_in_use(&config.iface, range6).await;
            Some(IpamDriver::open(
                &config.state_dir,
                "ipam6",
                &identity,
                previous.as_ref().map(|p| &p.0),
                range6,
                config.init.clone(),
                &in_use6,
                Instant::now(),
            )?)
        }
        None => None,
    };
    if let Some((old, pending)) = &previous {
        // Every store is under the new ID now: the new key becomes the
        // identity (the ring goes out only once the control loop runs).
        pending.commit(&config.state_dir)?;
        tracing::info!(from = %old.id(), to = %identity.id(), "identity rotation complete");
    }
    for ipam in std::iter::once(&mut ipam).chain(ipam6.as_mut()) {
        if let Some(after) = config.reclaim_after {
            ipam.reclaim_after(after);
        }
        if config.peers_from_kube.is_some() {
            ipam.hold(
                "waiting for the first Kubernetes node list (--peers-from-kube) to pick the voters",
            );
        }
    }
    let plan = InterfacePlan {
        iface: config.iface.clone(),
        mtu,
        ipv4_route_mtu: None,
        own_address: None,
        range: config.range,
        owned: Vec::new(),
        range6: ipam6.as_ref().map(IpamDriver::range),
        owned6: Vec::new(),
        own_address6: None,
    };
    netlink::configure(&plan).await?;
    let ipv6_pods = ipam6.is_some();
    let forwarding = check_forwarding(&config.iface, ipv6_pods).await;
    log_forwarding(&forwarding, None);
    let (forwarding_tx, forwarding_rx) = watch::channel(forwarding);
    tokio::spawn(keep_forwarding(
        config.iface.clone(),
        ipv6_pods,
        forwarding_tx,
    ));
    let firewall = crate::host_firewall::start(crate::host_firewall::Rules {
        range: config.range,
        range6: ipam6.as_ref().map(IpamDriver::range),
        iface: config.iface.clone(),
        masquerade: config.masquerade,
        masquerade6: ipam6
            .as_ref()
            .is_some_and(|i| config.masquerade6.applies_to(i.range())),
    });
    let (kernel_tx, kernel_rx) = watch::channel(plan);
    tokio::spawn(apply_kernel_plans(kernel_rx));
    tracing::info!(
        name = %config.name,
        id = %identity.id(),
        listen = %config.listen,
        %advertised,
        underlay = crate::underlay::Families::of_listen(config.listen).label(),
        mtu,
        mtu_source,
        identity = if start.created { "created" } else { "loaded" },
        workers = dataplane.lanes(),
        "router starting"
    );
    if config.secret_file.is_none() {
        tokio::spawn(async {
            let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every_minute.tick().await;
                tracing::warn!(
                    "running with --insecure: any router can join this mesh; pass --secret-file"
                );
            }
        });
    }
    let (connection_tx, connection_rx) = mpsc::unbounded_channel();
    let secrets = Arc::new(ArcSwap::from_pointee(secrets));
    if let Some(path) = config.secret_file.clone() {
        tokio::spawn(watch_secrets(path, secrets.clone()));
    }
    let context = Arc::new(ConnectionContext {
        identity: ArcSwap::from_pointee(identity),
        secrets,
        prologue: handshake::prologue(&config.range.to_string()),
        hello: Hello {
            versions: Versions::OURS,
            name: config.name.clone(),
            short_id: short.0,
            listen: advertised,
            mtu,
            incarnation: rand::random(),
            session_index: 0,
            cluster_range: config.range.to_string(),
        },
        session_indices: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
        events: connection_tx,
        backlog: Default::default(),
        msg1_guard: std::sync::Mutex::new(crate::crypto::Msg1Guard::new()),
    });
    let (control_tx, api_rx) = mpsc::channel(64);
    let (api_tx, spliced_rx) = mpsc::channel(64);
    tokio::spawn(crate::host_firewall::splice_status(
        spliced_rx, control_tx, firewall,
    ));
    let api_tx = match &config.network_policy {
        Some(kube) => {
            let shared = crate::policy::driver::Shared::default();
            let (local_tx, local_rx) = mpsc::channel(64);
            tokio::spawn(crate::policy::driver::run(
                crate::policy::driver::PolicyTask {
                    source: kube.source.clone(),
                    sa_dir: kube.sa_dir.clone(),
                    node: config.name.clone(),
                },
                shared.clone(),
                local_rx,
            ));
            let (allocations_tx, allocations_rx) = mpsc::channel(64);
            tokio::spawn(crate::policy::local::splice_allocations(
                allocations_rx,
                api_tx,
                local_tx,
            ));
            let (policy_tx, policy_rx) = mpsc::channel(64);
            tokio::spawn(crate::policy::status::splice_status(
                policy_rx,
                allocations_tx,
                shared,
            ));
            policy_tx
        }
        None => api_tx,
    };
    if let Some(listener) = metrics_listener {
        tokio::spawn(crate::metrics::serve(listener, api_tx.clone()));
    }
    let (own_id_tx, own_id_rx) = tokio::sync::watch::channel(my_id);
    if let Some(kube) = &config.peers_from_kube {
        let (names_tx, names_rx) = tokio::sync::watch::channel(None);
        tokio::spawn(crate::kube::run(
            crate::kube::seed_task(kube, &config.name, config.listen, &config.seeds),
            api_tx.clone(),
            names_tx,
        ));
        tokio::spawn(crate::kube::lease_task::run(
            kube.lease_task(&config.name, own_id_rx),
            api_tx.clone(),
            names_rx,
        ));
    }
    tokio::spawn(api::server::serve(api_listener, config.api.clone(), api_tx));
    let control = Control::new(
        ControlConfig {
            name: config.name.clone(),
            listen: advertised,
            seeds: config.seeds.clone(),
            advertise: config.advertise.clone(),
            families: crate::underlay::Families::of_listen(config.listen),
            range: config.range,
            mtu,
            mtu_source: mtu_source.clone(),
            rekey_after: config.rekey_after,
            forwarding: forwarding_rx,
            rotation_window: config.rotation_window,
            state_dir: config.state_dir.clone(),
            rotated_from: previous
                .map(|(old, pending)| (pending.rotation, Arc::new(old), pending.carried_short())),
            carried_short: carried,
            rotate_at_start: start.rotate_at_start,
            own_id: own_id_tx,
        },
        context,
        dataplane,
        tokio::net::UdpSocket::from_std(control_socket)?,
        epoch,
        crate::control::ipam::PodIpam { ipam, ipam6 },
        kernel_tx,
    );
    let stopped = control
        .run(
            listener,
            ControlInputs {
                connections: connection_rx,
                workers: worker_rx,
                api: api_rx,
            },
            shutdown_signal(),
        )
        .await;
    let _ = std::fs::remove_file(&config.api);
    tracing::info!("router stopped");
    Ok(stopped)
}

/// Applies each new kernel plan (node address, owned ranges) from the
/// control task; a failure is logged and retried with the next plan or
/// after 5 s.
async fn apply_kernel_plans(mut plans: watch::Receiver<InterfacePlan>) {
    loop {
        let plan = plans.borrow_and_update().clone();
        if let Err(e) = netlink::configure(&plan).await {
            tracing::warn!(error = %e, "cannot apply the interface plan; retrying");
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => continue,
                changed = plans.changed() => if changed.is_err() { return },
            }
            continue;
        }
        if plans.changed().await.is_err() {
            return;
        }
    }
}

/// How often the router re-checks IPv4 forwarding: a `sysctl --system` run
/// that writes `net.ipv4.ip_forward=0` turns it off on every interface.
const FORWARDING_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps IPv4 forwarding on where the data path needs it (an uplink that
/// appears later, a sysctl reload), publishing each pass for `weft status`.
async fn keep_forwarding(
    iface: String,
    ipv6_pods: bool,
    reports: watch::Sender<crate::forwarding::Report>,
) {
    let mut every = tokio::time::interval(FORWARDING_RECHECK);
    every.tick().await;
    loop {
        every.tick().await;
        let report = check_forwarding(&iface, ipv6_pods).await;
        log_forwarding(&report, Some(&reports.borrow()));
        reports.send_replace(report);
    }
}

/// One forwarding pass: IPv4 per interface, and the node's IPv6 forwarding
/// when pods have IPv6 addresses (turned on when it is off and /proc/sys
/// is writable; in the DaemonSet's pod it is not, and status says so).
async fn check_forwarding(iface: &str, ipv6_pods: bool) -> crate::forwarding::Report {
    let mut report = netlink::ensure_forwarding(iface).await;
    if ipv6_pods {
        report.ipv6 = Some(netlink::ensure_ipv6_forwarding());
    }
    report
}

/// Logs a forwarding pass: at start what is on and what the router turned
/// on; later only what it had to turn on again, and a warning when what is
/// off changes (not every 10 s).
fn log_forwarding(
    report: &crate::forwarding::Report,
    previous: Option<&crate::forwarding::Report>,
) {
    let turned_on = report.turned_on();
    match previous {
        None => tracing::info!(
            forwarding = %report.summary(),
            turned_on = ?turned_on,
            "IPv4 forwarding checked"
        ),
        Some(_) if !turned_on.is_empty() => tracing::info!(
            turned_on = ?turned_on,
            "IPv4 forwarding was off (a sysctl reload? a new interface?); turned it on"
        ),
        Some(_) => {}
    }
    if let Some(line) = report.warning()
        && previous.and_then(crate::forwarding::Report::warning) != Some(line.clone())
    {
        tracing::warn!("{line}");
    }
    if report.ipv6 == Some(crate::forwarding::Outcome::TurnedOn) {
        tracing::info!(
            "turned IPv6 forwarding on (net.ipv6.conf.all.forwarding) for the IPv6 pods"
        );
    }
    if let Some(line) = report.ipv6_warning()
        && previous.and_then(crate::forwarding::Report::ipv6_warning) != Some(line.clone())
    {
        tracing::warn!("{line}");
    }
}

/// Reloads the secret file when its content changes (a Kubernetes Secret
/// volume swaps a symlink, so the content is compared, not the inode). New
/// handshakes and rekeys use the new secrets; live sessions move over at
/// their next rekey (DESIGN.md "Secret rotation"). A bad file is refused
/// with a warning and the old secrets stay.
async fn watch_secrets(path: std::path::PathBuf, secrets: Arc<ArcSwap<ClusterSecrets>>) {
    let mut last = std::fs::read(&path).ok();
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        let Ok(content) = std::fs::read(&path) else {
            continue;
        };
        if last.as_ref() == Some(&content) {
            continue;
        }
        last = Some(content.clone());
        match ClusterSecrets::parse(&content) {
            Ok(new) => {
                tracing::info!(secrets = new.ids().count(), "cluster secrets reloaded");
                secrets.store(Arc::new(new));
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "secret file changed but is invalid; keeping the old secrets")
            }
        }
    }
}

/// The TCP control listener. `[::]` serves both families whatever
/// net.ipv6.bindv6only says (as the UDP sockets do, router/udp.rs).
fn bind_control(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if listen.is_ipv6() && listen.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&listen.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// The address peers should use: the listen address, or when it is
/// unspecified, the local address the kernel would use toward the first seed
/// (found with a connected UDP socket: nothing is sent).
/// Bytes the underlay adds to an inner packet: an outer IP header counted
/// as IPv6's 40 so that either family fits (DESIGN.md "MTU"), UDP, the data
/// header and the AEAD tag. 1500 - 80 = 1420.
const ENCAPSULATION: u32 =
    40 + 8 + crate::router::packet::HEADER_LEN as u32 + crate::crypto::TAG_LEN as u32;

/// The MTU this router announces and where it came from: `--mtu`, or the
/// underlay interface's MTU less [`ENCAPSULATION`] (1420 if the interface
/// cannot be found). Logged with "router starting", so that a router that
/// fails to start says only why.
async fn overlay_mtu(configured: Option<u32>, advertised: SocketAddr) -> (u32, String, MtuOrigin) {
    if let Some(mtu) = configured {
        return (mtu, "--mtu".into(), MtuOrigin::Flag);
    }
    let found = netlink::mtu_of_interface_with(advertised.ip()).await;
    match found {
        // Loopback's 65536 would make datagrams over UDP's limit.
        Some(underlay) if underlay >= 576 + ENCAPSULATION => (
            (underlay - ENCAPSULATION).min(65_000),
            format!(
                "underlay interface MTU {underlay} - {ENCAPSULATION} (outer IP header counted as IPv6's 40, UDP 8, data header 16, tag 16)"
            ),
            MtuOrigin::Underlay {
                interface: underlay,
                encapsulation: ENCAPSULATION,
            },
        ),
        _ => (
            1420,
            format!(
                "default: no interface holds {} (pass --mtu to choose)",
                advertised.ip()
            ),
            MtuOrigin::Default,
        ),
    }
}

fn advertised_address(listen: SocketAddr, seeds: &[SocketAddr]) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    // A seed of a family the listen address serves (an IPv6-only router's
    // local address toward an IPv4 seed would be no use).
    let families = crate::underlay::Families::of_listen(listen);
    let local = seeds.iter().find(|s| families.reach(**s)).and_then(|seed| {
        let any: IpAddr = if seed.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let socket = std::net::UdpSocket::bind((any, 0)).ok()?;
        socket.connect(seed).ok()?;
        socket.local_addr().ok()
    });
    let fallback = if listen.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
    };
    SocketAddr::new(local.map_or(fallback, |l| l.ip()), listen.port())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ipam::store::{PersistedAllocations, STATE_FORMAT};
    use crate::ipam::{FileStore, Store};
    use rand::SeedableRng;

    /// A state dir with an identity, a pending rotation of it and, when
    /// `owner` is set, an allocation record owned by it.
    fn state(
        name: &str,
        owner: Option<bool>,
    ) -> (std::path::PathBuf, Identity, identity_next::Pending) {
        let dir = std::env::temp_dir().join(format!("weft-resume-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (old, _) = Identity::load_or_create(&dir).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let pending = identity_next::Pending::generate(&old, 1, &mut rng);
        pending.write(&dir).unwrap();
        if let Some(handed) = owner {
            let me = if handed {
                pending.identity.id()
            } else {
                old.id()
            };
            let record = PersistedAllocations {
                format: STATE_FORMAT,
                me,
                allocations: vec![],
                pods: vec![],
            };
            let mut store = FileStore::open_prefixed(&dir, "ipam").unwrap();
            store.save_allocations(&record.encode()).unwrap();
        }
        (dir, old, pending)
    }

    #[test]
    fn a_start_completes_a_rotation_whose_state_was_handed_over() {
        let (dir, old, pending) = state("handed", Some(true));
        let resumed = resume_rotation(&dir, &old).unwrap().unwrap();
        assert_eq!(resumed.identity.id(), pending.identity.id());
        // The file stays until the caller has opened every store.
        assert!(dir.join(identity_next::NEXT_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_start_discards_a_rotation_nothing_was_handed_over_for() {
        for owner in [None, Some(false)] {
            let (dir, old, _) = state("discard", owner);
            assert!(resume_rotation(&dir, &old).unwrap().is_none());
            assert!(!dir.join(identity_next::NEXT_FILE).exists());
            let (kept, _) = Identity::load_or_create(&dir).unwrap();
            assert_eq!(kept.id(), old.id());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_start_after_the_key_was_replaced_only_removes_the_file() {
        let (dir, _, pending) = state("replaced", Some(true));
        pending.commit(&dir).unwrap();
        pending.write(&dir).unwrap();
        let (now, _) = Identity::load_or_create(&dir).unwrap();
        assert!(resume_rotation(&dir, &now).unwrap().is_none());
        assert!(!dir.join(identity_next::NEXT_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
