//! Supervisor actions (reboot, restart, ...): queued, delivered at most once, finished.

use super::*;

/// A device action as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRecord {
    /// Unique id (also sent to the agent, which never runs an id twice).
    pub id: String,
    /// Target device.
    pub device: DeviceUuid,
    /// Action name (`reboot`, `blink`, ...).
    pub name: String,
    /// Parameters (JSON).
    pub params: serde_json::Value,
    /// `pending`, `delivered`, `succeeded`, `failed` or `expired`.
    pub status: String,
    /// Result or failure reason (JSON).
    pub detail: Option<serde_json::Value>,
    /// Who asked.
    pub actor: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// After this time a pending action is never delivered.
    pub expires_at: i64,
    /// Delivery time.
    pub delivered_at: Option<i64>,
    /// Completion time.
    pub finished_at: Option<i64>,
}

impl Store {
    /// Queues an action.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_action(
        &self,
        id: &str,
        device: DeviceUuid,
        name: &str,
        params: &serde_json::Value,
        actor: &str,
        ttl_secs: i64,
    ) -> Result<ActionRecord, StoreError> {
        let now = now_unix();
        on_write!(self, |p| {
            sqlx::query(
            "INSERT INTO actions (id, device, name, params, status, actor, created_at, expires_at) VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7)",
        )
        .bind(id)
        .bind(device.as_str())
        .bind(name)
        .bind(params.to_string())
        .bind(actor)
        .bind(now)
        .bind(now.saturating_add(ttl_secs))
        .execute(p)
        .await
        .map(drop)
        })?;
        self.action(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("inserted action vanished".into()))
    }

    /// One action.
    pub async fn action(&self, id: &str) -> Result<Option<ActionRecord>, StoreError> {
        on_pool!(self, |p| sqlx::query(&format!(
            "{ACTION_COLUMNS} WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(p)
        .await?
        .map(|r| action_from_row(&r))
        .transpose())
    }

    /// A device's actions, newest first.
    pub async fn device_actions(
        &self,
        device: DeviceUuid,
        limit: i64,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        on_pool!(self, |p| sqlx::query(&format!(
            "{ACTION_COLUMNS} WHERE device = $1 ORDER BY seq DESC LIMIT $2"
        ))
        .bind(device.as_str())
        .bind(limit)
        .fetch_all(p)
        .await?
        .iter()
        .map(action_from_row)
        .collect())
    }

    /// Marks expired pending actions of `device` as `expired` and returns the actions to
    /// send now, oldest first: pending ones, and delivered ones without a result (a
    /// reconnect may have lost the result; the agent answers from its log, never re-runs).
    pub async fn actions_to_deliver(
        &self,
        device: DeviceUuid,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let now = now_unix();
        on_write!(self, |p| {
            sqlx::query(
                "UPDATE actions SET status = 'expired', finished_at = $1 WHERE device = $2 AND status = 'pending' AND expires_at <= $1",
            )
            .bind(now)
            .bind(device.as_str())
            .execute(p)
            .await?;
            sqlx::query(&format!(
                "{ACTION_COLUMNS} WHERE device = $1 AND status IN ('pending', 'delivered') ORDER BY seq"
            ))
            .bind(device.as_str())
            .fetch_all(p)
            .await?
            .iter()
            .map(action_from_row)
            .collect()
        })
    }

    /// Devices routed to `node` that have actions waiting to be sent: the backstop that
    /// delivers an action queued through another node of a cluster.
    pub async fn devices_with_pending_actions(
        &self,
        node: &str,
    ) -> Result<Vec<DeviceUuid>, StoreError> {
        on_pool!(self, |p| {
            sqlx::query(
                "SELECT DISTINCT a.device FROM actions a JOIN device_routes r ON r.device = a.device \
                 WHERE r.node = $1 AND a.status = 'pending'",
            )
            .bind(node)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| {
                let d: String = r.col("device")?;
                d.parse()
                    .map_err(|e: protocol::InvalidUuid| StoreError::Corrupt(e.to_string()))
            })
            .collect()
        })
    }

    /// Records that an action was sent to the agent.
    pub async fn action_delivered(&self, id: &str) -> Result<(), StoreError> {
        on_write!(self, |p| {
            sqlx::query("UPDATE actions SET status = 'delivered', delivered_at = $1 WHERE id = $2 AND status = 'pending'")
            .bind(now_unix())
            .bind(id)
            .execute(p)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// Records an action's result (only for an action of `device`, so one device cannot
    /// finish another's actions).
    pub async fn action_finished(
        &self,
        device: DeviceUuid,
        id: &str,
        ok: bool,
        detail: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let n = on_write!(self, |p| {
            sqlx::query(
            "UPDATE actions SET status = $1, detail = $2, finished_at = $3 WHERE id = $4 AND device = $5 AND status IN ('pending', 'delivered')",
        )
        .bind(if ok { "succeeded" } else { "failed" })
        .bind(detail.to_string())
        .bind(now_unix())
        .bind(id)
        .bind(device.as_str())
        .execute(p)
        .await?
        .rows_affected()
        });
        Ok(n == 1)
    }

    /// How many actions have each status (`pending`, `delivered`, ...), over all devices:
    /// one `GROUP BY`, for a metrics scrape.
    pub async fn action_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        on_pool!(self, |p| {
            sqlx::query("SELECT status, COUNT(*) AS n FROM actions GROUP BY status")
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.col("status")?, r.col("n")?)))
                .collect()
        })
    }
}

