//! The management API: JSON over HTTP on its own listener (`--api-listen`, default
//! `127.0.0.1:8081`), bearer tokens with roles, one error shape, an OpenAPI document at
//! `/openapi.json`.
//!
//! Every change is written to the audit log with the token that made it. Changes that
//! affect live tunnels (public URL switches, device deletion) act on the session registry
//! at once.

mod access;
mod actions;
mod audit;
pub mod auth;
mod devices;
mod env;
mod error;
mod fleets;
mod keys;
mod logs;
mod openapi;
pub(crate) mod pages;
mod releases;
mod support;
mod terminal;
mod tokens;
pub mod types;

use access::*;
use actions::*;
use audit::*;
use devices::*;
use env::*;
use fleets::*;
use keys::*;
use support::*;
use tokens::*;
use types::*;

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use protocol::{AppErrorCode, DeviceUuid};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use auth::{Caller, Role};
pub(crate) use error::ApiError;
use error::JsonObject;
pub(crate) use terminal::upgrade as terminal_upgrade;

use crate::sessions::Sessions;
use crate::store::{DeviceRecord, Store};

/// Largest request body the API accepts.
const MAX_BODY: usize = 64 * 1024;

/// What the API handlers share.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) store: Store,
    pub(crate) sessions: Arc<Sessions>,
    /// The peer link to the other nodes of a cluster (terminals of their devices).
    pub(crate) peers: Option<Arc<crate::peer::Peers>>,
    pub(crate) domain: String,
    /// Tunnel address written into provisioning keys.
    pub(crate) advertise: String,
    /// Fingerprint of the fleet CA, written into provisioning keys.
    pub(crate) ca_fingerprint: String,
    /// A terminal session with no bytes either way for this long is closed.
    pub(crate) terminal_idle_timeout: std::time::Duration,
    /// Live log subscribers.
    pub(crate) logs: Arc<crate::logs::LogHub>,
    /// Fires when the gateway stops: long-lived streams (log tails, terminals) end.
    pub(crate) shutdown: CancellationToken,
    /// Long-lived work outside a request (log exports and tails, WebSocket sessions) is
    /// tracked here, so that the gateway's shutdown waits for it.
    pub(crate) tasks: tokio_util::task::TaskTracker,
    /// Browser origins besides the API's own that may open the terminal and log
    /// WebSockets (`allowed_origins`), normalized by [`crate::config::normalize_origin`].
    pub(crate) allowed_origins: Arc<Vec<String>>,
    /// The gateway's metrics: served at `/metrics`, and terminals are counted.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Builds the API router.
/// Whether the management listener serves HTTPS (a browser session's cookie is then
/// `Secure`). Put into each request's extensions by [`serve`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Secure(pub(crate) bool);

/// The management router: the API's routes, then `pages` (the dashboard, which the
/// caller passes in so that the API does not depend on it), then the API's JSON
/// fallbacks.
pub(crate) fn router(state: ApiState, pages: Router<ApiState>) -> Router {
    Router::new()
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .route("/metrics", get(metrics))
        .route("/v1/fleets", get(list_fleets).post(create_fleet))
        .route("/v1/fleets/{name}", get(show_fleet).delete(delete_fleet))
        .route("/v1/fleets/{name}/public-url", put(set_fleet_public_url))
        .route(
            "/v1/fleets/{name}/access",
            get(get_fleet_access).put(put_fleet_access),
        )
        .route("/v1/fleets/{name}/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", axum::routing::delete(revoke_key))
        .route("/v1/devices", get(list_devices).post(register_device))
        .route(
            "/v1/devices/{uuid}",
            get(show_device).patch(update_device).delete(delete_device),
        )
        .route("/v1/devices/{uuid}/public-url", put(set_device_public_url))
        .route(
            "/v1/devices/{uuid}/access",
            get(get_device_access).put(put_device_access),
        )
        .route(
            "/v1/devices/{uuid}/share-links",
            axum::routing::post(create_share_link),
        )
        .route(
            "/v1/devices/{uuid}/actions",
            get(list_actions).post(create_action),
        )
        .route("/v1/actions/{id}", get(show_action))
        .route("/v1/devices/{uuid}/tags", get(get_tags).put(put_tags))
        .route(
            "/v1/devices/{uuid}/env",
            get(get_device_env).put(put_device_env),
        )
        .route(
            "/v1/fleets/{name}/env",
            get(get_fleet_env).put(put_fleet_env),
        )
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", axum::routing::delete(delete_token))
        .route(
            "/v1/support-grants",
            get(list_support_grants).post(create_support_grant),
        )
        .route(
            "/v1/support-grants/{id}",
            axum::routing::delete(revoke_support_grant),
        )
        .route("/v1/audit", get(audit_log))
        .merge(terminal::routes())
        .merge(logs::routes())
        .merge(releases::routes())
        .merge(pages)
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint; see /openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .with_state(state)
}

