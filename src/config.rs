//! The router's configuration, parsed from flags and `WEFT_*` environment
//! variables and validated up front, so that every mistake is one line that
//! says what is wrong and how to fix it. `main.rs` reads every variable
//! (clap `env`) and builds [`RouterConfig`]; nothing below reads the
//! environment, so each setting has one way in. This module depends on the
//! modules whose settings it carries (`kube`, `router`), never the reverse.

use crate::cidr::Ipv4Cidr;
pub use crate::pod_ranges::{Range6, parse_ranges};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// The default port for TCP control and UDP data.
pub const DEFAULT_PORT: u16 = 6783;

/// Whether IPv6 pod traffic leaving the IPv6 pod range through a non-weft
/// interface gets the node's address as its source (`--masquerade6`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Masquerade6 {
    /// On for a unique local range (fc00::/7), off for a global one: a ULA
    /// source cannot be answered from outside the cluster, so pods could
    /// not reach anything off it, while a global range is routable and
    /// its pods keep their own addresses (the operator routes it).
    #[default]
    Auto,
    /// Always.
    On,
    /// Never: the outside sees the pods' own addresses.
    Off,
}

impl Masquerade6 {
    /// Whether to masquerade for the IPv6 pod range `range6`.
    pub fn applies_to(self, range6: crate::ipam::AddrRange) -> bool {
        match self {
            Self::On => true,
            Self::Off => false,
            Self::Auto => match range6.base() {
                std::net::IpAddr::V6(base) => base.is_unique_local() && range6.prefix() >= 7,
                std::net::IpAddr::V4(_) => false,
            },
        }
    }
}

impl std::str::FromStr for Masquerade6 {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(format!("{s:?}: expected auto, on or off")),
        }
    }
}

/// How the IPAM ring is initialised (DESIGN.md "Ring initialisation").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpallocInit {
    /// The default (`consensus`, or `consensus=N` to insist on N voters): the
    /// voters are the routers at the seed addresses (this one included when
    /// its own address is in the list, or when it names its peers), and a
    /// majority of them initialises the ring.
    Consensus {
        /// The number of voters the operator expects, checked when given.
        expected: Option<usize>,
    },
    /// `seed=NAME1,NAME2,...`: the routers so named split the range at
    /// once, without a vote, as soon as every name is known.
    Seed(Vec<String>),
    /// `observer`: never initialises; learns the ring from peers.
    Observer,
}

impl IpallocInit {
    /// Parses `--ipalloc-init`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        if let Some(names) = text.strip_prefix("seed=") {
            let names: Vec<String> = names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect();
            if names.is_empty() {
                anyhow::bail!(
                    "--ipalloc-init seed= needs at least one router name, e.g. seed=node-a,node-b"
                );
            }
            return Ok(Self::Seed(names));
        }
        if text == "consensus" {
            return Ok(Self::Consensus { expected: None });
        }
        if let Some(count) = text.strip_prefix("consensus=") {
            return match count.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Self::Consensus { expected: Some(n) }),
                _ => anyhow::bail!(
                    "--ipalloc-init consensus={count:?} needs a positive number of voters, e.g. consensus=3"
                ),
            };
        }
        if text == "observer" {
            return Ok(Self::Observer);
        }
        anyhow::bail!(
            "--ipalloc-init {text:?} is not a mode: use consensus (the default), consensus=N, seed=NAME1,NAME2,... or observer"
        )
    }

    /// The mode's name for status.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Consensus { .. } => "consensus",
            Self::Seed(_) => "seed",
            Self::Observer => "observer",
        }
    }
}

/// Resolves `HOST:PORT` (or `HOST`, port 6783) to one socket address.
pub fn resolve_peer(text: &str) -> anyhow::Result<SocketAddr> {
    let with_port = if text.parse::<SocketAddr>().is_ok()
        || text
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        text.to_string()
    } else {
        format!("{text}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            anyhow::anyhow!("--peer {text:?} is not a reachable HOST:PORT (e.g. 192.0.2.10:6783)")
        })
}

