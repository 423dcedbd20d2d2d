//! The plugin's inputs: the network configuration on stdin (DESIGN.md
//! "Operator contract": `{"type": "weft", "socket": ..., "mtu": 0}` inside a
//! conflist) and the `CNI_*` environment, both validated up front so that a
//! mistake is reported in one line before anything is touched.

use crate::error::CniError;
use serde::Deserialize;
use std::path::PathBuf;

/// The CNI spec versions this plugin speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Version {
    /// 0.3.0
    V030,
    /// 0.3.1
    V031,
    /// 0.4.0: adds CHECK.
    V040,
    /// 1.0.0: drops `ips[].version`.
    V100,
    /// 1.1.0: adds STATUS, GC and interface `mtu` in results.
    V110,
}

/// Every supported version, oldest first (the VERSION answer).
pub(crate) const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

impl Version {
    /// Parses a `cniVersion` string.
    pub(crate) fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "0.3.0" => Self::V030,
            "0.3.1" => Self::V031,
            "0.4.0" => Self::V040,
            "1.0.0" => Self::V100,
            "1.1.0" => Self::V110,
            other => {
                return Err(CniError::Version(format!(
                    "unsupported cniVersion {other:?}: weft supports {}",
                    SUPPORTED.join(", ")
                )));
            }
        })
    }

    /// The version string.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::V030 => "0.3.0",
            Self::V031 => "0.3.1",
            Self::V040 => "0.4.0",
            Self::V100 => "1.0.0",
            Self::V110 => "1.1.0",
        }
    }
}

/// The default router socket (DESIGN.md "Operator contract").
pub(crate) const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct Attachment {
    /// The attachment's container.
    #[serde(rename = "containerID")]
    pub(crate) container_id: String,
    /// Its interface.
    #[serde(default)]
    pub(crate) ifname: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    socket: Option<String>,
    mtu: Option<serde_json::Value>,
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

/// A validated weft network configuration.
#[derive(Clone, Debug)]
pub(crate) struct NetConf {
    /// The requested spec version (results are shaped for it).
    pub(crate) version: Version,
    /// The router's API socket.
    pub(crate) socket: PathBuf,
    /// Pod MTU; 0 = the router's overlay MTU.
    pub(crate) mtu: u32,
    /// The previous plugin's result, when chained.
    pub(crate) prev_result: Option<serde_json::Value>,
    /// GC: attachments still in use (absent = nothing given).
    pub(crate) valid_attachments: Option<Vec<Attachment>>,
}

/// Reads the `cniVersion` only, for answering errors in the caller's version
/// even when the rest of the config is bad.
pub(crate) fn peek_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    serde_json::from_slice::<Peek>(stdin)
        .ok()?
        .cni_version
        .filter(|v| SUPPORTED.contains(&v.as_str()))
}

impl NetConf {
    /// Parses and validates stdin.
    pub(crate) fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let raw: Raw =
            serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
        let version = Version::parse(
            raw.cni_version
                .as_deref()
                .ok_or_else(|| CniError::Config("\"cniVersion\" is missing".into()))?,
        )?;
        match raw.kind.as_deref() {
            Some("weft") => {}
            Some(other) => {
                return Err(CniError::Config(format!(
                    "\"type\" is {other:?}, this plugin is \"weft\""
                )));
            }
            None => return Err(CniError::Config("\"type\" is missing".into())),
        }
        if raw.name.as_deref().is_none_or(str::is_empty) {
            return Err(CniError::Config("\"name\" is missing or empty".into()));
        }
        let socket = raw.socket.unwrap_or_else(|| DEFAULT_SOCKET.to_string());
        if !socket.starts_with('/') {
            return Err(CniError::Config(format!(
                "\"socket\" must be an absolute path, got {socket:?}"
            )));
        }
        let mtu = match raw.mtu {
            None => 0,
            Some(v) => v
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .filter(|m| *m == 0 || (576..=65535).contains(m))
                .ok_or_else(|| {
                    CniError::Config(format!(
                        "\"mtu\" must be 0 (ask the router) or 576..65535, got {v}"
                    ))
                })?,
        };
        Ok(Self {
            version,
            socket: PathBuf::from(socket),
            mtu,
            prev_result: raw.prev_result.filter(|v| !v.is_null()),
            valid_attachments: raw.valid_attachments,
        })
    }
}

/// The command and its `CNI_*` environment.
#[derive(Clone, Debug)]
pub(crate) struct Env {
    /// `CNI_COMMAND`.
    pub(crate) command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION, STATUS, GC).
    pub(crate) container_id: String,
    /// `CNI_NETNS`, `None` when empty or unset.
    pub(crate) netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub(crate) ifname: String,
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// ADD
    Add,
    /// DEL
    Del,
    /// CHECK
    Check,
    /// VERSION
    Version,
    /// STATUS
    Status,
    /// GC
    Gc,
}

impl Env {
    /// Reads and validates the environment through `get`.
    pub(crate) fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(CniError::Env(format!(
                    "unknown CNI_COMMAND {other:?} (ADD, DEL, CHECK, VERSION, STATUS, GC)"
                )));
            }
            None => {
                return Err(CniError::Env(
                    "CNI_COMMAND is not set: this is a CNI plugin, run by a container runtime"
                        .into(),
                ));
            }
        };
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let netns = get("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            if container_id.is_empty() {
                return Err(CniError::Env("CNI_CONTAINERID is not set".into()));
            }
            if !container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return Err(CniError::Env(format!(
                    "CNI_CONTAINERID {container_id:?} has characters other than letters, digits, '_', '.', '-'"
                )));
            }
            if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', ':']) {
                return Err(CniError::Env(format!(
                    "CNI_IFNAME {ifname:?} is not a valid interface name (1-15 characters, no '/', ':' or space)"
                )));
            }
            if command != Command::Del && netns.is_none() {
                return Err(CniError::Env("CNI_NETNS is not set".into()));
            }
        }
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn conf(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn a_minimal_config_defaults_socket_and_mtu() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"weft","type":"weft"}"#).unwrap();
        assert_eq!(c.version, Version::V100);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.mtu, 0);
        assert!(c.prev_result.is_none());
    }

    #[test]
    fn bad_configs_are_refused_with_one_line_each() {
        let cases = [
            (r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#, 7),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","mtu":10}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","mtu":"x"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","socket":"rel"}"#,
                7,
            ),
            (r#"{"cniVersion":"1.0.0","type":"weft"}"#, 7),
            (r#"{"cniVersion":"0.2.0","name":"n","type":"weft"}"#, 1),
            (r#"{"name":"n","type":"weft"}"#, 7),
            (r#"not json"#, 6),
        ];
        for (text, code) in cases {
            let e = conf(text).unwrap_err();
            assert_eq!(e.code(), code, "{text}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn valid_attachments_and_prev_result_are_read() {
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"weft","prevResult":{"ips":[]},
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert!(c.prev_result.is_some());
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    }

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::parse(|k| map.get(k).cloned())
    }

    #[test]
    fn env_requires_what_each_command_needs() {
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert_eq!(env(&[]).unwrap_err().code(), 4);
        assert_eq!(env(&[("CNI_COMMAND", "ADD")]).unwrap_err().code(), 4);
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(env(&add).unwrap_err().code(), 4, "no netns");
        let mut del = add;
        del[0] = ("CNI_COMMAND", "DEL");
        assert!(
            env(&del).unwrap().netns.is_none(),
            "DEL without netns is fine"
        );
        assert_eq!(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a/b"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x")
            ])
            .unwrap_err()
            .code(),
            4
        );
    }
}
