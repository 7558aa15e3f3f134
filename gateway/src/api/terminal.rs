//! The web terminal: a WebSocket on the management API relayed to a `Terminal` stream on
//! the device's tunnel, and the xterm.js page that uses it.
//!
//! `GET /v1/devices/{uuid}/terminal?service=S&cols=C&rows=R[&term=T][&token=TOKEN]`
//! upgrades to a WebSocket (role `operator` and above; browsers cannot set headers on a
//! WebSocket, so the token may also come as `?token=`). On the socket:
//!
//! * client → gateway: **binary** messages are keystrokes; **text** messages are control
//!   JSON, `{"type":"resize","cols":C,"rows":R}` (text that is not control JSON is taken
//!   as keystrokes, so tools like websocat work);
//! * gateway → client: **binary** messages are terminal output; **text** messages are
//!   `{"type":"exit","code":N}` (the process ended; then a close frame with code
//!   `4000 + N` for N in 0..=999, else 1000) or `{"type":"error","message":"..."}` (then
//!   a close frame 1011).
//!
//! Sessions end at the idle timeout (no bytes either way). Each session is audited:
//! `terminal.open` (who, device, target, size) and `terminal.close` (duration, exit
//! status or why it ended).

use std::time::{Duration, Instant};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use protocol::{
    DeviceUuid, Frame, FrameType, StreamHeader, TerminalHeader, TerminalMessage, TerminalTarget,
    MAX_DATA_FRAME,
};
use serde_json::json;
use tracing::{debug, info, instrument};

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::types::TerminalQuery;
use super::{device_or_404, parse_uuid, ApiState};
use crate::config::normalize_origin;
use transport::wire::{self, FrameReader, WireError};

/// Largest WebSocket message accepted from a client (a paste); frames to the device are
/// cut to this size anyway.
const MAX_WS_MESSAGE: usize = 256 * 1024;

const PAGE: &str = include_str!("../../assets/terminal/index.html");
const XTERM_JS: &str = include_str!("../../assets/terminal/xterm.js");
const XTERM_CSS: &str = include_str!("../../assets/terminal/xterm.css");
const FIT_JS: &str = include_str!("../../assets/terminal/addon-fit.js");
const LICENSE: &str = include_str!("../../assets/terminal/LICENSE");

/// The terminal routes (merged into the API router).
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/devices/{uuid}/terminal", get(open))
        .route("/terminal/{uuid}", get(page))
        .route("/assets/terminal/{file}", get(asset))
}

/// Lets a WebSocket upgrade through only from the gateway's own pages, a configured
/// origin (`allowed_origins`), or a client that sends no `Origin` (the CLI, websocat):
/// otherwise any web page could open a terminal with the operator's token in a browser
/// (cross-site WebSocket hijacking). "Own" is the API listener as the browser reached
/// it, i.e. the request's `Host`, which is where the terminal page is served.
/// Refuses with 403 `forbidden_origin` before anything else is looked at.
pub(super) struct SameOrigin;

impl FromRequestParts<ApiState> for SameOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &ApiState,
    ) -> Result<Self, ApiError> {
        let Some(origin) = parts.headers.get(header::ORIGIN) else {
            return Ok(Self);
        };
        let shown = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        let forbidden = || {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!(
                    "WebSocket from origin {shown:?} refused: only the gateway's own pages and the configured allowed_origins may open it"
                ),
            )
        };
        let origin = origin
            .to_str()
            .ok()
            .and_then(normalize_origin)
            .ok_or_else(forbidden)?;
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        let own = host.and_then(|h| normalize_origin(&format!("{}://{h}", origin.0)));
        if own.as_ref() == Some(&origin)
            || state
                .allowed_origins
                .iter()
                .any(|a| normalize_origin(a).as_ref() == Some(&origin))
        {
            Ok(Self)
        } else {
            Err(forbidden())
        }
    }
}

/// The caller, authenticated by the `Authorization` header or, for browsers, `?token=`.
struct WsCaller(Caller);

