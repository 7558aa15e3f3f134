//! balena's update-lock convention, read from the host side.
//!
//! Every service gets a lock directory on the host, `<root>/<app_id>/<service_name>/`,
//! bind-mounted into its container at `/tmp/balena` (and the legacy `/tmp/resin`). A
//! service takes the update lock by creating `updates.lock` there (legacy name
//! `resin-updates.lock`), and may also hold an `flock(2)` on that file while it is in a
//! critical section. This module only *reads* that state; deciding what a lock blocks,
//! and honouring `force`, is the caller's business.
//!
//! The rules follow balena's "Update locks" documentation
//! (<https://docs.balena.io/learn/deploy/release-strategy/update-locking/>):
//!
//! - the lock is held while the file **exists**, whoever created it and however (a file
//!   left behind by `flock(1)`, which never deletes it, still counts);
//! - an `flock` held on the file is reported as well: balenaOS uses it to hold off
//!   host OS update reboots, so it tells "a process is in its critical section right now"
//!   apart from "a lock file is lying there";
//! - locks are per service, but **a lock in one service blocks killing any service of
//!   that app** ([`Locks::app_locked`]).
//!
//! Nothing here blocks or sleeps: every check is a few `stat`/`open` calls, cheap enough
//! to run on each update attempt (from async code, through `spawn_blocking` if the lock
//! directory may sit on slow storage).

use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// File names that hold the lock, current first.
pub const LOCK_FILE_NAMES: [&str; 2] = ["updates.lock", "resin-updates.lock"];

/// The update locks of every service under one root directory.
#[derive(Debug, Clone)]
pub struct Locks {
    root: PathBuf,
}

/// A lock found in a service's lock directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLock {
    /// The lock file that exists.
    pub path: PathBuf,
    /// Whether another open file description holds an `flock` on it right now (a
    /// process is inside its critical section), as opposed to the file merely existing.
    pub flock_held: bool,
}

impl Locks {
    /// Locks under `root`, the host directory whose `<app_id>/<service_name>/`
    /// subdirectories are bind-mounted into the containers.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host directory to bind-mount at `/tmp/balena` in `service`'s container.
    pub fn service_dir(&self, app_id: u32, service: &str) -> PathBuf {
        self.root.join(app_id.to_string()).join(service)
    }

    /// The lock `service` of `app_id` holds, if any. A missing directory means no lock.
    pub fn service_lock(&self, app_id: u32, service: &str) -> io::Result<Option<ServiceLock>> {
        lock_in(&self.service_dir(app_id, service))
    }

