//! Wake-ups between the gateway nodes of one PostgreSQL database: `NOTIFY` on one
//! channel ([`WAKE_CHANNEL`]) when something changed that the node holding a device's
//! tunnel must act on, and a `LISTEN`ing connection per node (`docs/cluster.md`).
//!
//! A payload only names what changed (`action:<uuid>`, `target:<uuid>`, `fleet:<name>`,
//! `presence:<uuid>:<node>`, …); the receiver reads the current state from the database itself, so a late, repeated
//! or forged payload can at worst cause one needless re-read. On SQLite there is one node
//! and nothing to tell: [`Store::notify_wake`] does nothing and there is no listener.
//!
//! PostgreSQL does not replay a notification sent while a listener was disconnected:
//! whoever uses [`WakeListener`] must catch up after every (re)connect.

use std::fmt;
use std::time::Duration;

use protocol::DeviceUuid;
use sqlx::postgres::{PgListener, PgPoolOptions};

use super::backend::{DbRow, Pool};
use super::{Store, StoreError};

/// The `LISTEN`/`NOTIFY` channel every node of one database shares.
pub const WAKE_CHANNEL: &str = "edge_gateway_wake";

/// How long the listener waits for its connection (the pool's acquire timeout).
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Something the node that holds a device's tunnel must act on, told to every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// An action was queued for the device (`action:<uuid>`): deliver it.
    Action(DeviceUuid),
    /// The device's target state changed: its pin, its variables or its fleet
    /// (`target:<uuid>`).
    Target(DeviceUuid),
    /// The target of every device of the fleet changed: a release, the fleet's pin or its
    /// variables (`fleet:<name>`).
    Fleet(String),
    /// The device's public URL was switched (`url:<uuid>`); the switch is read from the
    /// database.
    PublicUrl(DeviceUuid),
    /// The public URLs of the fleet's devices were switched (`fleet-url:<name>`).
    FleetPublicUrl(String),
    /// Who may visit the device's public URL changed (`access:<uuid>`): every node drops
    /// its cached setting (visitors are admitted by the node they reach).
    Access(DeviceUuid),
    /// The fleet's default access setting changed (`fleet-access:<name>`).
    FleetAccess(String),
    /// The device was deleted (`deleted:<uuid>`): close its tunnel, once the database
    /// confirms it.
    Deleted(DeviceUuid),
    /// A node follows the device's logs live (`tail:<uuid>:<node id>`), told again while
    /// it does: the node that stores its lines says so with [`Wake::Logs`] for a while.
    Tail {
        /// The device followed.
        device: DeviceUuid,
        /// The node whose tail follows it (its own lines it publishes itself).
        node: String,
    },
    /// Lines of the device were stored (`logs:<uuid>`): live tails on every node read
    /// them from the database.
    Logs(DeviceUuid),
    /// The device came online or went offline on `node` (`presence:<uuid>:<node id>`):
    /// nodes with a dashboard open read its state from the database and pass it on live.
    Presence {
        /// The device.
        device: DeviceUuid,
        /// The node whose tunnel of it started or ended.
        node: String,
    },
    /// A node checking that its own listener still hears the channel
    /// (`ping:<nonce>:<node id>`); the other nodes ignore it.
    Ping {
        /// Tells this ping from the node's earlier ones.
        nonce: u64,
        /// The node that sent it.
        node: String,
    },
}

impl Wake {
    /// Reads a payload; `None` for anything that is not one [`Wake`] (an unknown kind, a
    /// bad uuid, an empty name).
    pub fn parse(payload: &str) -> Option<Self> {
        let (kind, rest) = payload.split_once(':')?;
        let uuid = || rest.parse::<DeviceUuid>().ok();
        let name = || (!rest.is_empty()).then(|| rest.to_string());
        Some(match kind {
            "action" => Wake::Action(uuid()?),
            "target" => Wake::Target(uuid()?),
            "fleet" => Wake::Fleet(name()?),
            "url" => Wake::PublicUrl(uuid()?),
            "fleet-url" => Wake::FleetPublicUrl(name()?),
            "access" => Wake::Access(uuid()?),
            "fleet-access" => Wake::FleetAccess(name()?),
            "deleted" => Wake::Deleted(uuid()?),
            "tail" => {
                let (device, node) = rest.split_once(':')?;
                if node.is_empty() {
                    return None;
                }
                Wake::Tail {
                    device: device.parse().ok()?,
                    node: node.to_string(),
                }
            }
            "logs" => Wake::Logs(uuid()?),
            "presence" => {
                let (device, node) = rest.split_once(':')?;
                if node.is_empty() {
                    return None;
                }
                Wake::Presence {
                    device: device.parse().ok()?,
                    node: node.to_string(),
                }
            }
            "ping" => {
                let (nonce, node) = rest.split_once(':')?;
                if node.is_empty() {
                    return None;
                }
                Wake::Ping {
                    nonce: nonce.parse().ok()?,
                    node: node.to_string(),
                }
            }
            _ => return None,
        })
    }
}

