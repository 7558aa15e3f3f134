//! Response bodies in the shapes balena's supervisor uses, which differ by endpoint
//! family: plain text, v2's `{"status":"failed","message":...}` envelope, and the Go-era
//! `{"Data":...,"Error":...}` of reboot/shutdown/purge.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::control::ControlError;

/// A handler's result: both arms are finished responses.
pub(crate) type Reply = Result<Response, Reject>;

/// An error response on its way out of a handler, boxed so that `Result<T, Reject>`
/// stays small. `?` turns any [`Response`] into one.
pub(crate) struct Reject(Box<Response>);

impl From<Response> for Reject {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A `text/plain` response.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, body.into()).into_response()
}

/// `200` with a JSON body.
pub(crate) fn json(body: Value) -> Response {
    Json(body).into_response()
}

/// v2's success envelope: `{"status":"success", ...fields}`.
pub(crate) fn success(fields: Value) -> Response {
    let mut body = json!({ "status": "success" });
    if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), fields) {
        body.extend(fields);
    }
    Json(body).into_response()
}

/// v2's failure envelope, also used by balena's error middleware for every endpoint.
pub(crate) fn failed(status: StatusCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (
        status,
        Json(json!({ "status": "failed", "message": message })),
    )
        .into_response()
}

/// The Go-era envelope of `/v1/reboot`, `/v1/shutdown` and `/v1/purge`.
pub(crate) fn legacy(status: StatusCode, data: &str, error: &str) -> Response {
    (status, Json(json!({ "Data": data, "Error": error }))).into_response()
}

/// How an endpoint family reports a [`ControlError`]; each mirrors balena's supervisor.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ErrorStyle {
    /// Most endpoints: 404/400 as plain text, 423/503 in the `failed` envelope.
    Standard,
    /// The v1 app endpoints, which predate 404s: not found is a 400 there.
    LegacyApp,
    /// `/v1/reboot` and `/v1/shutdown`: `{"Data":"","Error":msg}`, 423 or 500.
    DeviceAction,
    /// `PATCH /v1/device/host-config`: plain text, 423 or 503.
    HostConfig,
}

/// The response for a failed [`super::DeviceControl`] call.
pub(crate) fn control_error(e: ControlError, style: ErrorStyle) -> Response {
    if let ControlError::Internal(_) = e {
        tracing::warn!(error = %e, "local API action failed");
    }
    let message = e.to_string();
    let status = match (&e, style) {
        (ControlError::Locked(_), _) => StatusCode::LOCKED,
        (ControlError::BadRequest(_), _) => StatusCode::BAD_REQUEST,
        (ControlError::NotFound(_), ErrorStyle::LegacyApp) => StatusCode::BAD_REQUEST,
        (ControlError::NotFound(_), _) => StatusCode::NOT_FOUND,
        (ControlError::Internal(_), ErrorStyle::DeviceAction) => StatusCode::INTERNAL_SERVER_ERROR,
        (ControlError::Internal(_), _) => StatusCode::SERVICE_UNAVAILABLE,
    };
    match style {
        ErrorStyle::DeviceAction => legacy(status, "", &message),
        ErrorStyle::HostConfig => text(status, message),
        ErrorStyle::Standard | ErrorStyle::LegacyApp => match e {
            ControlError::Locked(_) | ControlError::Internal(_) => failed(status, message),
            ControlError::NotFound(_) | ControlError::BadRequest(_) => text(status, message),
        },
    }
}
