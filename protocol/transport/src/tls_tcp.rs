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
    let ka = socket2::TcpKeepalive::new()
        .with_time(cfg.keep_alive)
        .with_interval(cfg.keep_alive);
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

/// A tunnel connection over TLS/TCP (see the module docs). A cheap handle: as on quinn,
/// the connection closes (code 0) once every handle and every stream of it is dropped.
#[derive(Clone)]
pub struct TlsTcpConnection {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for TlsTcpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTcpConnection")
            .field("remote", &self.handle.shared.remote)
            .finish_non_exhaustive()
    }
}

/// What keeps a connection open: held by every [`TlsTcpConnection`] clone and every
/// stream; the drivers hold it weakly.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(0, b"");
    }
}

type ReverseFut = Pin<
    Box<
        dyn Future<
                Output = (
                    Result<Response<h2::RecvStream>, h2::Error>,
                    h2::SendStream<Bytes>,
                ),
            > + Send,
    >,
>;

type Pair = (SendStream, RecvStream);
type ReverseRequest = (h2::RecvStream, h2::server::SendResponse<Bytes>);

enum Opener {
    /// The gateway opens `/s` requests.
    Gateway(Mutex<h2::client::SendRequest<Bytes>>),
    /// The agent answers reverse requests the gateway opened ahead of time.
    Agent(tokio::sync::Mutex<mpsc::UnboundedReceiver<ReverseRequest>>),
}

struct Shared {
    remote: SocketAddr,
    alpn: Option<Vec<u8>>,
    peer_certs: Option<Vec<CertificateDer<'static>>>,
    reason: Mutex<Option<ConnectionError>>,
    /// Fires once `reason` is set: the connection is over for every user.
    done: CancellationToken,
    /// Fires on a local close: the driver lingers so the close message goes out.
    closing: CancellationToken,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pair>>,
    opener: Opener,
    meta: Mutex<Option<h2::SendStream<Bytes>>>,
    rtt_micros: AtomicU64,
}

impl Shared {
    fn new(
        remote: SocketAddr,
        alpn: Option<Vec<u8>>,
        peer_certs: Option<Vec<CertificateDer<'static>>>,
        opener: Opener,
        incoming: mpsc::UnboundedReceiver<Pair>,
    ) -> Self {
        Self {
            remote,
            alpn,
            peer_certs,
            reason: Mutex::new(None),
            done: CancellationToken::new(),
            closing: CancellationToken::new(),
            incoming: tokio::sync::Mutex::new(incoming),
            opener,
            meta: Mutex::new(None),
            rtt_micros: AtomicU64::new(0),
        }
    }

    /// Records why the connection ended (the first reason wins) and wakes every user.
    fn end(&self, reason: ConnectionError) {
        {
            let mut r = self.reason.lock().expect("reason lock");
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.done.cancel();
    }

    fn reason(&self) -> ConnectionError {
        self.reason
            .lock()
            .expect("reason lock")
            .clone()
            .unwrap_or(ConnectionError::Reset)
    }

    fn ended(&self) -> Option<ConnectionError> {
        self.done.is_cancelled().then(|| self.reason())
    }

    fn close(&self, code: u64, reason: &[u8]) {
        {
            let mut r = self.reason.lock().expect("reason lock");
            if r.is_some() {
                return;
            }
            *r = Some(ConnectionError::LocallyClosed);
        }
        if let Some(meta) = self.meta.lock().expect("meta lock").as_mut() {
            let _ = meta.send_data(close_message(code, reason), true);
        }
        // The driver keeps the connection up until the peer has read the close message
        // and hung up (or `CLOSE_LINGER` passes).
        self.closing.cancel();
        self.done.cancel();
    }
}

impl TlsTcpConnection {
    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    pub(crate) async fn open_bi(&self) -> Result<Pair, ConnectionError> {
        if let Some(r) = self.shared().ended() {
            return Err(r);
        }
        match &self.shared().opener {
            Opener::Gateway(sr) => {
                let sr = sr.lock().expect("send_request lock").clone();
                let mut sr = tokio::select! {
                    // A stream slot frees up (the agent's SETTINGS limit the gateway).
                    r = sr.ready() => r.map_err(|e| self.conn_error(&e))?,
                    _ = self.shared().done.cancelled() => return Err(self.shared().reason()),
                };
                let (resp, send) = sr
                    .send_request(request(PATH_STREAM), false)
                    .map_err(|e| self.conn_error(&e))?;
                Ok(pair(&self.handle, send, RecvState::Pending(resp), None))
            }
            Opener::Agent(pool) => {
                let mut pool = pool.lock().await;
                let (body, mut respond) = tokio::select! {
                    // The gateway replenishes the pool as reverse streams are taken.
                    r = pool.recv() => r.ok_or_else(|| self.shared().reason())?,
                    _ = self.shared().done.cancelled() => return Err(self.shared().reason()),
                };
                drop(pool);
                let send = respond
                    .send_response(ok_response(), false)
                    .map_err(|e| self.conn_error(&e))?;
                Ok(pair(&self.handle, send, RecvState::Open(body), None))
            }
        }
    }

