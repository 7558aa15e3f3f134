//! Device logs at the gateway: ingest from `Logs` streams (store, then acknowledge, then
//! publish to live subscribers) and retention.
//!
//! In a cluster, a live tail may run on a node other than the one holding the device's
//! tunnel. The tailing node tells the others (`tail:<uuid>`, again every
//! [`TAIL_RENEW`]); the holder then follows each batch it stores with `logs:<uuid>`
//! for as long as the tail keeps telling ([`TAIL_TTL`]), and the tail reads the new lines
//! from the database (`docs/cluster.md`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{AppErrorCode, DeviceUuid, LogsHeader, LogsMessage, MAX_LOGS_FRAME};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::store::{Store, StoredLine};
use transport::wire::{self, FrameReader, WireError};

/// Default retention of stored lines.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default cap on stored lines per device.
pub const DEFAULT_MAX_LINES_PER_DEVICE: i64 = 1_000_000;

/// How often a live tail on a cluster node tells the others it is still following a
/// device (and, as a backstop for a missed notification, reads the store once).
pub const TAIL_RENEW: Duration = Duration::from_secs(5);
/// How long a node keeps telling `logs:<uuid>` after the last `tail:<uuid>` it heard.
pub const TAIL_TTL: Duration = Duration::from_secs(15);

/// Fans newly stored lines out to live subscribers (WebSocket and SSE tails).
#[derive(Debug)]
pub struct LogHub {
    /// This node's id (its own tails' `tail:` wake-ups are not for it).
    node: String,
    tx: broadcast::Sender<Arc<StoredLine>>,
    /// Devices that a tail on another node follows, until when (see [`TAIL_TTL`]).
    tailed_elsewhere: dashmap::DashMap<DeviceUuid, Instant>,
    /// Devices whose lines another node stored: the tails here read them from the store.
    stored_elsewhere: broadcast::Sender<DeviceUuid>,
    /// Per device: held from storing a batch to publishing it. A device can have two
    /// log streams at once (its old and new session during a transport move); without
    /// this, the later batch could be published first, and a tail, which skips ids at or
    /// below the last it sent, would never show the earlier one.
    order: dashmap::DashMap<DeviceUuid, Arc<tokio::sync::Mutex<()>>>,
}

impl LogHub {
    /// The hub of node `node`.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            tx: broadcast::channel(8192).0,
            tailed_elsewhere: dashmap::DashMap::new(),
            stored_elsewhere: broadcast::channel(1024).0,
            order: dashmap::DashMap::new(),
        }
    }
}

impl LogHub {
    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Taken around storing and publishing one batch of `device`'s lines.
    async fn in_order(&self, device: DeviceUuid) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = Arc::clone(self.order.entry(device).or_default().value());
        lock.lock_owned().await
    }

    /// Every line stored from now on. A subscriber that falls behind gets
    /// `RecvError::Lagged` and should catch up from the store by id.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredLine>> {
        self.tx.subscribe()
    }

    /// The devices whose lines another node stored (from `logs:<uuid>` wake-ups). A
    /// receiver that lags should read the store for its device anyway.
    pub fn subscribe_elsewhere(&self) -> broadcast::Receiver<DeviceUuid> {
        self.stored_elsewhere.subscribe()
    }

    /// A node said it tails `device` live (`tail:<uuid>`).
    pub(crate) fn tailed_elsewhere(&self, device: DeviceUuid) {
        self.tailed_elsewhere
            .insert(device, Instant::now() + TAIL_TTL);
    }

    /// A node said it stored lines of `device` (`logs:<uuid>`).
    pub(crate) fn stored_elsewhere(&self, device: DeviceUuid) {
        if self.stored_elsewhere.receiver_count() > 0 {
            let _ = self.stored_elsewhere.send(device);
        }
    }

    /// Whether a tail on another node still follows `device`; forgets one that stopped
    /// telling.
    fn followed_elsewhere(&self, device: &DeviceUuid) -> bool {
        if self.tailed_elsewhere.is_empty() {
            return false;
        }
        let now = Instant::now();
        let live = self
            .tailed_elsewhere
            .get(device)
            .is_some_and(|until| *until > now);
        if !live {
            self.tailed_elsewhere
                .remove_if(device, |_, until| *until <= now);
        }
        live
    }

    fn publish(&self, lines: Vec<StoredLine>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        for l in lines {
            let _ = self.tx.send(Arc::new(l));
        }
    }
}

/// Serves one agent-opened `Logs` stream until it ends.
pub(crate) async fn serve_stream(
    mut send: transport::SendStream,
    recv: transport::RecvStream,
    header: serde_json::Map<String, serde_json::Value>,
    device: DeviceUuid,
    store: Store,
    hub: Arc<LogHub>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut reader = FrameReader::new(recv, MAX_LOGS_FRAME);
    let result: Result<(), IngestError> = async {
        let header = LogsHeader::from_map(header).map_err(WireError::from)?;
        let acked = store.log_resume(device, &header.epoch).await?;
        debug!(%device, acked, "log stream opened");
        wire::write_frame(&mut send, &LogsMessage::Resume { acked }.to_frame()).await?;
        loop {
            let frame = match reader.next().await {
                Err(WireError::Closed) => return Ok(()),
                other => other?,
            };
            match LogsMessage::from_frame(&frame).map_err(WireError::from)? {
                LogsMessage::Batch { lines } => {
                    // Published after the commit, so a live subscriber never sees a line
                    // a query could not find, and in commit order (see `LogHub::order`).
                    let upto = {
                        let _order = hub.in_order(device).await;
                        let (upto, stored) =
                            store.insert_logs(device, &header.epoch, &lines).await?;
                        metrics.log_lines(lines.len(), stored.len());
                        hub.publish(stored);
                        upto
                    };
                    // Acknowledge only what is committed.
                    wire::write_frame(&mut send, &LogsMessage::Ack { upto }.to_frame()).await?;
                    // A tail on another node reads them from the database.
                    if !lines.is_empty() && hub.followed_elsewhere(&device) {
                        store.tell_nodes(crate::store::Wake::Logs(device)).await;
                    }
                }
                other => debug!(?other, "ignoring logs message"),
            }
        }
    }
    .await;
    match result {
        Ok(()) => {}
        Err(IngestError::Wire(WireError::Read(_) | WireError::Write(_))) => {
            debug!(%device, "log stream ended with the connection")
        }
        Err(e) => {
            // Nothing unacknowledged is lost: the agent keeps those lines and sends them
            // again on its next stream.
            warn!(%device, error = %e, "closing log stream");
            let code = match &e {
                IngestError::Store(_) => AppErrorCode::Internal,
                IngestError::Wire(w) => w.code(),
            };
            wire::reject(&mut send, reader.get_mut(), code);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum IngestError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("cannot store log lines: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Deletes lines older than `retention` and beyond `max_per_device`, every `every`.
pub(crate) async fn retention_loop(
    store: Store,
    retention: Duration,
    max_per_device: i64,
    every: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        // Checked, never wrapped: a retention beyond i64 milliseconds put the cutoff in
        // the future once and deleted every line. validate() bounds it; this saturates
        // at "nothing is old enough" whatever a caller passes.
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = crate::store::now_ms().saturating_sub(retention_ms);
        match store.prune_logs(cutoff, max_per_device).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.log_lines_pruned(n);
                info!(lines = n, "pruned old log lines")
            }
            Err(e) => warn!(error = %e, "cannot prune log lines"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