/// The payload, as [`Wake::parse`] reads it.
impl fmt::Display for Wake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wake::Action(u) => write!(f, "action:{u}"),
            Wake::Target(u) => write!(f, "target:{u}"),
            Wake::Fleet(n) => write!(f, "fleet:{n}"),
            Wake::PublicUrl(u) => write!(f, "url:{u}"),
            Wake::FleetPublicUrl(n) => write!(f, "fleet-url:{n}"),
            Wake::Access(u) => write!(f, "access:{u}"),
            Wake::FleetAccess(n) => write!(f, "fleet-access:{n}"),
            Wake::Deleted(u) => write!(f, "deleted:{u}"),
            Wake::Tail { device, node } => write!(f, "tail:{device}:{node}"),
            Wake::Logs(u) => write!(f, "logs:{u}"),
            Wake::Presence { device, node } => write!(f, "presence:{device}:{node}"),
            Wake::Ping { nonce, node } => write!(f, "ping:{nonce}:{node}"),
        }
    }
}

/// A connection `LISTEN`ing on [`WAKE_CHANNEL`], of its own (not one of the store's
/// pooled connections, which it would hold for good).
pub struct WakeListener {
    listener: PgListener,
}

impl WakeListener {
    /// The next payload. An error means the connection is gone, and with it every
    /// notification sent meanwhile: drop this listener, open a new one with
    /// [`Store::wake_listener`], and catch up.
    ///
    /// Not known to be cancel-safe (sqlx does not say so; a message half read when the
    /// future is dropped could be lost). Call it from a task of its own, and drop the
    /// listener with that task.
    pub async fn recv(&mut self) -> Result<String, StoreError> {
        match self.listener.try_recv().await? {
            Some(n) => Ok(n.payload().to_string()),
            // `try_recv` says "lost" this way (and would reconnect silently on the next
            // call, hiding that notifications were missed).
            None => Err(StoreError::Db(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the connection listening for wake-ups was lost",
            )))),
        }
    }
}

impl Store {
    /// Tells every node of the cluster about `wake` (a no-op on SQLite). A failure is only
    /// logged: the change itself is stored; actions still arrive by the holder's poll, and
    /// a target at the device's next reconnect.
    pub async fn tell_nodes(&self, wake: Wake) {
        if let Err(e) = self.notify_wake(&wake).await {
            tracing::warn!(error = %e, %wake, "cannot tell the other gateway nodes");
        }
    }

    /// Tells every node listening on this database (this one included) about `wake`.
    /// A no-op on SQLite. Call it after the change is committed: the receiver reads it.
    pub async fn notify_wake(&self, wake: &Wake) -> Result<(), StoreError> {
        if let Pool::Postgres(p) = &self.pool {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(WAKE_CHANNEL)
                .bind(wake.to_string())
                .execute(p)
                .await?;
        }
        Ok(())
    }