    pub(crate) async fn accept_bi(&self) -> Result<Pair, ConnectionError> {
        let mut incoming = self.shared().incoming.lock().await;
        tokio::select! {
            // Streams already delivered win over the connection's end, as on QUIC.
            biased;
            p = incoming.recv() => p.ok_or_else(|| self.shared().reason()),
            _ = self.shared().done.cancelled() => Err(self.shared().reason()),
        }
    }

    pub(crate) fn close(&self, code: u64, reason: &[u8]) {
        self.handle.shared.close(code, reason);
    }

    pub(crate) fn close_reason(&self) -> Option<ConnectionError> {
        self.shared().ended()
    }

    pub(crate) async fn closed(&self) -> ConnectionError {
        self.shared().done.cancelled().await;
        self.shared().reason()
    }

    pub(crate) fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.shared().peer_certs.clone()
    }

    pub(crate) fn alpn(&self) -> Option<Vec<u8>> {
        self.shared().alpn.clone()
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.shared().remote
    }

    pub(crate) fn rtt(&self) -> Duration {
        Duration::from_micros(self.shared().rtt_micros.load(Ordering::Relaxed))
    }

    fn conn_error(&self, e: &h2::Error) -> ConnectionError {
        if let Some(r) = self.shared().ended() {
            return r;
        }
        connection_error(e)
    }
}

fn request(path: &'static str) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = Method::POST;
    *req.uri_mut() = http::Uri::from_static(match path {
        PATH_META => "https://tunnel/m",
        PATH_STREAM => "https://tunnel/s",
        _ => "https://tunnel/r",
    });
    req
}

fn ok_response() -> Response<()> {
    Response::new(())
}

fn close_message(code: u64, reason: &[u8]) -> Bytes {
    let reason = &reason[..reason.len().min(MAX_REASON)];
    let mut b = BytesMut::with_capacity(11 + reason.len());
    b.put_u8(1);
    b.put_u64(code);
    b.put_u16(reason.len() as u16);
    b.put_slice(reason);
    b.freeze()
}

/// Parses one close message from the front of `buf`; `None` while incomplete.
fn parse_close(buf: &mut BytesMut) -> Option<Result<(u64, Bytes), ()>> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] != 1 {
        return Some(Err(()));
    }
    if buf.len() < 11 {
        return None;
    }
    let len = u16::from_be_bytes([buf[9], buf[10]]) as usize;
    if len > MAX_REASON {
        return Some(Err(()));
    }
    if buf.len() < 11 + len {
        return None;
    }
    buf.advance(1);
    let code = buf.get_u64();
    buf.advance(2);
    Some(Ok((code, buf.split_to(len).freeze())))
}

/// Reads the peer's meta stream; a close message ends the connection with its code.
async fn read_meta(shared: Arc<Shared>, mut body: h2::RecvStream) {
    let mut buf = BytesMut::new();
    loop {
        let chunk = tokio::select! {
            c = body.data() => c,
            _ = shared.done.cancelled() => return,
        };
        match chunk {
            Some(Ok(data)) => {
                let _ = body.flow_control().release_capacity(data.len());
                buf.extend_from_slice(&data);
                match parse_close(&mut buf) {
                    Some(Ok((code, reason))) => {
                        shared.end(ConnectionError::ApplicationClosed { code, reason });
                        return;
                    }
                    Some(Err(())) => {
                        shared.end(ConnectionError::Transport(
                            "malformed message on the meta stream".into(),
                        ));
                        return;
                    }
                    None => {}
                }
            }
            // The connection's end is reported by the driver.
            Some(Err(_)) | None => return,
        }
    }
}

