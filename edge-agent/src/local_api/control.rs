//! What the local API asks the agent to do.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

/// The future every [`DeviceControl`] method returns: boxed so the trait stays
/// object-safe (`Arc<dyn DeviceControl>`), `Send` so axum can run it on any worker.
pub type ControlFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ControlError>> + Send + 'a>>;

/// Why a [`DeviceControl`] action failed. The local API turns each variant into the
/// status code and body balena's supervisor answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// An update lock is held and `force` was not set (HTTP 423). The text says which
    /// service holds it.
    #[error("Updates are locked: {0}")]
    Locked(String),
    /// The app, service or container named in the request does not exist (HTTP 404 on
    /// v2 endpoints, 400 on the legacy v1 app endpoints, as balena does).
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but cannot apply, e.g. a v1 single-container endpoint
    /// on a multi-container app (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// Anything else went wrong on the device (HTTP 503, or 500 for reboot/shutdown).
    #[error("{0}")]
    Internal(String),
}

/// Which service of an app a v2 service action targets: balena accepts either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceRef {
    /// The service's name in the release (`"serviceName"`).
    Name(String),
    /// The release image id of the service (`"imageId"`).
    ImageId(u32),
}

/// Containers and images for `GET /v2/state/status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateStatus {
    /// One object per container, balena's fields: `status`, `serviceName`, `appId`,
    /// `imageId`, `serviceId`, `containerId`, `createdAt`.
    pub containers: Vec<Value>,
    /// One object per image, balena's fields: `name`, `appId`, `serviceName`, `imageId`,
    /// `dockerImageId`, `status`, `downloadProgress`.
    pub images: Vec<Value>,
}

/// Actions the local API triggers on the device.
///
/// The implementation checks update locks (see [`crate::locks`]) and honours `force`;
/// the API only passes `force` through and maps [`ControlError::Locked`] to 423.
///
/// **Cancel safety.** Each future runs inside an HTTP handler and may be dropped before
/// it completes: the client disconnects, or the agent shuts down. Dropping one must
/// leave the device consistent. Short checks (locks, state) can run in the future
/// itself; anything that must not stop halfway (killing and recreating containers,
/// rebooting) should be handed to a task the implementation owns, with the future
/// resolving once the action is committed. Methods that only read are cancel-safe by
/// nature.
pub trait DeviceControl: Send + Sync + 'static {
    /// Starts the identification blink (15 s on balena) and returns at once.
    fn blink(&self) -> ControlFuture<'_, ()>;

    /// Reboots the device after stopping the apps; `Locked` unless `force`.
    fn reboot(&self, force: bool) -> ControlFuture<'_, ()>;

    /// Shuts the device down after stopping the apps; `Locked` unless `force`.
    fn shutdown(&self, force: bool) -> ControlFuture<'_, ()>;

    /// Checks for an update now; with `force`, applies it even over update locks.
    fn update(&self, force: bool) -> ControlFuture<'_, ()>;

    /// Removes and recreates every service container of `app_id`.
    fn restart_app(&self, app_id: u32, force: bool) -> ControlFuture<'_, ()>;

    /// Stops the single service of `app_id` (legacy v1) and returns its container id.
    /// A multi-container app is a `BadRequest`.
    fn stop_app(&self, app_id: u32, force: bool) -> ControlFuture<'_, String>;

    /// Starts the single service of `app_id` (legacy v1) and returns its container id.
    /// Starting kills nothing, so update locks do not apply.
    fn start_app(&self, app_id: u32) -> ControlFuture<'_, String>;

    /// Clears the persistent data of `app_id` (its volumes), recreating its containers.
    fn purge(&self, app_id: u32, force: bool) -> ControlFuture<'_, ()>;

    /// Removes and recreates one service container.
    fn restart_service(
        &self,
        app_id: u32,
        service: ServiceRef,
        force: bool,
    ) -> ControlFuture<'_, ()>;

    /// Stops one service container without removing it.
    fn stop_service(&self, app_id: u32, service: ServiceRef, force: bool) -> ControlFuture<'_, ()>;

    /// Starts one service container. Starting kills nothing, so update locks do not
    /// apply (balena-supervisor issue #1523).
    fn start_service(&self, app_id: u32, service: ServiceRef) -> ControlFuture<'_, ()>;

    /// Makes, persists and returns a new API key. The API then stops accepting the old
    /// one; the services learn the new one when they are next recreated.
    fn regenerate_api_key(&self) -> ControlFuture<'_, String>;

    /// Host configuration in balena's shape: `{"network":{"hostname":...,"proxy":{...}}}`.
    fn host_config(&self) -> ControlFuture<'_, Value>;

    /// Applies a partial host configuration (the request body without `force`); keys
    /// that are absent stay unchanged. `Locked` if applying needs a reboot and a lock is
    /// held, unless `force`.
    fn patch_host_config(&self, patch: Value, force: bool) -> ControlFuture<'_, ()>;

    /// The current (not target) state of apps and services, keyed by app name:
    /// `{"<name>":{"appId":N,"commit":"...","services":{"<svc>":{"status":"Running",
    /// "releaseId":N,"downloadProgress":null}}}}`. `{}` while nothing is installed.
    fn apps_state(&self) -> ControlFuture<'_, Value>;

    /// The single-container app `app_id` in balena's v1 shape (`appId`, `commit`,
    /// `imageId`, `containerId`, `env`), `None` if it is not installed. A
    /// multi-container app is a `BadRequest`.
    fn app(&self, app_id: u32) -> ControlFuture<'_, Option<Value>>;

    /// Containers and images for `GET /v2/state/status`. Default: none.
    fn state_status(&self) -> ControlFuture<'_, StateStatus> {
        Box::pin(async { Ok(StateStatus::default()) })
    }

    /// Local mode: `POST /v2/local/target-state` applies a target state (our JSON shape,
    /// as `GET /v1/devices/{uuid}/target` on the gateway shows it) without the gateway.
    /// Default: refused.
    fn set_local_target(&self, _target: Value) -> ControlFuture<'_, ()> {
        Box::pin(async {
            Err(ControlError::BadRequest(
                "local mode is not available on this device".into(),
            ))
        })
    }
}
