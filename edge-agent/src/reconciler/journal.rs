//! The reconciler's durable state on disk: `<data_dir>/reconciler/journal.json`, replaced
//! whole with write-then-rename ([`certs::write_atomic`]) on every change, so a power cut
//! leaves either the old or the new journal, never half of one. The format is
//! [`protocol::journal`]'s.

use std::path::{Path, PathBuf};

pub use protocol::journal::{Failure, Journal};

use super::ReconcilerError;

/// The journal's file: where it is, reading it and writing it.
pub trait JournalFile: Sized {
    /// The journal file under `data_dir`.
    fn path(data_dir: &Path) -> PathBuf;
    /// Loads the journal; a missing file is an empty journal.
    fn load(data_dir: &Path) -> Result<Self, ReconcilerError>;
    /// Writes the journal durably.
    fn save(&self, data_dir: &Path) -> Result<(), ReconcilerError>;
}

impl JournalFile for Journal {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("reconciler").join("journal.json")
    }

    fn load(data_dir: &Path) -> Result<Journal, ReconcilerError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => Journal::from_json(&bytes)
                .map_err(|source| ReconcilerError::JournalFormat { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(source) => Err(ReconcilerError::Journal { path, source }),
        }
    }

    fn save(&self, data_dir: &Path) -> Result<(), ReconcilerError> {
        let path = Self::path(data_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ReconcilerError::Journal {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let bytes = self
            .to_json()
            .map_err(|source| ReconcilerError::JournalFormat {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use compose::{parse_compose, target_state};

    fn t(release: &str, compose: &str) -> protocol::release::TargetState {
        target_state(1, "a", release, &parse_compose(compose).unwrap(), &[], &[])
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
