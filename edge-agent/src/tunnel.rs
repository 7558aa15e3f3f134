//! The connection lifecycle: dial, hello/welcome, serve streams, reconnect with backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{
    AppErrorCode, ControlMessage, Heartbeat, HeartbeatEvent, StreamHeader, MAX_CONTROL_FRAME,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, instrument, warn};

use crate::backoff::Backoff;
use crate::config::{AgentConfig, AgentOptions, ConfigError};
use crate::wire::{self, BiStream, FrameReader, WireError};

/// How long the hello/welcome exchange may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the gateway has to send a complete stream header after opening a stream.
const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most gateway-opened streams open at once (each one is a proxied connection).
const MAX_INCOMING_STREAMS: u32 = 4096;

/// Errors that stop the agent (as opposed to connection failures, which are retried).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The local UDP socket could not be created.
    #[error("cannot open UDP socket: {0}")]
    Socket(std::io::Error),
}

/// Why one connection attempt or session ended; retried by the run loop.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot resolve gateway address {0}: {1}")]
    Resolve(String, String),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("{}", wire::describe_close(.0))]
    Connection(#[from] quinn::ConnectionError),
    #[error("control stream: {0}")]
    Wire(#[from] WireError),
    #[error("gateway refused the session: {0}")]
    Refused(String),
    #[error("gateway did not complete the handshake in {0:?}")]
    HandshakeTimeout(Duration),
    #[error("gateway stopped answering heartbeats")]
    HeartbeatTimeout,
}

/// The agent's connection state, observable through [`Agent::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Dialling the gateway.
    Connecting,
    /// Connected and welcomed.
    Connected,
    /// Waiting before the next attempt.
    BackingOff {
        /// Why the last attempt or session ended.
        reason: String,
    },
    /// Shut down.
    Stopped,
}

/// A configured agent, ready to [`run`](Agent::run).
pub struct Agent {
    config: AgentConfig,
    opts: AgentOptions,
    client_config: quinn::ClientConfig,
    state: watch::Sender<ConnState>,
}

