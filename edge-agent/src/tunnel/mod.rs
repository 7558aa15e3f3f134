//! The connection lifecycle: dial, hello/welcome, serve streams, reconnect with backoff,
//! moving through the gateway's addresses when it has several ([`crate::dial::Rotation`]).
//!
//! `mod.rs` dials, handshakes and reconnects; `serve.rs` serves one session; and
//! `device_side.rs` hands what arrives to the device and the reconciler.

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

use transport::wire::{self, FrameReader, WireError};
use transport::{BiStream, Connection, ConnectionError, TransportKind};

use crate::backoff::Backoff;
use crate::config::{AgentConfig, AgentOptions, ConfigError};
use crate::device::{ActionLog, Device};
use crate::dial::{Candidate, DialError, Dialer, Retry, Rotation, TransportMode};

mod device_side;
mod retry;
mod serve;

use retry::{duplicate_wait, retry_delay, rotation_next};

use device_side::*;

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
    /// The local supervisor API could not listen.
    #[error("cannot serve the local supervisor API on {addr}: {source}")]
    LocalApi {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The data dir could not be used.
    #[error("data dir: {0}")]
    DataDir(String),
}

/// Why one connection attempt or session ended; retried by the run loop.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connect: {0}")]
    Connect(#[from] DialError),
    #[error("{0}")]
    Connection(#[from] ConnectionError),
    #[error("control stream: {0}")]
    Wire(#[from] WireError),
    #[error("gateway refused the session: {0}")]
    Refused(String),
    #[error("gateway did not complete the handshake in {0:?}")]
    HandshakeTimeout(Duration),
    #[error("gateway stopped answering heartbeats")]
    HeartbeatTimeout,
    #[error("heard nothing from the gateway for {0:?}")]
    Silent(Duration),
}

impl SessionError {
    /// Whether the session or attempt ended in silence rather than in an answer: the dial
    /// timed out (a transport that waited its whole timeout for an answer), or the
    /// session died of an idle or heartbeat timeout, this side's or the gateway's (which
    /// closes a session it stopped hearing with `HeartbeatTimeout`, and after a short
    /// outage that close is the first thing the agent hears).
    fn is_silence(&self) -> bool {
        let lost = |c: &ConnectionError| {
            matches!(c, ConnectionError::TimedOut)
                || c.app_code() == Some(AppErrorCode::HeartbeatTimeout)
        };
        match self {
            Self::Connect(d) => d.timed_out(),
            Self::Connection(c) => lost(c),
            Self::HeartbeatTimeout | Self::Silent(_) => true,
            Self::Wire(WireError::Read(transport::ReadError::ConnectionLost(c)))
            | Self::Wire(WireError::Write(transport::WriteError::ConnectionLost(c))) => lost(c),
            _ => false,
        }
    }

    /// The application code the gateway closed the connection with, if it did.
    fn app_code(&self) -> Option<AppErrorCode> {
        match self {
            Self::Connection(c) => c.app_code(),
            Self::Connect(d) => d.connection_error().and_then(ConnectionError::app_code),
            _ => None,
        }
    }
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
    dialer: Dialer,
    state: watch::Sender<ConnState>,
    device: Option<(Arc<Device>, Arc<ActionLog>)>,
    terminals: Arc<crate::handlers::terminal::Terminals>,
    /// The newest target state the gateway sent (kept for a reconciler that starts late).
    gateway_target: Arc<std::sync::Mutex<Option<protocol::release::TargetState>>>,
    /// Random id of this agent process, sent in every hello (see `ControlMessage::Hello`).
    instance: String,
    /// Sessions and transport, for `/metrics`.
    metrics: Arc<crate::metrics::AgentMetrics>,
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
        let dialer = opts
            .route
            .dialer(
                &config.gateway,
                &config.server_name,
                tls,
                Some(Arc::new(transport_config(&opts))),
                mux_config(&opts),
                HANDSHAKE_TIMEOUT,
            )
            .map_err(|e| match e {
                crate::dial::RouteError::Gateway(e) => ConfigError::Invalid {
                    key: "gateway",
                    reason: e.to_string(),
                },
                crate::dial::RouteError::GatewayTcp(reason) => ConfigError::Invalid {
                    key: "gateway_tcp",
                    reason,
                },
                crate::dial::RouteError::Tls(e) => ConfigError::Invalid {
                    key: "cert",
                    reason: e.to_string(),
                },
            })?;
        let device = match &opts.data_dir {
            Some(dir) => {
                let key = crate::provision::api_key(dir)
                    .map_err(|e| AgentError::DataDir(e.to_string()))?;
                let hooks = opts
                    .hooks
                    .clone()
                    .unwrap_or_else(|| crate::device::Hooks::defaults(dir));
                let device = Device::new(
                    config.uuid.clone(),
                    dir.clone(),
                    hooks,
                    Arc::new(std::sync::RwLock::new(key)),
                );
                Some((Arc::new(device), Arc::new(ActionLog::load(dir))))
            }
            None => None,
        };
        Ok(Self {
            terminals: Arc::new(crate::handlers::terminal::Terminals::new(
                opts.terminal.clone(),
            )),
            config,
            opts,
            dialer,
            state: watch::Sender::new(ConnState::Connecting),
            device,
            gateway_target: Arc::new(std::sync::Mutex::new(None)),
            instance: format!("{:016x}", rand::random::<u64>()),
            metrics: Arc::default(),
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
        if let (Some(addr), Some((device, _))) = (self.opts.local_api, &self.device) {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::LocalApi { addr, source })?;
            info!(%addr, "local supervisor API listening");
            let metrics = self.opts.metrics.then(|| {
                let (metrics, logs, device) = (
                    Arc::clone(&self.metrics),
                    self.opts.logs.clone(),
                    Arc::clone(device),
                );
                Arc::new(move || {
                    let reconciler = device.reconciler().map(|r| {
                        let s = r.status();
                        let s = s.borrow();
                        crate::metrics::ReconcilerCounts {
                            passes: s.passes,
                            failed: s.failed_passes,
                        }
                    });
                    metrics.render(logs.as_ref().map(|l| l.stats()), reconciler)
                }) as crate::local_api::MetricsFn
            });
            let state = crate::local_api::LocalApiState {
                api_key: device.api_key(),
                device: Arc::clone(device) as Arc<dyn crate::local_api::DeviceInfo>,
                control: Arc::clone(device) as Arc<dyn crate::local_api::DeviceControl>,
                metrics,
            };
            tasks.spawn(crate::local_api::serve(
                listener,
                state,
                shutdown.child_token(),
            ));
        }
        // The reconciler starts once the engine answers (it may come up after the agent).
        if let (Some(cfg), Some((device, _))) = (self.opts.reconciler.clone(), &self.device) {
            tasks.spawn(start_reconciler(
                cfg,
                Arc::clone(device),
                self.opts
                    .logs
                    .as_ref()
                    .map(|l| l.sink())
                    .unwrap_or_else(crate::logs::LogSink::disabled),
                Arc::clone(&self.gateway_target),
                shutdown.child_token(),
            ));
        }
        let connected_flag = self.device.as_ref().map(|(d, _)| d.connected_flag());
        // A session the agent already moved to (QUIC found working again while on TCP).
        let mut moved_to: Option<Session> = None;
        let mut last_kind: Option<TransportKind> = None;
        let mut rotation = Rotation::new();
        // The candidate of the previous attempt: "connecting" is news when it changes.
        let mut last_dialled: Option<Candidate> = None;
        loop {
            self.state.send_replace(ConnState::Connecting);
            let attempt = match moved_to.take() {
                Some(s) => Ok(s),
                None => {
                    if rotation.needs_round() {
                        // Resolving is part of the attempt: shutdown wins over it too.
                        let candidates = tokio::select! {
                            _ = shutdown.cancelled() => break,
                            c = self.dialer.candidates() => c,
                        };
                        rotation.start_round(candidates);
                    }
                    let to = rotation.current().clone();
                    if last_dialled.as_ref() != Some(&to) {
                        info!(gateway = %to, transport = %self.dialer.mode, "connecting");
                    } else {
                        debug!(gateway = %to, "connecting");
                    }
                    last_dialled = Some(to.clone());
                    tokio::select! {
                        // Shutdown wins over a pending dial.
                        _ = shutdown.cancelled() => break,
                        r = self.connect(to, &mut endpoint) => r,
                    }
                }
            };
            let last_code: Option<AppErrorCode>;
            let silence: bool;
            let reason = match attempt {
                Ok(session) => {
                    rotation.connected();
                    let kind = session.conn.kind();
                    let gateway = session.candidate.to_string();
                    info!(%gateway, transport = %kind, "connected");
                    // Each change of transport is said once (connects on the same one are
                    // not news).
                    if last_kind.is_some_and(|k| k != kind) {
                        warn!(from = %last_kind.expect("checked"), to = %kind, "transport changed");
                    } else if last_kind.is_none()
                        && kind == TransportKind::Tcp
                        && self.dialer.mode == TransportMode::Auto
                    {
                        warn!("QUIC did not connect; using TLS over TCP (QUIC is retried in the background)");
                    }
                    last_kind = Some(kind);
                    self.log_event(format!("Connected to the gateway {gateway}"));
                    self.metrics.connected(kind);
                    self.state.send_replace(ConnState::Connected);
                    if let Some(f) = &connected_flag {
                        f.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    let started = Instant::now();
                    let conn = session.conn.clone();
                    let ended = tokio::select! {
                        _ = shutdown.cancelled() => {
                            conn.close(AppErrorCode::Shutdown, b"agent shutting down");
                            break;
                        }
                        r = self.serve(session, &tasks) => r,
                    };
                    let ended = match ended {
                        Ended::Lost(e) => e,
                        Ended::Moved { next, old } => {
                            // Streams open on the old connection finish there; the gateway
                            // closes it once they have (30 s at most).
                            tasks.spawn(drain(old));
                            moved_to = Some(next);
                            continue;
                        }
                    };
                    if let Some(f) = &connected_flag {
                        f.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    // The gateway restarted (a stateless reset) or is restarting: it is
                    // back, or about to be, so the first retry waits only the jittered base.
                    let gateway_restarted =
                        matches!(&ended, SessionError::Connection(ConnectionError::Reset))
                            || ended.app_code() == Some(AppErrorCode::Shutdown);
                    if gateway_restarted || started.elapsed() >= self.opts.stable_after {
                        backoff.reset();
                    }
                    last_code = ended.app_code();
                    silence = ended.is_silence();
                    let reason = ended.to_string();
                    warn!(%reason, "connection lost");
                    self.log_event(format!("Connection to the gateway lost: {reason}"));
                    last_failure = Some(reason.clone());
                    reason
                }
                Err(e) => {
                    last_code = e.app_code();
                    silence = e.is_silence();
                    let reason = e.to_string();
                    // One line per distinct failure, not one per retry.
                    if last_failure.as_deref() != Some(&reason) {
                        warn!(%reason, "cannot connect to gateway");
                    }
                    last_failure = Some(reason.clone());
                    reason
                }
            };
            let mut delay = match rotation.failed() {
                // Another address of the gateway, not yet failed in this round: a node
                // that died, or an address that never answered, should not keep the
                // device dark for a backoff. Still jittered (within the first backoff
                // step), so the devices of a node that died do not all land on the next
                // one in the same instant; the backoff does not grow.
                Retry::Next => {
                    let d = self.opts.backoff_base.mul_f64(rand::random::<f64>());
                    debug!(next = %rotation_next(&rotation), "trying the gateway's next address");
                    d
                }
                Retry::Backoff => retry_delay(&mut backoff, silence),
            };
            if last_code == Some(AppErrorCode::DuplicateIdentity) {
                // The gateway keeps another agent with this identity while it hears from
                // it; stop taking turns with it, but come back once it would have timed
                // that one out: it may be this agent's own predecessor, killed or crashed
                // a moment ago.
                delay = delay.max(duplicate_wait(self.opts.keep_alive, self.opts.backoff_cap));
                warn!(seconds = delay.as_secs(), "another agent uses this device's identity (a copied data dir or certificate?); the gateway keeps it and refuses this one");
            }
            if backoff.ceiling() <= self.opts.backoff_cap && delay >= Duration::from_secs(1) {
                info!(seconds = delay.as_secs(), "backing off");
            } else {
                debug!(?delay, "backing off");
            }
            self.metrics.disconnected();
            self.state.send_replace(ConnState::BackingOff { reason });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.state.send_replace(ConnState::Stopped);
        tasks.close();
        // Streams end with the connection; give them a moment to flush.
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
        // The reconciler finishes (or drops) its current step; lines queued for the spool
        // are written out, so the next start ships them.
        if let Some(r) = self.device.as_ref().and_then(|(d, _)| d.reconciler()) {
            let _ = tokio::time::timeout(Duration::from_secs(5), r.stopped()).await;
        }
        if let Some(logs) = &self.opts.logs {
            logs.sink().system("Agent stopping");
            if !logs.flush(Duration::from_secs(5)).await {
                warn!("the log spool did not flush in 5 s; the last lines may be lost");
            }
        }
        if let Some(ep) = endpoint {
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        info!("stopped");
        Ok(())
    }

    /// Dials `to` and completes hello/welcome.
    async fn connect(
        &self,
        to: Candidate,
        endpoint: &mut Option<quinn::Endpoint>,
    ) -> Result<Session, SessionError> {
        let conn = self.dialer.dial(&to, endpoint).await?;
        self.handshake(conn, to).await
    }

    /// Hello/welcome on a fresh connection to `candidate`.
    async fn handshake(
        &self,
        conn: Connection,
        candidate: Candidate,
    ) -> Result<Session, SessionError> {
        let handshake = async {
            let (mut send, recv) = conn.open_bi().await?;
            let mut hello = StreamHeader::Control
                .to_vec()
                .expect("the control header fits");
            let mut msg = ControlMessage::hello(crate::VERSION);
            if let ControlMessage::Hello {
                instance,
                keep_alive_ms,
                ..
            } = &mut msg
            {
                *instance = Some(self.instance.clone());
                *keep_alive_ms = Some(self.opts.keep_alive.as_millis() as u64);
            }
            msg.to_frame().encode(&mut hello);
            send.write_all(&hello).await.map_err(WireError::from)?;
            let mut reader = FrameReader::new(recv, MAX_CONTROL_FRAME);
            let reply =
                ControlMessage::from_frame(&reader.next().await?).map_err(WireError::from)?;
            match reply {
                ControlMessage::Welcome {
                    version,
                    device,
                    heartbeat_interval_ms,
                    ..
                } => {
                    debug!(version, %device, heartbeat_interval_ms, "welcomed");
                    Ok((send, reader, heartbeat_interval_ms))
                }
                ControlMessage::Error { message, .. } => Err(SessionError::Refused(message)),
                other => Err(SessionError::Refused(format!(
                    "unexpected first message {other:?}"
                ))),
            }
        };
        let (send, reader, heartbeat_ms) =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    // If the gateway closed the connection, its close reason is the real story.
                    if let Some(reason) = conn.close_reason() {
                        return Err(reason.into());
                    }
                    return Err(e);
                }
                Err(_) => {
                    conn.close(AppErrorCode::HandshakeTimeout, b"no welcome");
                    return Err(SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT));
                }
            };
        Ok(Session {
            conn,
            candidate,
            control_send: send,
            control_recv: reader,
            heartbeat: Duration::from_millis(heartbeat_ms),
        })
    }
}

/// How a served session ended.
enum Ended {
    /// It was lost (or refused); reconnect after the backoff.
    Lost(SessionError),
    /// The agent moved to `next`; `old` still carries streams that were open on it.
    Moved { next: Session, old: Connection },
}

/// Lets streams on a connection the agent moved away from finish: the gateway closes it
/// when they have; 30 s at most.
async fn drain(old: Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(30), old.closed()).await;
    old.close(AppErrorCode::Replaced, b"moved to another transport");
}

struct Session {
    conn: Connection,
    /// Where it was dialled (a move to QUIC dials the same candidate).
    candidate: Candidate,
    control_send: transport::SendStream,
    control_recv: FrameReader,
    /// The heartbeat interval the gateway asked for in its welcome.
    heartbeat: Duration,
}

/// Multiplexer settings of the agent side on TCP.
pub fn mux_config(opts: &AgentOptions) -> transport::tls_tcp::MuxConfig {
    transport::tls_tcp::MuxConfig {
        keep_alive: opts.keep_alive,
        idle_timeout: opts.idle_timeout,
        max_incoming_streams: MAX_INCOMING_STREAMS,
        ..Default::default()
    }
}

/// QUIC transport settings of the agent side.
pub fn transport_config(opts: &AgentOptions) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(opts.keep_alive));
    // QUIC encodes at most 2^62 ms. Config validation keeps the timeout within a day;
    // a longer one from elsewhere is capped rather than a panic.
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(opts.idle_timeout)
            .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::MAX)),
    ));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_INCOMING_STREAMS));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    // Windows sized for real links: ~4 MiB per stream sustains ~80 MB/s at 50 ms RTT.
    t.stream_receive_window(quinn::VarInt::from_u32(4 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(32 * 1024 * 1024));
    t.send_window(32 * 1024 * 1024);
    opts.congestion.apply(&mut t);
    t
}
