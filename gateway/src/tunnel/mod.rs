//! The tunnel listeners devices dial, QUIC on UDP and TLS on TCP: mTLS handshake,
//! registration check, control stream, session registry. Everything after the handshake
//! is written once against [`transport::Connection`].

use std::sync::Arc;
use std::time::Duration;

use protocol::{
    negotiate, AppErrorCode, ControlMessage, DeviceUuid, ErrorCode, StreamHeader, CAPABILITIES,
    MAX_CONTROL_FRAME, SUPPORTED_VERSIONS,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, instrument, warn};
use transport::wire::{self, FrameReader, WireError};
use transport::Connection;

use crate::metrics::HandshakeFailure;
use crate::sessions::{Admission, Session};

mod ctx;
mod provisioning;
mod tcp;

pub(crate) use ctx::{ConnError, TunnelCtx};
pub(crate) use tcp::accept_tcp_loop;

/// Time allowed for the TLS handshake plus hello/welcome.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long streams on a connection a device moved away from may take to finish.
const MOVE_DRAIN: Duration = Duration::from_secs(30);
/// Agent-opened streams allowed at once (control + future log channels).
pub(crate) const MAX_AGENT_STREAMS: u32 = 16;
/// Accepts device connections until `shutdown`.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<TunnelCtx>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            // Stop accepting first; live sessions are closed by the caller.
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let ctx = Arc::clone(&ctx);
        tasks.spawn(async move {
            let remote = incoming.remote_address();
            serve_incoming(transport::quic::accept(incoming), ctx, remote).await;
        });
    }
    // From now on handshakes are refused at once (agents that reconnect while the
    // gateway drains try again later) instead of waiting in the queue, where a
    // half-made connection would keep the UDP socket after the gateway stopped.
    endpoint.set_server_config(None);
    while let Ok(Some(incoming)) =
        tokio::time::timeout(Duration::from_millis(1), endpoint.accept()).await
    {
        incoming.refuse();
    }
}

/// Completes `handshake` (either transport's) within [`HANDSHAKE_TIMEOUT`] and serves the
/// connection until it ends.
async fn serve_incoming(
    handshake: impl std::future::Future<Output = Result<Connection, transport::ConnectError>>,
    ctx: Arc<TunnelCtx>,
    remote: std::net::SocketAddr,
) {
    let ended = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(conn)) => handle_connection(conn, ctx).await,
        Ok(Err(e)) => {
            ctx.metrics.handshake_failed(HandshakeFailure::Tls);
            Err(ConnError::Handshake(e))
        }
        Err(_) => {
            ctx.metrics.handshake_failed(HandshakeFailure::Timeout);
            Err(ConnError::Timeout)
        }
    };
    if let Err(e) = ended {
        debug!(%remote, error = %e, "device connection ended");
    }
}

/// Serves one handshaken connection, on either transport.
async fn handle_connection(conn: Connection, ctx: Arc<TunnelCtx>) -> Result<(), ConnError> {
    if conn.alpn().as_deref() == Some(certs::PROVISION_ALPN) {
        return provisioning::serve(conn, &ctx).await;
    }
    let uuid = match peer_uuid(&conn) {
        Ok(u) => u,
        Err(e) => {
            ctx.metrics.handshake_failed(HandshakeFailure::Tls);
            conn.close(AppErrorCode::UnknownDevice, b"no device identity");
            return Err(e);
        }
    };
    // The CA vouches for the certificate; the store says whether the device still exists.
    let record = ctx.store.device(uuid).await.inspect_err(|_| {
        ctx.metrics.handshake_failed(HandshakeFailure::Other);
    })?;
    let record = match record {
        Some(r) if !r.revoked => r,
        Some(_) => {
            ctx.metrics.handshake_failed(HandshakeFailure::Revoked);
            warn!(device = %uuid, "refusing revoked device");
            conn.close(AppErrorCode::UnknownDevice, b"device revoked");
            return Err(ConnError::Revoked(uuid));
        }
        None => {
            ctx.metrics
                .handshake_failed(HandshakeFailure::UnknownDevice);
            warn!(device = %uuid, "refusing unregistered device");
            conn.close(
                AppErrorCode::UnknownDevice,
                b"device not registered at this gateway",
            );
            return Err(ConnError::Unknown(uuid));
        }
    };
    serve_session(conn, uuid, record.public_url, ctx).await
}