    /// Names of the services of `app_id` that hold a lock, sorted. A missing app
    /// directory means none.
    pub fn locked_services(&self, app_id: u32) -> io::Result<Vec<String>> {
        let app_dir = self.root.join(app_id.to_string());
        let entries = match std::fs::read_dir(&app_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut locked = Vec::new();
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            if lock_in(&entry.path())?.is_some() {
                // Lossy on purpose: a lock in an oddly named directory must still block.
                locked.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        locked.sort();
        Ok(locked)
    }

    /// Whether any service of `app_id` holds a lock, which blocks killing *every*
    /// service of that app.
    pub fn app_locked(&self, app_id: u32) -> io::Result<bool> {
        Ok(!self.locked_services(app_id)?.is_empty())
    }
}

/// The lock held in one service directory, checking every lock file name.
fn lock_in(dir: &Path) -> io::Result<Option<ServiceLock>> {
    for name in LOCK_FILE_NAMES {
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                // Unreadable but present (e.g. a 0000 file made by another user) is
                // still a lock file that exists; only an unexplained failure is an error.
                if path.try_exists()? {
                    return Ok(Some(ServiceLock {
                        path,
                        flock_held: false,
                    }));
                }
                return Err(e);
            }
        };
        // A shared probe, not an exclusive one: it still fails against an exclusive
        // holder, and it never makes a service's own `flock -s` fail for the instant we
        // hold it. Dropping `file` releases the probe.
        let flock_held = match file.try_lock_shared() {
            Ok(()) => false,
            Err(TryLockError::WouldBlock) => true,
            Err(TryLockError::Error(e)) => return Err(e),
        };
        return Ok(Some(ServiceLock { path, flock_held }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_dir(locks: &Locks, app: u32, service: &str) -> PathBuf {
        let dir = locks.service_dir(app, service);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_root_or_app_means_unlocked() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = Locks::new(tmp.path().join("does-not-exist"));
        assert!(locks.locked_services(1).unwrap().is_empty());
        assert!(!locks.app_locked(1).unwrap());
        assert_eq!(locks.service_lock(1, "main").unwrap(), None);
    }

    #[test]
    fn empty_service_dirs_are_unlocked() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = Locks::new(tmp.path());
        service_dir(&locks, 7, "main");
        service_dir(&locks, 7, "db");
        assert!(locks.locked_services(7).unwrap().is_empty());
        assert!(!locks.app_locked(7).unwrap());
    }

    #[test]
    fn lock_file_locks_its_service_and_blocks_the_whole_app() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = Locks::new(tmp.path());
        let main = service_dir(&locks, 7, "main");
        service_dir(&locks, 7, "db");
        File::create(main.join("updates.lock")).unwrap();

        assert_eq!(locks.locked_services(7).unwrap(), vec!["main".to_string()]);
        assert!(locks.app_locked(7).unwrap());
        let lock = locks.service_lock(7, "main").unwrap().unwrap();
        assert_eq!(lock.path, main.join("updates.lock"));
        assert!(!lock.flock_held, "nobody holds an flock on a plain file");
        assert_eq!(locks.service_lock(7, "db").unwrap(), None);
        // Another app is not affected.
        service_dir(&locks, 8, "main");
        assert!(!locks.app_locked(8).unwrap());
    }

    #[test]
    fn legacy_lock_file_name_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = Locks::new(tmp.path());
        let dir = service_dir(&locks, 3, "legacy");
        File::create(dir.join("resin-updates.lock")).unwrap();
        assert_eq!(
            locks.locked_services(3).unwrap(),
            vec!["legacy".to_string()]
        );
    }

    #[test]
    fn removing_the_file_releases_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = Locks::new(tmp.path());
        let dir = service_dir(&locks, 3, "main");
        File::create(dir.join("updates.lock")).unwrap();
        assert!(locks.app_locked(3).unwrap());
        std::fs::remove_file(dir.join("updates.lock")).unwrap();
        assert!(!locks.app_locked(3).unwrap());
    }

    #[test]
    fn held_flock_is_reported_and_released_with_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = Locks::new(tmp.path());
        let dir = service_dir(&locks, 9, "worker");
        service_dir(&locks, 9, "web");
        // The holder creates the file and flocks it, as `flock /tmp/balena/updates.lock`
        // does inside the container.
        let holder = File::create(dir.join("updates.lock")).unwrap();
        holder.lock().unwrap();

        let lock = locks.service_lock(9, "worker").unwrap().unwrap();
        assert!(lock.flock_held);
        assert_eq!(
            locks.locked_services(9).unwrap(),
            vec!["worker".to_string()]
        );
        assert!(locks.app_locked(9).unwrap());

        // The holder leaves its critical section but, like flock(1), leaves the file:
        // the lock file still exists, so updates stay locked; only the flock is gone.
        drop(holder);
        let lock = locks.service_lock(9, "worker").unwrap().unwrap();
        assert!(!lock.flock_held);
        assert!(locks.app_locked(9).unwrap());
    }

    #[test]
    fn probing_does_not_disturb_a_shared_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = Locks::new(tmp.path());
        let dir = service_dir(&locks, 4, "main");
        let holder = File::create(dir.join("updates.lock")).unwrap();
        holder.lock_shared().unwrap();
        // A shared holder is not an exclusive critical section, but the file exists.
        let lock = locks.service_lock(4, "main").unwrap().unwrap();
        assert!(!lock.flock_held);
        // The holder still holds its lock after the probe: an exclusive attempt fails.
        let other = File::open(dir.join("updates.lock")).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
    }

    #[test]
    fn plain_files_in_the_app_dir_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = Locks::new(tmp.path());
        std::fs::create_dir_all(tmp.path().join("5")).unwrap();
        File::create(tmp.path().join("5").join("updates.lock")).unwrap();
        assert!(!locks.app_locked(5).unwrap());
    }
}
