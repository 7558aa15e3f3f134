//! Device logs: query with filters and paging, NDJSON export, live tail over Server-Sent
//! Events and WebSocket. Every role may read logs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use protocol::DeviceUuid;
use tokio::sync::{broadcast, mpsc};

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::terminal::SameOrigin;
use super::types::{LogLine, LogPage, LogParams as Params};
use super::{device_or_404, ApiResult, ApiState, DeviceParam};
use crate::store::{LogQuery, StoredLine};

/// Routes under `/v1/devices/{uuid}/logs`.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/devices/{uuid}/logs", get(query))
        .route("/v1/devices/{uuid}/logs/export", get(export))
        .route("/v1/devices/{uuid}/logs/stream", get(stream_sse))
        .route("/v1/devices/{uuid}/logs/ws", get(stream_ws))
}

/// A stored line as the API shows it.
fn line_view(l: &StoredLine) -> LogLine {
    let protocol::LogLine {
        seq,
        timestamp,
        message,
        is_std_err,
        is_system,
        service_name,
        service_id,
    } = l.line.clone();
    LogLine {
        id: l.id,
        device: l.device.clone(),
        seq,
        timestamp,
        message,
        is_std_err,
        is_system,
        service_name,
        service_id,
    }
}

/// One line as JSON text: an NDJSON line, an SSE event's data, a WebSocket message.
fn line_json(l: &StoredLine) -> String {
    serde_json::to_string(&line_view(l)).expect("line serializes")
}

/// `since`/`until`: unix milliseconds, or a duration ago within
/// [`bounds::LOGS_AGO`](crate::config::bounds::LOGS_AGO) (`90s`, `1h`, `7d`).
fn time_param(name: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    let ago = crate::config::bounds::LOGS_AGO.parse(v).map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!("`{name}` must be unix milliseconds or a duration like 1h: {e}"),
        )
    })?;
    // The bound keeps `ago` within 100 years, so this cannot wrap; saturate anyway.
    let ago_ms = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
    Ok(crate::store::now_ms().saturating_sub(ago_ms))
}

/// The store query for a request's parameters.
pub(super) fn to_query(p: &Params) -> Result<LogQuery, ApiError> {
    if let Some(l) = p.limit {
        if !(1..=10_000).contains(&l) {
            return Err(ApiError::bad_request(
                "invalid_query",
                "`limit` must be between 1 and 10000",
            ));
        }
    }
    Ok(LogQuery {
        since_ms: p
            .since
            .as_deref()
            .map(|v| time_param("since", v))
            .transpose()?,
        until_ms: p
            .until
            .as_deref()
            .map(|v| time_param("until", v))
            .transpose()?,
        service: p.service.clone(),
        stderr: p.stderr,
        system: p.system,
        text: p.q.clone().filter(|t| !t.is_empty()),
        after_id: p.after,
        newest: p.tail.is_some(),
        limit: p.tail.or(p.limit),
    })
}

fn params(p: Result<Query<Params>, QueryRejection>) -> Result<Params, ApiError> {
    p.map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

async fn query(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    p: Result<Query<Params>, QueryRejection>,
) -> ApiResult<LogPage> {
    caller.require(Role::Viewer)?;
    let p = params(p)?;
    device_or_404(&st, uuid).await?;
    let q = to_query(&p)?;
    let lines = st.store.query_logs(uuid, &q).await?;
    let limit = q.limit.unwrap_or(1000);
    let next_after = (lines.len() as i64 == limit && !q.newest)
        .then(|| lines.last().map(|l| l.id))
        .flatten();
    Ok(Json(LogPage {
        lines: lines.iter().map(line_view).collect(),
        next_after,
    }))
}

/// Every matching line as newline-delimited JSON, streamed page by page.
pub(super) async fn export(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    p: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let p = params(p)?;
    device_or_404(&st, uuid).await?;
    let mut q = to_query(&p)?;
    q.newest = false;
    q.limit = Some(5_000);
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let store = st.store.clone();
    st.tasks.spawn(async move {
        loop {
            let page = match store.query_logs(uuid, &q).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let Some(last) = page.last().map(|l| l.id) else {
                return;
            };
            let mut buf = Vec::with_capacity(page.len() * 128);
            for l in &page {
                serde_json::to_writer(&mut buf, &line_view(l)).expect("line serializes");
                buf.push(b'\n');
            }
            if tx.send(Ok(buf.into())).await.is_err() {
                return;
            }
            q.after_id = Some(last);
        }
    });
    let body = axum::body::Body::from_stream(receiver_stream(rx));
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{uuid}-logs.ndjson\""))
            .expect("valid header"),
    );
    Ok(resp)
}

fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// Live tail as Server-Sent Events: each event's data is a line as JSON and its id the
/// line's id, so a reconnecting client (`Last-Event-ID`) resumes without gaps or repeats.
async fn stream_sse(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    headers: HeaderMap,
    p: Result<Query<Params>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut p = params(p)?;
    device_or_404(&st, uuid).await?;
    if let Some(id) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    {
        p.after = Some(id);
        p.tail = None;
    }
    let q = to_query(&p)?;
    let rx = live(&st, uuid, q);
    let events = futures_util::StreamExt::map(receiver_stream(rx), |l: Arc<StoredLine>| {
        Ok(Event::default().id(l.id.to_string()).data(line_json(&l)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Live tail over WebSocket: one text message per line, as JSON. Browsers may open it
/// only from the gateway's own origin or a configured one ([`SameOrigin`]).
async fn stream_ws(
    _origin: SameOrigin,
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    p: Result<Query<Params>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let p = params(p)?;
    device_or_404(&st, uuid).await?;
    // Bad parameters are a 400 whether or not the request is an upgrade.
    let q = to_query(&p)?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            format!("this endpoint speaks WebSocket: {}", e.body_text()),
        )
    })?;
    let rx = live(&st, uuid, q);
    let running = st.tasks.token();
    Ok(ws.on_upgrade(move |socket| async move {
        relay_ws(socket, rx).await;
        drop(running);
    }))
}

async fn relay_ws(mut socket: WebSocket, mut rx: mpsc::Receiver<Arc<StoredLine>>) {
    loop {
        tokio::select! {
            line = rx.recv() => {
                let Some(l) = line else { break };
                let text = line_json(&l);
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Backlog (matching lines after `q.after_id`, or the newest `tail`), then every new line
/// as it is stored. Subscribes before reading the backlog, so nothing falls in between;
/// a subscriber that lags behind the hub catches up from the store. In a cluster, the
/// lines stored by the node holding the device's tunnel are read from the store when it
/// says so (`tail:`/`logs:` wake-ups, see [`crate::logs`]), and once every
/// [`crate::logs::TAIL_RENEW`] in case a wake-up was missed.
pub(super) fn live(
    st: &ApiState,
    uuid: DeviceUuid,
    q: LogQuery,
) -> mpsc::Receiver<Arc<StoredLine>> {
    let (tx, rx) = mpsc::channel(1024);
    let sub = st.logs.subscribe();
    let elsewhere = st
        .store
        .is_postgres()
        .then(|| (st.logs.subscribe_elsewhere(), st.logs.node().to_string()));
    let store = st.store.clone();
    let shutdown = st.shutdown.clone();
    st.tasks.spawn(async move {
        // The tail ends with the gateway (the client reconnects to the next one).
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = follow(store, sub, elsewhere, uuid, q, tx) => {}
        }
    });
    rx
}

/// Sends the matching lines stored after `*last` (1,000 per query), advancing `*last`.
/// `false` once the receiver is gone or the store fails (the tail ends; the client
/// reconnects with `after_id`).
async fn drain(
    store: &crate::store::Store,
    uuid: DeviceUuid,
    q: &LogQuery,
    last: &mut i64,
    tx: &mpsc::Sender<Arc<StoredLine>>,
) -> bool {
    const PAGE: usize = 1000;
    loop {
        let mut page = q.clone();
        page.after_id = Some(*last);
        page.newest = false;
        page.limit = Some(PAGE as i64);
        let Ok(lines) = store.query_logs(uuid, &page).await else {
            return false;
        };
        let done = lines.len() < PAGE;
        for l in lines {
            *last = l.id;
            if tx.send(Arc::new(l)).await.is_err() {
                return false;
            }
        }
        if done {
            return true;
        }
    }
}

/// The next device named by `rx`, or never without one (a single node).
async fn next_elsewhere(
    rx: &mut Option<(broadcast::Receiver<DeviceUuid>, String)>,
) -> Result<DeviceUuid, broadcast::error::RecvError> {
    match rx {
        Some((rx, _)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn follow(
    store: crate::store::Store,
    mut sub: broadcast::Receiver<Arc<StoredLine>>,
    mut elsewhere: Option<(broadcast::Receiver<DeviceUuid>, String)>,
    uuid: DeviceUuid,
    q: LogQuery,
    tx: mpsc::Sender<Arc<StoredLine>>,
) {
    // Told before the start is read: a line stored after that is either notified or
    // read by the next renewal.
    let tail = elsewhere
        .as_ref()
        .map(|(_, node)| crate::store::Wake::Tail {
            device: uuid,
            node: node.clone(),
        });
    if let Some(t) = &tail {
        crate::wake::tell(&store, t.clone()).await;
    }
    let mut last = q.after_id.unwrap_or(0);
    if q.newest {
        // The newest `limit` lines first, oldest first.
        let Ok(page) = store.query_logs(uuid, &q).await else {
            return;
        };
        for l in page {
            last = l.id;
            if tx.send(Arc::new(l)).await.is_err() {
                return;
            }
        }
    } else if q.after_id.is_some() {
        if !drain(&store, uuid, &q, &mut last, &tx).await {
            return;
        }
    } else {
        // A plain live tail starts now.
        let newest = LogQuery {
            newest: true,
            limit: Some(1),
            ..Default::default()
        };
        last = match store.query_logs(uuid, &newest).await {
            Ok(l) => l.last().map(|l| l.id).unwrap_or(0),
            Err(_) => 0,
        };
    }
    let mut renew = tokio::time::interval(crate::logs::TAIL_RENEW);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    loop {
        tokio::select! {
            r = sub.recv() => match r {
                Ok(l) => {
                    if l.device != uuid.as_str() || l.id <= last || !q.matches(&l) {
                        continue;
                    }
                    last = l.id;
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !drain(&store, uuid, &q, &mut last, &tx).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            d = next_elsewhere(&mut elsewhere) => match d {
                Ok(d) if d != uuid => {}
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !drain(&store, uuid, &q, &mut last, &tx).await {
                        return;
                    }
                }
                // Never while the hub lives; the renewal still reads the store.
                Err(broadcast::error::RecvError::Closed) => elsewhere = None,
            },
            _ = renew.tick(), if tail.is_some() => {
                if let Some(t) = &tail {
                    crate::wake::tell(&store, t.clone()).await;
                }
                if !drain(&store, uuid, &q, &mut last, &tx).await {
                    return;
                }
            }
        }
    }
}
