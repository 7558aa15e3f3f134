//! The management API: JSON over HTTP on its own listener (`--api-listen`, default
//! `127.0.0.1:8081`), bearer tokens with roles, one error shape, an OpenAPI document at
//! `/openapi.json`.
//!
//! Every change is written to the audit log with the token that made it. Changes that
//! affect live tunnels (public URL switches, device deletion) act on the session registry
//! at once.

pub mod auth;
mod error;
mod logs;
mod openapi;
mod releases;
mod terminal;

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use protocol::{AppErrorCode, DeviceUuid};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use auth::{Caller, Role};
use error::{ApiError, JsonObject};

pub(crate) use terminal::normalize_origin;

use crate::sessions::Sessions;
use crate::store::{DeviceRecord, Store};

/// Largest request body the API accepts.
const MAX_BODY: usize = 64 * 1024;

/// What the API handlers share.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) store: Store,
    pub(crate) sessions: Arc<Sessions>,
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
    /// WebSockets (`allowed_origins`), normalized by [`terminal::normalize_origin`].
    pub(crate) allowed_origins: Arc<Vec<String>>,
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// Builds the API router.
pub(crate) fn router(state: ApiState) -> Router {
    Router::new()
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .route("/v1/fleets", get(list_fleets).post(create_fleet))
        .route("/v1/fleets/{name}", get(show_fleet).delete(delete_fleet))
        .route("/v1/fleets/{name}/public-url", put(set_fleet_public_url))
        .route("/v1/fleets/{name}/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", axum::routing::delete(revoke_key))
        .route("/v1/devices", get(list_devices).post(register_device))
        .route(
            "/v1/devices/{uuid}",
            get(show_device).patch(update_device).delete(delete_device),
        )
        .route("/v1/devices/{uuid}/public-url", put(set_device_public_url))
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
        .route("/v1/audit", get(audit_log))
        .merge(terminal::routes())
        .merge(logs::routes())
        .merge(releases::routes())
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
    shutdown: CancellationToken,
) {
    let backoff = Arc::new(auth::AuthBackoff::new(backoff));
    let app = router(state).layer(axum::middleware::from_fn_with_state(
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
            // `Router` is always ready; `call` on a clone needs no `poll_ready`.
            tower_service::Service::call(&mut app.clone(), req)
        })
    };
    crate::listener::serve(listener, limits, make_service, shutdown).await;
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

fn device_json(state: &ApiState, d: &DeviceRecord) -> Value {
    // The session registry is the live truth for "online"; the store lags by design.
    let path = state.sessions.path(&d.uuid);
    let online = path.is_some();
    json!({
        "uuid": d.uuid.as_str(),
        "name": d.name.clone().unwrap_or_else(|| d.uuid.as_str()[..7].to_string()),
        "fleet": d.fleet,
        "online": online,
        // The live tunnel's transport (`quic` / `tcp`) and round-trip time.
        "transport": path.map(|p| p.kind.as_str()),
        "rtt_ms": path.map(|p| (p.rtt.as_secs_f64() * 1000.0 * 10.0).round() / 10.0),
        "last_seen": d.last_seen,
        "created_at": d.created_at,
        "public_url": d.public_url,
        "url": d.public_url.then(|| format!("http://{}.{}/", d.uuid, state.domain)),
        "public_address": d.public_address,
        "agent_version": d.state.as_ref().and_then(|s| s.get("agent_version")).cloned(),
        "os_version": d.state.as_ref().and_then(|s| s.get("os_version")).cloned(),
        "ip_addresses": d.state.as_ref().and_then(|s| s.get("ip_addresses")).cloned(),
        "status": d.state.as_ref().and_then(|s| s.get("status")).cloned(),
        "state": d.state,
    })
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

// ---- fleets ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFleet {
    name: String,
    #[serde(default)]
    public_url_default: bool,
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_name",
            format!("{name:?}: names are 1-64 characters of A-Z a-z 0-9 - _ ."),
        ))
    }
}

async fn list_fleets(caller: Caller, State(st): State<ApiState>) -> ApiResult {
    caller.require(Role::Viewer)?;
    let fleets = st.store.fleets().await?;
    Ok(Json(json!(fleets
        .iter()
        .map(|(f, n)| json!({"name": f.name, "public_url_default": f.public_url_default, "created_at": f.created_at, "devices": n}))
        .collect::<Vec<_>>())))
}

