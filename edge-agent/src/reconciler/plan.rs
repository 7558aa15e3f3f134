//! The planner: *why* containers are created, stopped and removed. A pure function of the
//! journal (target, last good release, failure, operator-stopped services, known apps)
//! and the containers the engine shows; it talks to no engine, reads no file and no
//! clock. [`super::apply`] walks the [`Step`]s it returns, and [`super::engine`] is *how*
//! each one is done.
//!
//! Update locks are not an input: they are read when the pass reaches
//! [`Step::CheckLocks`], which sits after the downloads (which can take minutes) and
//! before the first kill, so that a lock taken during a download still blocks the kill.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use bollard::models::ContainerStateStatusEnum;
use protocol::release::{ServiceSpec, TargetState};

use super::engine::Observed;
use super::journal::Journal;

/// Label: how long a `hand-over` waits for `handover-complete`, in milliseconds.
const LABEL_HANDOVER_TIMEOUT: &str = "io.balena.update.handover-timeout";

/// What a pass has to do.
#[derive(Debug)]
pub(crate) enum Plan {
    /// No target has been set.
    NoTarget,
    /// The target failed and there is no good release to go back to: touch nothing, keep
    /// reporting why (it is not retried until a different target arrives).
    StayFailed {
        /// The failed target.
        target: TargetState,
        /// Why it failed.
        reason: Option<String>,
    },
    /// Every service runs as the target says, and the target is the last good release.
    Converged {
        /// The target.
        target: TargetState,
    },
    /// Something differs: walk these steps.
    Update(Update),
}

/// A plan that changes something (or watches a new release come up).
#[derive(Debug)]
pub(crate) struct Update {
    /// What the pass converges to: the target, or the last good release in a rollback.
    pub(crate) target: TargetState,
    /// Whether `target` is the last good release standing in for a failed one.
    pub(crate) rolling_back: bool,
    /// Whether `target` already is the last good release.
    pub(crate) is_good: bool,
    /// Services that get a new container (new, or their config changed).
    pub(crate) changed: BTreeSet<String>,
    /// Restart counts the health watch starts from: the current count of each service
    /// left alone, 0 for each one (re)started.
    pub(crate) baseline: HashMap<String, i64>,
    /// What to do, in order.
    pub(crate) steps: Vec<Step>,
}

/// One small, idempotent step of a pass.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Pull these images, skipping the ones the engine has.
    Pull(BTreeSet<String>),
    /// End the pass here if a newer target arrived (nothing has been killed yet).
    GiveWay,
    /// End the pass here, waiting for the lock, while a service of one of these apps
    /// holds an update lock. Comes before every kill unless the target is forced.
    CheckLocks(BTreeSet<u32>),
    /// Create the target's missing volumes and networks.
    EnsureVolumesNetworks,
    /// Kill and remove a container whose service (or app) is not in the target.
    Remove(Observed),
    /// `kill-then-download` / `delete-then-download`: kill and remove a running old
    /// container of `service` before its new image is pulled.
    KillBeforeDownload {
        /// The service.
        service: String,
        /// The old container.
        container: Observed,
        /// `delete-then-download` with another image: delete the old image too.
        remove_image: bool,
    },
    /// Wait until the services `service` depends on are started or healthy, as asked.
    WaitForDependencies(String),
    /// Create the container of `service` for `release`.
    Create {
        /// The service.
        service: String,
        /// The release it is created for.
        release: String,
        /// A `hand-over` follows: clear a stale `handover-complete` first.
        hand_over: bool,
    },
    /// Stop an old container of `service` before its replacement starts.
    Stop {
        /// The service.
        service: String,
        /// The old container.
        container: Observed,
    },
    /// Start `service`: `container`, or the one [`Step::Create`] made when `None`.
    Start {
        /// The service.
        service: String,
        /// An existing container to start.
        container: Option<String>,
    },
    /// Remove an old container of `service` that [`Step::Stop`] stopped, once its
    /// replacement runs.
    RemoveStopped {
        /// The service.
        service: String,
        /// The old container.
        container: Observed,
    },
    /// `hand-over`: the new container runs; wait for it to write `handover-complete` (or
    /// the timeout), then kill the old ones.
    HandOver {
        /// The service.
        service: String,
        /// The old containers.
        old: Vec<Observed>,
        /// From the service's label; `None` is the configured default.
        timeout: Option<Duration>,
    },
    /// Watch the release come up for the health window.
    Verify,
}

