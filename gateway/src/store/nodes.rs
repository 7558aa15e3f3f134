//! Gateway nodes and which node holds each device's tunnel.
//!
//! Every node holds a lease row (`nodes`), renewed every few seconds; its expiry is
//! computed by the database's clock, so nodes whose clocks disagree still agree on who is
//! alive. A device's route (`device_routes`) names the node holding its tunnel and an
//! epoch that every connect raises: a disconnect clears the route only when it still
//! carries that node and epoch, so a late disconnect from a node the device left never
//! clears the newer connect. The `online` flag of the device follows its route.
//!
//! On SQLite there is one node (one `serve` holds the data dir): routes are kept as on
//! PostgreSQL, but the node takes no lease (nothing else could read it) and resets every
//! route at start ([`Store::reset_single_node`]).

use std::time::Duration;

use super::*;

/// A gateway node, as its lease row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's id (`--node-id`).
    pub id: String,
    /// Where other nodes reach it (`--peer-listen`), if it said.
    pub peer_addr: Option<String>,
    /// When it started, unix milliseconds by the database's clock.
    pub started_at: i64,
    /// Its lease runs out then, unix milliseconds by the database's clock.
    pub lease_until: i64,
}

/// Which node holds a device's tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The node, or `None` while no node holds it.
    pub node: Option<String>,
    /// Raised by every connect.
    pub epoch: i64,
    /// Whether that node's lease is still running.
    pub node_alive: bool,
    /// Where that node is reached, if it said.
    pub peer_addr: Option<String>,
}

/// The database's clock in unix milliseconds, as SQL of the store's engine.
fn now_sql(store: &Store) -> &'static str {
    if store.is_postgres() {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    } else {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    }
}

/// A lease's length in milliseconds, as the SQL binds it.
fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The upsert that takes or renews a lease: `$1` node, `$2` peer address, `$3` length in
/// milliseconds; returns the expiry.
fn renew_sql(store: &Store) -> String {
    let now = now_sql(store);
    format!(
        "INSERT INTO nodes (id, peer_addr, started_at, lease_until) VALUES ($1, $2, {now}, {now} + $3) \
         ON CONFLICT (id) DO UPDATE SET peer_addr = excluded.peer_addr, lease_until = excluded.lease_until \
         RETURNING lease_until"
    )
}

impl Store {
    /// The database's clock, unix milliseconds.
    pub async fn db_now_ms(&self) -> Result<i64, StoreError> {
        let q = format!("SELECT {}", now_sql(self));
        on_pool!(self, |p| {
            let r = sqlx::query(&q).fetch_one(p).await?;
            Ok(r.at(0)?)
        })
    }

    /// Takes or renews `node`'s lease for `ttl` from now (the database's now). Returns the
    /// new expiry, unix milliseconds.
    pub async fn renew_lease(
        &self,
        node: &str,
        peer_addr: Option<&str>,
        ttl: Duration,
    ) -> Result<i64, StoreError> {
        let q = renew_sql(self);
        on_write!(self, |p| {
            let r = sqlx::query(&q)
                .bind(node)
                .bind(peer_addr)
                .bind(ttl_ms(ttl))
                .fetch_one(p)
                .await?;
            Ok(r.at(0)?)
        })
    }

