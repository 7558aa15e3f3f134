//! TLS 1.3 over TCP, with HTTP/2 (the `h2` crate) as the stream multiplexer.
//!
//! The agent dials: it is the TCP and TLS client, and presents its device certificate as
//! on QUIC (the same rustls configurations serve both transports). After the TLS
//! handshake the roles turn around: the **gateway is the HTTP/2 client** and the agent
//! the HTTP/2 server, as in cloudflared's HTTP/2 mode, where the edge opens one stream per
//! request. Every tunnel stream is one HTTP/2 stream: the request body carries the
//! gateway-to-agent bytes, the response body the agent-to-gateway bytes, and HTTP/2's
//! per-stream flow control keeps a stuck stream from blocking the others.
//!
//! HTTP/2 lets only its client open streams, but both ends of the tunnel open them (the
//! gateway: HTTP and terminal streams; the agent: control, logs, provisioning). The
//! `:path` of each request says what it is:
//!
//! * `/m`, **meta**: opened first by the gateway and held for the connection's life. Both
//!   directions carry close messages (`[1][code: u64][len: u16][reason]`), so a close
//!   says why, with an [`AppErrorCode`](protocol::AppErrorCode), as QUIC's
//!   `CONNECTION_CLOSE` does.
//! * `/s`, a **gateway-opened stream**: the agent answers `200` at once (headers only);
//!   the two bodies are the stream.
//! * `/r`, a **reverse stream**: the gateway keeps [`REVERSE_POOL`] of them open ahead of
//!   time. When the agent opens a stream it takes one and answers it; on the gateway the
//!   answer turns it into an accepted stream, and the gateway opens a replacement (up to
//!   its limit of agent-opened streams). An agent-side open therefore costs no round trip.
//!
//! Stream resets carry the application code as the HTTP/2 error code plus
//! [`APP_CODE_BASE`], so our codes never collide with HTTP/2's own. Keep-alive is HTTP/2
//! `PING` every `keep_alive`; a peer that leaves a ping unanswered for `idle_timeout` is
//! declared dead, as QUIC's idle timeout does. The ping's round trip is the RTT the stats
//! report.
//!
//! One difference from QUIC: HTTP/2 has no "stop sending" of its own. `stop` after this
//! side finished sending just drops what arrives (the peer learns it when the stream is
//! released); before that, it resets the whole stream.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::Reason;
use http::{Method, Request, Response, StatusCode};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    ConnectError, Connection, ConnectionError, ReadError, RecvStream, SendStream, WriteError,
};

mod connection;
mod driver;
mod stream;

use connection::*;
use driver::*;
use stream::*;

pub use connection::TlsTcpConnection;
pub use stream::{TcpRecvStream, TcpSendStream};

/// Silence after which the kernel starts TCP keep-alive probes (a fallback: the HTTP/2
/// pings find dead peers first).
const KERNEL_KEEPALIVE_TIME: Duration = Duration::from_secs(120);
/// Between the kernel's TCP keep-alive probes.
const KERNEL_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Reverse streams the gateway keeps open ahead of the agent's opens.
pub const REVERSE_POOL: usize = 2;
/// Added to an application code when it travels as an HTTP/2 error code.
pub const APP_CODE_BASE: u32 = 0x0100_0000;
/// How long a closing side waits for its peer to read the close message and hang up.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Longest close reason sent.
const MAX_REASON: usize = 1024;

const PATH_META: &str = "/m";
const PATH_STREAM: &str = "/s";
const PATH_REVERSE: &str = "/r";

/// Settings of the multiplexer. Both sides use the same shape.
#[derive(Debug, Clone)]
pub struct MuxConfig {
    /// Interval of keep-alive pings. Default is 5 s.
    pub keep_alive: Duration,
    /// A ping unanswered for this long ends the connection. Default is 15 s.
    pub idle_timeout: Duration,
    /// Receive window per stream. Default is 4 MiB (as on QUIC).
    pub stream_window: u32,
    /// Receive window of the whole connection. Default is 32 MiB (as on QUIC).
    pub connection_window: u32,
    /// Streams the peer may have open at once (the agent: gateway-opened ones; the
    /// gateway: agent-opened ones). Default is 4096.
    pub max_incoming_streams: u32,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            stream_window: 4 * 1024 * 1024,
            connection_window: 32 * 1024 * 1024,
            max_incoming_streams: 4096,
        }
    }
}

