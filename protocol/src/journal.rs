//! The reconciler's durable state, as the agent keeps it in
//! `<data_dir>/reconciler/journal.json`: its format and how it is read.
//!
//! This is not part of the wire protocol; it lives here because it is pure decoding of a
//! file that a power cut or a failing SD card can damage, and this crate is what the fuzz
//! build can use without the agent. The agent's `reconciler::journal` owns the file and
//! its IO.
//!
//! Correctness after a crash does not depend on `in_flight`: the plan is recomputed from
//! the engine, and every step is idempotent (deterministic container names). The
//! in-flight step is kept so the agent can say what it was doing when it died.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::release::TargetState;

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
    /// Reads a journal file's bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Journal, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The bytes of a journal file.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec_pretty(self)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(release: &str) -> TargetState {
        TargetState {
            app_id: 1,
            app_name: "a".into(),
            release: release.into(),
            services: Default::default(),
            volumes: Default::default(),
            networks: Default::default(),
        }
    }

    #[test]
    fn a_failed_target_runs_the_last_good_release() {
        let good = t("good");
        let bad = t("bad");
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
    fn a_journal_survives_its_own_format() {
        let j = Journal {
            target: Some(t("r1")),
            in_flight: Some("start a".into()),
            ..Default::default()
        };
        assert_eq!(Journal::from_json(&j.to_json().unwrap()).unwrap(), j);
    }
}