    /// As [`Store::renew_lease`], on PostgreSQL over `own`, a connection of the lease's
    /// own outside the pool (opened here when `None`, and dropped again when the renewal
    /// fails). A pool busy with a reconnection herd (thousands of connects, each waiting
    /// its turn for one of the pool's connections) must not hold the renewal up past the
    /// lease: the node would fence itself, closing every tunnel and starting the herd
    /// again, while the database answers fine. The caller drops `own` too when it
    /// abandons a renewal half way (the connection's state is then unknown). On SQLite,
    /// where one node takes no lease anyone else reads, this is `renew_lease`.
    pub async fn renew_lease_on(
        &self,
        own: &mut Option<sqlx::PgConnection>,
        node: &str,
        peer_addr: Option<&str>,
        ttl: Duration,
    ) -> Result<i64, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return self.renew_lease(node, peer_addr, ttl).await;
        };
        let conn = match own {
            Some(c) => c,
            None => {
                use sqlx::Connection;
                own.insert(sqlx::PgConnection::connect_with(&pool.connect_options()).await?)
            }
        };
        let q = renew_sql(self);
        let started = std::time::Instant::now();
        let r = sqlx::query(&q)
            .bind(node)
            .bind(peer_addr)
            .bind(ttl_ms(ttl))
            .fetch_one(&mut *conn)
            .await;
        self.query_times.observe(started.elapsed());
        match r {
            Ok(r) => Ok(r.at(0)?),
            Err(e) => {
                *own = None;
                Err(e.into())
            }
        }
    }

    /// Gives up `node`'s lease (a clean shutdown), clearing the routes it held and marking
    /// those devices offline.
    pub async fn drop_lease(&self, node: &str) -> Result<(), StoreError> {
        self.clear_routes_where("node = $1", Some(node)).await?;
        on_write!(self, |p| sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(node)
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// At the start of the only node (SQLite, where one `serve` holds the data dir): no
    /// tunnel of an earlier run is held any more, so every device is offline and every
    /// route and lease is gone.
    pub async fn reset_single_node(&self) -> Result<(), StoreError> {
        self.mark_all_offline().await?;
        self.clear_routes_where("node IS NOT NULL", None).await?;
        on_write!(self, |p| sqlx::query("DELETE FROM nodes")
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// The nodes whose lease still runs.
    pub async fn live_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let q = format!(
            "SELECT id, peer_addr, started_at, lease_until FROM nodes WHERE lease_until > {} ORDER BY id",
            now_sql(self)
        );
        on_pool!(self, |p| sqlx::query(&q)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| Ok(NodeRecord {
                id: r.col("id")?,
                peer_addr: r.col("peer_addr")?,
                started_at: r.col("started_at")?,
                lease_until: r.col("lease_until")?,
            }))
            .collect())
    }

    /// Records that `node` now holds `uuid`'s tunnel, that the device is online and (when
    /// given) the address it connected from, in one transaction. Returns the route's new
    /// epoch, which [`Store::route_disconnect`] must name.
    pub async fn route_connect(
        &self,
        uuid: DeviceUuid,
        node: &str,
        public_address: Option<&str>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.write_tx(&[Lock::Device(uuid)]).await?;
        let epoch = on_tx!(tx, |c| {
            let r = sqlx::query(
                "INSERT INTO device_routes (device, node, epoch, since) VALUES ($1, $2, 1, $3) \
                 ON CONFLICT (device) DO UPDATE SET node = excluded.node, \
                 epoch = device_routes.epoch + 1, since = excluded.since RETURNING epoch",
            )
            .bind(uuid.as_str())
            .bind(node)
            .bind(now_ms())
            .fetch_one(&mut *c)
            .await?;
            let epoch: i64 = r.at(0)?;
            sqlx::query(
                "UPDATE devices SET online = TRUE, last_seen = $1, \
                 public_address = COALESCE($2, public_address) WHERE uuid = $3",
            )
            .bind(now_unix())
            .bind(public_address)
            .bind(uuid.as_str())
            .execute(&mut *c)
            .await?;
            Ok::<_, StoreError>(epoch)
        })?;
        tx.commit().await?;
        Ok(epoch)
    }

    /// Records that `node`'s session of `epoch` ended: the route is cleared and the
    /// device marked offline, unless a newer connect (on this node or another) has
    /// replaced it. Returns whether it did.
    pub async fn route_disconnect(
        &self,
        uuid: DeviceUuid,
        node: &str,
        epoch: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx(&[Lock::Device(uuid)]).await?;
        let cleared = on_tx!(tx, |c| {
            let n = sqlx::query(
                "UPDATE device_routes SET node = NULL, since = $1 \
                 WHERE device = $2 AND node = $3 AND epoch = $4",
            )
            .bind(now_ms())
            .bind(uuid.as_str())
            .bind(node)
            .bind(epoch)
            .execute(&mut *c)
            .await?
            .rows_affected();
            if n == 1 {
                sqlx::query("UPDATE devices SET online = FALSE, last_seen = $1 WHERE uuid = $2")
                    .bind(now_unix())
                    .bind(uuid.as_str())
                    .execute(&mut *c)
                    .await?;
            }
            Ok::<_, StoreError>(n == 1)
        })?;
        tx.commit().await?;
        Ok(cleared)
    }

    /// Which node holds `uuid`'s tunnel, if the device has ever connected.
    pub async fn route(&self, uuid: DeviceUuid) -> Result<Option<Route>, StoreError> {
        let q = format!(
            "SELECT r.node, r.epoch, n.peer_addr, \
             CASE WHEN n.lease_until > {} THEN 1 ELSE 0 END AS alive \
             FROM device_routes r LEFT JOIN nodes n ON n.id = r.node WHERE r.device = $1",
            now_sql(self)
        );
        on_pool!(self, |p| {
            let Some(r) = sqlx::query(&q)
                .bind(uuid.as_str())
                .fetch_optional(p)
                .await?
            else {
                return Ok(None);
            };
            let alive: i32 = r.col("alive")?;
            Ok(Some(Route {
                node: r.col("node")?,
                epoch: r.col("epoch")?,
                node_alive: alive == 1,
                peer_addr: r.col("peer_addr")?,
            }))
        })
    }

    /// Clears the routes held by nodes whose lease ran out (a node killed, or fenced off
    /// from the database), marking those devices offline, and forgets nodes dead for
    /// longer than `forget_after`. Any node may run it; it is what makes a dead node's
    /// devices show offline. Returns how many routes it cleared.
    pub async fn sweep_dead_nodes(&self, forget_after: Duration) -> Result<u64, StoreError> {
        let now = now_sql(self);
        let cleared = self
            .clear_routes_where(
                &format!(
                    "node IS NOT NULL AND node NOT IN (SELECT id FROM nodes WHERE lease_until > {now})"
                ),
                None,
            )
            .await?;
        let forget_ms = i64::try_from(forget_after.as_millis()).unwrap_or(i64::MAX / 2);
        let q = format!("DELETE FROM nodes WHERE lease_until < {now} - $1");
        on_write!(self, |p| sqlx::query(&q)
            .bind(forget_ms)
            .execute(p)
            .await
            .map(drop))?;
        Ok(cleared)
    }

    /// Marks offline the devices of the routes matching `condition` (SQL on
    /// `device_routes`, with `$1` bound to `arg` when given) and clears those routes.
    async fn clear_routes_where(
        &self,
        condition: &str,
        arg: Option<&str>,
    ) -> Result<u64, StoreError> {
        let offline = format!(
            "UPDATE devices SET online = FALSE WHERE uuid IN (SELECT device FROM device_routes WHERE {condition})"
        );
        let clear = format!("UPDATE device_routes SET node = NULL WHERE {condition}");
        on_write!(self, |p| {
            let mut q = sqlx::query(&offline);
            if let Some(a) = arg {
                q = q.bind(a);
            }
            q.execute(p).await?;
            let mut q = sqlx::query(&clear);
            if let Some(a) = arg {
                q = q.bind(a);
            }
            Ok(q.execute(p).await?.rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;
    use super::*;

    fn uuid(n: u8) -> DeviceUuid {
        format!("{n:032x}").parse().unwrap()
    }

    /// A reconnection herd holds every pooled connection (each connect waits its turn):
    /// the lease is still renewed at once, on its own connection. On the pool, as before,
    /// this renewal waited for the pool's acquire timeout (10 s) and the node fenced
    /// itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_is_renewed_while_every_pooled_connection_is_busy() {
        let Some(store) = crate::store::test_pg::store().await else {
            return;
        };
        let Pool::Postgres(pool) = &store.pool else {
            unreachable!("test_pg::store is on PostgreSQL")
        };
        let max = pool.options().get_max_connections() as usize;
        let mut held = Vec::new();
        while held.len() < max {
            held.push(pool.acquire().await.unwrap());
        }
        let waits = tokio::time::timeout(Duration::from_millis(500), pool.acquire()).await;
        assert!(waits.is_err(), "the pool still had a connection to give");

        let mut own = None;
        let ttl = Duration::from_secs(10);
        for _ in 0..3 {
            let renewed = tokio::time::timeout(
                Duration::from_secs(2),
                store.renew_lease_on(&mut own, "n", Some("10.0.0.1:7000"), ttl),
            )
            .await
            .expect("the renewal waited for the busy pool")
            .unwrap();
            assert!(renewed > now_ms(), "{renewed}");
            assert!(own.is_some(), "no connection of the lease's own is kept");
        }
        drop(held);
        let live = store.live_nodes().await.unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].peer_addr.as_deref(), Some("10.0.0.1:7000"));
    }

    both_backends! {
        async fn a_late_disconnect_never_clears_a_newer_connect(store) {
            let d = uuid(1);
            store.add_device(d, false).await.unwrap();
            store.renew_lease("a", None, Duration::from_secs(30)).await.unwrap();
            store.renew_lease("b", Some("10.0.0.2:7000"), Duration::from_secs(30)).await.unwrap();
            let on_a = store.route_connect(d, "a", None).await.unwrap();
            // The device moves to node b before a notices it is gone.
            let on_b = store.route_connect(d, "b", Some("203.0.113.9")).await.unwrap();
            assert!(on_b > on_a);
            assert!(!store.route_disconnect(d, "a", on_a).await.unwrap(), "a's late disconnect cleared b's route");
            let r = store.route(d).await.unwrap().unwrap();
            assert_eq!(r.node.as_deref(), Some("b"));
            assert_eq!(r.peer_addr.as_deref(), Some("10.0.0.2:7000"));
            assert!(r.node_alive);
            let rec = store.device(d).await.unwrap().unwrap();
            assert!(rec.online);
            assert_eq!(rec.public_address.as_deref(), Some("203.0.113.9"));
            // b's own disconnect does clear it.
            assert!(store.route_disconnect(d, "b", on_b).await.unwrap());
            assert_eq!(store.route(d).await.unwrap().unwrap().node, None);
            assert!(!store.device(d).await.unwrap().unwrap().online);
            // Reconnecting to the same node raises the epoch again.
            assert!(store.route_connect(d, "b", Some("203.0.113.9")).await.unwrap() > on_b);
        }

        async fn a_dead_nodes_devices_go_offline_and_live_ones_stay(store) {
            let (d1, d2) = (uuid(1), uuid(2));
            store.add_device(d1, false).await.unwrap();
            store.add_device(d2, false).await.unwrap();
            // Node "dead" has a lease that has already run out; "live" has a long one.
            store.renew_lease("dead", None, Duration::ZERO).await.unwrap();
            store.renew_lease("live", None, Duration::from_secs(60)).await.unwrap();
            store.route_connect(d1, "dead", None).await.unwrap();
            store.route_connect(d2, "live", None).await.unwrap();
            let live: Vec<String> = store.live_nodes().await.unwrap().into_iter().map(|n| n.id).collect();
            assert_eq!(live, ["live"]);
            assert!(!store.route(d1).await.unwrap().unwrap().node_alive);
            assert_eq!(store.sweep_dead_nodes(Duration::from_secs(3600)).await.unwrap(), 1);
            assert!(!store.device(d1).await.unwrap().unwrap().online);
            assert!(store.device(d2).await.unwrap().unwrap().online);
            assert_eq!(store.route(d2).await.unwrap().unwrap().node.as_deref(), Some("live"));
            // A dead node is forgotten after the grace; a live one never.
            assert_eq!(store.sweep_dead_nodes(Duration::ZERO).await.unwrap(), 0);
            std::thread::sleep(Duration::from_millis(5));
            store.sweep_dead_nodes(Duration::ZERO).await.unwrap();
            let all: Vec<String> = store.live_nodes().await.unwrap().into_iter().map(|n| n.id).collect();
            assert_eq!(all, ["live"]);
            // A clean shutdown gives up the lease and the routes with it.
            store.drop_lease("live").await.unwrap();
            assert!(!store.device(d2).await.unwrap().unwrap().online);
            assert!(store.live_nodes().await.unwrap().is_empty());
        }

        async fn a_lease_is_timed_by_the_database_clock(store) {
            let before = store.db_now_ms().await.unwrap();
            let until = store.renew_lease("n", None, Duration::from_secs(10)).await.unwrap();
            let after = store.db_now_ms().await.unwrap();
            assert!(until >= before + 10_000 && until <= after + 10_000, "{before} {until} {after}");
            // Within a second of this process's clock (same machine).
            assert!((before - now_ms()).abs() < 1_000, "{before} vs {}", now_ms());
        }
    }
}
