//! The device side of actions: what "reboot", "blink" or "host-config" do on this device,
//! through configurable commands and paths (so tests observe them in a temporary
//! directory and never touch the machine), plus update-lock checks.
//!
//! [`Device`] implements the local API's [`DeviceControl`] and [`DeviceInfo`], and
//! [`Device::run_action`] executes actions that arrive over the control stream; both paths
//! share the same code. Container actions answer with the real (empty, until the
//! reconciler exists) state: an app the agent does not run is "not found".

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::local_api::{ControlError, ControlFuture, DeviceControl, DeviceInfo, ServiceRef};
use crate::locks::Locks;

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

    /// Runs a gateway action by name. Returns a JSON result or the failure reason
    /// (`locked`, `not found: ...`, ...).
    pub async fn run_action(&self, name: &str, params: &Value) -> Result<Value, String> {
        let force = params["force"].as_bool().unwrap_or(false);
        let app = || {
            params["appId"]
                .as_u64()
                .and_then(|a| u32::try_from(a).ok())
                .ok_or_else(|| "missing appId".to_string())
        };
        let service = || {
            params["serviceName"]
                .as_str()
                .map(|s| ServiceRef::Name(s.to_string()))
                .ok_or_else(|| "missing serviceName".to_string())
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
            other => return Err(format!("unknown action {other:?}")),
        };
        r.map_err(|e| match e {
            ControlError::Locked(_) => "locked".to_string(),
            ControlError::NotFound(m) => format!("not found: {m}"),
            ControlError::BadRequest(m) => format!("bad request: {m}"),
            ControlError::Internal(m) => m,
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

    /// An app the agent runs. None run until the reconciler exists.
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

fn write_file(path: &std::path::Path, text: &str) -> Result<(), ControlError> {
    crate::provision::write_private(path, text.as_bytes())
        .map_err(|e| ControlError::Internal(e.to_string()))
}

/// Replaces `path` crash-safely (write a temp file beside it, then rename), keeping the
/// file's own mode and owner: the hostname file is world-readable (0644) and other
/// programs read it. A file that does not exist yet gets 0644.
fn write_keeping_mode(path: &std::path::Path, text: &str) -> Result<(), ControlError> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let old = std::fs::metadata(path).ok();
    let mode = old
        .as_ref()
        .map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        // Set after creating: the mode given to open() is cut by the umask.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some(old) = &old {
            let new = f.metadata()?;
            if (new.uid(), new.gid()) != (old.uid(), old.gid()) {
                std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()))?;
            }
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ControlError::Internal(format!("cannot write {}: {e}", path.display()))
    })
}

