//! The container reconciler: makes the engine run the target state.
//!
//! Current state is read from the engine (containers labelled as ours, see
//! [`engine`]); the target comes from the gateway (or a bundle, or local mode) through
//! [`Reconciler::set_target`] and is journalled ([`journal`]) before anything else
//! happens. One task owns the engine: it runs a *pass* whenever it is woken (new target,
//! operator action) and every `poll_interval`. A pass computes the difference and walks
//! it in small, idempotent steps:
//!
//! 1. pull the images that are missing (at most `max_parallel_pulls` at once, retried
//!    with backoff, progress per image and overall) for `download-then-kill` and
//!    `hand-over` services;
//! 2. if anything has to be killed, check the app's update locks; a held lock makes the
//!    pass stop here and report `waiting_for_lock` (re-checked every `lock_poll`), unless
//!    the target was set with `force`;
//! 3. remove containers no longer in the target; for `kill-then-download` and
//!    `delete-then-download` services kill first, then pull;
//! 4. walk services in `depends_on` order, waiting for each dependency to be started or
//!    healthy as asked, replacing what changed (`hand-over`: start the new container next
//!    to the old one, wait for `handover-complete` or the timeout, then kill the old);
//! 5. watch the release for `health_window`: every service running (healthy, when it has
//!    a healthcheck) and not restarting for `stable_for`. Success makes it the last good
//!    release; failure rolls back to the last good release, once, with the reason
//!    reported. A failed target is not retried until a different target arrives.
//!
//! Services whose config hash did not change are never touched, whatever the release id.

/// Offline bundles (the format lives in the `bundle` crate, shared with the gateway).
pub use bundle;
pub mod engine;
pub mod journal;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::models::{ContainerStateStatusEnum, HealthStatusEnum};
use bollard::Docker;
use futures_util::StreamExt;
use protocol::release::{DependsCondition, ServiceSpec, TargetState};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::locks::Locks;
use crate::logs::LogSink;
use engine::Observed;
use journal::{Failure, Journal};

/// Reconciler settings. Build with [`ReconcilerConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Engine socket. Default is `$DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    pub engine_socket: String,
    /// Agent data dir; the journal lives at `<data_dir>/reconciler/journal.json`.
    pub data_dir: PathBuf,
    /// Root of the update-lock directories; `<locks_root>/<app_id>/<service>` is
    /// bind-mounted at `/tmp/balena` and `/tmp/resin` in each container.
    pub locks_root: PathBuf,
    /// Concurrent image pulls. Default is 3.
    pub max_parallel_pulls: usize,
    /// How long a new release gets to become healthy before it is rolled back.
    /// Default is 60 s.
    pub health_window: Duration,
    /// How long every service must stay up (and healthy) for a release to count as
    /// good. Default is 3 s.
    pub stable_for: Duration,
    /// Grace between SIGTERM and SIGKILL. Default is 10 s; the service label
    /// `io.edge.stop-grace-period` (seconds) or compose `stop_grace_period` override it.
    pub stop_grace: Duration,
    /// Attempts per image pull before the pass gives up. Default is 5.
    pub pull_retries: u32,
    /// First backoff between pull attempts, doubled each time. Default is 1 s.
    pub pull_backoff: Duration,
    /// Backoff cap, and the delay before a pass that gave up on a pull runs again.
    /// Default is 60 s.
    pub pull_backoff_max: Duration,
    /// `hand-over` timeout when the service has no `io.balena.update.handover-timeout`
    /// label. Default is 60 s.
    pub handover_timeout: Duration,
    /// Idle pass interval (status refresh, exited-service events). Default is 10 s.
    pub poll_interval: Duration,
    /// How often a pass blocked by a lock is retried. Default is 1 s.
    pub lock_poll: Duration,
}

impl ReconcilerConfig {
    /// Defaults (see each field) with the given data dir and lock root.
    pub fn new(data_dir: impl Into<PathBuf>, locks_root: impl Into<PathBuf>) -> Self {
        // The lock root is bind-mounted into containers: the engine needs it absolute.
        let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        Self {
            engine_socket: engine::default_socket(),
            data_dir: abs(data_dir.into()),
            locks_root: abs(locks_root.into()),
            max_parallel_pulls: 3,
            health_window: Duration::from_secs(60),
            stable_for: Duration::from_secs(3),
            stop_grace: Duration::from_secs(10),
            pull_retries: 5,
            pull_backoff: Duration::from_secs(1),
            pull_backoff_max: Duration::from_secs(60),
            handover_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(10),
            lock_poll: Duration::from_secs(1),
        }
    }
}

