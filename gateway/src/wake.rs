//! Wake-ups between the nodes of a cluster: the node whose API changed something tells
//! the others (PostgreSQL `NOTIFY`, see [`crate::store::Wake`]), and each node acts on
//! what concerns the tunnels it holds: it delivers queued actions, re-sends targets,
//! switches public URLs and closes the tunnels of deleted devices (`docs/cluster.md`).
//! Every node drops its cached access settings of public URLs on `access:` and
//! `fleet-access:`, whoever holds the tunnel (`docs/access.md`).
//! Live log tails use the channel too (`tail:` and `logs:`, see [`crate::logs`]), and so
//! does the dashboard's live presence (`presence:`: a device came online or went offline
//! on another node).
//!
//! The API handlers act locally first (the fast path) and then call [`tell`]; a node
//! hears its own notifications too, which is harmless, as every step here is idempotent.
//!
//! PostgreSQL does not replay what was sent while the listener was away, so after every
//! (re)connect [`run`] catches up: it kicks every local session with pending actions,
//! and re-reads the target and public-URL switch of every device routed here. A listener
//! can also go quiet without an error (a connection half-open after a network cut), so
//! the node sends itself a ping on the channel every [`PING_EVERY`] and reconnects when
//! one does not come back. The lease loop's 2.5 s poll for pending actions
//! ([`crate::node`]) stays as the backstop for actions.

use std::sync::Arc;
use std::time::Duration;

use protocol::AppErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::logs::LogHub;
use crate::sessions::Sessions;
use crate::store::{Store, StoreError, Wake};
use crate::targets;

/// How often a node pings itself on the channel; a ping not heard back by the next one
/// means the listener is deaf.
pub const PING_EVERY: Duration = Duration::from_secs(15);

/// First wait before reconnecting a lost listener; doubled per failure up to
/// [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Tells every node of the cluster about `wake` ([`Store::tell_nodes`]).
pub async fn tell(store: &Store, wake: Wake) {
    store.tell_nodes(wake).await;
}