/// Maps a connection-level h2 error.
fn connection_error(e: &h2::Error) -> ConnectionError {
    if e.is_io() {
        ConnectionError::Reset
    } else if e.is_go_away() {
        ConnectionError::Transport(format!("peer went away: {e}"))
    } else {
        ConnectionError::Transport(e.to_string())
    }
}

/// Maps an application code to the HTTP/2 error code that carries it.
fn to_reason(code: u32) -> Reason {
    Reason::from(APP_CODE_BASE.saturating_add(code))
}

/// Maps an HTTP/2 error code back: ours as sent, HTTP/2's own "the peer let go of the
/// stream" codes as `NoError` (quinn reports a dropped peer stream as code 0 too), the
/// rest as a protocol error.
fn from_reason(r: Reason) -> u64 {
    let v = u32::from(r);
    if v >= APP_CODE_BASE {
        return u64::from(v - APP_CODE_BASE);
    }
    if r == Reason::NO_ERROR || r == Reason::CANCEL || r == Reason::STREAM_CLOSED {
        u64::from(protocol::AppErrorCode::NoError.as_u32())
    } else if r == Reason::REFUSED_STREAM {
        u64::from(protocol::AppErrorCode::UnsupportedStream.as_u32())
    } else {
        u64::from(protocol::AppErrorCode::ProtocolError.as_u32())
    }
}

/// Keep-alive: pings every `keep_alive`; returns once a ping goes unanswered for
/// `idle_timeout` (or pings cannot be sent: the connection is ending anyway).
async fn keep_alive(
    mut pp: Option<h2::PingPong>,
    shared: Arc<Shared>,
    cfg: MuxConfig,
) -> ConnectionError {
    let Some(pp) = pp.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(cfg.keep_alive).await;
        let start = Instant::now();
        match tokio::time::timeout(cfg.idle_timeout, pp.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {
                let rtt = start.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
                shared.rtt_micros.store(rtt, Ordering::Relaxed);
            }
            // The connection failed; its driver reports why.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return ConnectionError::TimedOut,
        }
    }
}

/// The agent's connection task: accepts the gateway's requests and sorts them by path.
async fn agent_driver(
    shared: Arc<Shared>,
    handle: Weak<Handle>,
    mut conn: h2::server::Connection<TlsClientStream, Bytes>,
    incoming: mpsc::UnboundedSender<Pair>,
    reverse: mpsc::UnboundedSender<ReverseRequest>,
    cfg: MuxConfig,
) {
    let ka = keep_alive(conn.ping_pong(), Arc::clone(&shared), cfg);
    tokio::pin!(ka);
    loop {
        tokio::select! {
            r = conn.accept() => match r {
                Some(Ok((req, mut respond))) => {
                    let (parts, body) = req.into_parts();
                    match parts.uri.path() {
                        PATH_STREAM => match (respond.send_response(ok_response(), false), handle.upgrade()) {
                            (Ok(send), Some(h)) => {
                                let _ = incoming.send(pair(&h, send, RecvState::Open(body), None));
                            }
                            (Ok(mut send), None) => send.send_reset(Reason::REFUSED_STREAM),
                            (Err(e), _) => debug!(error = %e, "cannot answer a gateway stream"),
                        },
                        PATH_REVERSE => {
                            let _ = reverse.send((body, respond));
                        }
                        other => {
                            debug!(path = other, "refusing a stream of unknown kind");
                            respond.send_reset(Reason::REFUSED_STREAM);
                        }
                    }
                }
                Some(Err(e)) => {
                    shared.end(connection_error(&e));
                    break;
                }
                // The gateway closed the connection without a close message.
                None => {
                    shared.end(ConnectionError::Reset);
                    break;
                }
            },
            reason = &mut ka => {
                shared.end(reason);
                break;
            }
            // A local close (which also fires `done`): linger so the close message goes
            // out; the peer's close message (`done` alone): hang up at once.
            _ = shared.done.cancelled() => {
                if shared.closing.is_cancelled() {
                    linger(std::future::poll_fn(|cx| conn.poll_closed(cx))).await;
                }
                break;
            }
        }
    }
    // Dropping the connection closes the socket; every stream fails with the reason.
}

/// Drives a closing connection until the peer hangs up or the linger time passes.
async fn linger<F: std::future::Future>(drive: F) {
    let _ = tokio::time::timeout(CLOSE_LINGER, drive).await;
}

