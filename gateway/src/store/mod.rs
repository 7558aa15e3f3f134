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

/// Numbered schema migrations; never edit one that has shipped, append a new one.
/// Each entry may hold several statements.
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
    // 2: fleets, device names and fleets, API tokens, audit log.
    "CREATE TABLE fleets (
        name TEXT PRIMARY KEY NOT NULL,
        public_url_default BOOLEAN NOT NULL DEFAULT FALSE,
        created_at BIGINT NOT NULL
    );
    ALTER TABLE devices ADD COLUMN name TEXT;
    ALTER TABLE devices ADD COLUMN fleet TEXT REFERENCES fleets(name);
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY NOT NULL,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_hash TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        last_used BIGINT
    );
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );",
    // 3: provisioning keys; devices registered ahead of provisioning.
    "CREATE TABLE provisioning_keys (
        id TEXT PRIMARY KEY NOT NULL,
        fleet TEXT NOT NULL REFERENCES fleets(name),
        secret_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        max_uses BIGINT,
        uses BIGINT NOT NULL DEFAULT 0,
        revoked BOOLEAN NOT NULL DEFAULT FALSE
    );
    ALTER TABLE devices ADD COLUMN provisioned BOOLEAN NOT NULL DEFAULT TRUE;",
    // 4: device actions with an offline queue.
    "CREATE TABLE actions (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        device TEXT NOT NULL,
        name TEXT NOT NULL,
        params TEXT NOT NULL,
        status TEXT NOT NULL,
        detail TEXT,
        actor TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        delivered_at BIGINT,
        finished_at BIGINT
    );
    CREATE INDEX actions_device_status ON actions (device, status);",
    // 5: reported device state and the address a device last connected from.
    "ALTER TABLE devices ADD COLUMN state TEXT;
    ALTER TABLE devices ADD COLUMN public_address TEXT;",
    // 6: device tags; environment variables per fleet or device, optionally per service.
    "CREATE TABLE device_tags (
        device TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (device, name)
    );
    CREATE TABLE env_vars (
        scope TEXT NOT NULL,
        owner TEXT NOT NULL,
        service TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (scope, owner, service, name)
    );",
    // 7: device logs, and per device the highest sequence number stored for its spool epoch.
    "CREATE TABLE logs (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        service TEXT,
        service_id BIGINT,
        is_stderr BOOLEAN NOT NULL,
        is_system BOOLEAN NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX logs_device_id ON logs (device, id);
    CREATE INDEX logs_ts ON logs (ts);
    CREATE TABLE log_cursors (
        device TEXT PRIMARY KEY NOT NULL,
        epoch TEXT NOT NULL,
        last_seq BIGINT NOT NULL
    );",
    // 8: releases; a fleet or a device may be pinned to one.
    "CREATE TABLE releases (
        id TEXT PRIMARY KEY NOT NULL,
        fleet TEXT NOT NULL REFERENCES fleets(name),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        compose TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE INDEX releases_fleet ON releases (fleet, seq);
    ALTER TABLE fleets ADD COLUMN pinned_release TEXT;
    ALTER TABLE devices ADD COLUMN pinned_release TEXT;",
    // 9: facts about the data dir itself, such as the fingerprint of the CA it was
    // created with (checked against ca.pem at every start).
    "CREATE TABLE gateway_meta (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );",
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
    /// Display name (defaults to the first 7 characters of the uuid when unset).
    pub name: Option<String>,
    /// The fleet the device belongs to, if any.
    pub fleet: Option<String>,
    /// The last state the agent reported (versions, addresses, status).
    pub state: Option<serde_json::Value>,
    /// The address the device last connected from, as the gateway saw it.
    pub public_address: Option<String>,
}

/// A device action as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRecord {
    /// Unique id (also sent to the agent, which never runs an id twice).
    pub id: String,
    /// Target device.
    pub device: DeviceUuid,
    /// Action name (`reboot`, `blink`, ...).
    pub name: String,
    /// Parameters (JSON).
    pub params: serde_json::Value,
    /// `pending`, `delivered`, `succeeded`, `failed` or `expired`.
    pub status: String,
    /// Result or failure reason (JSON).
    pub detail: Option<serde_json::Value>,
    /// Who asked.
    pub actor: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// After this time a pending action is never delivered.
    pub expires_at: i64,
    /// Delivery time.
    pub delivered_at: Option<i64>,
    /// Completion time.
    pub finished_at: Option<i64>,
}

