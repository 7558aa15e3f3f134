//! What every tunnel connection handler shares: the context, and why a connection ended.

use std::sync::Arc;
use std::time::Duration;

use protocol::DeviceUuid;
use tokio_util::task::TaskTracker;
use transport::wire::WireError;

use crate::sessions::Sessions;
use crate::store::Store;

/// Shared state the tunnel side needs.
pub(crate) struct TunnelCtx {
    /// This gateway node: routes name it, and a fenced node takes no tunnels.
    pub(crate) node: Arc<crate::node::Node>,
    pub(crate) store: Store,
    pub(crate) ca: Arc<certs::Ca>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) keep_alive: Duration,
    /// How long an agent that does not announce its keep-alive may be silent.
    pub(crate) idle_timeout: Duration,
    pub(crate) logs: Arc<crate::logs::LogHub>,
    /// Handshakes, provisioning outcomes and log lines are counted here.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Every task a session spawns (log ingest streams) runs here, so that the gateway's
    /// shutdown waits for them.
    pub(crate) tasks: TaskTracker,
}

/// Why a device connection was refused or ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("handshake: {0}")]
    Handshake(transport::ConnectError),
    #[error("{0}")]
    Connection(#[from] transport::ConnectionError),
    #[error("handshake timed out")]
    Timeout,
    #[error("peer certificate: {0}")]
    Identity(String),
    #[error("device {0} is not registered")]
    Unknown(DeviceUuid),
    #[error("device {0} is revoked")]
    Revoked(DeviceUuid),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("control stream: {0}")]
    Wire(#[from] WireError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("nothing heard from the device for {0:?}")]
    Silent(Duration),
}