/// Refuses a body whose declared length is over the limit before reading any of it, so a
/// client learns why at once instead of after uploading megabytes. (Chunked bodies are
/// cut off by `DefaultBodyLimit` as they arrive.)
async fn refuse_oversized(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        let mut resp = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )
        .into_response();
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return resp;
    }
    next.run(req).await
}

/// Serves the API on `listener` until `shutdown`, through the gateway's one accept loop
/// (HTTPS when `limits.tls` is set; caps, first-request and idle deadlines, back-off).
/// Clients that fail token checks too often are refused for a while, per address
/// (`backoff`).
pub(crate) async fn serve(
    listener: TcpListener,
    limits: crate::listener::ListenerConfig,
    backoff: auth::BackoffConfig,
    state: ApiState,
    pages: Router<ApiState>,
    shutdown: CancellationToken,
) {
    let backoff = Arc::new(auth::AuthBackoff::new(backoff));
    // The dashboard marks its session cookie `Secure` when the browser reached it by HTTPS.
    let secure = Secure(limits.tls.is_some());
    let app = router(state, pages).layer(axum::middleware::from_fn_with_state(
        backoff,
        auth::backoff_gate,
    ));
    let make_service = move |peer: std::net::SocketAddr| {
        let app = app.clone();
        hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            // The client address, for the per-address token back-off (and any handler
            // that asks for `ConnectInfo`).
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            req.extensions_mut().insert(secure);
            // `Router` is always ready; `call` on a clone needs no `poll_ready`.
            tower_service::Service::call(&mut app.clone(), req)
        })
    };
    crate::listener::serve(listener, limits, make_service, shutdown).await;
}

/// `GET /metrics`: the Prometheus scrape, for any valid token (viewer and up). The
/// management listener is loopback by default, but it is the API: a scraper sends a
/// viewer token (`authorization: credentials_file:` in Prometheus). For a scraper without
/// one, `--metrics-listen` serves the same text on a listener of its own, without a token.
async fn metrics(
    _caller: Caller,
    State(st): State<ApiState>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let body = st.metrics.render(&st.store, &st.sessions).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        body,
    )
        .into_response())
}

/// The access setting in force on a device's public URL, for the dashboard (`GET
/// /v1/devices/{uuid}/access`'s handler).
pub(crate) async fn device_access(
    st: ApiState,
    caller: Caller,
    uuid: DeviceUuid,
) -> Result<Access, ApiError> {
    let Json(a) = get_device_access(caller, State(st), DeviceParam(uuid)).await?;
    Ok(a)
}

/// Sets a device's access mode for the dashboard through `PUT /v1/devices/{uuid}/access`'s
/// handler: the same checks, password hashing, audit entry, and cache drop on every node.
pub(crate) async fn set_device_access(
    st: ApiState,
    caller: Caller,
    uuid: DeviceUuid,
    body: AccessSettings,
) -> Result<Access, ApiError> {
    let Json(a) =
        put_device_access(caller, State(st), DeviceParam(uuid), Ok(JsonObject(body))).await?;
    Ok(a)
}

/// A share link for the dashboard through `POST /v1/devices/{uuid}/share-links`'s handler.
pub(crate) async fn share_device(
    st: ApiState,
    caller: Caller,
    uuid: DeviceUuid,
    for_secs: i64,
) -> Result<ShareLink, ApiError> {
    let body = NewShareLink { for_secs };
    let (_, Json(link)) =
        create_share_link(caller, State(st), DeviceParam(uuid), Ok(JsonObject(body))).await?;
    Ok(link)
}