fn peer_uuid(conn: &Connection) -> Result<DeviceUuid, ConnError> {
    let certs = conn
        .peer_certificates()
        .ok_or_else(|| ConnError::Identity("no client certificate".into()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| ConnError::Identity("empty certificate chain".into()))?;
    certs::device_uuid_from_cert(leaf).map_err(|e| ConnError::Identity(e.to_string()))
}

#[instrument(skip_all, fields(device = %uuid, remote = %conn.remote_address(), transport = %conn.kind()))]
async fn serve_session(
    conn: Connection,
    uuid: DeviceUuid,
    public_url: bool,
    ctx: Arc<TunnelCtx>,
) -> Result<(), ConnError> {
    // Hello/welcome on the first agent-opened stream.
    let mut no_common_version = false;
    let handshake = async {
        let (mut send, mut recv) = conn.accept_bi().await?;
        match wire::read_header(&mut recv).await? {
            StreamHeader::Control => {}
            other => {
                return Err(ConnError::Protocol(format!(
                    "first stream must be the control stream, got {:?}",
                    other.kind()
                )))
            }
        }
        let mut reader = FrameReader::new(recv, MAX_CONTROL_FRAME);
        let hello = ControlMessage::from_frame(&reader.next().await?).map_err(WireError::from)?;
        let ControlMessage::Hello {
            versions,
            agent_version,
            instance,
            keep_alive_ms,
            ..
        } = hello
        else {
            return Err(ConnError::Protocol(
                "first control message must be hello".into(),
            ));
        };
        match negotiate(SUPPORTED_VERSIONS, &versions) {
            // The welcome goes out once the session is admitted (below).
            Ok(version) => Ok((
                send,
                reader,
                agent_version,
                instance,
                keep_alive_ms,
                version,
            )),
            Err(e) => {
                no_common_version = true;
                let msg = ControlMessage::Error {
                    code: ErrorCode::VersionMismatch,
                    message: e.to_string(),
                };
                let _ = wire::write_frame(&mut send, &msg.to_frame()).await;
                let _ = send.finish();
                // Let the error frame reach the agent before the close does.
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                conn.close(AppErrorCode::VersionMismatch, e.to_string().as_bytes());
                Err(ConnError::Protocol(e.to_string()))
            }
        }
    };
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
    let (mut control_send, mut control_recv, agent_version, instance, keep_alive_ms, version) =
        match hello {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                ctx.metrics.handshake_failed(if no_common_version {
                    HandshakeFailure::Version
                } else {
                    HandshakeFailure::Other
                });
                let code = match &e {
                    ConnError::Wire(w) => w.code(),
                    _ => AppErrorCode::ProtocolError,
                };
                conn.close(code, e.to_string().as_bytes());
                return Err(e);
            }
            Err(_) => {
                ctx.metrics.handshake_failed(HandshakeFailure::Timeout);
                conn.close(AppErrorCode::HandshakeTimeout, b"no hello in time");
                return Err(ConnError::Timeout);
            }
        };

    // A node that lost its database lease cannot record the device: refuse, so that the
    // agent tries again (through the load balancer, another node).
    if ctx.node.is_fenced() {
        ctx.metrics.handshake_failed(HandshakeFailure::Fenced);
        conn.close(
            AppErrorCode::Shutdown,
            b"this gateway node lost its database lease",
        );
        return Ok(());
    }
    // The device's stream budget carries over from its current session: streams still
    // open there (draining after a move, or ending with a dropped connection) count.
    let previous = ctx.sessions.get(&uuid);
    let session = Arc::new(Session::new(
        ctx.sessions.next_id(),
        uuid,
        conn.clone(),
        public_url,
        instance,
        previous.as_deref(),
    ));
    drop(previous);
    session.heard();
    // An agent that announces its keep-alive is dead after a few of them go missing; one
    // that does not, after the gateway's idle timeout.
    let silence = keep_alive_ms
        .map(|ms| Duration::from_millis(ms.clamp(100, 60_000)) * 3 + Duration::from_secs(1));
    // On TCP the gateway pings too; no more often than the agent does (a metered link).
    if let Some(ms) = keep_alive_ms {
        conn.peer_keep_alive(Duration::from_millis(ms.clamp(100, 60_000)));
    }
    match ctx
        .sessions
        .admit(Arc::clone(&session), silence.unwrap_or(ctx.keep_alive * 3))
    {
        Admission::First => {}
        Admission::Replaces { old, planned: true } => {
            // The same agent moving (to QUIC from TCP, say): streams open on the old
            // connection finish there; the old session closes it when they have.
            info!(
                old_session = old.id,
                old_transport = %old.conn.kind(),
                "device moved to a new connection"
            );
            old.moved.store(true, std::sync::atomic::Ordering::Release);
        }
        Admission::Replaces {
            old,
            planned: false,
        } => {
            info!(
                old_session = old.id,
                old_remote = %old.remote,
                "replacing older session of this device"
            );
            old.conn
                .close(AppErrorCode::Replaced, b"replaced by a newer connection");
        }
        Admission::Duplicate(old) => {
            ctx.metrics.handshake_failed(HandshakeFailure::Duplicate);
            warn!(
                live_session = old.id,
                live_remote = %old.remote,
                new_remote = %session.remote,
                "two agents share this device's identity (a copied certificate?): they keep \
                 replacing each other; refusing the newer one, which backs off"
            );
            conn.close(
                AppErrorCode::DuplicateIdentity,
                format!(
                    "another agent with this identity is connected from {}",
                    old.remote
                )
                .as_bytes(),
            );
            return Ok(());
        }
    }
    let welcome = ControlMessage::Welcome {
        version,
        capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
        device: uuid.to_string(),
        heartbeat_interval_ms: ctx.keep_alive.as_millis() as u64,
    };
    if let Err(e) = wire::write_frame(&mut control_send, &welcome.to_frame()).await {
        ctx.metrics.handshake_failed(HandshakeFailure::Other);
        // Not recorded online yet: nothing to clear in the store.
        ctx.sessions.remove_if_current(&uuid, session.id);
        conn.close(e.code(), e.to_string().as_bytes());
        return Err(e.into());
    }
    // The route names this node and an epoch; only this session's disconnect (with this
    // epoch) clears it, so a late disconnect never hides a newer connect elsewhere.
    // One write transaction per connect (route, online, address): in a reconnect herd
    // every extra write holds a pooled connection that API requests wait for.
    let remote_ip = conn.remote_address().ip().to_canonical().to_string();
    let epoch = match ctx
        .store
        .route_connect(uuid, ctx.node.id(), Some(&remote_ip))
        .await
    {
        Ok(epoch) => {
            // Dashboards open on the other nodes of a cluster show it online live.
            tell_presence(&ctx, uuid).await;
            Some(epoch)
        }
        Err(e) => {
            warn!(error = %e, "cannot record device online");
            None
        }
    };
    ctx.metrics.handshake(conn.kind());
    info!(session = session.id, %agent_version, "device connected");

    let control = async {
        // Queued actions go out first, in order (the agent never runs an id twice); then
        // what the device should run.
        deliver_actions(&ctx, uuid, &mut control_send).await?;
        let mut sent_target: Option<serde_json::Value> = None;
        deliver_target(&ctx, uuid, &mut control_send, &mut sent_target).await?;
        loop {
            tokio::select! {
                frame = control_recv.next() => {
                    match ControlMessage::from_frame(&frame?).map_err(WireError::from)? {
                        ControlMessage::Heartbeat { seq } => {
                            let ack = ControlMessage::HeartbeatAck { seq }.to_frame();
                            wire::write_frame(&mut control_send, &ack).await?;
                        }
                        ControlMessage::HeartbeatAck { .. } => {}
                        ControlMessage::StateReport { state } => {
                            debug!("state report");
                            if let Err(e) = ctx.store.set_state(uuid, &state).await {
                                warn!(error = %e, "cannot store state report");
                            }
                        }
                        ControlMessage::ActionResult { id, ok, detail } => {
                            info!(action = %id, ok, "action finished");
                            if let Err(e) = ctx.store.action_finished(uuid, &id, ok, &detail).await {
                                warn!(error = %e, "cannot record action result");
                            }
                        }
                        other => debug!(?other, "ignoring control message"),
                    }
                }
                // An operator queued an action while the device is online.
                _ = session.kick.notified() => {
                    deliver_actions(&ctx, uuid, &mut control_send).await?;
                }
                // A release, pin or environment variable that concerns this device changed.
                _ = session.retarget.notified() => {
                    deliver_target(&ctx, uuid, &mut control_send, &mut sent_target).await?;
                }
            }
        }
    };
    let streams = async {
        // Agent-opened streams after the control stream: `Logs`; anything else is refused
        // on its own, keeping the connection.
        loop {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let store = ctx.store.clone();
            let hub = Arc::clone(&ctx.logs);
            let metrics = Arc::clone(&ctx.metrics);
            ctx.tasks.spawn(async move {
                let code =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_header(&mut recv))
                        .await
                    {
                        Ok(Ok(StreamHeader::Logs(h))) => {
                            crate::logs::serve_stream(send, recv, h, uuid, store, hub, metrics)
                                .await;
                            return;
                        }
                        Ok(Ok(h)) => {
                            debug!(kind = ?h.kind(), "refusing unsupported agent stream");
                            AppErrorCode::UnsupportedStream
                        }
                        Ok(Err(e)) => {
                            warn!(error = %e, "refusing agent stream with a malformed header");
                            e.code()
                        }
                        Err(_) => AppErrorCode::ProtocolError,
                    };
                wire::reject(&mut send, &mut recv, code);
            });
        }
    };
    // The transport's keep-alives reach us every `keep_alive_ms`: a device that went quiet
    // for a few of them is gone (killed, unplugged), and its visitors get an answer now
    // rather than after the idle timeout.
    let liveness = async {
        // An agent that does not say how often it pings gets the gateway's idle timeout
        // (`--idle-timeout`): QUIC would otherwise wait out the agent's own.
        let silence = silence.unwrap_or(ctx.idle_timeout);
        let mut tick = tokio::time::interval(silence / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = conn.packets_received();
        loop {
            tick.tick().await;
            let now = conn.packets_received();
            // TCP: the multiplexer's own pings and idle timeout watch the peer; an open
            // connection counts as a live one.
            if now.is_none() || now != seen {
                seen = now;
                session.heard();
            } else if !session.heard_within(silence) {
                return Err(ConnError::Silent(silence));
            }
        }
    };
    let ended: Result<(), ConnError> = tokio::select! {
        r = control => r,
        r = streams => r,
        r = liveness => r,
    };
    if session.moved.load(std::sync::atomic::Ordering::Acquire) && conn.close_reason().is_none() {
        // Moved away: let the streams still open here finish (30 s at most).
        let deadline = tokio::time::Instant::now() + MOVE_DRAIN;
        while session.streams_to_drain() > 0 && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = conn.closed() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        conn.close(AppErrorCode::Replaced, b"moved to a new connection");
    }
    let reason = match (&ended, conn.close_reason()) {
        (_, Some(reason)) => reason.to_string(),
        (Err(e), None) => {
            let code = match e {
                ConnError::Wire(w) => w.code(),
                ConnError::Silent(_) => AppErrorCode::HeartbeatTimeout,
                _ => AppErrorCode::ProtocolError,
            };
            conn.close(code, e.to_string().as_bytes());
            e.to_string()
        }
        (Ok(()), None) => "ended".into(),
    };
    if ctx.sessions.remove_if_current(&uuid, session.id) {
        if let Some(epoch) = epoch {
            match ctx.store.route_disconnect(uuid, ctx.node.id(), epoch).await {
                Ok(true) => tell_presence(&ctx, uuid).await,
                // A newer connect (here or elsewhere) holds the device: it told.
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot record device offline"),
            }
        }
    }
    info!(session = session.id, %reason, "device disconnected");
    Ok(())
}

