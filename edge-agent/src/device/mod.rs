//! The device side of actions: what "reboot", "blink" or "host-config" do on this device,
//! through configurable commands and paths (so tests observe them in a temporary
//! directory and never touch the machine), plus update-lock checks.
//!
//! [`Device`] implements the local API's [`DeviceControl`] and [`DeviceInfo`], and
//! [`Device::run_action`] executes actions that arrive over the control stream; both paths
//! share the same code. Container actions answer with the reconciler's state: an app the
//! agent does not run is "not found".
//!
//! - `mod.rs`: [`Device`], its hooks, and [`Device::run_action`];
//! - `control.rs`: the local API's [`DeviceControl`] and [`DeviceInfo`] for it;
//! - `host_config.rs`: checking and writing the host config (hostname, proxy);
//! - `action_log.rs`: the [`ActionLog`] that keeps an action from running twice.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

/// Why a gateway action failed. Its text is the action's result as the operator sees
/// it (`gateway device actions`), so the wording is part of the interface.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The gateway named an action this agent does not know.
    #[error("unknown action {0:?}")]
    Unknown(String),
    /// A parameter the action needs is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// An update lock is held and `force` was not set.
    #[error("locked")]
    Locked,
    /// The app or service named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request cannot apply to this device.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Anything else went wrong on the device.
    #[error("{0}")]
    Failed(String),
}

use crate::local_api::{ControlError, ControlFuture, DeviceControl, DeviceInfo, ServiceRef};
use crate::locks::Locks;

mod action_log;
mod control;
mod host_config;

pub use action_log::{ActionLog, ActionOutcome};

fn rec_err(e: crate::reconciler::ReconcilerError) -> ControlError {
    use crate::reconciler::ReconcilerError as E;
    match e {
        E::Locked { services } => {
            ControlError::Locked(format!("update locks held by {}", services.join(", ")))
        }
        E::NotFound(s) => ControlError::NotFound(format!("no service {s:?}")),
        E::NoTarget => ControlError::NotFound("no app is set to run on this device".into()),
        other => ControlError::Internal(other.to_string()),
    }
}

fn first_container(r: &crate::reconciler::Reconciler) -> String {
    r.status()
        .borrow()
        .services
        .first()
        .and_then(|s| s.container_id.clone())
        .unwrap_or_default()
}

/// Side effects of device actions. Every field has a default that acts on a real device.
#[derive(Debug, Clone)]
pub struct Hooks {
    /// Command run for `reboot` (argv). Default is `["reboot"]`.
    pub reboot: Vec<String>,
    /// Command run for `shutdown` (argv). Default is `["poweroff"]`.
    pub shutdown: Vec<String>,
    /// LED brightness file toggled for `blink` (e.g. `/sys/class/leds/led0/brightness`).
    /// Default is none: blink is logged only.
    pub led: Option<PathBuf>,
    /// How long `blink` blinks. Default is 15 s, as balena's.
    pub blink_for: Duration,
    /// Hostname file for host-config. Default is `/etc/hostname`.
    pub hostname_file: PathBuf,
    /// JSON file holding the proxy part of host-config. Default is `<data dir>/proxy.json`.
    pub proxy_file: PathBuf,
    /// Root of the per-service update-lock directories. Default is `<data dir>/locks`.
    pub locks_root: PathBuf,
}

impl Hooks {
    /// Defaults for a real device with state in `data_dir`.
    pub fn defaults(data_dir: &std::path::Path) -> Self {
        Self {
            reboot: vec!["reboot".into()],
            shutdown: vec!["poweroff".into()],
            led: None,
            blink_for: Duration::from_secs(15),
            hostname_file: PathBuf::from("/etc/hostname"),
            proxy_file: data_dir.join("proxy.json"),
            locks_root: data_dir.join("locks"),
        }
    }
}

/// This device: identity, hooks, state shared with the tunnel and the local API.
pub struct Device {
    uuid: String,
    data_dir: PathBuf,
    hooks: Hooks,
    locks: Locks,
    api_key: Arc<RwLock<String>>,
    connected: Arc<AtomicBool>,
    ip_addresses: RwLock<Vec<String>>,
    reconciler: std::sync::OnceLock<crate::reconciler::Reconciler>,
}

impl Device {
    /// Builds the device record. `api_key` is shared with the local API.
    pub fn new(
        uuid: String,
        data_dir: PathBuf,
        hooks: Hooks,
        api_key: Arc<RwLock<String>>,
    ) -> Self {
        Self {
            uuid,
            locks: Locks::new(hooks.locks_root.clone()),
            data_dir,
            hooks,
            api_key,
            connected: Arc::new(AtomicBool::new(false)),
            ip_addresses: RwLock::new(Vec::new()),
            reconciler: std::sync::OnceLock::new(),
        }
    }

    /// Hands container actions, app state and local-mode targets to `reconciler`.
    pub fn set_reconciler(&self, reconciler: crate::reconciler::Reconciler) {
        let _ = self.reconciler.set(reconciler);
    }

    /// The reconciler, when the agent runs one.
    pub fn reconciler(&self) -> Option<&crate::reconciler::Reconciler> {
        self.reconciler.get()
    }