impl Agent {
    /// Validates the configuration and prepares TLS.
    pub fn new(config: AgentConfig, opts: AgentOptions) -> Result<Self, AgentError> {
        config.validate()?;
        let tls = certs::client_config(&config.ca_cert, &config.identity()?).map_err(|e| {
            ConfigError::Invalid {
                key: "cert",
                reason: e.to_string(),
            }
        })?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| {
            ConfigError::Invalid {
                key: "cert",
                reason: e.to_string(),
            }
        })?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
        client_config.transport_config(Arc::new(transport_config(&opts)));
        Ok(Self {
            config,
            opts,
            client_config,
            state: watch::Sender::new(ConnState::Connecting),
        })
    }

    /// Watches the connection state.
    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.state.subscribe()
    }

    /// Runs until `shutdown` is cancelled: connects, serves, reconnects forever.
    #[instrument(skip_all, fields(device = %self.config.uuid))]
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let mut endpoint: Option<quinn::Endpoint> = None;
        let mut backoff = Backoff::new(self.opts.backoff_base, self.opts.backoff_cap);
        let mut last_failure: Option<String> = None;
        let tasks = TaskTracker::new();
        info!(gateway = %self.config.gateway, "connecting");
        loop {
            self.state.send_replace(ConnState::Connecting);
            let attempt = tokio::select! {
                // Shutdown wins over a pending dial.
                _ = shutdown.cancelled() => break,
                r = self.connect(&mut endpoint) => r,
            };
            let reason = match attempt {
                Ok(session) => {
                    info!(gateway = %self.config.gateway, "connected");
                    self.state.send_replace(ConnState::Connected);
                    let started = Instant::now();
                    let conn = session.conn.clone();
                    let ended = tokio::select! {
                        _ = shutdown.cancelled() => {
                            conn.close(wire::varint(AppErrorCode::Shutdown), b"agent shutting down");
                            break;
                        }
                        r = self.serve(session, &tasks) => r,
                    };
                    if started.elapsed() >= self.opts.stable_after {
                        backoff.reset();
                    }
                    let reason = ended.to_string();
                    warn!(%reason, "connection lost");
                    last_failure = Some(reason.clone());
                    reason
                }
                Err(e) => {
                    let reason = e.to_string();
                    // One line per distinct failure, not one per retry.
                    if last_failure.as_deref() != Some(&reason) {
                        warn!(%reason, "cannot connect to gateway");
                    }
                    last_failure = Some(reason.clone());
                    reason
                }
            };
            let delay = backoff.next_delay();
            if backoff.ceiling() <= self.opts.backoff_cap && delay >= Duration::from_secs(1) {
                info!(seconds = delay.as_secs(), "backing off");
            } else {
                debug!(?delay, "backing off");
            }
            self.state.send_replace(ConnState::BackingOff { reason });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            debug!("connecting");
        }
        self.state.send_replace(ConnState::Stopped);
        tasks.close();
        // Streams end with the connection; give them a moment to flush.
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
        if let Some(ep) = endpoint {
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        info!("stopped");
        Ok(())
    }

    /// Dials the gateway and completes hello/welcome.
    async fn connect(
        &self,
        endpoint: &mut Option<quinn::Endpoint>,
    ) -> Result<Session, SessionError> {
        let addr = resolve(&self.config.gateway).await?;
        let ep = match endpoint {
            Some(ep) if ep.local_addr().map(|a| a.is_ipv6()).ok() == Some(addr.is_ipv6()) => ep,
            _ => {
                let bind: SocketAddr = if addr.is_ipv6() {
                    "[::]:0".parse().expect("addr")
                } else {
                    "0.0.0.0:0".parse().expect("addr")
                };
                let socket = crate::net::udp_socket(bind)
                    .map_err(|e| SessionError::Resolve(bind.to_string(), e.to_string()))?;
                let ep = quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    None,
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
                .map_err(|e| SessionError::Resolve(bind.to_string(), e.to_string()))?;
                endpoint.insert(ep)
            }
        };
        let connecting =
            ep.connect_with(self.client_config.clone(), addr, &self.config.server_name)?;
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .map_err(|_| SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
        let handshake = async {
            let (mut send, recv) = conn.open_bi().await?;
            let mut hello = StreamHeader::Control
                .to_vec()
                .expect("the control header fits");
            ControlMessage::hello(crate::VERSION)
                .to_frame()
                .encode(&mut hello);
            send.write_all(&hello).await.map_err(WireError::from)?;
            let mut reader = FrameReader::new(recv, MAX_CONTROL_FRAME);
            let reply =
                ControlMessage::from_frame(&reader.next().await?).map_err(WireError::from)?;
            match reply {
                ControlMessage::Welcome {
                    version, device, ..
                } => {
                    debug!(version, %device, "welcomed");
                    Ok((send, reader))
                }
                ControlMessage::Error { message, .. } => Err(SessionError::Refused(message)),
                other => Err(SessionError::Refused(format!(
                    "unexpected first message {other:?}"
                ))),
            }
        };
        let (send, reader) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                // If the gateway closed the connection, its close reason is the real story.
                if let Some(reason) = conn.close_reason() {
                    return Err(reason.into());
                }
                return Err(e);
            }
            Err(_) => {
                conn.close(wire::varint(AppErrorCode::HandshakeTimeout), b"no welcome");
                return Err(SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT));
            }
        };
        Ok(Session {
            conn,
            control_send: send,
            control_recv: reader,
        })
    }

    /// Serves one established session until it ends, returning why it ended.
    async fn serve(&self, session: Session, tasks: &TaskTracker) -> SessionError {
        let Session {
            conn,
            mut control_send,
            mut control_recv,
        } = session;
        let control = async {
            let mut hb = Heartbeat::new(
                tokio::time::Instant::now().into_std(),
                self.opts.keep_alive,
                self.opts.idle_timeout,
            );
            loop {
                let deadline = tokio::time::Instant::from_std(hb.deadline());
                tokio::select! {
                    frame = control_recv.next() => {
                        let msg = ControlMessage::from_frame(&frame?).map_err(WireError::from)?;
                        hb.on_received(std::time::Instant::now());
                        match msg {
                            ControlMessage::Heartbeat { seq } => {
                                wire::write_frame(&mut control_send, &ControlMessage::HeartbeatAck { seq }.to_frame()).await?;
                            }
                            ControlMessage::HeartbeatAck { .. } => {}
                            ControlMessage::Error { message, .. } => return Err(SessionError::Refused(message)),
                            other => debug!(?other, "ignoring control message"),
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        match hb.poll(std::time::Instant::now()) {
                            Some(HeartbeatEvent::Send(seq)) => {
                                wire::write_frame(&mut control_send, &ControlMessage::Heartbeat { seq }.to_frame()).await?;
                            }
                            Some(HeartbeatEvent::Dead) => return Err(SessionError::HeartbeatTimeout),
                            None => {}
                        }
                    }
                }
            }
        };
        let accept = async {
            loop {
                let (send, recv) = conn.accept_bi().await?;
                let target = self.opts.target.clone();
                let connect_timeout = self.opts.target_connect_timeout;
                tasks.spawn(handle_stream(send, recv, target, connect_timeout));
            }
        };
        let result: Result<(), SessionError> = tokio::select! {
            r = control => r,
            r = accept => r,
        };
        let err = match result {
            Err(SessionError::Wire(_)) | Ok(()) if conn.close_reason().is_some() => {
                SessionError::Connection(conn.close_reason().expect("checked"))
            }
            Err(e) => e,
            Ok(()) => SessionError::Refused("session ended".into()),
        };
        if conn.close_reason().is_none() {
            let code = match &err {
                SessionError::HeartbeatTimeout => AppErrorCode::HeartbeatTimeout,
                SessionError::Wire(w) => w.code(),
                _ => AppErrorCode::Internal,
            };
            conn.close(wire::varint(code), err.to_string().as_bytes());
        }
        err
    }
}

