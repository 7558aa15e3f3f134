//! The v2 endpoints: JSON with a `{"status":"success"|"failed", ...}` envelope, except
//! the app and service actions, which answer a plain `OK` like balena's.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use super::body::{path_id, JsonBody, Payload};
use super::control::{ControlFuture, ServiceRef};
use super::reply::{control_error, failed, json, success, text, ErrorStyle, Reject, Reply};
use super::{DeviceControl, LocalApiState};

/// balena's message when a service action names no service.
const NO_SERVICE: &str = "serviceName or imageId parameters were not provided or the app is \
                          multi-container. Use the v2 service action endpoints.";

/// The v2 routes.
pub(crate) fn routes() -> Router<LocalApiState> {
    Router::new()
        .route("/v2/applications/state", get(applications_state))
        .route(
            "/v2/applications/{app_id}/restart-service",
            post(restart_service),
        )
        .route("/v2/applications/{app_id}/stop-service", post(stop_service))
        .route(
            "/v2/applications/{app_id}/start-service",
            post(start_service),
        )
        .route("/v2/applications/{app_id}/restart", post(restart_app))
        .route("/v2/applications/{app_id}/purge", post(purge_app))
        .route("/v2/state/status", get(state_status))
        // A whole target state (compose services, env) can be large: balena's 10 MB.
        .route(
            "/v2/local/target-state",
            post(local_target_state).layer(DefaultBodyLimit::max(super::MAX_TARGET_STATE)),
        )
        .route("/v2/version", get(version))
        .route("/v2/device/name", get(device_name))
        .route("/v2/device/tags", get(device_tags))
        .route("/v2/device/vpn", get(device_vpn))
}

fn bad_request(message: impl Into<String>) -> Response {
    failed(StatusCode::BAD_REQUEST, message)
}

/// The app id of a `/v2/applications/{app_id}/...` path.
fn app_id(segment: &str) -> Result<u32, Reject> {
    path_id(segment).ok_or_else(|| bad_request("Invalid app id").into())
}

fn parse(body: &Payload) -> Result<JsonBody, Reject> {
    JsonBody::parse(body).map_err(|m| bad_request(m).into())
}

/// `GET /v2/applications/state`: the current state of apps and services.
async fn applications_state(State(s): State<LocalApiState>) -> Reply {
    let state = s
        .control
        .apps_state()
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    Ok(json(state))
}

/// The three service actions, which differ only in the control call.
#[derive(Debug, Clone, Copy)]
enum ServiceAction {
    Restart,
    Stop,
    Start,
}

impl ServiceAction {
    fn call(
        self,
        control: &dyn DeviceControl,
        app_id: u32,
        service: ServiceRef,
        force: bool,
    ) -> ControlFuture<'_, ()> {
        match self {
            Self::Restart => control.restart_service(app_id, service, force),
            Self::Stop => control.stop_service(app_id, service, force),
            // Starting kills nothing: `force` has no lock to override.
            Self::Start => control.start_service(app_id, service),
        }
    }
}

/// `POST /v2/applications/{app_id}/{restart,stop,start}-service`, body
/// `{"serviceName":"x"}` or `{"imageId":N}`, plus an optional `force`: 200 `OK`.
async fn service_action(
    s: LocalApiState,
    segment: &str,
    body: &Payload,
    action: ServiceAction,
) -> Reply {
    let app_id = app_id(segment)?;
    let body = parse(body)?;
    let force = body.force().map_err(bad_request)?;
    let name = body.string("serviceName").map_err(bad_request)?;
    let image_id = body.id("imageId").map_err(bad_request)?;
    // balena (v8.2.2+) takes either; the name is the more specific in our model.
    let service = match (name, image_id) {
        (Some(name), _) => ServiceRef::Name(name),
        (None, Some(id)) => ServiceRef::ImageId(id),
        (None, None) => return Err(text(StatusCode::BAD_REQUEST, NO_SERVICE).into()),
    };
    tracing::info!(
        app_id,
        ?service,
        ?action,
        force,
        "service action through the local API"
    );
    action
        .call(s.control.as_ref(), app_id, service, force)
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    Ok(text(StatusCode::OK, "OK"))
}

