//! One TCP port for the tunnel's TLS fallback and for HTTPS visitors, told apart by the
//! ALPN protocols of the ClientHello.
//!
//! Devices that cannot use UDP and visitors' browsers both expect TCP 443. When
//! `--https-listen` is the tunnel's TCP address, the gateway binds that port once and
//! [`demux`] reads (peeks, without consuming) each connection's ClientHello: a connection
//! offering the tunnel or provisioning ALPN goes to the tunnel, any other TLS connection
//! to the HTTPS router. Both then run their own TLS handshake, caps and timeouts on the
//! untouched stream, exactly as on a port of their own. Bytes that are not a TLS
//! ClientHello, and connections that send nothing in time, are closed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{ConnLimiter, LogEvery};

/// Time a connection gets to send its whole ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections whose ClientHello is still awaited, in all and from one address (IPv6: one
/// /64); more are closed at once.
const MAX_PENDING: usize = 4096;
const MAX_PENDING_PER_IP: usize = 256;

/// Largest ClientHello read. Real ones are a few hundred bytes to ~2 KiB (post-quantum key
/// shares); a TLS record is at most 16 KiB plus its header.
const MAX_HELLO: usize = 16 * 1024 + 5;

/// Wait between looks at a ClientHello that arrived only in part.
const PEEK_AGAIN: Duration = Duration::from_millis(5);

/// Connections handed on from a shared port, queued at most this many per consumer.
const HANDOFF_QUEUE: usize = 256;

/// Where a listener's connections come from: its own socket, or a shared port's
/// [`demux`].
pub(crate) enum AcceptFrom {
    Listener(TcpListener),
    Handed(mpsc::Receiver<(TcpStream, SocketAddr)>),
}

impl From<TcpListener> for AcceptFrom {
    fn from(l: TcpListener) -> Self {
        Self::Listener(l)
    }
}

impl AcceptFrom {
    /// The next connection. A shared port that stopped hands nothing more: this then
    /// waits forever, and the caller's shutdown ends its loop.
    pub(crate) async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        match self {
            Self::Listener(l) => l.accept().await,
            Self::Handed(rx) => match rx.recv().await {
                Some(v) => Ok(v),
                None => std::future::pending().await,
            },
        }
    }
}

/// Whom a ClientHello is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Tunnel,
    Https,
}

/// Why a connection was closed before it was handed on.
#[derive(Debug, thiserror::Error)]
enum PeekError {
    #[error("closed before a ClientHello")]
    Closed,
    #[error("not a TLS ClientHello: {0}")]
    NotTls(rustls::Error),
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
    #[error("no complete ClientHello within {HELLO_TIMEOUT:?}")]
    Timeout,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Whom `alpn` (the protocols a ClientHello offers) is for: the tunnel when it offers
/// one of the tunnel's, HTTPS otherwise (browsers offer h2 and http/1.1, some clients
/// nothing).
pub(crate) fn route<'a>(mut alpn: Option<impl Iterator<Item = &'a [u8]>>) -> Route {
    let tunnel = alpn
        .as_mut()
        .is_some_and(|offered| offered.any(|p| p == certs::ALPN || p == certs::PROVISION_ALPN));
    if tunnel {
        Route::Tunnel
    } else {
        Route::Https
    }
}

/// The route of the ClientHello in `bytes`, `None` while it is incomplete.
fn route_of(bytes: &[u8]) -> Result<Option<Route>, PeekError> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            // The acceptor's buffer is full: more than a ClientHello.
            Err(_) => return Err(PeekError::TooLarge),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Ok(Some(route(accepted.client_hello().alpn()))),
        Ok(None) => Ok(None),
        Err((e, _alert)) => Err(PeekError::NotTls(e)),
    }
}

