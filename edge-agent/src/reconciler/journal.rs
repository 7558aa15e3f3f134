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

use super::ReconcilerError;

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
    pub fn load(data_dir: &Path) -> Result<Journal, ReconcilerError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| ReconcilerError::JournalFormat { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(source) => Err(ReconcilerError::Journal { path, source }),
        }
    }

    /// Writes the journal durably.
    pub fn save(&self, data_dir: &Path) -> Result<(), ReconcilerError> {
        let path = Self::path(data_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ReconcilerError::Journal {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|source| ReconcilerError::JournalFormat {
                path: path.clone(),
                source,
            })?;
        certs::write_atomic(&path, &bytes, false).map_err(|e| match e {
            certs::CertError::Io { path, source } => ReconcilerError::Journal { path, source },
            // write_atomic only fails with Io; keep anything else readable anyway.
            other => ReconcilerError::Journal {
                path,
                source: std::io::Error::other(other),
            },
        })
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
    use compose::{parse_compose, target_state};

    fn t(release: &str, compose: &str) -> TargetState {
        target_state(1, "a", release, &parse_compose(compose).unwrap(), &[], &[])
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

    #[test]
    fn a_broken_journal_says_which_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path(dir.path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{not json").unwrap();
        let e = Journal::load(dir.path()).unwrap_err();
        assert!(matches!(e, ReconcilerError::JournalFormat { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("reconciler journal {}: ", path.display())),
            "{msg}"
        );
    }
}