/// Listens for wake-ups until `shutdown` and acts on them for the sessions this node
/// (`node`) holds; returns at once on SQLite.
pub async fn run(
    store: Store,
    sessions: Arc<Sessions>,
    logs: Arc<LogHub>,
    node: String,
    shutdown: CancellationToken,
) {
    let mut lost: Option<String> = None;
    let mut wait = RECONNECT_FIRST;
    loop {
        let listener = tokio::select! {
            l = store.wake_listener() => l,
            _ = shutdown.cancelled() => return,
        };
        let listener = match listener {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                // Once per outage, not per retry.
                if lost.is_none() {
                    warn!(
                        error = %e,
                        "cannot listen for wake-ups from the other gateway nodes; retrying"
                    );
                    lost = Some(e.to_string());
                } else {
                    debug!(error = %e, "still cannot listen for wake-ups");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
                wait = (wait * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        wait = RECONNECT_FIRST;
        // Listening first, then catching up: whatever changed before the LISTEN is read
        // now, whatever changes after it is notified.
        catch_up(&store, &sessions, &node).await;
        match lost.take() {
            Some(why) => info!(was = %why, "listening for wake-ups again; caught up"),
            None => debug!("listening for wake-ups from the other gateway nodes"),
        }
        let why = listen(&store, &sessions, &logs, &node, listener, &shutdown).await;
        let Some(why) = why else { return };
        warn!(
            reason = %why,
            "lost the wake-up listener; reconnecting (until then, actions queued through \
             other nodes arrive by the 2.5 s poll)"
        );
        lost = Some(why);
    }
}

/// Acts on payloads until the listener fails (its reason) or `shutdown` (`None`).
async fn listen(
    store: &Store,
    sessions: &Sessions,
    logs: &LogHub,
    node: &str,
    mut listener: crate::store::WakeListener,
    shutdown: &CancellationToken,
) -> Option<String> {
    // `recv` is not known to be cancel-safe: it runs in a task of its own, and the loop
    // below selects on the channel, which is.
    let (tx, mut rx) = mpsc::channel::<Result<String, StoreError>>(256);
    let reader = tokio::spawn(async move {
        loop {
            let r = listener.recv().await;
            let failed = r.is_err();
            if tx.send(r).await.is_err() || failed {
                break;
            }
        }
    });
    // Aborted with this function, whichever way it returns (the listener goes with it).
    let _reader = AbortOnDropHandle::new(reader);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut awaiting: Option<u64> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            m = rx.recv() => match m {
                Some(Ok(payload)) => match Wake::parse(&payload) {
                    Some(Wake::Ping { nonce, node: from }) => {
                        if from == node && awaiting == Some(nonce) {
                            awaiting = None;
                        }
                    }
                    Some(wake) => act(store, sessions, logs, wake).await,
                    None => debug!(%payload, "ignoring a wake-up payload that is not one"),
                },
                Some(Err(e)) => return Some(e.to_string()),
                None => return Some("the listening task ended".into()),
            },
            _ = ping.tick() => {
                if awaiting.is_some() {
                    return Some(format!(
                        "this node's own ping did not come back within {PING_EVERY:?}"
                    ));
                }
                let nonce = rand::random();
                let wake = Wake::Ping { nonce, node: node.to_string() };
                // A database that cannot take the ping is not the listener's fault: the
                // next tick tries again (and the listener's own error ends the loop).
                match store.notify_wake(&wake).await {
                    Ok(()) => awaiting = Some(nonce),
                    Err(e) => debug!(error = %e, "cannot send this node's wake-up ping"),
                }
            }
        }
    }
}

/// Does what `wake` asks, for the sessions this node holds.
async fn act(store: &Store, sessions: &Sessions, logs: &LogHub, wake: Wake) {
    debug!(%wake, "wake-up");
    match wake {
        // Kept whether or not the device is here now: it may connect here while the
        // tail runs.
        Wake::Tail { device, node: from } => {
            if from != logs.node() {
                logs.tailed_elsewhere(device)
            }
        }
        Wake::Logs(uuid) => logs.stored_elsewhere(uuid),
        // Another node's device came or went: dashboards open here show it live. Read
        // back only while one is open, and as stored now (a device that moved between
        // nodes is told about twice, in either order).
        Wake::Presence { device, node: from } => {
            if from == logs.node() || !sessions.presence_watched() {
                return;
            }
            match store.device(device).await {
                Ok(Some(d)) => sessions.relay_presence(device, d.online && !d.revoked),
                Ok(None) => sessions.relay_presence(device, false),
                Err(e) => warn!(error = %e, %device, "cannot read a device's presence"),
            }
        }
        Wake::Action(uuid) => {
            sessions.kick(&uuid);
        }
        Wake::Target(uuid) => {
            // Its fleet may have changed, and with it the access default it follows.
            sessions.access.forget(&uuid);
            targets::retarget(sessions, uuid)
        }
        Wake::Access(uuid) => sessions.access.forget(&uuid),
        Wake::FleetAccess(_) => sessions.access.forget_all(),
        Wake::Fleet(fleet) => targets::retarget_fleet(store, sessions, &fleet).await,
        Wake::PublicUrl(uuid) => {
            if sessions.get(&uuid).is_none() {
                return;
            }
            // The switch as stored now: two switches through two nodes may be notified
            // in either order.
            match store.device(uuid).await {
                Ok(Some(d)) => sessions.set_public_url(&uuid, d.public_url && !d.revoked),
                Ok(None) => sessions.set_public_url(&uuid, false),
                Err(e) => warn!(error = %e, device = %uuid, "cannot read the public-URL switch"),
            }
        }
        Wake::FleetPublicUrl(fleet) => match store.devices().await {
            Ok(devices) => {
                for d in devices
                    .iter()
                    .filter(|d| d.fleet.as_deref() == Some(&*fleet))
                {
                    sessions.set_public_url(&d.uuid, d.public_url);
                }
            }
            Err(e) => warn!(error = %e, %fleet, "cannot read the fleet's public-URL switches"),
        },
        Wake::Deleted(uuid) => {
            sessions.access.forget(&uuid);
            if sessions.get(&uuid).is_none() {
                return;
            }
            // Only what the database confirms: a payload is no proof.
            match store.device(uuid).await {
                Ok(Some(d)) if !d.revoked => {}
                Ok(_) => sessions.disconnect(&uuid, AppErrorCode::UnknownDevice, b"device deleted"),
                Err(e) => warn!(error = %e, device = %uuid, "cannot check a deleted device"),
            }
        }
        Wake::Ping { .. } => {}
    }
}

/// What the listener may have missed while it was away: pending actions, targets,
/// public-URL switches and deletions of the devices routed to `node`.
async fn catch_up(store: &Store, sessions: &Sessions, node: &str) {
    // Access settings may have changed unheard: read again at the next visit.
    sessions.access.forget_all();
    match store.devices_with_pending_actions(node).await {
        Ok(devices) => {
            for d in devices {
                sessions.kick(&d);
            }
        }
        Err(e) => warn!(error = %e, "catch-up: cannot look for queued actions"),
    }
    match store.routed_to(node).await {
        Ok(devices) => {
            for (uuid, public_url, revoked) in devices {
                if sessions.get(&uuid).is_none() {
                    continue;
                }
                if revoked {
                    sessions.disconnect(&uuid, AppErrorCode::UnknownDevice, b"device deleted");
                    continue;
                }
                sessions.set_public_url(&uuid, public_url);
                // Re-sent only if it differs from what the session last sent.
                targets::retarget(sessions, uuid);
            }
        }
        Err(e) => warn!(error = %e, "catch-up: cannot read this node's devices"),
    }
}
