//! The v1 endpoints (all behind the API key; `/ping` and `/v1/healthy` live in `mod.rs`).

use std::sync::PoisonError;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use serde_json::{json, Value};

use super::body::{kind, path_id, JsonBody, Payload};
use super::reply::{control_error, json, legacy, text, ErrorStyle, Reject, Reply};
use super::{BoundPort, LocalApiState};

/// The v1 routes.
pub(crate) fn routes() -> Router<LocalApiState> {
    Router::new()
        .route("/v1/blink", post(blink))
        .route("/v1/update", post(update))
        .route("/v1/reboot", post(reboot))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/purge", post(purge))
        .route("/v1/restart", post(restart))
        .route("/v1/regenerate-api-key", post(regenerate_api_key))
        .route("/v1/device", get(device))
        .route(
            "/v1/device/host-config",
            get(host_config).patch(patch_host_config),
        )
        .route("/v1/apps/{app_id}", get(app))
        .route("/v1/apps/{app_id}/stop", post(stop_app))
        .route("/v1/apps/{app_id}/start", post(start_app))
}

/// Parses a body for a v1 endpoint: errors are plain-text 400s.
fn parse(body: &Payload) -> Result<JsonBody, Reject> {
    JsonBody::parse(body).map_err(|m| text(StatusCode::BAD_REQUEST, m).into())
}

fn bad_request(message: impl Into<String>) -> Response {
    text(StatusCode::BAD_REQUEST, message)
}

/// The app id of a `/v1/apps/{app_id}` path.
fn app_id(segment: &str) -> Result<u32, Reject> {
    path_id(segment).ok_or_else(|| text(StatusCode::BAD_REQUEST, "Invalid app id").into())
}

/// `POST /v1/blink`: empty 200; the blink runs on (balena ignores any body here).
async fn blink(State(s): State<LocalApiState>) -> Reply {
    s.control
        .blink()
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /v1/update`, body `{"force":bool}`: empty 204.
async fn update(State(s): State<LocalApiState>, body: Payload) -> Reply {
    let force = parse(&body)?.force().map_err(bad_request)?;
    tracing::info!(force, "update check requested through the local API");
    s.control
        .update(force)
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/reboot`, body `{"force":bool}`: 202 `{"Data":"OK","Error":""}`.
async fn reboot(State(s): State<LocalApiState>, body: Payload) -> Reply {
    let force = parse(&body)?.force().map_err(bad_request)?;
    tracing::info!(force, "reboot requested through the local API");
    s.control
        .reboot(force)
        .await
        .map_err(|e| control_error(e, ErrorStyle::DeviceAction))?;
    Ok(legacy(StatusCode::ACCEPTED, "OK", ""))
}

/// `POST /v1/shutdown`, body `{"force":bool}`: 202 `{"Data":"OK","Error":""}`.
async fn shutdown(State(s): State<LocalApiState>, body: Payload) -> Reply {
    let force = parse(&body)?.force().map_err(bad_request)?;
    tracing::info!(force, "shutdown requested through the local API");
    s.control
        .shutdown(force)
        .await
        .map_err(|e| control_error(e, ErrorStyle::DeviceAction))?;
    Ok(legacy(StatusCode::ACCEPTED, "OK", ""))
}

/// `POST /v1/purge`, body `{"appId":N,"force":bool}`: 200 `{"Data":"OK","Error":""}`.
async fn purge(State(s): State<LocalApiState>, body: Payload) -> Reply {
    let body = parse(&body)?;
    let force = body.force().map_err(bad_request)?;
    let app_id = body
        .id("appId")
        .map_err(bad_request)?
        .ok_or_else(|| bad_request("Invalid or missing appId"))?;
    tracing::info!(app_id, force, "purge requested through the local API");
    s.control
        .purge(app_id, force)
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    Ok(legacy(StatusCode::OK, "OK", ""))
}

/// `POST /v1/restart`, body `{"appId":N,"force":bool}`: 200 `OK`.
async fn restart(State(s): State<LocalApiState>, body: Payload) -> Reply {
    let body = parse(&body)?;
    let force = body.force().map_err(bad_request)?;
    let app_id = body
        .id("appId")
        .map_err(bad_request)?
        .ok_or_else(|| bad_request("Missing app id"))?;
    tracing::info!(app_id, force, "app restart requested through the local API");
    s.control
        .restart_app(app_id, force)
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    Ok(text(StatusCode::OK, "OK"))
}

/// `POST /v1/regenerate-api-key`: 200 with the new key as text. The old key stops
/// working with this response.
async fn regenerate_api_key(State(s): State<LocalApiState>) -> Reply {
    let key = s
        .control
        .regenerate_api_key()
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    if key.is_empty() {
        // An empty key would lock every client out for good (see `auth::keys_match`).
        let e = super::ControlError::Internal("the new API key is empty".into());
        return Err(control_error(e, ErrorStyle::Standard).into());
    }
    *s.api_key.write().unwrap_or_else(PoisonError::into_inner) = key.clone();
    tracing::info!("local API key regenerated");
    Ok(text(StatusCode::OK, key))
}

/// `GET /v1/device`: balena's legacy device state. `api_port` is the port this API is
/// bound to when [`super::serve`] runs it (which knows), else [`super::DeviceInfo::api_port`].
async fn device(State(s): State<LocalApiState>, bound: Option<Extension<BoundPort>>) -> Response {
    let d = &s.device;
    let update = d.update_status();
    let api_port = bound.map_or_else(|| d.api_port(), |Extension(BoundPort(p))| p);
    let mut body = json!({
        "api_port": api_port,
        "ip_address": d.ip_addresses().join(" "),
        "os_version": d.os_version(),
        "supervisor_version": d.supervisor_version(),
        "update_pending": update.pending,
        "update_failed": update.failed,
        "update_downloaded": update.downloaded,
        "status": d.status(),
        "download_progress": update.download_progress,
    });
    // balena leaves `commit` out until a release is installed.
    if let (Some(commit), Some(map)) = (d.commit(), body.as_object_mut()) {
        map.insert("commit".into(), Value::String(commit));
    }
    json(body)
}

/// `GET /v1/device/host-config`: the host configuration as JSON.
async fn host_config(State(s): State<LocalApiState>) -> Reply {
    let conf = s
        .control
        .host_config()
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    Ok(json(conf))
}

/// `PATCH /v1/device/host-config`, body `{"network":{...},"force":bool}`: 200 `OK`.
async fn patch_host_config(State(s): State<LocalApiState>, body: Payload) -> Reply {
    let body = parse(&body)?;
    let force = body.force().map_err(bad_request)?;
    match body.get("network") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(other) => {
            return Err(bad_request(format!(
                "network must be a JSON object, got {}",
                kind(other)
            ))
            .into())
        }
    }
    if let Some(dns) = body.get("network").and_then(|n| n.get("dns")) {
        if !matches!(dns, Value::Bool(_) | Value::String(_) | Value::Null) {
            return Err(bad_request(format!(
                "Expected dns to be a boolean or string, received: {}",
                kind(dns)
            ))
            .into());
        }
    }
    let patch = Value::Object(body.without("force"));
    s.control
        .patch_host_config(patch, force)
        .await
        .map_err(|e| control_error(e, ErrorStyle::HostConfig))?;
    Ok(text(StatusCode::OK, "OK"))
}

