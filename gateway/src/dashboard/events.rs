//! Live presence over Server-Sent Events: devices coming online and going offline
//! (`/events`, from the session registry's presence feed, which the other nodes of a
//! cluster feed too); it needs a signed-in session. A device's live log lines are
//! [`super::logs`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{Signed, St};

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