/// Why a reconciler call failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcilerError {
    /// An update lock is held and `force` was not given (the local API answers 423).
    #[error("update locked by services {services:?}")]
    Locked {
        /// Services holding a lock.
        services: Vec<String>,
    },
    /// No such service in the current target.
    #[error("no service named {0:?}")]
    NotFound(String),
    /// No target state has been set yet.
    #[error("no target state")]
    NoTarget,
    /// The engine refused or could not be reached.
    #[error("engine: {0}")]
    Engine(#[from] bollard::errors::Error),
    /// The journal could not be read or written.
    #[error("journal: {0}")]
    Journal(String),
    /// Reading the update locks failed.
    #[error("update locks: {0}")]
    Locks(#[from] std::io::Error),
    /// The reconciler task has stopped.
    #[error("reconciler stopped")]
    Stopped,
}

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
    /// Target generation the last completed pass worked on.
    #[serde(skip)]
    pub generation: u64,
}

/// A handle on the running reconciler. Cheap to clone.
#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
    /// Fires once the actor loop has returned (after shutdown).
    stopped: watch::Receiver<bool>,
}

struct Inner {
    cfg: ReconcilerConfig,
    docker: Docker,
    locks: Locks,
    logs: LogSink,
    journal: tokio::sync::Mutex<Journal>,
    status: watch::Sender<ReconcilerStatus>,
    wake: Notify,
    generation: AtomicU64,
    cmds: mpsc::Sender<Command>,
    progress: Mutex<BTreeMap<String, ImageStatus>>,
    last_running: Mutex<HashMap<String, bool>>,
    shutdown: CancellationToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActionKind {
    Restart,
    Stop,
    Start,
    Purge,
}

struct Command {
    kind: ActionKind,
    service: Option<String>,
    force: bool,
    reply: oneshot::Sender<Result<(), ReconcilerError>>,
}

/// How a pass ended.
enum Outcome {
    /// Converged (or nothing to do).
    Done,
    /// Blocked by a lock; try again soon.
    Blocked,
    /// Try again after this long.
    RetryIn(Duration),
    /// Run again right away (rollback chosen, or a newer target arrived).
    Again,
    /// Gave up until something changes.
    Failed,
}

impl Reconciler {
    /// Connects to the engine, loads the journal and starts converging in the background.
    /// The task runs until [`Reconciler::shutdown`].
    pub async fn start(
        cfg: ReconcilerConfig,
        logs: LogSink,
    ) -> Result<Reconciler, ReconcilerError> {
        Self::start_with_shutdown(cfg, logs, CancellationToken::new()).await
    }

    /// Like [`Reconciler::start`], stopping when `shutdown` (the process's cancellation
    /// root) is cancelled. Containers keep running; a pass cut short resumes from the
    /// engine's state at the next start.
    pub async fn start_with_shutdown(
        cfg: ReconcilerConfig,
        logs: LogSink,
        shutdown: CancellationToken,
    ) -> Result<Reconciler, ReconcilerError> {
        let docker = engine::connect(&cfg.engine_socket).await?;
        let journal = Journal::load(&cfg.data_dir).map_err(ReconcilerError::Journal)?;
        if let Some(step) = &journal.in_flight {
            logs.system(format!(
                "Resuming after an interrupted update (was: {step})"
            ));
        }
        let (status, _) = watch::channel(ReconcilerStatus {
            target_release: journal.target.as_ref().map(|t| t.release.clone()),
            last_good_release: journal.last_good.as_ref().map(|t| t.release.clone()),
            release: journal.last_good.as_ref().map(|t| t.release.clone()),
            app_id: journal.target.as_ref().map(|t| t.app_id),
            ..Default::default()
        });
        let (cmds, cmd_rx) = mpsc::channel(16);
        let inner = Arc::new(Inner {
            locks: Locks::new(&cfg.locks_root),
            cfg,
            docker,
            logs,
            journal: tokio::sync::Mutex::new(journal),
            status,
            wake: Notify::new(),
            generation: AtomicU64::new(1),
            cmds,
            progress: Mutex::new(BTreeMap::new()),
            last_running: Mutex::new(HashMap::new()),
            shutdown,
        });
        let (done, stopped) = watch::channel(false);
        let actor = inner.clone();
        tokio::spawn(async move {
            actor.run(cmd_rx).await;
            let _ = done.send(true);
        });
        Ok(Reconciler { inner, stopped })
    }

    /// Waits until the actor loop has stopped (after the shutdown token fired): its
    /// current step finished or was dropped at a safe point.
    pub async fn stopped(&self) {
        let mut s = self.stopped.clone();
        let _ = s.wait_for(|done| *done).await;
    }