type TlsServerStream = tokio_rustls::server::TlsStream<TcpStream>;
type TlsClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Sets the TCP options a tunnel connection needs: no Nagle delay, and kernel keep-alive
/// plus a user timeout so a dead peer with unacknowledged data is noticed within
/// `idle_timeout`.
pub fn tune_socket(tcp: &TcpStream, cfg: &MuxConfig) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    // The HTTP/2 pings find a dead peer; the kernel's keep-alive is only the fallback
    // for a process that stopped pinging. It starts after two minutes of silence, past
    // the slowest cadence of either side (60 s on a metered link), so an idle tunnel
    // carries no probes of its own (at the pings' 5 s they cost 24 packets a minute).
    let ka = socket2::TcpKeepalive::new()
        .with_time(KERNEL_KEEPALIVE_TIME.max(cfg.keep_alive))
        .with_interval(KERNEL_KEEPALIVE_INTERVAL);
    let _ = sock.set_tcp_keepalive(&ka);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = sock.set_tcp_user_timeout(Some(cfg.idle_timeout));
}

/// The agent's side: completes TLS on `tcp` (already connected, directly or through a
/// proxy) and the HTTP/2 handshake as its server.
pub async fn connect(
    tcp: TcpStream,
    tls: Arc<rustls::ClientConfig>,
    server_name: &str,
    cfg: &MuxConfig,
) -> Result<Connection, ConnectError> {
    tune_socket(&tcp, cfg);
    let remote = tcp.peer_addr()?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| ConnectError::Tls(format!("server name {server_name:?}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer_certs = session
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
    serve_agent(tls, remote, alpn, peer_certs, cfg).await
}

/// The gateway's side of the TLS handshake on an accepted TCP connection. `config`
/// picks the server configuration from the ClientHello (by ALPN, so one port can serve
/// the tunnel, provisioning and, later, HTTPS visitors); `None` refuses the connection.
pub async fn accept_tls(
    tcp: TcpStream,
    config: impl FnOnce(&rustls::server::ClientHello<'_>) -> Option<Arc<rustls::ServerConfig>>,
) -> Result<TlsServerStream, ConnectError> {
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = acceptor
        .await
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let Some(cfg) = config(&start.client_hello()) else {
        return Err(ConnectError::NoAlpn);
    };
    start
        .into_stream(cfg)
        .await
        .map_err(|e| ConnectError::Tls(e.to_string()))
}

/// The gateway's side after TLS: the HTTP/2 handshake as its client, giving a tunnel
/// connection.
pub async fn accept(tls: TlsServerStream, cfg: &MuxConfig) -> Result<Connection, ConnectError> {
    let (tcp, session) = tls.get_ref();
    tune_socket(tcp, cfg);
    let remote = tcp.peer_addr()?;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer_certs = session
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
    let (send_request, conn) = h2::client::Builder::new()
        .initial_window_size(cfg.stream_window)
        .initial_connection_window_size(cfg.connection_window)
        .enable_push(false)
        // Streams the agent asks for (reverse streams) are ours to limit; the agent's
        // SETTINGS limit ours.
        .max_concurrent_reset_streams(1024)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| ConnectError::Mux(e.to_string()))?;
    let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::new(
        remote,
        alpn,
        peer_certs,
        Opener::Gateway(Mutex::new(send_request.clone())),
        incoming_rx,
    ));
    // The meta stream goes first, before any user can close the connection.
    let mut send_request = send_request;
    let (meta_resp, meta_send) = send_request
        .send_request(request(PATH_META), false)
        .map_err(|e| ConnectError::Mux(e.to_string()))?;
    *shared.meta.lock().expect("meta lock") = Some(meta_send);
    {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Ok(resp) = meta_resp.await {
                read_meta(shared, resp.into_body()).await;
            }
        });
    }
    let handle = Arc::new(Handle {
        shared: Arc::clone(&shared),
    });
    let driver = GatewayDriver {
        shared,
        handle: Arc::downgrade(&handle),
        send_request,
        incoming: incoming_tx,
        max_agent_streams: cfg.max_incoming_streams as usize,
        live: Arc::new(AtomicUsize::new(0)),
        replenish: Arc::new(tokio::sync::Notify::new()),
    };
    tokio::spawn(driver.run(conn, cfg.clone()));
    Ok(Connection::TlsTcp(TlsTcpConnection { handle }))
}