async fn create_fleet(
    caller: Caller,
    State(st): State<ApiState>,
    body: Result<JsonObject<NewFleet>, ApiError>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let JsonObject(body) = body?;
    valid_name(&body.name)?;
    let f = st
        .store
        .create_fleet(&body.name, body.public_url_default)
        .await?;
    st.store
        .audit(
            &caller.actor(),
            "fleet.create",
            &f.name,
            &json!({"public_url_default": f.public_url_default}).to_string(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"name": f.name, "public_url_default": f.public_url_default, "created_at": f.created_at, "devices": 0}),
        ),
    ))
}

async fn show_fleet(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    let Path(name) = name?;
    let f = st
        .store
        .fleet(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no fleet {name:?}")))?;
    let devices: Vec<Value> = st
        .store
        .devices()
        .await?
        .iter()
        .filter(|d| d.fleet.as_deref() == Some(&name))
        .map(|d| device_json(&st, d))
        .collect();
    Ok(Json(
        json!({"name": f.name, "public_url_default": f.public_url_default, "created_at": f.created_at, "devices": devices}),
    ))
}

async fn delete_fleet(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    let Path(name) = name?;
    // Keys, releases and fleet variables go with the fleet; devices block it (409).
    let gone = st
        .store
        .delete_fleet(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no fleet {name:?}")))?;
    st.store
        .audit(
            &caller.actor(),
            "fleet.delete",
            &name,
            &json!({"keys": gone.keys, "releases": gone.releases, "env_vars": gone.env_vars})
                .to_string(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Switch {
    enabled: bool,
}

async fn set_fleet_public_url(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonObject<Switch>, ApiError>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    let Path(name) = name?;
    let JsonObject(body) = body?;
    let switched = st
        .store
        .set_fleet_public_url(&name, body.enabled)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no fleet {name:?}")))?;
    for uuid in &switched {
        st.sessions.set_public_url(uuid, body.enabled);
    }
    st.store
        .audit(
            &caller.actor(),
            "fleet.public_url",
            &name,
            &json!({"enabled": body.enabled, "devices": switched.len()}).to_string(),
        )
        .await?;
    Ok(Json(
        json!({"fleet": name, "enabled": body.enabled, "devices_switched": switched.len()}),
    ))
}

// ---- devices ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFilter {
    fleet: Option<String>,
    online: Option<bool>,
    /// `NAME` or `NAME=VALUE`.
    tag: Option<String>,
}

async fn list_devices(
    caller: Caller,
    State(st): State<ApiState>,
    filter: Result<Query<DeviceFilter>, QueryRejection>,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    let Query(filter) = filter?;
    let tagged = match &filter.tag {
        Some(t) => {
            let (name, value) = match t.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (t.as_str(), None),
            };
            Some(st.store.devices_with_tag(name, value).await?)
        }
        None => None,
    };
    let devices: Vec<Value> = st
        .store
        .devices()
        .await?
        .iter()
        .filter(|d| filter.fleet.is_none() || d.fleet == filter.fleet)
        .filter(|d| tagged.as_ref().is_none_or(|t| t.contains(&d.uuid)))
        .map(|d| device_json(&st, d))
        .filter(|v| filter.online.is_none_or(|o| v["online"] == o))
        .collect();
    Ok(Json(json!(devices)))
}

async fn show_device(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    let d = device_or_404(&st, uuid).await?;
    let mut v = device_json(&st, &d);
    let tags = st.store.tags(d.uuid).await?;
    v["tags"] = Value::Object(
        tags.into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    );
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicePatch {
    name: Option<String>,
    /// `null` removes the device from its fleet.
    #[serde(default, deserialize_with = "double_option")]
    fleet: Option<Option<String>>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

async fn update_device(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<DevicePatch>, ApiError>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    let JsonObject(patch) = body?;
    if let Some(n) = &patch.name {
        valid_name(n)?;
    }
    let fleet = patch.fleet.as_ref().map(|f| f.as_deref());
    if !st
        .store
        .update_device(uuid, patch.name.as_deref(), fleet)
        .await?
    {
        return Err(ApiError::not_found(format!("no device {uuid}")));
    }
    if patch.fleet.is_some() {
        // A pin to the old fleet's release means nothing in the new fleet.
        st.store.pin_device(uuid, None).await?;
        crate::targets::retarget(&st.sessions, uuid);
    }
    st.store
        .audit(
            &caller.actor(),
            "device.update",
            uuid.as_str(),
            &json!({"name": patch.name, "fleet": patch.fleet}).to_string(),
        )
        .await?;
    let d = device_or_404(&st, uuid).await?;
    Ok(Json(device_json(&st, &d)))
}

async fn delete_device(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    if !st.store.revoke_device(uuid).await? {
        return Err(ApiError::not_found(format!("no device {uuid}")));
    }
    // Revocation is immediate: the live tunnel goes now, the next handshake is refused.
    st.sessions
        .disconnect(&uuid, AppErrorCode::UnknownDevice, b"device deleted");
    st.store
        .audit(&caller.actor(), "device.delete", uuid.as_str(), "{}")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_device_public_url(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<Switch>, ApiError>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    let JsonObject(body) = body?;
    if !st.store.set_public_url(uuid, body.enabled).await? {
        return Err(ApiError::not_found(format!("no device {uuid}")));
    }
    st.sessions.set_public_url(&uuid, body.enabled);
    st.store
        .audit(
            &caller.actor(),
            "device.public_url",
            uuid.as_str(),
            &json!({"enabled": body.enabled}).to_string(),
        )
        .await?;
    let d = device_or_404(&st, uuid).await?;
    Ok(Json(device_json(&st, &d)))
}

// ---- provisioning keys and pre-registration ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    /// Seconds until the key expires; none = never.
    #[serde(default, deserialize_with = "whole_number")]
    expires_in_secs: Option<i64>,
    /// How many devices may provision with it; none = unlimited.
    #[serde(default, deserialize_with = "whole_number")]
    max_uses: Option<i64>,
}

/// An optional integer that may also be written as a whole float (`5.0`): JSON Schema, and
/// so the OpenAPI document, counts those as integers. `5.5` is still an error.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_i64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (i64::MIN as f64..i64::MAX as f64).contains(f))
                .map(|f| f as i64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("expected an integer, got {n}")))
}

fn key_json(k: &crate::store::KeyRecord) -> Value {
    json!({
        "id": k.id, "fleet": k.fleet, "created_at": k.created_at, "expires_at": k.expires_at,
        "max_uses": k.max_uses, "uses": k.uses, "revoked": k.revoked,
    })
}

async fn create_key(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonObject<NewKey>, ApiError>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let Path(fleet) = name?;
    let JsonObject(body) = body?;
    if body.expires_in_secs.is_some_and(|s| s <= 0) || body.max_uses.is_some_and(|n| n <= 0) {
        return Err(ApiError::bad_request(
            "invalid_request",
            "expires_in_secs and max_uses must be positive",
        ));
    }
    let t = auth::generate_token();
    let expires_at = body
        .expires_in_secs
        .map(|s| crate::store::now_unix().saturating_add(s));
    st.store
        .create_key(&t.id, &fleet, &t.hash, expires_at, body.max_uses)
        .await?;
    let key = protocol::ProvisioningKey {
        gateway: st.advertise.clone(),
        ca_fingerprint: st.ca_fingerprint.clone(),
        secret: t.token,
    };
    st.store
        .audit(
            &caller.actor(),
            "key.create",
            &t.id,
            &json!({"fleet": fleet, "expires_at": expires_at, "max_uses": body.max_uses})
                .to_string(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": t.id, "fleet": fleet, "expires_at": expires_at, "max_uses": body.max_uses,
            "key": key.encode(),
        })),
    ))
}

