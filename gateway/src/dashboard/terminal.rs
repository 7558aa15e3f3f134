//! The web terminal inside the device page, for operators, on the dashboard session.
//!
//! `GET /devices/{uuid}/terminal?service=S&cols=C&rows=R&csrf=T` upgrades to the same
//! WebSocket as `/v1/devices/{uuid}/terminal` (same messages, relay, idle timeout and
//! `terminal.open` / `terminal.close` audit entries; see `api::terminal`), but it is
//! authenticated by the `gw_session` cookie instead of a token, so the page never holds
//! one. A cookie is sent by the browser whoever's page opens the socket, so the upgrade
//! also needs:
//!
//! * an `Origin` that is this listener itself (a browser always sends one on a
//!   WebSocket; none, or any other, is refused with 403 — the configured
//!   `allowed_origins` are for token clients, not for sessions);
//! * the session's CSRF token as `csrf` (403 without it), which only the gateway's own
//!   pages carry;
//! * the operator role (403 for viewers, who see no terminal on the page either).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

use super::{parse_uuid, DashError, Secure, Signed, St};
use crate::api::auth::Role;
use crate::api::types::TerminalQuery;
use crate::config::normalize_origin;

/// The terminal card of the device page: a target (the host or a reported service), an
/// open button, and the box the script puts xterm.js in.
pub(super) fn section(uuid: &str, services: &[String], signed: &Signed, online: bool) -> Markup {
    html! {
        section.card.terminal-card id="terminal" data-terminal={ "/devices/" (uuid) "/terminal" } data-csrf=(signed.csrf) data-term-state="closed" {
            div.section-head {
                h2 { "Terminal" }
                div.terminal-controls {
                    label { span.muted { "Shell in" }
                        select data-term-service aria-label="Where the shell runs" {
                            option value="" { "the host" }
                            @for s in services { option value=(s) { "service " (s) } }
                        }
                    }
                    button.btn.btn-primary type="button" data-term-open { "Open terminal" }
                    button.btn type="button" data-term-close hidden { "Close" }
                }
            }
            p.muted.term-state data-term-status {
                @if online { "Opens a shell on the device here, as you (audited)." }
                @else { "The device is offline; a terminal needs it online." }
            }
            div.terminal-box data-term-box hidden {}
        }
    }
}

/// The upgrade's query: the terminal's, plus the session's CSRF token.
#[derive(Debug, Deserialize)]
pub(super) struct Params {
    service: Option<String>,
    cols: Option<u16>,
    rows: Option<u16>,
    term: Option<String>,
    csrf: Option<String>,
}

/// `GET /devices/{uuid}/terminal` (WebSocket).
pub(super) async fn open(
    signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    secure: Option<axum::Extension<Secure>>,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, DashError> {
    let https = secure.is_some_and(|s| s.0 .0);
    own_origin(&headers, https)?;
    let Query(q) = q.map_err(|e| DashError::bad_request(e.body_text()))?;
    let mut csrf = std::collections::HashMap::new();
    csrf.insert("csrf".to_string(), q.csrf.clone().unwrap_or_default());
    signed.check_post(&csrf, Role::Operator)?;
    let uuid = parse_uuid(&uuid)?;
    let query = TerminalQuery {
        service: q.service,
        cols: q.cols,
        rows: q.rows,
        term: q.term,
        token: None,
    };
    Ok(crate::api::terminal_upgrade(st, signed.caller(), uuid, query, ws).await?)
}

/// Only this listener's own pages: `Origin` must be `http(s)://<Host>`.
fn own_origin(headers: &HeaderMap, https: bool) -> Result<(), DashError> {
    let scheme = if https { "https" } else { "http" };
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .and_then(normalize_origin);
    let own = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| normalize_origin(&format!("{scheme}://{h}")));
    match (origin, own) {
        (Some(o), Some(own)) if o == own => Ok(()),
        (None, _) => Err(DashError::forbidden(
            "a dashboard terminal opens only from the dashboard's own page (this request has no usable Origin)",
        )),
        (Some((s, h)), _) => Err(DashError::forbidden(format!(
            "a dashboard terminal opens only from the dashboard's own page, not from {s}://{h}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_listeners_own_origin_opens_a_session_terminal() {
        let host = "127.0.0.1:8081";
        assert!(own_origin(&headers(Some("http://127.0.0.1:8081"), host), false).is_ok());
        assert!(own_origin(&headers(Some("https://127.0.0.1:8081"), host), false).is_err());
        assert!(own_origin(&headers(Some("http://127.0.0.1:8082"), host), false).is_err());
        assert!(own_origin(&headers(Some("http://evil.example"), host), false).is_err());
        assert!(own_origin(&headers(Some("null"), host), false).is_err());
        assert!(own_origin(&headers(None, host), false).is_err());
        assert!(own_origin(&headers(Some("https://gw.example"), "gw.example:443"), true).is_ok());
    }
}
