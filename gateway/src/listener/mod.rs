//! The one accept loop of the gateway's TCP listeners: the public router and the
//! management API (plain or TLS) are both served through [`serve`].
//!
//! It owns what every listener facing the network needs, so that no caller can forget a
//! part of it:
//!
//! * **connection caps**, total and per client address (IPv6 per /64), counted by an RAII
//!   guard that lives as long as the socket (also after a WebSocket upgrade); a connection
//!   over a cap is closed at once, on plain listeners after a one-line `429`/`503`;
//! * **a first-request deadline**: a connection must deliver a complete request head within
//!   `header_read_timeout` of being accepted, TLS handshake included. hyper's own header
//!   timeout only starts once `auto` has seen enough bytes to choose HTTP/1 or HTTP/2, so
//!   a client that sends nothing, or only the HTTP/2 preface, was never closed;
//! * **an idle deadline**: a connection with no request open for `idle_timeout` is shut
//!   down gracefully (HTTP/2 `GOAWAY`; HTTP/1 keep-alive connections are also closed by
//!   hyper when `header_read_timeout` passes without a new request);
//! * **accept back-off** when the process runs out of file descriptors, with rate-limited
//!   logging, so existing connections keep being served;
//! * **graceful shutdown with a bounded grace**.
//!
//! It contains no HTTP routing: callers pass a service per connection.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

mod activity;
mod limits;
mod shared_port;

use activity::*;
pub(crate) use limits::*;
pub(crate) use shared_port::{demux, route, AcceptFrom, Route};

/// Fds kept free for the gateway's own files (database, WAL, engine calls, logs) when
/// the total connection cap is derived from the fd limit.
const RESERVED_FDS: u64 = 256;

/// Upper bound of the derived total cap: 50,000 idle connections cost about 1 GiB of
/// buffers at the worst, which is what a small gateway host can give visitors.
const AUTO_MAX_CONNECTIONS: u64 = 50_000;

/// Lower bound of the derived total cap, for hosts with a tiny fd limit.
const MIN_AUTO_CONNECTIONS: u64 = 64;

/// How often a repeated condition (accept errors, refused connections) is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// First wait after an accept failed for lack of resources; doubles up to
/// [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// Longest wait between accept attempts while the process is out of fds.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Time an idle connection gets to finish after a graceful shutdown was started on it
/// (an HTTP/2 client reading its `GOAWAY`).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How one listener serves: caps, timeouts, TLS.
#[derive(Clone)]
pub(crate) struct ListenerConfig {
    /// Name in log lines (`public`, `api`).
    pub(crate) name: &'static str,
    /// Open connections at most, all clients together.
    pub(crate) max_connections: usize,
    /// Open connections at most from one client address (IPv6: one /64).
    pub(crate) max_connections_per_ip: usize,
    /// A connection must deliver its first complete request head (after the TLS
    /// handshake, if any) within this time of being accepted; HTTP/1 requests after the
    /// first get the same (hyper's header read timeout).
    pub(crate) header_read_timeout: Duration,
    /// A connection with no request open for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// Largest request head, in bytes.
    pub(crate) max_header_bytes: usize,
    /// Serve HTTPS with this acceptor; plain HTTP when `None`.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Refusals over a cap carry the API's JSON error shape instead of plain text.
    pub(crate) json_errors: bool,
    /// Time open connections get to finish after shutdown before they are closed.
    pub(crate) grace: Duration,
}

/// The total connection cap used when none is configured: what the fd limit leaves after
/// room for `other_connections` (the other listener's cap) and the gateway's own files,
/// within 64..=50,000.
pub(crate) fn auto_max_connections(other_connections: usize) -> usize {
    let limit = fd_limit();
    let reserve = RESERVED_FDS + other_connections as u64;
    if limit < reserve + MIN_AUTO_CONNECTIONS {
        warn!(
            limit,
            "the file descriptor limit is low for a gateway; raise it (ulimit -n, LimitNOFILE=)"
        );
    }
    limit
        .saturating_sub(reserve)
        .clamp(MIN_AUTO_CONNECTIONS, AUTO_MAX_CONNECTIONS) as usize
}