impl FromRequestParts<ApiState> for WsCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &ApiState,
    ) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            let token = parts
                .uri
                .query()
                .and_then(|q| form_pairs(q).find(|(k, _)| k == "token").map(|(_, v)| v));
            if let Some(value) =
                token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
            {
                parts.headers.insert(header::AUTHORIZATION, value);
            }
        }
        Caller::from_request_parts(parts, state).await.map(Self)
    }
}

/// `key=value` pairs of a query string, percent-decoded.
fn form_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Some((decode(k)?, decode(v)?))
    })
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[instrument(skip_all, fields(device = uuid.as_ref().map_or("?", |p| p.0.as_str())))]
async fn open(
    _origin: SameOrigin,
    WsCaller(caller): WsCaller,
    State(st): State<ApiState>,
    uuid: Result<Path<String>, PathRejection>,
    q: Result<Query<TerminalQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if caller.require(Role::Operator).is_err() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "your token's role ({}) cannot open terminals; operator or admin needed",
                caller.role.as_str()
            ),
        ));
    }
    let Path(uuid) = uuid?;
    let uuid = parse_uuid(&uuid)?;
    let Query(q) = q?;
    upgrade(st, caller, uuid, q, ws).await
}

/// The rest of opening a terminal once the caller is known to be an operator (from a
/// token here, from a dashboard session in `dashboard::terminal`): the target and size
/// checked, the device online, then the WebSocket relayed to a `Terminal` stream.
pub(crate) async fn upgrade(
    st: ApiState,
    caller: Caller,
    uuid: DeviceUuid,
    q: TerminalQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let target = match q.service.as_deref().filter(|s| !s.is_empty()) {
        None => TerminalTarget::Host,
        Some(s) => TerminalTarget::parse(s).map_err(|e| {
            ApiError::bad_request(
                "invalid_service",
                e.to_string().replace("invalid payload: ", ""),
            )
        })?,
    };
    let mut header = TerminalHeader::new(target, q.cols.unwrap_or(80), q.rows.unwrap_or(24));
    if let Some(t) = q.term {
        header.term = t;
    }
    header.validate().map_err(|e| {
        ApiError::bad_request(
            "invalid_terminal",
            e.to_string().replace("invalid payload: ", ""),
        )
    })?;
    device_or_404(&st, uuid).await?;
    if st.sessions.get(&uuid).is_none()
        && !crate::peer::Peers::held_elsewhere(st.peers.as_deref(), uuid).await
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "device_offline",
            format!("device {uuid} is offline"),
        ));
    }
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            format!("this endpoint speaks WebSocket: {}", e.body_text()),
        )
    })?;
    let idle = st.terminal_idle_timeout;
    let running = st.tasks.token();
    Ok(ws
        .max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| async move {
            // Counted open until the relay ends.
            let _open = st.metrics.terminal_opened();
            relay(st, caller, uuid, header, idle, socket).await;
            drop(running);
        }))
}

/// How a relayed session ended.
enum End {
    Exit(i32),
    Error(String),
    ClientClosed,
    Idle,
}

