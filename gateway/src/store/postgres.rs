//! The PostgreSQL backend: a server shared by several gateway nodes.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use super::StoreError;

/// Connections per gateway process. Default is 16: the hot writers (log batches, state
/// reports) are short transactions, and a cluster of nodes stays far below PostgreSQL's
/// default `max_connections` of 100.
const MAX_CONNECTIONS: u32 = 16;

/// How long a query waits for a connection, and the first connect for the server.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `url` names a PostgreSQL database.
pub(super) fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Connects to the database at `url` (`postgres://user:password@host:port/database`,
/// with libpq's query parameters such as `sslmode`). Errors say which server could not
/// be reached and never repeat the password.
pub(super) async fn connect(url: &str) -> Result<PgPool, StoreError> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| {
        sqlx::Error::Configuration(
            format!(
                "the database URL is not a valid PostgreSQL URL ({e}); \
                 expected postgres://user:password@host:port/database"
            )
            .into(),
        )
    })?;
    let target = describe(&opts);
    // One plain connection first: the pool retries a refused connection until its
    // acquire timeout and then reports only "pool timed out", where the operator needs
    // "connection refused" or "password authentication failed" at once.
    let probe = tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&opts))
        .await
        .map_err(|_| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "cannot reach PostgreSQL at {target}: no answer within {}s",
                    ACQUIRE_TIMEOUT.as_secs()
                ),
            ))
        })?
        .map_err(|e| connect_error(&target, e))?;
    probe.close().await.ok();
    PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(opts)
        .await
        .map_err(|e| connect_error(&target, e).into())
}

/// A connect failure, saying which server (and never the password).
fn connect_error(target: &str, e: sqlx::Error) -> sqlx::Error {
    match e {
        // A certificate that does not verify reaches here as I/O; it is not "unreachable".
        sqlx::Error::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) =>
        {
            sqlx::Error::Configuration(
                format!(
                    "cannot open the PostgreSQL database at {target}: its TLS certificate does \
                     not verify ({io}); check sslmode and sslrootcert in the database URL"
                )
                .into(),
            )
        }
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(
            io.kind(),
            format!("cannot reach PostgreSQL at {target}: {io}"),
        )),
        sqlx::Error::PoolTimedOut => sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "cannot reach PostgreSQL at {target}: no answer within {}s",
                ACQUIRE_TIMEOUT.as_secs()
            ),
        )),
        other => sqlx::Error::Configuration(
            format!("cannot open the PostgreSQL database at {target}: {other}").into(),
        ),
    }
}

/// `host:port/database as user`, for errors (no password).
fn describe(opts: &PgConnectOptions) -> String {
    let place = match opts.get_socket() {
        Some(dir) => format!("{}:{}", dir.display(), opts.get_port()),
        None => format!("{}:{}", opts.get_host(), opts.get_port()),
    };
    format!(
        "{place}/{} as {}",
        opts.get_database().unwrap_or(opts.get_username()),
        opts.get_username()
    )
}

/// Opens a transaction that writes: `BEGIN` (`READ COMMITTED`); the caller takes the
/// [`Lock`](super::backend::Lock)s its read-then-write needs.
pub(super) async fn begin_write(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    Ok(pool.begin().await?)
}

/// Takes a transaction-scoped advisory lock on a 64-bit hash of `key` (released at
/// commit or rollback; a lock a node never releases dies with its connection).
pub(super) async fn advisory_xact_lock(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    key: &str,
    shared: bool,
) -> Result<(), sqlx::Error> {
    let sql = if shared {
        "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))"
    } else {
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
    };
    sqlx::query(sql).bind(key).execute(&mut **tx).await?;
    Ok(())
}