/// The soft `RLIMIT_NOFILE` of this process (`u64::MAX` when unlimited).
pub(crate) fn fd_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// The address per-client limits count by: the address itself for IPv4 (also when
/// IPv4-mapped), the /64 for IPv6, since one IPv6 host usually holds a whole /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Serves `listener` until `shutdown`: each accepted connection within the caps gets the
/// service `make_service(peer)`. Returns when every connection has ended, at most
/// `grace` after `shutdown` (the rest are closed then).
pub(crate) async fn serve<F, S, B>(
    listener: impl Into<AcceptFrom>,
    cfg: ListenerConfig,
    make_service: F,
    shutdown: CancellationToken,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut listener = listener.into();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let limiter = Arc::new(ConnLimiter::new(
        cfg.max_connections,
        cfg.max_connections_per_ip,
    ));
    info!(
        listener = cfg.name,
        max_connections = cfg.max_connections,
        max_connections_per_ip = cfg.max_connections_per_ip,
        header_read_timeout = ?cfg.header_read_timeout,
        idle_timeout = ?cfg.idle_timeout,
        "connection limits"
    );
    let shared = Arc::new(Shared {
        builder,
        cfg,
        shutdown: shutdown.clone(),
        hard_stop: CancellationToken::new(),
    });
    let conns = TaskTracker::new();
    let mut accept_errors = LogEvery::new(LOG_EVERY);
    let mut refused = LogEvery::new(LOG_EVERY);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (tcp, peer) = tokio::select! {
            // Stop accepting at once on shutdown; open connections drain below.
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    v
                }
                Err(e) => {
                    let exhausted = out_of_resources(&e);
                    if let Some(count) = accept_errors.hit(Instant::now()) {
                        warn!(
                            listener = shared.cfg.name,
                            error = %e,
                            count,
                            "accept failed{}",
                            if exhausted { "; backing off (existing connections are still served)" } else { "" }
                        );
                    }
                    if exhausted {
                        // Out of fds (or kernel memory): the pending connection stays in
                        // the backlog and accept would fail again at once. Wait, so the
                        // loop does not spin, but stay responsive to shutdown.
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    }
                    continue;
                }
            },
        };
        let guard = match limiter.try_acquire(peer.ip()) {
            Ok(g) => g,
            Err(over) => {
                if shared.cfg.tls.is_none() {
                    // Cheap courtesy for plain HTTP/1 clients: a fresh socket's send
                    // buffer is empty, so this never blocks. Then the drop closes it.
                    let _ = tcp.try_write(over.response(shared.cfg.json_errors));
                }
                drop(tcp);
                if let Some(count) = refused.hit(Instant::now()) {
                    warn!(
                        listener = shared.cfg.name,
                        client = %peer.ip(),
                        limit = over.limit(&shared.cfg),
                        count,
                        "{}", over.message()
                    );
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let svc = make_service(peer);
        conns.spawn(connection(tcp, peer, guard, svc, Arc::clone(&shared)));
    }
    // Free the port at once: a restarted gateway can bind it while this one drains.
    drop(listener);
    conns.close();
    // Graceful, but bounded: a client that never hangs up cannot hold a stop.
    if tokio::time::timeout(shared.cfg.grace, conns.wait())
        .await
        .is_err()
    {
        warn!(
            listener = shared.cfg.name,
            open = conns.len(),
            grace = ?shared.cfg.grace,
            "connections still open after the shutdown grace; closing them"
        );
        shared.hard_stop.cancel();
        conns.wait().await;
    }
}

/// What every connection task of one listener shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    cfg: ListenerConfig,
    shutdown: CancellationToken,
    /// Fires when the shutdown grace is over: remaining connections are dropped.
    hard_stop: CancellationToken,
}

/// Serves one accepted connection: TLS handshake if configured, then HTTP with the
/// first-request and idle deadlines.
async fn connection<S, B>(
    tcp: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    svc: S,
    shared: Arc<Shared>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let first_request_by = Instant::now() + shared.cfg.header_read_timeout;
    let Some(acceptor) = shared.cfg.tls.clone() else {
        return drive(
            Guarded::new(tcp, guard),
            peer,
            svc,
            first_request_by,
            &shared,
        )
        .await;
    };
    let tls = tokio::select! {
        // The handshake counts against the first-request deadline: a client that never
        // finishes it must not hold a socket.
        r = tokio::time::timeout_at(first_request_by, acceptor.accept(tcp)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(listener = shared.cfg.name, %peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(listener = shared.cfg.name, %peer, "TLS handshake timed out");
                return;
            }
        },
        // Nothing was served yet, so there is nothing to drain.
        _ = shared.shutdown.cancelled() => return,
    };
    drive(
        Guarded::new(tls, guard),
        peer,
        svc,
        first_request_by,
        &shared,
    )
    .await;
}