    /// The reconciler, if it runs app `app_id`.
    fn app_reconciler(&self, app_id: u32) -> Result<&crate::reconciler::Reconciler, ControlError> {
        match self.reconciler.get() {
            Some(r) if r.status().borrow().app_id == Some(app_id) => Ok(r),
            _ => Err(Self::no_app(app_id)),
        }
    }

    /// The name of a service of the running target.
    async fn service_name(
        r: &crate::reconciler::Reconciler,
        service: ServiceRef,
    ) -> Result<String, ControlError> {
        match service {
            ServiceRef::Name(n) => Ok(n),
            ServiceRef::ImageId(id) => r
                .target()
                .await
                .and_then(|t| {
                    t.services
                        .iter()
                        .find(|(_, s)| s.service_id == id)
                        .map(|(n, _)| n.clone())
                })
                .ok_or_else(|| ControlError::NotFound(format!("no service with image id {id}"))),
        }
    }

    /// Flag the tunnel sets while connected.
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.connected)
    }

    /// Records the addresses this device uses (learned when the tunnel connects).
    pub fn set_ip_addresses(&self, ips: Vec<String>) {
        *self.ip_addresses.write().expect("ip lock") = ips;
    }

    /// The key cell shared with the local API.
    pub fn api_key(&self) -> Arc<RwLock<String>> {
        Arc::clone(&self.api_key)
    }

    /// Runs a gateway action by name. Returns a JSON result or why it failed (its text,
    /// `locked`, `not found: ...`, ..., is the result the operator sees).
    pub async fn run_action(&self, name: &str, params: &Value) -> Result<Value, ActionError> {
        let force = params["force"].as_bool().unwrap_or(false);
        let app = || {
            params["appId"]
                .as_u64()
                .and_then(|a| u32::try_from(a).ok())
                .ok_or(ActionError::Missing("appId"))
        };
        let service = || {
            params["serviceName"]
                .as_str()
                .map(|s| ServiceRef::Name(s.to_string()))
                .ok_or(ActionError::Missing("serviceName"))
        };
        let r = match name {
            "blink" => self.blink().await.map(|_| Value::Null),
            "reboot" => self.reboot(force).await.map(|_| Value::Null),
            "shutdown" => self.shutdown(force).await.map(|_| Value::Null),
            "update" => self.update(force).await.map(|_| Value::Null),
            "restart" => match params["serviceName"].as_str() {
                Some(_) => self
                    .restart_service(app()?, service()?, force)
                    .await
                    .map(|_| Value::Null),
                None => self.restart_app(app()?, force).await.map(|_| Value::Null),
            },
            "stop-service" => self
                .stop_service(app()?, service()?, force)
                .await
                .map(|_| Value::Null),
            "start-service" => self
                .start_service(app()?, service()?)
                .await
                .map(|_| Value::Null),
            "purge" => self.purge(app()?, force).await.map(|_| Value::Null),
            "regenerate-api-key" => self.regenerate_api_key().await.map(|_| Value::Null),
            "host-config" => match params.get("patch") {
                Some(p) => self
                    .patch_host_config(p.clone(), force)
                    .await
                    .map(|_| Value::Null),
                None => self.host_config().await,
            },
            other => return Err(ActionError::Unknown(other.to_string())),
        };
        r.map_err(|e| match e {
            ControlError::Locked(_) => ActionError::Locked,
            ControlError::NotFound(m) => ActionError::NotFound(m),
            ControlError::BadRequest(m) => ActionError::BadRequest(m),
            ControlError::Internal(m) => ActionError::Failed(m),
        })
    }

    fn check_locks(&self, app_id: u32, force: bool) -> Result<(), ControlError> {
        if force {
            return Ok(());
        }
        match self.locks.locked_services(app_id) {
            Ok(locked) if locked.is_empty() => Ok(()),
            Ok(locked) => Err(ControlError::Locked(format!(
                "app {app_id} holds update locks in {}",
                locked.join(", ")
            ))),
            Err(e) => Err(ControlError::Internal(format!(
                "cannot read update locks: {e}"
            ))),
        }
    }

    fn check_all_locks(&self, force: bool) -> Result<(), ControlError> {
        if force {
            return Ok(());
        }
        let Ok(entries) = std::fs::read_dir(&self.hooks.locks_root) else {
            return Ok(());
        };
        for e in entries.flatten() {
            if let Some(app) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                self.check_locks(app, false)?;
            }
        }
        Ok(())
    }

    /// The answer for an app id this device does not run.
    fn no_app(app_id: u32) -> ControlError {
        ControlError::NotFound(format!("app {app_id} is not running on this device"))
    }

    async fn run_command(argv: &[String], what: &str) -> Result<(), ControlError> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| ControlError::Internal(format!("no {what} command configured")))?;
        let status = tokio::process::Command::new(prog)
            .args(args)
            .status()
            .await
            .map_err(|e| ControlError::Internal(format!("{what} command {prog:?}: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(ControlError::Internal(format!(
                "{what} command {prog:?} exited with {status}"
            )))
        }
    }
}
