//! The seam between the store and its two databases: a pool, a write transaction and a
//! row, each an enum (or a trait) over SQLite and PostgreSQL.
//!
//! Queries are written once, in the SQL both engines accept (`$N` placeholders, which
//! sqlx's SQLite driver takes as well), inside [`on_pool!`] or [`on_tx!`]: the macro
//! compiles the same body once per backend, with the pool or connection of that backend,
//! so binds and decodes are checked against both. Rows are read through [`DbRow`], which
//! both row types implement. What differs between the engines (opening, `BEGIN`, locks,
//! migrations) lives in `sqlite.rs` and `postgres.rs`.

use protocol::DeviceUuid;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{Decode, Postgres, Sqlite, Type};

use super::StoreError;

/// Runs `$body` with `$p` bound to the store's pool (`&SqlitePool` or `&PgPool`). The
/// body is compiled once for each backend and must evaluate to the same type on both, so
/// it decodes rows itself (through [`DbRow`]).
///
/// On SQLite this is the pool of readers: use [`on_write!`] for a statement that writes.
/// The time it takes goes into the store's query-time histogram.
macro_rules! on_pool {
    ($store:expr, |$p:ident| $body:expr) => {{
        let started = std::time::Instant::now();
        let done = match &$store.pool {
            $crate::store::backend::Pool::Sqlite { reads: $p, .. } => $body,
            $crate::store::backend::Pool::Postgres($p) => $body,
        };
        $store.query_times.observe(started.elapsed());
        done
    }};
}

/// As [`on_pool!`], for one statement that writes outside a [`Tx`]: on SQLite it runs on
/// the single writer connection (see [`Pool::Sqlite`]), on PostgreSQL on the pool.
macro_rules! on_write {
    ($store:expr, |$p:ident| $body:expr) => {{
        let started = std::time::Instant::now();
        let done = match &$store.pool {
            $crate::store::backend::Pool::Sqlite { writes: $p, .. } => $body,
            $crate::store::backend::Pool::Postgres($p) => $body,
        };
        $store.query_times.observe(started.elapsed());
        done
    }};
}

/// Runs `$body` with `$c` bound to the transaction's connection (`&mut SqliteConnection`
/// or `&mut PgConnection`; reborrow it as `&mut *$c` for each query).
macro_rules! on_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx.conn() {
            $crate::store::backend::Conn::Sqlite($c) => $body,
            $crate::store::backend::Conn::Postgres($c) => $body,
        }
    };
}

/// The database behind a [`Store`](super::Store).
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    /// The embedded default: one file in the data dir, through two pools.
    ///
    /// SQLite lets one connection write at a time. Writers that share a pool with
    /// readers wait for the write lock inside SQLite's busy handler while holding a pooled
    /// connection, so during a reconnect storm (every connect writes its route) requests
    /// that only read queued behind them for seconds. Here writers queue for the one
    /// connection of `writes` in the pool's fair async queue, holding nothing, and the
    /// WAL lets `reads` go on beside them. Other processes on the same file (`gateway
    /// device add` beside `serve`) still meet the busy handler, which waits.
    Sqlite {
        /// Reads (WAL readers never wait for the writer).
        reads: SqlitePool,
        /// Every write: one connection.
        writes: SqlitePool,
    },
    /// A PostgreSQL server, for several gateway nodes sharing one database.
    Postgres(PgPool),
}

/// A transaction that writes, opened by [`Store::write_tx`](super::Store::write_tx).
///
/// On SQLite it holds the database's write lock from `BEGIN IMMEDIATE` on. On PostgreSQL
/// it is a `READ COMMITTED` transaction that holds the [`Lock`]s its caller names, so
/// that the read-then-write sequences run one at a time where they would race.
pub(crate) enum Tx {
    /// `BEGIN IMMEDIATE`.
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    /// `BEGIN` plus transaction-scoped advisory locks.
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// The connection of a [`Tx`], for [`on_tx!`].
pub(crate) enum Conn<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

impl Tx {
    /// The transaction's connection.
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Sqlite(t) => Conn::Sqlite(t),
            Tx::Postgres(t) => Conn::Postgres(t),
        }
    }

    /// Commits.
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    /// Takes `lock` until the transaction ends. A no-op on SQLite, where the transaction
    /// already holds the whole database; on PostgreSQL a transaction-scoped advisory lock
    /// (`pg_advisory_xact_lock`, shared or exclusive) on a 64-bit hash of the lock's name.
    /// A hash collision only makes two unrelated writers take turns.
    pub(crate) async fn lock(&mut self, lock: Lock<'_>) -> Result<(), StoreError> {
        if let Tx::Postgres(t) = self {
            super::postgres::advisory_xact_lock(t, &lock.key(), lock.is_shared()).await?;
        }
        Ok(())
    }

    /// Whether this is a PostgreSQL transaction.
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Tx::Postgres(_))
    }
}

/// What a PostgreSQL write transaction locks (see [`Tx::lock`]). Always taken in the
/// order key, device, fleet, so two transactions never wait for each other in a cycle.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lock<'a> {
    /// Exclusive: deleting a fleet or switching its devices' public URLs, against
    /// everything that adds a device, key or release to it.
    FleetExclusive(&'a str),
    /// Shared: adding a device, key or release to a fleet (they do not conflict with each
    /// other; the release counter is a row lock of its own).
    FleetShared(&'a str),
    /// A device row being claimed by provisioning.
    Device(DeviceUuid),
    /// A provisioning key whose use count is checked, then raised.
    Key(&'a str),
    /// A device's tags (replaced as a whole).
    Tags(DeviceUuid),
    /// The environment variables of one scope and owner (replaced as a whole).
    Env(&'a str, &'a str),
    /// A device's log cursor and lines: one batch at a time per device, so that line ids
    /// become visible in increasing order (a live tail resumes "after id N").
    Logs(DeviceUuid),
    /// Schema migrations (one node migrates, the others wait and find them done).
    Migrations,
}

impl Lock<'_> {
    fn key(&self) -> String {
        match self {
            Lock::FleetExclusive(f) | Lock::FleetShared(f) => format!("fleet:{f}"),
            Lock::Device(u) => format!("device:{u}"),
            Lock::Key(k) => format!("key:{k}"),
            Lock::Tags(u) => format!("tags:{u}"),
            Lock::Env(scope, owner) => format!("env:{scope}:{owner}"),
            Lock::Logs(u) => format!("logs:{u}"),
            Lock::Migrations => "migrations".to_string(),
        }
    }

    fn is_shared(&self) -> bool {
        matches!(self, Lock::FleetShared(_))
    }
}

/// A type both backends can decode a column into.
pub(crate) trait Column:
    for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

impl<T> Column for T where
    T: for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

/// A result row of either backend, so that row-to-record functions are written once.
pub(crate) trait DbRow {
    /// The column called `name`.
    fn col<T: Column>(&self, name: &str) -> Result<T, sqlx::Error>;
    /// The column at `index` (from 0).
    fn at<T: Column>(&self, index: usize) -> Result<T, sqlx::Error>;
}

impl DbRow for SqliteRow {
    fn col<T: Column>(&self, name: &str) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, name)
    }
    fn at<T: Column>(&self, index: usize) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, index)
    }
}

impl DbRow for PgRow {
    fn col<T: Column>(&self, name: &str) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, name)
    }
    fn at<T: Column>(&self, index: usize) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, index)
    }
}