/// An RFC 1123 label: 1-63 letters, digits and dashes, not starting or ending with a
/// dash (so `-rf` is no hostname).
fn is_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS name of RFC 1123 labels (at most 253 characters) or an IP address.
fn is_host(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
        || (s.len() <= 253 && s.trim_end_matches('.').split('.').all(is_label))
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`).
fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    !bits.is_empty()
        && bits.bytes().all(|b| b.is_ascii_digit())
        && bits.parse::<u8>().is_ok_and(|b| b <= max)
}

/// The proxy types balena's redsocks set-up knows.
const PROXY_TYPES: &[&str] = &["socks4", "socks5", "http-connect", "http-relay"];

/// Checks the `proxy` object of a host-config patch field by field (values end up in the
/// proxy daemon's configuration, so nothing unvalidated may pass): a 400 names the field.
fn check_proxy(proxy: &Value) -> Result<(), ControlError> {
    let bad =
        |field: &str, why: String| ControlError::BadRequest(format!("network.proxy.{field} {why}"));
    let Some(fields) = proxy.as_object() else {
        return Err(ControlError::BadRequest(
            "network.proxy must be an object ({} removes the proxy)".into(),
        ));
    };
    for (field, v) in fields {
        match field.as_str() {
            "type" => {
                if !v.as_str().is_some_and(|t| PROXY_TYPES.contains(&t)) {
                    return Err(bad(
                        field,
                        format!("must be one of {}, got {v}", PROXY_TYPES.join(", ")),
                    ));
                }
            }
            "ip" => {
                if !v.as_str().is_some_and(is_host) {
                    return Err(bad(field, format!("must be a hostname or an IP address, got {v}")));
                }
            }
            "port" => {
                let port = match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                        s.parse().ok()
                    }
                    _ => None,
                };
                if !port.is_some_and(|p| (1..=65535).contains(&p)) {
                    return Err(bad(field, format!("must be a port number 1-65535, got {v}")));
                }
            }
            "login" | "password" => match v.as_str() {
                Some(s) if s.len() <= 255 && !s.chars().any(char::is_control) => {}
                Some(_) => {
                    return Err(bad(
                        field,
                        "must be at most 255 characters without newlines or control characters"
                            .into(),
                    ))
                }
                None => return Err(bad(field, format!("must be a string, got {v}"))),
            },
            "noProxy" => {
                let ok = v.as_array().is_some_and(|hosts| {
                    hosts
                        .iter()
                        .all(|h| h.as_str().is_some_and(|h| is_host(h) || is_cidr(h)))
                });
                if !ok {
                    return Err(bad(
                        field,
                        format!("must be a list of hostnames, IP addresses or CIDR networks, got {v}"),
                    ));
                }
            }
            other => {
                return Err(ControlError::BadRequest(format!(
                    "network.proxy: unknown field {other:?} (known: type, ip, port, login, password, noProxy)"
                )))
            }
        }
    }
    Ok(())
}

impl DeviceControl for Device {
    fn blink(&self) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            info!("blink requested");
            let Some(led) = self.hooks.led.clone() else {
                return Ok(());
            };
            let until = self.hooks.blink_for;
            // Blink in the background, as balena does: the request returns at once.
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                let mut on = true;
                while start.elapsed() < until {
                    let _ = tokio::fs::write(&led, if on { "1" } else { "0" }).await;
                    on = !on;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let _ = tokio::fs::write(&led, "0").await;
            });
            // The first write happens now so a caller can observe it.
            std::fs::write(self.hooks.led.as_ref().expect("checked"), "1")
                .map_err(|e| ControlError::Internal(format!("LED: {e}")))
        })
    }

    fn reboot(&self, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_all_locks(force)?;
            warn!("rebooting on request");
            Self::run_command(&self.hooks.reboot, "reboot").await
        })
    }

    fn shutdown(&self, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_all_locks(force)?;
            warn!("shutting down on request");
            Self::run_command(&self.hooks.shutdown, "shutdown").await
        })
    }

    fn update(&self, force: bool) -> ControlFuture<'_, ()> {
        // Applies the current target again (with `force`, past update locks and a failed
        // release); the gateway pushes new targets by itself.
        Box::pin(async move {
            let Some(r) = self.reconciler.get() else {
                return Ok(());
            };
            if let Some(t) = r.target().await {
                r.set_target(t, force).await.map_err(rec_err)?;
            }
            Ok(())
        })
    }

    fn restart_app(&self, app_id: u32, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_locks(app_id, force)?;
            let r = self.app_reconciler(app_id)?;
            r.restart_app(force).await.map_err(rec_err)
        })
    }

    fn stop_app(&self, app_id: u32, force: bool) -> ControlFuture<'_, String> {
        Box::pin(async move {
            self.check_locks(app_id, force)?;
            let r = self.app_reconciler(app_id)?;
            r.stop_app(force).await.map_err(rec_err)?;
            Ok(first_container(r))
        })
    }

    fn start_app(&self, app_id: u32) -> ControlFuture<'_, String> {
        Box::pin(async move {
            let r = self.app_reconciler(app_id)?;
            r.start_app().await.map_err(rec_err)?;
            Ok(first_container(r))
        })
    }

    fn purge(&self, app_id: u32, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_locks(app_id, force)?;
            let r = self.app_reconciler(app_id)?;
            r.purge(force).await.map_err(rec_err)
        })
    }

    fn restart_service(
        &self,
        app_id: u32,
        service: ServiceRef,
        force: bool,
    ) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_locks(app_id, force)?;
            let r = self.app_reconciler(app_id)?;
            let name = Self::service_name(r, service).await?;
            r.restart_service(&name, force).await.map_err(rec_err)
        })
    }

    fn stop_service(&self, app_id: u32, service: ServiceRef, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_locks(app_id, force)?;
            let r = self.app_reconciler(app_id)?;
            let name = Self::service_name(r, service).await?;
            r.stop_service(&name, force).await.map_err(rec_err)
        })
    }

    fn start_service(&self, app_id: u32, service: ServiceRef) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            let r = self.app_reconciler(app_id)?;
            let name = Self::service_name(r, service).await?;
            r.start_service(&name).await.map_err(rec_err)
        })
    }

    fn regenerate_api_key(&self) -> ControlFuture<'_, String> {
        Box::pin(async move {
            let key = crate::provision::new_api_key();
            crate::provision::set_api_key(&self.data_dir, &key)
                .map_err(|e| ControlError::Internal(e.to_string()))?;
            *self.api_key.write().expect("api key lock") = key.clone();
            info!("local API key regenerated");
            Ok(key)
        })
    }

    fn host_config(&self) -> ControlFuture<'_, Value> {
        Box::pin(async move {
            let hostname = std::fs::read_to_string(&self.hooks.hostname_file)
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            let proxy = std::fs::read_to_string(&self.hooks.proxy_file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .unwrap_or_else(|| json!({}));
            Ok(json!({"network": {"hostname": hostname, "proxy": proxy}}))
        })
    }

    fn patch_host_config(&self, patch: Value, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            let network = patch
                .get("network")
                .and_then(Value::as_object)
                .ok_or_else(|| ControlError::BadRequest("expected {\"network\": {...}}".into()))?;
            // Every value is checked before anything is written or a lock consulted, so a
            // bad patch changes nothing and says which field is wrong.
            let hostname = match network.get("hostname") {
                None => None,
                Some(h) => Some(h.as_str().filter(|h| is_label(h)).ok_or_else(|| {
                    ControlError::BadRequest(format!(
                        "network.hostname must be an RFC 1123 label (1-63 letters, digits or dashes, not starting or ending with a dash), got {h}"
                    ))
                })?),
            };
            let proxy = network.get("proxy");
            if let Some(p) = proxy {
                check_proxy(p)?;
            }
            self.check_all_locks(force)?;
            if let Some(h) = hostname {
                write_keeping_mode(&self.hooks.hostname_file, &format!("{h}\n"))?;
            }
            if let Some(p) = proxy {
                // Private: it may hold the proxy password.
                write_file(&self.hooks.proxy_file, &p.to_string())?;
            }
            info!("host config patched");
            Ok(())
        })
    }

    fn apps_state(&self) -> ControlFuture<'_, Value> {
        Box::pin(async move {
            let Some(r) = self.reconciler.get() else {
                return Ok(json!({}));
            };
            let st = r.status().borrow().clone();
            let Some(t) = r.target().await else {
                return Ok(json!({}));
            };
            // balena's shape: { appName: { appId, commit, services: { name: {...} } } }
            let mut services = serde_json::Map::new();
            for s in &st.services {
                services.insert(
                    s.name.clone(),
                    json!({
                        "status": s.status,
                        "releaseId": s.release,
                        "downloadProgress": s.download_progress,
                        "serviceId": s.service_id,
                        "containerId": s.container_id,
                        "image": s.image,
                        "health": s.health,
                        "exitCode": s.exit_code,
                    }),
                );
            }
            Ok(json!({ t.app_name.clone(): {
                "appId": t.app_id,
                "commit": st.release,
                "targetCommit": st.target_release,
                "updateStatus": st.update_status,
                "error": st.error,
                "services": services,
            }}))
        })
    }

    fn app(&self, app_id: u32) -> ControlFuture<'_, Option<Value>> {
        Box::pin(async move {
            let Ok(r) = self.app_reconciler(app_id) else {
                return Ok(None);
            };
            let st = r.status().borrow().clone();
            let target = r.target().await;
            // balena's v1 shape describes the app's (first) service.
            let first = st.services.first();
            Ok(Some(json!({
                "appId": app_id,
                "commit": st.release,
                "releaseId": st.release,
                "serviceName": first.map(|s| s.name.clone()),
                "containerId": first.and_then(|s| s.container_id.clone()),
                "imageId": first.map(|s| s.image.clone()),
                "env": target
                    .as_ref()
                    .and_then(|t| first.and_then(|f| t.services.get(&f.name)))
                    .map(|s| json!(s.environment))
                    .unwrap_or(json!({})),
            })))
        })
    }

    fn state_status(&self) -> ControlFuture<'_, crate::local_api::StateStatus> {
        Box::pin(async move {
            let Some(r) = self.reconciler.get() else {
                return Ok(Default::default());
            };
            let st = r.status().borrow().clone();
            let app_id = st.app_id;
            Ok(crate::local_api::StateStatus {
                containers: st
                    .services
                    .iter()
                    .map(|s| {
                        json!({
                            "status": s.status,
                            "serviceName": s.name,
                            "appId": app_id,
                            "imageId": s.image,
                            "serviceId": s.service_id,
                            "containerId": s.container_id,
                            "releaseId": s.release,
                        })
                    })
                    .collect(),
                images: st
                    .images
                    .iter()
                    .map(|i| {
                        json!({
                            "name": i.image,
                            "appId": app_id,
                            "status": i.status,
                            "downloadProgress": i.download_progress,
                        })
                    })
                    .collect(),
            })
        })
    }

    fn set_local_target(&self, target: Value) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            let Some(r) = self.reconciler.get() else {
                return Err(ControlError::BadRequest(
                    "this agent runs no reconciler (no container engine)".into(),
                ));
            };
            let t: protocol::release::TargetState = serde_json::from_value(target)
                .map_err(|e| ControlError::BadRequest(format!("invalid target state: {e}")))?;
            r.set_pinned_target(t, false).await.map_err(rec_err)
        })
    }
}

impl DeviceInfo for Device {
    fn uuid(&self) -> String {
        self.uuid.clone()
    }

    fn name(&self) -> String {
        self.uuid[..7].to_string()
    }

    fn api_port(&self) -> u16 {
        48484
    }

    fn os_version(&self) -> String {
        std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "unknown".into())
    }

    fn supervisor_version(&self) -> String {
        crate::VERSION.to_string()
    }

    fn ip_addresses(&self) -> Vec<String> {
        self.ip_addresses.read().expect("ip lock").clone()
    }

    fn status(&self) -> String {
        use crate::reconciler::UpdateStatus as U;
        match self
            .reconciler
            .get()
            .map(|r| r.status().borrow().update_status)
        {
            Some(U::Downloading) => "Downloading".into(),
            Some(U::Updating | U::RollingBack) => "Installing".into(),
            Some(U::WaitingForLock) => "Waiting for update lock".into(),
            Some(U::Failed) => "Update failed".into(),
            Some(U::Idle) | None => "Idle".into(),
        }
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn tags(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn commit(&self) -> Option<String> {
        self.reconciler
            .get()
            .and_then(|r| r.status().borrow().release.clone())
    }

    fn update_status(&self) -> crate::local_api::UpdateStatus {
        use crate::reconciler::UpdateStatus as U;
        let Some(r) = self.reconciler.get() else {
            return Default::default();
        };
        let st = r.status().borrow().clone();
        let pending = st.target_release.is_some() && st.target_release != st.release;
        crate::local_api::UpdateStatus {
            pending,
            downloaded: pending && st.update_status != U::Downloading,
            failed: st.update_status == U::Failed,
            applying: matches!(
                st.update_status,
                U::Downloading | U::Updating | U::RollingBack | U::WaitingForLock
            ),
            download_progress: st.overall_progress,
        }
    }
}

/// An action's recorded outcome: `(ok, detail)`.
pub type ActionOutcome = (bool, Value);

/// Executed action ids and their results, persisted in the data dir so that an action is
/// never executed twice, across reconnects and agent restarts.
pub struct ActionLog {
    path: PathBuf,
    entries: std::sync::Mutex<Vec<(String, Option<ActionOutcome>)>>,
}

/// How many executed ids are remembered (oldest forgotten first). The gateway expires
/// actions long before this many accumulate.
const ACTION_LOG_LEN: usize = 4096;

impl ActionLog {
    /// Loads `data_dir/actions.json` (missing = empty).
    pub fn load(data_dir: &std::path::Path) -> Self {
        let path = data_dir.join("actions.json");
        let entries = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<(String, Option<ActionOutcome>)>>(&t).ok())
            .unwrap_or_default();
        Self {
            path,
            entries: std::sync::Mutex::new(entries),
        }
    }

    /// `None` if `id` was never seen; `Some(None)` if it was started but its result was
    /// not recorded (the agent died or the device rebooted mid-action); `Some(Some(r))`
    /// with the recorded result.
    pub fn lookup(&self, id: &str) -> Option<Option<ActionOutcome>> {
        let e = self.entries.lock().expect("action log");
        e.iter().find(|(i, _)| i == id).map(|(_, r)| r.clone())
    }

    /// Records that `id` starts now (persisted before anything runs) or finished with `result`.
    pub fn record(&self, id: &str, result: Option<ActionOutcome>) -> std::io::Result<()> {
        // The file is written under the lock so two writers never interleave (sync IO,
        // no await while held).
        let mut e = self.entries.lock().expect("action log");
        match e.iter_mut().find(|(i, _)| i == id) {
            Some(entry) => entry.1 = result,
            None => e.push((id.to_string(), result)),
        }
        let excess = e.len().saturating_sub(ACTION_LOG_LEN);
        e.drain(..excess);
        let snapshot = serde_json::to_vec(&*e).expect("log serializes");
        crate::provision::write_private(&self.path, &snapshot)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_log_survives_a_restart_and_remembers_interrupted_actions() {
        let dir = tempfile::tempdir().unwrap();
        let log = ActionLog::load(dir.path());
        assert_eq!(log.lookup("a1"), None);
        log.record("a1", None).unwrap();
        log.record("a2", None).unwrap();
        log.record("a2", Some((true, json!("done")))).unwrap();
        // A new process reads the same file.
        let again = ActionLog::load(dir.path());
        assert_eq!(
            again.lookup("a1"),
            Some(None),
            "started, result never recorded"
        );
        assert_eq!(again.lookup("a2"), Some(Some((true, json!("done")))));
        assert_eq!(again.lookup("a3"), None);
    }
}
