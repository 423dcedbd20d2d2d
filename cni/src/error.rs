//! Every way the plugin can fail, by cause, each mapped to the CNI spec's
//! error code and printed as the CNI error object (`{cniVersion, code, msg,
//! details}`) on stdout with a non-zero exit (CNI spec "Error").

use serde::Serialize;

/// CNI error codes we use (CNI spec, "Well-known Error Codes"; 100+ are ours).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Container unknown or does not exist (its netns is gone).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// The router refused the request.
    pub const ROUTER_REFUSED: u32 = 100;
    /// The router failed internally.
    pub const ROUTER_INTERNAL: u32 = 101;
    /// The router has no such allocation.
    pub const ROUTER_NOT_FOUND: u32 = 102;
    /// Configuring the kernel failed.
    pub const NETLINK: u32 = 103;
    /// CHECK found the pod's network not as ADD left it.
    pub const CHECK_FAILED: u32 = 104;
}

/// Why a command failed. The message is one line saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The requested `cniVersion` (or the command for it) is unsupported.
    #[error("{0}")]
    Version(String),
    /// A required `CNI_*` variable is missing or malformed.
    #[error("{0}")]
    Env(String),
    /// stdin is not a JSON network configuration.
    #[error("cannot parse the network configuration on stdin: {0}")]
    Decode(String),
    /// The network configuration is JSON but not valid for weft.
    #[error("invalid weft network configuration: {0}")]
    Config(String),
    /// `CNI_NETNS` does not exist or is not a network namespace.
    #[error("{0}")]
    Netns(String),
    /// The router's socket cannot be reached, or it is not ready.
    #[error("{0}")]
    TryAgain(String),
    /// The router refused (`bad_request` maps to 4, the rest here).
    #[error("the weft router refused: {message}")]
    Router {
        /// CNI code for the router's error code.
        code: u32,
        /// The router's one line.
        message: String,
    },
    /// A kernel operation failed.
    #[error("{0}")]
    Netlink(String),
    /// CHECK found a difference.
    #[error("{0}")]
    Check(String),
    /// Reading stdin or writing stdout failed.
    #[error("{0}")]
    Io(String),
    /// STATUS: the plugin cannot serve ADD now.
    #[error("{0}")]
    NotAvailable(String),
}

impl CniError {
    /// The spec code.
    pub fn code(&self) -> u32 {
        match self {
            Self::Version(_) => code::INCOMPATIBLE_VERSION,
            Self::Env(_) => code::INVALID_ENV,
            Self::Decode(_) => code::DECODE,
            Self::Config(_) => code::INVALID_CONFIG,
            Self::Netns(_) => code::UNKNOWN_CONTAINER,
            Self::TryAgain(_) => code::TRY_AGAIN_LATER,
            Self::Router { code, .. } => *code,
            Self::Netlink(_) => code::NETLINK,
            Self::Check(_) => code::CHECK_FAILED,
            Self::Io(_) => code::IO_FAILURE,
            Self::NotAvailable(_) => code::NOT_AVAILABLE,
        }
    }

    /// A short stable label for `details`, so scripts can tell causes apart.
    fn kind(&self) -> &'static str {
        match self {
            Self::Version(_) => "unsupported-version",
            Self::Env(_) => "invalid-environment",
            Self::Decode(_) => "undecodable-config",
            Self::Config(_) => "invalid-config",
            Self::Netns(_) => "missing-netns",
            Self::TryAgain(_) => "router-unavailable",
            Self::Router { .. } => "router-error",
            Self::Netlink(_) => "netlink",
            Self::Check(_) => "check-failed",
            Self::Io(_) => "io",
            Self::NotAvailable(_) => "not-available",
        }
    }

    /// The CNI error object for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: String,
            details: &'a str,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code(),
            msg: self.to_string(),
            details: self.kind(),
        })
        .unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields_and_distinct_codes() {
        let e = CniError::TryAgain("router down".into());
        let j = e.to_json("1.0.0");
        assert_eq!(j["cniVersion"], "1.0.0");
        assert_eq!(j["code"], 11);
        assert_eq!(j["msg"], "router down");
        assert_eq!(j["details"], "router-unavailable");
        let codes = [
            CniError::Version(String::new()).code(),
            CniError::Config(String::new()).code(),
            CniError::Decode(String::new()).code(),
            CniError::Netns(String::new()).code(),
            CniError::Env(String::new()).code(),
        ];
        let mut sorted = codes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
    }
}