/// The gateway's connection task: drives h2, holds the meta stream, keeps the reverse
/// pool full and hands answered reverse streams to `accept_bi`.
struct GatewayDriver {
    shared: Arc<Shared>,
    handle: Weak<Handle>,
    send_request: h2::client::SendRequest<Bytes>,
    incoming: mpsc::UnboundedSender<Pair>,
    max_agent_streams: usize,
    /// Agent-opened streams alive now (decremented when both halves are dropped).
    live: Arc<AtomicUsize>,
    replenish: Arc<tokio::sync::Notify>,
}

impl GatewayDriver {
    async fn run(mut self, conn: h2::client::Connection<TlsServerStream, Bytes>, cfg: MuxConfig) {
        let mut conn = conn;
        let ka = keep_alive(conn.ping_pong(), Arc::clone(&self.shared), cfg);
        tokio::pin!(ka);
        let mut pending: FuturesUnordered<ReverseFut> = FuturesUnordered::new();
        self.fill(&mut pending);
        loop {
            tokio::select! {
                r = &mut conn => {
                    self.shared.end(match r {
                        Ok(()) => ConnectionError::Reset,
                        Err(e) => connection_error(&e),
                    });
                    break;
                }
                Some((resp, send)) = pending.next(), if !pending.is_empty() => {
                    if let (Ok(resp), Some(h)) = (resp, self.handle.upgrade()) {
                        let guard = LiveGuard::new(Arc::clone(&self.live), Arc::clone(&self.replenish));
                        let p = pair(&h, send, RecvState::Open(resp.into_body()), Some(guard));
                        let _ = self.incoming.send(p);
                    }
                    self.fill(&mut pending);
                }
                // An agent-opened stream ended: there may be room for a new reverse one.
                _ = self.replenish.notified() => self.fill(&mut pending),
                reason = &mut ka => {
                    self.shared.end(reason);
                    break;
                }
                // A local close (which also fires `done`): linger so the close message
                // goes out; the peer's close message (`done` alone): hang up at once.
                _ = self.shared.done.cancelled() => {
                    if self.shared.closing.is_cancelled() {
                        linger(&mut conn).await;
                    }
                    break;
                }
            }
        }
    }

    /// Opens reverse streams until the pool is full or the agent's limit is reached.
    fn fill(&mut self, pending: &mut FuturesUnordered<ReverseFut>) {
        while pending.len() < REVERSE_POOL
            && self.live.load(Ordering::Relaxed) + pending.len() < self.max_agent_streams
        {
            match self.send_request.send_request(request(PATH_REVERSE), false) {
                Ok((resp, send)) => {
                    let fut: ReverseFut = Box::pin(async move { (resp.await, send) });
                    pending.push(fut);
                }
                Err(_) => return,
            }
        }
    }
}

/// Counts an agent-opened stream while either of its halves lives.
struct LiveGuard {
    live: Arc<AtomicUsize>,
    replenish: Arc<tokio::sync::Notify>,
}

impl LiveGuard {
    fn new(live: Arc<AtomicUsize>, replenish: Arc<tokio::sync::Notify>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        Self { live, replenish }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.replenish.notify_one();
    }
}

/// What both halves of one stream share: the h2 send handle (a receiver's `stop` may
/// have to reset the stream through it) and the live-stream guard.
struct StreamCtl {
    send: Mutex<h2::SendStream<Bytes>>,
    finished: AtomicBool,
    _live: Option<LiveGuard>,
}

fn pair(
    handle: &Arc<Handle>,
    send: h2::SendStream<Bytes>,
    recv: RecvState,
    live: Option<LiveGuard>,
) -> Pair {
    let ctl = Arc::new(StreamCtl {
        send: Mutex::new(send),
        finished: AtomicBool::new(false),
        _live: live,
    });
    (
        SendStream::TlsTcp(TcpSendStream {
            ctl: Arc::clone(&ctl),
            handle: Arc::clone(handle),
            done: false,
        }),
        RecvStream::TlsTcp(TcpRecvStream {
            state: recv,
            ctl,
            handle: Arc::clone(handle),
            leftover: Bytes::new(),
        }),
    )
}

/// The sending half of a TLS/TCP stream.
pub struct TcpSendStream {
    ctl: Arc<StreamCtl>,
    handle: Arc<Handle>,
    /// Finished or reset by this side.
    done: bool,
}