/// A device's log lines for the dashboard's live view, through the API's own tail (the
/// same filters and parameter checks as `GET /v1/devices/{uuid}/logs/stream`, and in a
/// cluster the lines another node stores too): the backlog `p` asks for, then every new
/// matching line.
pub(crate) async fn log_tail(
    st: &ApiState,
    caller: &Caller,
    uuid: DeviceUuid,
    p: &types::LogParams,
) -> Result<tokio::sync::mpsc::Receiver<std::sync::Arc<crate::store::StoredLine>>, ApiError> {
    caller.require(auth::Role::Viewer)?;
    device_or_404(st, uuid).await?;
    let q = logs::to_query(p)?;
    Ok(logs::live(st, uuid, q))
}

/// A device's log download for the dashboard: the API's NDJSON export
/// (`GET /v1/devices/{uuid}/logs/export`) with the same filters.
pub(crate) async fn export_logs(
    st: ApiState,
    caller: Caller,
    uuid: DeviceUuid,
    p: types::LogParams,
) -> Result<axum::response::Response, ApiError> {
    logs::export(
        caller,
        State(st),
        DeviceParam(uuid),
        Ok(axum::extract::Query(p)),
    )
    .await
}

/// Queues an action for the dashboard through the API's own handler: the same checks
/// (role, action name, TTL, device), audit entry and wake-up as `POST
/// /v1/devices/{uuid}/actions`.
pub(crate) async fn queue_action(
    st: ApiState,
    caller: Caller,
    uuid: DeviceUuid,
    body: NewAction,
) -> Result<Action, ApiError> {
    let (_, Json(a)) =
        create_action(caller, State(st), DeviceParam(uuid), Ok(JsonObject(body))).await?;
    Ok(a)
}

/// Switches a device's public URL for the dashboard through the API's own handler (as
/// `PUT /v1/devices/{uuid}/public-url`).
pub(crate) async fn switch_public_url(
    st: ApiState,
    caller: Caller,
    uuid: DeviceUuid,
    enabled: bool,
) -> Result<(), ApiError> {
    set_device_public_url(
        caller,
        State(st),
        DeviceParam(uuid),
        Ok(JsonObject(Switch { enabled })),
    )
    .await
    .map(drop)
}

/// Replaces a device's tags for the dashboard through the API's own handler (as `PUT
/// /v1/devices/{uuid}/tags`).
pub(crate) async fn replace_tags(
    st: ApiState,
    caller: Caller,
    uuid: DeviceUuid,
    tags: Tags,
) -> Result<(), ApiError> {
    put_tags(caller, State(st), DeviceParam(uuid), Ok(JsonObject(tags)))
        .await
        .map(drop)
}

/// Replaces a device's environment variables for the dashboard through the API's own
/// handler (as `PUT /v1/devices/{uuid}/env`: operator and up, names checked, audited as
/// `device.env`, the device retargeted).
pub(crate) async fn replace_device_env(
    st: ApiState,
    caller: Caller,
    uuid: DeviceUuid,
    env: Env,
) -> Result<(), ApiError> {
    put_device_env(caller, State(st), DeviceParam(uuid), Ok(JsonObject(env)))
        .await
        .map(drop)
}

/// Replaces a fleet's environment variables for the dashboard through the API's own
/// handler (as `PUT /v1/fleets/{name}/env`: admin only, audited as `fleet.env`).
pub(crate) async fn replace_fleet_env(
    st: ApiState,
    caller: Caller,
    fleet: &str,
    env: Env,
) -> Result<(), ApiError> {
    put_fleet_env(
        caller,
        State(st),
        Ok(Path(fleet.to_string())),
        Ok(JsonObject(env)),
    )
    .await
    .map(drop)
}