async fn restart_service(
    State(s): State<LocalApiState>,
    Path(segment): Path<String>,
    body: Payload,
) -> Reply {
    service_action(s, &segment, &body, ServiceAction::Restart).await
}

async fn stop_service(
    State(s): State<LocalApiState>,
    Path(segment): Path<String>,
    body: Payload,
) -> Reply {
    service_action(s, &segment, &body, ServiceAction::Stop).await
}

async fn start_service(
    State(s): State<LocalApiState>,
    Path(segment): Path<String>,
    body: Payload,
) -> Reply {
    service_action(s, &segment, &body, ServiceAction::Start).await
}

/// `POST /v2/applications/{app_id}/restart`, body `{"force":bool}`: 200 `OK`.
async fn restart_app(
    State(s): State<LocalApiState>,
    Path(segment): Path<String>,
    body: Payload,
) -> Reply {
    let app_id = app_id(&segment)?;
    let force = parse(&body)?.force().map_err(bad_request)?;
    tracing::info!(app_id, force, "app restart requested through the local API");
    s.control
        .restart_app(app_id, force)
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    Ok(text(StatusCode::OK, "OK"))
}

/// `POST /v2/applications/{app_id}/purge`, body `{"force":bool}`: 200 `OK`.
async fn purge_app(
    State(s): State<LocalApiState>,
    Path(segment): Path<String>,
    body: Payload,
) -> Reply {
    let app_id = app_id(&segment)?;
    let force = parse(&body)?.force().map_err(bad_request)?;
    tracing::info!(app_id, force, "purge requested through the local API");
    s.control
        .purge(app_id, force)
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    Ok(text(StatusCode::OK, "OK"))
}

/// `GET /v2/state/status`: containers, images, overall progress, release.
async fn state_status(State(s): State<LocalApiState>) -> Reply {
    let status = s
        .control
        .state_status()
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    let update = s.device.update_status();
    Ok(success(json!({
        "appState": if update.applying { "applying" } else { "applied" },
        "overallDownloadProgress": update.download_progress,
        "containers": status.containers,
        "images": status.images,
        "release": s.device.commit(),
    })))
}

/// `POST /v2/local/target-state`: local mode, applies the body (a target state) without
/// the gateway, pinned until the next preload or local target.
async fn local_target_state(State(s): State<LocalApiState>, body: Bytes) -> Reply {
    let target: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        control_error(
            crate::local_api::ControlError::BadRequest(format!("invalid JSON: {e}")),
            ErrorStyle::Standard,
        )
    })?;
    s.control
        .set_local_target(target)
        .await
        .map_err(|e| control_error(e, ErrorStyle::Standard))?;
    Ok(success(json!({ "message": "OK" })))
}

/// `GET /v2/version`: `{"status":"success","version":...}`.
async fn version(State(s): State<LocalApiState>) -> Response {
    success(json!({ "version": s.device.supervisor_version() }))
}

/// `GET /v2/device/name`: `{"status":"success","deviceName":...}`.
async fn device_name(State(s): State<LocalApiState>) -> Response {
    success(json!({ "deviceName": s.device.name() }))
}

/// `GET /v2/device/tags`: `{"status":"success","tags":[{"name":...,"value":...}]}`.
/// balena also sends each tag's database `id`; tags have none here.
async fn device_tags(State(s): State<LocalApiState>) -> Response {
    let tags: Vec<_> = s
        .device
        .tags()
        .into_iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    success(json!({ "tags": tags }))
}

/// `GET /v2/device/vpn`: balena's VPN is our tunnel, always enabled.
async fn device_vpn(State(s): State<LocalApiState>) -> Response {
    success(json!({ "vpn": { "enabled": true, "connected": s.device.connected() } }))
}
