//! Health waits: a service's dependencies before it starts, and the whole release for
//! the health window after a pass changed it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{ContainerStateStatusEnum, HealthStatusEnum};
use protocol::release::{DependsCondition, RestartPolicy, TargetState};

use super::engine;
use super::journal::Journal;
use super::{Inner, ReconcilerError};

/// How the health window ended.
pub(super) enum Verified {
    /// Everything stayed up for `stable_for`.
    Ok,
    /// A newer target arrived.
    Superseded,
    /// The release did not come up; why, in words (reported and journalled).
    Failed(String),
}

impl Inner {
    /// Waits until every dependency of `name` is started or healthy, as asked.
    /// Gives up after `health_window`, or as soon as a newer target arrives.
    pub(super) async fn wait_deps(
        &self,
        target: &TargetState,
        name: &str,
        generation: u64,
    ) -> Result<(), ReconcilerError> {
        let spec = &target.services[name];
        if spec.depends_on.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.cfg.health_window;
        loop {
            let ours = engine::list_ours(&self.docker, Some(target.app_id)).await?;
            let mut waiting = None;
            for (dep, cond) in &spec.depends_on {
                let hash = target.services[dep].config_hash();
                let c = ours.iter().find(|c| &c.service == dep && c.hash == hash);
                let ok = match (c, cond) {
                    (Some(c), DependsCondition::ServiceStarted) => c.is_running(),
                    (Some(c), DependsCondition::ServiceHealthy) => {
                        c.state == ContainerStateStatusEnum::RUNNING
                            && matches!(c.health, None | Some(HealthStatusEnum::HEALTHY))
                    }
                    (None, _) => false,
                };
                if !ok {
                    waiting = Some((dep.clone(), *cond));
                    break;
                }
            }
            let Some((dep, cond)) = waiting else {
                return Ok(());
            };
            if Instant::now() >= deadline || self.superseded(generation) {
                return Err(ReconcilerError::Dependency {
                    service: name.to_string(),
                    dependency: dep,
                    condition: cond,
                    window: self.cfg.health_window,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Watches the target's services for `health_window`: each one running (healthy,
    /// when it has a healthcheck) and not restarting (counted from `baseline`) for
    /// `stable_for`. Services the operator stopped (`j.stopped`) are not watched.
    pub(super) async fn verify(
        &self,
        target: &TargetState,
        baseline: &HashMap<String, i64>,
        j: &Journal,
        generation: u64,
    ) -> Result<Verified, ReconcilerError> {
        let start = Instant::now();
        let deadline = start + self.cfg.health_window;
        let mut stable_since: Option<Instant> = None;
        loop {
            if self.superseded(generation) {
                return Ok(Verified::Superseded);
            }
            let ours = engine::list_ours(&self.docker, Some(target.app_id)).await?;
            self.refresh(target, &ours, j, false).await;
            let mut pending: Option<String> = None;
            for (name, spec) in &target.services {
                if j.stopped.contains(name) {
                    continue;
                }
                let hash = spec.config_hash();
                let Some(c) = ours.iter().find(|c| &c.service == name && c.hash == hash) else {
                    pending.get_or_insert(format!("service {name} has no container"));
                    continue;
                };
                let restarts = c.restart_count - baseline.get(name).copied().unwrap_or(0);
                if restarts >= 2 {
                    return Ok(Verified::Failed(format!(
                        "service {name} keeps restarting ({restarts} restarts, last exit code {})",
                        c.exit_code.unwrap_or(-1)
                    )));
                }
                if c.health == Some(HealthStatusEnum::UNHEALTHY) {
                    return Ok(Verified::Failed(format!("service {name} is unhealthy")));
                }
                match c.state {
                    ContainerStateStatusEnum::RUNNING => {
                        if c.health == Some(HealthStatusEnum::STARTING) {
                            pending.get_or_insert(format!(
                                "service {name} did not become healthy within {}s",
                                self.cfg.health_window.as_secs()
                            ));
                        }
                        if restarts > 0 {
                            pending.get_or_insert(format!("service {name} restarted"));
                        }
                    }
                    ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD => {
                        let code = c.exit_code.unwrap_or(-1);
                        let one_shot = code == 0
                            && matches!(spec.restart, RestartPolicy::No | RestartPolicy::OnFailure);
                        if !one_shot {
                            return Ok(Verified::Failed(format!(
                                "service {name} exited with code {code}"
                            )));
                        }
                    }
                    _ => {
                        pending.get_or_insert(format!(
                            "service {name} did not keep running (exit code {})",
                            c.exit_code.unwrap_or(-1)
                        ));
                    }
                }
            }
            let now = Instant::now();
            match pending {
                None => {
                    let since = *stable_since.get_or_insert(now);
                    if now - since >= self.cfg.stable_for {
                        return Ok(Verified::Ok);
                    }
                }
                Some(reason) => {
                    stable_since = None;
                    if now >= deadline {
                        return Ok(Verified::Failed(reason));
                    }
                }
            }
            if now >= deadline + self.cfg.stable_for {
                return Ok(Verified::Failed(format!(
                    "release did not stay up for {}s within {}s",
                    self.cfg.stable_for.as_secs(),
                    self.cfg.health_window.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