/// Runs hyper on `io` until the connection ends, a deadline passes or the gateway stops.
async fn drive<I, S, B>(io: I, peer: SocketAddr, svc: S, first_request_by: Instant, shared: &Shared)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let activity = Arc::new(Activity::new());
    let svc = Tracked {
        inner: svc,
        activity: Arc::clone(&activity),
    };
    let conn = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    tokio::pin!(conn);
    let idle_timeout = shared.cfg.idle_timeout;
    let mut closing_by: Option<Instant> = None;
    loop {
        let idle_at = activity.idle_deadline(first_request_by, idle_timeout);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(listener = shared.cfg.name, %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            // A request ended (or began): the idle deadline moved, compute it again.
            _ = activity.changed.notified() => {}
            // Idle too long (or no first request in time). Checked again on waking: a
            // request may have begun at the last moment.
            _ = sleep_until(idle_at.unwrap_or(first_request_by)), if idle_at.is_some() && closing_by.is_none() => {
                if activity.idle_deadline(first_request_by, idle_timeout).is_some_and(|d| d <= Instant::now()) {
                    if !activity.served_any() {
                        debug!(listener = shared.cfg.name, %peer, "no request within the header read timeout; closing");
                        return;
                    }
                    debug!(listener = shared.cfg.name, %peer, "idle connection; closing");
                    conn.as_mut().graceful_shutdown();
                    closing_by = Some(Instant::now() + IDLE_CLOSE_GRACE);
                }
            }
            // Gateway stopping: finish open requests (bounded by the listener's grace,
            // after which `hard_stop` fires), take no new ones.
            _ = shared.shutdown.cancelled(), if closing_by.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing_by = Some(Instant::now() + shared.cfg.grace);
            }
            _ = sleep_until(closing_by.unwrap_or(first_request_by)), if closing_by.is_some() => return,
            // The shutdown grace is over: drop the connection.
            _ = shared.hard_stop.cancelled() => return,
        }
    }
}

/// Whether an accept error means the process or kernel ran out of something, so that
/// retrying at once would fail again.
fn out_of_resources(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_group_ipv6_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn caps_count_and_release() {
        let l = Arc::new(ConnLimiter::new(3, 2));
        let ip1: IpAddr = "192.0.2.1".parse().unwrap();
        let ip2: IpAddr = "192.0.2.2".parse().unwrap();
        let a = l.try_acquire(ip1).unwrap();
        let _b = l.try_acquire(ip1).unwrap();
        assert_eq!(l.try_acquire(ip1).err(), Some(OverLimit::PerIp));
        let _c = l.try_acquire(ip2).unwrap();
        assert_eq!(l.try_acquire(ip2).err(), Some(OverLimit::Total));
        drop(a);
        let _d = l.try_acquire(ip1).unwrap();
        assert_eq!(l.total.load(Ordering::Relaxed), 3);
        drop((_b, _c, _d));
        assert_eq!(l.total.load(Ordering::Relaxed), 0);
        assert!(l.per_ip.is_empty(), "entries of closed clients are removed");
    }

    #[test]
    fn log_every_counts_between_lines() {
        let mut l = LogEvery::new(Duration::from_secs(5));
        let t = Instant::now();
        assert_eq!(l.hit(t), Some(1));
        for i in 0..99 {
            assert_eq!(l.hit(t + Duration::from_millis(i * 40)), None);
        }
        assert_eq!(l.hit(t + Duration::from_secs(5)), Some(100));
    }

    #[test]
    fn canned_responses_have_exact_lengths() {
        for (o, json) in [
            (OverLimit::Total, false),
            (OverLimit::PerIp, false),
            (OverLimit::Total, true),
            (OverLimit::PerIp, true),
        ] {
            let r = std::str::from_utf8(o.response(json)).unwrap();
            let (head, body) = r.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len(), "{r}");
            if json {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(v["error"]["code"], "too_many_connections");
            }
        }
    }
}