    /// Journals `target` durably and wakes the loop; returns before anything runs.
    /// Setting the same target again is a no-op, except that `force` is remembered.
    pub async fn set_target(
        &self,
        target: TargetState,
        force: bool,
    ) -> Result<(), ReconcilerError> {
        self.set_target_inner(target, force, false).await
    }

    /// Like [`Reconciler::set_target`], marking the target as pinned locally (bundle,
    /// local mode) so the caller can tell it apart from the fleet's.
    pub async fn set_pinned_target(
        &self,
        target: TargetState,
        force: bool,
    ) -> Result<(), ReconcilerError> {
        self.set_target_inner(target, force, true).await
    }

    async fn set_target_inner(
        &self,
        target: TargetState,
        force: bool,
        pinned: bool,
    ) -> Result<(), ReconcilerError> {
        let inner = &self.inner;
        let mut j = inner.journal.lock().await;
        let same = j.target.as_ref() == Some(&target);
        if same && (!force || j.force) && j.pinned == pinned {
            return Ok(());
        }
        let mut next = j.clone();
        if !same {
            next.force = force;
            next.stopped.clear();
            // A different target is a new chance, even for a release that failed before.
            if next
                .failed
                .as_ref()
                .is_some_and(|f| f.release != target.release)
            {
                next.failed = None;
            }
            next.known_apps.insert(target.app_id);
            next.target = Some(target.clone());
        } else {
            next.force |= force;
            if force {
                // Forcing the same target again retries it even if it failed.
                next.failed = None;
            }
        }
        next.pinned = pinned;
        next.save(&inner.cfg.data_dir)
            .map_err(ReconcilerError::Journal)?;
        *j = next;
        drop(j);
        inner.generation.fetch_add(1, Ordering::SeqCst);
        inner.status.send_modify(|s| {
            s.target_release = Some(target.release.clone());
            s.app_id = Some(target.app_id);
        });
        inner.wake.notify_one();
        Ok(())
    }

    /// Whether the current target was pinned on the device (bundle, local mode); such a
    /// target is not replaced by the gateway's.
    pub async fn pinned(&self) -> bool {
        self.inner.journal.lock().await.pinned
    }

    /// The current target, if any.
    pub async fn target(&self) -> Option<TargetState> {
        self.inner.journal.lock().await.target.clone()
    }

    /// A receiver of status updates.
    pub fn status(&self) -> watch::Receiver<ReconcilerStatus> {
        self.inner.status.subscribe()
    }

    /// Waits until a pass has run on the latest target and ended idle or failed.
    pub async fn settled(&self) -> ReconcilerStatus {
        let generation = self.inner.generation.load(Ordering::SeqCst);
        let mut rx = self.status();
        let status = rx
            .wait_for(|s| {
                s.generation >= generation
                    && matches!(s.update_status, UpdateStatus::Idle | UpdateStatus::Failed)
            })
            .await
            .map(|s| s.clone());
        status.unwrap_or_default()
    }

    /// Restarts a service by recreating its container (balena semantics).
    pub async fn restart_service(&self, service: &str, force: bool) -> Result<(), ReconcilerError> {
        self.command(ActionKind::Restart, Some(service), force)
            .await
    }

    /// Stops a service; it stays stopped until started or a new target arrives.
    pub async fn stop_service(&self, service: &str, force: bool) -> Result<(), ReconcilerError> {
        self.command(ActionKind::Stop, Some(service), force).await
    }

    /// Starts a stopped service.
    pub async fn start_service(&self, service: &str) -> Result<(), ReconcilerError> {
        self.command(ActionKind::Start, Some(service), false).await
    }

    /// Recreates every service of the app.
    pub async fn restart_app(&self, force: bool) -> Result<(), ReconcilerError> {
        self.command(ActionKind::Restart, None, force).await
    }

    /// Stops every service of the app.
    pub async fn stop_app(&self, force: bool) -> Result<(), ReconcilerError> {
        self.command(ActionKind::Stop, None, force).await
    }

    /// Starts every service of the app.
    pub async fn start_app(&self) -> Result<(), ReconcilerError> {
        self.command(ActionKind::Start, None, false).await
    }

    /// Stops the app, empties (recreates) its named volumes and starts it again.
    pub async fn purge(&self, force: bool) -> Result<(), ReconcilerError> {
        self.command(ActionKind::Purge, None, force).await
    }