async fn list_keys(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    let Path(fleet) = name?;
    fleet_or_404(&st, &fleet).await?;
    let keys = st.store.keys(&fleet).await?;
    Ok(Json(json!(keys.iter().map(key_json).collect::<Vec<_>>())))
}

async fn revoke_key(
    caller: Caller,
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    let Path(id) = id?;
    if !st.store.revoke_key(&id).await? {
        return Err(ApiError::not_found(format!("no provisioning key {id:?}")));
    }
    st.store
        .audit(&caller.actor(), "key.revoke", &id, "{}")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    uuid: Option<String>,
    fleet: Option<String>,
}

async fn register_device(
    caller: Caller,
    State(st): State<ApiState>,
    body: Result<JsonObject<Register>, ApiError>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let JsonObject(body) = body?;
    let uuid = match body.uuid.as_deref() {
        Some(u) => parse_uuid(u)?,
        None => certs::random_uuid(),
    };
    let d = st
        .store
        .register_device(uuid, body.fleet.as_deref())
        .await?;
    st.store
        .audit(
            &caller.actor(),
            "device.register",
            uuid.as_str(),
            &json!({"fleet": body.fleet}).to_string(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(device_json(&st, &d))))
}

// ---- actions ----

/// Actions a device understands.
pub const ACTIONS: &[&str] = &[
    "blink",
    "reboot",
    "shutdown",
    "restart",
    "stop-service",
    "start-service",
    "purge",
    "update",
    "regenerate-api-key",
    "host-config",
];

