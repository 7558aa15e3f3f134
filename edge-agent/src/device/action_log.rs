//! Executed action ids and their results, so an action never runs twice.

use std::path::PathBuf;

use serde_json::Value;

/// An action's recorded outcome: `(ok, detail)`.
pub type ActionOutcome = (bool, Value);

/// Executed action ids and their results, persisted in the data dir so that an action is
/// never executed twice, across reconnects and agent restarts.
pub struct ActionLog {
    path: PathBuf,
    entries: std::sync::Mutex<Vec<(String, Option<ActionOutcome>)>>,
}

/// How many executed ids are remembered (oldest forgotten first). The gateway expires
/// actions long before this many accumulate.
const ACTION_LOG_LEN: usize = 4096;

impl ActionLog {
    /// Loads `data_dir/actions.json` (missing = empty).
    pub fn load(data_dir: &std::path::Path) -> Self {
        let path = data_dir.join("actions.json");
        let entries = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<(String, Option<ActionOutcome>)>>(&t).ok())
            .unwrap_or_default();
        Self {
            path,
            entries: std::sync::Mutex::new(entries),
        }
    }

    /// `None` if `id` was never seen; `Some(None)` if it was started but its result was
    /// not recorded (the agent died or the device rebooted mid-action); `Some(Some(r))`
    /// with the recorded result.
    pub fn lookup(&self, id: &str) -> Option<Option<ActionOutcome>> {
        let e = self.entries.lock().expect("action log");
        e.iter().find(|(i, _)| i == id).map(|(_, r)| r.clone())
    }

    /// Records that `id` starts now (persisted before anything runs) or finished with `result`.
    pub fn record(&self, id: &str, result: Option<ActionOutcome>) -> std::io::Result<()> {
        // The file is written under the lock so two writers never interleave (sync IO,
        // no await while held).
        let mut e = self.entries.lock().expect("action log");
        match e.iter_mut().find(|(i, _)| i == id) {
            Some(entry) => entry.1 = result,
            None => e.push((id.to_string(), result)),
        }
        let excess = e.len().saturating_sub(ACTION_LOG_LEN);
        e.drain(..excess);
        let snapshot = serde_json::to_vec(&*e).expect("log serializes");
        crate::provision::write_private(&self.path, &snapshot)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn action_log_survives_a_restart_and_remembers_interrupted_actions() {
        let dir = tempfile::tempdir().unwrap();
        let log = ActionLog::load(dir.path());
        assert_eq!(log.lookup("a1"), None);
        log.record("a1", None).unwrap();
        log.record("a2", None).unwrap();
        log.record("a2", Some((true, json!("done")))).unwrap();
        // A new process reads the same file.
        let again = ActionLog::load(dir.path());
        assert_eq!(
            again.lookup("a1"),
            Some(None),
            "started, result never recorded"
        );
        assert_eq!(again.lookup("a2"), Some(Some((true, json!("done")))));
        assert_eq!(again.lookup("a3"), None);
    }
}
