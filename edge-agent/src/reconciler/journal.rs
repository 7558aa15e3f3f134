//! The reconciler's durable state: `<data_dir>/reconciler/journal.json`, replaced whole
//! with write-then-rename ([`certs::write_atomic`]) on every change, so a power cut leaves
//! either the old or the new journal, never half of one.
//!
//! Correctness after a crash does not depend on `in_flight`: the plan is recomputed from
//! the engine, and every step is idempotent (deterministic container names). The
//! in-flight step is kept so the agent can say what it was doing when it died.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use protocol::release::TargetState;
use serde::{Deserialize, Serialize};

/// A release that failed, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The release id that failed.
    pub release: String,
    /// Why, as reported.
    pub reason: String,
}

/// Everything the reconciler must remember across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// What the device should run.
    pub target: Option<TargetState>,
    /// Whether the target may override update locks.
    #[serde(default)]
    pub force: bool,
    /// Whether the target was pinned locally (bundle / local mode).
    #[serde(default)]
    pub pinned: bool,
    /// The last release whose services all came up healthy.
    pub last_good: Option<TargetState>,
    /// The last target that failed; it is not retried until a different target arrives.
    pub failed: Option<Failure>,
    /// The step being executed when the journal was last written.
    pub in_flight: Option<String>,
    /// Services stopped by an operator action; not started again until asked to or
    /// until a new target arrives.
    #[serde(default)]
    pub stopped: BTreeSet<String>,
    /// Every app id this agent has created containers for (to clean up after an app
    /// change without touching containers of other agents).
    #[serde(default)]
    pub known_apps: BTreeSet<u32>,
}

impl Journal {
    /// The journal file under `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("reconciler").join("journal.json")
    }

    /// Loads the journal; a missing file is an empty journal.
    pub fn load(data_dir: &Path) -> Result<Journal, String> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the journal durably.
    pub fn save(&self, data_dir: &Path) -> Result<(), String> {
        let path = Self::path(data_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        certs::write_atomic(&path, &bytes, false).map_err(|e| e.to_string())
    }

    /// The state the reconciler should converge to now: the target, unless it failed,
    /// in which case the last good release (a rollback).
    pub fn effective(&self) -> Option<(&TargetState, bool)> {
        let target = self.target.as_ref()?;
        match (&self.failed, &self.last_good) {
            (Some(f), Some(good)) if f.release == target.release && good.release != f.release => {
                Some((good, true))
            }
            _ => Some((target, false)),
        }
    }
}