/// A provisioning key as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public id.
    pub id: String,
    /// The fleet devices provisioned with it join.
    pub fleet: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Expiry, unix seconds.
    pub expires_at: Option<i64>,
    /// Use limit.
    pub max_uses: Option<i64>,
    /// Devices provisioned with it so far.
    pub uses: i64,
    /// Revoked keys are refused.
    pub revoked: bool,
}

/// Why a provisioning attempt was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such key or wrong secret.
    InvalidKey,
    /// The key was revoked.
    KeyRevoked,
    /// The key expired at this unix time.
    KeyExpired(i64),
    /// The key reached this use limit.
    KeyUsedUp(i64),
    /// The uuid is already provisioned, or was deleted.
    UuidUnavailable(DeviceUuid),
}

/// A fleet as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRecord {
    /// Unique name.
    pub name: String,
    /// Public-URL setting devices inherit when they join the fleet.
    pub public_url_default: bool,
    /// Creation time, unix seconds.
    pub created_at: i64,
}

/// What [`Store::delete_fleet`] removed along with the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetDeletion {
    /// Provisioning keys of the fleet.
    pub keys: u64,
    /// Releases of the fleet.
    pub releases: u64,
    /// Fleet-level environment variables (fleet-wide and per service).
    pub env_vars: u64,
}

/// An API token as stored (the secret is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id (the part of the token before the dot).
    pub id: String,
    /// Operator-chosen label.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Last authenticated use, unix seconds.
    pub last_used: Option<i64>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Monotonic sequence number.
    pub seq: i64,
    /// Time, unix seconds.
    pub at: i64,
    /// Who: `token:<id>` or `cli:<user>` for offline commands.
    pub actor: String,
    /// What (`device.delete`, `fleet.create`, ...).
    pub action: String,
    /// On what (uuid, fleet name, token id).
    pub target: String,
    /// Details (JSON).
    pub detail: String,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

#[cfg(test)]
mod concurrency_tests;
mod logs;
mod releases;

