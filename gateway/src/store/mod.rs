//! Persistence: one SQLite file in the data dir (the embedded default).
//!
//! All SQL lives here, written in the subset SQLite and PostgreSQL share, so that the
//! cluster backend can run the same queries through sqlx later. Schema changes are
//! numbered migrations applied in order at open time.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::DeviceUuid;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A device with this uuid already exists.
    #[error("device {0} already exists")]
    DeviceExists(DeviceUuid),
    /// No fleet has this name.
    #[error("fleet {0:?} does not exist")]
    NoSuchFleet(String),
    /// A fleet with this name already exists.
    #[error("fleet {0:?} already exists")]
    FleetExists(String),
    /// The fleet still has (this many) devices.
    #[error(
        "fleet {0:?} still has {1} device(s); move them to another fleet or delete them first"
    )]
    FleetNotEmpty(String, i64),
    /// A stored value is corrupt.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database file exists but is empty (0 bytes): a failed copy or restore. Opening
    /// it would start an empty gateway that has forgotten every device.
    #[error("{} is empty (0 bytes); restore it from a backup of the data dir", .0.display())]
    EmptyDatabase(std::path::PathBuf),
}

/// File name of the database in the data dir.
pub const DB_FILE: &str = "gateway.db";

/// Whether `data_dir/gateway.db` exists but holds nothing (0 bytes, and no write-ahead
/// log with content beside it): a database that was truncated or copied wrongly.
pub fn database_is_empty(data_dir: &Path) -> bool {
    let len = |name: &str| std::fs::metadata(data_dir.join(name)).map(|m| m.len());
    matches!(len(DB_FILE), Ok(0)) && !matches!(len(&format!("{DB_FILE}-wal")), Ok(n) if n > 0)
}

/// Numbered schema migrations, one file each in `store/migrations/`; never edit one that
/// has shipped, append a new one. Each file may hold several statements.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_devices.sql"),
    include_str!("migrations/0002_fleets_device_names_and_fleets_api_token.sql"),
    include_str!("migrations/0003_provisioning_keys_devices_registered_ahe.sql"),
    include_str!("migrations/0004_device_actions_with_an_offline_queue.sql"),
    include_str!("migrations/0005_reported_device_state_and_the_address_a.sql"),
    include_str!("migrations/0006_device_tags_environment_variables_per_fl.sql"),
    include_str!("migrations/0007_device_logs_and_per_device_the_highest_s.sql"),
    include_str!("migrations/0008_releases_a_fleet_or_a_device_may_be_pinn.sql"),
    include_str!("migrations/0009_facts_about_the_data_dir_itself_such_as.sql"),
];

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

mod actions;
mod audit;
#[cfg(test)]
mod concurrency_tests;
mod devices;
mod fleets;
mod keys;
mod logs;
mod releases;
mod tokens;

pub use actions::ActionRecord;
pub use audit::AuditRecord;
pub use devices::DeviceRecord;
pub use fleets::{FleetDeletion, FleetRecord};
pub use keys::{KeyRecord, Refusal};
pub use logs::{LogQuery, StoredLine};
pub use releases::{ReleaseRecord, TargetSource};
pub use tokens::TokenRecord;

/// Current time as milliseconds since the Unix epoch (log timestamps).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Current time as unix seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

impl Store {
    /// Opens (creating if needed) `data_dir/gateway.db` and applies migrations.
    ///
    /// Several processes may open the same file (e.g. `gateway device add` beside a
    /// running `gateway serve`): WAL mode and a busy timeout make that safe.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        // Creating the file, switching it to WAL and migrating take locks SQLite's busy
        // handler does not wait for: two processes opening a fresh data dir at once (say
        // `serve` and `device add`) could see "database is locked". An advisory lock makes
        // opens take turns; it is taken on a blocking thread so waiting never stalls the
        // runtime, and released once the schema is current.
        let lock_path = data_dir.join(".db.lock");
        let _open_lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            f.lock()?;
            Ok(f)
        })
        .await
        .map_err(|e| StoreError::Db(sqlx::Error::Io(std::io::Error::other(e))))?
        .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        let path = data_dir.join(DB_FILE);
        // Checked under the open lock: an open that is creating the file has finished
        // (and written the schema) before the next one looks.
        if database_is_empty(data_dir) {
            return Err(StoreError::EmptyDatabase(path));
        }
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// The schema version after migrations.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    /// Opens a transaction that writes.
    ///
    /// Every transaction that writes starts with this. `BEGIN IMMEDIATE` takes SQLite's
    /// write lock at `BEGIN`, where the busy handler waits for it (up to `busy_timeout`).
    /// A deferred `BEGIN` would take it at the first write instead; in WAL mode a
    /// transaction that has read by then fails at once with `database is locked`
    /// (SQLITE_BUSY, or BUSY_SNAPSHOT 517) if another connection wrote in between,
    /// because its snapshot is stale and waiting cannot help. That dropped log streams
    /// during reconnect storms. (The PostgreSQL backend will open its own kind here.)
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The fingerprint of the CA this database was created with, if recorded.
    pub async fn ca_fingerprint(&self) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query("SELECT value FROM gateway_meta WHERE key = 'ca_fingerprint'")
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?,
        )
    }

    /// Records the fingerprint of the data dir's CA, unless one is recorded already.
    /// Returns the recorded fingerprint (which may be another one).
    pub async fn record_ca_fingerprint(&self, fingerprint: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO gateway_meta (key, value) VALUES ('ca_fingerprint', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(fingerprint)
        .execute(&self.pool)
        .await?;
        Ok(self
            .ca_fingerprint()
            .await?
            .unwrap_or_else(|| fingerprint.to_string()))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // IMMEDIATE: take the write lock up front, so two processes opening a fresh data
        // dir at once (`serve` and `device add`) run the migrations one after the other
        // instead of both reading "version 0" and one failing on the upgrade to a write.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            if version > current {
                sqlx::raw_sql(sql).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Closes the pool, flushing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_opens_of_a_fresh_dir_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let opens = (0..6).map(|_| Store::open(dir.path()));
        let stores = futures_util::future::join_all(opens).await;
        for s in stores {
            let s = s.expect("open raced another open and failed");
            assert_eq!(s.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
        }
    }

    #[tokio::test]
    async fn devices_round_trip_and_duplicates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let uuid = DeviceUuid::from_bytes([1; 16]);
        store.add_device(uuid, true).await.unwrap();
        assert!(matches!(
            store.add_device(uuid, false).await,
            Err(StoreError::DeviceExists(_))
        ));
        let d = store.device(uuid).await.unwrap().unwrap();
        assert!(d.public_url && !d.online && !d.revoked);
        store.set_online(uuid, true).await.unwrap();
        assert!(store.device(uuid).await.unwrap().unwrap().online);
        store.mark_all_offline().await.unwrap();
        assert!(!store.devices().await.unwrap()[0].online);
    }
}
