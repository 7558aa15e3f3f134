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
    /// A stored value is corrupt.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Numbered schema migrations; never edit one that has shipped, append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: devices.
    "CREATE TABLE devices (
        uuid TEXT PRIMARY KEY NOT NULL,
        public_url BOOLEAN NOT NULL DEFAULT FALSE,
        created_at BIGINT NOT NULL,
        last_seen BIGINT,
        online BOOLEAN NOT NULL DEFAULT FALSE,
        revoked BOOLEAN NOT NULL DEFAULT FALSE
    )",
];

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device uuid.
    pub uuid: DeviceUuid,
    /// Whether `http://<uuid>.<domain>/` is served.
    pub public_url: bool,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Last connect or disconnect, unix seconds.
    pub last_seen: Option<i64>,
    /// Whether a tunnel is up (as last recorded by a gateway).
    pub online: bool,
    /// Revoked devices are refused at the handshake.
    pub revoked: bool,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
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
        let path = data_dir.join("gateway.db");
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
                sqlx::query(sql).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Registers a new device.
    pub async fn add_device(&self, uuid: DeviceUuid, public_url: bool) -> Result<(), StoreError> {
        let res =
            sqlx::query("INSERT INTO devices (uuid, public_url, created_at) VALUES ($1, $2, $3)")
                .bind(uuid.as_str())
                .bind(public_url)
                .bind(now_unix())
                .execute(&self.pool)
                .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::DeviceExists(uuid))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Looks a device up.
    pub async fn device(&self, uuid: DeviceUuid) -> Result<Option<DeviceRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT uuid, public_url, created_at, last_seen, online, revoked FROM devices WHERE uuid = $1",
        )
        .bind(uuid.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| device_from_row(&r)).transpose()
    }

    /// All devices, oldest first.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT uuid, public_url, created_at, last_seen, online, revoked FROM devices ORDER BY created_at, uuid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// Records a tunnel coming up or going down.
    pub async fn set_online(&self, uuid: DeviceUuid, online: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET online = $1, last_seen = $2 WHERE uuid = $3")
            .bind(online)
            .bind(now_unix())
            .bind(uuid.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks every device offline (at start-up, before any tunnel is accepted).
    pub async fn mark_all_offline(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET online = FALSE WHERE online")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes the pool, flushing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn device_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<DeviceRecord, StoreError> {
    let uuid: String = r.try_get("uuid")?;
    Ok(DeviceRecord {
        uuid: uuid
            .parse()
            .map_err(|e: protocol::InvalidUuid| StoreError::Corrupt(e.to_string()))?,
        public_url: r.try_get("public_url")?,
        created_at: r.try_get("created_at")?,
        last_seen: r.try_get("last_seen")?,
        online: r.try_get("online")?,
        revoked: r.try_get("revoked")?,
    })
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