/// Tells the other nodes of a cluster that `uuid` came online or went offline here (a
/// no-op on SQLite).
async fn tell_presence(ctx: &TunnelCtx, uuid: DeviceUuid) {
    let wake = crate::store::Wake::Presence {
        device: uuid,
        node: ctx.node.id().to_string(),
    };
    ctx.store.tell_nodes(wake).await;
}

/// Sends the device's target state when it differs from what this session last sent.
async fn deliver_target(
    ctx: &TunnelCtx,
    uuid: DeviceUuid,
    send: &mut transport::SendStream,
    sent: &mut Option<serde_json::Value>,
) -> Result<(), ConnError> {
    let target = match crate::targets::target_for(&ctx.store, uuid).await {
        Ok(Some((t, _))) => serde_json::to_value(&t).expect("target serializes"),
        Ok(None) => return Ok(()),
        Err(e) => {
            warn!(error = %e, "cannot compute the device's target state");
            return Ok(());
        }
    };
    if sent.as_ref() == Some(&target) {
        return Ok(());
    }
    debug!(release = %target["release"], "sending target state");
    let msg = ControlMessage::TargetState {
        target: target.clone(),
    };
    wire::write_frame(send, &msg.to_frame()).await?;
    *sent = Some(target);
    Ok(())
}

