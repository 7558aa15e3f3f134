//! Persistence: one SQLite file in the data dir (the embedded default), or a PostgreSQL
//! database that several gateway nodes share.
//!
//! All SQL is written once, in the subset SQLite and PostgreSQL share, and runs on
//! either through the seam in `backend.rs`; what the engines do differently (opening,
//! write transactions and their locks, a few column types in migrations) is in
//! `sqlite.rs` and `postgres.rs`. Schema changes are numbered migrations applied in
//! order at open time.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::DeviceUuid;

#[macro_use]
mod backend;
mod postgres;
mod sqlite;

use backend::{DbRow, Lock, Pool, Tx};

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
    /// The database did not answer in time.
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// File name of the database in the data dir.
pub const DB_FILE: &str = "gateway.db";

/// Whether `data_dir/gateway.db` exists but holds nothing (0 bytes, and no write-ahead
/// log with content beside it): a database that was truncated or copied wrongly.
pub fn database_is_empty(data_dir: &Path) -> bool {
    let len = |name: &str| std::fs::metadata(data_dir.join(name)).map(|m| m.len());
    matches!(len(DB_FILE), Ok(0)) && !matches!(len(&format!("{DB_FILE}-wal")), Ok(n) if n > 0)
}

/// One numbered schema migration: its SQL for SQLite, and for PostgreSQL where that
/// differs (`None`: the same SQL runs on both).
struct Migration {
    sqlite: &'static str,
    postgres: Option<&'static str>,
}

/// Numbered schema migrations, one file each in `store/migrations/` (the PostgreSQL
/// variant, where one is needed, under the same name in `migrations/postgres/`); never
/// edit one that has shipped, append a new one. Each file may hold several statements.
/// The numbers mean the same schema on both backends.
const MIGRATIONS: &[Migration] = &[
    Migration {
        sqlite: include_str!("migrations/0001_devices.sql"),
        postgres: None,
    },
    Migration {
        sqlite: include_str!("migrations/0002_fleets_device_names_and_fleets_api_token.sql"),
        postgres: Some(include_str!(
            "migrations/postgres/0002_fleets_device_names_and_fleets_api_token.sql"
        )),
    },
    Migration {
        sqlite: include_str!("migrations/0003_provisioning_keys_devices_registered_ahe.sql"),
        postgres: None,
    },
    Migration {
        sqlite: include_str!("migrations/0004_device_actions_with_an_offline_queue.sql"),
        postgres: Some(include_str!(
            "migrations/postgres/0004_device_actions_with_an_offline_queue.sql"
        )),
    },
    Migration {
        sqlite: include_str!("migrations/0005_reported_device_state_and_the_address_a.sql"),
        postgres: None,
    },
    Migration {
        sqlite: include_str!("migrations/0006_device_tags_environment_variables_per_fl.sql"),
        postgres: None,
    },
    Migration {
        sqlite: include_str!("migrations/0007_device_logs_and_per_device_the_highest_s.sql"),
        postgres: Some(include_str!(
            "migrations/postgres/0007_device_logs_and_per_device_the_highest_s.sql"
        )),
    },
    Migration {
        sqlite: include_str!("migrations/0008_releases_a_fleet_or_a_device_may_be_pinn.sql"),
        postgres: Some(include_str!(
            "migrations/postgres/0008_releases_a_fleet_or_a_device_may_be_pinn.sql"
        )),
    },
    Migration {
        sqlite: include_str!("migrations/0009_facts_about_the_data_dir_itself_such_as.sql"),
        postgres: None,
    },
    Migration {
        sqlite: include_str!("migrations/0010_a_release_counter_per_fleet.sql"),
        postgres: None,
    },
    Migration {
        sqlite: include_str!("migrations/0011_gateway_nodes_and_which_node_holds_each.sql"),
        postgres: None,
    },
    Migration {
        sqlite: include_str!("migrations/0012_public_url_access_modes.sql"),
        postgres: None,
    },
    Migration {
        sqlite: include_str!("migrations/0013_dashboard_users_and_sessions.sql"),
        postgres: None,
    },
    Migration {
        sqlite: include_str!("migrations/0014_support_grants_tokens_that_expire_and_reac.sql"),
        postgres: None,
    },
    Migration {
        sqlite: include_str!("migrations/0015_user_fleet_scopes_and_login_tickets.sql"),
        postgres: None,
    },
];

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// How long single statements take, and the wait for a write transaction
    /// (`gateway_store_query_duration_seconds`); shared by the clones.
    query_times: crate::histogram::LatencyHistogram,
}

