//! This gateway as one node of a cluster on a shared database: its lease, and the
//! self-fencing that follows from losing it (`docs/cluster.md`).
//!
//! The node renews its lease every quarter of [`LEASE_TTL`]. A node that cannot renew
//! for a whole `LEASE_TTL` may already be counted dead by the others, who then clear its
//! devices' routes; so it fences itself: it closes every tunnel it holds and refuses new
//! ones until a renewal succeeds again, so that its devices reconnect to a node that can
//! record them. Each renewal also clears the routes of dead nodes (a node killed with
//! SIGKILL never clears its own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::AppErrorCode;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::sessions::Sessions;
use crate::store::{Store, StoreError};

/// How long a lease runs from its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How long a dead node's row is kept (for the operator to see) before it is forgotten.
const FORGET_DEAD_AFTER: Duration = Duration::from_secs(24 * 3600);

/// This node: its id and whether it is fenced.
#[derive(Debug)]
pub struct Node {
    id: String,
    peer_addr: std::sync::OnceLock<String>,
    fenced: AtomicBool,
}

impl Node {
    /// A node called `id`; a fresh `node-<16 hex>` when `None`.
    pub fn new(id: Option<String>) -> Arc<Self> {
        let id = id.unwrap_or_else(|| format!("node-{:016x}", rand::random::<u64>()));
        Arc::new(Self {
            id,
            peer_addr: std::sync::OnceLock::new(),
            fenced: AtomicBool::new(false),
        })
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Records where the other nodes reach this one (set once, before the lease loop).
    pub fn set_peer_addr(&self, addr: String) {
        let _ = self.peer_addr.set(addr);
    }

    /// Where the other nodes reach this one, if it takes peer links.
    pub fn peer_addr(&self) -> Option<&str> {
        self.peer_addr.get().map(String::as_str)
    }

    /// Whether the node has lost its lease (and so takes no tunnels).
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Renews the lease until `shutdown`, fencing the node while it cannot, then gives
    /// the lease up.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        sessions: Arc<Sessions>,
        ttl: Duration,
        shutdown: CancellationToken,
    ) {
        let every = ttl / 4;
        let mut last_ok = Instant::now();
        // The lease's own connection (PostgreSQL), so that a pool busy with a reconnection
        // herd never delays a renewal (`Store::renew_lease_on`).
        let mut own = None;
        loop {
            // Bounded: a database that stopped answering must not hold the loop past the
            // moment to fence (a silent network cut leaves a query waiting forever).
            let renewed = tokio::time::timeout(
                every,
                store.renew_lease_on(&mut own, &self.id, self.peer_addr(), ttl),
            )
            .await
            .unwrap_or_else(|_| {
                // Abandoned half way: the connection's state is unknown.
                own = None;
                Err(StoreError::Timeout(every))
            });
            match renewed {
                Ok(_) => {
                    last_ok = Instant::now();
                    if self.fenced.swap(false, Ordering::AcqRel) {
                        info!(node = %self.id, "database lease renewed again; taking tunnels");
                    }
                    // Actions queued through another node: that node could only store
                    // them; the holder of the tunnel delivers them. Both queries run on
                    // the pool, bounded like the renewal so that a busy pool cannot hold
                    // up the next renewal; a round skipped is done again the next time.
                    match tokio::time::timeout(every, store.devices_with_pending_actions(&self.id))
                        .await
                    {
                        Ok(Ok(devices)) => {
                            for d in devices {
                                sessions.kick(&d);
                            }
                        }
                        Ok(Err(e)) => warn!(error = %e, "cannot look for queued actions"),
                        Err(_) => warn!("no answer within {every:?} looking for queued actions"),
                    }
                    match tokio::time::timeout(every, store.sweep_dead_nodes(FORGET_DEAD_AFTER))
                        .await
                    {
                        Ok(Ok(0)) => {}
                        Ok(Ok(n)) => info!(routes = n, "cleared the routes of dead gateway nodes"),
                        Ok(Err(e)) => warn!(error = %e, "cannot clear dead nodes' routes"),
                        Err(_) => warn!("no answer within {every:?} clearing dead nodes' routes"),
                    }
                }
                Err(e) if last_ok.elapsed() >= ttl => {
                    if !self.fenced.swap(true, Ordering::AcqRel) {
                        warn!(
                            node = %self.id,
                            error = %e,
                            "cannot renew this node's database lease for {ttl:?}: closing every \
                             tunnel and taking none until it is renewed, so that devices move \
                             to a node that can record them"
                        );
                    }
                    sessions.close_all(
                        AppErrorCode::Shutdown,
                        b"this gateway node lost its database lease",
                    );
                }
                Err(e) => warn!(node = %self.id, error = %e, "cannot renew the database lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if let Err(e) = store.drop_lease(&self.id).await {
            warn!(error = %e, "cannot give up the database lease");
        }
    }
}