/// Sends the device's deliverable actions on the control stream, oldest first.
async fn deliver_actions(
    ctx: &TunnelCtx,
    uuid: DeviceUuid,
    send: &mut transport::SendStream,
) -> Result<(), ConnError> {
    for a in ctx.store.actions_to_deliver(uuid).await? {
        let msg = ControlMessage::Action {
            id: a.id.clone(),
            name: a.name.clone(),
            params: a.params.clone(),
        };
        wire::write_frame(send, &msg.to_frame()).await?;
        ctx.store.action_delivered(&a.id).await?;
        debug!(action = %a.id, name = %a.name, "action delivered");
    }
    Ok(())
}

/// QUIC transport settings of the gateway side.
/// The QUIC idle timeout the gateway accepts at least, whatever `idle_timeout` says:
/// room for an agent on a metered link (keep-alive 60 s, idle timeout 200 s). Each
/// connection uses the lower of the two sides' values, so an agent with the normal
/// profile still times out after its own 15 s, and the liveness watch (three missed
/// keep-alives, from the agent's hello) notices a dead device long before either.
pub(crate) const MIN_QUIC_IDLE: Duration = Duration::from_secs(240);

/// The QUIC transport settings of the tunnel endpoint. The gateway sends no keep-alives
/// of its own on QUIC: the agent's keep the path (and its NAT mapping) alive, and a
/// gateway that pinged too would cost a metered device megabytes a day.
pub(crate) fn transport_config(idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(None);
    let idle = idle.max(MIN_QUIC_IDLE);
    // QUIC encodes at most 2^62 ms. Config validation keeps the timeout within a day;
    // a longer one from elsewhere is capped rather than a panic.
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle)
            .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::MAX)),
    ));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_AGENT_STREAMS));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(4 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(32 * 1024 * 1024));
    t.send_window(32 * 1024 * 1024);
    t
}
