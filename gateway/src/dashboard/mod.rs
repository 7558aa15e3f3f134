//! The fleet dashboard: server-rendered HTML pages on the management listener, beside the
//! JSON API (`/v1/...`), for operators in a browser.
//!
//! Pages are built with `maud`; one stylesheet and one small script (live updates over
//! Server-Sent Events, confirmations) are compiled into the binary. No build step, no
//! third-party assets.
//!
//! * `/login`, `/login/once?t=`, `/logout`: sign-in with a dashboard user's password or an
//!   API token, one-time links, sign-out ([`auth`]).
//! * `/devices` (the home page), `/devices/{uuid}`, `/fleets`, `/fleets/{name}`: the
//!   pages ([`devices`], [`device`], [`fleets`], [`fleet`]); group actions
//!   ([`bulk`]), environment variables ([`env`]), releases and pins ([`releases`]), the
//!   embedded terminal ([`terminal`]).
//! * `/events`: live presence ([`events`]); `/devices/{uuid}/logs` and
//!   `/devices/{uuid}/logs/download`: a device's live log view and its download ([`logs`]).
//! * `/admin/...`: keys, tokens, users, support grants and the audit log, for admins
//!   ([`admin`]).
//!
//! Every POST carries the session's CSRF token; actions go through the API's own handlers
//! (same checks and audit entries, with actor `user:<name>` or `token:<id>`).

mod access;
mod admin;
mod auth;
mod bulk;
mod device;
mod devices;
mod env;
mod events;
mod fleet;
mod fleets;
mod forms;
mod layout;
mod logs;
mod releases;
mod terminal;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::api::{ApiError, ApiState};
use crate::store::StoreError;

#[cfg(feature = "demo")]
pub(crate) use auth::create_login_link;
pub(crate) use auth::Signed;

pub(crate) use crate::api::Secure;

const CSS: &str = include_str!("dashboard.css");
const JS: &str = include_str!("dashboard.js");

/// The dashboard's routes (merged into the management router).
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/devices") }))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/login/once", get(auth::login_once))
        .route("/logout", post(auth::logout))
        .route("/devices", get(devices::page))
        .route("/devices/bulk", get(bulk::status_page).post(bulk::run))
        .route("/devices/bulk/rows", get(bulk::status_rows))
        .route("/devices/{uuid}", get(device::page))
        .route(
            "/devices/{uuid}/actions",
            get(device::actions_rows).post(device::run_action),
        )
        .route("/devices/{uuid}/public-url", post(device::public_url))
        .route("/devices/{uuid}/tags", post(device::tags))
        .route("/devices/{uuid}/env", post(device::env_post))
        .route("/devices/{uuid}/pin", post(device::pin_device))
        .route("/devices/{uuid}/terminal", get(terminal::open))
        .route("/devices/{uuid}/access", post(device::access_post))
        .route("/devices/{uuid}/share-link", post(device::share_link))
        .route("/devices/{uuid}/logs", get(logs::live))
        .route("/devices/{uuid}/logs/download", get(logs::download))
        .route("/fleets", get(fleets::page))
        .route("/fleets/{name}", get(fleet::page))
        .route("/fleets/{name}/releases", post(fleet::publish))
        .route("/fleets/{name}/pin", post(fleet::pin_fleet))
        .route("/fleets/{name}/env", post(fleet::env_post))
        .route("/events", get(events::presence))
        .route("/assets/dashboard/{file}", get(asset))
        .merge(admin::routes())
}

/// The stylesheet and the script.
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "dashboard.css" => (CSS, "text/css; charset=utf-8"),
        "dashboard.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Why a dashboard request failed: not signed in (to the sign-in page, then back), or an
/// error page with a status.
#[derive(Debug)]
pub(crate) enum DashError {
    /// No valid session: redirect to `/login?next=<this path>`.
    SignIn(String),
    /// Somewhere else on this listener (a fleet-limited user's devices list, filtered).
    Redirect(String),
    /// An error page.
    Page(StatusCode, String),
}

impl DashError {
    fn forbidden(message: impl Into<String>) -> Self {
        Self::Page(StatusCode::FORBIDDEN, message.into())
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::Page(StatusCode::BAD_REQUEST, message.into())
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::Page(StatusCode::NOT_FOUND, message.into())
    }
}

impl From<StoreError> for DashError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "dashboard: store error");
        Self::Page(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<ApiError> for DashError {
    fn from(e: ApiError) -> Self {
        Self::Page(e.status, e.message)
    }
}

impl IntoResponse for DashError {
    fn into_response(self) -> Response {
        match self {
            Self::SignIn(next) => {
                let to = format!("/login?next={}", urlencode(&next));
                Redirect::to(&to).into_response()
            }
            Self::Redirect(to) => Redirect::to(&to).into_response(),
            Self::Page(status, message) => {
                (status, layout::error_page(status, &message)).into_response()
            }
        }
    }
}

/// Percent-encodes everything but unreserved characters (for query values).
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A form body (`application/x-www-form-urlencoded`), as name → value (last one wins).
pub(crate) fn form(body: &[u8]) -> Result<std::collections::HashMap<String, String>, DashError> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map(|pairs| pairs.into_iter().collect())
        .map_err(|e| DashError::bad_request(format!("the form does not parse: {e}")))
}

/// The `{uuid}` of a dashboard path, or a 404 page.
pub(crate) fn parse_uuid(s: &str) -> Result<protocol::DeviceUuid, DashError> {
    s.parse()
        .map_err(|_| DashError::not_found(format!("{s:?} is not a device uuid")))
}

/// Shared by the page handlers: the state type.
type St = State<ApiState>;
