//! The SQLite backend: one file in the data dir, the embedded default.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::{database_is_empty, StoreError, DB_FILE};

/// Connections that read, at most. Each can cache up to 2 MiB of pages.
const READERS: u32 = 4;

/// Opens (creating if needed) `data_dir/gateway.db`. Returns the readers' pool, the
/// writer's (one connection; see [`Pool::Sqlite`](super::backend::Pool::Sqlite)) and the
/// open lock, which the caller holds until the schema is current.
pub(super) async fn open(
    data_dir: &Path,
) -> Result<(SqlitePool, SqlitePool, std::fs::File), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
    // Creating the file, switching it to WAL and migrating take locks SQLite's busy
    // handler does not wait for: two processes opening a fresh data dir at once (say
    // `serve` and `device add`) could see "database is locked". An advisory lock makes
    // opens take turns; it is taken on a blocking thread so waiting never stalls the
    // runtime, and released once the schema is current.
    let lock_path = data_dir.join(".db.lock");
    let open_lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
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
    // The writer first: it creates the file and switches it to WAL.
    let writes = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts.clone())
        .await?;
    let reads = SqlitePoolOptions::new()
        .max_connections(READERS)
        .connect_with(opts.create_if_missing(false))
        .await?;
    Ok((reads, writes, open_lock))
}

/// Opens a transaction that writes.
///
/// `BEGIN IMMEDIATE` takes SQLite's write lock at `BEGIN`, where the busy handler waits
/// for it (up to `busy_timeout`). A deferred `BEGIN` would take it at the first write
/// instead; in WAL mode a transaction that has read by then fails at once with `database
/// is locked` (SQLITE_BUSY, or BUSY_SNAPSHOT 517) if another connection wrote in between,
/// because its snapshot is stale and waiting cannot help. That dropped log streams during
/// reconnect storms. Holding the write lock also serializes every read-then-write, which
/// PostgreSQL gets from [`Lock`](super::backend::Lock)s instead.
pub(super) async fn begin_write(
    pool: &SqlitePool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}
