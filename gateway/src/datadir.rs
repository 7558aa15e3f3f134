//! The gateway's data dir: what must be in it, and who may create it.
//!
//! A data dir holds the fleet CA (`ca.pem`, `ca.key`), the tunnel certificate
//! (`tunnel.pem`, `tunnel.key`) and the database (`gateway.db`). Every enrolled device
//! trusts that CA and nothing else, so a lost `ca.key` cuts the fleet off for good. Hence:
//!
//! * only `gateway serve` creates a data dir, and only when none of those files exists;
//! * a dir with some of them missing, or an empty database, is refused with the list of
//!   what is missing and present: the fix is a restore from backup, never a new CA;
//! * the database records the CA's fingerprint when the dir is created, and every open
//!   checks `ca.pem` against it;
//! * key files are created exclusively and never overwritten;
//! * one `serve` at a time holds `serve.lock`; the offline commands (`device add`,
//!   `token create`, `device list`) work beside it but never create anything.
//!
//! With `--database postgres://…` the database is that PostgreSQL database instead of
//! `gateway.db`, shared by every gateway node; the data dir keeps the CA and the tunnel
//! certificate. Every node of one cluster holds **the same** `ca.pem` and `ca.key`
//! (copied from the first node; see `docs/cluster.md`): the first node to start on an
//! empty database creates the CA and records its fingerprint there, and a node whose
//! data dir has no CA, or another one, refuses to start, saying which fingerprint the
//! cluster's CA has.

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use certs::{Ca, CertError, ServerIdentity};
use tracing::{info, warn};

use crate::store::{Store, StoreError, DB_FILE};

/// The lock file `gateway serve` holds for its lifetime.
pub const SERVE_LOCK_FILE: &str = "serve.lock";
/// Held by `serve` while it creates a new data dir; offline commands wait for it.
const CREATE_LOCK_FILE: &str = ".create.lock";

/// The secret behind the tunnel endpoint's QUIC stateless resets. Kept across restarts so
/// that a device whose connection the previous run held learns at its next packet that
/// the connection is gone, instead of waiting out its idle timeout. Not part of
/// `FILES`: it protects nothing, and a lost one is simply made again.
pub const RESET_KEY_FILE: &str = "reset.key";

/// The files of a data dir, in the order they are created.
const FILES: [&str; 5] = [
    certs::CA_KEY_FILE,
    certs::CA_CERT_FILE,
    certs::TUNNEL_KEY_FILE,
    certs::TUNNEL_CERT_FILE,
    DB_FILE,
];

/// Where the database is: the data dir's own SQLite file, or a PostgreSQL URL.
fn database_files(database: Option<&str>) -> &'static [&'static str] {
    match database {
        None => &FILES,
        // The database is elsewhere; the dir holds the certificates only.
        Some(_) => &FILES[..4],
    }
}

/// A PostgreSQL URL without its password, for messages: `host:port/database`.
pub fn redacted_url(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('?').next().unwrap_or(rest).to_string()
}

