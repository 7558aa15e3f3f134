//! Applying a plan: walks the planner's [`Step`]s in order, each through [`super::engine`].
//! Steps that change a container are journalled as in flight first, so a restarted agent
//! can say what it was doing; correctness after a crash comes from the next pass planning
//! again from the engine's state.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use protocol::release::TargetState;

use super::engine::{self, Observed};
use super::health::Verified;
use super::journal::Journal;
use super::plan::{Step, Update};
use super::{Inner, Outcome, ReconcilerError, UpdateStatus};
use crate::locks::Locks;

/// The file a `hand-over` service's new container writes when the old one may go.
const HANDOVER_COMPLETE: &str = "handover-complete";

impl Inner {
    /// Walks `update`'s steps. `j` is the journal the plan was made from, `ours` the
    /// target app's containers as observed.
    pub(super) async fn apply(
        &self,
        update: Update,
        j: &Journal,
        ours: &[Observed],
        generation: u64,
    ) -> Result<Outcome, ReconcilerError> {
        let Update {
            target,
            rolling_back,
            is_good,
            changed,
            baseline,
            steps,
        } = update;
        let updating = if rolling_back {
            UpdateStatus::RollingBack
        } else {
            UpdateStatus::Updating
        };
        // A pass retried while an update lock is held keeps saying so until its lock
        // check passes, instead of flickering to "updating" on every retry.
        let waiting = !rolling_back
            && steps.iter().any(|s| matches!(s, Step::CheckLocks(_)))
            && self.status.borrow().update_status == UpdateStatus::WaitingForLock;
        if !waiting {
            self.publish(|s| {
                s.update_status = updating;
                s.error = None;
            });
        }
        if !changed.is_empty() && !rolling_back && !waiting {
            self.logs.system(format!(
                "Updating to release {} (services: {})",
                target.release,
                changed.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        // Per-service status before anything moves, so downloads show against services.
        self.refresh(&target, ours, j, is_good).await;

        let walk = Walk {
            target: &target,
            rolling_back,
            updating,
            journal: j,
            ours,
            baseline: &baseline,
            generation,
        };
        // Containers made by `Create` steps, for the `Start` steps after them.
        let mut created: HashMap<String, String> = HashMap::new();
        for step in &steps {
            if step.journalled() {
                self.step(&step.to_string()).await;
            }
            if let Some(outcome) = self.apply_step(&walk, step, &mut created).await? {
                return Ok(outcome);
            }
        }
        // Not reached: the planner ends every update with `Verify`, which ends the pass.
        Ok(Outcome::Done)
    }

    /// Runs one step; `Some` ends the pass with that outcome.
    async fn apply_step(
        &self,
        w: &Walk<'_>,
        step: &Step,
        created: &mut HashMap<String, String>,
    ) -> Result<Option<Outcome>, ReconcilerError> {
        let target = w.target;
        let spec = |service: &str| target.services.get(service);
        match step {
            Step::Pull(images) => {
                if let Err(e) = self.pull_all(target, images.clone(), w.updating).await {
                    return Ok(Some(self.pull_failed(e)));
                }
            }
            Step::GiveWay => {
                if self.superseded(w.generation) {
                    return Ok(Some(Outcome::Again));
                }
            }
            Step::CheckLocks(apps) => {
                let held = held_locks(&self.locks, apps);
                if !held.is_empty() {
                    let msg = format!("update waiting for the lock held by {}", held.join(", "));
                    let was = self.status.borrow().update_status;
                    if was != UpdateStatus::WaitingForLock {
                        self.logs.system(format!(
                            "Update to release {} is blocked by update locks in {}",
                            target.release,
                            held.join(", ")
                        ));
                    }
                    self.refresh(target, w.ours, w.journal, false).await;
                    self.publish(|s| {
                        s.update_status = UpdateStatus::WaitingForLock;
                        s.error = Some(msg);
                    });
                    return Ok(Some(Outcome::Blocked));
                }
                if self.status.borrow().update_status == UpdateStatus::WaitingForLock {
                    self.publish(|s| {
                        s.update_status = w.updating;
                        s.error = None;
                    });
                }
            }
            Step::EnsureVolumesNetworks => {
                engine::ensure_volumes_networks(&self.docker, target).await?;
            }
            Step::Remove(c) => {
                self.logs.service_event(&c.service, "Killing service");
                engine::kill_and_remove(&self.docker, &c.id, self.cfg.stop_grace).await?;
                self.logs.service_event(&c.service, "Service removed");
            }
            Step::KillBeforeDownload {
                service,
                container,
                remove_image,
            } => {
                self.logs.service_event(service, "Killing service");
                engine::kill_and_remove(&self.docker, &container.id, self.grace(spec(service)))
                    .await?;
                if *remove_image {
                    engine::remove_image(&self.docker, &container.image).await?;
                }
            }
            Step::WaitForDependencies(service) => {
                if let Err(e) = self.wait_deps(target, service, w.generation).await {
                    let outcome = self
                        .release_failed(target, w.rolling_back, e.to_string())
                        .await;
                    return Ok(Some(outcome));
                }
            }
            Step::Create {
                service, hand_over, ..
            } => {
                let lock_dir = self.lock_dir(target.app_id, service);
                let _ = std::fs::create_dir_all(&lock_dir);
                if *hand_over {
                    let _ = std::fs::remove_file(lock_dir.join(HANDOVER_COMPLETE));
                }
                self.logs.service_event(service, "Installing service");
                let spec = &target.services[service];
                let id = engine::create(&self.docker, target, service, spec, &lock_dir).await?;
                created.insert(service.clone(), id);
            }
            Step::Stop { service, container } => {
                self.logs.service_event(service, "Killing service");
                engine::stop(&self.docker, &container.id, self.grace(spec(service))).await?;
                self.logs.service_event(service, "Service stopped");
            }
            Step::Start { service, container } => {
                let _ = std::fs::create_dir_all(self.lock_dir(target.app_id, service));
                let id = match container.clone().or_else(|| created.get(service).cloned()) {
                    Some(id) => id,
                    // Not reached (the planner puts `Create` first); the engine also
                    // knows the container by its deterministic name.
                    None => engine::container_name(
                        target.app_id,
                        service,
                        &target.services[service].config_hash(),
                    ),
                };
                engine::start(&self.docker, &id).await?;
                self.logs.service_event(service, "Service started");
            }
            Step::RemoveStopped { container, .. } => {
                engine::remove(&self.docker, &container.id).await?;
            }
            Step::HandOver {
                service,
                old,
                timeout,
            } => {
                let timeout = timeout.unwrap_or(self.cfg.handover_timeout);
                self.hand_over(target, service, old, timeout).await?;
            }
            Step::Verify => return self.verified(w).await.map(Some),
        }
        Ok(None)
    }

    /// `hand-over`: the new container of `service` runs; wait for it to write
    /// `handover-complete` (or `timeout`), then kill the `old` ones.
    async fn hand_over(
        &self,
        target: &TargetState,
        service: &str,
        old: &[Observed],
        timeout: Duration,
    ) -> Result<(), ReconcilerError> {
        let file = self
            .lock_dir(target.app_id, service)
            .join(HANDOVER_COMPLETE);
        let deadline = Instant::now() + timeout;
        // Polled: the file is written from inside the container, through a bind mount.
        while !file.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if file.exists() {
            self.logs.service_event(service, "Hand-over complete");
        } else {
            self.logs
                .service_event(service, "Hand-over timed out; killing the old service");
        }
        for c in old {
            self.logs.service_event(service, "Killing service");
            let grace = self.grace(target.services.get(service));
            engine::kill_and_remove(&self.docker, &c.id, grace).await?;
        }
        let _ = std::fs::remove_file(&file);
        Ok(())
    }

    /// The last step: watch the release come up, then record it as good or fail it.
    async fn verified(&self, w: &Walk<'_>) -> Result<Outcome, ReconcilerError> {
        let target = w.target;
        self.step_done().await;
        if self.superseded(w.generation) {
            return Ok(Outcome::Again);
        }
        match self
            .verify(target, w.baseline, w.journal, w.generation)
            .await?
        {
            Verified::Ok => {
                let mut j2 = None;
                self.save_journal(|j| {
                    if !w.rolling_back {
                        j.failed = None;
                    }
                    j.last_good = Some(target.clone());
                    j.in_flight = None;
                    j2 = Some(j.clone());
                })
                .await;
                let j2 = j2.unwrap_or_default();
                let ours = engine::list_ours(&self.docker, Some(target.app_id)).await?;
                self.refresh(target, &ours, &j2, true).await;
                let err = j2.failed.as_ref().map(|f| {
                    format!(
                        "release {} failed: {}; rolled back to {}",
                        f.release, f.reason, target.release
                    )
                });
                if !w.rolling_back {
                    self.logs
                        .system(format!("Release {} is running", target.release));
                }
                self.publish(|s| {
                    s.update_status = UpdateStatus::Idle;
                    s.error = err;
                    s.overall_progress = None;
                });
                Ok(Outcome::Done)
            }
            Verified::Superseded => Ok(Outcome::Again),
            Verified::Failed(reason) => {
                Ok(self.release_failed(target, w.rolling_back, reason).await)
            }
        }
    }
}

/// What every step of one walk shares.
struct Walk<'a> {
    target: &'a TargetState,
    rolling_back: bool,
    /// The status to report between downloads.
    updating: UpdateStatus,
    /// The journal the plan was made from.
    journal: &'a Journal,
    /// The target app's containers as observed.
    ours: &'a [Observed],
    baseline: &'a HashMap<String, i64>,
    generation: u64,
}

/// Who holds an update lock in `apps`: service names, plus a note for each app whose
/// lock state cannot be read (unreadable lock state must not let a kill through).
fn held_locks(locks: &Locks, apps: &BTreeSet<u32>) -> Vec<String> {
    let mut held = Vec::new();
    for &app in apps {
        match locks.locked_services(app) {
            Ok(services) => held.extend(services),
            Err(e) => held.push(format!("(app {app}: {e})")),
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_or_unreadable_lock_blocks() {
        let root = tempfile::tempdir().unwrap();
        let locks = Locks::new(root.path());
        let apps = BTreeSet::from([1, 2]);
        assert!(held_locks(&locks, &apps).is_empty(), "no lock dirs: free");

        std::fs::create_dir_all(locks.service_dir(1, "side")).unwrap();
        let main = locks.service_dir(1, "main");
        std::fs::create_dir_all(&main).unwrap();
        std::fs::write(main.join("updates.lock"), b"").unwrap();
        assert_eq!(held_locks(&locks, &apps), ["main"]);

        // App 3's lock directory is a file: its state cannot be read, so it blocks.
        std::fs::write(root.path().join("3"), b"").unwrap();
        let held = held_locks(&locks, &BTreeSet::from([3]));
        assert_eq!(held.len(), 1);
        assert!(held[0].starts_with("(app 3: "), "{held:?}");
    }
}