/// Default time an action waits for an offline device.
const DEFAULT_ACTION_TTL: i64 = 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAction {
    action: String,
    #[serde(default)]
    params: serde_json::Map<String, Value>,
    #[serde(default)]
    force: bool,
    #[serde(default, deserialize_with = "whole_number")]
    ttl_secs: Option<i64>,
}

fn action_json(a: &crate::store::ActionRecord) -> Value {
    // A pending action past its TTL is expired even before the device next connects
    // (the store marks it so at that point).
    let status = if a.status == "pending" && a.expires_at <= crate::store::now_unix() {
        "expired"
    } else {
        a.status.as_str()
    };
    json!({
        "id": a.id, "device": a.device.as_str(), "action": a.name, "params": a.params,
        "status": status, "detail": a.detail, "requested_by": a.actor,
        "created_at": a.created_at, "expires_at": a.expires_at,
        "delivered_at": a.delivered_at, "finished_at": a.finished_at,
    })
}

async fn create_action(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<NewAction>, ApiError>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Operator)?;
    let JsonObject(body) = body?;
    if !ACTIONS.contains(&body.action.as_str()) {
        return Err(ApiError::bad_request(
            "invalid_action",
            format!(
                "unknown action {:?}; one of: {}",
                body.action,
                ACTIONS.join(", ")
            ),
        ));
    }
    let ttl = body.ttl_secs.unwrap_or(DEFAULT_ACTION_TTL);
    if ttl <= 0 {
        return Err(ApiError::bad_request(
            "invalid_request",
            "ttl_secs must be positive",
        ));
    }
    device_or_404(&st, uuid).await?;
    let mut params = body.params;
    if body.force {
        params.insert("force".into(), Value::Bool(true));
    }
    let params = Value::Object(params);
    let id = format!("act_{}", certs::random_uuid());
    let a = st
        .store
        .create_action(&id, uuid, &body.action, &params, &caller.actor(), ttl)
        .await?;
    st.store
        .audit(
            &caller.actor(),
            &format!("action.{}", body.action),
            uuid.as_str(),
            &json!({"id": id, "params": params}).to_string(),
        )
        .await?;
    let online = st.sessions.kick(&uuid);
    let mut v = action_json(&a);
    v["device_online"] = Value::Bool(online);
    Ok((StatusCode::ACCEPTED, Json(v)))
}

async fn list_actions(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    device_or_404(&st, uuid).await?;
    let actions = st.store.device_actions(uuid, 200).await?;
    Ok(Json(json!(actions
        .iter()
        .map(action_json)
        .collect::<Vec<_>>())))
}

async fn show_action(
    caller: Caller,
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    let Path(id) = id?;
    let a = st
        .store
        .action(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no action {id:?}")))?;
    Ok(Json(action_json(&a)))
}

// ---- tags and environment variables ----

async fn get_tags(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    device_or_404(&st, uuid).await?;
    let tags = st.store.tags(uuid).await?;
    Ok(Json(Value::Object(
        tags.into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )))
}

async fn put_tags(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<std::collections::BTreeMap<String, String>>, ApiError>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    let JsonObject(tags) = body?;
    device_or_404(&st, uuid).await?;
    for k in tags.keys() {
        if k.is_empty() || k.chars().count() > 100 {
            return Err(ApiError::bad_request(
                "invalid_tag",
                format!("tag name {k:?} must be 1-100 characters"),
            ));
        }
    }
    let tags: Vec<(String, String)> = tags.into_iter().collect();
    st.store.set_tags(uuid, &tags).await?;
    st.store
        .audit(
            &caller.actor(),
            "device.tags",
            uuid.as_str(),
            &json!(tags.iter().map(|(k, _)| k).collect::<Vec<_>>()).to_string(),
        )
        .await?;
    Ok(Json(Value::Object(
        tags.into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )))
}

/// `{"vars": {NAME: value}, "services": {service: {NAME: value}}}`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EnvBody {
    #[serde(default)]
    vars: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    services: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

fn valid_env_name(n: &str) -> Result<(), ApiError> {
    let mut chars = n.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_env_name",
            format!("{n:?} is not a variable name (letters, digits, _; not starting with a digit)"),
        ))
    }
}

