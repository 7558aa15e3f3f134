//! The agent's local supervisor API, compatible with balena's.
//!
//! Services on the device call it to blink the LED, reboot, trigger or hold off updates,
//! restart or stop services, and read device state. It listens on `127.0.0.1:48484` by
//! default ([`DEFAULT_LISTEN`]) and speaks HTTP/1.1.
//!
//! Paths, request bodies, status codes and response bodies follow balena's documentation,
//! "Interacting with the balena Supervisor"
//! (<https://docs.balena.io/reference/supervisor/supervisor-api/>, formerly
//! <https://www.balena.io/docs/runtime/supervisor-api/>; its source is `docs/API.md` in
//! balena-os/balena-supervisor), field by field. That page does not say what errors
//! look like; for those, balena-supervisor's own device API is the reference
//! (`src/device-api/{v1,v2}.ts`, `middleware/errors.ts`): 423 while an update lock is
//! held, `{"status":"failed","message":...}` on most endpoints, `{"Data":"","Error":...}`
//! on reboot/shutdown, plain text on the host-config patch.
//!
//! Every endpoint except `GET /ping` and `GET /v1/healthy` needs the API key, as
//! `?apikey=KEY` or `Authorization: Bearer KEY`; without it: `401 Unauthorized`.
//!
//! This module is only the HTTP surface. What the endpoints *do* is behind two traits
//! the agent implements: [`DeviceInfo`] (read-only snapshots) and [`DeviceControl`]
//! (actions, including the update-lock checks of [`crate::locks`]).

mod auth;
mod body;
mod control;
mod device;
mod reply;
mod v1;
mod v2;

use std::sync::{Arc, RwLock};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{middleware, Extension, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use control::{ControlError, ControlFuture, DeviceControl, ServiceRef, StateStatus};
pub use device::{DeviceInfo, UpdateStatus};

use reply::text;

/// balena's supervisor address, which services expect: loopback only, port 48484.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:48484";

/// Largest request body accepted, except a local-mode target state; host-config
/// patches, the largest of these bodies, are tiny.
const MAX_BODY: usize = 64 * 1024;

/// Largest local-mode target state (`POST /v2/local/target-state`): balena's body limit,
/// 10 MB.
const MAX_TARGET_STATE: usize = 10 * 1024 * 1024;

/// The port [`serve`] is bound to, for `api_port` in `GET /v1/device` (the listener may
/// have been bound to port 0, or to another port than balena's 48484).
#[derive(Debug, Clone, Copy)]
struct BoundPort(u16);

/// Renders the agent's `/metrics` (Prometheus text) at each scrape.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct LocalApiState {
    /// The current API key. `POST /v1/regenerate-api-key` replaces it; the guard is
    /// never held across an `.await`. An empty key admits nobody.
    pub api_key: Arc<RwLock<String>>,
    /// Read-only device facts.
    pub device: Arc<dyn DeviceInfo>,
    /// Device actions.
    pub control: Arc<dyn DeviceControl>,
    /// `GET /metrics`, when the agent runs with `--metrics` (else a 404).
    pub metrics: Option<MetricsFn>,
}

impl LocalApiState {
    /// State with a fresh key cell holding `api_key`.
    pub fn new(
        api_key: impl Into<String>,
        device: Arc<dyn DeviceInfo>,
        control: Arc<dyn DeviceControl>,
    ) -> Self {
        Self {
            api_key: Arc::new(RwLock::new(api_key.into())),
            device,
            control,
            metrics: None,
        }
    }
}

/// The API's router, for serving on something other than a plain listener.
pub fn router(state: LocalApiState) -> Router {
    // balena answers these two before its key check: health probes carry no key.
    let open = Router::new()
        .route("/ping", get(ping))
        .route("/v1/healthy", get(healthy));
    let keyed = v1::routes()
        .merge(v2::routes())
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    open.merge(keyed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish. Errors are logged, not returned: the agent runs on without its
/// local API rather than going down with it.
pub async fn serve(listener: TcpListener, state: LocalApiState, shutdown: CancellationToken) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, device = %state.device.uuid(), "local API listening");
    let mut app = router(state);
    if let Some(addr) = addr {
        app = app.layer(Extension(BoundPort(addr.port())));
    }
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "local API stopped");
    }
}

/// `GET /metrics`: the agent's metrics, when enabled.
async fn metrics(State(s): State<LocalApiState>) -> Response {
    match &s.metrics {
        Some(render) => {
            let mut r = text(StatusCode::OK, render());
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        None => not_found().await,
    }
}

/// `GET /ping`: `OK`, no key needed.
async fn ping() -> Response {
    text(StatusCode::OK, "OK")
}

/// `GET /v1/healthy`: 200 `OK` while the agent's loops run, else 500 `Unhealthy`.
async fn healthy(State(s): State<LocalApiState>) -> Response {
    if s.device.healthy() {
        text(StatusCode::OK, "OK")
    } else {
        text(StatusCode::INTERNAL_SERVER_ERROR, "Unhealthy")
    }
}

/// Unknown paths (behind the key check, as in balena).
async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "Not Found")
}
