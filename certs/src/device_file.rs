//! The device file: a device's identity and where its gateway is, as `gateway device add
//! --out FILE` (or provisioning) writes it and `edge-agent run` reads it.
//!
//! The format lives here, with the identity it carries, so that the gateway can write it
//! without linking the agent.

use std::path::Path;

use crate::DeviceIdentity;
use protocol::DeviceUuid;
use serde::{Deserialize, Serialize};

/// Errors in the agent configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/missing keys. The message never quotes
    /// the file's text: the offending line may be a line of the private key.
    #[error("{path}: {}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Parse {
        /// The file.
        path: String,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// What is wrong (toml's message, without the source excerpt).
        message: String,
    },
    /// A key has an invalid value.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

fn default_server_name() -> String {
    crate::TUNNEL_SERVER_NAME.to_string()
}

/// Contents of the agent configuration file: the device identity and where to connect.
///
/// Written by `gateway device add --out FILE`. Unknown keys are refused so a typo does not
/// silently fall back to a default.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The device uuid (32 hex characters).
    pub uuid: String,
    /// Gateway tunnel address, `HOST:PORT` (UDP); or several, comma-separated, for a
    /// gateway with several nodes (`"a.example:443,b.example:443"`). The agent dials them
    /// in order and moves to the next after a failed dial or a lost session (see
    /// [`protocol::host::gateway_addresses`] for the syntax). A plain string either way,
    /// so files written before lists existed read unchanged.
    pub gateway: String,
    /// TLS server name to verify. Default is the fixed tunnel name every gateway
    /// certificate carries.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// The fleet CA certificate (PEM) the gateway's certificate must chain to.
    pub ca_cert: String,
    /// This device's certificate (PEM).
    pub cert: String,
    /// This device's private key (PEM).
    pub key: String,
    /// Where `Http` streams go on the device, `HOST:PORT`. Default is `127.0.0.1:80`;
    /// `--target` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("uuid", &self.uuid)
            .field("gateway", &self.gateway)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        guard_private(path);
        let cfg: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            line: e.span().map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            }),
            message: e.message().trim_end().to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Serialises to TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }

    /// Checks every key, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.device_uuid()?;
        self.gateways()?;
        if let Some(t) = &self.target {
            if !t.contains(':') {
                return Err(ConfigError::Invalid {
                    key: "target",
                    reason: format!("{t:?} is not HOST:PORT"),
                });
            }
        }
        crate::parse_certs(&self.ca_cert, "ca_cert").map_err(|e| ConfigError::Invalid {
            key: "ca_cert",
            reason: e.to_string(),
        })?;
        crate::client_config(&self.ca_cert, &self.identity()?).map_err(|e| {
            ConfigError::Invalid {
                key: "cert",
                reason: e.to_string(),
            }
        })?;
        Ok(())
    }

    /// The gateway addresses, in the order the agent tries them.
    pub fn gateways(&self) -> Result<Vec<&str>, ConfigError> {
        protocol::host::gateway_addresses(&self.gateway).map_err(|e| ConfigError::Invalid {
            key: "gateway",
            reason: e.to_string(),
        })
    }

    /// The parsed device uuid.
    pub fn device_uuid(&self) -> Result<DeviceUuid, ConfigError> {
        self.uuid
            .parse()
            .map_err(|e: protocol::InvalidUuid| ConfigError::Invalid {
                key: "uuid",
                reason: e.to_string(),
            })
    }

    /// The device identity held in this file.
    pub fn identity(&self) -> Result<DeviceIdentity, ConfigError> {
        Ok(DeviceIdentity {
            uuid: self.device_uuid()?,
            cert_pem: self.cert.clone(),
            key_pem: self.key.clone(),
        })
    }
}

/// The file holds the device's private key: one that group or others can read (or
/// write) is made private (mode 0600) with a loud warning, as the key may have leaked.
///
/// Warn-and-fix rather than refuse (as `ssh` does with a private key): the tunnel is
/// usually the only way to reach a device, and an agent that refused to start over a
/// mode bit would strand it until someone visits it. When the mode cannot be changed
/// (another owner, a read-only file system) the warning says what to run.
fn guard_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            return;
        }
        let fixed = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        match fixed {
            Ok(()) => tracing::warn!(
                file = %path.display(),
                mode = format!("{mode:04o}"),
                "the device's private key file was accessible to other users: its key may have leaked. \
                 Its mode is now 0600 (`chmod 600 {}`); consider re-provisioning the device",
                path.display()
            ),
            Err(e) => tracing::warn!(
                file = %path.display(),
                mode = format!("{mode:04o}"),
                error = %e,
                "the device's private key file is accessible to other users and its mode cannot be changed: \
                 run `chmod 600 {}`",
                path.display()
            ),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(gateway: &str) -> AgentConfig {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::Ca::create_new(dir.path()).unwrap();
        let id = ca.issue_device(crate::random_uuid()).unwrap();
        AgentConfig {
            uuid: id.uuid.to_string(),
            gateway: gateway.into(),
            server_name: default_server_name(),
            ca_cert: ca.cert_pem().to_string(),
            cert: id.cert_pem,
            key: id.key_pem,
            target: None,
        }
    }

    #[test]
    fn the_gateway_key_holds_one_address_or_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.toml");
        // A file written before lists existed reads as a list of one.
        let one = file("gw.example:443");
        std::fs::write(&path, one.to_toml()).unwrap();
        let back = AgentConfig::load(&path).unwrap();
        assert_eq!(back.gateway, "gw.example:443");
        assert_eq!(back.gateways().unwrap(), ["gw.example:443"]);
        // Still a plain string in the file.
        let listed = file("a.example:443, b.example:443");
        assert!(listed
            .to_toml()
            .contains("gateway = \"a.example:443, b.example:443\""));
        std::fs::write(&path, listed.to_toml()).unwrap();
        assert_eq!(
            AgentConfig::load(&path).unwrap().gateways().unwrap(),
            ["a.example:443", "b.example:443"]
        );
    }

    #[test]
    fn a_bad_gateway_entry_is_refused_by_name() {
        for (list, bad) in [
            ("gw.example", "\"gw.example\""),
            ("a.example:443,b.example", "address 2 of 2, \"b.example\""),
            ("a.example:443,", "address 2 of 2, \"\""),
        ] {
            let e = file(list).validate().unwrap_err().to_string();
            assert!(e.starts_with("invalid value for `gateway`: "), "{e}");
            assert!(
                e.contains(&format!("{bad} is not HOST:PORT")),
                "{list}: {e}"
            );
        }
    }
}