async fn relay(
    st: ApiState,
    caller: Caller,
    uuid: DeviceUuid,
    header: TerminalHeader,
    idle: Duration,
    socket: WebSocket,
) {
    let started = Instant::now();
    let target = header.target.to_string();
    let _ = st
        .store
        .audit(
            &caller.actor(),
            "terminal.open",
            uuid.as_str(),
            &json!({"target": target, "cols": header.cols, "rows": header.rows}).to_string(),
        )
        .await;
    info!(device = %uuid, %target, actor = %caller.actor(), "terminal session opened");
    let (mut ws_tx, mut ws_rx) = socket.split();
    let end = match open_stream(&st, uuid, &header).await {
        Err(message) => End::Error(message),
        Ok((mut send, recv, _hold)) => {
            let mut reader = FrameReader::new(recv, MAX_DATA_FRAME);
            // Last activity in either direction, as ms since `started`.
            let last = std::sync::atomic::AtomicU64::new(0);
            let touch = |last: &std::sync::atomic::AtomicU64| {
                last.store(
                    started.elapsed().as_millis() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                )
            };
            let end = {
                // Client → device. Ends when the client goes away.
                let input = async {
                    while let Some(Ok(msg)) = ws_rx.next().await {
                        touch(&last);
                        let frame = match msg {
                            Message::Binary(b) => Frame::new(FrameType::Data, b),
                            Message::Text(t) => match TerminalMessage::from_json(t.as_bytes()) {
                                Ok(m @ TerminalMessage::Resize { .. }) => m.to_frame(),
                                Ok(_) => continue,
                                Err(_) if t.as_str().trim_start().starts_with("{\"type\"") => {
                                    continue
                                }
                                Err(_) => Frame::new(FrameType::Data, bytes::Bytes::from(t)),
                            },
                            Message::Close(_) => break,
                            Message::Ping(_) | Message::Pong(_) => continue,
                        };
                        if wire::write_frame(&mut send, &frame).await.is_err() {
                            // The device side is gone; its reason comes from `output`.
                            std::future::pending::<()>().await;
                        }
                    }
                    End::ClientClosed
                };
                // Device → client. Ends with the process (or the tunnel).
                let output = async {
                    loop {
                        let frame = match reader.next().await {
                            Ok(f) => f,
                            Err(WireError::Closed) => {
                                return End::Error("the device closed the session".into())
                            }
                            Err(e) => {
                                return End::Error(format!("the device connection broke: {e}"))
                            }
                        };
                        touch(&last);
                        match frame.ty {
                            FrameType::Data => {
                                if ws_tx.send(Message::Binary(frame.payload)).await.is_err() {
                                    return End::ClientClosed;
                                }
                            }
                            FrameType::Message => match TerminalMessage::from_frame(&frame) {
                                Ok(TerminalMessage::Exit { code }) => return End::Exit(code),
                                Ok(TerminalMessage::Error { message }) => {
                                    return End::Error(message)
                                }
                                Ok(TerminalMessage::Resize { .. }) => {}
                                Err(e) => {
                                    return End::Error(format!("the device sent garbage: {e}"))
                                }
                            },
                        }
                    }
                };
                let idle_watch = async {
                    loop {
                        let quiet = started.elapsed().saturating_sub(Duration::from_millis(
                            last.load(std::sync::atomic::Ordering::Relaxed),
                        ));
                        if quiet >= idle {
                            return End::Idle;
                        }
                        tokio::time::sleep(idle - quiet).await;
                    }
                };
                tokio::select! {
                    e = input => e,
                    e = output => e,
                    e = idle_watch => e,
                }
            };
            match &end {
                // The process ended on its own: the stream is done both ways.
                End::Exit(_) | End::Error(_) => {
                    let _ = send.finish();
                }
                // We are leaving first: tell the agent to kill the process.
                End::ClientClosed | End::Idle => {
                    send.reset(protocol::AppErrorCode::NoError);
                    reader.get_mut().stop(protocol::AppErrorCode::NoError);
                }
            }
            end
        }
    };
    let (detail, close) = match &end {
        End::Exit(code) => {
            let _ = ws_tx
                .send(Message::text(
                    TerminalMessage::Exit { code: *code }.to_json(),
                ))
                .await;
            let ws_code = if (0..=999).contains(code) {
                4000 + *code as u16
            } else {
                1000
            };
            (
                json!({"exit_code": code}),
                Some((ws_code, format!("exited with status {code}"))),
            )
        }
        End::Error(m) => {
            let _ = ws_tx
                .send(Message::text(
                    TerminalMessage::Error { message: m.clone() }.to_json(),
                ))
                .await;
            (json!({"error": m}), Some((1011, truncate(m, 120))))
        }
        End::Idle => {
            let m = format!("idle for {}s; session closed", idle.as_secs());
            let _ = ws_tx
                .send(Message::text(
                    TerminalMessage::Error { message: m.clone() }.to_json(),
                ))
                .await;
            (json!({"ended": "idle"}), Some((1000, m)))
        }
        End::ClientClosed => (json!({"ended": "client closed"}), None),
    };
    if let Some((code, reason)) = close {
        let _ = ws_tx
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
        // Finish the close handshake: read (and drop) what the client still sends until
        // its close arrives. Dropping the socket with unread input makes the kernel send
        // a reset, which can discard the exit message before the client reads it.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = ws_rx.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = ws_tx.close().await;
    let mut detail = detail;
    detail["target"] = json!(target);
    detail["duration_ms"] = json!(started.elapsed().as_millis() as u64);
    info!(device = %uuid, %target, %detail, "terminal session closed");
    if let Err(e) = st
        .store
        .audit(
            &caller.actor(),
            "terminal.close",
            uuid.as_str(),
            &detail.to_string(),
        )
        .await
    {
        debug!(error = %e, "cannot audit the end of a terminal session");
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Opens the `Terminal` stream on the device's tunnel and sends its header.
async fn open_stream(
    st: &ApiState,
    uuid: DeviceUuid,
    header: &TerminalHeader,
) -> Result<
    (
        transport::SendStream,
        transport::RecvStream,
        Option<crate::sessions::StreamHold>,
    ),
    String,
> {
    let stream_header = StreamHeader::Terminal(header.to_map());
    let Some(session) = st.sessions.get(&uuid) else {
        // Held by another node: through the peer link (the holder counts the stream).
        let peers = st
            .peers
            .as_ref()
            .ok_or_else(|| format!("device {uuid} is offline"))?;
        let (send, recv) = peers
            .open(uuid, &stream_header)
            .await
            .map_err(|e| format!("cannot open a stream to the device: {e}"))?;
        return Ok((send, recv, None));
    };
    let (mut send, recv) = session
        .conn
        .open_bi()
        .await
        .map_err(|e| format!("cannot open a stream to the device: {e}"))?;
    // Counted on this connection: if the device moves to a new one meanwhile, the old
    // one stays up until this terminal ends (30 s at most).
    let hold = session.hold_stream();
    let bytes = stream_header.to_vec().map_err(|e| e.to_string())?;
    send.write_all(&bytes)
        .await
        .map_err(|e| format!("cannot reach the device: {e}"))?;
    Ok((send, recv, Some(hold)))
}

async fn page(uuid: Result<Path<String>, PathRejection>) -> Response {
    // The uuid is only checked for shape here; the page's WebSocket does the real checks.
    if !uuid.is_ok_and(|Path(u)| parse_uuid(&u).is_ok()) {
        return ApiError::not_found("no such device").into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn asset(file: Result<Path<String>, PathRejection>) -> Response {
    let file = file.map(|Path(f)| f).unwrap_or_default();
    let (ty, body) = match file.as_str() {
        "xterm.js" => ("text/javascript; charset=utf-8", XTERM_JS),
        "addon-fit.js" => ("text/javascript; charset=utf-8", FIT_JS),
        "xterm.css" => ("text/css; charset=utf-8", XTERM_CSS),
        "LICENSE" => ("text/plain; charset=utf-8", LICENSE),
        _ => return ApiError::not_found("no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let pairs: Vec<_> = form_pairs("a=1&token=gw_ab.c%2Bd&x=y+z&bad=%zz").collect();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "1".into()),
                ("token".into(), "gw_ab.c+d".into()),
                ("x".into(), "y z".into()),
            ]
        );
    }

    #[test]
    fn origins_normalize() {
        let o = |s: &str| normalize_origin(s);
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(o("http://127.0.0.1:8081"), pair("http", "127.0.0.1:8081"));
        assert_eq!(
            o("HTTPS://Console.Example.com/"),
            pair("https", "console.example.com")
        );
        assert_eq!(
            o("https://console.example.com:443"),
            pair("https", "console.example.com")
        );
        assert_eq!(o("http://[::1]:8080"), pair("http", "[::1]:8080"));
        for bad in [
            "null",
            "",
            "evil.example",
            "ftp://evil.example",
            "http://evil.example/path",
            "http://user@evil.example",
            "http://evil.example?x",
        ] {
            assert_eq!(o(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