/// Why a data dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// An offline command was pointed at a dir that holds no gateway.
    #[error(
        "no gateway data dir at {}; start `gateway serve --data-dir {}` once to create it",
        .0.display(),
        .0.display()
    )]
    NotFound(PathBuf),
    /// Some of the files are missing.
    #[error(
        "the data dir {} is incomplete: missing {}; present {}. Refusing to start: a new CA \
         would cut off every enrolled device. Restore the missing files from a backup of \
         this data dir (if it never served any device, remove it and start again)",
        path.display(),
        missing.join(", "),
        if present.is_empty() { "nothing".to_string() } else { present.join(", ") }
    )]
    Incomplete {
        /// The data dir.
        path: PathBuf,
        /// The files that are not there.
        missing: Vec<&'static str>,
        /// The files that are.
        present: Vec<&'static str>,
    },
    /// `gateway.db` is there but empty.
    #[error(
        "{} is empty (0 bytes): it holds no devices, tokens or keys. Refusing to start as an \
         empty gateway; restore it from a backup of the data dir",
        .0.display()
    )]
    EmptyDatabase(PathBuf),
    /// A node joins a cluster database without the cluster's CA in its data dir.
    #[error(
        "the database {database} already belongs to a fleet CA (fingerprint {recorded}), but \
         {} holds no CA. Every gateway node of one cluster uses the same CA: copy ca.pem and \
         ca.key from the data dir of a running node into {}, then start again",
        path.display(),
        path.display()
    )]
    JoinWithoutCa {
        /// The data dir.
        path: PathBuf,
        /// The database, without its password.
        database: String,
        /// The CA fingerprint the database records.
        recorded: String,
    },
    /// `ca.pem` is not the CA the database was created with.
    #[error(
        "this data dir's CA does not match its database: {} has fingerprint {found}, but \
         {database} was created with the CA {recorded}. Restore the matching ca.pem and \
         ca.key from a backup (a gateway node joining a cluster needs the cluster's CA: copy \
         both files from a running node)",
        path.join(certs::CA_CERT_FILE).display()
    )]
    CaMismatch {
        /// The data dir.
        path: PathBuf,
        /// The database: `gateway.db`'s path, or a PostgreSQL URL without its password.
        database: String,
        /// Fingerprint of `ca.pem`.
        found: String,
        /// Fingerprint recorded in the database.
        recorded: String,
    },
    /// `tunnel.pem` was not issued by the data dir's CA (or has expired).
    #[error(
        "{} is not a valid tunnel certificate of this data dir's CA ({reason}); devices \
         would refuse it. Restore tunnel.pem and tunnel.key from a backup, or remove both to \
         have a new one issued",
        path.display()
    )]
    ForeignTunnelCert {
        /// The certificate file.
        path: PathBuf,
        /// Why it does not verify.
        reason: String,
    },
    /// Another `gateway serve` holds the data dir.
    #[error(
        "another `gateway serve`{} is already using the data dir {}; stop it first (two \
         gateways on one data dir would both accept the same devices)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        path.display()
    )]
    Locked {
        /// The data dir.
        path: PathBuf,
        /// The pid written by the holder, if readable.
        pid: Option<u32>,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or dir.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA or tunnel certificate could not be loaded or created.
    #[error("certificates: {0}")]
    Certs(#[from] CertError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Held by `gateway serve` for its lifetime: an exclusive lock on `serve.lock`.
#[derive(Debug)]
pub struct ServeLock {
    _file: fs::File,
}

/// What `serve` works from.
pub(crate) struct Opened {
    pub(crate) ca: Ca,
    pub(crate) reset_key: Vec<u8>,
    pub(crate) server: ServerIdentity,
    pub(crate) store: Store,
    pub(crate) lock: ServeLock,
}

/// What is on disk.
struct Survey {
    present: Vec<&'static str>,
    missing: Vec<&'static str>,
}

impl Survey {
    fn of(dir: &Path, database: Option<&str>) -> Self {
        let (present, missing) = database_files(database)
            .iter()
            .partition(|f| fs::symlink_metadata(dir.join(f)).is_ok());
        Self { present, missing }
    }

    fn has(&self, file: &str) -> bool {
        self.present.contains(&file)
    }

    fn incomplete(&self, dir: &Path) -> DataDirError {
        DataDirError::Incomplete {
            path: dir.to_path_buf(),
            missing: self.missing.clone(),
            present: self.present.clone(),
        }
    }
}

/// Opens the data dir for `gateway serve`: takes the serve lock, creates a new data dir
/// if there is none, and refuses a partial or mismatched one. `database` is a PostgreSQL
/// URL, or `None` for the data dir's SQLite file.
pub(crate) async fn open_for_serve(
    dir: &Path,
    database: Option<&str>,
) -> Result<Opened, DataDirError> {
    fs::create_dir_all(dir).map_err(|source| DataDirError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // First, so that two `serve` processes starting on a fresh dir cannot both create it.
    let lock = lock_for_serve(dir)?;
    // Held while a new data dir is being created (the database first, then the CA), so
    // that an offline command looking at the dir meanwhile waits for the whole of it
    // instead of seeing a partial dir.
    let creating = creation_lock(dir).await?;
    let survey = Survey::of(dir, database);
    if survey.present.is_empty() {
        let store = Store::open_database(database, dir).await?;
        if let (Some(url), Some(recorded)) = (database, store.ca_fingerprint().await?) {
            store.close().await;
            return Err(DataDirError::JoinWithoutCa {
                path: dir.to_path_buf(),
                database: redacted_url(url),
                recorded,
            });
        }
        let ca = Ca::create_new(dir)?;
        let server = ca.create_server(dir)?;
        adopt_ca(&store, dir, &ca, database).await?;
        drop(creating);
        info!(
            data_dir = %dir.display(),
            ca_fingerprint = %ca.fingerprint(),
            "created a new data dir with a new fleet CA; back it up (see README)"
        );
        return Ok(Opened {
            reset_key: reset_key(dir)?,
            ca,
            server,
            store,
            lock,
        });
    }
    drop(creating);
    let ca = load_ca(dir, &survey, database)?;
    // The database before the tunnel certificate: a swapped CA is best told as such,
    // not as a tunnel certificate it did not sign.
    let store = open_store(dir, &ca, database).await?;
    let server = match (
        survey.has(certs::TUNNEL_CERT_FILE),
        survey.has(certs::TUNNEL_KEY_FILE),
    ) {
        (true, true) => {
            let server = Ca::load_server(dir)?;
            ca.verify_server(&server)
                .map_err(|e| DataDirError::ForeignTunnelCert {
                    path: dir.join(certs::TUNNEL_CERT_FILE),
                    reason: e.to_string(),
                })?;
            server
        }
        (false, false) => {
            // The tunnel certificate is derived from the CA: issuing a new one loses
            // nothing, devices trust the CA.
            warn!(data_dir = %dir.display(), "tunnel.pem and tunnel.key are missing; issuing new ones from the CA");
            ca.create_server(dir)?
        }
        _ => {
            store.close().await;
            return Err(survey.incomplete(dir));
        }
    };
    if store.ca_fingerprint().await?.is_none() {
        // A data dir from before the fingerprint was recorded: adopt its CA.
        adopt_ca(&store, dir, &ca, database).await?;
    }
    Ok(Opened {
        reset_key: reset_key(dir)?,
        ca,
        server,
        store,
        lock,
    })
}

/// Reads the stateless-reset key of `dir`, making a new one (mode 0600) when there is
/// none or it is unusable.
fn reset_key(dir: &Path) -> Result<Vec<u8>, DataDirError> {
    let path = dir.join(RESET_KEY_FILE);
    match fs::read(&path) {
        Ok(key) if key.len() == 32 => return Ok(key),
        Ok(_) => warn!(path = %path.display(), "reset.key is not 32 bytes; making a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(DataDirError::Io { path, source }),
    }
    let mut key = vec![0u8; 32];
    rand::fill(&mut key[..]);
    certs::write_atomic(&path, &key, true)?;
    Ok(key)
}

/// Opens an existing data dir for an offline command (`device add`, `token create`,
/// `device list`), beside a running `serve` or not. Creates nothing: a dir that is not a
/// gateway's is refused.
pub async fn open_existing(dir: &Path) -> Result<(Ca, Store), DataDirError> {
    open_existing_in(dir, None).await
}

/// [`open_existing`] with the database at `database` (a PostgreSQL URL) instead of the
/// data dir's SQLite file when given.
pub async fn open_existing_in(
    dir: &Path,
    database: Option<&str>,
) -> Result<(Ca, Store), DataDirError> {
    // Waits for a `serve` that is creating this dir right now. Only a dir whose serve
    // made the lock file has one: nothing is written into a dir that is not a gateway's.
    let creating = if dir.join(CREATE_LOCK_FILE).exists() {
        Some(creation_lock(dir).await?)
    } else {
        None
    };
    let survey = Survey::of(dir, database);
    if survey.present.is_empty() {
        return Err(DataDirError::NotFound(dir.to_path_buf()));
    }
    let ca = load_ca(dir, &survey, database)?;
    drop(creating);
    let store = open_store(dir, &ca, database).await?;
    Ok((ca, store))
}

/// Takes the data dir's creation lock (`.create.lock`, an flock), waiting on a blocking
/// thread while another process holds it.
async fn creation_lock(dir: &Path) -> Result<fs::File, DataDirError> {
    let path = dir.join(CREATE_LOCK_FILE);
    let p = path.clone();
    let locked = tokio::task::spawn_blocking(move || -> std::io::Result<fs::File> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)?;
        f.lock()?;
        Ok(f)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r);
    locked.map_err(|source| DataDirError::Io { path, source })
}

/// Loads the CA of a data dir that must hold the CA (and, on SQLite, the database).
fn load_ca(dir: &Path, survey: &Survey, database: Option<&str>) -> Result<Ca, DataDirError> {
    let db_ok = database.is_some() || survey.has(DB_FILE);
    if !(db_ok && survey.has(certs::CA_CERT_FILE) && survey.has(certs::CA_KEY_FILE)) {
        return Err(survey.incomplete(dir));
    }
    // An empty gateway.db is refused by Store::open, under the lock that makes it wait
    // for a `serve` that is creating the database this very moment.
    Ok(Ca::load(dir)?)
}

/// Records `ca` as the database's CA unless one is recorded already, and refuses the
/// one that lost: on PostgreSQL two nodes may start on an empty database at once, each
/// with a CA of its own, and only the first fingerprint recorded is the cluster's.
async fn adopt_ca(
    store: &Store,
    dir: &Path,
    ca: &Ca,
    database: Option<&str>,
) -> Result<(), DataDirError> {
    let recorded = store.record_ca_fingerprint(&ca.fingerprint()).await?;
    check_ca(store, dir, ca, database, recorded).await
}

/// `CaMismatch` (with the store closed) unless `recorded` is `ca`'s fingerprint.
async fn check_ca(
    store: &Store,
    dir: &Path,
    ca: &Ca,
    database: Option<&str>,
    recorded: String,
) -> Result<(), DataDirError> {
    if recorded == ca.fingerprint() {
        return Ok(());
    }
    store.close().await;
    Err(DataDirError::CaMismatch {
        path: dir.to_path_buf(),
        database: match database {
            Some(url) => redacted_url(url),
            None => dir.join(DB_FILE).display().to_string(),
        },
        found: ca.fingerprint(),
        recorded,
    })
}

/// Opens the database and checks it was created with `ca`.
async fn open_store(dir: &Path, ca: &Ca, database: Option<&str>) -> Result<Store, DataDirError> {
    let store = Store::open_database(database, dir)
        .await
        .map_err(|e| match e {
            StoreError::EmptyDatabase(p) => DataDirError::EmptyDatabase(p),
            other => other.into(),
        })?;
    if let Some(recorded) = store.ca_fingerprint().await? {
        check_ca(&store, dir, ca, database, recorded).await?;
    }
    Ok(store)
}

/// Takes the exclusive serve lock, writing this process's pid into the lock file.
fn lock_for_serve(dir: &Path) -> Result<ServeLock, DataDirError> {
    let path = dir.join(SERVE_LOCK_FILE);
    let io = |source| DataDirError::Io {
        path: path.clone(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            return Err(DataDirError::Locked {
                path: dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    // The pid is only for the error message of a second `serve`; the lock is the flock.
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    writeln!(f, "{}", std::process::id()).map_err(io)?;
    Ok(ServeLock { _file: f })
}