/// Peeks at `tcp` until its ClientHello is complete, and says whom it is for. Nothing
/// is consumed: the consumer's TLS handshake reads the same bytes again.
async fn peek_route(tcp: &TcpStream) -> Result<Route, PeekError> {
    let mut buf = vec![0u8; MAX_HELLO];
    let look = async {
        loop {
            let n = tcp.peek(&mut buf).await?;
            if n == 0 {
                return Err(PeekError::Closed);
            }
            if let Some(r) = route_of(&buf[..n])? {
                return Ok(r);
            }
            if n == buf.len() {
                return Err(PeekError::TooLarge);
            }
            // Part of the ClientHello is here; peek returns at once while any data is
            // buffered, so wait a little for the rest.
            tokio::time::sleep(PEEK_AGAIN).await;
        }
    };
    tokio::time::timeout(HELLO_TIMEOUT, look)
        .await
        .unwrap_or(Err(PeekError::Timeout))
}

/// The two consumers of a shared port, fed by [`demux`].
pub(crate) struct Split {
    pub(crate) tunnel: AcceptFrom,
    pub(crate) https: AcceptFrom,
}

/// Splits `listener` between the tunnel and HTTPS: returns their sources, and serves the
/// port on `tasks` until `shutdown`.
pub(crate) fn demux(
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> io::Result<Split> {
    let local = listener.local_addr()?;
    let (tunnel_tx, tunnel_rx) = mpsc::channel(HANDOFF_QUEUE);
    let (https_tx, https_rx) = mpsc::channel(HANDOFF_QUEUE);
    info!(%local, "the tunnel's TCP fallback and HTTPS share this port (told apart by ALPN)");
    tasks.spawn(run(listener, tunnel_tx, https_tx, shutdown, tasks.clone()));
    Ok(Split {
        tunnel: AcceptFrom::Handed(tunnel_rx),
        https: AcceptFrom::Handed(https_rx),
    })
}

type Handoff = mpsc::Sender<(TcpStream, SocketAddr)>;

async fn run(
    listener: TcpListener,
    tunnel: Handoff,
    https: Handoff,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let pending = Arc::new(ConnLimiter::new(MAX_PENDING, MAX_PENDING_PER_IP));
    let mut accept_errors = LogEvery::new(Duration::from_secs(5));
    let mut refused = LogEvery::new(Duration::from_secs(5));
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    if let Some(count) = accept_errors.hit(tokio::time::Instant::now()) {
                        warn!(error = %e, count, "shared TCP port: accept failed; retrying in 100 ms");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match pending.try_acquire(remote.ip()) {
            Ok(s) => s,
            Err(over) => {
                drop(tcp);
                if let Some(count) = refused.hit(tokio::time::Instant::now()) {
                    warn!(%remote, count, "shared TCP port: {}", over.message());
                }
                continue;
            }
        };
        let (tunnel, https, shutdown) = (tunnel.clone(), https.clone(), shutdown.clone());
        tasks.spawn(async move {
            let routed = tokio::select! {
                r = peek_route(&tcp) => r,
                _ = shutdown.cancelled() => return,
            };
            drop(slot);
            let to = match routed {
                Ok(Route::Tunnel) => &tunnel,
                Ok(Route::Https) => &https,
                Err(e) => {
                    debug!(%remote, error = %e, "shared TCP port: closing the connection");
                    return;
                }
            };
            tokio::select! {
                _ = to.send((tcp, remote)) => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunnel_alpns_go_to_the_tunnel_and_everything_else_to_https() {
        let offer = |list: &[&'static [u8]]| route(Some(list.iter().copied()));
        assert_eq!(offer(&[certs::ALPN]), Route::Tunnel);
        assert_eq!(offer(&[b"h2", certs::PROVISION_ALPN]), Route::Tunnel);
        assert_eq!(offer(&[b"h2", b"http/1.1"]), Route::Https);
        assert_eq!(offer(&[]), Route::Https);
        assert_eq!(route(None::<std::vec::IntoIter<&[u8]>>), Route::Https);
    }

    #[test]
    fn bytes_that_are_not_tls_are_refused_and_a_partial_hello_waits() {
        assert!(matches!(
            route_of(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err(PeekError::NotTls(_))
        ));
        // A handshake record header announcing 512 bytes, and only part of them.
        let mut partial = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        partial.extend_from_slice(&[0x03, 0x03]);
        assert!(matches!(route_of(&partial), Ok(None)));
    }
}