pub(super) const ACTION_COLUMNS: &str = "SELECT id, device, name, params, status, detail, actor, created_at, expires_at, delivered_at, finished_at FROM actions";

pub(super) fn action_from_row(r: &impl DbRow) -> Result<ActionRecord, StoreError> {
    let device: String = r.col("device")?;
    let params: String = r.col("params")?;
    let detail: Option<String> = r.col("detail")?;
    Ok(ActionRecord {
        id: r.col("id")?,
        device: super::devices::parse_uuid(&device)?,
        name: r.col("name")?,
        params: serde_json::from_str(&params).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        status: r.col("status")?,
        detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
        actor: r.col("actor")?,
        created_at: r.col("created_at")?,
        expires_at: r.col("expires_at")?,
        delivered_at: r.col("delivered_at")?,
        finished_at: r.col("finished_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;
    use super::*;

    both_backends! {
        async fn actions_are_queued_delivered_and_finished(store) {
            let (d, other) = (DeviceUuid::from_bytes([1; 16]), DeviceUuid::from_bytes([2; 16]));
            let params = serde_json::json!({"times": 3});
            let a = store.create_action("a1", d, "blink", &params, "token:x", 3600).await.unwrap();
            assert_eq!((a.status.as_str(), a.params.clone()), ("pending", params.clone()));
            store.create_action("a2", d, "reboot", &serde_json::json!({}), "cli:root", 3600).await.unwrap();
            // Expired at once.
            store.create_action("a3", d, "reboot", &serde_json::json!({}), "cli:root", 0).await.unwrap();
            let due: Vec<String> = store.actions_to_deliver(d).await.unwrap().into_iter().map(|a| a.id).collect();
            assert_eq!(due, ["a1", "a2"]);
            assert_eq!(store.action("a3").await.unwrap().unwrap().status, "expired");
            store.action_delivered("a1").await.unwrap();
            assert!(store.action("a1").await.unwrap().unwrap().delivered_at.is_some());
            assert!(!store.action_finished(other, "a1", true, &serde_json::json!({})).await.unwrap());
            assert!(store.action_finished(d, "a1", true, &serde_json::json!({"ok": 1})).await.unwrap());
            assert!(!store.action_finished(d, "a1", false, &serde_json::json!({})).await.unwrap());
            let a1 = store.action("a1").await.unwrap().unwrap();
            assert_eq!((a1.status.as_str(), a1.detail), ("succeeded", Some(serde_json::json!({"ok": 1}))));
            let newest: Vec<String> = store.device_actions(d, 2).await.unwrap().into_iter().map(|a| a.id).collect();
            assert_eq!(newest, ["a3", "a2"]);
            assert_eq!(store.action("nope").await.unwrap(), None);
        }
    }
}