impl Step {
    /// Whether the step changes a container, and so is journalled as in flight first.
    pub(crate) fn journalled(&self) -> bool {
        matches!(
            self,
            Step::Remove(_)
                | Step::KillBeforeDownload { .. }
                | Step::Create { .. }
                | Step::Stop { .. }
                | Step::Start { .. }
                | Step::RemoveStopped { .. }
                | Step::HandOver { .. }
        )
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |items: Vec<String>| items.join(", ");
        match self {
            Step::Pull(images) => write!(f, "pull {}", join(images.iter().cloned().collect())),
            Step::GiveWay => f.write_str("give way to a newer target"),
            Step::CheckLocks(apps) => write!(
                f,
                "check the update locks of app {}",
                join(apps.iter().map(u32::to_string).collect())
            ),
            Step::EnsureVolumesNetworks => f.write_str("create volumes and networks"),
            Step::Remove(c) => write!(f, "remove {} ({})", c.name, c.service),
            Step::KillBeforeDownload {
                container,
                remove_image,
                ..
            } => {
                write!(f, "kill {} before download", container.name)?;
                if *remove_image {
                    write!(f, " and delete {}", container.image)?;
                }
                Ok(())
            }
            Step::WaitForDependencies(s) => write!(f, "wait for the dependencies of {s}"),
            Step::Create {
                service, release, ..
            } => write!(f, "create {service} for release {release}"),
            Step::Stop { service, container } => {
                write!(f, "replace {service}: stop {}", container.name)
            }
            Step::Start { service, .. } => write!(f, "start {service}"),
            Step::RemoveStopped { service, container } => {
                write!(f, "replace {service}: remove {}", container.name)
            }
            Step::HandOver { service, .. } => write!(f, "hand over {service}"),
            Step::Verify => f.write_str("watch the release come up"),
        }
    }
}

/// Plans a pass: `journal` says what should run (its [`Journal::effective`] target, which
/// is the last good release after a failure), `observed` is every container labelled as
/// ours, of any app.
///
/// Services whose config hash did not change are never touched, whatever the release id.
pub(crate) fn plan(journal: &Journal, observed: &[Observed]) -> Plan {
    let Some((target, rolling_back)) = journal.effective() else {
        return Plan::NoTarget;
    };
    let app = target.app_id;
    // A rollback overrides update locks, as a forced target does.
    let force = journal.force || rolling_back;
    let is_good = journal.last_good.as_ref() == Some(target);

    if !rolling_back
        && journal
            .failed
            .as_ref()
            .is_some_and(|f| f.release == target.release)
    {
        return Plan::StayFailed {
            target: target.clone(),
            reason: journal.failed.as_ref().map(|f| f.reason.clone()),
        };
    }

    let (ours, others): (Vec<&Observed>, Vec<&Observed>) =
        observed.iter().partition(|c| c.app_id == app);
    // Containers of other apps this agent ran before (an app change).
    let mut removals: Vec<Observed> = others
        .into_iter()
        .filter(|c| journal.known_apps.contains(&c.app_id))
        .cloned()
        .collect();

    let mut services: BTreeMap<&str, Service<'_>> = BTreeMap::new();
    for (name, spec) in &target.services {
        let hash = spec.config_hash();
        let mut s = Service {
            spec,
            current: None,
            stale: Vec::new(),
        };
        for c in ours.iter().copied().filter(|c| &c.service == name) {
            if c.hash == hash && s.current.is_none() {
                s.current = Some(c);
            } else {
                s.stale.push(c);
            }
        }
        services.insert(name, s);
    }
    removals.extend(
        ours.iter()
            .filter(|c| !target.services.contains_key(&c.service))
            .map(|c| (*c).clone()),
    );

    let changed: BTreeSet<String> = services
        .iter()
        .filter(|(_, s)| s.current.is_none() || !s.stale.is_empty())
        .map(|(n, _)| n.to_string())
        .collect();
    let to_start: BTreeSet<String> = services
        .iter()
        .filter(|(n, s)| {
            s.current.is_some_and(|c| {
                c.state == ContainerStateStatusEnum::CREATED
                    || (!is_good && !c.is_running() && !journal.stopped.contains(**n))
            })
        })
        .map(|(n, _)| n.to_string())
        .collect();

    if changed.is_empty() && removals.is_empty() && to_start.is_empty() && is_good {
        return Plan::Converged {
            target: target.clone(),
        };
    }

    let mut steps = Vec::new();

    // 1. Downloads that need no kill first: the old containers keep serving meanwhile.
    let early: BTreeSet<String> = changed
        .iter()
        .map(|n| &services[n.as_str()])
        .filter(|s| s.current.is_none() && !s.kill_first())
        .map(|s| s.spec.image.clone())
        .collect();
    if !early.is_empty() {
        steps.push(Step::Pull(early));
    }
    steps.push(Step::GiveWay);

    // 2. Locks, before anything is killed: the target app's, and those of any other app
    // whose containers go.
    let kills_needed = !removals.is_empty()
        || changed
            .iter()
            .any(|n| services[n.as_str()].stale.iter().any(|c| c.is_running()));
    if kills_needed && !force {
        let apps = std::iter::once(app)
            .chain(removals.iter().map(|c| c.app_id))
            .collect();
        steps.push(Step::CheckLocks(apps));
    }

    // 3. Removals, then kill-first services, then their downloads.
    steps.push(Step::EnsureVolumesNetworks);
    steps.extend(removals.into_iter().map(Step::Remove));
    let mut late: BTreeSet<String> = BTreeSet::new();
    for n in &changed {
        let s = services.get_mut(n.as_str()).expect("planned");
        if !s.kill_first() {
            continue;
        }
        for c in std::mem::take(&mut s.stale) {
            steps.push(Step::KillBeforeDownload {
                service: n.clone(),
                remove_image: s.spec.update_strategy() == "delete-then-download"
                    && c.image != s.spec.image,
                container: c.clone(),
            });
        }
        if s.current.is_none() {
            late.insert(s.spec.image.clone());
        }
    }
    if !late.is_empty() {
        steps.push(Step::Pull(late));
    }

    // 4. Services in dependency order.
    let mut baseline: HashMap<String, i64> = HashMap::new();
    for name in topo_order(target) {
        let s = services.get_mut(name.as_str()).expect("planned");
        let needs_new = s.current.is_none();
        let needs_start = to_start.contains(&name) || needs_new;
        if !needs_new && !needs_start && s.stale.is_empty() {
            if let Some(c) = s.current {
                baseline.insert(name, c.restart_count);
            }
            continue;
        }
        let stopped = journal.stopped.contains(&name);
        if stopped && !needs_new {
            continue;
        }
        steps.push(Step::WaitForDependencies(name.clone()));
        let hand_over = s.spec.update_strategy() == "hand-over"
            && needs_new
            && s.stale.iter().any(|c| c.is_running());
        if needs_new {
            steps.push(Step::Create {
                service: name.clone(),
                release: target.release.clone(),
                hand_over,
            });
        }
        // The new container is created before the old one is stopped (creating binds no
        // ports) and the old one is removed after the new one started, so the downtime
        // is only stop + start. A crash in between leaves a stopped stale container,
        // which the next pass removes.
        let replaced: Vec<Observed> = if hand_over {
            Vec::new()
        } else {
            std::mem::take(&mut s.stale).into_iter().cloned().collect()
        };
        for c in &replaced {
            steps.push(Step::Stop {
                service: name.clone(),
                container: c.clone(),
            });
        }
        if !stopped {
            steps.push(Step::Start {
                service: name.clone(),
                container: s.current.map(|c| c.id.clone()),
            });
        }
        for c in replaced {
            steps.push(Step::RemoveStopped {
                service: name.clone(),
                container: c,
            });
        }
        baseline.insert(name.clone(), 0);
        if hand_over {
            steps.push(Step::HandOver {
                service: name.clone(),
                old: std::mem::take(&mut s.stale).into_iter().cloned().collect(),
                timeout: s
                    .spec
                    .labels
                    .get(LABEL_HANDOVER_TIMEOUT)
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_millis),
            });
        }
    }

    // 5. Watch the release come up.
    steps.push(Step::Verify);
    Plan::Update(Update {
        target: target.clone(),
        rolling_back,
        is_good,
        changed,
        baseline,
        steps,
    })
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