struct Session {
    conn: quinn::Connection,
    control_send: quinn::SendStream,
    control_recv: FrameReader,
}

/// Reads a gateway-opened stream's header and dispatches it.
async fn handle_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    target: String,
    connect_timeout: Duration,
) {
    let header =
        match tokio::time::timeout(STREAM_HEADER_TIMEOUT, wire::read_header(&mut recv)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                // A bad stream costs only itself; the connection and other streams go on.
                warn!(error = %e, "rejecting stream with a malformed header");
                wire::reject(&mut send, &mut recv, e.code());
                return;
            }
            Err(_) => {
                warn!("rejecting stream: no header in time");
                wire::reject(&mut send, &mut recv, AppErrorCode::ProtocolError);
                return;
            }
        };
    match header {
        StreamHeader::Http(h) => {
            crate::handlers::http::serve(BiStream { send, recv }, h, &target, connect_timeout).await
        }
        other => {
            warn!(kind = ?other.kind(), "rejecting unsupported stream kind");
            wire::reject(&mut send, &mut recv, AppErrorCode::UnsupportedStream);
        }
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, SessionError> {
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| SessionError::Resolve(addr.to_string(), e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| SessionError::Resolve(addr.to_string(), "no address".into()))
}

/// QUIC transport settings of the agent side.
pub fn transport_config(opts: &AgentOptions) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(opts.keep_alive));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(opts.idle_timeout).expect("idle timeout in range"),
    ));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_INCOMING_STREAMS));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    // Windows sized for real links: ~4 MiB per stream sustains ~80 MB/s at 50 ms RTT.
    t.stream_receive_window(quinn::VarInt::from_u32(4 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(32 * 1024 * 1024));
    t.send_window(32 * 1024 * 1024);
    t
}