/// Upper bounds (seconds) of the store's query-time buckets: 100 µs to 10 s.
const QUERY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

mod access;
mod actions;
mod audit;
#[cfg(test)]
mod concurrency_tests;
mod device_pages;
mod devices;
mod fleets;
mod keys;
mod logs;
mod nodes;
mod notify;
mod releases;
#[cfg(any(test, feature = "test-pg"))]
#[doc(hidden)]
pub mod test_pg;
mod tokens;
mod users;

pub use access::{AccessRecord, AccessScope, EffectiveAccess};
pub use actions::ActionRecord;
pub use audit::{AuditFilter, AuditRecord};
pub use device_pages::{DeviceListFilter, DeviceListRow};
pub use devices::DeviceRecord;
pub use fleets::{FleetDeletion, FleetRecord};
pub use keys::{KeyRecord, Refusal};
pub use logs::{LogQuery, StoredLine};
pub use nodes::{NodeRecord, Route};
pub use notify::{Wake, WakeListener, WAKE_CHANNEL};
pub use releases::{ReleaseRecord, TargetSource};
pub use tokens::{TokenRecord, TokenScope};
pub use users::{DashboardSession, Principal, UserRecord};

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
        let (reads, writes, _open_lock) = sqlite::open(data_dir).await?;
        let store = Self {
            pool: Pool::Sqlite { reads, writes },
            query_times: crate::histogram::LatencyHistogram::new(QUERY_BUCKETS),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user:password@host:port/db`
    /// or `postgresql://…`, with libpq's query parameters) and applies migrations. Several
    /// gateway nodes may connect to the same database at once; one migrates, the others
    /// wait for it.
    ///
    /// Errors: a URL of another scheme, or one that does not parse, is a configuration
    /// error that says so; a server that does not answer within 10 s, or refuses, is an
    /// I/O error naming `host:port/database` (never the password); a database that holds
    /// other tables but no gateway schema is refused rather than written into.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if !postgres::is_postgres_url(url) {
            let scheme = url.split_once("://").map_or(url, |(s, _)| s);
            return Err(StoreError::Db(sqlx::Error::Configuration(
                format!(
                    "unsupported database URL scheme {scheme:?}: use postgres://user:password@host:port/database, \
                     or give no database URL for the data dir's own SQLite file"
                )
                .into(),
            )));
        }
        let store = Self {
            pool: Pool::Postgres(postgres::connect(url).await?),
            query_times: crate::histogram::LatencyHistogram::new(QUERY_BUCKETS),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Opens the database a gateway is configured with: the PostgreSQL database at
    /// `database` when given (see [`Store::connect`]), else the SQLite file in `data_dir`
    /// (see [`Store::open`]), exactly as without the option.
    pub async fn open_database(
        database: Option<&str>,
        data_dir: &Path,
    ) -> Result<Self, StoreError> {
        match database {
            Some(url) => Self::connect(url).await,
            None => Self::open(data_dir).await,
        }
    }

    /// Whether this store is on PostgreSQL (shared by several nodes) rather than SQLite.
    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// The schema version after migrations.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version"
        )
        .fetch_one(p)
        .await?
        .at(0)?))
    }

    /// Opens a transaction that writes, holding `locks` on PostgreSQL.
    ///
    /// Every transaction that writes starts with this. On SQLite it is `BEGIN IMMEDIATE`
    /// (see `sqlite::begin_write` for why), which holds the whole database and makes
    /// `locks` moot. On PostgreSQL it is a `READ COMMITTED` transaction that first takes
    /// the advisory `locks` (see [`Lock`]) its read-then-write needs; more can be taken
    /// later with [`Tx::lock`], in the order [`Lock`] gives.
    async fn write_tx(&self, locks: &[Lock<'_>]) -> Result<Tx, StoreError> {
        let waited = std::time::Instant::now();
        let mut tx = match &self.pool {
            Pool::Sqlite { writes, .. } => Tx::Sqlite(sqlite::begin_write(writes).await?),
            Pool::Postgres(p) => Tx::Postgres(postgres::begin_write(p).await?),
        };
        for lock in locks {
            tx.lock(*lock).await?;
        }
        self.query_times.observe(waited.elapsed());
        Ok(tx)
    }

    /// The store's query-time histogram, for the metrics registry.
    pub(crate) fn query_times(&self) -> &crate::histogram::LatencyHistogram {
        &self.query_times
    }

    /// The fingerprint of the CA this database was created with, if recorded.
    pub async fn ca_fingerprint(&self) -> Result<Option<String>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query(
            "SELECT value FROM gateway_meta WHERE key = 'ca_fingerprint'"
        )
        .fetch_optional(p)
        .await?
        .map(|r| r.at(0))
        .transpose()?))
    }

    /// Records the fingerprint of the data dir's CA, unless one is recorded already.
    /// Returns the recorded fingerprint (which may be another one).
    ///
    /// Safe with several nodes starting at once on PostgreSQL: `ON CONFLICT DO NOTHING`
    /// waits for a concurrent insert of the key and then does nothing, and the read after
    /// it sees the fingerprint that won.
    pub async fn record_ca_fingerprint(&self, fingerprint: &str) -> Result<String, StoreError> {
        on_write!(self, |p| {
            sqlx::query(
            "INSERT INTO gateway_meta (key, value) VALUES ('ca_fingerprint', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(fingerprint)
        .execute(p)
        .await
        .map(drop)
        })?;
        Ok(self
            .ca_fingerprint()
            .await?
            .unwrap_or_else(|| fingerprint.to_string()))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // A write transaction: on SQLite IMMEDIATE takes the write lock up front, so two
        // processes opening a fresh data dir at once (`serve` and `device add`) run the
        // migrations one after the other instead of both reading "version 0" and one
        // failing on the upgrade to a write. On PostgreSQL the migrations lock does the
        // same for nodes starting together (DDL is transactional there too).
        let mut tx = self.write_tx(&[Lock::Migrations]).await?;
        let postgres = tx.is_postgres();
        if postgres {
            // A database of someone else's: refuse it rather than add tables beside theirs.
            let foreign: bool = on_tx!(tx, |c| sqlx::query(
                "SELECT to_regclass('schema_version') IS NULL AND EXISTS
                   (SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema())",
            )
            .fetch_one(&mut *c)
            .await?
            .at(0)?);
            if foreign {
                return Err(StoreError::Db(sqlx::Error::Configuration(
                    "the PostgreSQL database holds tables but no gateway schema (no schema_version table); \
                     give the gateway a database of its own"
                        .into(),
                )));
            }
        }
        let current: i64 = on_tx!(tx, |c| {
            sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
                .execute(&mut *c)
                .await?;
            sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                .fetch_one(&mut *c)
                .await?
                .at(0)?
        });
        for (i, m) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            if version > current {
                let sql = match (postgres, m.postgres) {
                    (true, Some(pg)) => pg,
                    _ => m.sqlite,
                };
                on_tx!(tx, |c| {
                    sqlx::raw_sql(sql).execute(&mut *c).await?;
                    sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                        .bind(version)
                        .execute(&mut *c)
                        .await?;
                });
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Closes the pool (on SQLite, flushing the WAL).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite { reads, writes } => {
                reads.close().await;
                writes.close().await;
            }
            Pool::Postgres(p) => p.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_pg::both_backends;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_connects_to_a_fresh_postgres_database_all_succeed() {
        let Some(url) = test_pg::database_url().await else {
            return;
        };
        let opens = (0..6).map(|_| Store::connect(&url));
        let stores = futures_util::future::join_all(opens).await;
        for s in stores {
            let s = s.expect("connect raced another connect's migrations and failed");
            assert!(s.is_postgres());
            assert_eq!(s.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
        }
    }

    #[tokio::test]
    async fn connect_refuses_other_schemes_and_names_an_unreachable_server() {
        let e = Store::connect("mysql://u:secret@db/x")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("unsupported database URL scheme \"mysql\""),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
        let e = Store::connect("postgres://u:secret@db:notaport/x")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a valid PostgreSQL URL"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = Store::connect(&format!("postgres://u:secret@127.0.0.1:{port}/gw"))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&format!(
                "cannot reach PostgreSQL at 127.0.0.1:{port}/gw as u"
            )),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
    }

    #[tokio::test]
    async fn open_database_without_a_url_is_the_data_dir_sqlite_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_database(None, dir.path()).await.unwrap();
        assert!(!store.is_postgres());
        assert!(dir.path().join(DB_FILE).exists());
    }

    #[tokio::test]
    async fn a_postgres_database_with_foreign_tables_is_refused() {
        let Some(url) = test_pg::database_url().await else {
            return;
        };
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::raw_sql("CREATE TABLE invoices (id BIGINT)")
            .execute(&mut c)
            .await
            .unwrap();
        let e = Store::connect(&url).await.err().unwrap().to_string();
        assert!(e.contains("holds tables but no gateway schema"), "{e}");
    }

    #[tokio::test]
    async fn an_empty_database_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), b"").unwrap();
        assert!(matches!(
            Store::open(dir.path()).await,
            Err(StoreError::EmptyDatabase(_))
        ));
    }

    #[tokio::test]
    async fn migration_10_continues_release_numbering_of_an_existing_database() {
        // A data dir at schema 9 (before the per-fleet counter) with two releases.
        let dir = tempfile::tempdir().unwrap();
        {
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.path().join(DB_FILE))
                .create_if_missing(true);
            let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts)
                .await
                .unwrap();
            sqlx::raw_sql("CREATE TABLE schema_version (version BIGINT NOT NULL)")
                .execute(&mut c)
                .await
                .unwrap();
            for (i, m) in MIGRATIONS[..9].iter().enumerate() {
                sqlx::raw_sql(m.sqlite).execute(&mut c).await.unwrap();
                sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                    .bind(i as i64 + 1)
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
            sqlx::raw_sql(
                "INSERT INTO fleets (name, created_at) VALUES ('f', 0);
                 INSERT INTO releases (id, fleet, seq, hash, compose, created_at, created_by)
                 VALUES ('a', 'f', 1, 'h1', 'c', 0, 't'), ('b', 'f', 2, 'h2', 'c', 0, 't');",
            )
            .execute(&mut c)
            .await
            .unwrap();
        }
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            MIGRATIONS.len() as i64
        );
        let (r, created) = store.create_release("f", "c3", "h3", "t").await.unwrap();
        assert!(created);
        assert_eq!(r.seq, 3);
    }

    both_backends! {
        async fn devices_round_trip_and_duplicates_are_refused(store) {
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

        async fn schema_is_current_and_the_ca_fingerprint_is_recorded_once(store) {
            assert_eq!(store.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
            assert_eq!(store.ca_fingerprint().await.unwrap(), None);
            assert_eq!(store.record_ca_fingerprint("aa").await.unwrap(), "aa");
            assert_eq!(store.record_ca_fingerprint("bb").await.unwrap(), "aa");
            assert_eq!(store.ca_fingerprint().await.unwrap().as_deref(), Some("aa"));
            store.close().await;
        }
    }
}