    /// A new connection `LISTEN`ing on [`WAKE_CHANNEL`], with the store's connection
    /// settings; `None` on SQLite. Notifications sent before this returns are not
    /// delivered to it.
    pub async fn wake_listener(&self) -> Result<Option<WakeListener>, StoreError> {
        let Pool::Postgres(p) = &self.pool else {
            return Ok(None);
        };
        // A pool of one, only for this listener: `PgListener` takes its connection from
        // a pool, and one of the store's would be held away from the queries for good.
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(LISTEN_CONNECT_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with((*p.connect_options()).clone());
        let mut listener = PgListener::connect_with(&own).await?;
        // Our pool is never closed; it goes with the listener.
        listener.ignore_pool_close_event(true);
        // A lost connection is reported (see `recv`), not mended behind our back.
        listener.eager_reconnect(false);
        listener.listen(WAKE_CHANNEL).await?;
        Ok(Some(WakeListener { listener }))
    }

    /// The devices whose route names `node`, with their public-URL switch and whether
    /// they were deleted since: what a node's catch-up walks after its listener was away.
    pub async fn routed_to(&self, node: &str) -> Result<Vec<(DeviceUuid, bool, bool)>, StoreError> {
        on_pool!(self, |p| {
            sqlx::query(
                "SELECT d.uuid, d.public_url, d.revoked FROM device_routes r \
                 JOIN devices d ON d.uuid = r.device WHERE r.node = $1",
            )
            .bind(node)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| {
                let uuid: String = r.col("uuid")?;
                let uuid = uuid
                    .parse()
                    .map_err(|e: protocol::InvalidUuid| StoreError::Corrupt(e.to_string()))?;
                Ok((uuid, r.col("public_url")?, r.col("revoked")?))
            })
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_pg::both_backends;

    fn uuid() -> DeviceUuid {
        "0123456789abcdef0123456789abcdef".parse().unwrap()
    }

    #[test]
    fn every_wake_reads_back_from_its_payload() {
        let all = [
            Wake::Action(uuid()),
            Wake::Target(uuid()),
            Wake::Fleet("kiosks".into()),
            Wake::Fleet("with:colon".into()),
            Wake::PublicUrl(uuid()),
            Wake::FleetPublicUrl("kiosks".into()),
            Wake::Access(uuid()),
            Wake::FleetAccess("kiosks".into()),
            Wake::Deleted(uuid()),
            Wake::Tail {
                device: uuid(),
                node: "node:b".into(),
            },
            Wake::Logs(uuid()),
            Wake::Presence {
                device: uuid(),
                node: "node:b".into(),
            },
            Wake::Ping {
                nonce: 7,
                node: "node:a".into(),
            },
        ];
        for w in all {
            assert_eq!(Wake::parse(&w.to_string()), Some(w.clone()), "{w}");
        }
        assert_eq!(
            Wake::Action(uuid()).to_string(),
            "action:0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn bad_payloads_are_none() {
        for bad in [
            "",
            ":",
            "action",
            "action:",
            "action:not-a-uuid",
            "action:0123456789ABCDEF0123456789ABCDEF0",
            "target:0123",
            "fleet:",
            "fleet-url:",
            "url:x",
            "deleted:",
            "tail:0123456789abcdef0123456789abcdef",
            "tail:0123456789abcdef0123456789abcdef:",
            "logs:",
            "presence:0123456789abcdef0123456789abcdef",
            "presence:0123456789abcdef0123456789abcdef:",
            "presence:x:a",
            "ping:",
            "ping:x:a",
            "ping:1:",
            "ping:1",
            "reboot:0123456789abcdef0123456789abcdef",
            "\u{0}:\u{ffff}",
            "action:0123456789abcdef0123456789abcdef\n",
        ] {
            assert_eq!(Wake::parse(bad), None, "{bad:?}");
        }
    }

    both_backends! {
        async fn a_wake_reaches_every_listener_and_a_lost_listener_says_so(store) {
            let Some(mut listener) = store.wake_listener().await.unwrap() else {
                // SQLite: one node, nobody to tell.
                store.notify_wake(&Wake::Action(uuid())).await.unwrap();
                return;
            };
            let mut other = store.wake_listener().await.unwrap().unwrap();
            let within = Duration::from_secs(5);
            store.notify_wake(&Wake::Action(uuid())).await.unwrap();
            for l in [&mut listener, &mut other] {
                let got = tokio::time::timeout(within, l.recv()).await.unwrap().unwrap();
                assert_eq!(Wake::parse(&got), Some(Wake::Action(uuid())));
            }
            // Its connection killed, a listener reports the loss instead of reconnecting
            // silently (the caller must catch up).
            let Pool::Postgres(p) = &store.pool else {
                unreachable!()
            };
            let killed: i64 = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query LIKE 'LISTEN %'",
            )
            .fetch_one(p)
            .await
            .unwrap();
            assert_eq!(killed, 2);
            let lost = tokio::time::timeout(within, listener.recv()).await.unwrap();
            assert!(lost.is_err(), "{lost:?}");
            // A new one hears what is sent after it listens.
            let mut again = store.wake_listener().await.unwrap().unwrap();
            store.notify_wake(&Wake::Fleet("f".into())).await.unwrap();
            let got = tokio::time::timeout(within, again.recv()).await.unwrap().unwrap();
            assert_eq!(got, "fleet:f");
        }
    }
}