pub use logs::{LogQuery, StoredLine};
pub use releases::{ReleaseRecord, TargetSource};

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
            "SELECT uuid, public_url, created_at, last_seen, online, revoked, name, fleet, state, public_address FROM devices WHERE uuid = $1",
        )
        .bind(uuid.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| device_from_row(&r)).transpose()
    }

    /// All devices, oldest first.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT uuid, public_url, created_at, last_seen, online, revoked, name, fleet, state, public_address FROM devices WHERE NOT revoked ORDER BY created_at, uuid",
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

    /// A device's tags, by name.
    pub async fn tags(&self, uuid: DeviceUuid) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT name, value FROM device_tags WHERE device = $1 ORDER BY name")
                .bind(uuid.as_str())
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
            .collect()
    }

    /// Devices carrying tag `name` (with `value`, if given).
    pub async fn devices_with_tag(
        &self,
        name: &str,
        value: Option<&str>,
    ) -> Result<Vec<DeviceUuid>, StoreError> {
        let rows = sqlx::query(
            "SELECT device FROM device_tags WHERE name = $1 AND ($2 IS NULL OR value = $2)",
        )
        .bind(name)
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let u: String = r.try_get("device")?;
                u.parse()
                    .map_err(|e: protocol::InvalidUuid| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// Replaces a device's tags.
    pub async fn set_tags(
        &self,
        uuid: DeviceUuid,
        tags: &[(String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM device_tags WHERE device = $1")
            .bind(uuid.as_str())
            .execute(&mut *tx)
            .await?;
        for (k, v) in tags {
            sqlx::query("INSERT INTO device_tags (device, name, value) VALUES ($1, $2, $3)")
                .bind(uuid.as_str())
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Environment variables of a fleet (`scope` = `fleet`) or device (`device`), as
    /// `(service, name, value)` with service `""` for all services.
    pub async fn env(
        &self,
        scope: &str,
        owner: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT service, name, value FROM env_vars WHERE scope = $1 AND owner = $2 ORDER BY service, name",
        )
        .bind(scope)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("service")?,
                    r.try_get("name")?,
                    r.try_get("value")?,
                ))
            })
            .collect()
    }

    /// Replaces the environment variables of a fleet or device.
    pub async fn set_env(
        &self,
        scope: &str,
        owner: &str,
        vars: &[(String, String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM env_vars WHERE scope = $1 AND owner = $2")
            .bind(scope)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        for (service, name, value) in vars {
            sqlx::query("INSERT INTO env_vars (scope, owner, service, name, value) VALUES ($1, $2, $3, $4, $5)")
                .bind(scope)
                .bind(owner)
                .bind(service)
                .bind(name)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores the state an agent reported.
    pub async fn set_state(
        &self,
        uuid: DeviceUuid,
        state: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET state = $1 WHERE uuid = $2")
            .bind(state.to_string())
            .bind(uuid.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the address a device connected from.
    pub async fn set_public_address(&self, uuid: DeviceUuid, addr: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET public_address = $1 WHERE uuid = $2")
            .bind(addr)
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

    /// Registers a device ahead of provisioning (balena's `device register`): it exists,
    /// has no certificate yet, and a provisioning key of any fleet may claim it.
    pub async fn register_device(
        &self,
        uuid: DeviceUuid,
        fleet: Option<&str>,
    ) -> Result<DeviceRecord, StoreError> {
        let mut tx = self.write_tx().await?;
        let public_url = match fleet {
            Some(f) => {
                self.fleet_in(&mut tx, f)
                    .await?
                    .ok_or_else(|| StoreError::NoSuchFleet(f.to_string()))?
                    .public_url_default
            }
            None => false,
        };
        let res = sqlx::query(
            "INSERT INTO devices (uuid, public_url, created_at, fleet, provisioned) VALUES ($1, $2, $3, $4, FALSE)",
        )
        .bind(uuid.as_str())
        .bind(public_url)
        .bind(now_unix())
        .bind(fleet)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::DeviceExists(uuid))
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        self.device(uuid)
            .await?
            .ok_or_else(|| StoreError::Corrupt("registered device vanished".into()))
    }

    /// Stores a provisioning key (only the hash of its secret).
    pub async fn create_key(
        &self,
        id: &str,
        fleet: &str,
        secret_hash: &str,
        expires_at: Option<i64>,
        max_uses: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        if self.fleet_in(&mut tx, fleet).await?.is_none() {
            return Err(StoreError::NoSuchFleet(fleet.to_string()));
        }
        sqlx::query(
            "INSERT INTO provisioning_keys (id, fleet, secret_hash, created_at, expires_at, max_uses) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(fleet)
        .bind(secret_hash)
        .bind(now_unix())
        .bind(expires_at)
        .bind(max_uses)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The provisioning keys of a fleet (never their secrets).
    pub async fn keys(&self, fleet: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, fleet, created_at, expires_at, max_uses, uses, revoked FROM provisioning_keys WHERE fleet = $1 ORDER BY created_at, id",
        )
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    id: r.try_get("id")?,
                    fleet: r.try_get("fleet")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                    max_uses: r.try_get("max_uses")?,
                    uses: r.try_get("uses")?,
                    revoked: r.try_get("revoked")?,
                })
            })
            .collect()
    }

    /// Revokes a provisioning key. Returns `false` if it does not exist.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE provisioning_keys SET revoked = TRUE WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Provisions a device with a key, atomically: checks the key (secret, expiry, use
    /// limit, revocation), claims `uuid` (a pre-registered one, or a new one), counts the
    /// use. Returns the device's fleet and whether a new row was created.
    pub async fn provision(
        &self,
        key_id: &str,
        secret_hash: &str,
        uuid: DeviceUuid,
        now: i64,
    ) -> Result<Result<String, Refusal>, StoreError> {
        let mut tx = self.write_tx().await?;
        let Some(k) = sqlx::query(
            "SELECT fleet, secret_hash, expires_at, max_uses, uses, revoked FROM provisioning_keys WHERE id = $1",
        )
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Err(Refusal::InvalidKey));
        };
        let stored_hash: String = k.try_get("secret_hash")?;
        if stored_hash != secret_hash {
            return Ok(Err(Refusal::InvalidKey));
        }
        if k.try_get::<bool, _>("revoked")? {
            return Ok(Err(Refusal::KeyRevoked));
        }
        if let Some(exp) = k.try_get::<Option<i64>, _>("expires_at")? {
            if now >= exp {
                return Ok(Err(Refusal::KeyExpired(exp)));
            }
        }
        let uses: i64 = k.try_get("uses")?;
        if let Some(max) = k.try_get::<Option<i64>, _>("max_uses")? {
            if uses >= max {
                return Ok(Err(Refusal::KeyUsedUp(max)));
            }
        }
        let fleet: String = k.try_get("fleet")?;
        let existing =
            sqlx::query("SELECT provisioned, revoked, fleet FROM devices WHERE uuid = $1")
                .bind(uuid.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let device_fleet = match existing {
            Some(r) => {
                if r.try_get::<bool, _>("provisioned")? || r.try_get::<bool, _>("revoked")? {
                    return Ok(Err(Refusal::UuidUnavailable(uuid)));
                }
                let pre: Option<String> = r.try_get("fleet")?;
                let device_fleet = pre.unwrap_or_else(|| fleet.clone());
                sqlx::query("UPDATE devices SET provisioned = TRUE, fleet = $1 WHERE uuid = $2")
                    .bind(&device_fleet)
                    .bind(uuid.as_str())
                    .execute(&mut *tx)
                    .await?;
                device_fleet
            }
            None => {
                let public_url: bool =
                    sqlx::query("SELECT public_url_default FROM fleets WHERE name = $1")
                        .bind(&fleet)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get(0)?;
                sqlx::query(
                    "INSERT INTO devices (uuid, public_url, created_at, fleet, provisioned) VALUES ($1, $2, $3, $4, TRUE)",
                )
                .bind(uuid.as_str())
                .bind(public_url)
                .bind(now)
                .bind(&fleet)
                .execute(&mut *tx)
                .await?;
                fleet
            }
        };
        sqlx::query("UPDATE provisioning_keys SET uses = uses + 1 WHERE id = $1")
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(device_fleet))
    }

    /// Queues an action.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_action(
        &self,
        id: &str,
        device: DeviceUuid,
        name: &str,
        params: &serde_json::Value,
        actor: &str,
        ttl_secs: i64,
    ) -> Result<ActionRecord, StoreError> {
        let now = now_unix();
        sqlx::query(
            "INSERT INTO actions (id, device, name, params, status, actor, created_at, expires_at) VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7)",
        )
        .bind(id)
        .bind(device.as_str())
        .bind(name)
        .bind(params.to_string())
        .bind(actor)
        .bind(now)
        .bind(now.saturating_add(ttl_secs))
        .execute(&self.pool)
        .await?;
        self.action(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("inserted action vanished".into()))
    }

    /// One action.
    pub async fn action(&self, id: &str) -> Result<Option<ActionRecord>, StoreError> {
        let row = sqlx::query(&format!("{ACTION_COLUMNS} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| action_from_row(&r)).transpose()
    }

    /// A device's actions, newest first.
    pub async fn device_actions(
        &self,
        device: DeviceUuid,
        limit: i64,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "{ACTION_COLUMNS} WHERE device = $1 ORDER BY seq DESC LIMIT $2"
        ))
        .bind(device.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(action_from_row).collect()
    }

    /// Marks expired pending actions of `device` as `expired` and returns the actions to
    /// send now, oldest first: pending ones, and delivered ones without a result (a
    /// reconnect may have lost the result; the agent answers from its log, never re-runs).
    pub async fn actions_to_deliver(
        &self,
        device: DeviceUuid,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let now = now_unix();
        sqlx::query(
            "UPDATE actions SET status = 'expired', finished_at = $1 WHERE device = $2 AND status = 'pending' AND expires_at <= $1",
        )
        .bind(now)
        .bind(device.as_str())
        .execute(&self.pool)
        .await?;
        let rows = sqlx::query(&format!(
            "{ACTION_COLUMNS} WHERE device = $1 AND status IN ('pending', 'delivered') ORDER BY seq"
        ))
        .bind(device.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(action_from_row).collect()
    }

    /// Records that an action was sent to the agent.
    pub async fn action_delivered(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE actions SET status = 'delivered', delivered_at = $1 WHERE id = $2 AND status = 'pending'")
            .bind(now_unix())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records an action's result (only for an action of `device`, so one device cannot
    /// finish another's actions).
    pub async fn action_finished(
        &self,
        device: DeviceUuid,
        id: &str,
        ok: bool,
        detail: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE actions SET status = $1, detail = $2, finished_at = $3 WHERE id = $4 AND device = $5 AND status IN ('pending', 'delivered')",
        )
        .bind(if ok { "succeeded" } else { "failed" })
        .bind(detail.to_string())
        .bind(now_unix())
        .bind(id)
        .bind(device.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Sets a device's public-URL flag. Returns `false` if the device does not exist.
    pub async fn set_public_url(&self, uuid: DeviceUuid, on: bool) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE devices SET public_url = $1 WHERE uuid = $2 AND NOT revoked")
            .bind(on)
            .bind(uuid.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Renames a device and/or moves it to another fleet (`Some(None)` removes it from its
    /// fleet). Returns `false` if the device does not exist.
    pub async fn update_device(
        &self,
        uuid: DeviceUuid,
        name: Option<&str>,
        fleet: Option<Option<&str>>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT 1 FROM devices WHERE uuid = $1 AND NOT revoked")
            .bind(uuid.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            return Ok(false);
        }
        if let Some(name) = name {
            sqlx::query("UPDATE devices SET name = $1 WHERE uuid = $2")
                .bind(name)
                .bind(uuid.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(fleet) = fleet {
            if let Some(f) = fleet {
                if self.fleet_in(&mut tx, f).await?.is_none() {
                    return Err(StoreError::NoSuchFleet(f.to_string()));
                }
            }
            sqlx::query("UPDATE devices SET fleet = $1 WHERE uuid = $2")
                .bind(fleet)
                .bind(uuid.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Revokes a device: its certificate is refused from now on and it leaves every
    /// listing. Returns `false` if the device does not exist.
    pub async fn revoke_device(&self, uuid: DeviceUuid) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE devices SET revoked = TRUE, online = FALSE, public_url = FALSE WHERE uuid = $1 AND NOT revoked",
        )
        .bind(uuid.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Creates a fleet.
    pub async fn create_fleet(
        &self,
        name: &str,
        public_url_default: bool,
    ) -> Result<FleetRecord, StoreError> {
        let created_at = now_unix();
        let res = sqlx::query(
            "INSERT INTO fleets (name, public_url_default, created_at) VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(public_url_default)
        .bind(created_at)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(FleetRecord {
                name: name.to_string(),
                public_url_default,
                created_at,
            }),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::FleetExists(name.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn fleet_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        name: &str,
    ) -> Result<Option<FleetRecord>, StoreError> {
        let row =
            sqlx::query("SELECT name, public_url_default, created_at FROM fleets WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
        row.map(|r| fleet_from_row(&r)).transpose()
    }

    /// Looks a fleet up.
    pub async fn fleet(&self, name: &str) -> Result<Option<FleetRecord>, StoreError> {
        let row =
            sqlx::query("SELECT name, public_url_default, created_at FROM fleets WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| fleet_from_row(&r)).transpose()
    }

    /// All fleets with their device counts, by name.
    pub async fn fleets(&self) -> Result<Vec<(FleetRecord, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT f.name, f.public_url_default, f.created_at,
                    (SELECT COUNT(*) FROM devices d WHERE d.fleet = f.name AND NOT d.revoked) AS devices
             FROM fleets f ORDER BY f.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((fleet_from_row(r)?, r.try_get("devices")?)))
            .collect()
    }

    /// Switches the public URL of every device in `fleet` now, and sets the default that
    /// devices added to the fleet later inherit. Returns the devices switched, or `None`
    /// if the fleet does not exist.
    pub async fn set_fleet_public_url(
        &self,
        fleet: &str,
        on: bool,
    ) -> Result<Option<Vec<DeviceUuid>>, StoreError> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("UPDATE fleets SET public_url_default = $1 WHERE name = $2")
            .bind(on)
            .bind(fleet)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        let rows = sqlx::query("SELECT uuid FROM devices WHERE fleet = $1 AND NOT revoked")
            .bind(fleet)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query("UPDATE devices SET public_url = $1 WHERE fleet = $2 AND NOT revoked")
            .bind(on)
            .bind(fleet)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let u: String = r.try_get("uuid")?;
                u.parse()
                    .map_err(|e: protocol::InvalidUuid| StoreError::Corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Deletes a fleet that has no devices, and with it its provisioning keys, its
    /// releases and its fleet-level environment variables (all meaningless without the
    /// fleet). Devices block it ([`StoreError::FleetNotEmpty`]): moving or deleting a
    /// device is a decision of its own. Devices deleted earlier keep their (revoked) rows
    /// but leave the fleet. Returns what went with it, or `None` if there is no such
    /// fleet.
    pub async fn delete_fleet(&self, name: &str) -> Result<Option<FleetDeletion>, StoreError> {
        let mut tx = self.write_tx().await?;
        if self.fleet_in(&mut tx, name).await?.is_none() {
            return Ok(None);
        }
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM devices WHERE fleet = $1 AND NOT revoked")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if n > 0 {
            return Err(StoreError::FleetNotEmpty(name.to_string(), n));
        }
        sqlx::query(
            "UPDATE devices SET pinned_release = NULL
             WHERE pinned_release IN (SELECT id FROM releases WHERE fleet = $1)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE devices SET fleet = NULL WHERE fleet = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let keys = sqlx::query("DELETE FROM provisioning_keys WHERE fleet = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let releases = sqlx::query("DELETE FROM releases WHERE fleet = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let env_vars = sqlx::query("DELETE FROM env_vars WHERE scope = 'fleet' AND owner = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM fleets WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(FleetDeletion {
            keys,
            releases,
            env_vars,
        }))
    }

    /// Stores a new API token (only its hash).
    pub async fn create_token(
        &self,
        id: &str,
        name: &str,
        role: &str,
        secret_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(name)
        .bind(role)
        .bind(secret_hash)
        .bind(now_unix())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Finds a token by the hash of its secret, recording its use.
    pub async fn token_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, role, created_at, last_used FROM api_tokens WHERE secret_hash = $1",
        )
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let rec = token_from_row(&r)?;
        sqlx::query("UPDATE api_tokens SET last_used = $1 WHERE id = $2")
            .bind(now_unix())
            .bind(&rec.id)
            .execute(&self.pool)
            .await?;
        Ok(Some(rec))
    }

    /// All tokens (never their secrets).
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, role, created_at, last_used FROM api_tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Deletes a token. Returns `false` if it does not exist.
    pub async fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM api_tokens WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Appends to the audit log.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_unix())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest `limit` audit entries with `seq` below `before` (if given), newest first.
    pub async fn audit_log(
        &self,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, target, detail FROM audit_log
             WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Closes the pool, flushing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

const ACTION_COLUMNS: &str = "SELECT id, device, name, params, status, detail, actor, created_at, expires_at, delivered_at, finished_at FROM actions";

fn action_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ActionRecord, StoreError> {
    let device: String = r.try_get("device")?;
    let params: String = r.try_get("params")?;
    let detail: Option<String> = r.try_get("detail")?;
    Ok(ActionRecord {
        id: r.try_get("id")?,
        device: device
            .parse()
            .map_err(|e: protocol::InvalidUuid| StoreError::Corrupt(e.to_string()))?,
        name: r.try_get("name")?,
        params: serde_json::from_str(&params).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        status: r.try_get("status")?,
        detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
        actor: r.try_get("actor")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        delivered_at: r.try_get("delivered_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

fn fleet_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<FleetRecord, StoreError> {
    Ok(FleetRecord {
        name: r.try_get("name")?,
        public_url_default: r.try_get("public_url_default")?,
        created_at: r.try_get("created_at")?,
    })
}

fn token_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        created_at: r.try_get("created_at")?,
        last_used: r.try_get("last_used")?,
    })
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
        name: r.try_get("name")?,
        fleet: r.try_get("fleet")?,
        state: r
            .try_get::<Option<String>, _>("state")?
            .and_then(|s| serde_json::from_str(&s).ok()),
        public_address: r.try_get("public_address")?,
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
