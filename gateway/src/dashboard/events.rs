//! Live updates over Server-Sent Events: devices coming online and going offline
//! (`/events`, from the session registry's presence feed, which the other nodes of a
//! cluster feed too), and one device's log lines
//! (`/devices/{uuid}/logs`, from the gateway's `LogHub`). Both need a signed-in session.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{parse_uuid, DashError, Signed, St};
use crate::store::{LogQuery, StoredLine};

/// Lines a log view starts with.
const LOG_BACKLOG: i64 = 200;

/// `GET /events`: `presence` events `{"uuid", "online", "transport"}` as devices connect
/// and disconnect, on this node and (on PostgreSQL) on the other nodes of the cluster,
/// which say so with a `presence:` wake-up (`crate::wake`; `transport` is null for those);
/// `resync` when this stream fell behind (the page reloads its rows then).
pub(super) async fn presence(
    _signed: Signed,
    State(st): St,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribed before the response starts: a change after the browser sees the stream
    // open is never missed.
    let rx = st.sessions.subscribe_presence();
    let shutdown = st.shutdown.clone();
    let sessions = Arc::clone(&st.sessions);
    let events = futures_util::stream::unfold(rx, move |mut rx| {
        let shutdown = shutdown.clone();
        let sessions = Arc::clone(&sessions);
        async move {
            let got = tokio::select! {
                // The gateway stops: end the stream so the shutdown does not wait for it.
                _ = shutdown.cancelled() => return None,
                got = rx.recv() => got,
            };
            let event = match got {
                Ok(p) => {
                    let transport = p
                        .online
                        .then(|| sessions.path(&p.uuid))
                        .flatten()
                        .map(|path| path.kind.as_str().to_string());
                    Event::default().event("presence").data(
                        json!({"uuid": p.uuid.as_str(), "online": p.online, "transport": transport})
                            .to_string(),
                    )
                }
                Err(RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(event), rx))
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /devices/{uuid}/logs`: the device's newest lines, then new ones as they arrive,
/// as `line` events `{"id", "ts", "service", "stderr", "system", "message"}`.
pub(super) async fn logs(
    _signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, DashError> {
    let uuid = parse_uuid(&uuid)?;
    // Subscribe first, then read the backlog: a line stored in between is in both, and
    // the id check below drops the second copy.
    let rx = st.logs.subscribe();
    let backlog = st
        .store
        .query_logs(
            uuid,
            &LogQuery {
                newest: true,
                limit: Some(LOG_BACKLOG),
                ..Default::default()
            },
        )
        .await?;
    let last = backlog.last().map_or(0, |l| l.id);
    let first: Vec<Result<Event, Infallible>> = backlog.iter().map(|l| Ok(line_event(l))).collect();
    let shutdown = st.shutdown.clone();
    let device = uuid.as_str().to_string();
    let live = futures_util::stream::unfold((rx, last), move |(mut rx, mut last)| {
        let shutdown = shutdown.clone();
        let device = device.clone();
        async move {
            loop {
                let got = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    got = rx.recv() => got,
                };
                match got {
                    Ok(l) if l.device == device && l.id > last => {
                        last = l.id;
                        return Some((Ok(line_event(&l)), (rx, last)));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        let e = Event::default()
                            .event("gap")
                            .data(json!({"missed": n}).to_string());
                        return Some((Ok(e), (rx, last)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    let events = futures_util::StreamExt::chain(futures_util::stream::iter(first), live);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn line_event(l: &StoredLine) -> Event {
    let line = &l.line;
    Event::default().event("line").id(l.id.to_string()).data(
        json!({
            "id": l.id,
            "ts": line.timestamp,
            "service": line.service_name,
            "stderr": line.is_std_err,
            "system": line.is_system,
            "message": line.message,
        })
        .to_string(),
    )
}