    /// Stops the background task (containers keep running).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// The engine client (for tools that share the connection).
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    async fn command(
        &self,
        kind: ActionKind,
        service: Option<&str>,
        force: bool,
    ) -> Result<(), ReconcilerError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .cmds
            .send(Command {
                kind,
                service: service.map(str::to_string),
                force,
                reply,
            })
            .await
            .map_err(|_| ReconcilerError::Stopped)?;
        rx.await.map_err(|_| ReconcilerError::Stopped)?
    }
}

impl Inner {
    async fn run(self: Arc<Self>, mut cmds: mpsc::Receiver<Command>) {
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
                if !matches!(outcome, Outcome::Again) {
                    s.generation = generation;
                }
            });
        }
    }

    fn publish(&self, f: impl FnOnce(&mut ReconcilerStatus)) {
        self.status.send_modify(f);
    }

    async fn save_journal(&self, f: impl FnOnce(&mut Journal)) {
        let mut j = self.journal.lock().await;
        let mut next = j.clone();
        f(&mut next);
        if next != *j {
            if let Err(e) = next.save(&self.cfg.data_dir) {
                self.logs
                    .warning(format!("Could not write the reconciler journal: {e}"));
            }
            *j = next;
        }
    }

    fn grace(&self, spec: Option<&ServiceSpec>) -> Duration {
        spec.and_then(|s| {
            s.labels
                .get(engine::LABEL_STOP_GRACE)
                .and_then(|v| v.parse::<u64>().ok())
                .or(s.stop_grace_period)
        })
        .map(Duration::from_secs)
        .unwrap_or(self.cfg.stop_grace)
    }

    fn lock_dir(&self, app_id: u32, service: &str) -> PathBuf {
        self.locks.service_dir(app_id, service)
    }

    /// One pass towards the journalled target.
    async fn pass(&self, generation: u64) -> Outcome {
        match self.pass_inner(generation).await {
            Ok(o) => o,
            Err(e) => {
                let msg = format!("engine error: {e}");
                self.logs.warning(format!("Update pass failed: {msg}"));
                self.publish(|s| {
                    s.update_status = UpdateStatus::Failed;
                    s.error = Some(msg);
                });
                Outcome::RetryIn(self.cfg.pull_backoff_max.min(Duration::from_secs(10)))
            }
        }
    }

    async fn pass_inner(&self, generation: u64) -> Result<Outcome, bollard::errors::Error> {
        let j = self.journal.lock().await.clone();
        let Some((target, rolling_back)) = j.effective() else {
            self.publish(|s| s.update_status = UpdateStatus::Idle);
            return Ok(Outcome::Done);
        };
        let target = target.clone();
        let app = target.app_id;
        let force = j.force || rolling_back;
        let is_good = j.last_good.as_ref() == Some(&target);

        let all = engine::list_ours(&self.docker, None).await?;
        let (ours, others): (Vec<Observed>, Vec<Observed>) =
            all.into_iter().partition(|c| c.app_id == app);
        // Containers of other apps this agent ran before (an app change).
        let mut removals: Vec<Observed> = others
            .into_iter()
            .filter(|c| j.known_apps.contains(&c.app_id))
            .collect();

        if !rolling_back
            && j.failed
                .as_ref()
                .is_some_and(|f| f.release == target.release)
        {
            // A failed target with nowhere to roll back to: report, touch nothing.
            let reason = j.failed.as_ref().map(|f| f.reason.clone());
            self.refresh(&target, &ours, &j, false).await;
            self.publish(|s| {
                s.update_status = UpdateStatus::Failed;
                s.error = reason;
            });
            return Ok(Outcome::Failed);
        }

        // The plan, per service.
        let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
        for (name, spec) in &target.services {
            let hash = spec.config_hash();
            let mut plan = Plan {
                spec: spec.clone(),
                hash: hash.clone(),
                current: None,
                stale: Vec::new(),
            };
            for c in ours.iter().filter(|c| &c.service == name) {
                if c.hash == hash && plan.current.is_none() {
                    plan.current = Some(c.clone());
                } else {
                    plan.stale.push(c.clone());
                }
            }
            plans.insert(name.clone(), plan);
        }
        removals.extend(
            ours.iter()
                .filter(|c| !target.services.contains_key(&c.service))
                .cloned(),
        );

        let changed: BTreeSet<String> = plans
            .iter()
            .filter(|(_, p)| p.current.is_none() || !p.stale.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        let to_start: BTreeSet<String> = plans
            .iter()
            .filter(|(n, p)| {
                p.current.as_ref().is_some_and(|c| {
                    c.state == ContainerStateStatusEnum::CREATED
                        || (!is_good && !c.is_running() && !j.stopped.contains(*n))
                })
            })
            .map(|(n, _)| n.clone())
            .collect();

        if changed.is_empty() && removals.is_empty() && to_start.is_empty() && is_good {
            // The no-op pass: nothing differs.
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
            return Ok(Outcome::Done);
        }

        let updating = if rolling_back {
            UpdateStatus::RollingBack
        } else {
            UpdateStatus::Updating
        };
        self.publish(|s| {
            s.update_status = updating;
            s.error = None;
        });
        if !changed.is_empty() && !rolling_back {
            self.logs.system(format!(
                "Updating to release {} (services: {})",
                target.release,
                changed.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }

        // Per-service status before anything moves, so downloads show against services.
        self.refresh(&target, &ours, &j, is_good).await;

        // 1. Downloads that do not need a kill first.
        let kill_first = |p: &Plan| {
            matches!(
                p.spec.update_strategy(),
                "kill-then-download" | "delete-then-download"
            ) && p.stale.iter().any(|c| c.is_running())
        };
        let mut early: BTreeSet<String> = BTreeSet::new();
        for n in &changed {
            let p = &plans[n];
            if p.current.is_none() && !kill_first(p) {
                early.insert(p.spec.image.clone());
            }
        }
        if let Err(reason) = self.pull_all(&target, early, updating).await {
            return Ok(self.pull_failed(reason));
        }
        if self.superseded(generation) {
            return Ok(Outcome::Again);
        }

        // 2. Locks, before anything is killed.
        let kills_needed = !removals.is_empty()
            || changed
                .iter()
                .any(|n| plans[n].stale.iter().any(|c| c.is_running()));
        if kills_needed && !force {
            // The target app's locks, and those of any other app whose containers go.
            let apps: BTreeSet<u32> = std::iter::once(app)
                .chain(removals.iter().map(|c| c.app_id))
                .collect();
            let mut locked = Vec::new();
            for a in apps {
                match self.locks.locked_services(a) {
                    Ok(l) => locked.extend(l),
                    // Unreadable lock state must not let a kill through.
                    Err(e) => locked.push(format!("(app {a}: {e})")),
                }
            }
            if !locked.is_empty() {
                let msg = format!("update waiting for the lock held by {}", locked.join(", "));
                let was = self.status.borrow().update_status;
                if was != UpdateStatus::WaitingForLock {
                    self.logs.system(format!(
                        "Update to release {} is blocked by update locks in {}",
                        target.release,
                        locked.join(", ")
                    ));
                }
                self.refresh(&target, &ours, &j, false).await;
                self.publish(|s| {
                    s.update_status = UpdateStatus::WaitingForLock;
                    s.error = Some(msg);
                });
                return Ok(Outcome::Blocked);
            }
        }

        // 3. Removals, then kill-first services.
        engine::ensure_volumes_networks(&self.docker, &target).await?;
        for c in &removals {
            self.step(&format!("remove {} ({})", c.name, c.service))
                .await;
            self.logs.service_event(&c.service, "Killing service");
            engine::kill_and_remove(&self.docker, &c.id, self.cfg.stop_grace).await?;
            self.logs.service_event(&c.service, "Service removed");
        }
        let mut late: BTreeSet<String> = BTreeSet::new();
        for n in &changed {
            let p = plans.get_mut(n).expect("planned");
            if !kill_first(p) {
                continue;
            }
            for c in std::mem::take(&mut p.stale) {
                self.step(&format!("kill {} before download", c.name)).await;
                self.logs.service_event(n, "Killing service");
                engine::kill_and_remove(&self.docker, &c.id, self.grace(Some(&p.spec))).await?;
                if p.spec.update_strategy() == "delete-then-download" && c.image != p.spec.image {
                    engine::remove_image(&self.docker, &c.image).await?;
                }
            }
            if p.current.is_none() {
                late.insert(p.spec.image.clone());
            }
        }
        if let Err(reason) = self.pull_all(&target, late, updating).await {
            return Ok(self.pull_failed(reason));
        }

        // 4. Services in dependency order.
        let mut baseline: HashMap<String, i64> = HashMap::new();
        for name in topo_order(&target) {
            let p = plans.get_mut(&name).expect("planned");
            let needs_new = p.current.is_none();
            let needs_start = to_start.contains(&name) || needs_new;
            if !needs_new && !needs_start && p.stale.is_empty() {
                if let Some(c) = &p.current {
                    baseline.insert(name.clone(), c.restart_count);
                }
                continue;
            }
            if j.stopped.contains(&name) && !needs_new {
                continue;
            }
            if let Err(reason) = self.wait_deps(&target, &name, generation).await {
                return Ok(self.release_failed(&target, rolling_back, reason).await);
            }
            let handover = p.spec.update_strategy() == "hand-over"
                && needs_new
                && p.stale.iter().any(|c| c.is_running());
            let lock_dir = self.lock_dir(app, &name);
            let _ = std::fs::create_dir_all(&lock_dir);
            if handover {
                let _ = std::fs::remove_file(lock_dir.join("handover-complete"));
            }
            let id = match &p.current {
                Some(c) => c.id.clone(),
                None => {
                    self.step(&format!("create {name} for release {}", target.release))
                        .await;
                    self.logs.service_event(&name, "Installing service");
                    engine::create(&self.docker, &target, &name, &p.spec, &lock_dir).await?
                }
            };
            // The new container is created before the old one is stopped (creating
            // binds no ports) and the old one is removed after the new one started, so
            // the downtime is only stop + start. A crash in between leaves a stopped
            // stale container, which the next pass removes.
            let mut replaced = Vec::new();
            if !handover {
                let old: Vec<Observed> = std::mem::take(&mut p.stale);
                if !old.is_empty() {
                    self.step(&format!("replace {name}")).await;
                }
                for c in old {
                    self.logs.service_event(&name, "Killing service");
                    engine::stop(&self.docker, &c.id, self.grace(Some(&p.spec))).await?;
                    self.logs.service_event(&name, "Service stopped");
                    replaced.push(c.id);
                }
            }
            if !j.stopped.contains(&name) {
                if replaced.is_empty() {
                    self.step(&format!("start {name}")).await;
                }
                engine::start(&self.docker, &id).await?;
                self.logs.service_event(&name, "Service started");
            }
            for old in replaced {
                engine::remove(&self.docker, &old).await?;
            }
            baseline.insert(name.clone(), 0);
            if handover {
                let timeout = p
                    .spec
                    .labels
                    .get("io.balena.update.handover-timeout")
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_millis)
                    .unwrap_or(self.cfg.handover_timeout);
                self.step(&format!("hand over {name}")).await;
                let file = lock_dir.join("handover-complete");
                let deadline = Instant::now() + timeout;
                while !file.exists() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if file.exists() {
                    self.logs.service_event(&name, "Hand-over complete");
                } else {
                    self.logs
                        .service_event(&name, "Hand-over timed out; killing the old service");
                }
                for c in std::mem::take(&mut p.stale) {
                    self.logs.service_event(&name, "Killing service");
                    engine::kill_and_remove(&self.docker, &c.id, self.grace(Some(&p.spec))).await?;
                }
                let _ = std::fs::remove_file(&file);
            }
        }
        self.step_done().await;

        // 5. Watch the release come up.
        if self.superseded(generation) {
            return Ok(Outcome::Again);
        }
        match self.verify(&target, &baseline, &j, generation).await? {
            Verified::Ok => {
                let mut j2 = None;
                self.save_journal(|j| {
                    if !rolling_back {
                        j.failed = None;
                    }
                    j.last_good = Some(target.clone());
                    j.in_flight = None;
                    j2 = Some(j.clone());
                })
                .await;
                let j2 = j2.unwrap_or_default();
                let ours = engine::list_ours(&self.docker, Some(app)).await?;
                self.refresh(&target, &ours, &j2, true).await;
                let err = j2.failed.as_ref().map(|f| {
                    format!(
                        "release {} failed: {}; rolled back to {}",
                        f.release, f.reason, target.release
                    )
                });
                if !rolling_back {
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
                Ok(self.release_failed(&target, rolling_back, reason).await)
            }
        }
    }

    /// The target did not come up: roll back once, or give up.
    async fn release_failed(
        &self,
        target: &TargetState,
        rolling_back: bool,
        reason: String,
    ) -> Outcome {
        let j = self.journal.lock().await.clone();
        if rolling_back {
            let failed = j.failed.clone();
            let msg = format!(
                "rollback to {} failed too: {reason}{}",
                target.release,
                failed
                    .map(|f| format!(" (release {} failed: {})", f.release, f.reason))
                    .unwrap_or_default()
            );
            self.logs.warning(msg.clone());
            // The old release is not good any more: nothing to go back to, no loop.
            self.save_journal(|j| {
                j.last_good = None;
                j.in_flight = None;
            })
            .await;
            self.publish(|s| {
                s.update_status = UpdateStatus::Failed;
                s.error = Some(msg);
                s.last_good_release = None;
            });
            return Outcome::Failed;
        }
        let good = j.last_good.clone().filter(|g| g.release != target.release);
        self.save_journal(|j| {
            j.failed = Some(Failure {
                release: target.release.clone(),
                reason: reason.clone(),
            });
            j.in_flight = None;
        })
        .await;
        match good {
            Some(good) => {
                let msg = format!("{reason}; rolling back to {}", good.release);
                self.logs.system(format!(
                    "Rolling back to release {} because {reason}",
                    good.release
                ));
                self.publish(|s| {
                    s.update_status = UpdateStatus::RollingBack;
                    s.error = Some(msg);
                });
                Outcome::Again
            }
            None => {
                self.logs.warning(format!(
                    "Release {} failed: {reason}; no earlier good release to roll back to",
                    target.release
                ));
                self.publish(|s| {
                    s.update_status = UpdateStatus::Failed;
                    s.error = Some(reason);
                });
                Outcome::Failed
            }
        }
    }

    fn pull_failed(&self, reason: String) -> Outcome {
        let retry = self.cfg.pull_backoff_max;
        let msg = format!("{reason}; retrying in {}s", retry.as_secs());
        self.logs.warning(msg.clone());
        self.publish(|s| {
            s.update_status = UpdateStatus::Failed;
            s.error = Some(msg);
        });
        Outcome::RetryIn(retry)
    }

    fn superseded(&self, generation: u64) -> bool {
        self.generation.load(Ordering::SeqCst) != generation
    }

    async fn step(&self, what: &str) {
        let what = what.to_string();
        self.save_journal(|j| j.in_flight = Some(what)).await;
    }

    async fn step_done(&self) {
        self.save_journal(|j| j.in_flight = None).await;
    }

    /// Pulls the missing ones among `images`, at most `max_parallel_pulls` at once.
    async fn pull_all(
        &self,
        target: &TargetState,
        images: BTreeSet<String>,
        after: UpdateStatus,
    ) -> Result<(), String> {
        let mut missing = Vec::new();
        for image in images {
            match engine::has_image(&self.docker, &image).await {
                Ok(true) => {}
                Ok(false) => missing.push(image),
                Err(e) => return Err(format!("inspecting image {image}: {e}")),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        {
            let mut p = self.progress.lock().expect("progress lock");
            p.clear();
            for image in &missing {
                p.insert(
                    image.clone(),
                    ImageStatus {
                        image: image.clone(),
                        status: "Downloading".into(),
                        download_progress: 0,
                    },
                );
            }
        }
        self.publish(|s| s.update_status = UpdateStatus::Downloading);
        self.publish_progress(target);
        let results: Vec<Result<(), String>> = futures_util::stream::iter(missing)
            .map(|image| self.pull_one(target, image))
            .buffer_unordered(self.cfg.max_parallel_pulls.max(1))
            .collect()
            .await;
        self.publish(|s| s.update_status = after);
        results.into_iter().collect()
    }

    async fn pull_one(&self, target: &TargetState, image: String) -> Result<(), String> {
        let mut backoff = self.cfg.pull_backoff;
        let attempts = self.cfg.pull_retries.max(1);
        self.logs.system(format!("Downloading image {image}"));
        for attempt in 1..=attempts {
            let res = engine::pull(&self.docker, &image, |pct| {
                if let Some(st) = self.progress.lock().expect("progress lock").get_mut(&image) {
                    st.download_progress = pct;
                }
                self.publish_progress(target);
            })
            .await;
            match res {
                Ok(()) => {
                    if let Some(st) = self.progress.lock().expect("progress lock").get_mut(&image) {
                        st.download_progress = 100;
                        st.status = "Downloaded".into();
                    }
                    self.publish_progress(target);
                    self.logs.system(format!("Downloaded image {image}"));
                    return Ok(());
                }
                Err(e) if attempt < attempts => {
                    let msg = format!(
                        "downloading {image} failed (attempt {attempt}/{attempts}): {e}; retrying in {}ms",
                        backoff.as_millis()
                    );
                    self.logs
                        .warning(format!("Failed to download image {image}: {e}"));
                    self.publish(|s| s.error = Some(msg));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.cfg.pull_backoff_max);
                }
                Err(e) => {
                    return Err(format!(
                        "could not download {image} after {attempts} attempts: {e}"
                    ))
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    fn publish_progress(&self, target: &TargetState) {
        let images: Vec<ImageStatus> = self
            .progress
            .lock()
            .expect("progress lock")
            .values()
            .cloned()
            .collect();
        let overall = if images.is_empty() {
            None
        } else {
            Some(
                (images
                    .iter()
                    .map(|i| u32::from(i.download_progress))
                    .sum::<u32>()
                    / images.len() as u32) as u8,
            )
        };
        self.publish(|s| {
            for svc in &mut s.services {
                if let (Some(spec), Some(img)) = (
                    target.services.get(&svc.name),
                    images.iter().find(|i| {
                        target
                            .services
                            .get(&svc.name)
                            .is_some_and(|sp| sp.image == i.image)
                    }),
                ) {
                    if svc.image != spec.image || svc.container_id.is_none() {
                        svc.status = img.status.clone();
                        svc.download_progress = Some(img.download_progress);
                    }
                }
            }
            s.images = images;
            s.overall_progress = overall;
        });
    }

    /// Waits until every dependency of `name` is started or healthy, as asked.
    async fn wait_deps(
        &self,
        target: &TargetState,
        name: &str,
        generation: u64,
    ) -> Result<(), String> {
        let spec = &target.services[name];
        if spec.depends_on.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.cfg.health_window;
        loop {
            let ours = engine::list_ours(&self.docker, Some(target.app_id))
                .await
                .map_err(|e| format!("engine: {e}"))?;
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
                let what = match cond {
                    DependsCondition::ServiceHealthy => "become healthy",
                    DependsCondition::ServiceStarted => "start",
                };
                return Err(format!(
                    "service {name} waited for {dep}, which did not {what} within {}s",
                    self.cfg.health_window.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Watches the target's services for `health_window`.
    async fn verify(
        &self,
        target: &TargetState,
        baseline: &HashMap<String, i64>,
        j: &Journal,
        generation: u64,
    ) -> Result<Verified, bollard::errors::Error> {
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
                            && matches!(
                                spec.restart,
                                protocol::release::RestartPolicy::No
                                    | protocol::release::RestartPolicy::OnFailure
                            );
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

    /// Rebuilds per-service status from what the engine shows, and logs exits.
    async fn refresh(&self, target: &TargetState, ours: &[Observed], j: &Journal, good: bool) {
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

    /// Operator actions, run between passes.
    async fn action(
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

enum Verified {
    Ok,
    Superseded,
    Failed(String),
}

struct Plan {
    spec: ServiceSpec,
    #[allow(dead_code)] // kept for diagnostics in Debug output
    hash: String,
    current: Option<Observed>,
    stale: Vec<Observed>,
}

/// Service names with every dependency before its dependants (ties by name).
pub fn topo_order(target: &TargetState) -> Vec<String> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    while out.len() < target.services.len() {
        let before = out.len();
        for (name, spec) in &target.services {
            if !done.contains(name)
                && spec
                    .depends_on
                    .keys()
                    .all(|d| done.contains(d) || !target.services.contains_key(d))
            {
                done.insert(name.clone());
                out.push(name.clone());
            }
        }
        if out.len() == before {
            // A cycle (refused by the parser; be safe anyway): append the rest.
            out.extend(
                target
                    .services
                    .keys()
                    .filter(|n| !done.contains(*n))
                    .cloned(),
            );
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use compose::{parse_compose, target_state};

    fn t(release: &str, compose: &str) -> TargetState {
        target_state(1, "a", release, &parse_compose(compose).unwrap(), &[], &[])
    }

    #[test]
    fn dependencies_come_first() {
        let target = t(
            "r",
            "services:\n  proxy:\n    image: x\n    depends_on: [api, db]\n  api:\n    image: x\n    depends_on: [db]\n  db:\n    image: x\n  zed:\n    image: x\n",
        );
        assert_eq!(topo_order(&target), ["db", "zed", "api", "proxy"]);
    }

    #[test]
    fn a_failed_target_runs_the_last_good_release() {
        let good = t("good", "services:\n  a:\n    image: x\n");
        let bad = t("bad", "services:\n  a:\n    image: y\n");
        let mut j = Journal {
            target: Some(bad.clone()),
            last_good: Some(good.clone()),
            ..Default::default()
        };
        assert_eq!(j.effective(), Some((&bad, false)));
        j.failed = Some(Failure {
            release: "bad".into(),
            reason: "unhealthy".into(),
        });
        assert_eq!(j.effective(), Some((&good, true)));
        // Nothing to roll back to: the failed target stays (and is not retried).
        j.last_good = None;
        assert_eq!(j.effective(), Some((&bad, false)));
    }

    #[test]
    fn journal_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), Journal::default());
        let j = Journal {
            target: Some(t("r1", "services:\n  a:\n    image: x\n")),
            in_flight: Some("start a".into()),
            ..Default::default()
        };
        j.save(dir.path()).unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), j);
    }
}
