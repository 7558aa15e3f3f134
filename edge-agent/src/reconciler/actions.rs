//! Operator actions (restart, stop, start, purge; one service or the whole app), run by
//! the actor between passes. They honour update locks unless forced, except `start`,
//! which kills nothing.

use super::engine;
use super::{topo_order, ActionKind, Inner, ReconcilerError};
use protocol::release::TargetState;

impl Inner {
    /// Operator actions, run between passes.
    pub(super) async fn action(
        &self,
        kind: ActionKind,
        service: Option<&str>,
        force: bool,
    ) -> Result<(), ReconcilerError> {
        let j = self.journal.lock().await.clone();
        let (target, _) = j.effective().ok_or(ReconcilerError::NoTarget)?;
        let target = target.clone();
        let names: Vec<String> = match service {
            Some(s) if target.services.contains_key(s) => vec![s.to_string()],
            Some(s) => return Err(ReconcilerError::NotFound(s.to_string())),
            None => target.services.keys().cloned().collect(),
        };
        if kind != ActionKind::Start && !force {
            let locked = self.locks.locked_services(target.app_id)?;
            if !locked.is_empty() {
                return Err(ReconcilerError::Locked { services: locked });
            }
        }
        let ours = engine::list_ours(&self.docker, Some(target.app_id)).await?;
        match kind {
            ActionKind::Restart => {
                for n in &names {
                    for c in ours.iter().filter(|c| &c.service == n) {
                        self.logs.service_event(n, "Restarting service");
                        engine::kill_and_remove(
                            &self.docker,
                            &c.id,
                            self.grace(target.services.get(n)),
                        )
                        .await?;
                    }
                }
                let names2 = names.clone();
                self.save_journal(|j| {
                    for n in &names2 {
                        j.stopped.remove(n);
                    }
                })
                .await;
                // The next pass recreates them; it must not wait for health again.
                self.recreate_now(&target, &names).await?;
            }
            ActionKind::Stop => {
                for n in &names {
                    for c in ours.iter().filter(|c| &c.service == n) {
                        self.logs.service_event(n, "Stopping service");
                        engine::stop(&self.docker, &c.id, self.grace(target.services.get(n)))
                            .await?;
                        self.logs.service_event(n, "Service stopped");
                    }
                }
                let names2 = names.clone();
                self.save_journal(|j| j.stopped.extend(names2)).await;
            }
            ActionKind::Start => {
                let names2 = names.clone();
                self.save_journal(|j| {
                    for n in &names2 {
                        j.stopped.remove(n);
                    }
                })
                .await;
                for n in topo_order(&target)
                    .into_iter()
                    .filter(|n| names.contains(n))
                {
                    match ours.iter().find(|c| c.service == n) {
                        Some(c) => {
                            engine::start(&self.docker, &c.id).await?;
                            self.logs.service_event(&n, "Service started");
                        }
                        None => self.recreate_now(&target, std::slice::from_ref(&n)).await?,
                    }
                }
            }
            ActionKind::Purge => {
                self.logs.system("Purging application data");
                for c in &ours {
                    engine::kill_and_remove(
                        &self.docker,
                        &c.id,
                        self.grace(target.services.get(&c.service)),
                    )
                    .await?;
                }
                engine::purge_volumes(&self.docker, &target).await?;
                self.save_journal(|j| j.stopped.clear()).await;
                self.recreate_now(&target, &names).await?;
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Creates and starts the containers of `names` (in dependency order), images present.
    async fn recreate_now(
        &self,
        target: &TargetState,
        names: &[String],
    ) -> Result<(), ReconcilerError> {
        engine::ensure_volumes_networks(&self.docker, target).await?;
        for n in topo_order(target).into_iter().filter(|n| names.contains(n)) {
            let spec = &target.services[&n];
            let lock_dir = self.lock_dir(target.app_id, &n);
            let _ = std::fs::create_dir_all(&lock_dir);
            let id = engine::create(&self.docker, target, &n, spec, &lock_dir).await?;
            engine::start(&self.docker, &id).await?;
            self.logs.service_event(&n, "Service started");
        }
        Ok(())
    }
}