/// Everything `weft router` needs, validated.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Router name.
    pub name: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// Seeds.
    pub seeds: Vec<SocketAddr>,
    /// `--advertise`: endpoints besides the listen address.
    pub advertise: Vec<SocketAddr>,
    /// Secret file, unless insecure.
    pub secret_file: Option<PathBuf>,
    /// The cluster range.
    pub range: Ipv4Cidr,
    /// The IPv6 pod range for dual-stack pods, if asked for (issue 19).
    pub range6: Option<Range6>,
    /// How it is split.
    pub init: IpallocInit,
    /// State directory.
    pub state_dir: PathBuf,
    /// API socket path.
    pub api: PathBuf,
    /// TUN device name.
    pub iface: String,
    /// Overlay MTU; `None` derives it from the underlay interface
    /// (`--mtu auto`, the default).
    pub mtu: Option<u32>,
    /// Rekey interval.
    pub rekey_after: Duration,
    /// Data-plane workers.
    pub workers: usize,
    /// Prometheus endpoint, if any.
    pub metrics_addr: Option<String>,
    /// `--peers-from-kube`: where to list Nodes for seeds, if at all.
    pub peers_from_kube: Option<crate::kube::KubeSettings>,
    /// `--reclaim-after`: take over the ranges of routers unreachable that
    /// long (off by default; issue 20).
    pub reclaim_after: Option<Duration>,
    /// `--network-policy`: where to list and watch pods, namespaces and
    /// NetworkPolicies, if at all (the same API server settings).
    pub network_policy: Option<crate::kube::KubeSettings>,
    /// Masquerade pod traffic leaving the range (off with `--no-masq`).
    pub masquerade: bool,
    /// Masquerade IPv6 pod traffic leaving the IPv6 range (`--masquerade6`).
    pub masquerade6: Masquerade6,
    /// Ask for the TUN and UDP offloads (off with `WEFT_DISABLE_OFFLOAD`).
    pub offload: bool,
    /// The data-plane workers' scheduling class (`WEFT_WORKER_PRIORITY`).
    pub worker_priority: crate::router::priority::Priority,
    /// The TUN queue length on the offload path (`WEFT_TUN_TXQUEUELEN`).
    pub tun_txqueuelen: Option<i32>,
    /// `--identity-max-age`: rotate the identity key at start (once the
    /// ring is known) when it is older than this (issue 20).
    pub identity_max_age: Option<Duration>,
    /// How long a peer's retired identity key is still accepted after a
    /// rotation is learned (`WEFT_IDENTITY_ROTATION_WINDOW_SECS`, tests;
    /// `crypto::rotation::DEFAULT_WINDOW` otherwise).
    pub rotation_window: Duration,
}

impl RouterConfig {
    /// Checks what can be checked before touching the system.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.name.is_empty() || self.name.len() > 253 {
            anyhow::bail!("--name must be 1 to 253 characters");
        }
        if let IpallocInit::Seed(names) = &self.init
            && !names.contains(&self.name)
        {
            anyhow::bail!(
                "--ipalloc-init seed={} does not name this router ({:?}): list every initial router, this one included",
                names.join(","),
                self.name
            );
        }
        if let Some(mtu) = self.mtu
            && !(576..=65_000).contains(&mtu)
        {
            anyhow::bail!(
                "--mtu {mtu} is out of range: use 576 to 65000, or auto (1420 suits a 1500-byte underlay)"
            );
        }
        if let Some(mtu) = self.mtu
            && let Some(refusal) = crate::control::mtu::start_refusal(
                mtu,
                crate::control::mtu::MtuOrigin::Flag,
                self.range6.is_some(),
            )
        {
            anyhow::bail!(refusal);
        }
        if self.iface.is_empty() || self.iface.len() > 15 {
            anyhow::bail!("--iface {:?} must be 1 to 15 characters", self.iface);
        }
        if self.range.prefix() > 30 {
            anyhow::bail!(
                "--ipalloc-range {} is too small: use a /30 or larger (default 10.32.0.0/12)",
                self.range
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade6_auto_is_on_for_a_ula_range_and_off_for_a_global_one() {
        let range = |text: &str| crate::ipam::AddrRange::parse(text).expect("a range");
        let auto: Masquerade6 = "auto".parse().expect("valid");
        assert!(auto.applies_to(range("fd00:32::/48")));
        assert!(auto.applies_to(range("fc00:1::/64")));
        assert!(!auto.applies_to(range("2001:db8:32::/48")));
        assert!(!auto.applies_to(range("fe80::/64")));
        let on: Masquerade6 = "on".parse().expect("valid");
        let off: Masquerade6 = "off".parse().expect("valid");
        assert!(on.applies_to(range("2001:db8:32::/48")));
        assert!(!off.applies_to(range("fd00:32::/48")));
        assert!("yes".parse::<Masquerade6>().is_err());
        assert_eq!(Masquerade6::default(), Masquerade6::Auto);
    }

    #[test]
    fn ipalloc_init_parses_every_mode_and_refuses_the_rest() {
        assert_eq!(
            IpallocInit::parse("seed=a, b").expect("valid"),
            IpallocInit::Seed(vec!["a".into(), "b".into()])
        );
        assert!(IpallocInit::parse("seed=").is_err());
        assert_eq!(
            IpallocInit::parse("consensus=3").expect("valid"),
            IpallocInit::Consensus { expected: Some(3) }
        );
        assert_eq!(
            IpallocInit::parse("consensus").expect("valid"),
            IpallocInit::Consensus { expected: None }
        );
        assert_eq!(
            IpallocInit::parse("observer").expect("valid"),
            IpallocInit::Observer
        );
        assert!(IpallocInit::parse("consensus=0").is_err());
        assert!(IpallocInit::parse("paxos").is_err());
    }

    #[test]
    fn peers_default_to_port_6783() {
        assert_eq!(resolve_peer("192.0.2.1").expect("valid").port(), 6783);
        assert_eq!(resolve_peer("192.0.2.1:7000").expect("valid").port(), 7000);
        assert!(resolve_peer("192.0.2.1:notaport").is_err());
    }
}