impl std::fmt::Debug for TcpSendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSendStream").finish_non_exhaustive()
    }
}

impl TcpSendStream {
    fn lost(&self) -> WriteError {
        WriteError::ConnectionLost(self.handle.shared.reason())
    }

    /// Waits for send credit and hands up to `max` bytes' worth of it back.
    fn poll_credit(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Result<usize, WriteError>> {
        if self.done {
            return Poll::Ready(Err(WriteError::ClosedStream));
        }
        if self.handle.shared.done.is_cancelled() {
            return Poll::Ready(Err(self.lost()));
        }
        let mut s = self.ctl.send.lock().expect("stream lock");
        if let Poll::Ready(r) = s.poll_reset(cx) {
            return Poll::Ready(Err(match r {
                Ok(reason) => WriteError::Stopped(from_reason(reason)),
                Err(_) => self.lost(),
            }));
        }
        loop {
            s.reserve_capacity(max);
            let cap = s.capacity();
            if cap > 0 {
                return Poll::Ready(Ok(cap.min(max)));
            }
            match ready!(s.poll_capacity(cx)) {
                // Credit was assigned; look at how much is usable now.
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Poll::Ready(Err(self.stream_error_now(&mut s))),
            }
        }
    }

    fn stream_error_now(&self, s: &mut h2::SendStream<Bytes>) -> WriteError {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match s.poll_reset(&mut cx) {
            Poll::Ready(Ok(reason)) => WriteError::Stopped(from_reason(reason)),
            _ => self.lost(),
        }
    }

    fn send(&mut self, data: Bytes) -> Result<(), WriteError> {
        let mut s = self.ctl.send.lock().expect("stream lock");
        s.send_data(data, false)
            .map_err(|_| self.stream_error_now(&mut s))
    }

    pub(crate) async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), WriteError> {
        while !buf.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_credit(cx, buf.len())).await?;
            self.send(Bytes::copy_from_slice(&buf[..n]))?;
            buf = &buf[n..];
        }
        Ok(())
    }

    pub(crate) async fn write_chunk(&mut self, mut buf: Bytes) -> Result<(), WriteError> {
        while !buf.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_credit(cx, buf.len())).await?;
            self.send(buf.split_to(n))?;
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self) -> Result<(), WriteError> {
        if self.done {
            return Err(WriteError::ClosedStream);
        }
        self.done = true;
        self.ctl.finished.store(true, Ordering::Relaxed);
        let mut s = self.ctl.send.lock().expect("stream lock");
        s.send_data(Bytes::new(), true)
            .map_err(|_| self.stream_error_now(&mut s))
    }

    pub(crate) fn reset(&mut self, code: u32) {
        self.done = true;
        self.ctl.finished.store(true, Ordering::Relaxed);
        self.ctl
            .send
            .lock()
            .expect("stream lock")
            .send_reset(to_reason(code));
    }

    pub(crate) async fn stopped(&mut self) -> Result<Option<u64>, ConnectionError> {
        // TCP delivers what was written unless the connection dies; so this resolves when
        // the peer resets the stream or the connection ends.
        let shared = Arc::clone(&self.handle.shared);
        let ctl = Arc::clone(&self.ctl);
        tokio::select! {
            r = std::future::poll_fn(|cx| ctl.send.lock().expect("stream lock").poll_reset(cx)) => match r {
                Ok(reason) => Ok(Some(from_reason(reason))),
                Err(_) => Err(shared.reason()),
            },
            _ = shared.done.cancelled() => Err(shared.reason()),
        }
    }
}

impl AsyncWrite for TcpSendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        let n = ready!(this.poll_credit(cx, buf.len()))?;
        this.send(Bytes::copy_from_slice(&buf[..n]))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // h2 writes queued data out as fast as the socket takes it.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(this.finish().map_err(Into::into))
    }
}

impl Drop for TcpSendStream {
    fn drop(&mut self) {
        // As quinn does: a stream dropped without finish or reset is finished.
        if !self.done {
            self.ctl.finished.store(true, Ordering::Relaxed);
            if let Ok(mut s) = self.ctl.send.lock() {
                let _ = s.send_data(Bytes::new(), true);
            }
        }
    }
}

enum RecvState {
    /// The gateway's half of a stream it opened: the agent's answer has not arrived yet.
    Pending(h2::client::ResponseFuture),
    Open(h2::RecvStream),
    /// Ended, or stopped by this side.
    Closed {
        stopped: bool,
    },
}

