//! The actor loop: one task owns the engine. It runs a pass when woken (new target,
//! operator action) and every `poll_interval`; operator actions run between passes, or
//! cut a pass short. A pass observes the engine, asks the planner what to do
//! ([`super::plan`]) and hands the steps to [`super::apply`].

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use protocol::release::ServiceSpec;
use tokio::sync::mpsc;

use super::engine;
use super::journal::{Journal, JournalFile};
use super::plan::{self, Plan};
use super::{Command, Inner, Outcome, ReconcilerError, UpdateStatus};

impl Inner {
    /// Runs until the shutdown token fires.
    pub(super) async fn run(self: Arc<Self>, mut cmds: mpsc::Receiver<Command>) {
        let mut next_in = Duration::ZERO;
        loop {
            tokio::select! {
                // Shutdown wins over everything: containers keep running without us.
                _ = self.shutdown.cancelled() => break,
                Some(cmd) = cmds.recv() => {
                    let res = self.action(cmd.kind, cmd.service.as_deref(), cmd.force).await;
                    let _ = cmd.reply.send(res);
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next_in) => {}
            }
            let generation = self.generation.load(Ordering::SeqCst);
            let outcome = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                o = self.pass(generation) => o,
                // A pass is cancel-safe: every step is idempotent and the next pass
                // recomputes the plan from the engine (the same property that makes
                // kill -9 safe). So an operator action does not wait behind a long
                // health window: drop the pass, act, and run a fresh pass.
                Some(cmd) = cmds.recv() => {
                    let res = self.action(cmd.kind, cmd.service.as_deref(), cmd.force).await;
                    let _ = cmd.reply.send(res);
                    Outcome::Again
                }
            };
            next_in = match outcome {
                Outcome::Done | Outcome::Failed => self.cfg.poll_interval,
                Outcome::Blocked => self.cfg.lock_poll,
                Outcome::RetryIn(d) => d,
                Outcome::Again => Duration::ZERO,
            };
            self.status.send_modify(|s| {
                s.passes += 1;
                if matches!(outcome, Outcome::Failed) {
                    s.failed_passes += 1;
                }
                if !matches!(outcome, Outcome::Again) {
                    s.generation = generation;
                }
            });
        }
    }

    /// One pass towards the journalled target.
    async fn pass(&self, generation: u64) -> Outcome {
        match self.pass_inner(generation).await {
            Ok(o) => o,
            Err(e) => {
                let msg = match e {
                    ReconcilerError::Engine(e) => format!("engine error: {e}"),
                    other => other.to_string(),
                };
                self.logs.warning(format!("Update pass failed: {msg}"));
                self.publish(|s| {
                    s.update_status = UpdateStatus::Failed;
                    s.error = Some(msg);
                });
                Outcome::RetryIn(self.cfg.pull_backoff_max.min(Duration::from_secs(10)))
            }
        }
    }

    async fn pass_inner(&self, generation: u64) -> Result<Outcome, ReconcilerError> {
        let j = self.journal.lock().await.clone();
        // Without a target there is nothing to compare: no engine call.
        let observed = match j.target {
            Some(_) => engine::list_ours(&self.docker, None).await?,
            None => Vec::new(),
        };
        match plan::plan(&j, &observed) {
            Plan::NoTarget => {
                self.publish(|s| s.update_status = UpdateStatus::Idle);
                Ok(Outcome::Done)
            }
            Plan::StayFailed { target, reason } => {
                let ours = of_app(observed, target.app_id);
                self.refresh(&target, &ours, &j, false).await;
                self.publish(|s| {
                    s.update_status = UpdateStatus::Failed;
                    s.error = reason;
                });
                Ok(Outcome::Failed)
            }
            Plan::Converged { target } => {
                let ours = of_app(observed, target.app_id);
                self.refresh(&target, &ours, &j, true).await;
                let err = j.failed.as_ref().map(|f| {
                    format!(
                        "release {} failed: {}; running {}",
                        f.release, f.reason, target.release
                    )
                });
                self.publish(|s| {
                    s.update_status = UpdateStatus::Idle;
                    s.error = err;
                    s.overall_progress = None;
                });
                Ok(Outcome::Done)
            }
            Plan::Update(update) => {
                let ours = of_app(observed, update.target.app_id);
                self.apply(update, &j, &ours, generation).await
            }
        }
    }

    /// Changes the journal and writes it if it changed. A write failure is logged, not
    /// returned: the pass goes on, and correctness does not depend on the journal's
    /// `in_flight` (see [`super::journal`]).
    pub(super) async fn save_journal(&self, f: impl FnOnce(&mut Journal)) {
        let mut j = self.journal.lock().await;
        let mut next = j.clone();
        f(&mut next);
        if next != *j {
            if let Err(e) = next.save(&self.cfg.data_dir) {
                // `e` reads "reconciler journal <path>: <why>".
                self.logs.warning(format!("Could not write the {e}"));
            }
            *j = next;
        }
    }

    /// Whether a newer target arrived since the pass started.
    pub(super) fn superseded(&self, generation: u64) -> bool {
        self.generation.load(Ordering::SeqCst) != generation
    }

    /// Journals the step about to run.
    pub(super) async fn step(&self, what: &str) {
        let what = what.to_string();
        self.save_journal(|j| j.in_flight = Some(what)).await;
    }

    /// Journals that no step is running.
    pub(super) async fn step_done(&self) {
        self.save_journal(|j| j.in_flight = None).await;
    }

    /// SIGTERM-to-SIGKILL grace for a service: its label, its compose setting, or the
    /// configured default.
    pub(super) fn grace(&self, spec: Option<&ServiceSpec>) -> Duration {
        spec.and_then(|s| {
            s.labels
                .get(engine::LABEL_STOP_GRACE)
                .and_then(|v| v.parse::<u64>().ok())
                .or(s.stop_grace_period)
        })
        .map(Duration::from_secs)
        .unwrap_or(self.cfg.stop_grace)
    }

    /// The host directory bind-mounted at `/tmp/balena` in `service`'s container.
    pub(super) fn lock_dir(&self, app_id: u32, service: &str) -> PathBuf {
        self.locks.service_dir(app_id, service)
    }
}

/// The containers of one app.
fn of_app(observed: Vec<engine::Observed>, app_id: u32) -> Vec<engine::Observed> {
    observed
        .into_iter()
        .filter(|c| c.app_id == app_id)
        .collect()
}
