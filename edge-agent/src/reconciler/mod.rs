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
//!
//! One file per job: `plan` decides the steps (a pure function, tested without an
//! engine), `apply` walks them, `pull` downloads images, `health` waits for dependencies
//! and watches a release come up, `rollback` records a failure and what it leads to,
//! `actions` runs operator actions, `status` reports, and `actor` is the loop that owns the engine.
//! [`engine`] is how each container operation is done, [`journal`] what is remembered.

/// Offline bundles (the format lives in the `bundle` crate, shared with the gateway).
pub use bundle;
mod actions;
mod actor;
mod apply;
pub mod engine;
mod health;
pub mod journal;
mod plan;
mod pull;
mod rollback;
mod status;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use protocol::release::{DependsCondition, TargetState};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::locks::Locks;
use crate::logs::LogSink;
use journal::{Journal, JournalFile};
pub use plan::topo_order;
pub use status::{ImageStatus, ReconcilerStatus, ServiceStatus, UpdateStatus};

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

/// Why a reconciler call or pass failed. The messages reach the logs and
/// [`ReconcilerStatus::error`], so each one says what was being done.
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
    /// The journal (or its directory) could not be read or written.
    #[error("reconciler journal {}: {source}", path.display())]
    Journal {
        /// The file or directory involved.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The journal is not valid journal JSON (or could not be encoded as such).
    #[error("reconciler journal {}: {source}", path.display())]
    JournalFormat {
        /// The journal file.
        path: PathBuf,
        /// What went wrong.
        source: serde_json::Error,
    },
    /// Reading the update locks failed.
    #[error("update locks: {0}")]
    Locks(#[from] std::io::Error),
    /// Asking the engine whether an image is present failed.
    #[error("inspecting image {image}: {source}")]
    InspectImage {
        /// The image reference.
        image: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// An image could not be downloaded, retries included.
    #[error("could not download {image} after {attempts} attempts: {source}")]
    Pull {
        /// The image reference.
        image: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        source: bollard::errors::Error,
    },
    /// A service's dependency did not start (or become healthy) within the health window.
    #[error(
        "service {service} waited for {dependency}, which did not {} within {}s",
        awaited(.condition),
        .window.as_secs()
    )]
    Dependency {
        /// The service that waited.
        service: String,
        /// The service it waited for.
        dependency: String,
        /// What it waited for.
        condition: DependsCondition,
        /// How long it waited.
        window: Duration,
    },
    /// The reconciler task has stopped.
    #[error("reconciler stopped")]
    Stopped,
}

/// What a `depends_on` condition waits for, as a verb.
fn awaited(condition: &DependsCondition) -> &'static str {
    match condition {
        DependsCondition::ServiceHealthy => "become healthy",
        DependsCondition::ServiceStarted => "start",
    }
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
        let journal = Journal::load(&cfg.data_dir)?;
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
        next.save(&inner.cfg.data_dir)?;
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