/// The receiving half of a TLS/TCP stream.
pub struct TcpRecvStream {
    state: RecvState,
    ctl: Arc<StreamCtl>,
    handle: Arc<Handle>,
    /// The unread part of the last chunk (reads into small buffers).
    leftover: Bytes,
}

impl std::fmt::Debug for TcpRecvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpRecvStream").finish_non_exhaustive()
    }
}

impl TcpRecvStream {
    fn error(&self, e: &h2::Error) -> ReadError {
        if let Some(r) = self.handle.shared.ended() {
            return ReadError::ConnectionLost(r);
        }
        match e.reason() {
            Some(reason) if e.is_reset() && e.is_remote() => ReadError::Reset(from_reason(reason)),
            _ if e.is_io() || e.is_go_away() => {
                ReadError::ConnectionLost(self.handle.shared.reason())
            }
            Some(reason) if e.is_reset() => ReadError::Reset(from_reason(reason)),
            _ => ReadError::ConnectionLost(connection_error(e)),
        }
    }

    /// The next chunk: `Some(bytes)`, `None` at the end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, ReadError>> {
        if !self.leftover.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.leftover))));
        }
        loop {
            match &mut self.state {
                RecvState::Pending(fut) => match ready!(Pin::new(fut).poll(cx)) {
                    Ok(resp) => {
                        if resp.status() != StatusCode::OK {
                            return Poll::Ready(Err(ReadError::Reset(from_reason(
                                Reason::REFUSED_STREAM,
                            ))));
                        }
                        self.state = RecvState::Open(resp.into_body());
                    }
                    Err(e) => {
                        let err = self.error(&e);
                        self.state = RecvState::Closed { stopped: false };
                        return Poll::Ready(Err(err));
                    }
                },
                RecvState::Open(body) => {
                    if let Some(r) = self.handle.shared.ended() {
                        return Poll::Ready(Err(ReadError::ConnectionLost(r)));
                    }
                    return match ready!(body.poll_data(cx)) {
                        Some(Ok(data)) => {
                            // Credit goes back as soon as the bytes are ours: the caller
                            // holds at most one chunk.
                            let _ = body.flow_control().release_capacity(data.len());
                            if data.is_empty() {
                                continue;
                            }
                            Poll::Ready(Ok(Some(data)))
                        }
                        Some(Err(e)) => {
                            let err = self.error(&e);
                            self.state = RecvState::Closed { stopped: false };
                            Poll::Ready(Err(err))
                        }
                        None => {
                            self.state = RecvState::Closed { stopped: false };
                            Poll::Ready(Ok(None))
                        }
                    };
                }
                RecvState::Closed { stopped: true } => {
                    return Poll::Ready(Err(ReadError::ClosedStream))
                }
                RecvState::Closed { stopped: false } => return Poll::Ready(Ok(None)),
            }
        }
    }

    pub(crate) async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        let mut chunk = match std::future::poll_fn(|cx| self.poll_chunk(cx)).await? {
            Some(c) => c,
            None => return Ok(None),
        };
        if chunk.len() > max {
            self.leftover = chunk.split_off(max);
        }
        Ok(Some(chunk))
    }

    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        if buf.is_empty() {
            return Ok(Some(0));
        }
        match self.read_chunk(buf.len()).await? {
            Some(c) => {
                buf[..c.len()].copy_from_slice(&c);
                Ok(Some(c.len()))
            }
            None => Ok(None),
        }
    }

    pub(crate) fn stop(&mut self, code: u32) {
        self.leftover = Bytes::new();
        self.state = RecvState::Closed { stopped: true };
        // HTTP/2 has no STOP_SENDING. Once this side finished sending, dropping the body
        // is enough (h2 discards and credits what still arrives; the stream is released
        // when the send half goes). Before that, a reset is the only way to say it.
        if !self.ctl.finished.load(Ordering::Relaxed) {
            self.ctl
                .send
                .lock()
                .expect("stream lock")
                .send_reset(to_reason(code));
        }
    }
}

impl AsyncRead for TcpRecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match ready!(this.poll_chunk(cx)) {
            Ok(Some(mut c)) => {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c[..n]);
                if n < c.len() {
                    this.leftover = c.split_off(n);
                }
                Poll::Ready(Ok(()))
            }
            Ok(None) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
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
