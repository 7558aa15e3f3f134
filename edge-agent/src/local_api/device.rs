//! What the local API reads about the device: cheap, synchronous snapshots.

/// Read-only facts about the device and the agent, as the local API reports them.
///
/// Every method is a snapshot the implementation already holds (config, last known
/// state): the API calls them on each request, from async code, so none may block on
/// IO or wait for the gateway.
pub trait DeviceInfo: Send + Sync + 'static {
    /// The device uuid, 32 lowercase hex characters.
    fn uuid(&self) -> String;

    /// The device name as last known from the gateway (`GET /v2/device/name`).
    fn name(&self) -> String;

    /// The port the local API is configured to listen on. `GET /v1/device` reports the
    /// port [`super::serve`] is actually bound to instead; this is the answer when the
    /// router is served some other way ([`super::router`]).
    fn api_port(&self) -> u16;

    /// The host OS, e.g. `"Debian GNU/Linux 12 (bookworm)"` (`os_version`).
    fn os_version(&self) -> String;

    /// This agent's version, standing in for balena's `supervisor_version`.
    fn supervisor_version(&self) -> String;

    /// The device's IP addresses; `GET /v1/device` joins them with spaces.
    fn ip_addresses(&self) -> Vec<String>;

    /// The device status regarding its apps, in balena's words: `"Idle"`, `"Stopping"`,
    /// `"Starting"`, `"Downloading"`, `"Installing"`.
    fn status(&self) -> String;

    /// Whether the tunnel to the gateway is up right now (`GET /v2/device/vpn`).
    fn connected(&self) -> bool;

    /// Whether the agent's own loops are alive (`GET /v1/healthy`). Being offline is not
    /// unhealthy: a device behind a flaky link is working as designed. Default: `true`.
    fn healthy(&self) -> bool {
        true
    }

    /// Device tags as `(name, value)` pairs, as last known from the gateway.
    fn tags(&self) -> Vec<(String, String)>;

    /// The commit (release) the device's apps run, if any is installed.
    fn commit(&self) -> Option<String>;

    /// Progress of the current update. Default: nothing pending.
    fn update_status(&self) -> UpdateStatus {
        UpdateStatus::default()
    }
}

/// Update progress, reported by `GET /v1/device` and `GET /v2/state/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStatus {
    /// The agent is checking for, or has found, an update it has not applied yet
    /// (`update_pending`).
    pub pending: bool,
    /// A pending update has been fully downloaded (`update_downloaded`).
    pub downloaded: bool,
    /// The last attempt to apply an update failed, e.g. because it was locked
    /// (`update_failed`).
    pub failed: bool,
    /// The reconciler is applying a target state right now (`appState: "applying"`).
    pub applying: bool,
    /// Download progress of the pending update in percent, `None` when nothing is being
    /// downloaded (`download_progress`, `overallDownloadProgress`).
    pub download_progress: Option<u8>,
}
