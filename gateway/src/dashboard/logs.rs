//! A device's logs on the dashboard: the live view (`GET /devices/{uuid}/logs`, Server-Sent
//! Events) and the download (`GET /devices/{uuid}/logs/download`, NDJSON), both with the
//! page's filters (service, text, stderr only) and both through the API's own log code,
//! so that the view follows a device whose tunnel another cluster node holds, as `gateway
//! logs -f` does.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Response;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;

use super::{parse_uuid, DashError, Signed, St};
use crate::api::types::LogParams;
use crate::store::StoredLine;

/// Lines a log view starts with.
const LOG_BACKLOG: i64 = 200;

/// The value of the service filter that means the agent's own lines (no service): `@`
/// cannot start a compose service name.
pub(super) const AGENT_LINES: &str = "@agent";

/// The log filters of the device page (empty fields filter nothing).
#[derive(Debug, Default, Deserialize)]
pub(super) struct Filter {
    /// A service name, [`AGENT_LINES`], or empty for every line.
    #[serde(default)]
    service: String,
    /// Only lines containing this text (ASCII case-insensitive).
    #[serde(default)]
    q: String,
    /// `on`: only stderr.
    #[serde(default)]
    stderr: String,
}

impl Filter {
    /// The API's log parameters for these filters.
    fn params(&self) -> LogParams {
        LogParams {
            service: match self.service.as_str() {
                "" => None,
                AGENT_LINES => Some(String::new()),
                s => Some(s.to_string()),
            },
            q: (!self.q.is_empty()).then(|| self.q.clone()),
            stderr: (self.stderr == "on").then_some(true),
            ..LogParams::default()
        }
    }
}

/// `GET /devices/{uuid}/logs`: the newest matching lines, then new ones as they arrive, as
/// `line` events `{"id", "ts", "service", "stderr", "system", "message"}`.
pub(super) async fn live(
    signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
    Query(filter): Query<Filter>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, DashError> {
    let uuid = parse_uuid(&uuid)?;
    let params = LogParams {
        tail: Some(LOG_BACKLOG),
        ..filter.params()
    };
    let rx = crate::api::log_tail(&st, &signed.caller(), uuid, &params).await?;
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok(line_event(&line)), rx))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /devices/{uuid}/logs/download`: every stored line matching the filters, oldest
/// first, as an NDJSON attachment (the API's export).
pub(super) async fn download(
    signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
    Query(filter): Query<Filter>,
) -> Result<Response, DashError> {
    let uuid = parse_uuid(&uuid)?;
    Ok(crate::api::export_logs(st, signed.caller(), uuid, filter.params()).await?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_the_apis_parameters() {
        let f = |service: &str, q: &str, stderr: &str| Filter {
            service: service.into(),
            q: q.into(),
            stderr: stderr.into(),
        };
        let p = f("", "", "").params();
        assert_eq!((p.service, p.q, p.stderr), (None, None, None));
        let p = f(AGENT_LINES, "boot", "on").params();
        assert_eq!(
            (p.service, p.q, p.stderr),
            (Some(String::new()), Some("boot".into()), Some(true))
        );
        assert_eq!(f("web", "", "off").params().service.as_deref(), Some("web"));
        assert_eq!(f("web", "", "off").params().stderr, None);
    }
}
