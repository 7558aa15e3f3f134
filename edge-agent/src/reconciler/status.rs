//! What the reconciler reports: the status types (shaped like balena's
//! `/v2/applications/state` and `/v2/state/status`), and how they are rebuilt from what the
//! engine shows.

use bollard::models::{ContainerStateStatusEnum, HealthStatusEnum};
use protocol::release::TargetState;
use serde::{Deserialize, Serialize};

use super::engine::Observed;
use super::journal::Journal;
use super::Inner;

/// Where an update stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStatus {
    /// Nothing to do: the target runs (or there is none).
    #[default]
    Idle,
    /// Pulling images.
    Downloading,
    /// Replacing containers / waiting for health.
    Updating,
    /// Blocked by an update lock.
    WaitingForLock,
    /// Going back to the last good release.
    RollingBack,
    /// Gave up; see `error`.
    Failed,
}

/// Download state of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStatus {
    /// Image reference.
    pub image: String,
    /// `Downloading` or `Downloaded`.
    pub status: String,
    /// Percent downloaded.
    pub download_progress: u8,
}

/// One service, shaped like balena's `/v2/applications/state` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Numeric service id.
    pub service_id: u32,
    /// Image reference.
    pub image: String,
    /// Release the running container belongs to.
    pub release: Option<String>,
    /// `Downloading`, `Downloaded`, `Installing`, `Starting`, `Running`, `Stopping`,
    /// `Stopped`, `Exited` or `Dead`.
    pub status: String,
    /// Container id, when there is a container.
    pub container_id: Option<String>,
    /// Image download percent while downloading.
    pub download_progress: Option<u8>,
    /// Exit code of the last run, when exited.
    pub exit_code: Option<i64>,
    /// `starting`, `healthy` or `unhealthy` when the container has a healthcheck.
    pub health: Option<String>,
}

/// What the reconciler reports (to the gateway and on the local API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconcilerStatus {
    /// Where the update stands.
    pub update_status: UpdateStatus,
    /// App id of the target.
    pub app_id: Option<u32>,
    /// Release running now (the last good one).
    pub release: Option<String>,
    /// Release asked for.
    pub target_release: Option<String>,
    /// Last release that came up healthy.
    pub last_good_release: Option<String>,
    /// Why the last update failed or is waiting, when it did.
    pub error: Option<String>,
    /// Overall download percent while downloading.
    pub overall_progress: Option<u8>,
    /// Images being (or just) downloaded in this update.
    pub images: Vec<ImageStatus>,
    /// Per-service state.
    pub services: Vec<ServiceStatus>,
    /// Number of completed passes (for tests and diagnostics).
    pub passes: u64,
    /// How many of them ended in an error (the agent's `/metrics`).
    #[serde(skip)]
    pub failed_passes: u64,
    /// Target generation the last completed pass worked on.
    #[serde(skip)]
    pub generation: u64,
}

impl Inner {
    /// Changes the published status.
    pub(super) fn publish(&self, f: impl FnOnce(&mut ReconcilerStatus)) {
        self.status.send_modify(f);
    }

    /// Rebuilds per-service status from what the engine shows, and logs exits.
    pub(super) async fn refresh(
        &self,
        target: &TargetState,
        ours: &[Observed],
        j: &Journal,
        good: bool,
    ) {
        let mut services = Vec::new();
        let mut exits = Vec::new();
        {
            let mut last = self.last_running.lock().expect("last_running lock");
            for (name, spec) in &target.services {
                let hash = spec.config_hash();
                let c = ours
                    .iter()
                    .find(|c| &c.service == name && c.hash == hash)
                    .or_else(|| ours.iter().find(|c| &c.service == name));
                let running = c.is_some_and(|c| c.is_running());
                if let Some(c) = c {
                    let was = last.insert(c.id.clone(), running);
                    if was == Some(true) && !running {
                        exits.push((name.clone(), c.exit_code.unwrap_or(-1)));
                    }
                }
                let status = match c.map(|c| &c.state) {
                    None => "Downloaded",
                    Some(ContainerStateStatusEnum::CREATED) => "Installing",
                    Some(ContainerStateStatusEnum::RUNNING) => {
                        if c.is_some_and(|c| c.health == Some(HealthStatusEnum::STARTING)) {
                            "Starting"
                        } else {
                            "Running"
                        }
                    }
                    Some(ContainerStateStatusEnum::RESTARTING) => "Starting",
                    Some(ContainerStateStatusEnum::REMOVING) => "Stopping",
                    Some(ContainerStateStatusEnum::EXITED) if j.stopped.contains(name) => "Stopped",
                    Some(ContainerStateStatusEnum::EXITED) => "Exited",
                    Some(ContainerStateStatusEnum::DEAD) => "Dead",
                    Some(_) => "Stopped",
                };
                let release = c.map(|c| {
                    if c.hash == hash && good {
                        target.release.clone()
                    } else {
                        c.release.clone()
                    }
                });
                services.push(ServiceStatus {
                    name: name.clone(),
                    service_id: spec.service_id,
                    image: c
                        .map(|c| c.image.clone())
                        .unwrap_or_else(|| spec.image.clone()),
                    release,
                    status: status.to_string(),
                    container_id: c.map(|c| c.id.clone()),
                    download_progress: None,
                    exit_code: c
                        .filter(|c| !c.is_running() && c.state != ContainerStateStatusEnum::CREATED)
                        .and_then(|c| c.exit_code),
                    health: c.and_then(|c| c.health.map(|h| h.to_string())),
                });
            }
        }
        for (name, code) in exits {
            self.logs
                .service_event(&name, format!("Service exited with code {code}"));
        }
        let last_good = j.last_good.as_ref().map(|t| t.release.clone());
        let release = if good {
            Some(target.release.clone())
        } else {
            last_good.clone()
        };
        let target_release = j.target.as_ref().map(|t| t.release.clone());
        self.publish(|s| {
            s.services = services;
            s.app_id = Some(target.app_id);
            s.release = release;
            s.last_good_release = if good {
                Some(target.release.clone())
            } else {
                last_good
            };
            s.target_release = target_release;
        });
    }
}