/// Publishes a compose file as a release of `fleet` for the dashboard through the API's
/// own handler (as `POST /v1/fleets/{name}/releases`: operator and up, the compose file
/// validated, audited as `release.create`, the fleet's devices retargeted).
pub(crate) async fn publish_release(
    st: ApiState,
    caller: Caller,
    fleet: &str,
    compose: String,
) -> Result<Release, ApiError> {
    let (_, Json(r)) = releases::create_release(
        caller,
        State(st),
        Ok(Path(fleet.to_string())),
        Ok(JsonObject(NewRelease { compose })),
    )
    .await?;
    Ok(r)
}

/// Pins a fleet to a release (`None`: back to its newest) for the dashboard through the
/// API's own handler (as `PUT /v1/fleets/{name}/pin`).
pub(crate) async fn pin_fleet(
    st: ApiState,
    caller: Caller,
    fleet: &str,
    release: Option<String>,
) -> Result<(), ApiError> {
    releases::pin_fleet(
        caller,
        State(st),
        Ok(Path(fleet.to_string())),
        Ok(JsonObject(Pin { release })),
    )
    .await
    .map(drop)
}

/// Pins a device to a release (`None`: back to following its fleet) for the dashboard
/// through the API's own handler (as `PUT /v1/devices/{uuid}/pin`).
pub(crate) async fn pin_device(
    st: ApiState,
    caller: Caller,
    uuid: DeviceUuid,
    release: Option<String>,
) -> Result<(), ApiError> {
    releases::pin_device(
        caller,
        State(st),
        DeviceParam(uuid),
        Ok(JsonObject(Pin { release })),
    )
    .await
    .map(drop)
}

/// The `{uuid}` path parameter, parsed (400 `invalid_uuid` when malformed).
struct DeviceParam(DeviceUuid);

impl axum::extract::FromRequestParts<ApiState> for DeviceParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &ApiState,
    ) -> Result<Self, ApiError> {
        let Path(uuid) = Path::<String>::from_request_parts(parts, state).await?;
        parse_uuid(&uuid).map(Self)
    }
}

fn parse_uuid(s: &str) -> Result<DeviceUuid, ApiError> {
    s.parse()
        .map_err(|e: protocol::InvalidUuid| ApiError::bad_request("invalid_uuid", e.to_string()))
}

/// A device as the API shows it: the stored record, with "online" and the tunnel's
/// transport from the session registry (the live truth; the store lags by design). On
/// PostgreSQL the device may be connected to another gateway node: then the store's
/// flag, which follows the device's route (`store::nodes`), says so.
fn device_view(state: &ApiState, d: &DeviceRecord) -> types::Device {
    let path = state.sessions.path(&d.uuid);
    let elsewhere = path.is_none() && d.online && state.store.is_postgres();
    let reported = |key: &str| d.state.as_ref().and_then(|s| s.get(key)).cloned();
    types::Device {
        uuid: d.uuid.as_str().to_string(),
        name: d
            .name
            .clone()
            .unwrap_or_else(|| d.uuid.as_str()[..7].to_string()),
        fleet: d.fleet.clone(),
        online: path.is_some() || elsewhere,
        transport: path.as_ref().map(|p| p.kind.as_str().to_string()),
        rtt_ms: path.map(|p| (p.rtt.as_secs_f64() * 1000.0 * 10.0).round() / 10.0),
        last_seen: d.last_seen,
        created_at: d.created_at,
        public_url: d.public_url,
        url: d
            .public_url
            .then(|| format!("http://{}.{}/", d.uuid, state.domain)),
        public_address: d.public_address.clone(),
        agent_version: reported("agent_version"),
        os_version: reported("os_version"),
        ip_addresses: reported("ip_addresses"),
        status: reported("status"),
        state: d.state.clone(),
        tags: None,
    }
}

async fn device_or_404(state: &ApiState, uuid: DeviceUuid) -> Result<DeviceRecord, ApiError> {
    match state.store.device(uuid).await? {
        Some(d) if !d.revoked => Ok(d),
        _ => Err(ApiError::not_found(format!("no device {uuid}"))),
    }
}

async fn fleet_or_404(state: &ApiState, name: &str) -> Result<crate::store::FleetRecord, ApiError> {
    state
        .store
        .fleet(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no fleet {name:?}")))
}