fn env_rows(body: EnvBody) -> Result<Vec<(String, String, String)>, ApiError> {
    let mut rows = Vec::new();
    for (k, v) in body.vars {
        valid_env_name(&k)?;
        rows.push((String::new(), k, v));
    }
    for (svc, vars) in body.services {
        valid_name(&svc)?;
        for (k, v) in vars {
            valid_env_name(&k)?;
            rows.push((svc.clone(), k, v));
        }
    }
    Ok(rows)
}

fn env_json(rows: Vec<(String, String, String)>) -> Value {
    let mut vars = serde_json::Map::new();
    let mut services = serde_json::Map::new();
    for (svc, k, v) in rows {
        if svc.is_empty() {
            vars.insert(k, Value::String(v));
        } else {
            let e = services.entry(svc).or_insert_with(|| json!({}));
            e[k] = Value::String(v);
        }
    }
    json!({"vars": vars, "services": services})
}

async fn get_device_env(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    device_or_404(&st, uuid).await?;
    Ok(Json(env_json(st.store.env("device", uuid.as_str()).await?)))
}

async fn put_device_env(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<EnvBody>, ApiError>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    let JsonObject(body) = body?;
    device_or_404(&st, uuid).await?;
    let rows = env_rows(body)?;
    st.store.set_env("device", uuid.as_str(), &rows).await?;
    crate::targets::retarget(&st.sessions, uuid);
    st.store
        .audit(
            &caller.actor(),
            "device.env",
            uuid.as_str(),
            &json!({"vars": rows.len()}).to_string(),
        )
        .await?;
    Ok(Json(env_json(rows)))
}

async fn get_fleet_env(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    let Path(name) = name?;
    fleet_or_404(&st, &name).await?;
    Ok(Json(env_json(st.store.env("fleet", &name).await?)))
}

async fn put_fleet_env(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonObject<EnvBody>, ApiError>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    let Path(name) = name?;
    let JsonObject(body) = body?;
    fleet_or_404(&st, &name).await?;
    let rows = env_rows(body)?;
    st.store.set_env("fleet", &name, &rows).await?;
    crate::targets::retarget_fleet(&st.store, &st.sessions, &name).await;
    st.store
        .audit(
            &caller.actor(),
            "fleet.env",
            &name,
            &json!({"vars": rows.len()}).to_string(),
        )
        .await?;
    Ok(Json(env_json(rows)))
}

// ---- tokens ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenReq {
    name: String,
    role: String,
}

async fn create_token(
    caller: Caller,
    State(st): State<ApiState>,
    body: Result<JsonObject<NewTokenReq>, ApiError>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let JsonObject(body) = body?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_role",
            format!("{:?}: role is viewer, operator or admin", body.role),
        )
    })?;
    valid_name(&body.name)?;
    let t = auth::generate_token();
    st.store
        .create_token(&t.id, &body.name, role.as_str(), &t.hash)
        .await?;
    st.store
        .audit(
            &caller.actor(),
            "token.create",
            &t.id,
            &json!({"name": body.name, "role": role.as_str()}).to_string(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": t.id, "name": body.name, "role": role.as_str(), "token": t.token})),
    ))
}

async fn list_tokens(caller: Caller, State(st): State<ApiState>) -> ApiResult {
    caller.require(Role::Admin)?;
    let tokens = st.store.tokens().await?;
    Ok(Json(json!(tokens
        .iter()
        .map(|t| json!({"id": t.id, "name": t.name, "role": t.role, "created_at": t.created_at, "last_used": t.last_used}))
        .collect::<Vec<_>>())))
}

async fn delete_token(
    caller: Caller,
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    let Path(id) = id?;
    if !st.store.delete_token(&id).await? {
        return Err(ApiError::not_found(format!("no token {id:?}")));
    }
    st.store
        .audit(&caller.actor(), "token.delete", &id, "{}")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- audit ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

async fn audit_log(
    caller: Caller,
    State(st): State<ApiState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = st.store.audit_log(q.before, limit).await?;
    Ok(Json(json!(entries
        .iter()
        .map(|e| json!({
            "seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
            "detail": serde_json::from_str::<Value>(&e.detail).unwrap_or(Value::Null),
        }))
        .collect::<Vec<_>>())))
}