/// `GET /v1/apps/{app_id}`: the single-container app, or 400 `App not found` (balena
/// kept 400 here for compatibility).
async fn app(State(s): State<LocalApiState>, Path(segment): Path<String>) -> Reply {
    let app_id = app_id(&segment)?;
    match s.control.app(app_id).await {
        Ok(Some(app)) => Ok(json(app)),
        Ok(None) => Err(text(StatusCode::BAD_REQUEST, "App not found").into()),
        Err(e) => Err(control_error(e, ErrorStyle::LegacyApp).into()),
    }
}

/// `POST /v1/apps/{app_id}/stop`, body `{"force":bool}`: 200 `{"containerId":...}`.
async fn stop_app(
    State(s): State<LocalApiState>,
    Path(segment): Path<String>,
    body: Payload,
) -> Reply {
    let app_id = app_id(&segment)?;
    let force = parse(&body)?.force().map_err(bad_request)?;
    let container_id = s
        .control
        .stop_app(app_id, force)
        .await
        .map_err(|e| control_error(e, ErrorStyle::LegacyApp))?;
    Ok(json(json!({ "containerId": container_id })))
}

/// `POST /v1/apps/{app_id}/start`: 200 `{"containerId":...}`. A `force` in the body
/// is accepted and has nothing to override.
async fn start_app(
    State(s): State<LocalApiState>,
    Path(segment): Path<String>,
    body: Payload,
) -> Reply {
    let app_id = app_id(&segment)?;
    parse(&body)?.force().map_err(bad_request)?;
    let container_id = s
        .control
        .start_app(app_id)
        .await
        .map_err(|e| control_error(e, ErrorStyle::LegacyApp))?;
    Ok(json(json!({ "containerId": container_id })))
}
