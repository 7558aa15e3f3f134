//! The target model: what one device should run (one app at one release), as it travels
//! to the agent (JSON, in the `target_state` control message) and sits in its journal.
//!
//! The compose files releases are published as, and the rules that turn one into a
//! [`TargetState`], live in the `compose` crate (nested under `protocol/`): the agent
//! never parses YAML. Nothing here talks to an engine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One environment variable set on the gateway for a fleet or a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// Service the variable is scoped to; `""` means every service.
    pub service: String,
    /// Variable name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// What one device should run: one app at one release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetState {
    /// Numeric app (fleet) id; prefixes container, volume and network names.
    pub app_id: u32,
    /// App (fleet) name.
    pub app_name: String,
    /// Release id.
    pub release: String,
    /// Services by name, with merged environments.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Named volumes by compose name (the engine name is `<app_id>_<name>`).
    pub volumes: BTreeMap<String, VolumeSpec>,
    /// Named networks by compose name (the engine name is `<app_id>_<name>`).
    pub networks: BTreeMap<String, NetworkSpec>,
}

/// Everything the agent needs to create one service's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Stable numeric id (see the module docs).
    pub service_id: u32,
    /// Image reference.
    pub image: String,
    /// Command, already split into words.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Entrypoint, already split into words.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Environment (after merging, in a target state).
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Container labels (also carry update strategy and stop grace period).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Mounts.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Services this one waits for, and for what.
    #[serde(default)]
    pub depends_on: BTreeMap<String, DependsCondition>,
    /// Healthcheck override; `None` keeps the image's.
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    /// `network_mode` (`host`, `none`, `bridge`, `service:x`); `None` = the app network.
    #[serde(default)]
    pub network_mode: Option<String>,
    /// Named networks the service joins (empty = the app's default network).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Privileged container.
    #[serde(default)]
    pub privileged: bool,
    /// Added capabilities.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Device mappings, `host[:container[:perms]]`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Stop grace period in seconds, when set in compose.
    #[serde(default)]
    pub stop_grace_period: Option<u64>,
}

impl ServiceSpec {
    /// SHA-256 hex of the canonical JSON of every field whose change needs a new
    /// container. `service_id` and `depends_on` are left out: they change no container.
    pub fn config_hash(&self) -> String {
        let mut copy = self.clone();
        copy.service_id = 0;
        copy.depends_on.clear();
        // BTreeMaps and Vecs serialise in a fixed order, so this JSON is canonical.
        let json = serde_json::to_vec(&copy).expect("a ServiceSpec always serialises");
        hex(&Sha256::digest(&json))
    }

    /// The update strategy from the `io.balena.update.strategy` label.
    pub fn update_strategy(&self) -> &str {
        self.labels
            .get("io.balena.update.strategy")
            .map(String::as_str)
            .unwrap_or("download-then-kill")
    }
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Host address to bind, `None` = all.
    pub host_ip: Option<String>,
    /// Host port, `None` = an ephemeral one.
    pub host_port: Option<u16>,
    /// Container port.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// A mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// Named volume (compose name) or host path.
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Read-only.
    pub read_only: bool,
    /// Whether `source` is a host path (a bind) rather than a named volume.
    pub bind: bool,
}

/// Container restart policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Always restart (default).
    #[default]
    Always,
    /// Restart on non-zero exit.
    OnFailure,
    /// Restart unless stopped by the operator.
    UnlessStopped,
}

/// What a dependant waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependsCondition {
    /// The dependency's container has started.
    ServiceStarted,
    /// The dependency reports healthy.
    ServiceHealthy,
}

/// A healthcheck override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]` (disabled).
    pub test: Vec<String>,
    /// Interval in milliseconds.
    pub interval_ms: Option<u64>,
    /// Timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Consecutive failures before unhealthy.
    pub retries: Option<u32>,
    /// Start period in milliseconds.
    pub start_period_ms: Option<u64>,
}

/// A named volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Volume driver, `None` = the engine's default.
    pub driver: Option<String>,
    /// Driver options.
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A named network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Network driver, `None` = bridge.
    pub driver: Option<String>,
    /// No outside connectivity.
    #[serde(default)]
    pub internal: bool,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