async fn serve_agent(
    tls: TlsClientStream,
    remote: SocketAddr,
    alpn: Option<Vec<u8>>,
    peer_certs: Option<Vec<CertificateDer<'static>>>,
    cfg: &MuxConfig,
) -> Result<Connection, ConnectError> {
    let mut conn = h2::server::Builder::new()
        .initial_window_size(cfg.stream_window)
        .initial_connection_window_size(cfg.connection_window)
        // Gateway-opened streams, plus the meta stream and the reverse pool (the gateway
        // limits those itself).
        .max_concurrent_streams(
            cfg.max_incoming_streams
                .saturating_add(cfg.max_incoming_streams.min(1024))
                .saturating_add(1 + REVERSE_POOL as u32),
        )
        .max_concurrent_reset_streams(1024)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| ConnectError::Mux(e.to_string()))?;
    // The gateway opens the meta stream first; until it is here, a close could not say
    // why.
    let (meta_body, meta_send) = match conn.accept().await {
        Some(Ok((req, mut respond))) if req.uri().path() == PATH_META => {
            let send = respond
                .send_response(ok_response(), false)
                .map_err(|e| ConnectError::Mux(e.to_string()))?;
            (req.into_body(), send)
        }
        Some(Ok(_)) => {
            return Err(ConnectError::Mux(
                "the peer did not open the meta stream first".into(),
            ))
        }
        Some(Err(e)) => return Err(ConnectError::Mux(e.to_string())),
        None => return Err(ConnectError::Mux("the peer closed the connection".into())),
    };
    let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
    let (reverse_tx, reverse_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::new(
        remote,
        alpn,
        peer_certs,
        Opener::Agent(tokio::sync::Mutex::new(reverse_rx)),
        incoming_rx,
    ));
    *shared.meta.lock().expect("meta lock") = Some(meta_send);
    tokio::spawn(read_meta(Arc::clone(&shared), meta_body));
    let handle = Arc::new(Handle {
        shared: Arc::clone(&shared),
    });
    tokio::spawn(agent_driver(
        shared,
        Arc::downgrade(&handle),
        conn,
        incoming_tx,
        reverse_tx,
        cfg.clone(),
    ));
    Ok(Connection::TlsTcp(TlsTcpConnection { handle }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_messages_round_trip_and_garbage_is_refused() {
        let mut b = BytesMut::from(&close_message(4, b"replaced")[..]);
        let (code, reason) = parse_close(&mut b).unwrap().unwrap();
        assert_eq!((code, &reason[..]), (4, &b"replaced"[..]));
        assert!(b.is_empty());
        let full = close_message(9, b"x");
        let mut half = BytesMut::from(&full[..5]);
        assert!(parse_close(&mut half).is_none());
        let mut bad = BytesMut::from(&[7u8, 0, 0][..]);
        assert!(parse_close(&mut bad).unwrap().is_err());
    }

    #[test]
    fn reset_codes_do_not_collide_with_http2_codes() {
        for c in protocol::AppErrorCode::ALL {
            assert_eq!(from_reason(to_reason(c.as_u32())), u64::from(c.as_u32()));
        }
        assert_eq!(from_reason(Reason::CANCEL), 0);
        assert_eq!(from_reason(Reason::PROTOCOL_ERROR), 1);
    }
}