/// What to do after `target` did not come up.
#[derive(Debug, PartialEq)]
pub(crate) enum AfterFailure {
    /// Go back to this last good release (once).
    RollBack(TargetState),
    /// There is no earlier good release: stay failed.
    GiveUp,
    /// The rollback itself failed: the old release is not good any more, so there is
    /// nothing to go back to and no loop.
    RollbackFailed,
}

/// The rollback choice when `target` failed (`rolling_back`: it was itself a rollback).
pub(crate) fn after_failure(
    journal: &Journal,
    target: &TargetState,
    rolling_back: bool,
) -> AfterFailure {
    if rolling_back {
        return AfterFailure::RollbackFailed;
    }
    match journal
        .last_good
        .clone()
        .filter(|g| g.release != target.release)
    {
        Some(good) => AfterFailure::RollBack(good),
        None => AfterFailure::GiveUp,
    }
}

/// One target service against its containers.
struct Service<'a> {
    spec: &'a ServiceSpec,
    /// The container made from this exact spec, if any.
    current: Option<&'a Observed>,
    /// Containers of this service made from another spec (or duplicates).
    stale: Vec<&'a Observed>,
}

impl Service<'_> {
    /// Whether the old container must go before the new image is pulled.
    fn kill_first(&self) -> bool {
        matches!(
            self.spec.update_strategy(),
            "kill-then-download" | "delete-then-download"
        ) && self.stale.iter().any(|c| c.is_running())
    }
}

#[cfg(test)]
mod tests;
